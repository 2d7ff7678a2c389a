"""Push events end to end: the real operator, its per-Registry tokens and a real registry posting to it.

With `DOCKYARD_EVENTS_URL` set (as the install sets it), the operator gives every Registry a
Secret `<registry>-events` holding a random token, before the Deployment that mounts it, and
never rewrites it: reconciles, spec changes and an operator restart keep the token the pods
hold. The receiver (`DOCKYARD_EVENTS_ADDR`) accepts an event only with the token of the
Registry it names. And a tag pushed to a real `dockyard registry serve`, configured exactly as
the operator rendered it, starts a run of the `trigger.onPush` policy copying from it.
Without the URL nothing about events exists.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from tests.integration.emulator import Emulator, create, delete, get, list_objects, patch, wait_for
from tests.integration.operator import Operator, running_operator
from tests.registry.conftest import Client
from tests.registry.processes import free_port, require_dockyard, start_dockyard

NS = "registries"
REGISTRIES = "dockyard.dev/v1alpha1/registries"
SECRETS = "v1/secrets"
DEPLOYMENTS = "apps/v1/deployments"
CONFIGMAPS = "v1/configmaps"
JOBS = "batch/v1/jobs"
DEADLINE = 30.0
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 random bytes, urlsafe base64 without padding


@pytest.fixture()
def events_base(monkeypatch: pytest.MonkeyPatch) -> str:
    """DOCKYARD_EVENTS_URL of the operator started by `operator`; it also receives there."""
    port = free_port()
    monkeypatch.setenv("DOCKYARD_EVENTS_ADDR", f"127.0.0.1:{port}")
    monkeypatch.setenv("DOCKYARD_EVENTS_URL", f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture()
async def operator(emulator: Emulator, kubeconfig: Path, tmp_path: Path, events_base: str
                   ) -> AsyncIterator[Operator]:
    async with running_operator(kubeconfig, tmp_path / "operator.log") as op:
        yield op


def registry(name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": name, "namespace": NS}, "spec": spec or {"storage": {"emptyDir": {}}}}


def on_push_policy(name: str, source: str) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"source": {"registryRef": {"name": source}}, "destination": {"url": "http://127.9.9.9:5000"},
                     "trigger": {"onPush": True}}}


async def live(emulator: Emulator, op: Operator, resource: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        op.check()
        return emulator.live(resource, NS, name)
    try:
        found: dict[str, Any] = await wait_for(check, DEADLINE, message=f"{resource} {name}")
    except TimeoutError:
        pytest.fail(f"{resource} {name} never appeared; operator log:\n{op.output()}")
    return found


def token_of(secret: dict[str, Any]) -> str:
    return base64.b64decode(secret["data"]["token"]).decode()


async def settle(emulator: Emulator, op: Operator, seconds: float = 1.5) -> None:
    """Wait (with a deadline) until nobody has written anything for `seconds`."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        op.check()
        mark = time.monotonic()
        await asyncio.sleep(seconds)  # a quiet window is what is being observed
        if not [w for w in emulator.writes(mark) if "/events" not in w.path]:
            return
    pytest.fail(f"the operator never settled:\n{op.output()}")


async def post(url: str, event: dict[str, Any], token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    deadline = time.monotonic() + DEADLINE
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.post(url, json=event, headers=headers) as r:
                    return r.status, await r.json()
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)  # the receiver is still starting


def event(registry_name: str, tag: str = "v1") -> dict[str, Any]:
    return {"registry": {"namespace": NS, "name": registry_name}, "repository": "team/app", "tag": tag,
            "digest": "sha256:" + "cd" * 32}


# ----------------------------------------------------------------------------- tests


