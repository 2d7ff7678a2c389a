"""kstatus conditions (Ready, Reconciling, Stalled) computed by pure functions.

Each kind has a chain of small named policies over what its reconcile observed (a frozen
`Observed` dataclass), evaluated in order by `decide`: the first policy that returns a
`Verdict` decides, and `kstatus` turns that verdict into the three conditions, without
timestamps. Both kinds share `decide`, `kstatus` and the policies `invalid_spec` and
`apply_failed`; the Registry chain is `REGISTRY_POLICIES` below, the ReplicationPolicy chain
is in `controller.replication_status`. `merge` then keeps `lastTransitionTime` of
conditions whose status did not change and reports which ones transitioned, so status is
written only on change and one Event is posted per transition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

READY, RECONCILING, STALLED = "Ready", "Reconciling", "Stalled"
TYPES = (READY, RECONCILING, STALLED)


class SpecObserved(Protocol):
    @property
    def spec_error(self) -> str | None: ...


class ApplyObserved(Protocol):
    @property
    def apply_error(self) -> str | None: ...


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
    storage_error: str | None = None
    """Why the registry cannot use its storage, as it last reported (`status.storage.error`)."""


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str
    message: str
    stalled: bool = False
    reconciling: bool = False


Obs = TypeVar("Obs")
Policy = Callable[[Obs], Verdict | None]
"""One named rule: a Verdict when it applies to the observation, else None (the next one asks)."""


def decide(policies: Sequence[Policy[Obs]], obs: Obs) -> Verdict:
    """Evaluate the policies in order: the first that returns a Verdict decides.

    The last policy of each chain always decides, so every observation has a verdict.
    """
    for policy in policies:
        v = policy(obs)
        if v is not None:
            return v
    raise ValueError("no condition policy decided; the last one of a chain must always decide")


def kstatus(v: Verdict, generation: int) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled of a verdict: the shape both kinds report."""
    idle = "Idle" if not v.stalled else "Stalled"

    def cond(type_: str, on: bool, reason: str, message: str) -> dict[str, Any]:
        return {"type": type_, "status": "True" if on else "False", "reason": reason,
                "message": message, "observedGeneration": generation}

    return [
        cond(READY, v.ready, v.reason, v.message),
        cond(RECONCILING, v.reconciling, v.reason if v.reconciling else idle,
             v.message if v.reconciling else "no work in progress"),
        cond(STALLED, v.stalled, v.reason if v.stalled else "NotStalled",
             v.message if v.stalled else "no error"),
    ]


def invalid_spec(obs: SpecObserved) -> Verdict | None:
    """Shared by both kinds: a spec the operator cannot parse stalls the object."""
    return Verdict(False, "InvalidSpec", obs.spec_error, stalled=True) if obs.spec_error else None


def apply_failed(obs: ApplyObserved) -> Verdict | None:
    """Shared by both kinds: the API server refused a child."""
    return Verdict(False, "ApplyFailed", obs.apply_error, stalled=True) if obs.apply_error else None


# ----------------------------------------------------------------------------- Registry policies

