"""Desired Kubernetes objects for one ReplicationPolicy: pure builders, same input -> same output.

A policy runs as Jobs of the operator image executing `dockyard replicate --policy NS/NAME`:
a CronJob when `trigger.schedule` is set, one Job per manual request (the
`dockyard.dev/sync-requested-at` annotation) or per burst of pushes to a Dockyard source
(`trigger.onPush`, see `controller.push`). Each run uses its own ServiceAccount whose
Role grants exactly what the run needs, by resource name: read the policy, write its
status, read the Secrets it references. `registryRef` sides are resolved by the operator to
the Registry's in-cluster endpoint and passed as `--source-url`/`--dest-url`, so runs never
read Registries. Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from dockyard import cron
from dockyard.api import API_VERSION, GROUP, SpecError
from dockyard.api.replication import Endpoint, ReplicationPolicySpec
from dockyard.api.schema import parse
from dockyard.render import labels as child_labels
from dockyard.render.registry import (
    PORT,
    default_image,
    restricted_container,
    restricted_pod,
)

APP = "dockyard-replication"
KIND = "ReplicationPolicy"
SYNC_ANNOTATION = "dockyard.dev/sync-requested-at"
PUSH_ANNOTATION = "dockyard.dev/push-event"
"""On a Job started by a push to the source: `REPOSITORY:TAG@DIGEST at TIME` of the latest push."""
TIME_ZONE = "Etc/UTC"
"""CronJobs are pinned to UTC so `status.nextRun` (computed in UTC) tells the truth."""
BACKOFF_LIMIT = 2
"""Pod retries of one run; each retry starts with the previous attempt's failed items."""
HISTORY_LIMIT = 3
STARTING_DEADLINE_SECONDS = 600
"""A scheduled run that could not start within 10 minutes is skipped, not piled up."""
MANUAL_JOB_TTL_SECONDS = 7 * 24 * 3600
JOB_NAME_MAX = 63  # Job names become pod label values
CRONJOB_NAME_MAX = 52  # the CronJob controller appends an 11-character suffix
TMP_DIR = "/tmp"  # noqa: S108  inside the Job's pod, an emptyDir of its own


selector_labels = partial(child_labels.selector_labels, APP)
labels = partial(child_labels.labels, APP)
selector_string = partial(child_labels.selector_string, APP)


