"""Replication: copy images between registries as a ReplicationPolicy describes.

`run_policy` (in `copy`) is the entry point for callers, the CLI and the in-cluster Job:
`run_policy(spec, RunAccess(source, destination), state) -> RunResult`. The names are
re-exported lazily so that `dockyard` commands that do not replicate never import aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dockyard.replication.copy import Access, EngineOptions, RunAccess, run_policy
    from dockyard.replication.result import RunResult

_EXPORTS = {"Access": "copy", "EngineOptions": "copy", "RunAccess": "copy", "run_policy": "copy",
            "RunResult": "result"}

__all__ = ["Access", "EngineOptions", "RunAccess", "RunResult", "run_policy"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"dockyard.replication.{module}"), name)
