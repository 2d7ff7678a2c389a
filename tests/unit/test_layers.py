"""The package's dependency direction (docs/architecture.md, "Layers"): controller -> render
-> api; the registry server and the replication client share only `oci`; pure layers do no Kubernetes I/O.
`dockyard.cron` (five-field schedules) is a pure leaf that any layer may use.

Command-line modules (`*/cli.py`, `dockyard/cli.py`) are composition roots and may import
across layers, lazily, inside the commands they run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "operator" / "dockyard"

ALLOWED: dict[str, set[str]] = {
    "oci": {"oci"},
    "api": {"api"},
    "render": {"render", "api", "__version__", "cron"},
    "registry": {"registry", "oci", "cron"},
    "replication": {"replication", "oci", "api"},
    "controller": {"controller", "render", "api", "replication", "oci", "cron"},
}
FORBIDDEN_MODULES = {"oci": {"aiohttp", "kopf", "kubernetes"}, "api": {"aiohttp", "kopf", "kubernetes"},
                     "render": {"aiohttp", "kopf", "kubernetes"}}


def imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "dockyard" and node.level == 0:
            names.extend(f"dockyard.{alias.name}" for alias in node.names)  # `from dockyard import cron`
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.glob("*/*.py") if p.name != "cli.py" and p.parent.name in ALLOWED)


@pytest.mark.parametrize("path", modules(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_follow_the_layers(path: Path) -> None:
    layer = path.parent.name
    for name in imports(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN_MODULES.get(layer, set()), f"{layer} is pure, yet imports {name}"
        if top != "dockyard":
            continue
        parts = name.split(".")
        target = parts[1] if len(parts) > 1 else ""
        assert target in ALLOWED[layer], f"{layer}/{path.name} imports {name}: not allowed for {layer}"
