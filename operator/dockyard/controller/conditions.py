"""kstatus conditions (Ready, Reconciling, Stalled) computed by pure functions.

`registry_conditions` is a chain of small policies over what the reconcile observed; it
returns the conditions without timestamps. `merge` then keeps `lastTransitionTime` of
conditions whose status did not change and reports which ones transitioned, so status is
written only on change and one Event is posted per transition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
TYPES = (READY, RECONCILING, STALLED)


@dataclass(frozen=True)
class Observed:
    """What one reconcile learned, the only input of the condition policy."""

    generation: int
    desired_replicas: int
    spec_error: str | None = None
    missing_secrets: tuple[str, ...] = ()
    apply_error: str | None = None
    deployment: Mapping[str, Any] | None = None
    claim_phase: str | None = None


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str
    message: str
    stalled: bool = False
    reconciling: bool = False


def _deployment_condition(dep: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in (dep.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def verdict(obs: Observed) -> Verdict:
    """The first policy that applies decides."""
    if obs.spec_error:
        return Verdict(False, "InvalidSpec", obs.spec_error, stalled=True)
    if obs.missing_secrets:
        return Verdict(False, "SecretNotFound", "; ".join(obs.missing_secrets), stalled=True)
    if obs.apply_error:
        return Verdict(False, "ApplyFailed", obs.apply_error, stalled=True)
    dep = obs.deployment
    if dep is None:
        return Verdict(False, "Creating", "the Deployment does not exist yet", reconciling=True)
    status = dep.get("status") or {}
    progressing = _deployment_condition(dep, "Progressing")
    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        return Verdict(False, "ProgressDeadlineExceeded",
                       progressing.get("message") or "the rollout did not progress in time", stalled=True)
    if (status.get("observedGeneration") or 0) < (dep.get("metadata") or {}).get("generation", 0):
        return Verdict(False, "RollingOut", "the Deployment controller has not seen the new spec yet",
                       reconciling=True)
    want = obs.desired_replicas
    updated = status.get("updatedReplicas") or 0
    available = status.get("availableReplicas") or 0
    total = status.get("replicas") or 0
    if obs.claim_phase == "Pending" and available < want:
        return Verdict(False, "ClaimPending", "waiting for the PersistentVolumeClaim to bind",
                       reconciling=True)
    if updated < want or total > want:
        return Verdict(False, "RollingOut", f"{updated}/{want} pods updated, {total} running",
                       reconciling=True)
    if available < want:
        return Verdict(False, "PodsNotReady", f"{available}/{want} pods available", reconciling=True)
    if want == 0:
        return Verdict(True, "ScaledToZero", "scaled to zero replicas")
    return Verdict(True, "Available", f"{available}/{want} pods available")


def registry_conditions(obs: Observed) -> list[dict[str, Any]]:
    v = verdict(obs)
    idle = "Idle" if not v.stalled else "Stalled"

    def cond(type_: str, on: bool, reason: str, message: str) -> dict[str, Any]:
        return {"type": type_, "status": "True" if on else "False", "reason": reason,
                "message": message, "observedGeneration": obs.generation}

    return [
        cond(READY, v.ready, v.reason, v.message),
        cond(RECONCILING, v.reconciling, v.reason if v.reconciling else idle,
             v.message if v.reconciling else "no work in progress"),
        cond(STALLED, v.stalled, v.reason if v.stalled else "NotStalled",
             v.message if v.stalled else "no error"),
    ]


def reconciling_now(generation: int) -> list[dict[str, Any]]:
    """Written first thing for a new generation, so waiting tools never read stale status."""
    return [
        {"type": READY, "status": "False", "reason": "Reconciling",
         "message": f"handling generation {generation}", "observedGeneration": generation},
        {"type": RECONCILING, "status": "True", "reason": "NewGeneration",
         "message": f"handling generation {generation}", "observedGeneration": generation},
        {"type": STALLED, "status": "False", "reason": "NotStalled", "message": "no error",
         "observedGeneration": generation},
    ]


def merge(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], now: str
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """New conditions with transition times carried over; and those whose status changed."""
    previous = {c.get("type"): c for c in old}
    merged: list[dict[str, Any]] = []
    changed: list[dict[str, Any]] = []
    for cond in new:
        before = previous.get(cond["type"])
        out = dict(cond)
        if before and before.get("status") == cond["status"]:
            out["lastTransitionTime"] = before.get("lastTransitionTime") or now
        else:
            out["lastTransitionTime"] = now
            if before is not None or cond["status"] == "True":  # a first False is no transition
                changed.append(out)
        merged.append(out)
    return merged, changed
