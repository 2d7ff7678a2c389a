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
    assert text.startswith("# ") and "Secrets:" in header
    for side in ("source", "destination"):
        ref = doc["spec"][side].get("secretRef")
        if ref:
            assert re.search(rf"create secret (generic|docker-registry) {re.escape(ref['name'])}\b", header)
