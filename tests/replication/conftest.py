"""Fixtures for replication tests: real registries on 127.0.0.1 (skipped, or failed in CI, when missing)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry.processes import DISTRIBUTION, RegistryProcess, start_distribution


def need(tool: str, path: str | None = None) -> None:
    if (path and os.path.exists(path)) or shutil.which(tool):
        return
    message = f"{tool} is not installed (apt-get install {tool})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def distribution_pair(tmp_path: Path) -> Iterator[tuple[RegistryProcess, RegistryProcess]]:
    need("docker-registry", DISTRIBUTION)
    with start_distribution(tmp_path / "src") as src, start_distribution(tmp_path / "dst") as dst:
        yield src, dst