async def test_each_registry_gets_its_own_token_once_and_keeps_it(
        emulator: Emulator, operator: Operator, kubeconfig: Path, tmp_path: Path, events_base: str) -> None:
    start = time.monotonic()
    reg = await create(emulator, registry("main"))
    secret = await live(emulator, operator, SECRETS, "main-events")
    dep = await live(emulator, operator, DEPLOYMENTS, "main")

    assert secret["type"] == "Opaque"
    token = token_of(secret)
    assert TOKEN.fullmatch(token), token
    [owner] = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Registry", "main", reg["metadata"]["uid"], True)
    assert secret["metadata"]["labels"] == {"app.kubernetes.io/name": "dockyard-registry",
                                            "app.kubernetes.io/instance": "main",
                                            "app.kubernetes.io/managed-by": "dockyard"}
    writes = emulator.writes(start)
    first_secret = writes.index(("POST", f"/api/v1/namespaces/{NS}/secrets"))
    first_deployment = min(i for i, w in enumerate(writes) if "/deployments" in w.path)
    assert first_secret < first_deployment, "the pods would start without their token"

    pod = dep["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if (v.get("secret") or {}).get("secretName") == "main-events"]
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == "/etc/dockyard/events" and mount["readOnly"] is True
    config = yaml.safe_load((await live(emulator, operator, CONFIGMAPS, "main-config"))["data"]["config.yaml"])
    assert config["notify"] == {"url": f"{events_base}/v1/push", "tokenFile": "/etc/dockyard/events/token",
                                "registry": {"namespace": NS, "name": "main"}}

    # Reconciles of every kind keep the token: a spec change, the Deployment's status, a restart.
    await settle(emulator, operator)
    await patch(emulator, REGISTRIES, "main", {"spec": {"readOnly": True}}, NS)

    async def read_only_config() -> bool:
        cm = emulator.live(CONFIGMAPS, NS, "main-config") or {}
        return bool(yaml.safe_load(cm["data"]["config.yaml"]).get("readOnly"))
    await wait_for(read_only_config, DEADLINE, message="the spec change is applied")
    await patch(emulator, DEPLOYMENTS, "main", {"status": {"replicas": 1, "readyReplicas": 1}}, NS,
                subresource="status")
    await settle(emulator, operator)
    await operator.stop()
    async with running_operator(kubeconfig, tmp_path / "operator-2.log") as again:
        await settle(emulator, again, 3.0)
    after = emulator.live(SECRETS, NS, "main-events")
    assert after is not None and token_of(after) == token
    assert after["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"], "the Secret was rewritten"
    secret_writes = [w for w in emulator.writes(start) if "/secrets" in w.path]
    assert secret_writes == [("POST", f"/api/v1/namespaces/{NS}/secrets")]


async def test_a_deleted_token_secret_is_created_anew(emulator: Emulator, operator: Operator) -> None:
    await create(emulator, registry("main"))
    old = token_of(await live(emulator, operator, SECRETS, "main-events"))
    await settle(emulator, operator)
    await delete(emulator, SECRETS, "main-events", NS)

    def recreated() -> str | None:
        operator.check()
        secret = emulator.live(SECRETS, NS, "main-events")
        return token_of(secret) if secret else None
    new = await wait_for(recreated, DEADLINE, message="main-events created anew")
    assert TOKEN.fullmatch(new) and new != old


async def test_the_receiver_accepts_only_the_token_of_the_registry_an_event_names(
        emulator: Emulator, operator: Operator, events_base: str) -> None:
    url = f"{events_base}/v1/push"
    await create(emulator, registry("a"))
    await create(emulator, registry("b"))
    await create(emulator, on_push_policy("from-a", "a"))
    token_a = token_of(await live(emulator, operator, SECRETS, "a-events"))
    token_b = token_of(await live(emulator, operator, SECRETS, "b-events"))
    assert token_a != token_b

    assert (await post(url, event("a"), token_b))[0] == 401, "b's token must not start a's policies"
    assert (await post(url, event("b"), token_a))[0] == 401
    assert (await post(url, event("a"), None))[0] == 401
    assert (await post(url, event("a"), token_a + "x"))[0] == 401
    assert (await post(url, event("nowhere"), token_a))[0] == 401
    # A Secret of the right name that no Registry owns is not a token: anyone who may create Secrets could.
    await create(emulator, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ghost-events", "namespace": NS},
                            "data": {"token": base64.b64encode(b"forged").decode()}})
    assert (await post(url, event("ghost"), "forged"))[0] == 401
    bad = {**event("a"), "registry": {"namespace": NS, "name": "../a"}}
    assert (await post(url, bad, token_a))[0] == 400
    assert await list_objects(emulator, JOBS, NS) == []

    assert await post(url, event("b"), token_b) == (202, {"policies": []})

    async def accepted() -> tuple[int, Any] | None:
        # the policy reaches the receiver's index a moment after it is created
        answer = await post(url, event("a"), token_a)
        return answer if answer[1]["policies"] else None
    assert await wait_for(accepted, DEADLINE, interval=0.2, message="a's push runs from-a") == (
        202, {"policies": [f"{NS}/from-a"]})


async def test_a_tag_pushed_to_a_dockyard_registry_runs_its_on_push_policy(
        emulator: Emulator, operator: Operator, tmp_path: Path) -> None:
    require_dockyard()
    await create(emulator, registry("main"))
    await create(emulator, on_push_policy("mirror", "main"))
    token = token_of(await live(emulator, operator, SECRETS, "main-events"))
    config = yaml.safe_load((await live(emulator, operator, CONFIGMAPS, "main-config"))["data"]["config.yaml"])

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
            obj = await get(emulator, "dockyard.dev/v1alpha1/replicationpolicies", "mirror", NS)
            conds = ((obj or {}).get("status") or {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
        await wait_for(mirror_ready, DEADLINE, message="the policy is ready for pushes")

        digest, _ = await asyncio.to_thread(client.push_image, "team/app", "v1")

        async def push_job() -> list[dict[str, Any]]:
            operator.check()
            return [j for j in await list_objects(emulator, JOBS, NS)
                    if j["metadata"]["name"].startswith("mirror-push-")]
        try:
            [job] = await wait_for(push_job, DEADLINE, message="a Job for the pushed tag")
        except TimeoutError:
            pytest.fail(f"no push run; registry log:\n{server.output()[-3000:]}\noperator log:\n{operator.output()}")
        assert job["metadata"]["annotations"]["dockyard.dev/push-event"].startswith(f"team/app:v1@{digest} ")


async def test_without_the_events_url_nothing_about_events_exists(
        emulator: Emulator, kubeconfig: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKYARD_EVENTS_URL", raising=False)
    monkeypatch.delenv("DOCKYARD_EVENTS_ADDR", raising=False)
    async with running_operator(kubeconfig, tmp_path / "operator.log") as op:
        await create(emulator, registry("main"))
        dep = await live(emulator, op, DEPLOYMENTS, "main")
        config = yaml.safe_load((await live(emulator, op, CONFIGMAPS, "main-config"))["data"]["config.yaml"])
        await settle(emulator, op)
    assert "notify" not in config
    assert not [v for v in dep["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    assert await list_objects(emulator, SECRETS, NS) == []