def _short_hash(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _fit(base: str, suffix: str, limit: int) -> str:
    """`base + suffix`, with `base` shortened (and made unique by a hash) when too long."""
    if len(base) + len(suffix) <= limit:
        return base + suffix
    keep = limit - len(suffix) - 11
    return f"{base[:keep].rstrip('-.')}-{_short_hash(base)}{suffix}"


def service_account_name(policy: str) -> str:
    return _fit(policy, "-replicator", 253)


def cronjob_name(policy: str) -> str:
    return _fit(policy, "", CRONJOB_NAME_MAX)


def manual_job_name(policy: str, request: str) -> str:
    """The Job of one manual request: the same request value always names the same Job."""
    return _fit(policy, f"-manual-{_short_hash(request, 8)}", JOB_NAME_MAX)


def push_job_name(policy: str, event: str) -> str:
    return _fit(policy, f"-push-{_short_hash(event, 8)}", JOB_NAME_MAX)


def registry_endpoint(registry: Mapping[str, Any]) -> str:
    """A Registry's in-cluster URL: its `status.endpoint`, else the Service it will have."""
    reported = (registry.get("status") or {}).get("endpoint")
    if reported:
        return str(reported)
    meta = registry.get("metadata") or {}
    spec = registry.get("spec") or {}
    port = (spec.get("service") or {}).get("port") or PORT
    scheme = "https" if (spec.get("tls") or {}).get("secretName") else "http"
    return f"{scheme}://{meta.get('name')}.{meta.get('namespace')}.svc:{port}"


def registry_refs(spec: ReplicationPolicySpec, namespace: str) -> dict[str, tuple[str, str]]:
    """`source`/`destination` -> (namespace, name) of each side that is a Dockyard Registry."""
    refs: dict[str, tuple[str, str]] = {}
    for side, ep in (("source", spec.source), ("destination", spec.destination)):
        if ep.registry_ref is not None:
            refs[side] = (ep.registry_ref.namespace or namespace, ep.registry_ref.name)
    return refs


def referenced_secrets(spec: ReplicationPolicySpec) -> dict[str, tuple[str, ...]]:
    """Secret name -> what a run needs in it: `credentials` and/or `ca.crt` (see `secret_problem`)."""
    needs: dict[str, set[str]] = {}
    for ep in (spec.source, spec.destination):
        if ep.secret_ref is not None:
            needs.setdefault(ep.secret_ref.name, set()).add("credentials")
        if ep.ca_secret_ref is not None:
            needs.setdefault(ep.ca_secret_ref.name, set()).add("ca.crt")
    return {name: tuple(sorted(keys)) for name, keys in sorted(needs.items())}


def credentials_problem(side: str, endpoint: Endpoint, registry: Mapping[str, Any]) -> str | None:
    """Why a run cannot authenticate to a Dockyard Registry that requires it, or None.

    A Registry's htpasswd Secret holds password hashes, so the run cannot log in with it: the
    side needs a `secretRef` of its own (a user of that htpasswd). Anonymous pull serves a source.
    """
    if endpoint.secret_ref is not None:
        return None
    auth = (registry.get("spec") or {}).get("auth")
    if not auth or (side == "source" and auth.get("anonymousPull")):
        return None
    name = (registry.get("metadata") or {}).get("name")
    return (f"the {side} Registry {name!r} requires authentication: set {side}.secretRef to a "
            "kubernetes.io/basic-auth Secret of one of its htpasswd users")


def secret_problem(name: str, needs: tuple[str, ...], data: Mapping[str, Any]) -> str | None:
    """Why a referenced Secret cannot serve the run, or None."""
    if "credentials" in needs and ".dockerconfigjson" not in data and not {"username", "password"} <= set(data):
        return (f"Secret {name!r} holds neither .dockerconfigjson nor username and password "
                "(kubernetes.io/dockerconfigjson or kubernetes.io/basic-auth)")
    if "ca.crt" in needs and "ca.crt" not in data:
        return f"Secret {name!r} has no key 'ca.crt'"
    return None


@dataclass(frozen=True)
class PolicyInput:
    """Everything rendering needs: the parsed policy and the resolved URL of each side."""

    name: str
    namespace: str
    spec: ReplicationPolicySpec
    source_url: str
    destination_url: str
    image: str
    uid: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, registries: Mapping[tuple[str, str], Mapping[str, Any]]
                  | None = None, image: str | None = None) -> PolicyInput:
        """Parse the policy; `registries` holds the referenced Registries by (namespace, name).

        Raises SpecError for an invalid spec (including a schedule the CronJob controller
        would reject) and KeyError naming the (namespace, name) of a missing Registry.
        """
        meta = body.get("metadata") or {}
        if not meta.get("name"):
            raise SpecError("metadata.name", "is required")
        namespace = meta.get("namespace") or "default"
        spec = parse(ReplicationPolicySpec, body.get("spec"), "spec")
        if spec.trigger.schedule is not None:
            try:
                cron.parse(spec.trigger.schedule)
            except cron.CronError as e:
                raise SpecError("spec.trigger.schedule", str(e)) from None
        urls: dict[str, str] = {}
        for side, ep in (("source", spec.source), ("destination", spec.destination)):
            urls[side] = _side_url(ep, namespace, registries or {})
        return cls(name=meta["name"], namespace=namespace, spec=spec, source_url=urls["source"],
                   destination_url=urls["destination"], image=image or default_image(), uid=meta.get("uid"))


def _side_url(ep: Endpoint, namespace: str, registries: Mapping[tuple[str, str], Mapping[str, Any]]) -> str:
    if ep.url is not None:
        return ep.url
    assert ep.registry_ref is not None  # the model guarantees exactly one of url and registryRef
    key = (ep.registry_ref.namespace or namespace, ep.registry_ref.name)
    if key not in registries:
        raise KeyError(key)
    return registry_endpoint(registries[key])


# ----------------------------------------------------------------------------- builders

