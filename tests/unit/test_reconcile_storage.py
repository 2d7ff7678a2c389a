"""What a reconcile does with the storage part of the status, which the push receiver writes.

`status.storage.error` (the registry cannot use its storage) stalls the Registry with reason
StorageUnavailable and one Warning Event per transition; passes that change nothing write
nothing; and no pass writes the keys of the registry's reports, so a pass that read the status
before a report cannot put back what the report changed. A claim's keys leave with the claim.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from dockyard.controller.conditions import USAGE_KEYS
from dockyard.controller.reconcile import Pass, Reconciler
from dockyard.render.registry import REVIEWER_BINDING
from tests.unit.test_drift import StoringKube
from tests.unit.test_push_receiver import merge

ERROR = "S3 bucket images at http://minio:9000: InvalidAccessKeyId: The access key ID you provided does not exist"
S3 = {"storage": {"s3": {"bucket": "images", "endpoint": "http://minio:9000", "forcePathStyle": True}}}


class StatusKube(StoringKube):
    """Keeps the Registry's status as the API server would, from the merge patches it receives."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__()
        self.objects[("ClusterRoleBinding", REVIEWER_BINDING)] = {"metadata": {"name": REVIEWER_BINDING},
                                                                  "subjects": []}
        self.status = status
        self.patches: list[dict[str, Any]] = []
        self.during_apply: Callable[[], None] = lambda: None
        """What else happens while a pass applies its children (the receiver writing a report)."""

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           status: Mapping[str, Any]) -> dict[str, Any]:
        self.patches.append(copy.deepcopy(dict(status)))
        merge(self.status, status)
        return {"status": self.status}

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.during_apply()
        return await super().apply(obj)


class Registry:
    """One Registry reconciled again and again, its Events counted."""

    def __init__(self, spec: dict[str, Any], status: dict[str, Any]) -> None:
        self.spec = spec
        self.kube = StatusKube(status)
        self.events: list[tuple[str, str, str]] = []
        self.reconciler = Reconciler(self.kube, lambda _, *event: self.events.append(event))  # type: ignore[arg-type]

    async def reconcile(self) -> list[dict[str, Any]]:
        """One pass; the status patches it wrote."""
        before = len(self.kube.patches)
        body = {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
                "metadata": {"name": "main", "namespace": "registries", "uid": "uid-1", "generation": 1},
                "spec": self.spec, "status": copy.deepcopy(self.kube.status)}
        await Pass(self.reconciler, body).run()
        return self.kube.patches[before:]

    def condition(self, type_: str) -> dict[str, Any]:
        found: dict[str, Any] = next(c for c in self.kube.status["conditions"] if c["type"] == type_)
        return found


async def test_a_storage_error_stalls_the_registry_with_one_event_until_a_report_clears_it() -> None:
    registry = Registry(S3, {"observedGeneration": 1,
                             "storage": {"used": "0", "usedBytes": 0, "full": False, "error": ERROR}})
    await registry.reconcile()
    stalled = registry.condition("Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "StorageUnavailable")
    assert ERROR in stalled["message"]
    assert (registry.condition("Ready")["status"], registry.condition("Ready")["reason"]) == (
        "False", "StorageUnavailable")
    assert [e for e in registry.events if e[1] == "StorageUnavailable"] == [
        ("Warning", "StorageUnavailable", f"the registry cannot use its storage: {ERROR}")]

    # Unrelated passes (a child's event, a resync) keep it, write nothing and post nothing.
    events = len(registry.events)
    assert await registry.reconcile() == []
    assert await registry.reconcile() == []
    assert len(registry.events) == events
    assert registry.kube.status["storage"]["error"] == ERROR

    merge(registry.kube.status, {"storage": {"usedBytes": 10, "used": "10", "error": None}})  # a good report
    await registry.reconcile()
    assert registry.condition("Stalled")["status"] == "False"
    assert registry.events[events:] == [("Normal", "Recovered", "the registry is no longer stalled")]
    assert len([e for e in registry.events if e[1] == "StorageUnavailable"]) == 1


async def test_a_report_that_arrives_during_a_pass_is_not_undone_by_it() -> None:
    registry = Registry({"storage": {"pvc": {"size": "1Gi"}}}, {"storage": {
        "used": "1Ki", "usedBytes": 1024, "capacityBytes": 4096, "full": False, "error": ERROR}})
    good = {"used": "2Ki", "usedBytes": 2048, "capacityBytes": 4096, "full": False, "error": None}
    registry.kube.during_apply = lambda: merge(registry.kube.status, {"storage": good})
    patches = await registry.reconcile()
    assert any("storage" in patch for patch in patches)  # the claim's name
    for patch in patches:
        assert not set(patch.get("storage") or {}) & set(USAGE_KEYS), patch
    assert registry.kube.status["storage"] == {"claimName": "main-data", "used": "2Ki", "usedBytes": 2048,
                                               "capacityBytes": 4096, "full": False}


async def test_a_claim_leaves_the_status_with_the_claim() -> None:
    registry = Registry(S3, {"observedGeneration": 1, "storage": {
        "claimName": "main-data", "capacity": "20Gi", "used": "1Ki", "usedBytes": 1024, "capacityBytes": 4096,
        "full": False}})
    [patch] = await registry.reconcile()
    assert patch["storage"] == {"claimName": None, "capacity": None}
    assert registry.kube.status["storage"] == {"used": "1Ki", "usedBytes": 1024, "capacityBytes": 4096,
                                               "full": False}
    assert await registry.reconcile() == []


async def test_scaled_to_zero_an_old_storage_error_stalls_nothing() -> None:
    registry = Registry({**S3, "replicas": 0}, {"observedGeneration": 1, "storage": {"error": ERROR}})
    await registry.reconcile()
    assert registry.condition("Stalled")["status"] == "False"
    assert registry.condition("Ready")["reason"] == "ScaledToZero"
