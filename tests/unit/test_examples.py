"""Every Registry in examples/ is one a cluster admin can apply as it stands.

Each example must pass what the API server checks at `kubectl apply` (the CRD's structural
schema, defaults and CEL rules, replayed by tests/unit/cel.py) and what the operator checks when
it parses the spec, and its header must tell the reader how to create every Secret it uses.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.api import API_VERSION
from dockyard.api.crd import REGISTRY
from dockyard.api.registry import NAME_PATTERN, RegistrySpec
from dockyard.api.schema import parse
from tests.unit import cel

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _registries() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        with path.open() as f:
            for index, doc in enumerate(yaml.safe_load_all(f)):
                if isinstance(doc, dict) and doc.get("kind") == REGISTRY.kind:
                    found.append((f"{path.name}#{index}", doc))
    return found


REGISTRIES = _registries()
# The committed CRD is what `kubectl apply -k manifests/` installs (test_schema_validation checks
# that it is what the generator produces).
SCHEMA = cel.version_schema(cel.load_crd(ROOT / "crds" / f"{REGISTRY.name}.yaml"))


def _referenced_secrets(spec: dict[str, Any]) -> set[str]:
    names = set()
    if spec.get("auth"):
        names.add(spec["auth"]["htpasswdSecretRef"]["name"])
    if spec.get("tls"):
        names.add(spec["tls"]["secretName"])
    if spec.get("ingress", {}).get("tlsSecretName"):
        names.add(spec["ingress"]["tlsSecretName"])
    names.update(hook["secretRef"]["name"] for hook in spec.get("webhooks", []))
    s3 = spec["storage"].get("s3") or {}
    names.update(s3[ref]["name"] for ref in ("secretRef", "caSecretRef") if ref in s3)
    return names


def test_there_are_registry_examples() -> None:
    assert len(REGISTRIES) >= 4, f"expected the basic, ephemeral, HA and secure examples, found {REGISTRIES}"


@pytest.mark.parametrize(("where", "doc"), REGISTRIES, ids=[w for w, _ in REGISTRIES])
def test_example_is_admitted_by_the_crd(where: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == API_VERSION
    assert re.match(NAME_PATTERN, doc["metadata"]["name"]), doc["metadata"]
    violations = cel.admit(doc, SCHEMA)
    assert violations == [], f"{where}: " + "; ".join(map(str, violations))


@pytest.mark.parametrize(("where", "doc"), REGISTRIES, ids=[w for w, _ in REGISTRIES])
def test_example_is_accepted_by_the_operator(where: str, doc: dict[str, Any]) -> None:
    spec = parse(RegistrySpec, doc["spec"])
    # The operator sees what the API server stored: the defaulted object parses to the same model.
    stored = cel.apply_defaults(copy.deepcopy(doc), SCHEMA)
    assert parse(RegistrySpec, stored["spec"]) == spec


@pytest.mark.parametrize(("where", "doc"), REGISTRIES, ids=[w for w, _ in REGISTRIES])
def test_example_header_says_how_to_create_its_secrets(where: str, doc: dict[str, Any]) -> None:
    text = (EXAMPLES / where.split("#")[0]).read_text()
    header = text.split("\napiVersion:")[0]
    assert text.startswith("# "), f"{where} must start with a comment saying what it is for"
    assert "Secrets:" in header
    for name in _referenced_secrets(doc["spec"]):
        assert re.search(rf"kubectl .*create secret (generic|tls) {re.escape(name)}\b", header), \
            f"{where}: the header does not show how to create Secret {name!r}"


@pytest.mark.parametrize(("where", "doc"), REGISTRIES, ids=[w for w, _ in REGISTRIES])
def test_a_secret_the_example_brings_holds_every_key_the_registry_reads(where: str, doc: dict[str, Any]) -> None:
    from dockyard.render.registry import referenced_secrets

    docs = [d for d in yaml.safe_load_all((EXAMPLES / where.split("#")[0]).read_text()) if d]
    brought = {d["metadata"]["name"]: {**(d.get("data") or {}), **(d.get("stringData") or {})}
               for d in docs if d.get("kind") == "Secret"}
    for name, keys in referenced_secrets(parse(RegistrySpec, doc["spec"])).items():
        if name in brought:
            assert set(keys) <= set(brought[name]), f"{where}: Secret {name!r} lacks {set(keys) - set(brought[name])}"

