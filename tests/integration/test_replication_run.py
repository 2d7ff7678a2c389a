"""`dockyard replicate --policy NS/NAME` inside a cluster: credentials from Secrets, result into status.

The run reads the policy and its Secrets from a real API server and copies between real
registries on 127.0.0.1; what it writes into `status` is what users and the operator see. It
runs as a Job's pod would: with a token of the policy's own ServiceAccount (read from a
kubeconfig, as the pod reads its mounted token), bound to the Role the operator renders for the
policy (`render.replication.role`), so the run works with exactly the rights it has in a cluster.
The operator does not run in this module; the tests apply those objects as it would.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from dockyard.controller.kube import Kube
from dockyard.controller.runs import (
    RunError,
    credentials_from_secret,
    exit_code,
    parse_policy_ref,
    run_in_cluster,
    status_of,
)
from dockyard.render.replication import PolicyInput, role, role_binding, service_account, service_account_name
from dockyard.replication.result import MAX_FAILED_ITEMS, RunResult
from tests.integration.kube import ApiServer, _call, apply, create, delete, get, patch, wait_for
from tests.registry.processes import Registries, require_tool, write_htpasswd
from tests.replication.helpers import Pusher, RecordingProxy, fetch_manifest

POLICIES = "dockyard.dev/v1alpha1/replicationpolicies"
DEADLINE = 60.0


async def as_service_account(server: ApiServer, namespace: str, name: str, directory: Path,
                             monkeypatch: pytest.MonkeyPatch) -> Kube:
    """A client of the API as ServiceAccount NAMESPACE/NAME, the way a Job's pod is one.

    A token is requested for the account (TokenRequest, as the kubelet does for the pod),
    written into a kubeconfig that `KUBECONFIG` points at, and `Kube.from_environment()` reads
    it. Returns once every grant of the account's Role (named like the account, as the operator
    names it) is in effect: RBAC reaches the authorizer a moment after the Role is written.
    """
    answer = await _call(server, "POST", server.path("v1/serviceaccounts", namespace, name, "token"),
                         body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                               "spec": {"expirationSeconds": 3600}})
    config = yaml.safe_load(server.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": answer["status"]["token"]}
    path = directory / f"{namespace}-{name}.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    # The kubernetes client reads KUBECONFIG once, at import; a real process sets it before that.
    monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    await wait_for(lambda: _granted(server, namespace, name), timeout=DEADLINE,
                   message=f"the Role {namespace}/{name} in effect for its ServiceAccount")
    return await Kube.from_environment()


async def _granted(server: ApiServer, namespace: str, name: str) -> bool:
    found = await get(server, "rbac.authorization.k8s.io/v1/roles", name, namespace)
    if found is None:
        return False
    wanted = [{"namespace": namespace, "group": group, "resource": resource.partition("/")[0],
               "subresource": resource.partition("/")[2], "name": resource_name, "verb": verb}
              for rule in found["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
              for resource_name in rule.get("resourceNames") or [""] for verb in rule["verbs"]]
    user = f"system:serviceaccount:{namespace}:{name}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"]
    for attributes in wanted:
        review = await _call(server, "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body={
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups, "resourceAttributes": attributes}})
        if not review["status"].get("allowed"):
            return False
    return True


RunAs = Callable[..., Awaitable[Kube]]


@pytest_asyncio.fixture()
async def run_as(apiserver: ApiServer, namespace: str, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunAs]:
    """`await run_as(name)`: a client with the identity of a run of policy NAME in the test's namespace.

    Its ServiceAccount, Role and RoleBinding are applied as the operator renders them from the
    live policy (or from BODY, for a policy that does not exist), so a spec change that names
    another Secret is granted by calling it again, as the operator's reconcile would.
    """
    clients: list[Kube] = []

    async def identity(name: str, body: dict[str, Any] | None = None) -> Kube:
        body = body or await get(apiserver, POLICIES, name, namespace)
        assert body is not None, f"no policy {name}"
        inp = PolicyInput.from_body(body)
        for obj in (service_account(inp), role(inp), role_binding(inp)):
            await apply(apiserver, obj, manager="dockyard", force=True)
        client = await as_service_account(apiserver, namespace, service_account_name(name), tmp_path, monkeypatch)
        clients.append(client)
        return client

    try:
        yield identity
    finally:
        for client in clients:
            await client.close()


@pytest.fixture
def registries(tmp_path: Path) -> Any:
    with Registries(tmp_path) as servers:
        yield servers


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def policy(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    spec.setdefault("limits", {"retry": {"max": 1, "backoff": "50ms"}})
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def secret(name: str, namespace: str, data: dict[str, str], type_: str = "Opaque") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": type_, "data": {k: b64(v) for k, v in data.items()}}


async def status(server: ApiServer, namespace: str, name: str) -> dict[str, Any]:
    obj = await get(server, POLICIES, name, namespace)
    assert obj is not None
    return dict(obj.get("status") or {})


# ----------------------------------------------------------------------------- pure pieces


def test_policy_references() -> None:
    assert parse_policy_ref("registries/mirror") == ("registries", "mirror")
    for bad in ("mirror", "/mirror", "registries/", "a/b/c"):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            parse_policy_ref(bad)


def test_credentials_come_from_docker_config_or_basic_auth_secrets() -> None:
    config = json.dumps({"auths": {"quay.example": {"auth": b64("robot:tok:en")}}})
    creds = credentials_from_secret({".dockerconfigjson": b64(config)}, "https://quay.example", "q")
    assert creds is not None
    assert (creds.username, creds.password) == ("robot", "tok:en")
    assert credentials_from_secret({".dockerconfigjson": b64(config)}, "https://other.example", "q") is None
    creds = credentials_from_secret({"username": b64("u"), "password": b64("p")}, "http://x", "b")
    assert creds is not None
    assert (creds.username, creds.password) == ("u", "p")


def test_the_reported_status_is_bounded_and_keeps_the_last_success_honest() -> None:
    result = RunResult()
    for i in range(MAX_FAILED_ITEMS + 50):
        result.fail("team/app", f"t{i}", "boom")
    result.copied = 3
    result.finished = result.started
    patch_ = status_of(result)
    assert patch_["lastRun"]["result"] == "PartiallyFailed"
    assert patch_["lastRun"]["artifactsFailed"] == MAX_FAILED_ITEMS + 50
    assert len(patch_["failedItems"]) == MAX_FAILED_ITEMS
    assert "lastSuccessfulTime" not in patch_, "a run with failures is not a success"
    assert exit_code(result) == 0, "failures are reported in status and retried first next run"

    clean = RunResult(copied=1)
    clean.finished = clean.started
    patch_ = status_of(clean)
    assert patch_["failedItems"] is None, "the failed items of earlier runs are cleared"
    assert patch_["lastSuccessfulTime"] == patch_["lastRun"]["completionTime"]
    assert exit_code(RunResult(fatal="source unreachable")) == 1


# ----------------------------------------------------------------------------- against registries


async def test_docker_config_credentials_from_a_secret(apiserver: ApiServer, namespace: str, run_as: RunAs,
                                                       registries: Registries, tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", "reader", "r3ad")
    source = registries.distribution(htpasswd=htpasswd)
    dest = registries.dockyard()
    async with Pusher(dest.url) as staging:  # push through an open registry, then copy it to the locked one
        pushed = await staging.image("library/app", "1.0", [b"layer" * 100])
    seed = await run_seed(dest.url, source.url, "reader", "r3ad")
    assert seed == "Succeeded"

    config = json.dumps({"auths": {source.host: {"auth": b64("reader:r3ad")}}})
    await create(apiserver, secret("pull", namespace, {".dockerconfigjson": config}, "kubernetes.io/dockerconfigjson"))
    await create(apiserver, policy("from-locked", namespace, {
        "source": {"url": source.url, "secretRef": {"name": "pull"}},
        "destination": {"url": dest.url}, "destinationPath": {"prefix": "copy/"},
        "filters": {"repositories": {"include": ["library/app"]}}}))
    kube = await run_as("from-locked")
    result = await run_in_cluster(namespace, "from-locked", kube=kube)
    assert result.result == "Succeeded", result.fatal or result.failed_items
    code, body, _ = await fetch_manifest(dest.url, "copy/library/app", "1.0")
    assert code == 200
    assert body == pushed.manifest
    st = await status(apiserver, namespace, "from-locked")
    assert st["lastRun"]["result"] == "Succeeded"
    assert st["lastRun"]["artifactsCopied"] == 1

    # Without the Secret the run cannot authenticate: it says so in status and fails the Job.
    await delete(apiserver, "v1/secrets", "pull", namespace)
    result = await run_in_cluster(namespace, "from-locked", kube=kube)
    assert result.result == "Failed"
    assert exit_code(result) == 1
    st = await status(apiserver, namespace, "from-locked")
    assert st["lastRun"]["result"] == "Failed"
    assert "Secret 'pull' not found" in st["lastRun"]["message"]
    assert st["lastSuccessfulTime"], "the last success is still reported"


async def run_seed(src: str, dest: str, user: str, password: str) -> str:
    """Copy the staging content to the locked registry with the engine (basic auth from flags)."""
    from dockyard.api.replication import ReplicationPolicySpec
    from dockyard.api.schema import parse
    from dockyard.oci.client import Credentials
    from dockyard.replication import Access, RunAccess, run_policy
    from dockyard.replication.state import MemoryState

    spec = parse(ReplicationPolicySpec, {"source": {"url": src}, "destination": {"url": dest}})
    result = await run_policy(spec, RunAccess(Access(src), Access(dest, Credentials(user, password))),
                              MemoryState())
    return result.result


def refuse_manifests_of(repo: str) -> Callable[[web.Request, RecordingProxy], Awaitable[web.StreamResponse | None]]:
    async def hook(request: web.Request, proxy: RecordingProxy) -> web.StreamResponse | None:
        if request.method == "PUT" and request.path.startswith(f"/v2/{repo}/manifests/"):
            return web.json_response({"errors": [{"code": "DENIED", "message": "quota exceeded"}]}, status=403)
        return None
    return hook


async def test_failed_items_are_reported_and_tried_first_on_the_next_run(
        apiserver: ApiServer, namespace: str, run_as: RunAs, registries: Registries) -> None:
    source = registries.distribution()
    dest = registries.distribution()
    async with Pusher(source.url) as pusher:
        for repo in ("apps/one", "apps/two", "apps/zz-broken"):
            await pusher.image(repo, "v1", [repo.encode() * 50])
    async with RecordingProxy(dest.url, refuse_manifests_of("apps/zz-broken")) as gate:
        await create(apiserver, policy("partial", namespace, {
            "source": {"url": source.url}, "destination": {"url": gate.url},
            "filters": {"repositories": {"include": ["apps/**"]}},
            "limits": {"concurrency": 1, "retry": {"max": 1, "backoff": "50ms"}}}))
        kube = await run_as("partial")
        first = await run_in_cluster(namespace, "partial", kube=kube)
        assert (first.copied, first.failed) == (2, 1)
        assert exit_code(first) == 0
        st = await status(apiserver, namespace, "partial")
        assert st["lastRun"]["result"] == "PartiallyFailed"
        assert [(f["repository"], f["tag"]) for f in st["failedItems"]] == [("apps/zz-broken", "v1")]
        assert "quota exceeded" in st["failedItems"][0]["error"]
        assert "lastSuccessfulTime" not in st

    async with RecordingProxy(source.url) as watched:  # the quota is fixed; watch the order of work
        second = await run_in_cluster(namespace, "partial", kube=kube, source_url=watched.url, dest_url=dest.url)
        assert (second.copied, second.failed, second.skipped) == (1, 0, 2)
        touched = [r.path.split("/")[2] + "/" + r.path.split("/")[3] for r in watched.records
                   if r.path.startswith("/v2/apps/")]
        assert touched[0] == "apps/zz-broken", f"the failed item goes first, got {touched[:4]}"
    st = await status(apiserver, namespace, "partial")
    assert st["lastRun"]["result"] == "Succeeded"
    assert not st.get("failedItems")
    assert st["lastSuccessfulTime"] == st["lastRun"]["completionTime"]


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no system trust store knows, and its key."""
    openssl = require_tool("openssl", "openssl")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


