"""The ReplicationPolicy controller: runs as Jobs, honest status, recovery without a nudge.

One idempotent reconcile per policy (serialised and coalesced per object by the same
`Reconciler` machinery as Registries) resolves both sides, checks the referenced Secrets,
applies the run identity (ServiceAccount, Role, RoleBinding) and the CronJob of a scheduled
policy, and answers a new value of the `dockyard.dev/sync-requested-at` annotation with one
Job, recorded in `status.lastSyncRequest` so each value runs once. Pushes to a Dockyard
source (`trigger.onPush`, received by `controller.push`) get a Job the same way.

At most one run per policy at a time: the CronJob forbids overlapping runs of its own; a
manual or push run waits while any run is active (the run's completion triggers the next
reconcile), and the CronJob is held suspended while a manual or push run is active. Left: a
scheduled start in the very second a manual Job is created can still overlap it. `suspend`
pauses scheduled runs only: a manual request is an explicit human act and still runs.

The controller writes conditions, `observedGeneration`, `nextRun` and `lastSyncRequest`;
the run itself writes `lastRun`, `failedItems` and `lastSuccessfulTime` (see
`dockyard.controller.runs`). Both use merge patches of disjoint fields.

Triggers: create, `spec` update and resume of a policy; a pending sync request; events of
the policy's Jobs and CronJob (labelled `app.kubernetes.io/name: dockyard-replication`);
events of a referenced Registry or Secret (found through an index), so a policy stalled on
`RegistryNotFound` or `SecretNotFound` recovers by itself when the object appears
(`controller.replication_handlers`).

The status policy is in `controller.replication_status`, the Events in
`controller.replication_events`.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dockyard import cron
from dockyard.api import API_VERSION, SpecError
from dockyard.api.replication import ReplicationPolicySpec
from dockyard.api.schema import parse
from dockyard.controller import conditions
from dockyard.controller.conditions import READY, STALLED
from dockyard.controller.kube import ApiError, Kube
from dockyard.controller.reconcile import EventPoster, ObjectPass, Reconciler, contains, stamp
from dockyard.controller.replication_events import KIND
from dockyard.controller.replication_status import Observed, job_state, next_run, policy_conditions, unreported_failure
from dockyard.render.labels import INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, NAME_LABEL
from dockyard.render.replication import (
    APP,
    SYNC_ANNOTATION,
    PolicyInput,
    credentials_problem,
    cronjob_name,
    manual_job,
    push_job,
    referenced_secrets,
    registry_refs,
    render_policy,
    secret_problem,
    selector_string,
)

PLURAL = "replicationpolicies"
RUN_LABELS = {NAME_LABEL: APP, MANAGED_BY_LABEL: MANAGER}


class PolicyReconciler(Reconciler):
    """Serialised, coalesced reconciles of ReplicationPolicies (same machinery as Registries).

    `pushes` holds, per policy, the latest push to its Dockyard source that no run has answered
    yet (see `controller.push`); pushes during a run coalesce into one run after it.
    """

    def __init__(self, kube: Kube, post_event: EventPoster) -> None:
        super().__init__(kube, post_event)
        self.pushes: dict[tuple[str, str], str] = {}

    async def push(self, namespace: str, name: str, event: str) -> None:
        self.pushes[(namespace, name)] = event
        await self.request(namespace, name)

    def answered(self, key: tuple[str, str], event: str | None) -> None:
        """A run started after `event` arrived covers it (unless a newer push came meanwhile)."""
        if event is not None and self.pushes.get(key) == event:
            del self.pushes[key]

    async def reconcile(self, namespace: str, name: str) -> None:
        body = await self.current(KIND, namespace, name)
        if body is not None:
            await PolicyPass(self, body).run()

    def forget(self, namespace: str, name: str) -> None:
        super().forget(namespace, name)
        self.pushes.pop((namespace, name), None)


def started_by_cronjob(job: Mapping[str, Any]) -> bool:
    return any(ref.get("kind") == "CronJob" for ref in (job.get("metadata") or {}).get("ownerReferences") or [])


class PolicyPass(ObjectPass):
    """One reconcile of one ReplicationPolicy body."""

    KIND = KIND

    def __init__(self, reconciler: PolicyReconciler, body: Mapping[str, Any]) -> None:
        super().__init__(reconciler, body)
        self.reconciler = reconciler

    async def run(self) -> None:
        before = self.summary()
        await self.reconcile()
        self.announce(before, self.summary())

    async def reconcile(self) -> None:
        try:
            spec = parse(ReplicationPolicySpec, self.body.get("spec"), "spec")
            if spec.trigger.schedule is not None:
                cron.parse(spec.trigger.schedule)
        except (SpecError, cron.CronError) as e:
            message = str(e) if isinstance(e, SpecError) else f"spec.trigger.schedule: {e}"
            await self.report(Observed(self.generation, spec_error=message))
            return
        if self.status.get("observedGeneration") != self.generation:
            await self.write({**self.status, "observedGeneration": self.generation},
                             conditions.reconciling_now(self.generation))
        base = Observed(self.generation, schedule=spec.trigger.schedule, suspended=spec.suspend,
                        last_run=self.status.get("lastRun"))
        registries, missing = await self.read_registries(spec)
        refs = registry_refs(spec, self.namespace)
        endpoints = {"source": spec.source, "destination": spec.destination}
        unauthenticated = [p for side, key in refs.items() if key in registries
                           and (p := credentials_problem(side, endpoints[side], registries[key]))]
        problems = await self.check_secrets(spec)
        if missing or unauthenticated or problems:  # leave what exists alone; nothing can run like this
            await self.report(replace(base, missing_registries=tuple(missing),
                                      credential_problems=tuple(unauthenticated), secret_problems=tuple(problems)))
            return
        inp = PolicyInput.from_body(self.body, registries=registries)
        jobs = await self.runs()
        active = [j for j in jobs if job_state(j) == "active"]
        request = (self.body["metadata"].get("annotations") or {}).get(SYNC_ANNOTATION)
        pending = bool(request) and request != self.status.get("lastSyncRequest")
        key = (self.namespace, self.name)
        push = self.reconciler.pushes.get(key) if spec.trigger.on_push else None
        start_manual = pending and not active
        start_push = push is not None and not active and not start_manual
        # the schedule is held while a run it does not know about is active (at most one at a time)
        hold = start_manual or start_push or any(not started_by_cronjob(j) for j in active)
        apply_error = await self.apply(inp, hold)
        handled: dict[str, Any] = {}
        if apply_error is None and start_manual:
            assert request is not None
            active += await self.start(manual_job(inp, request), f"{SYNC_ANNOTATION}={request!r}")
            handled["lastSyncRequest"] = request
            self.reconciler.answered(key, push)
        elif apply_error is None and start_push:
            assert push is not None
            active += await self.start(push_job(inp, push), f"the push of {push}")
            self.reconciler.answered(key, push)
        await self.report(replace(
            base, apply_error=apply_error,
            active_run=active[0]["metadata"]["name"] if active else None,
            request_waiting=(pending and not start_manual) or (push is not None and not start_push
                                                                 and not start_manual),
            unreported_failure=unreported_failure(jobs, self.status.get("lastRun")),
        ), handled)

    async def read_registries(self, spec: ReplicationPolicySpec
                              ) -> tuple[dict[tuple[str, str], Mapping[str, Any]], list[str]]:
        found: dict[tuple[str, str], Mapping[str, Any]] = {}
        missing: list[str] = []
        for side, (namespace, name) in registry_refs(spec, self.namespace).items():
            registry = await self.kube.get(API_VERSION, "Registry", namespace, name)
            if registry is None:
                missing.append(f"the {side} Registry {name!r} does not exist in namespace {namespace!r}")
            else:
                found[(namespace, name)] = registry
        return found, missing

    async def check_secrets(self, spec: ReplicationPolicySpec) -> list[str]:
        problems: list[str] = []
        for name, needs in referenced_secrets(spec).items():
            secret = await self.kube.get("v1", "Secret", self.namespace, name)
            if secret is None:
                problems.append(f"Secret {name!r} not found in namespace {self.namespace!r}")
                continue
            data = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
            problem = secret_problem(name, needs, data)
            if problem:
                problems.append(problem)
        return problems

    async def runs(self) -> list[dict[str, Any]]:
        """This policy's Jobs (manual ones and the CronJob's)."""
        jobs = await self.kube.list("batch/v1", "Job", self.namespace, label_selector=selector_string(self.name))
        return [j for j in jobs if contains((j.get("metadata") or {}).get("labels") or {}, RUN_LABELS)
                and (j["metadata"].get("labels") or {}).get(INSTANCE_LABEL) == self.name]

    async def apply(self, inp: PolicyInput, hold: bool) -> str | None:
        desired = [stamp(obj) for obj in render_policy(inp, hold_schedule=hold)]
        for obj in desired:
            kind, meta = obj["kind"], obj["metadata"]
            current = await self.kube.get(obj["apiVersion"], kind, self.namespace, meta["name"])
            if current is None or not contains(current, obj):
                try:
                    await self.kube.apply(obj)
                except ApiError as e:
                    if e.status in (400, 403, 409, 422) and not e.namespace_terminating:
                        return f"{kind} {meta['name']!r} was refused: {e.message}"
                    raise
        if inp.spec.trigger.schedule is None:
            await self.delete_if_owned("batch/v1", "CronJob", cronjob_name(self.name))
        return None

    async def start(self, job: dict[str, Any], cause: str) -> list[dict[str, Any]]:
        """Create a triggered Job: [the Job], or [] when one of that name exists and has finished
        (it answered the same trigger already, and a status write was lost)."""
        try:
            created = await self.kube.create(job)
        except ApiError as e:
            if e.status != 409:
                raise
            existing = await self.kube.get("batch/v1", "Job", self.namespace, job["metadata"]["name"])
            return [existing] if existing and job_state(existing) == "active" else []
        self.post_event(self.body, "Normal", "SyncStarted", f"started Job {job['metadata']['name']} for {cause}")
        return [created]

    async def report(self, obs: Observed, updates: Mapping[str, Any] | None = None) -> None:
        """Conditions, `nextRun` and `updates`; the fields a run writes are carried over untouched."""
        status = {**self.status, **(updates or {}), "observedGeneration": self.generation}
        upcoming = None if obs.spec_error else next_run(obs.schedule, obs.suspended,
                                                        datetime.datetime.now(datetime.UTC))
        if upcoming:
            status["nextRun"] = upcoming
        else:
            status.pop("nextRun", None)
        await self.write(status, policy_conditions(obs))

    async def write(self, status: dict[str, Any], new_conditions: list[dict[str, Any]]) -> None:
        await self.write_status(status, new_conditions)  # events: one per net transition, in run()

    def summary(self) -> dict[str, tuple[str, str, str]]:
        """Condition type -> (status, reason, message), to compare the start and end of a pass."""
        return {c.get("type", ""): (c.get("status", ""), c.get("reason", ""), c.get("message", ""))
                for c in self.status.get("conditions") or []}

    def announce(self, before: Mapping[str, tuple[str, str, str]], after: Mapping[str, tuple[str, str, str]]
                 ) -> None:
        """One Event per net transition of a pass (the transient Reconciling step posts none).

        A new Stalled reason is a new problem and gets its own Event; a Ready=False that comes
        with Stalled is already told by the Stalled Event.
        """
        s0, r0, _ = before.get(STALLED, ("", "", ""))
        s1, r1, m1 = after.get(STALLED, ("", "", ""))
        if s1 == "True" and (s0 != "True" or r0 != r1):
            self.post_event(self.body, "Warning", r1, m1)
        elif s1 != "True" and s0 == "True":
            self.post_event(self.body, "Normal", "Recovered", "the replication policy is no longer stalled")
        ready0, _, _ = before.get(READY, ("", "", ""))
        ready1, reason, message = after.get(READY, ("", "", ""))
        if ready1 == ready0 or not ready1:
            return
        if ready1 == "True":
            self.post_event(self.body, "Normal", "Ready", message)
        elif s1 != "True" and ready0:
            self.post_event(self.body, "Warning", reason, message)
