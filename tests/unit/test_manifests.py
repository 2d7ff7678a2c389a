"""The install manifests, the image and the GitOps health checks, as a cluster admin meets them.

`kubectl apply -k manifests/` must build, install every generated CRD, run the operator with
a restricted security context and least-privilege RBAC, and keep the default registry image
(`DOCKYARD_IMAGE`) equal to the operator's own image whatever `kustomize edit set image`
chose. The Dockerfile must produce an image that the Deployment's `runAsNonRoot` accepts, and
Argo CD's health script must map kstatus conditions to Argo CD health.

These tests run the real `kubectl kustomize` and a real Lua interpreter (Argo CD runs health
scripts in a Lua 5.1 VM); when one is missing they skip, or fail when CI=true.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.e2e.conftest import set_image

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CRDS = ROOT / "crds"
NAMESPACE = "dockyard-system"
OPERATOR = "dockyard-operator"
IMAGE_PLACEHOLDER = "dockyard"
HEALTH_CM = MANIFESTS / "gitops" / "argocd-cm-health.yaml"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure)", pytrace=False)
    pytest.skip(reason)


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        _missing("`kubectl` is not installed: it builds the kustomize install")
    assert path is not None
    return path


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The objects `kubectl apply -k DIRECTORY` would apply."""
    done = subprocess.run([_kubectl(), "kustomize", str(directory)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = find(objects, "Deployment", OPERATOR)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    container: dict[str, Any] = containers[0]
    return container


def env_value(container: dict[str, Any], name: str) -> str | None:
    for var in container.get("env", []):
        if var["name"] == name:
            value: str | None = var.get("value")
            return value
    return None


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    return kustomize_build(MANIFESTS)


# --- the install -----------------------------------------------------------------------------


def test_install_builds_with_namespace_crds_rbac_and_operator(built: list[dict[str, Any]]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in built}
    assert ("Namespace", NAMESPACE) in kinds
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"):
        assert (kind, OPERATOR) in kinds, f"{kind}/{OPERATOR} missing from the install"
    cluster_scoped = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
    for obj in built:
        if obj["kind"] not in cluster_scoped:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']} outside {NAMESPACE}"
    binding = find(built, "ClusterRoleBinding", OPERATOR)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": OPERATOR}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}]
    pod = find(built, "Deployment", OPERATOR)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == OPERATOR


def test_install_carries_every_generated_crd_unchanged(built: list[dict[str, Any]]) -> None:
    """kustomize loads no file outside manifests/, so it holds copies of crds/: they must match."""
    generated = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert generated, "crds/ holds no CRD"
    copies = sorted(p.name for p in (MANIFESTS / "crds").glob("*.yaml"))
    refresh = "run `cp crds/*.yaml manifests/crds/` and list every CRD in manifests/kustomization.yaml"
    assert copies == generated, f"manifests/crds/ and crds/ hold different CRDs: {refresh}"
    for name in generated:
        assert (MANIFESTS / "crds" / name).read_bytes() == (CRDS / name).read_bytes(), (
            f"manifests/crds/{name} is stale: {refresh}")
    installed = {o["metadata"]["name"] for o in built if o["kind"] == "CustomResourceDefinition"}
    assert installed == {yaml.safe_load((CRDS / n).read_text())["metadata"]["name"] for n in generated}


def test_operator_deployment_is_single_recreated_and_restricted(built: list[dict[str, Any]]) -> None:
    deployment = find(built, "Deployment", OPERATOR)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(built)
    assert container["args"] == ["operator", "run", "-A"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security.get("privileged", False) is False
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"resources.{kind} incomplete"
    # A read-only root still needs a scratch directory for Python and its libraries.
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_liveness_probe_targets_the_operators_health_endpoint(built: list[dict[str, Any]]) -> None:
    """The probe must hit the URL `dockyard operator run` serves by default, or the pod is killed."""
    from dockyard.cli import build_parser

    default = urlsplit(build_parser().parse_args(["operator", "run", "-A"]).liveness)
    container = operator_container(built)
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port = ports.get(probe["port"], probe["port"])
    assert (port, probe["path"]) == (default.port, default.path) == (8080, "/healthz")
    assert default.hostname == "0.0.0.0", "the liveness endpoint must listen beyond loopback for kubelet"


def test_registries_reach_the_operators_push_event_receiver(built: list[dict[str, Any]]) -> None:
    """DOCKYARD_EVENTS_URL (what registries post to) must lead through the Service to the receiver."""
    container = operator_container(built)
    addr = env_value(container, "DOCKYARD_EVENTS_ADDR")
    url = env_value(container, "DOCKYARD_EVENTS_URL")
    assert addr, "the operator runs without its push-event receiver"
    assert url, "the operator runs without its push-event receiver"
    host, _, listen_port = addr.rpartition(":")
    assert host == "0.0.0.0", "the receiver must listen beyond loopback for registry pods"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(listen_port) in ports.values()
    target = urlsplit(url)
    assert target.scheme == "http"
    assert target.path in ("", "/")
    service_name, _, rest = (target.hostname or "").partition(".")
    assert rest in (NAMESPACE, f"{NAMESPACE}.svc", f"{NAMESPACE}.svc.cluster.local")
    service = find(built, "Service", service_name)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    [port] = [p for p in service["spec"]["ports"] if p["port"] == target.port]
    assert ports.get(port["targetPort"], port["targetPort"]) == int(listen_port)
    pod_labels = find(built, "Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector, "the Service selects no operator pod"
    assert all(pod_labels.get(k) == v for k, v in selector.items()), "the Service selects no operator pod"


@pytest.mark.parametrize("ref", [
    "registry.example.com/platform/dockyard:1.2.3",
    "registry.example.com:5000/dockyard@sha256:" + "ab" * 32,
])
def test_set_image_moves_the_default_registry_image_with_it(tmp_path: Path, ref: str) -> None:
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    set_image(copy, ref)  # `kustomize edit set image dockyard=REF`
    container = operator_container(kustomize_build(copy))
    assert container["image"] == ref
    assert env_value(container, "DOCKYARD_IMAGE") == ref


def test_default_install_runs_the_locally_built_image(built: list[dict[str, Any]]) -> None:
    """`make image` builds dockyard:dev; the default install runs exactly that, in both places."""
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^IMAGE \?= (\S+)$", makefile, re.MULTILINE)
    assert match, "Makefile sets no default IMAGE"
    container = operator_container(built)
    assert container["image"] == env_value(container, "DOCKYARD_IMAGE") == match.group(1)
    assert container["image"] != IMAGE_PLACEHOLDER, "the kustomize images entry did not apply"
    # Not :latest, so the kubelet uses a loaded image (kind load) instead of pulling.
    assert container.get("imagePullPolicy", "IfNotPresent") == "IfNotPresent"
    assert not container["image"].endswith(":latest")


# --- RBAC --------------------------------------------------------------------------------------

_CRUD = {"get", "list", "watch", "create", "patch", "update", "delete"}
EXPECTED_RBAC: dict[tuple[str, str], set[str]] = {
    ("dockyard.dev", "registries"): {"get", "list", "watch", "patch", "update"},
    ("dockyard.dev", "replicationpolicies"): {"get", "list", "watch", "patch", "update"},
    ("dockyard.dev", "registries/status"): {"get", "patch", "update"},
    ("dockyard.dev", "replicationpolicies/status"): {"get", "patch", "update"},
    ("apps", "deployments"): _CRUD,
    ("", "services"): _CRUD,
    ("", "configmaps"): _CRUD,
    ("", "serviceaccounts"): _CRUD,
    ("", "persistentvolumeclaims"): _CRUD - {"delete"},
    ("policy", "poddisruptionbudgets"): _CRUD,
    ("networking.k8s.io", "ingresses"): _CRUD,
    ("batch", "jobs"): _CRUD,
    ("batch", "cronjobs"): _CRUD,
    ("", "secrets"): {"get", "list", "watch", "create"},
    ("rbac.authorization.k8s.io", "roles"): _CRUD,
    ("rbac.authorization.k8s.io", "rolebindings"): _CRUD,
    ("rbac.authorization.k8s.io", "clusterrolebindings"): {"get", "update"},  # one, by name
    ("rbac.authorization.k8s.io", "clusterroles"): {"bind"},  # one, by name
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("", "namespaces"): {"get", "list", "watch"},
}


def test_cluster_wide_rbac_rights_are_limited_to_the_token_review_binding(built: list[dict[str, Any]]) -> None:
    rules = find(built, "ClusterRole", OPERATOR)["rules"]
    cluster_rbac = [r for r in rules if set(r["resources"]) & {"clusterroles", "clusterrolebindings"}]
    assert cluster_rbac
    for rule in cluster_rbac:
        assert rule["resourceNames"] == ["dockyard-registry-tokenreview"]
    reviewer = find(built, "ClusterRole", "dockyard-registry-tokenreview")
    assert reviewer["rules"] == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
                                  "verbs": ["create"]}]
    assert "subjects" not in find(built, "ClusterRoleBinding", "dockyard-registry-tokenreview")


def granted(rules: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    yield group, resource, verb


def test_cluster_role_grants_exactly_what_the_operator_needs(built: list[dict[str, Any]]) -> None:
    rules = find(built, "ClusterRole", OPERATOR)["rules"]
    actual: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in granted(rules):
        actual.setdefault((group, resource), set()).add(verb)
    assert actual == EXPECTED_RBAC
    for rule in rules:
        assert not rule.get("nonResourceURLs"), rule
        if not set(rule["resources"]) & {"clusterroles", "clusterrolebindings"}:
            assert not rule.get("resourceNames"), rule


def test_no_role_in_the_install_uses_wildcards(built: list[dict[str, Any]]) -> None:
    roles = [o for o in built if o["kind"] in ("Role", "ClusterRole")]
    assert roles
    for role in roles:
        assert "aggregationRule" not in role
        for group, resource, verb in granted(role["rules"]):
            assert "*" not in (group, verb), (role["metadata"]["name"], resource)
            assert "*" not in resource, (role["metadata"]["name"], resource)


def test_namespace_viewers_and_editors_can_use_dockyard_and_nothing_more(built: list[dict[str, Any]]) -> None:
    view, edit = find(built, "ClusterRole", "dockyard-view"), find(built, "ClusterRole", "dockyard-edit")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    viewing = set(granted(view["rules"]))
    editing = set(granted(edit["rules"]))
    assert ("dockyard.dev", "registries", "list") in viewing
    assert {v for g, r, v in viewing} == {"get", "list", "watch"}
    assert ("dockyard.dev", "registries", "create") in editing
    assert ("dockyard.dev", "registries/scale", "patch") in editing  # kubectl scale
    assert {g for g, r, v in viewing | editing} == {"dockyard.dev"}


def test_operator_can_never_delete_a_persistent_volume_claim(built: list[dict[str, Any]]) -> None:
    """Data safety: the images live on the PVC; only owner-reference GC may remove one."""
    for role in (o for o in built if o["kind"] in ("Role", "ClusterRole")):
        for group, resource, verb in granted(role["rules"]):
            if group == "" and resource in ("persistentvolumeclaims", "persistentvolumes"):
                assert verb not in ("delete", "deletecollection"), role["metadata"]["name"]


# --- the image ---------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, with line continuations joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    instructions = [(m.group(1).upper(), m.group(2).strip())
                    for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, re.MULTILINE)
                    if not m.group(0).lstrip().startswith("#")]
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_image_runs_as_the_numeric_user_the_deployment_expects(built: list[dict[str, Any]]) -> None:
    """`runAsNonRoot` can only verify a numeric USER; it must be the Deployment's 65532."""
    final = dockerfile_instructions()
    users = [args for op, args in final if op == "USER"]
    assert users, "the final image stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), f"USER {users[-1]} is not numeric: runAsNonRoot rejects the pod"
    assert int(uid) == operator_container(built)["securityContext"]["runAsUser"] == 65532


def test_image_entrypoint_needs_no_shell_and_exposes_registry_and_health_ports() -> None:
    final = dict(dockerfile_instructions())
    assert json.loads(final["ENTRYPOINT"]) == ["dockyard"], "ENTRYPOINT must be exec form: no shell"
    exposed = {int(p.split("/")[0]) for op, args in dockerfile_instructions() if op == "EXPOSE"
               for p in args.split()}
    assert {5000, 8080} <= exposed


def test_image_installs_the_package_without_dev_extras() -> None:
    text = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install ([^\n&\\]+)", text)
    assert installs, "the Dockerfile does not pip install the package"
    for args in installs:
        assert "[" not in args, f"pip install {args}: dev extras or editable"
        assert "-e" not in args.split(), f"pip install {args}: dev extras or editable"
    assert re.search(r"^FROM python:3\.11-slim|^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            ignored = not negate
    return ignored


def test_build_context_holds_the_package_and_nothing_local() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    for needed in ("pyproject.toml", "README.md", "operator/dockyard/cli.py",
                   "operator/dockyard/api/registry.py"):
        assert not _dockerignored(needed, patterns), f"{needed} is left out of the build context"
    for local in (".venv/bin/python", ".git/HEAD", "tests/unit/test_manifests.py",
                  "operator/dockyard/__pycache__/cli.cpython-311.pyc", ".dockyard/registry/x"):
        assert _dockerignored(local, patterns), f"{local} would be sent to the build"
    copied = re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    for sources in copied:
        for source in sources.split():
            assert (ROOT / source).exists() or source == "README.md", f"COPY {source}: no such file"
            assert not _dockerignored(source.rstrip("/"), patterns), f"COPY {source} is dockerignored"


# --- Argo CD health ----------------------------------------------------------------------------


def _lua() -> str:
    for name in ("lua5.1", "luajit", "lua"):
        path = shutil.which(name)
        if path:
            return path
    _missing("no Lua interpreter (Debian package `lua5.1`): Argo CD health scripts are Lua 5.1")
    raise AssertionError("unreachable")


def lua_literal(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Lua 5.1 strings are bytes: printable ASCII as is, everything else as \ddd escapes.
        return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}"
                             for b in value.encode()) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def argo_health(script: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run an Argo CD health SCRIPT as Argo CD does: `obj` global, the script returns `hs`."""
    harness = (
        f"obj = {lua_literal(obj)}\n"
        "local chunk = assert((loadstring or load)(io.read('*a')))\n"
        "local hs = chunk()\n"
        "io.write(hs.status, '\\n', hs.message or '')\n"
    )
    done = subprocess.run([_lua(), "-e", harness], input=script, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    status, _, message = done.stdout.partition("\n")
    return status, message


def health_scripts() -> dict[str, str]:
    data: dict[str, str] = yaml.safe_load(HEALTH_CM.read_text())["data"]
    return data


def test_every_dockyard_kind_has_an_argocd_health_check() -> None:
    expected = set()
    for path in CRDS.glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())["spec"]
        expected.add(f"resource.customizations.health.{spec['group']}_{spec['names']['kind']}")
    assert expected <= set(health_scripts()), "a Dockyard kind has no Argo CD health check"
    for key in health_scripts():
        assert key.startswith("resource.customizations.health.dockyard.dev_"), key
    assert len(set(health_scripts().values())) == 1, "the kinds' health scripts have drifted apart"


def cond(ctype: str, status: str, reason: str = "", message: str = "",
         generation: int | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"type": ctype, "status": status, "reason": reason or ctype, "message": message,
                         "lastTransitionTime": "2026-01-01T00:00:00Z"}
    if generation is not None:
        c["observedGeneration"] = generation
    return c


HEALTH_CASES: list[tuple[str, int, dict[str, Any] | None, str, str]] = [
    # (case, metadata.generation, status, Argo CD health, text the message must contain)
    ("no status yet", 1, None, "Progressing", ""),
    ("empty status", 1, {}, "Progressing", "observe generation 1"),
    ("ready and current", 3,
     {"observedGeneration": 3, "conditions": [cond("Ready", "True", "Available", "1/1 replicas ready", 3),
                                              cond("Reconciling", "False", generation=3),
                                              cond("Stalled", "False", generation=3)]},
     "Healthy", "1/1 replicas ready"),
    ("ready without condition generations", 2,
     {"observedGeneration": 2, "conditions": [cond("Ready", "True", "Available")]}, "Healthy", "Available"),
    ("old Ready=True, status not yet at the new generation", 4,
     {"observedGeneration": 3, "conditions": [cond("Ready", "True", generation=3)]},
     "Progressing", "observe generation 4"),
    ("Ready=True carried over from an older generation", 4,
     {"observedGeneration": 4, "conditions": [cond("Ready", "True", generation=3),
                                              cond("Reconciling", "True", "Progressing", "rolling out", 4)]},
     "Progressing", "rolling out"),
    ("stalled on a missing secret", 2,
     {"observedGeneration": 2, "conditions": [
         cond("Ready", "False", "SecretNotFound", "secret main-users not found", 2),
         cond("Stalled", "True", "SecretNotFound", "secret main-users not found", 2)]},
     "Degraded", "SecretNotFound: secret main-users not found"),
    ("stalled beats an old Ready", 2,
     {"observedGeneration": 2, "conditions": [cond("Ready", "True", generation=2),
                                              cond("Stalled", "True", "InvalidSpec", "bad", 2)]},
     "Degraded", "InvalidSpec"),
    ("stalled, but the spec was fixed since", 3,
     {"observedGeneration": 2, "conditions": [cond("Stalled", "True", "InvalidSpec", "bad", 2)]},
     "Progressing", ""),
    ("reconciling", 1,
     {"observedGeneration": 1, "conditions": [cond("Ready", "False", "Progressing", "0/1 ready", 1),
                                              cond("Reconciling", "True", "Progressing", "waiting", 1)]},
     "Progressing", "waiting"),
    ("not ready, not reconciling, not stalled", 1,
     {"observedGeneration": 1, "conditions": [cond("Ready", "False", "Unavailable", "pods crash", 1),
                                              cond("Reconciling", "False", generation=1),
                                              cond("Stalled", "False", generation=1)]},
     "Progressing", "pods crash"),
    ("stalled false and ready", 5,
     {"observedGeneration": 5, "conditions": [cond("Stalled", "False", generation=5),
                                              cond("Ready", "True", generation=5)]}, "Healthy", ""),
]


@pytest.mark.parametrize("key", sorted(health_scripts()))
@pytest.mark.parametrize(("case", "generation", "status", "health", "message"), HEALTH_CASES,
                         ids=[c[0] for c in HEALTH_CASES])
def test_argocd_health_follows_kstatus(key: str, case: str, generation: int,
                                       status: dict[str, Any] | None, health: str, message: str) -> None:
    obj: dict[str, Any] = {"apiVersion": "dockyard.dev/v1alpha1", "kind": key.rsplit("_", 1)[1],
                           "metadata": {"name": "main", "namespace": "registries", "generation": generation}}
    if status is not None:
        obj["status"] = status
    got_health, got_message = argo_health(health_scripts()[key], obj)
    assert got_health == health, f"{case}: {got_message}"
    assert message in got_message
