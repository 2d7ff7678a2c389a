"""What the operator applies for a ReplicationPolicy, and the status it reports, without a cluster."""

from __future__ import annotations

import copy
import datetime
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.api import SpecError
from dockyard.cli import build_parser
from dockyard.controller.replication_status import Observed, next_run, policy_conditions, unreported_failure, verdict
from dockyard.render.replication import (
    SYNC_ANNOTATION,
    PolicyInput,
    cronjob_name,
    manual_job,
    manual_job_name,
    referenced_secrets,
    registry_endpoint,
    render_policy,
    secret_problem,
)


def policy(spec: dict[str, Any], name: str = "mirror", uid: str | None = "uid-9") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "registries", "labels": {"team": "platform"}}
    if uid:
        meta["uid"] = uid
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy", "metadata": meta, "spec": spec}


def registry(name: str, namespace: str = "registries", *, status: dict[str, Any] | None = None,
             spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec or {"storage": {"emptyDir": {}}}, "status": status or {}}


HUB = {"url": "https://registry-1.docker.io", "secretRef": {"name": "hub-creds"}}
MAIN = {"registryRef": {"name": "main"}}
SCHEDULED = {"source": HUB, "destination": MAIN, "trigger": {"schedule": "0 */6 * * *"}}
REGISTRIES = {("registries", "main"): registry("main", status={"endpoint": "http://main.registries.svc:5000"})}


def render(spec: dict[str, Any], registries: Any = REGISTRIES, **kwargs: Any) -> dict[str, dict[str, Any]]:
    inp = PolicyInput.from_body(policy(spec), registries=registries, image="dockyard:test")
    return {o["kind"]: o for o in render_policy(inp, **kwargs)}


def pod_spec(job_spec: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = job_spec["template"]["spec"]
    return spec


def test_a_scheduled_policy_gets_a_cronjob_that_never_overlaps_runs() -> None:
    cj = render(SCHEDULED)["CronJob"]
    assert cj["metadata"]["name"] == "mirror"
    spec = cj["spec"]
    assert spec["schedule"] == "0 */6 * * *"
    assert spec["timeZone"] == "Etc/UTC"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["suspend"] is False
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert "activeDeadlineSeconds" not in job, "a multi-GB copy must not die at a fixed whole-run timeout"
    assert 0 < job["backoffLimit"] <= 3
    assert spec["jobTemplate"]["metadata"]["labels"]["app.kubernetes.io/instance"] == "mirror"


def test_the_run_executes_dockyard_replicate_with_both_sides_resolved() -> None:
    container = pod_spec(render(SCHEDULED)["CronJob"]["spec"]["jobTemplate"]["spec"])["containers"][0]
    assert container["image"] == "dockyard:test"
    assert container["args"] == ["replicate", "--policy", "registries/mirror",
                                 "--source-url", "https://registry-1.docker.io",
                                 "--dest-url", "http://main.registries.svc:5000"]
    args = build_parser().parse_args(container["args"])  # the image's CLI accepts exactly this command
    assert (args.policy, args.file, args.source_url) == ("registries/mirror", None, "https://registry-1.docker.io")


def test_the_run_pod_is_restricted() -> None:
    pod = pod_spec(render(SCHEDULED)["CronJob"]["spec"]["jobTemplate"]["spec"])
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["restartPolicy"] == "Never"
    tmp = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert tmp == {"tmp": "/tmp"}
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    assert pod["serviceAccountName"] == "mirror-replicator"


def test_suspend_pauses_the_cronjob() -> None:
    assert render({**SCHEDULED, "suspend": True})["CronJob"]["spec"]["suspend"] is True


def test_a_held_schedule_is_suspended_while_a_manual_run_is_active() -> None:
    assert render(SCHEDULED, hold_schedule=True)["CronJob"]["spec"]["suspend"] is True


def test_a_policy_without_schedule_has_no_cronjob() -> None:
    objs = render({"source": HUB, "destination": MAIN})
    assert set(objs) == {"ServiceAccount", "Role", "RoleBinding"}


def test_the_role_grants_only_this_policy_and_its_secrets() -> None:
    spec = {**SCHEDULED, "destination": {**MAIN, "secretRef": {"name": "main-push"},
                                         "caSecretRef": {"name": "main-ca"}}}
    objs = render(spec)
    rules = objs["Role"]["rules"]
    for rule in rules:
        assert rule["resourceNames"], "every rule is limited to named objects"
        assert set(rule["verbs"]) <= {"get", "patch"}
    by_resource = {r["resources"][0]: r for r in rules}
    assert by_resource["replicationpolicies"]["verbs"] == ["get"]
    assert by_resource["replicationpolicies"]["resourceNames"] == ["mirror"]
    assert set(by_resource["replicationpolicies/status"]["verbs"]) == {"get", "patch"}
    assert by_resource["secrets"]["resourceNames"] == ["hub-creds", "main-ca", "main-push"]
    assert by_resource["secrets"]["verbs"] == ["get"]
    binding = objs["RoleBinding"]
    assert binding["roleRef"]["name"] == objs["Role"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mirror-replicator",
                                    "namespace": "registries"}]


