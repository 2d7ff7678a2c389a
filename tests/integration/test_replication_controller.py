"""The ReplicationPolicy controller end to end: the real operator process against a real API server.

`dockyard operator run -A` runs as a subprocess with the kubeconfig of its ServiceAccount, as it
would in a cluster (real RBAC: the Roles it creates for runs pass the API server's escalation
check). The tier runs no Job controller and no node, so the tests play the Job controller: they
report Jobs complete or failed through `/status` with the fields the real one writes, and "run" a
Job by calling `run_in_cluster` with the very arguments the operator rendered, as the Job's own
ServiceAccount, against two real registries on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from dockyard import cron
from dockyard.registry.delivery import cloud_event, sign
from dockyard.render.replication import manual_job_name
from tests.integration.kube import ApiError, ApiServer, Write, create, delete, get, list_objects, patch, wait_for
from tests.integration.operator import Operator, running_operator
from tests.integration.test_replication_run import as_service_account
from tests.registry.processes import Registries, free_port, request, write_htpasswd

POLICIES = "dockyard.dev/v1alpha1/replicationpolicies"
REGISTRIES = "dockyard.dev/v1alpha1/registries"
CRONJOBS = "batch/v1/cronjobs"
JOBS = "batch/v1/jobs"
SYNC = "dockyard.dev/sync-requested-at"
RBAC = ("rbac.authorization.k8s.io/v1/roles", "rbac.authorization.k8s.io/v1/rolebindings")
DEADLINE = 60.0


@pytest.fixture
def events_url(monkeypatch: pytest.MonkeyPatch) -> str:
    """Where the operator started by `operator` receives push events; Registries get a token Secret each."""
    port = free_port()
    monkeypatch.setenv("DOCKYARD_EVENTS_ADDR", f"127.0.0.1:{port}")
    monkeypatch.setenv("DOCKYARD_EVENTS_URL", f"http://127.0.0.1:{port}")
    return f"http://127.0.0.1:{port}/v1/push"


async def events_token(server: ApiServer, namespace: str, registry: str) -> str:
    """The token the operator created for a Registry's pods (Secret `<registry>-events`)."""
    async def created() -> dict[str, Any] | None:
        return await get(server, "v1/secrets", f"{registry}-events", namespace)
    found = await wait_for(created, timeout=DEADLINE, message=f"the events token Secret of {registry}")
    return base64.b64decode(found["data"]["token"]).decode()


@pytest_asyncio.fixture()
async def operator(namespace: str, kubeconfig: Path, tmp_path: Path, events_url: str) -> AsyncIterator[Operator]:
    # After `namespace`: the operator stops before the namespace and its objects are cleaned up.
    async with running_operator(kubeconfig, tmp_path / "operator.log") as op:
        yield op


@pytest_asyncio.fixture()
async def dmz(apiserver: ApiServer, namespace: str) -> AsyncIterator[str]:
    """A second namespace, for references across namespaces; asked for before `operator`."""
    name = f"{namespace}-dmz"
    await create(apiserver, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        yield name
    finally:  # the operator has stopped: nobody removes its finalizers but us
        for obj in await list_objects(apiserver, REGISTRIES, name):
            try:
                await patch(apiserver, REGISTRIES, obj["metadata"]["name"], {"metadata": {"finalizers": None}}, name)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        await delete(apiserver, "v1/namespaces", name)


def registry(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"storage": {"emptyDir": {}}}}


def policy(name: str, namespace: str, spec: dict[str, Any],
           annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"team": "platform"}}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy", "metadata": meta, "spec": spec}