def _deployment_condition(dep: Mapping[str, Any], type_: str) -> Mapping[str, Any]:
    for cond in (dep.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def _counts(obs: Observed) -> tuple[int, int, int]:
    """updatedReplicas, availableReplicas and replicas of the observed Deployment."""
    status = (obs.deployment or {}).get("status") or {}
    return (status.get("updatedReplicas") or 0, status.get("availableReplicas") or 0,
            status.get("replicas") or 0)


def secret_not_found(obs: Observed) -> Verdict | None:
    if obs.missing_secrets:
        return Verdict(False, "SecretNotFound", "; ".join(obs.missing_secrets), stalled=True)
    return None


STORAGE_UNAVAILABLE = "StorageUnavailable"


def storage_unavailable(obs: Observed) -> Verdict | None:
    """The registry reported that it cannot reach its storage (an S3 bucket with wrong keys, an endpoint
    that is down): no rollout or pod count can make it serve, so it stalls until a report says otherwise.
    Scaled to zero, nothing uses the storage and the last report is moot."""
    if obs.storage_error and obs.desired_replicas > 0:
        return Verdict(False, STORAGE_UNAVAILABLE, f"the registry cannot use its storage: {obs.storage_error}",
                       stalled=True)
    return None


def deployment_missing(obs: Observed) -> Verdict | None:
    if obs.deployment is None:
        return Verdict(False, "Creating", "the Deployment does not exist yet", reconciling=True)
    return None


def progress_deadline_exceeded(obs: Observed) -> Verdict | None:
    progressing = _deployment_condition(obs.deployment or {}, "Progressing")
    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        return Verdict(False, "ProgressDeadlineExceeded",
                       progressing.get("message") or "the rollout did not progress in time", stalled=True)
    return None


def spec_not_observed(obs: Observed) -> Verdict | None:
    dep = obs.deployment or {}
    if ((dep.get("status") or {}).get("observedGeneration") or 0) < (dep.get("metadata") or {}).get("generation", 0):
        return Verdict(False, "RollingOut", "the Deployment controller has not seen the new spec yet",
                       reconciling=True)
    return None


def claim_pending(obs: Observed) -> Verdict | None:
    _, available, _ = _counts(obs)
    if obs.claim_phase == "Pending" and available < obs.desired_replicas:
        return Verdict(False, "ClaimPending", "waiting for the PersistentVolumeClaim to bind",
                       reconciling=True)
    return None


def rolling_out(obs: Observed) -> Verdict | None:
    updated, _, total = _counts(obs)
    want = obs.desired_replicas
    if updated < want or total > want:
        return Verdict(False, "RollingOut", f"{updated}/{want} pods updated, {total} running",
                       reconciling=True)
    return None


def pods_not_ready(obs: Observed) -> Verdict | None:
    _, available, _ = _counts(obs)
    if available < obs.desired_replicas:
        return Verdict(False, "PodsNotReady", f"{available}/{obs.desired_replicas} pods available",
                       reconciling=True)
    return None


def scaled_to_zero(obs: Observed) -> Verdict | None:
    return Verdict(True, "ScaledToZero", "scaled to zero replicas") if obs.desired_replicas == 0 else None


def available(obs: Observed) -> Verdict:
    _, count, _ = _counts(obs)
    return Verdict(True, "Available", f"{count}/{obs.desired_replicas} pods available")


REGISTRY_POLICIES: tuple[Policy[Observed], ...] = (
    invalid_spec,
    secret_not_found,
    apply_failed,
    storage_unavailable,
    deployment_missing,
    progress_deadline_exceeded,
    spec_not_observed,
    claim_pending,
    rolling_out,
    pods_not_ready,
    scaled_to_zero,
    available,
)


def verdict(obs: Observed) -> Verdict:
    return decide(REGISTRY_POLICIES, obs)


def registry_conditions(obs: Observed) -> list[dict[str, Any]]:
    return kstatus(verdict(obs), obs.generation)


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


STORAGE_FULL = "StorageFull"
STORAGE_NEARLY_FULL = "StorageNearlyFull"
STORAGE_TYPES = (STORAGE_FULL, STORAGE_NEARLY_FULL)
NEARLY_FULL = 0.9
USAGE_KEYS = ("used", "usedBytes", "capacityBytes", "full", "error")
"""status.storage keys the push receiver writes from the registry's reports (see controller.push); the
reconcile carries them over and never writes them."""


def storage_conditions(storage: Mapping[str, Any] | None, generation: int) -> list[dict[str, Any]]:
    """StorageFull and StorageNearlyFull from the usage the registry reported; none before a report."""
    storage = storage or {}
    used, capacity = storage.get("usedBytes"), storage.get("capacityBytes")
    if not isinstance(used, int) or not isinstance(capacity, int) or capacity <= 0:
        return []
    percent = 100 * used // capacity
    full = bool(storage.get("full"))
    nearly = used >= NEARLY_FULL * capacity
    return [
        {"type": STORAGE_FULL, "status": "True" if full else "False",
         "reason": "StorageFull" if full else "Writable",
         "message": (f"a write found the storage full ({percent} % of {storage.get('used')} used): pushes are "
                     "refused with 507 until space is freed or the volume grows; pulls go on")
         if full else "writes succeed", "observedGeneration": generation},
        {"type": STORAGE_NEARLY_FULL, "status": "True" if nearly else "False",
         "reason": "NearlyFull" if nearly else "Enough",
         "message": f"{percent} % of the storage is used ({used} of {capacity} bytes)",
         "observedGeneration": generation},
    ]
