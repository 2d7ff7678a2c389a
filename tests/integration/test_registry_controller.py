"""The Registry controller end to end: the real operator process against the API emulator.

The tests act as kubectl (create, scale, delete by hand) and as the kube-controller-manager
(they report Deployments available through `/status`; the emulator collects garbage by owner
references), and check what a cluster admin would see: children, status, events, and silence
once everything has converged.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.integration.emulator import ApiError, Emulator, create, delete, get, list_objects, patch, wait_for
from tests.integration.operator import Operator, report_available, running_operator

NS = "registries"
REGISTRIES = "dockyard.dev/v1alpha1/registries"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
PVCS = "v1/persistentvolumeclaims"
PDBS = "policy/v1/poddisruptionbudgets"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
DEADLINE = 20.0
CHECKSUM = "dockyard.dev/checksum"

RWO = {"pvc": {"size": "1Gi"}}
RWX = {"pvc": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}


def registry(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


@pytest_asyncio.fixture()
async def operator(emulator: Emulator, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Operator]:
    async with running_operator(kubeconfig, tmp_path / "operator.log") as op:
        yield op


def condition(emulator: Emulator, name: str, type_: str) -> dict[str, Any]:
    obj = emulator.live(REGISTRIES, NS, name) or {}
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


async def wait_condition(emulator: Emulator, op: Operator, name: str, type_: str, status: str,
                         reason: str | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        op.check()
        cond = condition(emulator, name, type_)
        ok = cond.get("status") == status and (reason is None or cond.get("reason") == reason)
        return cond if ok else None
    return await wait_for(check, DEADLINE, message=f"{name}: {type_}={status} {reason or ''}")


async def wait_live(emulator: Emulator, op: Operator, resource: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        op.check()
        return emulator.live(resource, NS, name)
    return await wait_for(check, DEADLINE, message=f"{resource} {name} exists")


async def events_for(emulator: Emulator, name: str) -> list[dict[str, Any]]:
    items = await list_objects(emulator, EVENTS, NS)
    return [e for e in items if e.get("involvedObject", {}).get("name") == name
            and e.get("involvedObject", {}).get("kind") == "Registry"]


async def ready(emulator: Emulator, op: Operator, name: str) -> None:
    await wait_live(emulator, op, DEPLOYMENTS, name)
    await report_available(emulator, NS, name)
    await wait_condition(emulator, op, name, "Ready", "True")


async def quiet(emulator: Emulator, op: Operator, seconds: float = 3.0) -> list[Any]:
    """The writes anybody made during a quiet period (the tests make none)."""
    mark = time.monotonic()
    await asyncio.sleep(seconds)  # observing a time window is the assertion itself
    op.check()
    return emulator.writes(mark)


async def test_create_makes_owned_children_and_reports_progress(emulator: Emulator, operator: Operator) -> None:
    reg = await create(emulator, registry("main", {"storage": RWO}))
    uid = reg["metadata"]["uid"]
    dep = await wait_live(emulator, operator, DEPLOYMENTS, "main")
    for resource, name in [(SERVICES, "main"), ("v1/configmaps", "main-config"),
                           ("v1/serviceaccounts", "main"), (DEPLOYMENTS, "main")]:
        obj = await wait_live(emulator, operator, resource, name)
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["kind"], ref["controller"]) == (uid, "Registry", True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "dockyard"
        managers = {m["manager"] for m in obj["metadata"]["managedFields"]}
        assert managers == {"dockyard"}
    pvc = await wait_live(emulator, operator, PVCS, "main-data")
    assert "ownerReferences" not in pvc["metadata"], "a retained PVC must never be garbage-collected"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "dockyard:test"

    cond = await wait_condition(emulator, operator, "main", "Reconciling", "True")
    assert cond["observedGeneration"] == 1
    status = await wait_for(lambda: (emulator.live(REGISTRIES, NS, "main") or {}).get("status", {}).get("endpoint")
                            and emulator.live(REGISTRIES, NS, "main")["status"],  # type: ignore[index]
                            DEADLINE, message="status reports the endpoint")
    assert status["observedGeneration"] == 1
    assert status["selector"] == "app.kubernetes.io/name=dockyard-registry,app.kubernetes.io/instance=main"
    assert status["endpoint"] == "http://main.registries.svc:5000"
    assert condition(emulator, "main", "Ready")["status"] == "False"
    assert condition(emulator, "main", "Stalled")["status"] == "False"


async def test_available_deployment_makes_the_registry_ready_with_one_event(
        emulator: Emulator, operator: Operator) -> None:
    await create(emulator, registry("main", {"storage": RWO}))
    await ready(emulator, operator, "main")
    status = emulator.live(REGISTRIES, NS, "main")["status"]  # type: ignore[index]
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)
    assert condition(emulator, "main", "Reconciling")["status"] == "False"
    events = await wait_for(lambda: _events_with(emulator, "main", "Ready"), DEADLINE)
    assert len(events) == 1 and events[0]["type"] == "Normal"


async def _events_with(emulator: Emulator, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in await events_for(emulator, name) if e["reason"] == reason]


async def test_scale_subresource_drives_the_deployment_and_the_pdb(emulator: Emulator, operator: Operator) -> None:
    await create(emulator, registry("ha", {"storage": RWX}))
    await ready(emulator, operator, "ha")
    assert emulator.live(PDBS, NS, "ha") is None

    await patch(emulator, REGISTRIES, "ha", {"spec": {"replicas": 3}}, NS, subresource="scale")
    await wait_for(lambda: (emulator.live(DEPLOYMENTS, NS, "ha") or {})["spec"]["replicas"] == 3, DEADLINE)
    pdb = await wait_live(emulator, operator, PDBS, "ha")
    assert pdb["spec"]["maxUnavailable"] == 1
    await wait_condition(emulator, operator, "ha", "Ready", "False")
    await report_available(emulator, NS, "ha")
    await wait_condition(emulator, operator, "ha", "Ready", "True")
    scale = await get(emulator, REGISTRIES, "ha", NS, subresource="scale")
    assert scale is not None and scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "app.kubernetes.io/name=dockyard-registry,app.kubernetes.io/instance=ha"

    await patch(emulator, REGISTRIES, "ha", {"spec": {"replicas": 1}}, NS)
    await wait_for(lambda: emulator.live(PDBS, NS, "ha") is None, DEADLINE, message="PDB removed at 1 replica")
    assert emulator.live(DEPLOYMENTS, NS, "ha")["spec"]["replicas"] == 1  # type: ignore[index]


async def test_children_deleted_or_changed_by_hand_come_back(emulator: Emulator, operator: Operator) -> None:
    await create(emulator, registry("main", {"storage": RWO}))
    await ready(emulator, operator, "main")
    old = emulator.live(SERVICES, NS, "main")
    assert old is not None
    await delete(emulator, SERVICES, "main", NS)
    svc = await wait_for(lambda: emulator.live(SERVICES, NS, "main"), DEADLINE, message="Service re-created")
    assert svc["metadata"]["uid"] != old["metadata"]["uid"]
    assert svc["spec"]["ports"][0]["port"] == 5000

    await patch(emulator, DEPLOYMENTS, "main", {"spec": {"replicas": 5}}, NS)
    await wait_for(lambda: emulator.live(DEPLOYMENTS, NS, "main")["spec"]["replicas"] == 1,  # type: ignore[index]
                   DEADLINE, message="Deployment replicas repaired")


async def test_missing_secret_stalls_then_recovers_and_rotation_rolls_pods(
        emulator: Emulator, operator: Operator) -> None:
    spec = {"storage": RWO, "auth": {"htpasswdSecretRef": {"name": "users"}}}
    await create(emulator, registry("secure", spec))
    cond = await wait_condition(emulator, operator, "secure", "Stalled", "True", "SecretNotFound")
    assert "users" in cond["message"]
    assert emulator.live(DEPLOYMENTS, NS, "secure") is None
    warnings = await wait_for(lambda: _events_with(emulator, "secure", "SecretNotFound"), DEADLINE)
    assert len(warnings) == 1 and warnings[0]["type"] == "Warning"

    await create(emulator, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users", "namespace": NS},
                            "data": {"htpasswd": base64.b64encode(b"alice:$2y$05$abc").decode()}})
    await wait_condition(emulator, operator, "secure", "Stalled", "False")
    dep = await wait_live(emulator, operator, DEPLOYMENTS, "secure")
    first = dep["spec"]["template"]["metadata"]["annotations"][CHECKSUM]
    await ready(emulator, operator, "secure")
    assert len(await _events_with(emulator, "secure", "SecretNotFound")) == 1

    await patch(emulator, SECRETS, "users", {"data": {"htpasswd": base64.b64encode(b"bob:$2y$05$def").decode()}},
                NS)
    await wait_for(lambda: emulator.live(DEPLOYMENTS, NS, "secure")["spec"]["template"]  # type: ignore[index]
                   ["metadata"]["annotations"][CHECKSUM] != first, DEADLINE, message="pods roll on rotation")


async def test_invalid_spec_stalls_with_one_event_and_touches_nothing(
        emulator: Emulator, operator: Operator) -> None:
    # Admission refuses this today; a Registry stored before a rule existed (or on a server that
    # skipped validation) must still not be acted on; the emulator's validation is switched off to model it.
    with pytest.raises(ApiError, match=r"exactly one of storage\.pvc or storage\.emptyDir"):
        await create(emulator, registry("bad", {"storage": {"pvc": {"size": "1Gi"}, "emptyDir": {}}}))
    emulator.validate = False
    await create(emulator, registry("bad", {"storage": {"pvc": {"size": "1Gi"}, "emptyDir": {}}}))
    cond = await wait_condition(emulator, operator, "bad", "Stalled", "True", "InvalidSpec")
    assert "spec.storage" in cond["message"]
    assert emulator.live(DEPLOYMENTS, NS, "bad") is None and emulator.live(PVCS, NS, "bad-data") is None
    assert len(await wait_for(lambda: _events_with(emulator, "bad", "InvalidSpec"), DEADLINE)) == 1
    assert await quiet(emulator, operator, 2.0) == []


async def test_no_writes_once_converged(emulator: Emulator, operator: Operator) -> None:
    await create(emulator, registry("main", {"storage": RWO}))
    await create(emulator, registry("ha", {"storage": RWX, "replicas": 2}))
    await ready(emulator, operator, "main")
    await ready(emulator, operator, "ha")
    for name in ("main", "ha"):  # the last thing convergence writes: the Ready event
        await wait_for(lambda name=name: _events_with(emulator, name, "Ready"), DEADLINE)
    assert await quiet(emulator, operator) == []


async def test_restart_rewrites_nothing(emulator: Emulator, kubeconfig: Path, tmp_path: Path) -> None:
    async with running_operator(kubeconfig, tmp_path / "first.log") as op:
        await create(emulator, registry("main", {"storage": RWO}))
        await ready(emulator, op, "main")
        await wait_for(lambda: _events_with(emulator, "main", "Ready"), DEADLINE)
    mark = time.monotonic()
    async with running_operator(kubeconfig, tmp_path / "second.log") as op:
        # The restarted operator has resumed once its handler for the Registry succeeded: Kopf logs it.
        await wait_for(lambda: op.check() or "Handler 'registry_changed' succeeded" in op.output(), DEADLINE,
                       message="operator resumed the Registry")
        assert await quiet(emulator, op) == []
    assert emulator.writes(mark) == [], "a restart must not rewrite children or status"


async def test_deleting_keeps_the_retained_volume_and_recreating_reattaches_it(
        emulator: Emulator, operator: Operator) -> None:
    await create(emulator, registry("main", {"storage": RWO}))
    await ready(emulator, operator, "main")
    pvc = emulator.live(PVCS, NS, "main-data")
    assert pvc is not None

    await delete(emulator, REGISTRIES, "main", NS)
    await wait_for(lambda: emulator.live(REGISTRIES, NS, "main") is None, DEADLINE, message="Registry deleted")
    await wait_for(lambda: emulator.live(DEPLOYMENTS, NS, "main") is None, DEADLINE, message="children collected")
    assert emulator.live(SERVICES, NS, "main") is None
    kept = emulator.live(PVCS, NS, "main-data")
    assert kept is not None and kept["metadata"]["uid"] == pvc["metadata"]["uid"]

    await create(emulator, registry("main", {"storage": RWO}))
    dep = await wait_live(emulator, operator, DEPLOYMENTS, "main")
    claim = dep["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "main-data"}} in claim
    assert emulator.live(PVCS, NS, "main-data")["metadata"]["uid"] == pvc["metadata"]["uid"]  # type: ignore[index]


async def test_unretained_volume_goes_with_the_registry(emulator: Emulator, operator: Operator) -> None:
    await create(emulator, registry("scratch", {"storage": {"pvc": {"size": "1Gi", "retain": False}}}))
    await wait_live(emulator, operator, PVCS, "scratch-data")
    await delete(emulator, REGISTRIES, "scratch", NS)
    await wait_for(lambda: emulator.live(PVCS, NS, "scratch-data") is None, DEADLINE, message="PVC collected")


@pytest.mark.parametrize("size", ["5Gi"])
async def test_growing_the_volume_expands_the_claim(emulator: Emulator, operator: Operator, size: str) -> None:
    await create(emulator, registry("main", {"storage": RWO}))
    await wait_live(emulator, operator, PVCS, "main-data")
    await patch(emulator, REGISTRIES, "main", {"spec": {"storage": {"pvc": {"size": size}}}}, NS)
    await wait_for(lambda: emulator.live(PVCS, NS, "main-data")["spec"]["resources"]  # type: ignore[index]
                   ["requests"]["storage"] == size, DEADLINE, message="PVC expanded")


async def test_a_namespaced_operator_leaves_other_namespaces_alone(
        emulator: Emulator, kubeconfig: Path, tmp_path: Path) -> None:
    async with running_operator(kubeconfig, tmp_path / "operator.log", scope=("-n", NS)) as op:
        other = registry("elsewhere", {"storage": RWO})
        other["metadata"]["namespace"] = "other"
        await create(emulator, other)
        await create(emulator, registry("main", {"storage": RWO}))
        await wait_live(emulator, op, DEPLOYMENTS, "main")
        await wait_condition(emulator, op, "main", "Reconciling", "True")
        assert emulator.live(DEPLOYMENTS, "other", "elsewhere") is None
        assert not (emulator.live(REGISTRIES, "other", "elsewhere") or {}).get("status")


async def test_a_refused_child_stalls_the_registry_but_never_holds_back_the_others(
        emulator: Emulator, operator: Operator) -> None:
    await create(emulator, registry("main", {"storage": RWO}))
    await ready(emulator, operator, "main")
    before = emulator.live(DEPLOYMENTS, NS, "main")["spec"]["template"]["metadata"]["annotations"]  # type: ignore[index]
    # A StorageClass without volume expansion: the API server forbids growing the claim.
    emulator[f"patch /api/v1/namespaces/{NS}/persistentvolumeclaims/main-data"] << 403 << {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
        "message": "only dynamically provisioned pvc can be resized and the storageclass that provisions "
                   "the pvc must support resize"}
    await patch(emulator, REGISTRIES, "main", {"spec": {"readOnly": True,
                                                        "storage": {"pvc": {"size": "5Gi"}}}}, NS)
    cond = await wait_condition(emulator, operator, "main", "Stalled", "True", "ApplyFailed")
    assert "PersistentVolumeClaim 'main-data'" in cond["message"] and "resize" in cond["message"]
    config = emulator.live("v1/configmaps", NS, "main-config")
    assert config is not None and "readOnly: true" in config["data"]["config.yaml"]
    after = emulator.live(DEPLOYMENTS, NS, "main")["spec"]["template"]["metadata"]["annotations"]  # type: ignore[index]
    assert after[CHECKSUM] != before[CHECKSUM], "the pods must still roll to the new configuration"
    assert emulator.live(PVCS, NS, "main-data")["spec"]["resources"]["requests"]["storage"] == "1Gi"  # type: ignore[index]


async def test_the_operator_streams_only_what_it_manages(emulator: Emulator, operator: Operator) -> None:
    """On a real cluster every Deployment, ConfigMap and Helm release Secret would flow through
    the operator otherwise: the API server filters them out before they are sent."""
    await create(emulator, registry("main", {"storage": RWO}))
    await wait_live(emulator, operator, DEPLOYMENTS, "main")

    def watches() -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for request in list(emulator):  # iterating a kmock server yields the requests it served
            if str(request.params.get("watch", "")).lower() in ("true", "1"):
                found[str(request.url.path).rsplit("/", 1)[-1]] = dict(request.params)
        return found

    seen = await wait_for(lambda: (w := watches()) and {"deployments", "secrets", "configmaps"} <= set(w) and w,
                          DEADLINE, message="the operator watches its children and Secrets")
    for plural in ("deployments", "configmaps", "services", "persistentvolumeclaims", "serviceaccounts"):
        assert seen[plural].get("labelSelector") == "app.kubernetes.io/managed-by=dockyard", plural
    assert "type!=helm.sh/release.v1" in seen["secrets"].get("fieldSelector", "")
    assert "registries" in seen and "labelSelector" not in seen["registries"]
