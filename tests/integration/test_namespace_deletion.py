"""Deleting a namespace that holds Dockyard objects: the operator lets go quietly.

The namespace controller (run in this tier) removes everything in a terminating namespace, the
children of a Registry or ReplicationPolicy included, in no particular order. The operator sees
those children go; it must not try to bring them back (the API server refuses anything new in a
terminating namespace with 403), nor report the refusal as a Stalled condition or a Warning
Event. A cluster admin deleting a namespace expects the operator to step aside, so that the
namespace goes away promptly.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from dockyard.controller.kube import Credentials, Kube
from dockyard.controller.reconcile import Reconciler
from tests.integration.kube import ApiServer, Write, create, delete, get, patch, wait_for
from tests.integration.operator import Operator, report_available, running_operator

REGISTRIES = "dockyard.dev/v1alpha1/registries"
POLICIES = "dockyard.dev/v1alpha1/replicationpolicies"
DEPLOYMENTS = "apps/v1/deployments"
CRONJOBS = "batch/v1/cronjobs"
NAMESPACES = "v1/namespaces"
DEADLINE = 60.0
QUIET = 1.5


@pytest_asyncio.fixture()
async def operator(namespace: str, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Operator]:
    # After `namespace`: the operator stops before the namespace fixture cleans up.
    async with running_operator(kubeconfig, tmp_path / "operator.log") as op:
        yield op


@pytest.fixture
def operator_token(kubeconfig: Path) -> str:
    token: str = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    return token


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


async def ready(apiserver: ApiServer, op: Operator, resource: str, namespace: str, name: str,
                reason: str | None = None) -> None:
    async def reached() -> bool:
        op.check()
        cond = condition(await get(apiserver, resource, name, namespace), "Ready")
        return cond.get("status") == "True" and reason in (None, cond.get("reason"))
    await wait_for(reached, DEADLINE, message=f"{resource} {name} Ready {reason or ''}")


async def settled(apiserver: ApiServer, op: Operator, namespace: str) -> None:
    """Wait until the operator has written nothing into NAMESPACE for a while."""
    async def still() -> bool:
        op.check()
        mark = time.time()
        await asyncio.sleep(QUIET)  # observing a time window is the check itself
        return not [w for w in apiserver.writes(mark) if w.namespace == namespace]
    await wait_for(still, DEADLINE, interval=0, message="the operator settles")


def letting_go(write: Write) -> bool:
    """A write an operator may make while its objects are deleted: a patch of the object itself
    (a finalizer off, bookkeeping annotations), never its status nor anything else. Dockyard's
    objects carry no finalizer today (no deletion handlers), so in fact it writes nothing."""
    return write.verb == "patch" and write.resource in ("registries", "replicationpolicies") and write.code < 400


async def test_deleting_the_namespace_makes_the_operator_let_go_quietly(
        apiserver: ApiServer, namespace: str, operator: Operator) -> None:
    await create(apiserver, {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
                             "metadata": {"name": "main", "namespace": namespace},
                             "spec": {"storage": {"emptyDir": {}}}})
    await create(apiserver, {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
                             "metadata": {"name": "mirror", "namespace": namespace},
                             "spec": {"source": {"url": "http://127.1.2.3:5000"},
                                      "destination": {"registryRef": {"name": "main"}},
                                      "trigger": {"schedule": "*/30 * * * *"}}})
    await wait_for(lambda: apiserver.live(DEPLOYMENTS, namespace, "main"), DEADLINE, message="the Deployment")
    await report_available(apiserver, namespace, "main")
    await ready(apiserver, operator, REGISTRIES, namespace, "main")
    await ready(apiserver, operator, POLICIES, namespace, "mirror", "Scheduled")
    assert apiserver.live(CRONJOBS, namespace, "mirror") is not None
    await settled(apiserver, operator, namespace)

    mark, logged = time.time(), operator.log.stat().st_size
    await delete(apiserver, NAMESPACES, namespace)
    await wait_for(lambda: apiserver.live(NAMESPACES, None, namespace) is None, DEADLINE, interval=0.25,
                   message=f"namespace {namespace} is gone")
    took = time.time() - mark
    await asyncio.sleep(QUIET)  # writes in flight when it went
    operator.check()

    during = [w for w in apiserver.writes(mark) if w.namespace == namespace]
    assert [w for w in during if not letting_go(w)] == [], (
        f"the operator fought the namespace's deletion ({took:.1f}s); all its writes: {during}\n"
        f"{operator.output()}")
    since = operator.log.read_bytes()[logged:].decode(errors="replace")
    noise = [line for line in since.splitlines() if "ERROR" in line or "WARNING" in line]
    assert noise == [], f"the operator complained about the namespace's deletion:\n{since[-8000:]}"


async def test_a_namespace_that_begins_to_terminate_during_a_pass_ends_the_pass_quietly(
        apiserver: ApiServer, namespace: str, operator_token: str) -> None:
    """The race the check at the start of a pass leaves: the namespace's deletion begins after it.
    The first refused child ends the pass, with no status and no Event about the refusal."""
    hold = {"apiVersion": "v1", "kind": "ConfigMap",  # keeps the namespace terminating
            "metadata": {"name": "hold", "namespace": namespace, "finalizers": ["dockyard.dev/test-hold"]}}
    await create(apiserver, hold)
    await delete(apiserver, NAMESPACES, namespace)
    kube = Kube(Credentials(apiserver.url, operator_token, ssl.create_default_context(cafile=str(apiserver.ca))))
    try:
        await wait_for(lambda: kube.namespace_terminating(namespace), DEADLINE, message="namespace terminating")
        assert not await kube.namespace_terminating("dockyard-system")
        body = {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
                "metadata": {"name": "main", "namespace": namespace, "uid": "0", "generation": 1},
                "spec": {"storage": {"emptyDir": {}}}, "status": {"observedGeneration": 1}}

        class Late(Reconciler):
            async def current(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
                return body  # as read just before the namespace's deletion began

        events: list[tuple[Any, ...]] = []
        mark = time.time()
        await Late(kube, lambda *event: events.append(event)).request(namespace, "main")
        assert events == []
        writes = [w for w in apiserver.writes(mark) if w.namespace == namespace]
        assert len(writes) == 1, f"one refused child, then nothing: {writes}"
        assert writes[0].code == 403, f"one refused child, then nothing: {writes}"
    finally:
        await kube.close()
        await patch(apiserver, "v1/configmaps", "hold", {"metadata": {"finalizers": None}}, namespace)
