"""Kopf handlers for Registries: thin triggers of the one reconcile.

Triggers: create, `spec` update and resume of a Registry; any event of a child labelled
`app.kubernetes.io/managed-by: dockyard` (drift repair, readiness changes); any event of a
Secret that some Registry references (rollout on rotation, recovery from SecretNotFound);
the deletion of a Registry's events Secret (created anew by the reconcile).

`register(registry)` adds them to a Kopf registry; `controller.main` calls it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from dockyard.api import GROUP, VERSION
from dockyard.api.registry import RegistrySpec
from dockyard.api.schema import SpecError, parse
from dockyard.controller.kube import Kube
from dockyard.controller.reconcile import Reconciler, events_url_from_environment
from dockyard.controller.replication_events import ApiEvents
from dockyard.render.labels import INSTANCE_LABEL, MANAGED_BY_LABEL, MANAGER, NAME_LABEL
from dockyard.render.registry import APP, events_secret_name, referenced_secrets, signing_secret_name

CHILDREN = (
    ("v1", "serviceaccounts"),
    ("v1", "configmaps"),
    ("v1", "services"),
    ("v1", "persistentvolumeclaims"),
    ("apps/v1", "deployments"),
    ("policy/v1", "poddisruptionbudgets"),
    ("networking.k8s.io/v1", "ingresses"),
)
CHILD_LABELS = {MANAGED_BY_LABEL: MANAGER, NAME_LABEL: APP}


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.scanning.disabled = True  # the CRDs ship with the operator; no cluster-wide CRD watch needed
    settings.posting.reporting_component = "dockyard"
    settings.posting.level = logging.INFO
    # Stream only what Dockyard manages, not every Deployment or ConfigMap of the cluster; and
    # no Helm release or service-account token Secrets (large, many, never referenced).
    for api_version, plural in (*CHILDREN, ("batch/v1", "jobs"), ("batch/v1", "cronjobs")):
        settings.watching.label_selectors[api_version.rpartition("/")[0] or "v1", plural] = \
            f"{MANAGED_BY_LABEL}={MANAGER}"
    settings.watching.field_selectors["v1", "secrets"] = \
        "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.execution.max_workers = 4
    memo.kube = await Kube.from_environment()
    # Events through the API adapter: Registries are also reconciled outside Kopf's handlers (from
    # the storage reports of the push receiver), where `kopf.event` cannot post.
    memo.reconciler = Reconciler(memo.kube, ApiEvents(memo.kube), events_url=events_url_from_environment())
    await memo.reconciler.reviewers.prune()


async def close(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "kube", None) is not None:
        await memo.kube.close()


def registry_secrets(*, namespace: str | None, name: str, spec: kopf.Spec,
                     **_: Any) -> dict[tuple[str | None, str], str]:
    """(namespace, secret name) -> names of the Registries that reference it."""
    try:
        parsed = parse(RegistrySpec, dict(spec))
    except SpecError:
        return {}
    return {(namespace, secret): name for secret in referenced_secrets(parsed)}


async def registry_changed(*, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    await memo.reconciler.request(namespace, name)


async def child_changed(*, type: str | None, namespace: str | None, labels: Mapping[str, str],
                        memo: kopf.Memo, **_: Any) -> None:
    instance = labels.get(INSTANCE_LABEL)
    if instance and type is not None:  # the initial listing is covered by resuming the Registries
        await memo.reconciler.request(namespace, instance)


async def secret_changed(*, type: str | None, namespace: str | None, name: str, labels: Mapping[str, str],
                         memo: kopf.Memo, **kwargs: Any) -> None:
    if type is None:
        return
    instance = labels.get(INSTANCE_LABEL)
    if (type == "DELETED" and instance and name in (events_secret_name(instance), signing_secret_name(instance))
            and all(labels.get(k) == v for k, v in CHILD_LABELS.items())):
        await memo.reconciler.request(namespace, instance)
        return
    index: kopf.Index[tuple[str | None, str], str] = kwargs["registry_secrets"]
    for registry in index.get((namespace, name), []):
        await memo.reconciler.request(namespace, registry)


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the handlers of Registries; first, since `configure` fills the memo the others use."""
    kopf.on.startup(registry=registry)(configure)
    kopf.on.cleanup(registry=registry)(close)
    kopf.index(GROUP, VERSION, "registries", registry=registry)(registry_secrets)
    kopf.on.update(GROUP, VERSION, "registries", field="spec", registry=registry)(registry_changed)
    kopf.on.create(GROUP, VERSION, "registries", registry=registry)(registry_changed)
    kopf.on.resume(GROUP, VERSION, "registries", registry=registry)(registry_changed)
    # No finalizer (optional): a deletion seen in time frees the registry's TokenReview subject,
    # one missed while the operator was down is pruned at its next start.
    kopf.on.delete(GROUP, VERSION, "registries", optional=True, registry=registry)(registry_changed)
    for api_version, plural in CHILDREN:
        group, _, version = api_version.rpartition("/")
        kopf.on.event(group, version, plural, labels=CHILD_LABELS, registry=registry)(child_changed)
    kopf.on.event("v1", "secrets", registry=registry)(secret_changed)
