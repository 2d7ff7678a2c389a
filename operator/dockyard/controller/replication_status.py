"""The ReplicationPolicy's status policy: pure functions of what one reconcile observed.

The conditions come from the chain `POLICY_POLICIES`, evaluated in order by
`conditions.decide` (the first policy that applies decides) and shaped by
`conditions.kstatus`, as for Registries. `nextRun` comes from the schedule (`dockyard.cron`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dockyard import cron
from dockyard.controller.conditions import Policy, Verdict, apply_failed, decide, invalid_spec, kstatus
from dockyard.render.replication import SYNC_ANNOTATION


def job_state(job: Mapping[str, Any]) -> str:
    """`active`, `succeeded` or `failed`; a Job without a terminal condition counts as running."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") in ("Complete", "SuccessCriteriaMet"):
            return "succeeded"
        if cond.get("type") in ("Failed", "FailureTarget"):
            return "failed"
    return "active"


def _started(job: Mapping[str, Any]) -> str:
    return str((job.get("status") or {}).get("startTime") or (job.get("metadata") or {}).get(
        "creationTimestamp") or "")


def failed_job_message(job: Mapping[str, Any]) -> str:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Failed", "FailureTarget") and cond.get("status") == "True":
            detail = cond.get("message") or cond.get("reason") or "failed"
            return f"run {job['metadata']['name']} failed without reporting a result: {detail}"
    return f"run {job['metadata']['name']} failed without reporting a result"


def unreported_failure(jobs: Sequence[Mapping[str, Any]], last_run: Mapping[str, Any] | None) -> str | None:
    """The latest finished run failed and never wrote `lastRun` (crash, no API access, bad image)."""
    finished = sorted((j for j in jobs if job_state(j) != "active"), key=_started)
    if not finished or job_state(finished[-1]) != "failed":
        return None
    reported = str((last_run or {}).get("startTime") or "")
    if reported and reported >= _started(finished[-1]):
        return None
    return failed_job_message(finished[-1])


@dataclass(frozen=True)
class Observed:
    """What one reconcile of a policy learned: the only input of the condition policy."""

    generation: int
    spec_error: str | None = None
    missing_registries: tuple[str, ...] = ()
    credential_problems: tuple[str, ...] = ()
    secret_problems: tuple[str, ...] = ()
    apply_error: str | None = None
    schedule: str | None = None
    suspended: bool = False
    active_run: str | None = None
    request_waiting: bool = False
    unreported_failure: str | None = None
    last_run: Mapping[str, Any] | None = None


def registry_not_found(obs: Observed) -> Verdict | None:
    if obs.missing_registries:
        return Verdict(False, "RegistryNotFound", "; ".join(obs.missing_registries), stalled=True)
    return None


def credentials_required(obs: Observed) -> Verdict | None:
    if obs.credential_problems:
        return Verdict(False, "CredentialsRequired", "; ".join(obs.credential_problems), stalled=True)
    return None


def secret_not_found(obs: Observed) -> Verdict | None:
    if obs.secret_problems:
        return Verdict(False, "SecretNotFound", "; ".join(obs.secret_problems), stalled=True)
    return None


def running(obs: Observed) -> Verdict | None:
    if obs.active_run:
        waiting = "; a requested run waits for it to finish" if obs.request_waiting else ""
        return Verdict(True, "Running", f"run {obs.active_run} is in progress{waiting}")
    return None


def run_failed(obs: Observed) -> Verdict | None:
    """The latest run failed without reporting (see `unreported_failure`)."""
    return Verdict(False, "RunFailed", obs.unreported_failure) if obs.unreported_failure else None


def last_run_failed(obs: Observed) -> Verdict | None:
    last = obs.last_run or {}
    if last.get("result") == "Failed":
        return Verdict(False, "LastRunFailed", str(last.get("message") or "the last run failed"))
    return None


def last_run_partially_failed(obs: Observed) -> Verdict | None:
    last = obs.last_run or {}
    if last.get("result") == "PartiallyFailed":
        return Verdict(True, "PartiallyFailed",
                       f"the last run failed for {last.get('artifactsFailed', 0)} artifacts; "
                       "they are retried first on the next run")
    return None


def suspended(obs: Observed) -> Verdict | None:
    if obs.schedule and obs.suspended:
        return Verdict(True, "Suspended", "scheduled runs are suspended; sync requests still run")
    return None


def scheduled(obs: Observed) -> Verdict | None:
    return Verdict(True, "Scheduled", f"runs on schedule {obs.schedule!r} (UTC)") if obs.schedule else None


def on_demand(obs: Observed) -> Verdict:
    return Verdict(True, "OnDemand", f"runs when the {SYNC_ANNOTATION} annotation changes")


POLICY_POLICIES: tuple[Policy[Observed], ...] = (
    invalid_spec,
    registry_not_found,
    credentials_required,
    secret_not_found,
    apply_failed,
    running,
    run_failed,
    last_run_failed,
    last_run_partially_failed,
    suspended,
    scheduled,
    on_demand,
)


def verdict(obs: Observed) -> Verdict:
    return decide(POLICY_POLICIES, obs)


def policy_conditions(obs: Observed) -> list[dict[str, Any]]:
    """A policy is never Reconciling: its verdicts never set `reconciling`."""
    return kstatus(verdict(obs), obs.generation)


def next_run(schedule: str | None, suspended: bool, at: datetime.datetime) -> str | None:
    if not schedule or suspended:
        return None
    when = cron.next_time(schedule, at)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None