def test_a_policy_without_secrets_may_read_no_secret() -> None:
    objs = render({"source": {"url": "http://127.0.0.1:5000"}, "destination": MAIN})
    assert all("secrets" not in r["resources"] for r in objs["Role"]["rules"])


def test_children_carry_our_labels_and_an_owner_reference_never_the_parents_labels() -> None:
    for obj in render(SCHEDULED).values():
        meta = obj["metadata"]
        assert meta["labels"] == {"app.kubernetes.io/name": "dockyard-replication",
                                  "app.kubernetes.io/instance": "mirror",
                                  "app.kubernetes.io/managed-by": "dockyard"}
        assert meta["ownerReferences"] == [{"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
                                            "name": "mirror", "uid": "uid-9", "controller": True,
                                            "blockOwnerDeletion": True}]


def test_a_manual_request_makes_one_job_named_by_the_request() -> None:
    inp = PolicyInput.from_body(policy(SCHEDULED), registries=REGISTRIES, image="dockyard:test")
    job = manual_job(inp, "2026-11-27T06:00:00Z")
    assert job["kind"] == "Job"
    assert job["metadata"]["name"] == manual_job_name("mirror", "2026-11-27T06:00:00Z")
    assert job["metadata"]["name"].startswith("mirror-manual-")
    assert manual_job(inp, "2026-11-27T06:00:00Z") == job, "the same request names the same Job"
    assert manual_job(inp, "again")["metadata"]["name"] != job["metadata"]["name"]
    assert job["metadata"]["annotations"] == {SYNC_ANNOTATION: "2026-11-27T06:00:00Z"}
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-9"
    assert "activeDeadlineSeconds" not in job["spec"]
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:3] == \
        ["replicate", "--policy", "registries/mirror"]


def test_long_names_fit_kubernetes_limits_and_stay_distinct() -> None:
    long = "a" * 60
    other = "a" * 59 + "b"
    assert len(cronjob_name(long)) <= 52
    assert cronjob_name(long) != cronjob_name(other)
    assert len(manual_job_name(long, "x")) <= 63
    assert manual_job_name(long, "x") != manual_job_name(other, "x")
    assert cronjob_name("short") == "short"


def test_registry_ref_resolves_to_the_registry_endpoint() -> None:
    assert registry_endpoint(registry("main", status={"endpoint": "https://main.r.svc:443"})) == \
        "https://main.r.svc:443"
    assert registry_endpoint(registry("main", "other", spec={"service": {"port": 8080}})) == \
        "http://main.other.svc:8080"
    assert registry_endpoint(registry("main", spec={"tls": {"secretName": "t"}})) == \
        "https://main.registries.svc:5000"


def test_a_registry_ref_in_another_namespace_is_looked_up_there() -> None:
    spec = {"source": {"registryRef": {"name": "edge", "namespace": "dmz"}}, "destination": MAIN}
    with pytest.raises(KeyError) as missing:
        render(spec)
    assert missing.value.args[0] == ("dmz", "edge")
    objs = render(spec, registries={**REGISTRIES, ("dmz", "edge"): registry("edge", "dmz")})
    assert set(objs) == {"ServiceAccount", "Role", "RoleBinding"}


