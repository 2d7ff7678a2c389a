"""Rendering: what the operator applies for a Registry, checked without a cluster."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.render import RenderInput, render_registry
from dockyard.render.registry import CHECKSUM_ANNOTATION

EXAMPLES = sorted(Path(__file__).parents[2].joinpath("examples").glob("*.yaml"))
REGISTRY_EXAMPLES = [p for p in EXAMPLES if any(
    (d or {}).get("kind") == "Registry" for d in yaml.safe_load_all(p.read_text()))]


def registry(spec: dict[str, Any], name: str = "main", uid: str | None = "uid-1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "registries"}
    if uid:
        meta["uid"] = uid
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry", "metadata": meta, "spec": spec}


def render(spec: dict[str, Any], **kwargs: Any) -> dict[str, dict[str, Any]]:
    objs = render_registry(RenderInput.from_body(registry(spec), image="dockyard:test", **kwargs))
    return {o["kind"]: o for o in objs}


RWO = {"pvc": {"size": "20Gi"}}
RWX = {"pvc": {"size": "20Gi", "accessModes": ["ReadWriteMany"]}}
EMPTY = {"emptyDir": {"sizeLimit": "1Gi"}}
S3 = {"s3": {"bucket": "images", "endpoint": "https://minio.example:9000", "region": "eu-1", "prefix": "reg/main",
             "forcePathStyle": True, "secretRef": {"name": "s3-keys"},
             "caSecretRef": {"name": "s3-ca", "key": "bundle.pem"}}}


def container(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    c: dict[str, Any] = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    return c


def test_registry_examples_exist() -> None:
    assert len(REGISTRY_EXAMPLES) >= 4, "examples/ must hold basic, ephemeral, HA and secure registries"


@pytest.mark.parametrize("path", REGISTRY_EXAMPLES, ids=lambda p: p.name)
def test_every_example_renders_a_runnable_registry(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if (doc or {}).get("kind") != "Registry":
            continue
        objs = {o["kind"]: o for o in render_registry(RenderInput.from_body(doc, image="dockyard:test"))}
        assert {"ServiceAccount", "ConfigMap", "Deployment", "Service"} <= set(objs)
        c = container(objs)
        assert c["args"][:2] == ["registry", "serve"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert ("PodDisruptionBudget" in objs) == (doc["spec"].get("replicas", 1) > 1)


def test_every_example_renders_through_the_cli() -> None:
    for path in REGISTRY_EXAMPLES:
        out = subprocess.run([sys.executable, "-m", "dockyard.cli", "render", "-f", str(path)],
                             capture_output=True, text=True, check=True).stdout
        kinds = [d["kind"] for d in yaml.safe_load_all(out)]
        assert "Deployment" in kinds, path
        assert "Service" in kinds, path


def test_probes_and_restricted_security_context() -> None:
    objs = render({"storage": RWO})
    c = container(objs)
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert c["livenessProbe"]["httpGet"]["scheme"] == "HTTP"


def test_tls_switches_probes_and_endpoint_to_https() -> None:
    objs = render({"storage": RWO, "tls": {"secretName": "main-tls"}})
    assert container(objs)["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    config = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    assert config["tls"] == {"cert": "/etc/dockyard/tls/tls.crt", "key": "/etc/dockyard/tls/tls.key"}
    volumes = objs["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "main-tls"}} in volumes


@pytest.mark.parametrize(("storage", "replicas", "strategy"), [
    (RWO, 1, "Recreate"),
    ({"pvc": {"size": "1Gi", "accessModes": ["ReadWriteOncePod"]}}, 1, "Recreate"),
    (RWX, 1, "RollingUpdate"),
    (RWX, 3, "RollingUpdate"),
    (EMPTY, 1, "RollingUpdate"),
    (S3, 1, "RollingUpdate"),
    (S3, 3, "RollingUpdate"),
])
def test_rollout_strategy_follows_the_volume(storage: dict[str, Any], replicas: int, strategy: str) -> None:
    dep = render({"storage": storage, "replicas": replicas})["Deployment"]
    assert dep["spec"]["strategy"]["type"] == strategy
    assert dep["spec"]["replicas"] == replicas


def test_retained_claim_has_no_owner_and_everything_else_is_owned() -> None:
    objs = render({"storage": RWO})
    assert "ownerReferences" not in objs["PersistentVolumeClaim"]["metadata"]
    for kind, obj in objs.items():
        if kind != "PersistentVolumeClaim":
            (ref,) = obj["metadata"]["ownerReferences"]
            assert ref == {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry", "name": "main",
                           "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}


def test_unretained_claim_is_owned_and_goes_with_the_registry() -> None:
    claim = render({"storage": {"pvc": {"size": "1Gi", "retain": False}}})["PersistentVolumeClaim"]
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_claim_never_shrinks_below_a_larger_reattached_volume() -> None:
    claim = render({"storage": RWO}, claim_size="50Gi")["PersistentVolumeClaim"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"


@pytest.mark.parametrize(("storage", "replicas", "pdb"), [(RWO, 1, False), (RWX, 1, False), (RWX, 2, True),
                                                       (S3, 1, False), (S3, 3, True)])
def test_pdb_only_with_more_than_one_replica(storage: dict[str, Any], replicas: int, pdb: bool) -> None:
    objs = render({"storage": storage, "replicas": replicas})
    assert ("PodDisruptionBudget" in objs) is pdb
    if pdb:
        assert objs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_checksum_changes_with_secret_data_and_config() -> None:
    spec = {"storage": RWO, "auth": {"htpasswdSecretRef": {"name": "users"}}}

    def checksum(spec: dict[str, Any], secrets: dict[str, dict[str, str]]) -> str:
        dep = render(spec, secrets=secrets)["Deployment"]
        value: str = dep["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        return value

    base = checksum(spec, {"users": {"htpasswd": "YTpi"}})
    assert checksum(spec, {"users": {"htpasswd": "YTpi"}}) == base
    assert checksum(spec, {"users": {"htpasswd": "YTpj"}}) != base
    read_only = copy.deepcopy(spec) | {"readOnly": True}
    assert checksum(read_only, {"users": {"htpasswd": "YTpi"}}) != base


def test_auth_mounts_the_htpasswd_key_and_configures_the_server() -> None:
    objs = render({"storage": RWO, "auth": {"htpasswdSecretRef": {"name": "users", "key": "users.htpasswd"},
                                            "anonymousPull": True}})
    config = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    assert config["htpasswd"] == "/etc/dockyard/auth/htpasswd"
    assert config["anonymousPull"] is True
    volumes = objs["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "auth", "secret": {"secretName": "users",
                                       "items": [{"key": "users.htpasswd", "path": "htpasswd"}]}} in volumes


TEAMS_AUTH = {"htpasswdSecretRef": {"name": "users"}, "groups": {"team-a": ["alice", "bob"]},
              "access": [{"repositories": ["team-a/**"], "groups": ["team-a"], "actions": ["pull", "push"]},
                         {"repositories": ["ci/**"], "serviceAccounts": ["ci/builder"], "actions": ["push"]}],
              "token": {"lifetime": "10m"}}


def test_access_rules_tokens_and_service_accounts_reach_the_server() -> None:
    objs = render({"storage": EMPTY, "auth": TEAMS_AUTH})
    config = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    assert config["access"] == {"groups": {"team-a": ["alice", "bob"]}, "rules": [
        {"repositories": ["team-a/**"], "groups": ["team-a"], "actions": ["pull", "push"]},
        {"repositories": ["ci/**"], "serviceAccounts": ["ci/builder"], "actions": ["push"]}]}
    assert config["token"] == {"keyFile": "/etc/dockyard/signing/key", "service": "main.registries",
                               "lifetime": "10m"}
    assert config["serviceAccounts"] == {"audience": "dockyard"}
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    signing = next(v for v in pod["volumes"] if v["name"] == "signing-key")
    assert signing["secret"]["secretName"] == "main-signing-key"
    assert {"name": "signing-key", "mountPath": "/etc/dockyard/signing", "readOnly": True} in container(objs)[
        "volumeMounts"]


def test_without_service_account_rules_the_pods_hold_no_api_token() -> None:
    auth = {**TEAMS_AUTH, "access": [{"repositories": ["**"], "users": ["*"], "actions": ["pull"]}]}
    objs = render({"storage": EMPTY, "auth": auth})
    assert objs["Deployment"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert "serviceAccounts" not in yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])


def test_ingress_only_when_asked_with_body_size_unlimited_for_nginx() -> None:
    assert "Ingress" not in render({"storage": RWO})
    ing = render({"storage": RWO, "ingress": {"host": "r.example.com", "className": "nginx",
                                              "tlsSecretName": "r-tls"}})["Ingress"]
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["r.example.com"], "secretName": "r-tls"}]
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"


def test_children_never_copy_the_parents_labels() -> None:
    body = registry({"storage": RWO})
    body["metadata"]["labels"] = {"argocd.argoproj.io/instance": "apps", "team": "x"}
    for obj in render_registry(RenderInput.from_body(body, image="i")):
        assert obj["metadata"]["labels"] == {"app.kubernetes.io/name": "dockyard-registry",
                                             "app.kubernetes.io/instance": "main",
                                             "app.kubernetes.io/managed-by": "dockyard"}


def test_rendering_is_pure() -> None:
    body = registry({"storage": RWX, "replicas": 3, "tolerations": [{"key": "k", "operator": "Exists"}]})
    before = copy.deepcopy(body)
    first = render_registry(RenderInput.from_body(body, image="i"))
    second = render_registry(RenderInput.from_body(body, image="i"))
    assert first == second
    assert body == before


def test_scheduling_fields_reach_the_pod() -> None:
    pod = render({"storage": RWO, "nodeSelector": {"disk": "ssd"}, "priorityClassName": "high",
                  "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                                 "whenUnsatisfiable": "ScheduleAnyway"}],
                  "podAnnotations": {"a": "b"}})["Deployment"]["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert pod["spec"]["priorityClassName"] == "high"
    assert pod["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"][
        "app.kubernetes.io/instance"] == "main"
    assert pod["metadata"]["annotations"]["a"] == "b"


def test_cli_render_rejects_bad_input_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(registry({"storage": {"pvc": {"size": "20GB"}}})))
    result = subprocess.run([sys.executable, "-m", "dockyard.cli", "render", "-f", str(bad)],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "spec.storage.pvc.size" in lines[0]


def test_cli_render_uses_secrets_given_in_the_same_file(tmp_path: Path) -> None:
    spec = {"storage": RWO, "auth": {"htpasswdSecretRef": {"name": "users"}}}

    def checksum(htpasswd: str) -> str:
        f = tmp_path / "r.yaml"
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users", "namespace": "registries"},
                  "stringData": {"htpasswd": htpasswd}}
        f.write_text(yaml.safe_dump_all([registry(spec), secret]))
        out = subprocess.run([sys.executable, "-m", "dockyard.cli", "render", "-f", str(f)],
                             capture_output=True, text=True, check=True).stdout
        dep = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Deployment")
        value: str = dep["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        return value

    assert checksum("a:$2y$05$x") != checksum("b:$2y$05$y")


def test_garbage_collection_reaches_the_server_config_and_the_server_accepts_it() -> None:
    from dockyard.registry.config import parse_config

    assert "gc" not in yaml.safe_load(render({"storage": RWO})["ConfigMap"]["data"]["config.yaml"])
    objs = render({"storage": RWO, "garbageCollection": {"schedule": "15 2 * * 0", "deleteUntagged": True}})
    config = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    assert config["gc"] == {"schedule": "15 2 * * 0", "deleteUntagged": True, "gracePeriod": "1h"}
    gc = parse_config(config).gc
    assert gc is not None
    assert (gc.schedule, gc.delete_untagged, gc.grace_period) == ("15 2 * * 0", True, 3600)


def test_a_schedule_the_server_cannot_run_is_an_invalid_spec() -> None:
    from dockyard.api import SpecError

    with pytest.raises(SpecError) as err:
        render({"storage": RWO, "garbageCollection": {"schedule": "61 * * * *"}})
    assert err.value.path == "spec.garbageCollection.schedule"


def volume(objs: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    volumes = objs["Deployment"]["spec"]["template"]["spec"]["volumes"]
    return next((v for v in volumes if v["name"] == name), None)


def mount(objs: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((m for m in container(objs)["volumeMounts"] if m["name"] == name), None)


def test_s3_storage_reaches_the_server_config_and_the_server_accepts_it() -> None:
    from dockyard.registry.config import S3Config, parse_config

    config = yaml.safe_load(render({"storage": S3})["ConfigMap"]["data"]["config.yaml"])
    assert config["storage"] == {"s3": {
        "bucket": "images", "endpoint": "https://minio.example:9000", "region": "eu-1", "prefix": "reg/main",
        "forcePathStyle": True, "insecure": False, "redirect": False,
        "credentialsDir": "/etc/dockyard/s3-credentials", "caFile": "/etc/dockyard/s3-ca/bundle.pem"}}
    assert config["root"] == "/var/lib/registry"  # temp files
    assert parse_config(config).s3 == S3Config(
        bucket="images", endpoint="https://minio.example:9000", region="eu-1", prefix="reg/main",
        force_path_style=True, ca_file=Path("/etc/dockyard/s3-ca/bundle.pem"),
        credentials_dir=Path("/etc/dockyard/s3-credentials"))
    assert "storage" not in yaml.safe_load(render({"storage": RWO})["ConfigMap"]["data"]["config.yaml"])


def test_s3_without_a_secret_leaves_credentials_to_the_aws_chain() -> None:
    from dockyard.registry.config import S3Config, parse_config

    objs = render({"storage": {"s3": {"bucket": "images", "insecure": True, "redirect": True}}})
    config = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    assert config["storage"] == {"s3": {"bucket": "images", "forcePathStyle": False, "insecure": True,
                                        "redirect": True}}
    assert parse_config(config).s3 == S3Config(bucket="images", insecure=True, redirect=True)
    assert volume(objs, "s3-credentials") is None
    assert volume(objs, "s3-ca") is None
    assert all("secret" not in v for v in objs["Deployment"]["spec"]["template"]["spec"]["volumes"])


def test_s3_mounts_its_secrets_read_only_and_makes_no_claim() -> None:
    objs = render({"storage": S3, "replicas": 3})
    assert "PersistentVolumeClaim" not in objs
    assert volume(objs, "s3-credentials") == {"name": "s3-credentials", "secret": {
        "secretName": "s3-keys", "items": [{"key": "accessKeyId", "path": "accessKeyId"},
                                           {"key": "secretAccessKey", "path": "secretAccessKey"}]}}
    assert mount(objs, "s3-credentials") == {"name": "s3-credentials", "mountPath": "/etc/dockyard/s3-credentials",
                                             "readOnly": True}
    assert volume(objs, "s3-ca") == {"name": "s3-ca", "secret": {
        "secretName": "s3-ca", "items": [{"key": "bundle.pem", "path": "bundle.pem"}]}}
    assert mount(objs, "s3-ca") == {"name": "s3-ca", "mountPath": "/etc/dockyard/s3-ca", "readOnly": True}
    # The root stays writable under the read-only root filesystem, for temp files only.
    assert volume(objs, "data") == {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}
    assert mount(objs, "data") == {"name": "data", "mountPath": "/var/lib/registry"}
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert container(objs)["securityContext"] == render({"storage": RWO})["Deployment"]["spec"]["template"][
        "spec"]["containers"][0]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False


def test_rotated_s3_keys_or_ca_roll_the_pods() -> None:
    from dockyard.render.registry import referenced_secrets

    assert referenced_secrets(RenderInput.from_body(registry({"storage": S3})).spec) == {
        "s3-keys": ("accessKeyId", "secretAccessKey"), "s3-ca": ("bundle.pem",)}
    keys = {"accessKeyId": "QQ==", "secretAccessKey": "Qg=="}

    def checksum(secrets: dict[str, dict[str, str]]) -> str:
        value: str = render({"storage": S3}, secrets=secrets)["Deployment"]["spec"]["template"]["metadata"][
            "annotations"][CHECKSUM_ANNOTATION]
        return value

    base = checksum({"s3-keys": keys, "s3-ca": {"bundle.pem": "Qw=="}})
    assert checksum({"s3-keys": {**keys, "secretAccessKey": "Rg=="}, "s3-ca": {"bundle.pem": "Qw=="}}) != base
    assert checksum({"s3-keys": keys, "s3-ca": {"bundle.pem": "RA=="}}) != base

