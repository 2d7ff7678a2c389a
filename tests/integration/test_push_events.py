"""Push events end to end: the real operator, its per-Registry tokens and a real registry posting to it.

With `DOCKYARD_EVENTS_URL` set (as the install sets it), the operator gives every Registry a
Secret `<registry>-events` holding a random token, before the Deployment that mounts it, and
never rewrites it: reconciles, spec changes and an operator restart keep the token the pods
hold. The receiver (`DOCKYARD_EVENTS_ADDR`) accepts an event only when it is a CloudEvent
signed (HMAC-SHA256 of the body) with the token of the Registry its source names. And a tag
pushed to a real `dockyard registry serve`, configured exactly as the operator rendered it,
starts a run of the `trigger.onPush` policy copying from it; a webhook of that registry that
fails becomes a Warning Event `WebhookFailing` on the Registry; a registry that reports it
cannot use its storage stalls the Registry (StorageUnavailable, one Event) until it reports
usage again. Without the URL nothing about events exists.

The API server is a real one (see `conftest.py`) and the operator runs with the rights of its
ServiceAccount, which may create Secrets but never update or delete them; what the operator
wrote is read from the API server's audit log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from tests.integration.kube import ApiServer, Write, create, delete, get, list_objects, patch, wait_for
from tests.integration.operator import Operator, report_available, running_operator
from tests.registry.conftest import Client
from tests.registry.processes import fill, free_port, require_dockyard, resize_tmpfs, start_dockyard, tmpfs

REGISTRIES = "dockyard.dev/v1alpha1/registries"
SECRETS = "v1/secrets"
DEPLOYMENTS = "apps/v1/deployments"
CONFIGMAPS = "v1/configmaps"
JOBS = "batch/v1/jobs"
DEADLINE = 60.0
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 random bytes, urlsafe base64 without padding


@pytest.fixture
def events_base(monkeypatch: pytest.MonkeyPatch) -> str:
    """DOCKYARD_EVENTS_URL of the operator started by `operator`; it also receives there."""
    port = free_port()
    monkeypatch.setenv("DOCKYARD_EVENTS_ADDR", f"127.0.0.1:{port}")
    monkeypatch.setenv("DOCKYARD_EVENTS_URL", f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture()
async def operator(kubeconfig: Path, tmp_path: Path, events_base: str) -> AsyncIterator[Operator]:
    async with running_operator(kubeconfig, tmp_path / "operator.log") as op:
        yield op


def registry(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"storage": {"emptyDir": {}}}}


def on_push_policy(name: str, namespace: str, source: str) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": {"registryRef": {"name": source}}, "destination": {"url": "http://127.9.9.9:5000"},
                     "trigger": {"onPush": True}}}


async def live(server: ApiServer, op: Operator, resource: str, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        op.check()
        return server.live(resource, namespace, name)
    try:
        found: dict[str, Any] = await wait_for(check, DEADLINE, message=f"{resource} {name}")
    except TimeoutError:
        pytest.fail(f"{resource} {name} never appeared; operator log:\n{op.output()}")
    return found


def token_of(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"]["token"]).decode()


def operator_writes(server: ApiServer, namespace: str, since: float) -> list[Write]:
    """The operator's writes in NAMESPACE since the wall-clock time SINCE, its Events left out. Earlier
    tests' namespaces may still be terminating, and the operator reconciles their Registries too."""
    return [w for w in server.writes(since) if w.namespace == namespace and w.resource != "events"]


async def registry_conditions(server: ApiServer, op: Operator, namespace: str, name: str,
                              want: dict[str, str | tuple[str, str]]) -> dict[str, Any]:
    """The Registry once each condition in WANT has its status (or (status, reason)); else fail with
    the Registry's status and the operator's log."""
    def holds(cond: dict[str, Any], wanted: str | tuple[str, str]) -> bool:
        return (cond["status"], cond["reason"]) == wanted if isinstance(wanted, tuple) else cond["status"] == wanted

    async def check() -> dict[str, Any] | None:
        op.check()
        obj = await get(server, REGISTRIES, name, namespace)
        found = {c["type"]: c for c in ((obj or {}).get("status") or {}).get("conditions") or []}
        return obj if all(k in found and holds(found[k], v) for k, v in want.items()) else None
    try:
        found: dict[str, Any] = await wait_for(check, DEADLINE, interval=0.3, message=f"conditions {want}")
    except TimeoutError:
        obj = await get(server, REGISTRIES, name, namespace)
        pytest.fail(f"conditions never became {want}: {(obj or {}).get('status')}\n"
                    f"operator log:\n{op.output()[-3000:]}")
    return found


