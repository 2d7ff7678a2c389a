"""Drift detection: a child is re-applied only when the live object lost what Dockyard rendered.

The API server stores quantities in canonical form (`1.5Gi` comes back as `1536Mi`, `1000m` as
`1`, the number 2 as the string `"2"`), so the drift check compares quantities by value: text
that differs but means the same is no drift, and a child whose quantity really changed is.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest

from dockyard.controller.reconcile import Pass, Reconciler, contains, stamp
from dockyard.render import RenderInput, render_registry

CANONICAL: dict[Any, str] = {"1.5Gi": "1536Mi", "0.5Gi": "512Mi", "0.75Gi": "768Mi", "1000m": "1", "250m": "250m",
                             2: "2", "1.5e9": "1500e6"}
"""What a Kubernetes 1.36 API server stores for the quantities these tests write."""

QUANTITY_KEYS = {"storage", "cpu", "memory", "ephemeral-storage", "sizeLimit"}


def canonical(obj: Any, key: str = "") -> Any:
    """`obj` as the API server stores it: quantities in canonical form."""
    if isinstance(obj, Mapping):
        return {k: canonical(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [canonical(v, key) for v in obj]
    if key in QUANTITY_KEYS and obj in CANONICAL:
        return CANONICAL[obj]
    return obj


def body(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": "main", "namespace": "registries", "uid": "uid-1", "generation": 1},
            "spec": spec}


def rendered(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    objs = render_registry(RenderInput.from_body(body(spec), image="dockyard:test"))
    return {o["kind"]: stamp(o) for o in objs}


def test_same_size_in_other_units_is_no_drift() -> None:
    desired = rendered({"storage": {"pvc": {"size": "1.5Gi"}}})["PersistentVolumeClaim"]
    live = canonical(desired)
    assert live["spec"]["resources"]["requests"]["storage"] == "1536Mi"
    assert contains(live, desired)


def test_a_different_size_is_drift() -> None:
    desired = rendered({"storage": {"pvc": {"size": "2Gi"}}})["PersistentVolumeClaim"]
    live = copy.deepcopy(desired)
    live["spec"]["resources"]["requests"]["storage"] = "1536Mi"
    assert not contains(live, desired)


@pytest.mark.parametrize(("desired", "live", "same"), [
    ({"cpu": "1000m"}, {"cpu": "1"}, True),
    ({"cpu": 2}, {"cpu": "2"}, True),
    ({"cpu": 0.5}, {"cpu": "500m"}, True),
    ({"memory": "0.5Gi"}, {"memory": "512Mi"}, True),
    ({"memory": "1.5e9"}, {"memory": "1500e6"}, True),
    ({"memory": "1.5e9"}, {"memory": "1500M"}, True),
    ({"memory": "1Gi"}, {"memory": "1G"}, False),
    ({"cpu": "1"}, {"cpu": "1001m"}, False),
    ({"cpu": "1"}, {}, False),
    ({"cpu": "1"}, {"cpu": None}, False),
])
def test_container_resources_compare_by_value(desired: dict[str, Any], live: dict[str, Any], same: bool) -> None:
    for field in ("requests", "limits"):
        assert contains({"resources": {field: live}}, {"resources": {field: desired}}) is same


def test_empty_dir_size_limit_compares_by_value() -> None:
    assert contains({"emptyDir": {"sizeLimit": "768Mi"}}, {"emptyDir": {"sizeLimit": "0.75Gi"}})
    assert not contains({"emptyDir": {"sizeLimit": "1Gi"}}, {"emptyDir": {"sizeLimit": "0.75Gi"}})


def test_only_quantity_fields_compare_by_value() -> None:
    assert not contains({"metadata": {"labels": {"size": "1536Mi"}}}, {"metadata": {"labels": {"size": "1.5Gi"}}})
    assert not contains({"spec": {"replicas": "2"}}, {"spec": {"replicas": 2}})
    assert not contains({"resources": {"requests": {"cpu": "lots"}}}, {"resources": {"requests": {"cpu": "many"}}})


class StoringKube:
    """Just enough of the API for a reconcile pass: it stores what is applied, canonically."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.applied: list[str] = []

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((kind, name)))

    async def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.applied.append(obj["kind"])
        stored: dict[str, Any] = canonical(copy.deepcopy(dict(obj)))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = stored
        return copy.deepcopy(stored)

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           status: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    async def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        self.objects.pop((kind, name), None)


@pytest.mark.parametrize("storage", [
    {"pvc": {"size": "1.5Gi"}},
    {"emptyDir": {"sizeLimit": "0.75Gi"}},
], ids=["pvc", "emptyDir"])
async def test_a_second_pass_applies_nothing_when_the_server_canonicalised_quantities(
        storage: dict[str, Any]) -> None:
    kube = StoringKube()
    reconciler = Reconciler(kube, lambda *_: None)  # type: ignore[arg-type]
    spec = {"storage": storage,
            "resources": {"requests": {"cpu": "250m", "memory": "0.5Gi"}, "limits": {"cpu": 2, "memory": "1.5e9"}}}
    await Pass(reconciler, body(spec)).run()
    assert "Deployment" in kube.applied
    assert ("PersistentVolumeClaim" in kube.applied) == ("pvc" in storage)
    kube.applied.clear()
    await Pass(reconciler, body(spec)).run()
    assert kube.applied == []


async def test_a_grown_claim_is_applied_again() -> None:
    kube = StoringKube()
    reconciler = Reconciler(kube, lambda *_: None)  # type: ignore[arg-type]
    await Pass(reconciler, body({"storage": {"pvc": {"size": "1.5Gi"}}})).run()
    kube.applied.clear()
    await Pass(reconciler, body({"storage": {"pvc": {"size": "2Gi"}}})).run()
    assert kube.applied == ["PersistentVolumeClaim"]
