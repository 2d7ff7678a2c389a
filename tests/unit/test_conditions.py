"""Condition computation as a table: what `kubectl get registry` and kstatus tools will read."""

from __future__ import annotations

from typing import Any

import pytest

from dockyard.controller.conditions import Observed, merge, reconciling_now, registry_conditions


def deployment(*, generation: int = 1, observed: int = 1, replicas: int = 1, updated: int = 1,
               available: int = 1, ready: int = 1, progressing: dict[str, str] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated,
                              "availableReplicas": available, "readyReplicas": ready}
    if progressing:
        status["conditions"] = [{"type": "Progressing", **progressing}]
    return {"metadata": {"generation": generation}, "status": status}


BUCKET_ERROR = ("S3 bucket images at http://minio:9000: InvalidAccessKeyId: The access key ID you provided "
                "does not exist")

CASES = [
    # (id, observed, Ready, Reconciling, Stalled, reason)
    ("invalid spec", Observed(3, 1, spec_error="spec.storage: exactly one"), "False", "False", "True", "InvalidSpec"),
    ("missing secret", Observed(1, 1, missing_secrets=("Secret 'u' not found",)),
     "False", "False", "True", "SecretNotFound"),
    ("apply refused", Observed(1, 1, apply_error="PVC refused"), "False", "False", "True", "ApplyFailed"),
    ("no deployment yet", Observed(1, 1), "False", "True", "False", "Creating"),
    ("deployment not observed", Observed(1, 1, deployment=deployment(generation=2, observed=1)),
     "False", "True", "False", "RollingOut"),
    ("claim pending", Observed(1, 1, deployment=deployment(available=0, ready=0), claim_phase="Pending"),
     "False", "True", "False", "ClaimPending"),
    ("rolling out", Observed(1, 3, deployment=deployment(replicas=3, updated=1, available=1)),
     "False", "True", "False", "RollingOut"),
    ("old pods still running", Observed(1, 1, deployment=deployment(replicas=2, updated=1, available=2)),
     "False", "True", "False", "RollingOut"),
    ("pods not ready", Observed(1, 2, deployment=deployment(replicas=2, updated=2, available=1)),
     "False", "True", "False", "PodsNotReady"),
    ("progress deadline", Observed(1, 1, deployment=deployment(available=0, progressing={
        "status": "False", "reason": "ProgressDeadlineExceeded", "message": "timed out"})),
     "False", "False", "True", "ProgressDeadlineExceeded"),
    ("available", Observed(1, 2, deployment=deployment(replicas=2, updated=2, available=2)),
     "True", "False", "False", "Available"),
    ("scaled to zero", Observed(1, 0, deployment=deployment(replicas=0, updated=0, available=0)),
     "True", "False", "False", "ScaledToZero"),
    ("storage unavailable", Observed(1, 3, deployment=deployment(replicas=3, updated=3, available=0, ready=0),
                                     storage_error=BUCKET_ERROR), "False", "False", "True", "StorageUnavailable"),
    ("storage unavailable while pods serve", Observed(1, 2, deployment=deployment(replicas=2, updated=2, available=2),
                                                      storage_error=BUCKET_ERROR),
     "False", "False", "True", "StorageUnavailable"),
    ("storage unavailable during a rollout", Observed(1, 1, deployment=deployment(generation=2, observed=1),
                                                      storage_error=BUCKET_ERROR),
     "False", "False", "True", "StorageUnavailable"),
    ("missing secret and storage unavailable", Observed(1, 1, missing_secrets=("Secret 's3' not found",),
                                                        storage_error=BUCKET_ERROR),
     "False", "False", "True", "SecretNotFound"),
    ("storage unavailable, scaled to zero", Observed(1, 0, deployment=deployment(replicas=0, updated=0, available=0),
                                                     storage_error=BUCKET_ERROR),
     "True", "False", "False", "ScaledToZero"),
]


@pytest.mark.parametrize(("obs", "ready", "reconciling", "stalled", "reason"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_condition_table(obs: Observed, ready: str, reconciling: str, stalled: str, reason: str) -> None:
    conds = {c["type"]: c for c in registry_conditions(obs)}
    assert (conds["Ready"]["status"], conds["Reconciling"]["status"], conds["Stalled"]["status"]) == \
        (ready, reconciling, stalled)
    assert conds["Ready"]["reason"] == reason
    assert all(c["observedGeneration"] == obs.generation for c in conds.values())
    assert all(c["message"] for c in conds.values())


def test_stalled_message_names_the_problem() -> None:
    conds = {c["type"]: c for c in registry_conditions(
        Observed(1, 1, missing_secrets=("Secret 'main-users' not found in namespace 'r'",)))}
    assert "main-users" in conds["Stalled"]["message"]
    assert conds["Stalled"]["reason"] == "SecretNotFound"


def test_storage_unavailable_names_the_stores_error() -> None:
    conds = {c["type"]: c for c in registry_conditions(Observed(1, 1, deployment=deployment(),
                                                                storage_error=BUCKET_ERROR))}
    assert conds["Stalled"]["message"] == f"the registry cannot use its storage: {BUCKET_ERROR}"
    assert conds["Ready"]["message"] == conds["Stalled"]["message"]


def test_merge_keeps_transition_time_when_status_is_unchanged() -> None:
    first, changed = merge([], registry_conditions(Observed(1, 1)), "T1")
    assert [c["type"] for c in changed] == ["Reconciling"]  # an initial False is no transition
    assert all(c["lastTransitionTime"] == "T1" for c in first)
    ready = registry_conditions(Observed(1, 1, deployment=deployment()))
    second, changed = merge(first, ready, "T2")
    by_type = {c["type"]: c for c in second}
    assert by_type["Ready"]["lastTransitionTime"] == "T2"
    assert by_type["Stalled"]["lastTransitionTime"] == "T1"
    assert {c["type"] for c in changed} == {"Ready", "Reconciling"}
    third, changed = merge(second, ready, "T3")
    assert third == second
    assert changed == []


def test_new_generation_marks_reconciling_first() -> None:
    conds = {c["type"]: c for c in reconciling_now(7)}
    assert conds["Reconciling"]["status"] == "True"
    assert conds["Ready"]["status"] == "False"
    assert all(c["observedGeneration"] == 7 for c in conds.values())