def secret(name: str, namespace: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": "kubernetes.io/basic-auth",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


async def wait_condition(server: ApiServer, op: Operator, namespace: str, name: str, type_: str, status: str,
                         reason: str | None = None) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        op.check()
        obj = await get(server, POLICIES, name, namespace)
        cond = condition(obj, type_)
        ok = cond.get("status") == status and (reason is None or cond.get("reason") == reason)
        return obj if ok else None

    try:
        result: dict[str, Any] | None = await wait_for(reached, timeout=DEADLINE,
                                                       message=f"{name}: {type_}={status} {reason or ''}")
    except TimeoutError:
        obj = await get(server, POLICIES, name, namespace)
        jobs = [(j["metadata"]["name"], j["metadata"].get("annotations"), (j.get("status") or {}).get("conditions"))
                for j in await jobs_of(server, namespace, name)]
        pytest.fail(f"{name} never reached {type_}={status} ({reason}); status: "
                    f"{(obj or {}).get('status')}\njobs: {jobs}\noperator log:\n{op.output()}")
    assert result is not None
    return result


async def events(server: ApiServer, namespace: str, name: str, reason: str | None = None) -> list[dict[str, Any]]:
    return [e for e in await list_objects(server, "v1/events", namespace)
            if (e.get("involvedObject") or {}).get("name") == name
            and (e.get("involvedObject") or {}).get("kind") == "ReplicationPolicy"
            and (reason is None or e.get("reason") == reason)]


async def posted(server: ApiServer, namespace: str, name: str, reason: str, count: int = 1) -> list[dict[str, Any]]:
    """The Events of `reason` about a policy, once `count` of them arrived (they are posted in the background)."""
    async def enough() -> list[dict[str, Any]]:
        found = await events(server, namespace, name, reason)
        return found if len(found) >= count else []
    return await wait_for(enough, timeout=DEADLINE, message=f"{count} {reason} Event(s) about {name}")


async def jobs_of(server: ApiServer, namespace: str, name: str) -> list[dict[str, Any]]:
    return await list_objects(server, JOBS, namespace, label_selector=f"app.kubernetes.io/instance={name}")


async def finish_job(server: ApiServer, namespace: str, name: str, type_: str = "Complete",
                     message: str = "") -> None:
    """Play the Job controller: the Job's pod ran to completion, or failed `backoffLimit + 1` times.

    The real server checks what the Job controller writes: a finished Job has the startTime the
    controller set when it started the Job (at its creation here); Complete=True comes with
    SuccessCriteriaMet=True and a completionTime, Failed=True with FailureTarget=True and none.
    """
    job = server.live(JOBS, namespace, name)
    assert job is not None, f"no Job {namespace}/{name}"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    reason = "CompletionsReached" if type_ == "Complete" else "BackoffLimitExceeded"
    first = "SuccessCriteriaMet" if type_ == "Complete" else "FailureTarget"
    status: dict[str, Any] = {
        "startTime": (job.get("status") or {}).get("startTime") or job["metadata"]["creationTimestamp"],
        "conditions": [{"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": message}
                       for t in (first, type_)]}
    if type_ == "Complete":
        status.update(succeeded=1, completionTime=now)
    else:
        status.update(failed=job["spec"]["backoffLimit"] + 1)
    await patch(server, JOBS, name, {"status": status}, namespace, subresource="status")


async def settle(server: ApiServer, op: Operator, seconds: float = 1.5) -> None:
    """Wait (with a deadline) until nothing has been written for `seconds`."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        op.check()
        if not await quiet(server, seconds):
            return
    pytest.fail(f"the operator never settled:\n{op.output()}")


async def quiet(server: ApiServer, seconds: float = 2.0) -> list[Write]:
    """The writes the operator made during `seconds` of nothing happening (should be none)."""
    mark = time.time()
    await asyncio.sleep(seconds)  # observing a quiet period is the point: a hot loop shows up as writes
    return [w for w in server.writes(mark) if w.resource != "events"]


# ----------------------------------------------------------------------------- tests


async def test_a_scheduled_policy_renders_its_cronjob_and_reports_next_run(apiserver: ApiServer, namespace: str,
                                                                           operator: Operator) -> None:
    started = time.time()
    await create(apiserver, registry("main", namespace))
    schedule = "0 3 1 1 *"
    await create(apiserver, policy("mirror", namespace, {
        "source": {"url": "https://registry-1.docker.io", "secretRef": {"name": "hub"}},
        "destination": {"registryRef": {"name": "main"}},
        "trigger": {"schedule": schedule}}))
    await create(apiserver, secret("hub", namespace, username="u", password="p"))
    obj = await wait_condition(apiserver, operator, namespace, "mirror", "Ready", "True", "Scheduled")
    uid = obj["metadata"]["uid"]
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert condition(obj, "Stalled")["status"] == "False"
    assert condition(obj, "Reconciling")["status"] == "False"
    expected = cron.next_time(schedule, datetime.datetime.now(datetime.UTC))
    assert expected is not None
    assert obj["status"]["nextRun"] == expected.strftime("%Y-%m-%dT%H:%M:%SZ")

    cj = await get(apiserver, CRONJOBS, "mirror", namespace)
    assert cj is not None
    assert cj["spec"]["schedule"] == schedule
    assert cj["spec"]["concurrencyPolicy"] == "Forbid"
    assert cj["spec"]["suspend"] is False
    args = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args == ["replicate", "--policy", f"{namespace}/mirror", "--source-url", "https://registry-1.docker.io",
                    "--dest-url", f"http://main.{namespace}.svc:5000"]
    assert cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == "dockyard:test"
    for kind, name in ((CRONJOBS, "mirror"), ("v1/serviceaccounts", "mirror-replicator"),
                       (RBAC[0], "mirror-replicator"), (RBAC[1], "mirror-replicator")):
        child = await get(apiserver, kind, name, namespace)
        assert child is not None, f"{kind} {name} was not created"
        assert [r["uid"] for r in child["metadata"]["ownerReferences"]] == [uid]
        assert "team" not in child["metadata"]["labels"], "the parent's labels are never copied"
    role = await get(apiserver, RBAC[0], "mirror-replicator", namespace)
    assert role is not None
    assert {tuple(r["resourceNames"]) for r in role["rules"]} == {("mirror",), ("hub",)}

    await settle(apiserver, operator)  # Kopf records the handled state once the handlers returned
    assert (w := await quiet(apiserver)) == [], f"steady state: no writes, got {w}"
    assert any(w.resource == "cronjobs" and w.name == "mirror" for w in apiserver.writes(started)), (
        "the audit log shows the operator's writes (so no writes above means none were made)")

    await patch(apiserver, POLICIES, "mirror", {"spec": {"suspend": True}}, namespace)
    obj = await wait_condition(apiserver, operator, namespace, "mirror", "Ready", "True", "Suspended")
    assert "nextRun" not in obj["status"]
    cj = await get(apiserver, CRONJOBS, "mirror", namespace)
    assert cj is not None
    assert cj["spec"]["suspend"] is True

    await patch(apiserver, POLICIES, "mirror", {"spec": {"suspend": False, "trigger": {"schedule": None}}},
                namespace)
    await wait_condition(apiserver, operator, namespace, "mirror", "Ready", "True", "OnDemand")
    assert await get(apiserver, CRONJOBS, "mirror", namespace) is None, "no schedule, no CronJob"
    await posted(apiserver, namespace, "mirror", "Ready")
    await settle(apiserver, operator)
    told = await events(apiserver, namespace, "mirror")
    assert [e["reason"] for e in told if e.get("type") == "Warning"] == [], "spec changes are no warnings"
    assert [e["reason"] for e in told if e.get("reason") == "Ready"] == ["Ready"], "one Event per transition"

    await delete(apiserver, POLICIES, "mirror", namespace)

    async def gone() -> bool:  # the garbage collector removes the children, in its own time
        return (await get(apiserver, "v1/serviceaccounts", "mirror-replicator", namespace) is None
                and await get(apiserver, RBAC[0], "mirror-replicator", namespace) is None)
    await wait_for(gone, timeout=DEADLINE, message="children go away with the policy")


async def test_a_manual_trigger_makes_exactly_one_job_and_never_two_runs_at_once(apiserver: ApiServer,
                                                                                  namespace: str,
                                                                                  operator: Operator) -> None:
    await create(apiserver, registry("main", namespace))
    await create(apiserver, policy("sync", namespace, {
        "source": {"url": "http://127.1.2.3:5000"}, "destination": {"registryRef": {"name": "main"}},
        "trigger": {"schedule": "*/30 * * * *"}}))
    await wait_condition(apiserver, operator, namespace, "sync", "Ready", "True", "Scheduled")

    await patch(apiserver, POLICIES, "sync", {"metadata": {"annotations": {SYNC: "first"}}}, namespace)
    obj = await wait_condition(apiserver, operator, namespace, "sync", "Ready", "True", "Running")
    assert obj["status"]["lastSyncRequest"] == "first"
    first = manual_job_name("sync", "first")
    jobs = await jobs_of(apiserver, namespace, "sync")
    assert [j["metadata"]["name"] for j in jobs] == [first]
    assert jobs[0]["metadata"]["annotations"][SYNC] == "first"
    assert jobs[0]["spec"]["template"]["spec"]["containers"][0]["args"][:3] == ["replicate", "--policy",
                                                                                 f"{namespace}/sync"]
    cj = await get(apiserver, CRONJOBS, "sync", namespace)
    assert cj is not None, "the schedule is held while a manual run is active"
    assert cj["spec"]["suspend"] is True, "the schedule is held while a manual run is active"

    # Unrelated changes and repeated events do not start more runs.
    await patch(apiserver, POLICIES, "sync", {"metadata": {"labels": {"touched": "yes"}}}, namespace)
    await patch(apiserver, JOBS, first, {"metadata": {"labels": {"touched": "yes"}}}, namespace)
    await settle(apiserver, operator)
    assert len(await jobs_of(apiserver, namespace, "sync")) == 1

    # A new request while the run is active waits for it.
    await patch(apiserver, POLICIES, "sync", {"metadata": {"annotations": {SYNC: "second"}}}, namespace)

    async def waiting() -> bool:
        obj = await get(apiserver, POLICIES, "sync", namespace)
        return "waits" in condition(obj, "Ready").get("message", "")
    await wait_for(waiting, timeout=DEADLINE, message="the second request is reported as waiting")
    assert [j["metadata"]["name"] for j in await jobs_of(apiserver, namespace, "sync")] == [first]

    await finish_job(apiserver, namespace, first)

    async def second_started() -> list[str]:
        names = sorted(j["metadata"]["name"] for j in await jobs_of(apiserver, namespace, "sync"))
        return names if len(names) == 2 else []
    names = await wait_for(second_started, timeout=DEADLINE, message="the waiting request starts after the first")
    assert names == sorted([first, manual_job_name("sync", "second")])
    live = await get(apiserver, POLICIES, "sync", namespace)
    assert live is not None
    assert live["status"]["lastSyncRequest"] == "second"

    await finish_job(apiserver, namespace, manual_job_name("sync", "second"))
    await wait_condition(apiserver, operator, namespace, "sync", "Ready", "True", "Scheduled")
    cj = await get(apiserver, CRONJOBS, "sync", namespace)
    assert cj is not None, "the schedule resumes after the manual run"
    assert cj["spec"]["suspend"] is False, "the schedule resumes after the manual run"
    assert len(await jobs_of(apiserver, namespace, "sync")) == 2
    await posted(apiserver, namespace, "sync", "SyncStarted", 2)
    await settle(apiserver, operator)
    assert len(await events(apiserver, namespace, "sync", "SyncStarted")) == 2


async def test_suspend_does_not_block_a_manual_request(apiserver: ApiServer, namespace: str,
                                                       operator: Operator) -> None:
    await create(apiserver, policy("paused", namespace, {
        "source": {"url": "http://127.1.2.3:5000"}, "destination": {"url": "http://127.1.2.4:5000"},
        "trigger": {"schedule": "@daily"}, "suspend": True}, annotations={SYNC: "now"}))
    obj = await wait_condition(apiserver, operator, namespace, "paused", "Ready", "True", "Running")
    assert obj["status"]["lastSyncRequest"] == "now"
    assert [j["metadata"]["name"] for j in await jobs_of(apiserver, namespace, "paused")] == [
        manual_job_name("paused", "now")]


async def test_a_missing_registry_stalls_the_policy_until_it_appears(apiserver: ApiServer, namespace: str,
                                                                   dmz: str, operator: Operator) -> None:
    await create(apiserver, policy("edge", namespace, {
        "source": {"registryRef": {"name": "upstream", "namespace": dmz}},
        "destination": {"url": "http://127.9.9.9:5000"}, "trigger": {"schedule": "@hourly"}},
        annotations={SYNC: "asap"}))
    obj = await wait_condition(apiserver, operator, namespace, "edge", "Stalled", "True", "RegistryNotFound")
    assert "upstream" in condition(obj, "Stalled")["message"]
    assert dmz in condition(obj, "Stalled")["message"]
    assert condition(obj, "Ready")["status"] == "False"
    assert await get(apiserver, CRONJOBS, "edge", namespace) is None
    assert await jobs_of(apiserver, namespace, "edge") == [], "nothing runs against a registry that does not exist"
    warnings = await posted(apiserver, namespace, "edge", "RegistryNotFound")
    assert len(warnings) == 1
    assert warnings[0]["type"] == "Warning"
    await settle(apiserver, operator)
    assert (w := await quiet(apiserver)) == [], f"a stalled policy is not retried in a hot loop: {w}"
    assert len([e for e in await events(apiserver, namespace, "edge") if e.get("reason") == "RegistryNotFound"]) == 1

    await create(apiserver, registry("upstream", dmz))
    obj = await wait_condition(apiserver, operator, namespace, "edge", "Stalled", "False")
    assert condition(obj, "Ready")["status"] == "True"

    async def cronjob() -> dict[str, Any] | None:
        return await get(apiserver, CRONJOBS, "edge", namespace)
    cj = await wait_for(cronjob, timeout=DEADLINE, message="the CronJob once the Registry exists")
    args = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--source-url") + 1] == f"http://upstream.{dmz}.svc:5000"
    assert [j["metadata"]["name"] for j in await jobs_of(apiserver, namespace, "edge")] == [
        manual_job_name("edge", "asap")]
    await posted(apiserver, namespace, "edge", "Recovered")
    await settle(apiserver, operator)
    assert len(await events(apiserver, namespace, "edge", "Recovered")) == 1


async def test_a_missing_secret_stalls_the_policy_until_it_appears(apiserver: ApiServer, namespace: str,
                                                                 operator: Operator) -> None:
    await create(apiserver, policy("private", namespace, {
        "source": {"url": "https://quay.example", "secretRef": {"name": "quay-creds"}},
        "destination": {"url": "http://127.9.9.9:5000"}}))
    obj = await wait_condition(apiserver, operator, namespace, "private", "Stalled", "True", "SecretNotFound")
    assert "quay-creds" in condition(obj, "Stalled")["message"]
    await create(apiserver, secret("quay-creds", namespace, username="robot", password="s3cret"))
    await wait_condition(apiserver, operator, namespace, "private", "Ready", "True", "OnDemand")


async def test_a_registry_that_requires_login_needs_credentials_in_the_policy(apiserver: ApiServer, namespace: str,
                                                                            operator: Operator) -> None:
    locked = registry("locked", namespace)
    locked["spec"]["auth"] = {"htpasswdSecretRef": {"name": "locked-users"}}
    await create(apiserver, locked)
    await create(apiserver, policy("into-locked", namespace, {
        "source": {"url": "http://127.4.4.4:5000"}, "destination": {"registryRef": {"name": "locked"}}}))
    obj = await wait_condition(apiserver, operator, namespace, "into-locked", "Stalled", "True",
                               "CredentialsRequired")
    assert "destination.secretRef" in condition(obj, "Stalled")["message"]
    await create(apiserver, secret("locked-pusher", namespace, username="pusher", password="pw"))
    await patch(apiserver, POLICIES, "into-locked",
                {"spec": {"destination": {"secretRef": {"name": "locked-pusher"}}}}, namespace)
    await wait_condition(apiserver, operator, namespace, "into-locked", "Ready", "True", "OnDemand")


async def test_an_impossible_schedule_is_refused_at_admission(apiserver: ApiServer, namespace: str,
                                                              operator: Operator) -> None:
    """`kubectl apply` hears of a schedule the CronJob controller could not run (hour 25)."""
    with pytest.raises(ApiError) as refused:
        await create(apiserver, policy("typo", namespace, {
            "source": {"url": "http://127.1.1.1:5000"}, "destination": {"url": "http://127.1.1.2:5000"},
            "trigger": {"schedule": "0 25 * * *"}}))
    assert refused.value.status == 422
    assert "spec.trigger.schedule" in str(refused.value)
    assert "hour 0-23" in str(refused.value)
    assert await get(apiserver, CRONJOBS, "typo", namespace) is None


async def test_a_run_writes_its_result_into_the_status(apiserver: ApiServer, namespace: str, operator: Operator,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dockyard.controller.runs import parse_policy_ref, run_in_cluster
    from tests.replication.helpers import Pusher

    with Registries(tmp_path) as servers:
        source = servers.distribution()
        htpasswd = write_htpasswd(tmp_path / "htpasswd", "pusher", "pushpass")
        dest = servers.dockyard("--htpasswd", str(htpasswd))
        async with Pusher(source.url) as pusher:
            base = b"base-layer" * 1000
            app = await pusher.image("team/app", "v1", [base, b"app-one" * 500])
            await pusher.image("team/app", "v2", [base, b"app-two" * 500])

        await create(apiserver, secret("dest-push", namespace, username="pusher", password="pushpass"))
        await create(apiserver, policy("copy", namespace, {
            "source": {"url": source.url}, "destination": {"url": dest.url, "secretRef": {"name": "dest-push"}},
            "filters": {"repositories": {"include": ["team/app"]}},
            "limits": {"retry": {"max": 2, "backoff": "100ms"}}}))
        await wait_condition(apiserver, operator, namespace, "copy", "Ready", "True", "OnDemand")
        await patch(apiserver, POLICIES, "copy", {"metadata": {"annotations": {SYNC: "go"}}}, namespace)
        await wait_condition(apiserver, operator, namespace, "copy", "Ready", "True", "Running")
        [job] = await jobs_of(apiserver, namespace, "copy")
        pod = job["spec"]["template"]["spec"]
        args = pod["containers"][0]["args"]

        # Be the Job: run exactly what the operator rendered, as the ServiceAccount it gave the pod.
        assert args[:2] == ["replicate", "--policy"]
        ref_namespace, name = parse_policy_ref(args[2])
        kube = await as_service_account(apiserver, namespace, pod["serviceAccountName"], tmp_path, monkeypatch)
        try:
            result = await run_in_cluster(ref_namespace, name, kube=kube,
                                          source_url=args[args.index("--source-url") + 1],
                                          dest_url=args[args.index("--dest-url") + 1])
        finally:
            await kube.close()
        assert result.result == "Succeeded", result
        got = request("GET", f"{dest.url}/v2/team/app/manifests/v1", auth=("pusher", "pushpass"),
                      headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert got.status == 200, "the copy is byte for byte"
        assert got.body == app.manifest, "the copy is byte for byte"

        obj = await get(apiserver, POLICIES, "copy", namespace)
        assert obj is not None
        last = obj["status"]["lastRun"]
        assert last["result"] == "Succeeded"
        assert last["artifactsCopied"] == 2
        assert last["artifactsFailed"] == 0
        assert last["bytesCopied"] > 0
        assert obj["status"]["lastSuccessfulTime"] == last["completionTime"]
        assert not obj["status"].get("failedItems")

        await finish_job(apiserver, namespace, job["metadata"]["name"])
        await wait_condition(apiserver, operator, namespace, "copy", "Ready", "True", "OnDemand")

        # The source goes away: the next run fails, says why, and the policy shows it.
        source.stop()
        await patch(apiserver, POLICIES, "copy", {"metadata": {"annotations": {SYNC: "again"}}}, namespace)
        await wait_condition(apiserver, operator, namespace, "copy", "Ready", "True", "Running")
        kube = await as_service_account(apiserver, namespace, pod["serviceAccountName"], tmp_path, monkeypatch)
        try:
            failed = await run_in_cluster(namespace, "copy", kube=kube, source_url=source.url, dest_url=dest.url)
        finally:
            await kube.close()
        assert failed.result == "Failed"
        await finish_job(apiserver, namespace, manual_job_name("copy", "again"), "Failed",
                         "Job has reached the specified backoff limit")
        obj = await wait_condition(apiserver, operator, namespace, "copy", "Ready", "False", "LastRunFailed")
        assert obj["status"]["lastRun"]["result"] == "Failed"
        assert obj["status"]["lastSuccessfulTime"] == last["completionTime"], "the last success is remembered"
        await posted(apiserver, namespace, "copy", "LastRunFailed")


async def test_a_run_that_dies_without_a_report_shows_on_the_policy(apiserver: ApiServer, namespace: str,
                                                                   operator: Operator) -> None:
    await create(apiserver, policy("crashy", namespace, {
        "source": {"url": "http://127.1.1.1:5000"}, "destination": {"url": "http://127.1.1.2:5000"}},
        annotations={SYNC: "1"}))
    await wait_condition(apiserver, operator, namespace, "crashy", "Ready", "True", "Running")
    await finish_job(apiserver, namespace, manual_job_name("crashy", "1"), "Failed",
                     "Job has reached the specified backoff limit")
    obj = await wait_condition(apiserver, operator, namespace, "crashy", "Ready", "False", "RunFailed")
    assert "backoff limit" in condition(obj, "Ready")["message"]


def push_event(namespace: str, registry: str, data: dict[str, Any]) -> bytes:
    return cloud_event("push", f"/registries/{namespace}/{registry}", f"{data.get('repository')}:{data.get('tag')}",
                       data)


async def post_push(op: Operator, url: str, namespace: str, repository: str, tag: str, *, registry: str = "main",
                    token: str) -> tuple[int, Any]:
    """What a Dockyard registry sends after a tag push (a CloudEvent signed with its events token);
    waits (with a deadline) for the receiver."""
    body = push_event(namespace, registry, {"repository": repository, "tag": tag, "digest": "sha256:" + "ab" * 32})
    return await post_event(op, url, body, sign(token.encode(), body))


async def post_event(op: Operator, url: str, body: bytes, signature: str) -> tuple[int, Any]:
    deadline = time.monotonic() + DEADLINE
    async with aiohttp.ClientSession() as session:
        while True:
            op.check()
            try:
                async with session.post(url, data=body, headers={"X-Dockyard-Signature": signature,
                                                                 "Content-Type": "application/cloudevents+json"}) as r:
                    return r.status, await r.json()
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)  # the operator is still starting its receiver


async def test_pushes_to_a_dockyard_source_run_on_push_policies_once_at_a_time(
        apiserver: ApiServer, namespace: str, operator: Operator, events_url: str) -> None:
    ns = namespace
    await create(apiserver, registry("main", ns))
    await create(apiserver, policy("on-push", ns, {
        "source": {"registryRef": {"name": "main"}}, "destination": {"url": "http://127.2.2.2:5000"},
        "filters": {"repositories": {"include": ["team/**"]}, "tags": {"exclude": ["*-dev"]}},
        "trigger": {"onPush": True, "schedule": "@daily"}}))
    await create(apiserver, policy("nightly", ns, {
        "source": {"registryRef": {"name": "main"}}, "destination": {"url": "http://127.3.3.3:5000"},
        "trigger": {"schedule": "@daily"}}))
    await wait_condition(apiserver, operator, ns, "on-push", "Ready", "True", "Scheduled")
    await wait_condition(apiserver, operator, ns, "nightly", "Ready", "True", "Scheduled")
    token = await events_token(apiserver, ns, "main")

    assert (await post_push(operator, events_url, ns, "team/app", "v1", token="wrong"))[0] == 401
    no_tag = push_event(ns, "main", {"repository": "team/app"})
    status, answer = await post_event(operator, events_url, no_tag, sign(token.encode(), no_tag))
    assert status == 400
    assert "tag" in answer["error"]
    assert await post_push(operator, events_url, ns, "other/app", "v1", token=token) == (202, {"policies": []}), (
        "filtered repository")
    assert await post_push(operator, events_url, ns, "team/app", "v1-dev", token=token) == (202, {"policies": []}), (
        "excluded tag")
    assert (await post_push(operator, events_url, ns, "team/app", "v1", registry="elsewhere", token=token))[0] == 401, (
        "main's token is no token for another registry")
    assert await jobs_of(apiserver, ns, "on-push") == []

    assert await post_push(operator, events_url, ns, "team/app", "v1", token=token) == (
        202, {"policies": [f"{ns}/on-push"]})
    obj = await wait_condition(apiserver, operator, ns, "on-push", "Ready", "True", "Running")
    [first] = await jobs_of(apiserver, ns, "on-push")
    assert first["metadata"]["name"].startswith("on-push-push-")
    assert first["metadata"]["annotations"]["dockyard.dev/push-event"].startswith("team/app:v1@sha256:")
    cj = await get(apiserver, CRONJOBS, "on-push", ns)
    assert cj is not None, "the schedule is held during the push run"
    assert cj["spec"]["suspend"] is True, "the schedule is held during the push run"
    assert obj["status"].get("lastSyncRequest") is None
    assert await jobs_of(apiserver, ns, "nightly") == [], "a policy without onPush does not run on pushes"

    # Pushes during the run coalesce into one more run after it.
    for tag in ("v2", "v3", "v4"):
        assert (await post_push(operator, events_url, ns, "team/app", tag, token=token))[0] == 202

    async def waiting() -> bool:
        return "waits" in condition(await get(apiserver, POLICIES, "on-push", ns), "Ready").get("message", "")
    await wait_for(waiting, timeout=DEADLINE, message="the coalesced pushes wait for the running job")
    assert len(await jobs_of(apiserver, ns, "on-push")) == 1
    await finish_job(apiserver, ns, first["metadata"]["name"])

    async def second() -> list[dict[str, Any]]:
        jobs = await jobs_of(apiserver, ns, "on-push")
        return jobs if len(jobs) == 2 else []
    jobs = await wait_for(second, timeout=DEADLINE, message="one more run for the pushes during the first")
    [later] = [j for j in jobs if j["metadata"]["name"] != first["metadata"]["name"]]
    assert later["metadata"]["annotations"]["dockyard.dev/push-event"].startswith("team/app:v4@")
    await finish_job(apiserver, ns, later["metadata"]["name"])
    await wait_condition(apiserver, operator, ns, "on-push", "Ready", "True", "Scheduled")
    await settle(apiserver, operator)
    assert len(await jobs_of(apiserver, ns, "on-push")) == 2