@pytest.mark.parametrize(("schedule", "field"), [("61 * * * *", "minute"), ("0 0 * * 8", "day of week")])
def test_a_schedule_the_cronjob_controller_would_reject_is_a_spec_error(schedule: str, field: str) -> None:
    with pytest.raises(SpecError, match=f"spec.trigger.schedule: {field}"):
        render({**SCHEDULED, "trigger": {"schedule": schedule}})


def test_rendering_is_pure() -> None:
    body = policy(SCHEDULED)
    before = copy.deepcopy(body)
    a = render_policy(PolicyInput.from_body(body, registries=REGISTRIES, image="x"))
    b = render_policy(PolicyInput.from_body(body, registries=REGISTRIES, image="x"))
    assert a == b
    assert body == before


def test_referenced_secrets_and_their_problems() -> None:
    inp = PolicyInput.from_body(policy({"source": {**HUB, "caSecretRef": {"name": "hub-creds"}},
                                        "destination": MAIN}), registries=REGISTRIES)
    needs = referenced_secrets(inp.spec)
    assert needs == {"hub-creds": ("ca.crt", "credentials")}
    assert secret_problem("hub-creds", needs["hub-creds"], {".dockerconfigjson": "e30=", "ca.crt": "x"}) is None
    assert "ca.crt" in str(secret_problem("hub-creds", needs["hub-creds"], {"username": "u", "password": "p"}))
    assert "neither" in str(secret_problem("hub-creds", ("credentials",), {"token": "t"}))


# ----------------------------------------------------------------------------- status


def ready(obs: Observed) -> tuple[str, str]:
    conds = {c["type"]: c for c in policy_conditions(obs)}
    assert conds["Reconciling"]["status"] == "False"
    assert all(c["observedGeneration"] == obs.generation for c in conds.values())
    stalled = conds["Stalled"]["status"] == "True"
    return conds["Ready"]["status"] + ("/Stalled" if stalled else ""), conds["Ready"]["reason"]


@pytest.mark.parametrize(("obs", "expected"), [
    (Observed(3, spec_error="spec.source: bad"), ("False/Stalled", "InvalidSpec")),
    (Observed(3, missing_registries=("the destination Registry 'main' does not exist",)),
     ("False/Stalled", "RegistryNotFound")),
    (Observed(3, secret_problems=("Secret 'hub' not found",)), ("False/Stalled", "SecretNotFound")),
    (Observed(3, credential_problems=("the destination Registry 'main' requires authentication",)),
     ("False/Stalled", "CredentialsRequired")),
    (Observed(3, apply_error="Role refused"), ("False/Stalled", "ApplyFailed")),
    (Observed(3, schedule="@daily", active_run="mirror-manual-1"), ("True", "Running")),
    (Observed(3, schedule="@daily", unreported_failure="run x failed"), ("False", "RunFailed")),
    (Observed(3, schedule="@daily", last_run={"result": "Failed", "message": "source unreachable"}),
     ("False", "LastRunFailed")),
    (Observed(3, schedule="@daily", last_run={"result": "PartiallyFailed", "artifactsFailed": 2}),
     ("True", "PartiallyFailed")),
    (Observed(3, schedule="@daily", suspended=True, last_run={"result": "Succeeded"}), ("True", "Suspended")),
    (Observed(3, schedule="@daily", last_run={"result": "Succeeded"}), ("True", "Scheduled")),
    (Observed(3), ("True", "OnDemand")),
])
def test_conditions(obs: Observed, expected: tuple[str, str]) -> None:
    assert ready(obs) == expected


def test_a_waiting_request_is_visible_in_the_message() -> None:
    v = verdict(Observed(1, active_run="mirror-28391", request_waiting=True))
    assert "mirror-28391" in v.message
    assert "waits" in v.message


