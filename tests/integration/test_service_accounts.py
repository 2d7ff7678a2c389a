"""Kubernetes ServiceAccounts as registry users, with tokens and TokenReviews of a real API server.

A Registry whose access rules name `NAMESPACE/builder` makes the operator add the Registry's
ServiceAccount to the install's `dockyard-registry-tokenreview` binding (and remove it when the
Registry goes). A `dockyard registry serve` configured as the operator renders it, holding a
token of that ServiceAccount, then accepts a projected-style token of `builder` (audience
dockyard, from the TokenRequest API) as a password: skopeo pushes where the rules allow and is
refused elsewhere; a token for another audience or of another ServiceAccount gets no further.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from tests.integration.cluster import kubectl
from tests.integration.kube import ApiServer, create, delete, get, wait_for
from tests.integration.operator import running_operator
from tests.registry.conftest import Client
from tests.registry.images import image, write_layout
from tests.registry.processes import skopeo, start_dockyard

REGISTRIES = "dockyard.dev/v1alpha1/registries"
BINDING = "dockyard-registry-tokenreview"
DEADLINE = 60.0


def _rules(namespace: str) -> list[dict[str, Any]]:
    return [{"repositories": ["ci/**"], "serviceAccounts": [f"{namespace}/builder"], "actions": ["pull", "push"]},
            {"repositories": ["**"], "users": ["*"], "actions": ["pull"]}]


async def _subjects(server: ApiServer) -> list[dict[str, Any]]:
    binding = await get(server, "rbac.authorization.k8s.io/v1/clusterrolebindings", BINDING)
    assert binding is not None, f"the install's ClusterRoleBinding {BINDING} is missing"
    return list(binding.get("subjects") or [])


async def test_serviceaccount_tokens_push_where_the_rules_allow(apiserver: ApiServer, namespace: str,
                                                               kubeconfig: Path, tmp_path: Path) -> None:
    htpasswd = b"admin:" + bcrypt.hashpw(b"admin-pass", bcrypt.gensalt(rounds=5)) + b"\n"
    await create(apiserver, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users"},
                             "data": {"htpasswd": base64.b64encode(htpasswd).decode()}}, namespace=namespace)
    for account in ("builder", "other"):
        await create(apiserver, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
                     namespace=namespace)
    me = {"kind": "ServiceAccount", "name": "ci-registry", "namespace": namespace}
    async with running_operator(kubeconfig, tmp_path / "operator.log") as op:
        await create(apiserver, {
            "apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": "ci-registry", "namespace": namespace},
            "spec": {"storage": {"emptyDir": {}},
                     "auth": {"htpasswdSecretRef": {"name": "users"}, "access": _rules(namespace)}}})

        async def bound() -> bool:
            op.check()
            return me in await _subjects(apiserver)

        await wait_for(bound, DEADLINE, message="the registry's ServiceAccount in the TokenReview binding")

        def children() -> tuple[dict[str, Any], dict[str, Any]] | None:  # the binding may come first
            op.check()
            config_map = apiserver.live("v1/configmaps", namespace, "ci-registry-config")
            deployment = apiserver.live("apps/v1/deployments", namespace, "ci-registry")
            return (config_map, deployment) if config_map and deployment else None
        config_map, deployment = await wait_for(children, DEADLINE, message="the registry's ConfigMap and Deployment")
        config = yaml.safe_load(config_map["data"]["config.yaml"])
        assert config["serviceAccounts"] == {"audience": "dockyard"}
        assert deployment["spec"]["template"]["spec"]["automountServiceAccountToken"] is True

        # The registry, as rendered, outside a pod: its token and the API server's address and CA.
        own_token = tmp_path / "registry-token"
        own_token.write_text(kubectl(apiserver, "-n", namespace, "create", "token", "ci-registry").strip())
        (tmp_path / "htpasswd").write_bytes(htpasswd)
        config.update(htpasswd=str(tmp_path / "htpasswd"), serviceAccounts={
            "audience": "dockyard", "server": apiserver.url, "tokenFile": str(own_token), "caFile": str(apiserver.ca)})
        for key in ("addr", "root", "notify"):
            config.pop(key, None)
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        builder = kubectl(apiserver, "-n", namespace, "create", "token", "builder", "--audience", "dockyard").strip()
        other = kubectl(apiserver, "-n", namespace, "create", "token", "other", "--audience", "dockyard").strip()
        api_audience = kubectl(apiserver, "-n", namespace, "create", "token", "builder").strip()
        layout = write_layout(tmp_path / "layout", {"v1": image(seed=5, layers=2)})

        with start_dockyard(tmp_path / "root", "--config", str(tmp_path / "config.yaml")) as server:
            def push(repo: str, token: str) -> int:
                return skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", f"--dest-creds=builder:{token}",
                              f"oci:{layout}:v1", f"docker://{server.host}/{repo}:v1", workdir=tmp_path,
                              check=False).returncode

            assert push("ci/app", builder) == 0, server.output()[-2000:]
            assert push("team-a/app", builder) != 0
            assert Client(server.url, ("x", builder)).request("GET", "/v2/ci/app/tags/list").json()["tags"] == ["v1"]
            assert Client(server.url, ("x", api_audience)).request("GET", "/v2/ci/app/tags/list").status == 401
            refused = Client(server.url, ("x", other)).request("POST", "/v2/ci/app/blobs/uploads/")
            assert refused.status == 403
            assert f"serviceaccount {namespace}/other may not push ci/app" in refused.body.decode()

        await delete(apiserver, REGISTRIES, "ci-registry", namespace)

        async def unbound() -> bool:
            op.check()
            return me not in await _subjects(apiserver)

        await wait_for(unbound, DEADLINE, message="the subject removed after the Registry was deleted")
