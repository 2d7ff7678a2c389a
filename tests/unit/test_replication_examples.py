"""Every ReplicationPolicy in examples/ is admitted by the CRD and accepted by the operator as it stands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.api import API_VERSION
from dockyard.api.crd import REPLICATION_POLICY, crd
from dockyard.api.replication import ReplicationPolicySpec
from dockyard.api.schema import parse
from tests.unit import cel

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCHEMA = cel.version_schema(crd(REPLICATION_POLICY))


def _policies() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES.glob("replication-*.yaml")):
        for index, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") == REPLICATION_POLICY.kind:
                found.append((f"{path.name}#{index}", doc))
    return found


POLICIES = _policies()


def test_the_three_use_cases_have_examples() -> None:
    names = {where.split("#")[0] for where, _ in POLICIES}
    assert names >= {"replication-dockerhub-mirror.yaml", "replication-dockyard-to-dockyard.yaml",
                     "replication-release-tags.yaml"}


@pytest.mark.parametrize(("where", "doc"), POLICIES, ids=[w for w, _ in POLICIES])
def test_example_is_admitted_and_parsed(where: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == API_VERSION
    assert cel.admit(doc, SCHEMA) == []
    parse(ReplicationPolicySpec, doc["spec"])


@pytest.mark.parametrize(("where", "doc"), POLICIES, ids=[w for w, _ in POLICIES])
def test_example_header_says_how_to_create_its_secrets(where: str, doc: dict[str, Any]) -> None:
    text = (EXAMPLES / where.split("#")[0]).read_text()
    header = text.split("\napiVersion:")[0]
    assert text.startswith("# ")
    assert "Secrets:" in header
    for side in ("source", "destination"):
        ref = doc["spec"][side].get("secretRef")
        if ref:
            assert re.search(rf"create secret (generic|docker-registry) {re.escape(ref['name'])}\b", header)


def _registries() -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """Every Registry in examples/, by (namespace, name), with the file it is in."""
    found: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Registry":
                key = (doc["metadata"].get("namespace") or "default", doc["metadata"]["name"])
                assert key not in found, f"Registry {key} is in {found[key][0]} and {path.name}"
                found[key] = (path.name, doc)
    return found


@pytest.mark.parametrize(("where", "doc"), POLICIES, ids=[w for w, _ in POLICIES])
def test_example_renders_with_the_registries_it_references(where: str, doc: dict[str, Any], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from dockyard.cli import main

    registries = _registries()
    namespace = doc["metadata"].get("namespace") or "default"
    referenced = []
    for side in ("source", "destination"):
        ref = doc["spec"][side].get("registryRef")
        if ref:
            key = (ref.get("namespace") or namespace, ref["name"])
            assert key in registries, f"{where}: no example in examples/ defines the Registry {key[0]}/{key[1]}"
            file, registry = registries[key]
            assert file in (EXAMPLES / where.split("#")[0]).read_text(), \
                f"{where}: the header should name {file}, which defines Registry {key[0]}/{key[1]}"
            referenced.append(registry)
    assert referenced, f"{where}: every example policy has a Dockyard Registry on one side"
    combined = tmp_path / "combined.yaml"
    combined.write_text(yaml.safe_dump_all([*referenced, doc]))
    code = main(["render", "-f", str(combined), "--image", "dockyard:test"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(out) if o}
    for registry in referenced:
        assert ("Service", registry["metadata"]["name"]) in kinds
    if doc["spec"].get("trigger", {}).get("schedule"):
        assert any(kind == "CronJob" for kind, _ in kinds), sorted(kinds)
