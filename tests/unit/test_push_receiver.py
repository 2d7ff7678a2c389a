"""The operator's receiver of registry events, over real HTTP with a fake API adapter.

An event counts only when its body is signed (HMAC-SHA256, `X-Dockyard-Signature`) with the
events token of the Registry its CloudEvents `source` names; then a push runs the matching
onPush policies, and a webhook failure report becomes a Warning Event on the Registry.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dockyard.controller.push import Receiver, Subscriber, Tokens
from dockyard.replication.filters import TagSelector

NS = "registries"
TOKENS = {"main": b"token-of-main", "other": b"token-of-other"}


class FakeKube:
    def __init__(self) -> None:
        self.gets: list[tuple[str, str, str]] = []
        self.status: dict[str, Any] = {}
        """The Registries' status (all of them share it: the tests look at one)."""
        self.patches: list[dict[str, Any]] = []

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           status: Mapping[str, Any]) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(dict(status)))
        merge(self.status, status)
        return {"status": self.status}

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self.gets.append((kind, namespace or "", name))
        if kind == "Secret" and name.endswith("-events") and name[:-7] in TOKENS:
            registry = name[:-7]
            return {"metadata": {"name": name, "ownerReferences": [
                        {"kind": "Registry", "name": registry, "controller": True}]},
                    "data": {"token": base64.b64encode(TOKENS[registry]).decode()}}
        if kind == "Registry" and name in TOKENS:
            return {"apiVersion": api_version, "kind": "Registry",
                    "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}"},
                    "status": copy.deepcopy(self.status)}
        return None