async def settle(server: ApiServer, op: Operator, namespace: str, seconds: float = 1.5) -> None:
    """Wait (with a deadline) until the operator has written nothing to NAMESPACE for `seconds`."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        op.check()
        mark = time.time()
        await asyncio.sleep(seconds)  # a quiet window is what is being observed
        if not operator_writes(server, namespace, mark):
            return
    pytest.fail(f"the operator never settled:\n{op.output()}")


async def post(url: str, event: dict[str, Any], token: str | None, *,
               signed_body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """POST EVENT signed with TOKEN (the signature of SIGNED_BODY instead, when given); unsigned without one."""
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/cloudevents+json"}
    if token is not None:
        digest = hmac.new(token.encode(), json.dumps(signed_body or event).encode(), hashlib.sha256).hexdigest()
        headers["X-Dockyard-Signature"] = f"sha256={digest}"
    deadline = time.monotonic() + DEADLINE
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    return r.status, await r.json()
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)  # the receiver is still starting


def event(namespace: str, registry_name: str, tag: str = "v1") -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"id-{time.monotonic_ns()}", "type": "dev.dockyard.registry.push",
            "source": f"/registries/{namespace}/{registry_name}", "subject": f"team/app:{tag}",
            "data": {"repository": "team/app", "tag": tag, "digest": "sha256:" + "cd" * 32}}


# ----------------------------------------------------------------------------- tests


async def test_each_registry_gets_its_own_token_once_and_keeps_it(
        apiserver: ApiServer, namespace: str, operator: Operator, kubeconfig: Path, tmp_path: Path,
        events_base: str) -> None:
    ns = namespace
    start = time.time()
    reg = await create(apiserver, registry("main", ns))
    secret = await live(apiserver, operator, SECRETS, ns, "main-events")
    dep = await live(apiserver, operator, DEPLOYMENTS, ns, "main")

    assert secret["type"] == "Opaque"
    token = token_of(secret)
    assert TOKEN.fullmatch(token), token
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Registry", "main", reg["metadata"]["uid"], True)
    assert secret["metadata"]["labels"] == {"app.kubernetes.io/name": "dockyard-registry",
                                            "app.kubernetes.io/instance": "main",
                                            "app.kubernetes.io/managed-by": "dockyard"}
    writes = operator_writes(apiserver, ns, start)
    first_secret = writes.index(Write("create", "secrets", ns, "main-events", 201))
    first_deployment = min(i for i, w in enumerate(writes) if w.resource == "deployments")
    assert first_secret < first_deployment, "the pods would start without their token"

    pod = dep["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if (v.get("secret") or {}).get("secretName") == "main-events"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == "/etc/dockyard/events"
    assert mount["readOnly"] is True
    config = yaml.safe_load((await live(apiserver, operator, CONFIGMAPS, ns, "main-config"))["data"]["config.yaml"])
    assert config["notify"] == {"url": f"{events_base}/v1/push", "tokenFile": "/etc/dockyard/events/token",
                                "registry": {"namespace": ns, "name": "main"}}

    # Reconciles of every kind keep the token: a spec change, the Deployment's status, a restart.
    await settle(apiserver, operator, ns)
    await patch(apiserver, REGISTRIES, "main", {"spec": {"readOnly": True}}, ns)

    def read_only_config() -> bool:
        cm = apiserver.live(CONFIGMAPS, ns, "main-config") or {}
        return bool(yaml.safe_load(cm["data"]["config.yaml"]).get("readOnly"))
    await wait_for(read_only_config, DEADLINE, message="the spec change is applied")
    await report_available(apiserver, ns, "main")
    await settle(apiserver, operator, ns)
    await operator.stop()
    async with running_operator(kubeconfig, tmp_path / "operator-2.log") as again:
        await settle(apiserver, again, ns, 3.0)
    after = apiserver.live(SECRETS, ns, "main-events")
    assert after is not None
    assert token_of(after) == token
    assert after["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"], "the Secret was rewritten"
    secret_writes = [w for w in operator_writes(apiserver, ns, start) if w.resource == "secrets"]
    assert secret_writes == [Write("create", "secrets", ns, "main-events", 201)]


async def test_a_deleted_token_secret_is_created_anew(apiserver: ApiServer, namespace: str,
                                                      operator: Operator) -> None:
    await create(apiserver, registry("main", namespace))
    old = token_of(await live(apiserver, operator, SECRETS, namespace, "main-events"))
    await settle(apiserver, operator, namespace)
    await delete(apiserver, SECRETS, "main-events", namespace)

    def recreated() -> str | None:
        operator.check()
        secret = apiserver.live(SECRETS, namespace, "main-events")
        return token_of(secret) if secret else None
    new = await wait_for(recreated, DEADLINE, message="main-events created anew")
    assert TOKEN.fullmatch(new)
    assert new != old


async def test_the_receiver_accepts_only_the_token_of_the_registry_an_event_names(
        apiserver: ApiServer, namespace: str, operator: Operator, events_base: str) -> None:
    ns = namespace
    url = f"{events_base}/v1/push"
    await create(apiserver, registry("a", ns))
    await create(apiserver, registry("b", ns))
    await create(apiserver, on_push_policy("from-a", ns, "a"))
    token_a = token_of(await live(apiserver, operator, SECRETS, ns, "a-events"))
    token_b = token_of(await live(apiserver, operator, SECRETS, ns, "b-events"))
    assert token_a != token_b

    assert (await post(url, event(ns, "a"), token_b))[0] == 401, "b's token must not start a's policies"
    assert (await post(url, event(ns, "b"), token_a))[0] == 401
    assert (await post(url, event(ns, "a"), None))[0] == 401
    assert (await post(url, event(ns, "a"), token_a + "x"))[0] == 401
    assert (await post(url, event(ns, "nowhere"), token_a))[0] == 401
    # A Secret of the right name that no Registry owns is not a token: anyone who may create Secrets could.
    await create(apiserver, {"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "ghost-events", "namespace": ns},
                             "data": {"token": base64.b64encode(b"forged").decode()}})
    assert (await post(url, event(ns, "ghost"), "forged"))[0] == 401
    assert (await post(url, event(ns, "a", "v2"), token_a, signed_body=event(ns, "a")))[0] == 401
    bad = {**event(ns, "a"), "source": f"/registries/{ns}/../a"}
    assert (await post(url, bad, token_a))[0] == 400
    assert await list_objects(apiserver, JOBS, ns) == []

    assert await post(url, event(ns, "b"), token_b) == (202, {"policies": []})

    async def accepted() -> tuple[int, Any] | None:
        # the policy reaches the receiver's index a moment after it is created
        answer = await post(url, event(ns, "a"), token_a)
        return answer if answer[1]["policies"] else None
    assert await wait_for(accepted, DEADLINE, interval=0.2, message="a's push runs from-a") == (
        202, {"policies": [f"{ns}/from-a"]})


async def test_a_tag_pushed_to_a_dockyard_registry_runs_its_on_push_policy(
        apiserver: ApiServer, namespace: str, operator: Operator, tmp_path: Path) -> None:
    require_dockyard()
    ns = namespace
    await create(apiserver, registry("main", ns))
    await create(apiserver, on_push_policy("mirror", ns, "main"))
    token = token_of(await live(apiserver, operator, SECRETS, ns, "main-events"))
    config = yaml.safe_load((await live(apiserver, operator, CONFIGMAPS, ns, "main-config"))["data"]["config.yaml"])

    # The pod's view: the Secret mounted as a file, the rendered config; only paths and address differ.
    token_file = tmp_path / "events" / "token"
    token_file.parent.mkdir()
    token_file.write_text(token)
    config["notify"]["tokenFile"] = str(token_file)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    with start_dockyard(tmp_path / "root", "--config", str(config_file)) as server:
        client = Client(server.url)

        async def mirror_ready() -> bool:
            obj = await get(apiserver, "dockyard.dev/v1alpha1/replicationpolicies", "mirror", ns)
            conds = ((obj or {}).get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
        await wait_for(mirror_ready, DEADLINE, message="the policy is ready for pushes")

        digest, _ = await asyncio.to_thread(client.push_image, "team/app", "v1")

        async def push_job() -> list[dict[str, Any]]:
            operator.check()
            return [j for j in await list_objects(apiserver, JOBS, ns)
                    if j["metadata"]["name"].startswith("mirror-push-")]
        try:
            [job] = await wait_for(push_job, DEADLINE, message="a Job for the pushed tag")
        except TimeoutError:
            pytest.fail(f"no push run; registry log:\n{server.output()[-3000:]}\noperator log:\n{operator.output()}")
        assert job["metadata"]["annotations"]["dockyard.dev/push-event"].startswith(f"team/app:v1@{digest} ")


async def test_a_failing_webhook_becomes_a_warning_event_on_the_registry(
        apiserver: ApiServer, namespace: str, operator: Operator, tmp_path: Path) -> None:
    require_dockyard()
    ns = namespace
    await create(apiserver, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ci-hook", "namespace": ns},
                             "data": {"secret": base64.b64encode(b"hook-key").decode()}})
    body = registry("main", ns)
    body["spec"]["webhooks"] = [{"name": "ci", "url": f"http://127.0.0.1:{free_port()}/hook", "events": ["push"],
                                 "secretRef": {"name": "ci-hook"}}]  # nobody listens there
    await create(apiserver, body)
    token = token_of(await live(apiserver, operator, SECRETS, ns, "main-events"))
    config = yaml.safe_load((await live(apiserver, operator, CONFIGMAPS, ns, "main-config"))["data"]["config.yaml"])
    assert config["webhooks"][0]["secretFile"] == "/etc/dockyard/webhooks/ci/secret"

    # The pod's view: both Secrets mounted as files, the rendered config; only paths and address differ.
    (tmp_path / "token").write_text(token)
    (tmp_path / "secret").write_text("hook-key")
    config["notify"]["tokenFile"] = str(tmp_path / "token")
    config["webhooks"][0]["secretFile"] = str(tmp_path / "secret")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    with start_dockyard(tmp_path / "root", "--config", str(config_file)) as server:
        await asyncio.to_thread(Client(server.url).push_image, "team/app", "v1")

        async def warning() -> list[dict[str, Any]]:
            operator.check()
            return [e for e in await list_objects(apiserver, "v1/events", ns)
                    if e.get("reason") == "WebhookFailing" and e["involvedObject"]["kind"] == "Registry"]
        try:
            [found, *_] = await wait_for(warning, DEADLINE, interval=0.5, message="a WebhookFailing Event")
        except TimeoutError:
            posted = [(e.get("reason"), e.get("involvedObject"), e.get("message"))
                      for e in await list_objects(apiserver, "v1/events", ns)]
            pytest.fail(f"no WebhookFailing Event; Events: {posted}; registry log:\n"
                        f"{server.output()[-3000:]}\noperator log:\n{operator.output()}")
    assert found["type"] == "Warning"
    assert found["involvedObject"]["name"] == "main"
    assert found["message"].startswith("webhook ci (127.0.0.1:")


async def test_quota_usage_reaches_the_status_and_a_nearly_full_quota_an_event(
        apiserver: ApiServer, namespace: str, operator: Operator, tmp_path: Path) -> None:
    require_dockyard()
    ns = namespace
    body = registry("main", ns)
    body["spec"]["quotas"] = [{"repositories": ["team/**"], "limit": "100Ki"}]
    await create(apiserver, body)
    token = token_of(await live(apiserver, operator, SECRETS, ns, "main-events"))
    config = yaml.safe_load((await live(apiserver, operator, CONFIGMAPS, ns, "main-config"))["data"]["config.yaml"])
    assert config["quotas"] == [{"repositories": ["team/**"], "limit": 102400}]
    (tmp_path / "token").write_text(token)
    config["notify"]["tokenFile"] = str(tmp_path / "token")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with start_dockyard(tmp_path / "root", "--config", str(tmp_path / "config.yaml")) as server:
        client = Client(server.url)
        await asyncio.to_thread(client.push_image, "team/app", "v1", layers=[b"x" * 95_000])

        async def reported() -> list[dict[str, Any]] | None:
            operator.check()
            obj = await get(apiserver, REGISTRIES, "main", ns)
            quotas: list[dict[str, Any]] = ((obj or {}).get("status") or {}).get("quotas") or []
            return quotas if quotas and quotas[0].get("usedBytes", 0) >= 95_000 else None

        try:
            [quota] = await wait_for(reported, DEADLINE, interval=0.5, message="status.quotas with the push counted")
        except TimeoutError:
            pytest.fail(f"no usage in status.quotas; registry log:\n{server.output()[-3000:]}\n"
                        f"operator log:\n{operator.output()}")
        assert quota["repositories"] == ["team/**"]
        assert quota["limit"] == "100Ki"
        assert quota["limitBytes"] == 102400

        async def nearly_full() -> list[dict[str, Any]]:
            return [e for e in await list_objects(apiserver, "v1/events", ns)
                    if e.get("reason") == "QuotaNearlyFull" and e["involvedObject"]["kind"] == "Registry"]

        [event] = await wait_for(nearly_full, DEADLINE, interval=0.5, message="a QuotaNearlyFull Event")
        assert event["type"] == "Warning"
        assert event["message"].startswith("quota team/** is at 9")


async def test_a_filling_disk_becomes_storage_conditions_and_growing_it_clears_them(
        apiserver: ApiServer, namespace: str, operator: Operator, tmp_path: Path) -> None:
    """The registry's root is a real 8 MiB tmpfs: filled past 90 %, then to the last byte, then grown."""
    require_dockyard()
    ns = namespace
    await create(apiserver, registry("main", ns))
    token = token_of(await live(apiserver, operator, SECRETS, ns, "main-events"))
    config = yaml.safe_load((await live(apiserver, operator, CONFIGMAPS, ns, "main-config"))["data"]["config.yaml"])
    (tmp_path / "token").write_text(token)
    config["notify"]["tokenFile"] = str(tmp_path / "token")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))

    def conditions_are(want: dict[str, str | tuple[str, str]]) -> Awaitable[dict[str, Any]]:
        return registry_conditions(apiserver, operator, ns, "main", want)

    with tmpfs(tmp_path / "disk", "8m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (7 * 1024 * 1024 + 512 * 1024))  # 7.5 of 8 MiB: past 90 %
        with start_dockyard(disk / "root", "--config", str(tmp_path / "config.yaml")) as server:
            nearly = await conditions_are({"StorageNearlyFull": "True", "StorageFull": "False"})
            storage = nearly["status"]["storage"]
            assert storage["capacityBytes"] == 8 * 1024 * 1024
            assert storage["usedBytes"] >= 0.9 * storage["capacityBytes"]

            await asyncio.to_thread(fill, filler)
            push = await asyncio.to_thread(Client(server.url).request, "POST", "/v2/team/app/blobs/uploads/")
            assert push.status == 507
            await conditions_are({"StorageFull": "True"})

            await asyncio.to_thread(resize_tmpfs, disk, "64m")  # the volume grew
            await asyncio.to_thread(Client(server.url).push_blob, "team/app", b"room again")
            await conditions_are({"StorageFull": "False", "StorageNearlyFull": "False"})

    reasons = [e.get("reason") for e in await list_objects(apiserver, "v1/events", ns)
               if e["involvedObject"]["kind"] == "Registry"]
    for reason in ("StorageNearlyFull", "StorageFull", "NoStorageFull", "NoStorageNearlyFull"):
        assert reason in reasons, reasons


async def test_a_registry_that_cannot_reach_its_bucket_stalls_once_and_recovers_with_a_good_report(
        apiserver: ApiServer, namespace: str, operator: Operator, events_base: str) -> None:
    """What an S3 registry reports: `{"error": ...}` at start-up and whenever a periodic check of the
    bucket fails, usage without a capacity once it can use the bucket again."""
    ns = namespace
    url = f"{events_base}/v1/push"
    body = registry("main", ns)
    body["spec"].update(replicas=3, storage={"s3": {"bucket": "images", "endpoint": "http://127.0.0.1:8333",
                                                    "forcePathStyle": True}})
    await create(apiserver, body)
    token = token_of(await live(apiserver, operator, SECRETS, ns, "main-events"))
    await live(apiserver, operator, DEPLOYMENTS, ns, "main")
    await report_available(apiserver, ns, "main")

    def conditions_are(want: dict[str, str | tuple[str, str]]) -> Awaitable[dict[str, Any]]:
        return registry_conditions(apiserver, operator, ns, "main", want)

    await conditions_are({"Ready": ("True", "Available")})

    def storage_event(**data: Any) -> dict[str, Any]:
        return {"specversion": "1.0", "id": f"id-{time.monotonic_ns()}", "type": "dev.dockyard.registry.storage",
                "source": f"/registries/{ns}/main", "data": data}

    error = "S3 bucket images at http://127.0.0.1:8333: InvalidAccessKeyId: The access key ID you provided " \
            "does not exist"
    assert await post(url, storage_event(error=error), token) == (202, {})
    stalled = await conditions_are({"Stalled": ("True", "StorageUnavailable"),
                                    "Ready": ("False", "StorageUnavailable")})
    [message] = [c["message"] for c in stalled["status"]["conditions"] if c["type"] == "Stalled"]
    assert error in message
    assert stalled["status"]["storage"]["error"] == error
    # Each replica reports at start-up and the periodic check fails again: one Event, not one per report.
    for _ in range(3):
        assert await post(url, storage_event(error=error), token) == (202, {})
    assert (await post(url, storage_event(error=error), None))[0] == 401

    # A reconcile for another reason (a deleted child) keeps the report and posts nothing more.
    await delete(apiserver, CONFIGMAPS, "main-config", ns)
    await live(apiserver, operator, CONFIGMAPS, ns, "main-config")
    await settle(apiserver, operator, ns)
    kept = await conditions_are({"Stalled": ("True", "StorageUnavailable")})
    assert kept["status"]["storage"]["error"] == error

    async def registry_events(reason: str) -> list[dict[str, Any]]:
        return [e for e in await list_objects(apiserver, "v1/events", ns)
                if e.get("reason") == reason and e["involvedObject"]["kind"] == "Registry"]
    [warning] = await registry_events("StorageUnavailable")
    assert warning["type"] == "Warning"
    assert error in warning["message"]
    assert warning.get("count", 1) == 1

    assert await post(url, storage_event(usedBytes=5 * 2**30, full=False), token) == (202, {})
    recovered = await conditions_are({"Stalled": ("False", "NotStalled"), "Ready": ("True", "Available")})
    assert recovered["status"]["storage"] == {"used": "5Gi", "usedBytes": 5 * 2**30, "full": False}
    [recovery] = await registry_events("Recovered")
    assert recovery["type"] == "Normal"


async def test_without_the_events_url_nothing_about_events_exists(
        apiserver: ApiServer, namespace: str, kubeconfig: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKYARD_EVENTS_URL", raising=False)
    monkeypatch.delenv("DOCKYARD_EVENTS_ADDR", raising=False)
    start = time.time()
    async with running_operator(kubeconfig, tmp_path / "operator.log") as op:
        await create(apiserver, registry("main", namespace))
        dep = await live(apiserver, op, DEPLOYMENTS, namespace, "main")
        config = yaml.safe_load((await live(apiserver, op, CONFIGMAPS, namespace, "main-config"))
                                ["data"]["config.yaml"])
        await settle(apiserver, op, namespace)
    assert "notify" not in config
    assert not [v for v in dep["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert await list_objects(apiserver, SECRETS, namespace) == []
    assert not [w for w in apiserver.writes(start) if w.resource == "secrets"]
