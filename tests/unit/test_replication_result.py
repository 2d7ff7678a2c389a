"""Status summarisation of a run: result, lastRun, the summary line, persisted failures."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dockyard.api.replication import FailedItem, LastRun
from dockyard.api.schema import dump, parse
from dockyard.replication.result import MAX_FAILED_ITEMS, RunResult, last_run, outcome, summary_line
from dockyard.replication.state import FileState


@pytest.mark.parametrize(("done", "failed", "fatal", "expected"), [
    (10, 0, None, "Succeeded"),
    (0, 0, None, "Succeeded"),
    (9, 1, None, "PartiallyFailed"),
    (0, 3, None, "Failed"),
    (10, 0, "source unreachable", "Failed"),
])
def test_outcome(done: int, failed: int, fatal: str | None, expected: str) -> None:
    assert outcome(done, failed, fatal) == expected


def _result() -> RunResult:
    r = RunResult(started=datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC))
    r.finished = datetime(2024, 5, 1, 10, 0, 42, tzinfo=UTC)
    r.copied, r.skipped, r.bytes_copied = 3, 7, 5 * 2**30
    r.fail("library/nginx", "1.25", "GET /v2/library/nginx/manifests/1.25: HTTP 500")
    r.notes.append("1 index(es) rewritten by the platform filter (new digests)")
    return r


def test_last_run_status() -> None:
    status = last_run(_result())
    assert status == LastRun(
        start_time="2024-05-01T10:00:00Z", completion_time="2024-05-01T10:00:42Z", result="PartiallyFailed",
        artifacts_copied=3, artifacts_skipped=7, artifacts_failed=1, artifacts_deleted=0,
        bytes_copied=5 * 2**30, message="1 index(es) rewritten by the platform filter (new digests)")  # type: ignore[arg-type]
    assert parse(LastRun, dump(status)) == status  # the status round-trips through the API model


def test_summary_line() -> None:
    assert summary_line(_result()) == \
        "PartiallyFailed: copied 3, skipped 7, failed 1, bytes 5.0 GiB, duration 42.0s"


def test_failed_items_are_bounded() -> None:
    r = RunResult()
    for i in range(MAX_FAILED_ITEMS + 50):
        r.fail("repo", f"t{i}", "boom")
    assert r.failed == MAX_FAILED_ITEMS + 50
    assert len(r.failed_items) == MAX_FAILED_ITEMS


def test_file_state_round_trip(tmp_path: Path) -> None:
    state = FileState(tmp_path / "sub" / "state.json")
    assert state.load() == []
    items = [FailedItem("a/b", "1.0", "HTTP 503"), FailedItem("c", "sha256:x", "")]
    state.save(items)
    assert FileState(tmp_path / "sub" / "state.json").load() == items
    (tmp_path / "sub" / "state.json").write_text("{not json")
    assert state.load() == []