class FakeReconciler:
    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, str]] = []
        self.events: list[tuple[Mapping[str, Any], str, str, str]] = []

    async def push(self, namespace: str, name: str, label: str) -> None:
        self.pushes.append((namespace, name, label))

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((body, type_, reason, message))


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """A JSON merge patch (RFC 7386), as the API server applies it to the status."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


@pytest.fixture
def reconciler() -> FakeReconciler:
    return FakeReconciler()


@pytest_asyncio.fixture
async def client(reconciler: FakeReconciler) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    subscribers = {(NS, "main"): [Subscriber(NS, "mirror", ("team/**",), (), TagSelector())]}
    receiver = Receiver(Tokens(FakeKube()), reconciler, subscribers,  # type: ignore[arg-type]
                        post_event=reconciler.post_event)
    app = web.Application()
    app.router.add_post("/v1/push", receiver.receive)
    async with TestClient(TestServer(app)) as c:
        yield c


def cloud_event(type_: str = "push", registry: str = "main", **data: Any) -> bytes:
    return json.dumps({"specversion": "1.0", "id": "e1", "type": f"dev.dockyard.registry.{type_}",
                       "source": f"/registries/{NS}/{registry}", "subject": "team/app:v1",
                       "data": data or {"repository": "team/app", "tag": "v1", "digest": "sha256:" + "ab" * 32}
                       }).encode()


def signed(body: bytes, key: bytes) -> dict[str, str]:
    return {"X-Dockyard-Signature": "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest(),
            "Content-Type": "application/cloudevents+json"}


async def post(client: TestClient[web.Request, web.Application], body: bytes,
               headers: dict[str, str]) -> tuple[int, Any]:
    async with client.post("/v1/push", data=body, headers=headers) as r:
        return r.status, await r.json()


async def test_a_signed_push_runs_the_policies_it_selects(client: Any, reconciler: FakeReconciler) -> None:
    body = cloud_event()
    assert await post(client, body, signed(body, TOKENS["main"])) == (202, {"policies": [f"{NS}/mirror"]})
    [(namespace, name, label)] = reconciler.pushes
    assert (namespace, name) == (NS, "mirror")
    assert label.startswith("team/app:v1@sha256:")
    other = cloud_event(repository="lib/x", tag="v1", digest="sha256:" + "cd" * 32)
    assert await post(client, other, signed(other, TOKENS["main"])) == (202, {"policies": []})


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer token-of-main"},
    {"X-Dockyard-Signature": "sha256=" + "00" * 32},
    {"X-Dockyard-Signature": "token-of-main"},
])
async def test_an_unsigned_or_badly_signed_event_is_refused(client: Any, reconciler: FakeReconciler,
                                                            headers: dict[str, str]) -> None:
    status, _ = await post(client, cloud_event(), headers)
    assert status == 401
    assert reconciler.pushes == []


async def test_only_the_token_of_the_registry_in_the_source_signs_its_events(client: Any,
                                                                             reconciler: FakeReconciler) -> None:
    body = cloud_event()
    assert (await post(client, body, signed(body, TOKENS["other"])))[0] == 401
    body = cloud_event(registry="nowhere")
    assert (await post(client, body, signed(body, TOKENS["main"])))[0] == 401
    tampered = cloud_event(repository="team/evil", tag="v1", digest="sha256:" + "ab" * 32)
    assert (await post(client, tampered, signed(cloud_event(), TOKENS["main"])))[0] == 401
    assert reconciler.pushes == []


@pytest.mark.parametrize("body", [
    b"not json",
    b"[]",
    json.dumps({"specversion": "0.3", "id": "1", "type": "dev.dockyard.registry.push",
                "source": f"/registries/{NS}/main", "data": {}}).encode(),
    json.dumps({"specversion": "1.0", "id": "1", "type": "dev.dockyard.registry.push",
                "source": f"/registries/{NS}/a/b", "data": {}}).encode(),
    json.dumps({"specversion": "1.0", "id": "1", "type": "dev.dockyard.registry.push",
                "source": "/registries/NS/main", "data": {}}).encode(),
    json.dumps({"specversion": "1.0", "id": "1", "type": "dev.dockyard.registry.push",
                "source": f"/registries/{NS}/main", "data": {"repository": "team/app"}}).encode(),
])
async def test_a_malformed_event_is_refused_with_400(client: Any, body: bytes) -> None:
    assert (await post(client, body, signed(body, TOKENS["main"])))[0] == 400


async def test_a_webhook_failure_report_is_a_warning_event_on_the_registry(client: Any,
                                                                           reconciler: FakeReconciler) -> None:
    body = cloud_event("webhook.failed", webhook="ci", host="ci.example.com", status=503,
                       error="503 Service Unavailable", dropped=2, droppedTotal=5)
    assert (await post(client, body, signed(body, TOKENS["main"])))[0] == 202
    [(registry, type_, reason, message)] = reconciler.events
    assert (registry["kind"], registry["metadata"]["name"], registry["metadata"]["uid"]) == (
        "Registry", "main", "uid-main")
    assert (type_, reason) == ("Warning", "WebhookFailing")
    assert message == "webhook ci (ci.example.com) is failing: 503 Service Unavailable; " \
                      "2 events dropped since the last report"
    assert reconciler.pushes == []
    unsigned = cloud_event("webhook.failed", webhook="ci")
    assert (await post(client, unsigned, {}))[0] == 401
    assert len(reconciler.events) == 1


async def test_an_event_of_another_type_is_accepted_and_ignored(client: Any, reconciler: FakeReconciler) -> None:
    body = cloud_event("pull", repository="team/app", tag="v1")
    assert await post(client, body, signed(body, TOKENS["main"])) == (202, {"ignored": "dev.dockyard.registry.pull"})
    assert reconciler.pushes == []
    assert reconciler.events == []


class StorageReports:
    """A receiver whose Registry reconciles are counted, over real HTTP."""

    def __init__(self, client: TestClient[web.Request, web.Application], kube: FakeKube, receiver: Receiver) -> None:
        self.client, self.kube, self.receiver = client, kube, receiver
        self.reconciles: list[tuple[str, str]] = []

    async def post(self, **data: Any) -> tuple[int, Any]:
        body = cloud_event("storage", **data)
        answer = await post(self.client, body, signed(body, TOKENS["main"]))
        await asyncio.gather(*self.receiver.tasks)
        return answer


@pytest_asyncio.fixture
async def storage(reconciler: FakeReconciler) -> AsyncIterator[StorageReports]:
    kube = FakeKube()
    receiver = Receiver(Tokens(kube), reconciler, {}, post_event=reconciler.post_event)  # type: ignore[arg-type]
    app = web.Application()
    app.router.add_post("/v1/push", receiver.receive)
    async with TestClient(TestServer(app)) as c:
        reports = StorageReports(c, kube, receiver)

        async def reconcile(namespace: str, name: str) -> None:
            reports.reconciles.append((namespace, name))
        receiver.on_registry = reconcile
        yield reports


BUCKET_ERROR = "S3 bucket images at http://x:8333: InvalidAccessKeyId: The access key ID you provided does not exist"


async def test_a_storage_error_reaches_the_status_once_and_a_good_report_clears_it(storage: StorageReports) -> None:
    assert (await storage.post(usedBytes=1024, full=False))[0] == 202
    assert storage.kube.status["storage"] == {"used": "1Ki", "usedBytes": 1024, "full": False}
    assert storage.reconciles == []  # no condition follows from the usage of storage without a size

    assert (await storage.post(error=BUCKET_ERROR))[0] == 202
    assert storage.kube.patches[-1] == {"storage": {"error": BUCKET_ERROR}}
    assert storage.kube.status["storage"] == {"used": "1Ki", "usedBytes": 1024, "full": False, "error": BUCKET_ERROR}
    assert storage.reconciles == [(NS, "main")]

    patches = len(storage.kube.patches)
    assert (await storage.post(error=BUCKET_ERROR))[0] == 202  # the periodic check failed again
    assert len(storage.kube.patches) == patches, "a report that changes nothing writes nothing"
    assert storage.reconciles == [(NS, "main")]

    assert (await storage.post(usedBytes=1024, full=False))[0] == 202
    assert storage.kube.status["storage"] == {"used": "1Ki", "usedBytes": 1024, "full": False}
    assert storage.reconciles == [(NS, "main")] * 2


async def test_another_error_is_written_and_reconciled_and_a_long_one_is_one_bounded_line(
        storage: StorageReports) -> None:
    await storage.post(error=BUCKET_ERROR)
    await storage.post(error="S3 bucket images at http://x:8333:\n  connection refused\n")
    assert storage.kube.status["storage"]["error"] == "S3 bucket images at http://x:8333: connection refused"
    assert len(storage.reconciles) == 2
    await storage.post(error="x" * 5000)
    assert storage.kube.status["storage"]["error"] == "x" * 1024


async def test_usage_without_a_capacity_replaces_a_filesystems(storage: StorageReports) -> None:
    await storage.post(usedBytes=900, capacityBytes=1000, full=False)
    assert storage.kube.status["storage"]["capacityBytes"] == 1000
    assert storage.reconciles == [(NS, "main")]  # StorageNearlyFull
    await storage.post(usedBytes=3 * 2**30, full=False)  # the Registry moved to a bucket
    assert storage.kube.status["storage"] == {"used": "3Gi", "usedBytes": 3 * 2**30, "full": False}
    assert storage.reconciles == [(NS, "main")] * 2


@pytest.mark.parametrize("data", [
    {"error": ""},
    {"error": " \n "},
    {"error": 500},
    {"error": ["InvalidAccessKeyId"]},
    {},
    {"usedBytes": 1},
    {"usedBytes": -1, "full": False},
    {"usedBytes": "1", "full": False},
    {"usedBytes": True, "full": False},
    {"usedBytes": 1, "full": "false"},
    {"usedBytes": 10, "capacityBytes": 5, "full": False},
    {"usedBytes": 1, "capacityBytes": 5.0, "full": False},
])
async def test_a_malformed_storage_report_is_refused_with_400(storage: StorageReports, data: dict[str, Any]) -> None:
    body = json.dumps({"specversion": "1.0", "id": "e1", "type": "dev.dockyard.registry.storage",
                       "source": f"/registries/{NS}/main", "data": data}).encode()
    assert (await post(storage.client, body, signed(body, TOKENS["main"])))[0] == 400
    assert storage.kube.patches == []

