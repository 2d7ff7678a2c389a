"""The package's dependency direction (docs/architecture.md, "Layers") as import-linter contracts.

The contracts live in pyproject.toml ([tool.importlinter]); `make lint` runs `lint-imports` too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_imports_follow_the_layers(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the lint extra")
    monkeypatch.chdir(ROOT)
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0
