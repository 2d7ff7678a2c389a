"""Fixtures for replication tests: real registries on 127.0.0.1 (skipped, or failed in CI, when missing)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockyard.api.replication import ReplicationPolicySpec
from dockyard.api.schema import parse
from dockyard.replication import Access, EngineOptions, RunAccess, RunResult, run_policy
from dockyard.replication.state import MemoryState, StateStore
from tests.registry.processes import Registries, RegistryProcess, require_tool

# source kind -> destination kind; distribution on both ends always works, the embedded
# registry is the other end in both directions.
PAIRS = [("distribution", "distribution"), ("distribution", "dockyard"), ("dockyard", "distribution")]


@pytest.fixture
def registries(tmp_path: Path) -> Iterator[Registries]:
    servers = Registries(tmp_path)
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(params=PAIRS, ids=[f"{a}-to-{b}" for a, b in PAIRS])
def pair(request: pytest.FixtureRequest, registries: Registries) -> tuple[RegistryProcess, RegistryProcess]:
    source_kind, dest_kind = request.param
    return registries.start(source_kind), registries.start(dest_kind)


@pytest.fixture
def skopeo() -> str:
    return require_tool("skopeo", "skopeo")


def policy(source: str, dest: str, **spec: Any) -> ReplicationPolicySpec:
    limits = spec.pop("limits", {})
    limits.setdefault("retry", {"max": 3, "backoff": "100ms"})
    return parse(ReplicationPolicySpec, {"source": {"url": source}, "destination": {"url": dest},
                                         "limits": limits, **spec})


async def replicate(spec: ReplicationPolicySpec, state: StateStore | None = None,
                    **options: Any) -> RunResult:
    access = RunAccess(Access(spec.source.url or ""), Access(spec.destination.url or ""))
    return await run_policy(spec, access, state or MemoryState(), EngineOptions(**options))
