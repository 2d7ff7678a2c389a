"""An idle install writes nothing to the API server.

With two Ready Registries and a ReplicationPolicy without a schedule that has run once (so a
finished Job and a status written by the run are part of the picture), and everything
converged, the operator's ServiceAccount makes no create, update, patch or delete request for
a minute: no status rewritten with the same content, no child re-applied, no Event posted.
The API server's audit log (Metadata level, reads not logged) is the witness; the test runs
where that log can be read (the local cluster of hack/cluster.sh) and skips elsewhere.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import OPERATOR, OPERATOR_NAMESPACE, Install, wait_until
from tests.e2e.test_e2e import condition, current
from tests.e2e.test_replication_e2e import (
    DESTINATION,
    SETTLE_TIMEOUT,
    SOURCE,
    SYNC_ANNOTATION,
    Pair,
    pair,
    request_sync,
)
from tests.registry.images import image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR}"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
WINDOW = 60.0
QUIET_POLLS = 3
"""Converged: the watched objects' resourceVersions unchanged over this many polls in a row."""
POLL = 5.0


def audit_events(path: Path, offset: int) -> Iterator[dict[str, Any]]:
    """The audit events written to PATH after byte OFFSET: whole lines only."""
    with path.open("rb") as f:
        if offset > 0:
            f.seek(offset - 1)
            if f.read(1) != b"\n":
                f.readline()  # the rest of a line that was being written at OFFSET
        for line in f:
            if not line.endswith(b"\n"):
                break  # being written now
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def operator_writes(path: Path, offset: int, since: datetime | None = None) -> list[dict[str, Any]]:
    """The operator's write requests logged after OFFSET (received at SINCE or later), one per request."""
    seen: dict[str, dict[str, Any]] = {}
    for event in audit_events(path, offset):
        if (event.get("user") or {}).get("username") != OPERATOR_USER or event.get("verb") not in WRITE_VERBS:
            continue
        received = event.get("requestReceivedTimestamp")
        if since is not None and received and datetime.fromisoformat(received.replace("Z", "+00:00")) < since:
            continue
        seen.setdefault(str(event.get("auditID")), event)
    return list(seen.values())


def describe(event: dict[str, Any]) -> str:
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    group = f".{ref['apiGroup']}" if ref.get("apiGroup") else ""
    where = f"{ref['namespace']}/" if ref.get("namespace") else ""
    code = (event.get("responseStatus") or {}).get("code")
    return (f"{event.get('requestReceivedTimestamp')} {event.get('verb')} {resource}{group} "
            f"{where}{ref.get('name', '')} -> {code}")


def test_idle_operator_writes_nothing(installed: Install, namespace: str, tmp_path: Path) -> None:
    audit = installed.cluster.audit_log
    if audit is None:
        pytest.skip(f"the API server's audit log of {installed.cluster.description} cannot be read here")
    assert audit.exists(), f"no audit log at {audit}: the local cluster writes one (hack/cluster.sh)"
    kube = installed.kube
    start = audit.stat().st_size

    p: Pair = pair(installed, namespace, tmp_path)
    assert p.source.push(image(seed=404, layers=1), "e2e/idle:v1")
    p.apply_policy(None)
    value = request_sync(p)
    p.wait_job(f"answering the sync request {value}",
               lambda j: (j["metadata"].get("annotations") or {}).get(SYNC_ANNOTATION) == value)
    p.assert_succeeded(p.wait_reported())

    # Converged: both Registries Ready for their generation, the policy Ready with no run in
    # progress, no namespace terminating, and none of these objects changed for a while.
    history: list[tuple[str, ...]] = []

    def converged() -> bool:
        objs = [kube.get("-n", namespace, "registry", name) for name in (SOURCE, DESTINATION)]
        objs.append(p.get_policy())
        settled = all(o and current(o) and (condition(o, "Ready") or {}).get("status") == "True"
                      and (condition(o, "Ready") or {}).get("reason") != "Running" for o in objs)
        terminating = [n["metadata"]["name"] for n in kube.items("namespaces")
                       if n.get("status", {}).get("phase") == "Terminating"]
        versions = tuple(str(o["metadata"]["resourceVersion"]) for o in objs if o)
        history.append(versions if settled and not terminating else ())
        recent = history[-QUIET_POLLS:]
        return len(recent) == QUIET_POLLS and recent[0] != () and len(set(recent)) == 1

    wait_until(f"the objects in {namespace} converge and no namespace is terminating", converged,
               timeout=SETTLE_TIMEOUT + 300, interval=POLL, diagnose=p.diagnose)

    before = operator_writes(audit, start)
    assert any((e.get("objectRef") or {}).get("namespace") == namespace for e in before), \
        f"the audit log at {audit} shows none of the operator's writes in {namespace}: is it this cluster's?"

    offset = audit.stat().st_size
    since = datetime.now(UTC)
    time.sleep(WINDOW)  # the observation window: nothing changes, nothing may be written
    writes = operator_writes(audit, offset, since)
    assert not writes, (f"the idle operator ({OPERATOR_USER}) made {len(writes)} write requests in {WINDOW:.0f} s:\n"
                        + "\n".join(describe(e) for e in writes) + f"\n{p.diagnose()}")