async def test_a_ca_secret_makes_a_private_certificate_trusted(
        apiserver: ApiServer, namespace: str, run_as: RunAs, registries: Registries, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, self_signed: tuple[Path, Path]) -> None:
    cert, key = self_signed
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # only for the helper's readiness probe
    dest = registries.dockyard("--tls-cert", str(cert), "--tls-key", str(key))
    monkeypatch.delenv("SSL_CERT_FILE")
    source = registries.distribution()
    async with Pusher(source.url) as pusher:
        await pusher.image("base/os", "12", [b"rootfs" * 100])

    await create(apiserver, policy("to-tls", namespace, {
        "source": {"url": source.url}, "destination": {"url": dest.url},
        "filters": {"repositories": {"include": ["base/os"]}}}))
    untrusted = await run_in_cluster(namespace, "to-tls", kube=await run_as("to-tls"))
    assert untrusted.result == "Failed", "a private certificate is not trusted without its CA"

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the run writes the CA file
    await create(apiserver, secret("dest-ca", namespace, {"ca.crt": cert.read_text()}))
    await patch(apiserver, POLICIES, "to-tls", {"spec": {"destination": {"caSecretRef": {"name": "dest-ca"}}}},
                namespace)
    trusted = await run_in_cluster(namespace, "to-tls", kube=await run_as("to-tls"))  # the Role now names dest-ca
    assert trusted.result == "Succeeded", trusted.fatal
    assert (await status(apiserver, namespace, "to-tls"))["lastRun"]["artifactsCopied"] == 1
    assert list(scratch.iterdir()) == [], "the CA file is removed after the run"


async def test_a_missing_policy_is_an_error_not_a_report(apiserver: ApiServer, namespace: str,
                                                         run_as: RunAs) -> None:
    absent = policy("nope", namespace, {"source": {"url": "http://127.0.0.1:9"},
                                        "destination": {"url": "http://127.0.0.2:9"}})
    kube = await run_as("nope", absent)  # the policy was deleted after its Job started
    with pytest.raises(RunError, match="not found"):
        await run_in_cluster(namespace, "nope", kube=kube)
    assert await get(apiserver, POLICIES, "nope", namespace) is None, "nothing is created to report into"
