"""CustomResourceDefinitions generated from the API models (`make crds`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dockyard.api import GROUP, VERSION
from dockyard.api.registry import RegistrySpec, RegistryStatus
from dockyard.api.replication import ReplicationPolicySpec, ReplicationPolicyStatus
from dockyard.api.schema import Model, openapi


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[Model]
    status: type[Model]
    columns: tuple[dict[str, Any], ...]
    scale: dict[str, str] | None = None

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _ready_column() -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}


def _age_column() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


REGISTRY = Kind(
    kind="Registry",
    plural="registries",
    short_names=("reg",),
    spec=RegistrySpec,
    status=RegistryStatus,
    columns=(
        _ready_column(),
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
        _age_column(),
    ),
    scale={
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    },
)

REPLICATION_POLICY = Kind(
    kind="ReplicationPolicy",
    plural="replicationpolicies",
    short_names=("rpol",),
    spec=ReplicationPolicySpec,
    status=ReplicationPolicyStatus,
    columns=(
        _ready_column(),
        {"name": "Last Run", "type": "date", "jsonPath": ".status.lastRun.completionTime"},
        {"name": "Result", "type": "string", "jsonPath": ".status.lastRun.result"},
        _age_column(),
    ),
)

KINDS: tuple[Kind, ...] = (REGISTRY, REPLICATION_POLICY)


def crd(kind: Kind) -> dict[str, Any]:
    """The CRD of one kind, as a real API server accepts it (structural schema)."""
    spec_schema = openapi(kind.spec)
    status_schema = openapi(kind.status)
    status_schema.pop("required", None)
    subresources: dict[str, Any] = {"status": {}}
    if kind.scale:
        subresources["scale"] = dict(kind.scale)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.name},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": ["dockyard"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": subresources,
                "additionalPrinterColumns": list(kind.columns),
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    },
                }},
            }],
        },
    }
