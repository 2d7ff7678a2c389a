"""The outcome of one replication run and its summary for users and for the policy status.

`RunResult` is what `run_policy` returns; `last_run` turns it into the `status.lastRun`
model and `summary_line` into the line `dockyard replicate` prints. Both are pure so the
wording and the Succeeded/PartiallyFailed/Failed decision are tested as a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from dockyard.api.replication import FailedItem, LastRun
from dockyard.api.schema import Int64

MAX_FAILED_ITEMS = 100


@dataclass
class RunResult:
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished: datetime | None = None
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    deleted: int = 0
    bytes_copied: int = 0
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    failed_items: list[FailedItem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fatal: str | None = None
    """A failure that stopped the whole run (the source could not be listed, say)."""
    would_copy: list[str] = field(default_factory=list)
    would_delete: list[str] = field(default_factory=list)

    def fail(self, repository: str, tag: str, error: str) -> None:
        self.failed += 1
        if len(self.failed_items) < MAX_FAILED_ITEMS:
            self.failed_items.append(FailedItem(repository, tag, error[:1024]))

    @property
    def result(self) -> str:
        return outcome(self.copied + self.skipped + self.deleted, self.failed, self.fatal)

    @property
    def duration(self) -> float:
        end = self.finished or datetime.now(UTC)
        return (end - self.started).total_seconds()


def outcome(done: int, failed: int, fatal: str | None) -> str:
    """Succeeded when nothing failed; Failed when nothing worked; PartiallyFailed in between."""
    if fatal is not None:
        return "Failed"
    if failed == 0:
        return "Succeeded"
    return "Failed" if done == 0 else "PartiallyFailed"


def _rfc3339(when: datetime | None) -> str | None:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def last_run(result: RunResult) -> LastRun:
    """`status.lastRun` of a finished run."""
    messages = ([result.fatal] if result.fatal else []) + result.notes
    return LastRun(
        start_time=_rfc3339(result.started),
        completion_time=_rfc3339(result.finished),
        result=outcome(result.copied + result.skipped + result.deleted, result.failed,
                       result.fatal),  # type: ignore[arg-type]
        artifacts_copied=result.copied,
        artifacts_skipped=result.skipped,
        artifacts_failed=result.failed,
        artifacts_deleted=result.deleted,
        bytes_copied=Int64(result.bytes_copied),
        message="; ".join(messages)[:1024] or None,
    )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def summary_line(result: RunResult) -> str:
    """`Succeeded: copied 3, skipped 10, failed 0, bytes 12.5 MiB, duration 2.1s`."""
    parts = [f"copied {result.copied}", f"skipped {result.skipped}", f"failed {result.failed}"]
    if result.deleted:
        parts.append(f"deleted {result.deleted}")
    parts += [f"bytes {human_bytes(result.bytes_copied)}", f"duration {result.duration:.1f}s"]
    return f"{result.result}: " + ", ".join(parts)
