"""ReplicationPolicy runs on a real cluster: each trigger, as users set it up, in a namespace of its own.

Two Registries made from examples/registry-ephemeral.yaml (`main` and `standby`, emptyDir
storage) and the policy of examples/replication-dockyard-to-dockyard.yaml, with `standby` in
the test's namespace and the trigger under test. An image is pushed to `main` with skopeo
through the Service's DNS name; the policy runs as a Job of the operator's image, in a pod the
kubelet starts; the image is pulled from `standby` and compared byte for byte.

- manual: no trigger; a new value of the dockyard.dev/sync-requested-at annotation starts one
  Job, and the policy reports lastRun Succeeded with the artifacts copied, and Ready=True;
- scheduled: every minute; the operator's CronJob starts a Job (the CronJob controller of the
  cluster does) within about two minutes, which copies what was pushed before;
- on push: `onPush: true` and no schedule; a push to `main` makes its registry post an event
  to the operator's receiver (Service dockyard-events), and the Job it starts copies the tag.

A timeout reports the policy's status, its Jobs, CronJobs and pods, the runs' logs, the
registries' logs, the namespace's events and the operator's log.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import ROOT, Install, Kube, wait_until
from tests.e2e.test_e2e import Client, Example, condition, current, load_example, wait_ready
from tests.registry.images import image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

REGISTRY_EXAMPLE = ROOT / "examples" / "registry-ephemeral.yaml"
POLICY_EXAMPLE = ROOT / "examples" / "replication-dockyard-to-dockyard.yaml"
SOURCE, DESTINATION = "main", "standby"
SYNC_ANNOTATION = "dockyard.dev/sync-requested-at"
PUSH_ANNOTATION = "dockyard.dev/push-event"
RUN_LABELS = "app.kubernetes.io/name=dockyard-replication,app.kubernetes.io/managed-by=dockyard"
SETTLE_TIMEOUT = 180.0
RUN_TIMEOUT = 420.0  # a pod of the operator's image, started and run on a busy two-core node
SCHEDULE_TIMEOUT = 240.0  # the next minute, the CronJob controller's 10 s loop, a loaded node


@dataclass
class Pair:
    """`main` and `standby`, Ready, with a client for each, and the policy between them."""

    kube: Kube
    namespace: str
    source: Client
    destination: Client
    policy: str

    def apply_policy(self, trigger: dict[str, Any] | None) -> dict[str, Any]:
        self.kube.apply([policy_doc(self.namespace, trigger)])
        return self.settled()

    def get_policy(self) -> dict[str, Any] | None:
        return self.kube.get("-n", self.namespace, "replicationpolicy", self.policy)

    def settled(self) -> dict[str, Any]:
        """The policy once Ready=True for its current generation with no run in progress."""
        def probe() -> dict[str, Any] | None:
            obj = self.get_policy()
            ready = condition(obj, "Ready")
            if obj and current(obj) and ready and ready["status"] == "True" and ready.get("reason") != "Running":
                return obj
            return None

        return wait_until(f"replicationpolicy {self.policy} is Ready for its generation", probe, timeout=SETTLE_TIMEOUT,
                          interval=2, diagnose=self.diagnose)

    def jobs(self) -> list[dict[str, Any]]:
        return self.kube.items("-n", self.namespace, "jobs", "-l",
                               f"{RUN_LABELS},app.kubernetes.io/instance={self.policy}")

    def wait_job(self, what: str, pick: Callable[[dict[str, Any]], bool],
                 timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
        """The Job PICK chooses among the policy's Jobs, once there; then once it has succeeded."""
        job = wait_until(f"a Job {what} exists", lambda: next((j for j in self.jobs() if pick(j)), None),
                         timeout=timeout, interval=2, diagnose=self.diagnose)
        name = job["metadata"]["name"]

        def finished() -> dict[str, Any] | None:
            found = self.kube.get("-n", self.namespace, "job", name)
            return found if found and job_state(found) != "active" else None

        done = wait_until(f"Job {name} finishes", finished, timeout=RUN_TIMEOUT, interval=2, diagnose=self.diagnose)
        assert job_state(done) == "succeeded", f"Job {name} failed\n{self.diagnose()}"
        return done

    def wait_reported(self) -> dict[str, Any]:
        """The policy once its run has written lastRun and the operator has seen the run end."""
        def probe() -> dict[str, Any] | None:
            obj = self.get_policy()
            ready = condition(obj, "Ready")
            if obj and (obj.get("status") or {}).get("lastRun") and ready and ready.get("reason") != "Running":
                return obj
            return None

        return wait_until(f"replicationpolicy {self.policy} reports its run", probe, timeout=SETTLE_TIMEOUT,
                          interval=2, diagnose=self.diagnose)

    def assert_succeeded(self, obj: dict[str, Any]) -> None:
        last = obj["status"]["lastRun"]
        assert last.get("result") == "Succeeded", f"lastRun: {last}\n{self.diagnose()}"
        assert last.get("artifactsCopied", 0) >= 1, f"lastRun: {last}"
        ready = condition(obj, "Ready")
        assert ready, f"Ready: {ready}"
        assert ready["status"] == "True", f"Ready: {ready}"

    def diagnose(self) -> str:
        kube, ns = self.kube, self.namespace
        obj = self.get_policy() or {}
        parts = [f"replicationpolicy/{self.policy}: annotations "
                 f"{(obj.get('metadata') or {}).get('annotations')}\nstatus:\n"
                 + yaml.safe_dump(obj.get("status", {}), sort_keys=False)]
        done = kube.run("-n", ns, "get", "cronjobs,jobs,pods", "-o", "wide", check=False)
        parts.append(f"$ kubectl -n {ns} get cronjobs,jobs,pods -o wide\n{done.stdout}{done.stderr}")
        for job in self.jobs():
            name = job["metadata"]["name"]
            done = kube.run("-n", ns, "logs", "-l", f"batch.kubernetes.io/job-name={name}", "--prefix",
                            "--tail=60", check=False)
            parts.append(f"Job {name} conditions {(job.get('status') or {}).get('conditions')}\n"
                         f"$ kubectl -n {ns} logs job/{name}\n{done.stdout}{done.stderr}")
        for registry in (SOURCE, DESTINATION):
            done = kube.run("-n", ns, "logs", f"deployment/{registry}", "--tail=30", check=False)
            parts.append(f"$ kubectl -n {ns} logs deployment/{registry}\n{done.stdout}{done.stderr}")
        parts.append(kube.describe_namespace(ns))
        return "\n".join(parts)


