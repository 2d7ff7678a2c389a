"""Kopf handlers for ReplicationPolicies: thin triggers of the one reconcile.

Triggers: create, `spec` update and resume of a policy; a pending sync request; events of
the policy's Jobs and CronJob (labelled `app.kubernetes.io/name: dockyard-replication`);
events of a referenced Registry or Secret (found through an index), so a policy stalled on
`RegistryNotFound` or `SecretNotFound` recovers by itself when the object appears.

`register(registry)` adds them to a Kopf registry; `controller.main` calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from dockyard.api import GROUP, VERSION, SpecError
from dockyard.api.replication import ReplicationPolicySpec
from dockyard.api.schema import parse
from dockyard.controller.replication_events import ApiEvents
from dockyard.controller.replication_reconcile import PLURAL, RUN_LABELS, PolicyReconciler
from dockyard.render.labels import INSTANCE_LABEL
from dockyard.render.replication import SYNC_ANNOTATION, referenced_secrets, registry_refs


async def start_policy_reconciler(memo: kopf.Memo, **_: Any) -> None:
    """Runs after `handlers.configure` (registered before this, see `controller.main`), which
    puts the API adapter into `memo`. Created here, in the root memo, the reconciler is shared
    by the per-object memo copies of every handler: one lock and queue per policy."""
    memo.policy_reconciler = PolicyReconciler(memo.kube, ApiEvents(memo.kube))


def _reconciler(memo: kopf.Memo) -> PolicyReconciler:
    reconciler: PolicyReconciler = memo.policy_reconciler
    return reconciler


def policy_references(*, namespace: str | None, name: str, spec: kopf.Spec,
                      **_: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
    """("Registry"|"Secret", namespace, name) -> (namespace, name) of the policies that reference it."""
    try:
        parsed = parse(ReplicationPolicySpec, dict(spec))
    except SpecError:
        return {}
    ns = namespace or "default"
    refs: dict[tuple[str, str, str], tuple[str, str]] = {}
    for reg_ns, reg_name in registry_refs(parsed, ns).values():
        refs[("Registry", reg_ns, reg_name)] = (ns, name)
    for secret in referenced_secrets(parsed):
        refs[("Secret", ns, secret)] = (ns, name)
    return refs


async def policy_changed(*, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    await _reconciler(memo).request(namespace or "default", name)


async def sync_requested(*, type: str | None, namespace: str | None, name: str, annotations: Mapping[str, str],
                         status: Mapping[str, Any], memo: kopf.Memo, **_: Any) -> None:
    """A new annotation value; the initial listing is covered by resuming the policies."""
    if type in (None, "DELETED"):
        return
    if annotations.get(SYNC_ANNOTATION) != (status or {}).get("lastSyncRequest"):
        await _reconciler(memo).request(namespace or "default", name)


async def run_changed(*, type: str | None, namespace: str | None, labels: Mapping[str, str], memo: kopf.Memo,
                      **_: Any) -> None:
    instance = labels.get(INSTANCE_LABEL)
    if instance and type is not None:
        await _reconciler(memo).request(namespace or "default", instance)


async def _referenced_changed(kind: str, type: str | None, namespace: str | None, name: str, memo: kopf.Memo,
                              index: kopf.Index[tuple[str, str, str], tuple[str, str]]) -> None:
    if type is None:
        return
    for policy_ns, policy in set(index.get((kind, namespace or "default", name), [])):
        await _reconciler(memo).request(policy_ns, policy)


async def registry_event(*, type: str | None, namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    await _referenced_changed("Registry", type, namespace, name, memo, kwargs["policy_references"])


async def policy_secret_event(*, type: str | None, namespace: str | None, name: str, memo: kopf.Memo,
                              **kwargs: Any) -> None:
    await _referenced_changed("Secret", type, namespace, name, memo, kwargs["policy_references"])


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the handlers of ReplicationPolicies, after those of Registries (see `controller.main`)."""
    kopf.on.startup(registry=registry)(start_policy_reconciler)
    kopf.index(GROUP, VERSION, PLURAL, registry=registry)(policy_references)
    kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)(policy_changed)
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)(policy_changed)
    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)(policy_changed)
    kopf.on.event(GROUP, VERSION, PLURAL, annotations={SYNC_ANNOTATION: kopf.PRESENT},
                  registry=registry)(sync_requested)
    kopf.on.event("batch", "v1", "cronjobs", labels=RUN_LABELS, registry=registry)(run_changed)
    kopf.on.event("batch", "v1", "jobs", labels=RUN_LABELS, registry=registry)(run_changed)
    kopf.on.event(GROUP, VERSION, "registries", registry=registry)(registry_event)
    kopf.on.event("v1", "secrets", registry=registry)(policy_secret_event)
