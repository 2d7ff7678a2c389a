"""Admission on a real API server: the install's CRDs, every example, and the specs it refuses.

The unit tier replays the CRDs' schemas and CEL rules with its own harness; here the real
kube-apiserver has the last word. The ``apiserver`` fixture has already applied ``crds/`` (a CRD
whose CEL rules exceed the cost budget is refused there). Every Registry and ReplicationPolicy
example is created, and every invalid spec of the unit tier's tables is refused with an error
naming the same field; the valid specs and allowed updates of that tier are admitted.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.kube import ApiError, ApiServer, _call, create, get, patch
from tests.unit import test_replication_api, test_schema_validation

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {p.stem: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted((ROOT / "examples").glob("*.yaml"))}
REGISTRIES = "dockyard.dev/v1alpha1/registries"


async def strict_create(server: ApiServer, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """Create as `kubectl apply` does: unknown fields are errors, not silently pruned."""
    resource = server.resource_for(obj["apiVersion"], obj["kind"])
    created: dict[str, Any] = await _call(server, "POST", server.path(resource, namespace), body=obj,
                                          params={"fieldValidation": "Strict"})
    return created


@pytest.mark.parametrize("example", EXAMPLES)
async def test_example_is_admitted(apiserver: ApiServer, namespace: str, example: str) -> None:
    docs = copy.deepcopy(EXAMPLES[example])
    assert docs, f"{example} holds no object"
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        created = await strict_create(apiserver, doc, namespace)
        assert created["metadata"]["uid"]
        if doc["kind"] == "Registry":  # defaults are the server's to fill in
            assert created["spec"]["replicas"] >= 1


def registry(spec: Any, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": "main", "namespace": namespace}, "spec": copy.deepcopy(spec)}


INVALID = test_schema_validation.INVALID


@pytest.mark.parametrize(("spec", "old", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
async def test_invalid_registry_is_refused_naming_the_field(apiserver: ApiServer, namespace: str, spec: Any,
                                                            old: Any, field: str) -> None:
    if old is not None:
        await strict_create(apiserver, registry(old, namespace), namespace)
        live = await get(apiserver, REGISTRIES, "main", namespace)
        assert live is not None
        attempt = patch(apiserver, REGISTRIES, "main", [{"op": "replace", "path": "/spec", "value": spec}],
                        namespace, content_type="application/json-patch+json", params={"fieldValidation": "Strict"})
    else:
        attempt = strict_create(apiserver, registry(spec, namespace), namespace)
    with pytest.raises(ApiError) as refused:
        await attempt
    assert refused.value.status in (400, 422), refused.value
    assert field in str(refused.value), f"the error does not name {field}: {refused.value}"


VALID = test_schema_validation.VALID


@pytest.mark.parametrize("spec", [c[1] for c in VALID], ids=[c[0] for c in VALID])
async def test_valid_registry_is_admitted(apiserver: ApiServer, namespace: str, spec: Any) -> None:
    created = await strict_create(apiserver, registry(spec, namespace), namespace)
    assert created["metadata"]["uid"]


UPDATES = test_schema_validation.ALLOWED_UPDATES


@pytest.mark.parametrize(("spec", "old"), [c[1:] for c in UPDATES], ids=[c[0] for c in UPDATES])
async def test_allowed_update_is_admitted(apiserver: ApiServer, namespace: str, spec: Any, old: Any) -> None:
    await strict_create(apiserver, registry(old, namespace), namespace)
    updated = await patch(apiserver, REGISTRIES, "main", [{"op": "replace", "path": "/spec", "value": spec}],
                          namespace, content_type="application/json-patch+json",
                          params={"fieldValidation": "Strict"})
    assert set(updated["spec"]["storage"]) == set(spec["storage"])


POLICY_CASES = test_replication_api.CASES


@pytest.mark.parametrize(("name", "spec", "error"), POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
async def test_replication_policy_admission_agrees_with_the_parser(apiserver: ApiServer, namespace: str, name: str,
                                                                   spec: dict[str, Any], error: str | None) -> None:
    policy = test_replication_api.policy(copy.deepcopy(spec))
    policy["metadata"]["namespace"] = namespace
    if error is None:
        await strict_create(apiserver, policy, namespace)
        return
    with pytest.raises(ApiError) as refused:
        await create(apiserver, policy)
    assert refused.value.status == 422, refused.value