def job_state(job: dict[str, Any]) -> str:
    """`succeeded`, `failed`, or `active` while the Job has no terminal condition."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") == "Complete":
            return "succeeded"
        if cond.get("status") == "True" and cond.get("type") == "Failed":
            return "failed"
    return "active"


def ready_reason(obj: dict[str, Any]) -> str | None:
    ready = condition(obj, "Ready")
    return ready.get("reason") if ready else None


def registry_example(installed: Install, namespace: str, name: str, workdir: Path) -> Example:
    ex = load_example(REGISTRY_EXAMPLE, installed, namespace, workdir)
    ex.registry["metadata"]["name"] = name
    return ex


def policy_doc(namespace: str, trigger: dict[str, Any] | None) -> dict[str, Any]:
    """The dockyard-to-dockyard example in NAMESPACE, both Registries there, with TRIGGER."""
    doc: dict[str, Any] = yaml.safe_load(POLICY_EXAMPLE.read_text())
    doc["metadata"]["namespace"] = namespace
    assert doc["spec"]["source"]["registryRef"]["name"] == SOURCE
    dest = doc["spec"]["destination"]["registryRef"]
    assert dest["name"] == DESTINATION
    dest.pop("namespace", None)
    if trigger is None:
        doc["spec"].pop("trigger", None)
    else:
        doc["spec"]["trigger"] = trigger
    return doc


def pair(installed: Install, namespace: str, workdir: Path) -> Pair:
    """Both Registries applied at once, then waited for."""
    examples = [registry_example(installed, namespace, name, workdir / name) for name in (SOURCE, DESTINATION)]
    for ex in examples:
        installed.kube.apply(ex.docs)
    for ex in examples:
        wait_ready(installed.kube, ex)
    source, destination = (Client(installed, ex, workdir / f"{ex.name}-client") for ex in examples)
    name = str(yaml.safe_load(POLICY_EXAMPLE.read_text())["metadata"]["name"])
    return Pair(installed.kube, namespace, source, destination, name)


@pytest.fixture
def registries(installed: Install, namespace: str, tmp_path: Path) -> Pair:
    return pair(installed, namespace, tmp_path)


def request_sync(p: Pair) -> str:
    """A new value of the sync annotation, as `kubectl annotate --overwrite` sets it."""
    value = f"{time.time_ns()}-{uuid.uuid4().hex[:6]}"
    p.kube.run("-n", p.namespace, "annotate", "replicationpolicy", p.policy, f"{SYNC_ANNOTATION}={value}",
               "--overwrite")
    return value


def test_manual_run_copies_byte_for_byte(registries: Pair) -> None:
    p = registries
    img = image(seed=101, layers=2)
    assert p.source.push(img, "e2e/app:v1")
    settled = p.apply_policy(None)
    assert ready_reason(settled) == "OnDemand"
    assert p.jobs() == [], "a policy with no trigger started a run by itself"

    value = request_sync(p)
    job = p.wait_job(f"answering {SYNC_ANNOTATION}={value}",
                     lambda j: (j["metadata"].get("annotations") or {}).get(SYNC_ANNOTATION) == value)
    pods = p.kube.items("-n", p.namespace, "pods", "-l", f"batch.kubernetes.io/job-name={job['metadata']['name']}")
    assert any(pod["status"].get("phase") == "Succeeded" and pod["spec"].get("nodeName") for pod in pods), \
        [pod["status"].get("phase") for pod in pods]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["replicate", "--policy", f"{p.namespace}/{p.policy}"], args

    p.destination.pull(img, "e2e/app:v1")
    reported = p.wait_reported()
    p.assert_succeeded(reported)
    assert reported["status"].get("lastSyncRequest") == value
    assert reported["status"].get("lastSuccessfulTime")
    assert len(p.jobs()) == 1, "one sync request ran more than once"


def test_scheduled_run_starts_from_the_cronjob(registries: Pair) -> None:
    p = registries
    img = image(seed=202, layers=2)
    assert p.source.push(img, "e2e/app:v2")
    settled = p.apply_policy({"schedule": "* * * * *"})
    assert ready_reason(settled) == "Scheduled"
    cronjobs = p.kube.items("-n", p.namespace, "cronjobs", "-l",
                            f"{RUN_LABELS},app.kubernetes.io/instance={p.policy}")
    assert len(cronjobs) == 1, [c["metadata"]["name"] for c in cronjobs]
    spec = cronjobs[0]["spec"]
    assert (spec["schedule"], spec.get("timeZone"), spec.get("suspend")) == ("* * * * *", "Etc/UTC", False)
    cronjob = cronjobs[0]["metadata"]["name"]

    def by_cronjob(job: dict[str, Any]) -> bool:
        return any(ref.get("kind") == "CronJob" and ref.get("name") == cronjob
                   for ref in job["metadata"].get("ownerReferences") or [])

    p.wait_job(f"started by CronJob {cronjob}", by_cronjob, timeout=SCHEDULE_TIMEOUT)
    p.destination.pull(img, "e2e/app:v2")
    reported = p.wait_reported()
    p.assert_succeeded(reported)
    assert reported["status"].get("nextRun"), "a scheduled policy reports its next run"


def test_push_to_the_source_runs_the_policy(registries: Pair) -> None:
    p = registries
    p.apply_policy({"onPush": True})
    assert p.jobs() == [], "an onPush policy started a run before any push"

    img = image(seed=303, layers=2)
    assert p.source.push(img, "e2e/app:v3")
    p.wait_job("started by the push of e2e/app:v3",
               lambda j: (j["metadata"].get("annotations") or {}).get(PUSH_ANNOTATION, "")
               .startswith(f"e2e/app:v3@{img.digest} "))
    p.destination.pull(img, "e2e/app:v3")
    p.assert_succeeded(p.wait_reported())
