"""Memory between runs: the artifacts that failed, so the next run tries them first.

`run_policy` only needs a `StateStore`; in `-f` mode that is a JSON file (`FileState`),
in a cluster the policy's `status.failedItems` plays the same role.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from dockyard.api.replication import FailedItem
from dockyard.api.schema import SpecError, dump, parse


class StateStore(Protocol):
    def load(self) -> list[FailedItem]: ...
    def save(self, failed: Sequence[FailedItem]) -> None: ...


class MemoryState:
    """State that lives as long as the object (tests, one-off runs)."""

    def __init__(self, failed: Sequence[FailedItem] = ()) -> None:
        self.failed = list(failed)

    def load(self) -> list[FailedItem]:
        return list(self.failed)

    def save(self, failed: Sequence[FailedItem]) -> None:
        self.failed = list(failed)


class FileState:
    """Failed items in a JSON file, replaced atomically; a missing or unreadable file is empty."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> list[FailedItem]:
        try:
            doc = json.loads(self.path.read_text())
            return [parse(FailedItem, item, "failedItems") for item in doc.get("failedItems", [])]
        except (OSError, ValueError, AttributeError, SpecError):
            return []

    def save(self, failed: Sequence[FailedItem]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        with os.fdopen(fd, "w") as f:
            json.dump({"failedItems": [dump(item) for item in failed]}, f, indent=1)
        os.replace(tmp, self.path)