def _meta(inp: PolicyInput, name: str, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": inp.namespace, "labels": labels(inp.name)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if inp.uid:
        meta["ownerReferences"] = [{
            "apiVersion": API_VERSION, "kind": KIND, "name": inp.name, "uid": inp.uid,
            "controller": True, "blockOwnerDeletion": True,
        }]
    return meta


def service_account(inp: PolicyInput) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": _meta(inp, service_account_name(inp.name))}


def role(inp: PolicyInput) -> dict[str, Any]:
    """Least privilege, by resource name: this policy and the Secrets it references, nothing else."""
    rules: list[dict[str, Any]] = [
        {"apiGroups": [GROUP], "resources": ["replicationpolicies"],
         "resourceNames": [inp.name], "verbs": ["get"]},
        {"apiGroups": [GROUP], "resources": ["replicationpolicies/status"],
         "resourceNames": [inp.name], "verbs": ["get", "patch"]},
    ]
    secrets = sorted(referenced_secrets(inp.spec))
    if secrets:
        rules.append({"apiGroups": [""], "resources": ["secrets"], "resourceNames": secrets, "verbs": ["get"]})
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(inp, service_account_name(inp.name)), "rules": rules}


def role_binding(inp: PolicyInput) -> dict[str, Any]:
    name = service_account_name(inp.name)
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": _meta(inp, name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": inp.namespace}]}


def replicate_args(inp: PolicyInput) -> list[str]:
    return ["replicate", "--policy", f"{inp.namespace}/{inp.name}",
            "--source-url", inp.source_url, "--dest-url", inp.destination_url]


def _pod_template(inp: PolicyInput, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    container = {
        "name": "replicate",
        "image": inp.image,
        "args": replicate_args(inp),
        "env": [{"name": "TMPDIR", "value": TMP_DIR}, {"name": "HOME", "value": TMP_DIR}],
        "securityContext": restricted_container(),
        "volumeMounts": [{"name": "tmp", "mountPath": TMP_DIR}],
    }
    meta: dict[str, Any] = {"labels": labels(inp.name)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "metadata": meta,
        "spec": {
            "serviceAccountName": service_account_name(inp.name),
            "automountServiceAccountToken": True,  # the run reads its policy and writes its status
            "restartPolicy": "Never",
            "securityContext": restricted_pod(),
            "containers": [container],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


def _job_spec(inp: PolicyInput, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    # No activeDeadlineSeconds: a multi-GB copy may take hours; the engine's progress-based
    # timeouts end a stuck run instead of a fixed whole-copy limit.
    return {"backoffLimit": BACKOFF_LIMIT, "template": _pod_template(inp, annotations)}


def cron_job(inp: PolicyInput, *, hold: bool = False) -> dict[str, Any] | None:
    """The CronJob of a scheduled policy; `hold` suspends it while a manual run is active."""
    schedule = inp.spec.trigger.schedule
    if schedule is None:
        return None
    return {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": _meta(inp, cronjob_name(inp.name)),
        "spec": {
            "schedule": schedule,
            "timeZone": TIME_ZONE,
            "suspend": inp.spec.suspend or hold,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": HISTORY_LIMIT,
            "failedJobsHistoryLimit": HISTORY_LIMIT,
            "jobTemplate": {"metadata": {"labels": labels(inp.name)}, "spec": _job_spec(inp)},
        },
    }


def _triggered_job(inp: PolicyInput, name: str, annotations: Mapping[str, str]) -> dict[str, Any]:
    spec = {**_job_spec(inp, annotations), "ttlSecondsAfterFinished": MANUAL_JOB_TTL_SECONDS}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(inp, name, annotations), "spec": spec}


def manual_job(inp: PolicyInput, request: str) -> dict[str, Any]:
    """The Job answering one value of the sync-requested-at annotation."""
    return _triggered_job(inp, manual_job_name(inp.name, request), {SYNC_ANNOTATION: request})


def push_job(inp: PolicyInput, event: str) -> dict[str, Any]:
    """The Job answering pushes to a Dockyard source (`trigger.onPush`); `event` names the latest."""
    return _triggered_job(inp, push_job_name(inp.name, event), {PUSH_ANNOTATION: event})


def render_policy(inp: PolicyInput, *, hold_schedule: bool = False) -> list[dict[str, Any]]:
    """Every object the operator applies for this policy, in apply order (manual Jobs aside)."""
    objects = [service_account(inp), role(inp), role_binding(inp), cron_job(inp, hold=hold_schedule)]
    return [obj for obj in objects if obj is not None]