def job(name: str, started: str, state: str | None) -> dict[str, Any]:
    conds = [{"type": state, "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}] \
        if state else []
    return {"metadata": {"name": name, "creationTimestamp": started},
            "status": {"startTime": started, "conditions": conds}}


def test_a_run_that_failed_without_reporting_is_noticed() -> None:
    jobs = [job("a", "2026-11-27T00:00:00Z", "Complete"), job("b", "2026-11-27T06:00:00Z", "Failed")]
    assert "run b failed" in str(unreported_failure(jobs, {"startTime": "2026-11-27T00:00:05Z"}))
    # the failed run wrote its own result: lastRun tells the story
    assert unreported_failure(jobs, {"startTime": "2026-11-27T06:00:07Z"}) is None
    # a later success supersedes an old failure
    jobs.append(job("c", "2026-11-27T12:00:00Z", "Complete"))
    assert unreported_failure(jobs, {"startTime": "2026-11-27T12:00:03Z"}) is None
    assert unreported_failure([job("d", "2026-11-27T13:00:00Z", None)], None) is None


def test_next_run_follows_the_schedule_and_stops_when_suspended() -> None:
    at = datetime.datetime(2026, 11, 27, 6, 10, tzinfo=datetime.UTC)
    assert next_run("0 */6 * * *", False, at) == "2026-11-27T12:00:00Z"
    assert next_run("0 */6 * * *", True, at) is None
    assert next_run(None, False, at) is None


def test_a_push_run_is_its_own_job_named_by_the_push() -> None:
    from dockyard.render.replication import PUSH_ANNOTATION, push_job, push_job_name

    inp = PolicyInput.from_body(policy(SCHEDULED), registries=REGISTRIES, image="dockyard:test")
    event = "team/app:v1@sha256:ab at 2026-11-27T06:00:00.000001Z"
    job = push_job(inp, event)
    assert job["metadata"]["name"] == push_job_name("mirror", event) != manual_job_name("mirror", event)
    assert job["metadata"]["annotations"] == {PUSH_ANNOTATION: event}
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == \
        manual_job(inp, "x")["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(("side", "endpoint", "auth", "problem"), [
    ("destination", {"registryRef": {"name": "main"}}, None, False),
    ("destination", {"registryRef": {"name": "main"}}, {"htpasswdSecretRef": {"name": "users"}}, True),
    ("destination", {"registryRef": {"name": "main"}, "secretRef": {"name": "pusher"}},
     {"htpasswdSecretRef": {"name": "users"}}, False),
    ("source", {"registryRef": {"name": "main"}}, {"htpasswdSecretRef": {"name": "users"}, "anonymousPull": True},
     False),
    ("source", {"registryRef": {"name": "main"}}, {"htpasswdSecretRef": {"name": "users"}}, True),
    ("destination", {"registryRef": {"name": "main"}}, {"htpasswdSecretRef": {"name": "users"},
                                                         "anonymousPull": True}, True),
])
def test_a_registry_with_authentication_needs_credentials_of_the_policy(
        side: str, endpoint: dict[str, Any], auth: dict[str, Any] | None, problem: bool) -> None:
    from dockyard.api.replication import Endpoint
    from dockyard.api.schema import parse
    from dockyard.render.replication import credentials_problem

    spec = {"storage": {"emptyDir": {}}, **({"auth": auth} if auth else {})}
    found = credentials_problem(side, parse(Endpoint, endpoint), registry("main", spec=spec))
    assert (found is not None) == problem
    if found:
        assert f"{side}.secretRef" in found
        assert "'main'" in found


def test_cli_renders_a_policy_with_the_registry_it_references(tmp_path: Path) -> None:
    examples = Path(__file__).parents[2] / "examples"
    both = tmp_path / "both.yaml"
    both.write_text((examples / "registry-basic.yaml").read_text() + "\n---\n"
                    + (examples / "replication-dockerhub-mirror.yaml").read_text())
    out = subprocess.run([sys.executable, "-m", "dockyard.cli", "render", "-f", str(both)],
                         capture_output=True, text=True, check=True).stdout
    objs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out)}
    cron_job = objs[("CronJob", "mirror-hub")]
    args = cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--dest-url") + 1] == "http://main.registries.svc:5000"
    assert ("Deployment", "main") in objs
    assert ("Role", "mirror-hub-replicator") in objs

    alone = subprocess.run([sys.executable, "-m", "dockyard.cli", "render", "-f",
                            str(examples / "replication-dockerhub-mirror.yaml")], capture_output=True, text=True)
    assert alone.returncode == 2
    assert alone.stdout == ""
    assert "registries/main" in alone.stderr
    assert len(alone.stderr.strip().splitlines()) == 1
