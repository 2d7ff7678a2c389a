"""Desired Kubernetes objects for one Registry: pure builders, same input -> same output.

The operator applies exactly what `render_registry` returns (server-side apply, field
manager `dockyard`); `dockyard render -f FILE` prints the same list. Nothing here does I/O.

When the operator knows where it receives push events (`RenderInput.events_url`), the
registry is told to post one per tag push (`notify` in its config) with the token of the
Secret `<registry>-events`, mounted into the pods. That Secret holds a random token, so it
is not rendered here: the reconcile makes the token and creates it once (`events_secret`).

Each of `spec.webhooks` is rendered into the config with its key file, the webhook's Secret
mounted read-only at `/etc/dockyard/webhooks/<name>/`; the Secret is a referenced Secret, so a
rotated key rolls the pods (the server would also re-read the file when the kubelet updates it).

With `spec.storage.s3` the config gets `storage.s3`; the credentials Secret is mounted at
`/etc/dockyard/s3-credentials/` (files accessKeyId and secretAccessKey) and the CA Secret at
`/etc/dockyard/s3-ca/`, both referenced Secrets, so rotated keys roll the pods. No claim is
made; `root` stays on an emptyDir for temp files, since the root filesystem is read-only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import yaml

from dockyard import __version__, cron
from dockyard.api import API_VERSION, SpecError
from dockyard.api.registry import RegistrySpec, S3Storage, quantity_value
from dockyard.api.schema import dump, parse
from dockyard.render import labels as child_labels

PORT = 5000
CONFIG_DIR = "/etc/dockyard/config"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
AUTH_DIR = "/etc/dockyard/auth"
TLS_DIR = "/etc/dockyard/tls"
EVENTS_DIR = "/etc/dockyard/events"
SIGNING_DIR = "/etc/dockyard/signing"
SIGNING_KEY = "key"
EVENTS_TOKEN_KEY = "token"  # noqa: S105  the key's name in the Secret, not a secret
EVENTS_PATH = "/v1/push"
WEBHOOKS_DIR = "/etc/dockyard/webhooks"
S3_CREDENTIALS_DIR = "/etc/dockyard/s3-credentials"
S3_CREDENTIAL_KEYS = ("accessKeyId", "secretAccessKey")
S3_CA_DIR = "/etc/dockyard/s3-ca"
S3_SCRATCH_LIMIT = "1Gi"
"""The data volume of an s3 registry: its root holds temp files only (the images are in the bucket); the
limit keeps a leak from filling the node's disk."""
DATA_DIR = "/var/lib/registry"
RUN_AS = 65532
CHECKSUM_ANNOTATION = "dockyard.dev/checksum"
APP = "dockyard-registry"
SERVICE_ACCOUNT_AUDIENCE = "dockyard"
REVIEWER_BINDING = "dockyard-registry-tokenreview"
"""The ClusterRole (tokenreviews create) and ClusterRoleBinding the install ships; the operator keeps
the binding's subjects to the ServiceAccounts of Registries whose access rules name ServiceAccounts."""


def default_image() -> str:
    """The registry image when the spec names none: the operator's own image."""
    return os.environ.get("DOCKYARD_IMAGE") or f"dockyard:{__version__}"


selector_labels = partial(child_labels.selector_labels, APP)
labels = partial(child_labels.labels, APP)
selector_string = partial(child_labels.selector_string, APP)


def claim_name(name: str) -> str:
    return f"{name}-data"


def config_name(name: str) -> str:
    return f"{name}-config"


def events_secret_name(name: str) -> str:
    return f"{name}-events"


def signing_secret_name(name: str) -> str:
    return f"{name}-signing-key"


def uses_service_accounts(spec: RegistrySpec) -> bool:
    """Whether some access rule names a ServiceAccount: then the pods verify tokens (TokenReview)."""
    return bool(spec.auth and any(rule.service_accounts for rule in spec.auth.access or ()))


@dataclass(frozen=True)
class RenderInput:
    """Everything rendering needs: the parsed Registry and the data of the Secrets it references."""

    name: str
    namespace: str
    spec: RegistrySpec
    image: str
    uid: str | None = None
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Referenced Secrets by name -> their `data` (base64 values as stored), for the checksum."""
    claim_size: str | None = None
    """The live PVC's requested size when larger than the spec's: a PVC never shrinks."""
    events_url: str | None = None
    """Base URL of the operator's push-event receiver; None renders no notifications."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, image: str | None = None,
                  secrets: Mapping[str, Mapping[str, str]] | None = None,
                  claim_size: str | None = None, events_url: str | None = None) -> RenderInput:
        meta = body.get("metadata") or {}
        if not meta.get("name"):
            raise SpecError("metadata.name", "is required")
        spec = parse(RegistrySpec, body.get("spec"), "spec")
        if spec.garbage_collection:
            try:
                cron.parse(spec.garbage_collection.schedule)
            except cron.CronError as e:
                raise SpecError("spec.garbageCollection.schedule", str(e)) from None
        return cls(name=meta["name"], namespace=meta.get("namespace") or "default", spec=spec,
                   image=image or spec.image or default_image(), uid=meta.get("uid"),
                   secrets=secrets or {}, claim_size=claim_size, events_url=events_url or None)


def referenced_secrets(spec: RegistrySpec) -> dict[str, tuple[str, ...]]:
    """Secrets the pods need, name -> the keys that must exist in it."""
    refs: dict[str, tuple[str, ...]] = {}

    def need(name: str, key: str) -> None:
        if key not in refs.get(name, ()):
            refs[name] = (*refs.get(name, ()), key)
    if spec.auth:
        need(spec.auth.htpasswd_secret_ref.name, spec.auth.htpasswd_secret_ref.key)
    if spec.tls:
        need(spec.tls.secret_name, "tls.crt")
    for webhook in spec.webhooks or ():
        need(webhook.secret_ref.name, webhook.secret_ref.key)
    s3 = spec.storage.s3
    if s3 and s3.secret_ref:
        for key in S3_CREDENTIAL_KEYS:
            need(s3.secret_ref.name, key)
    if s3 and s3.ca_secret_ref:
        need(s3.ca_secret_ref.name, s3.ca_secret_ref.key)
    return refs


def source(inp: RenderInput) -> str:
    """The CloudEvents `source` of the Registry's events."""
    return f"/registries/{inp.namespace}/{inp.name}"


def webhook_dir(name: str) -> str:
    return f"{WEBHOOKS_DIR}/{name}"


def endpoint(inp: RenderInput) -> str:
    scheme = "https" if inp.spec.tls else "http"
    return f"{scheme}://{inp.name}.{inp.namespace}.svc:{inp.spec.service.port}"


def external_url(spec: RegistrySpec) -> str | None:
    if not spec.ingress:
        return None
    return f"{'https' if spec.ingress.tls_secret_name else 'http'}://{spec.ingress.host}"


# ----------------------------------------------------------------------------- builders

def _meta(inp: RenderInput, name: str, *, owned: bool = True, annotations: Mapping[str, str] | None = None
          ) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": inp.namespace, "labels": labels(inp.name)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owned and inp.uid:
        meta["ownerReferences"] = [{
            "apiVersion": API_VERSION, "kind": "Registry", "name": inp.name, "uid": inp.uid,
            "controller": True, "blockOwnerDeletion": True,
        }]
    return meta


def registry_config(inp: RenderInput) -> dict[str, Any]:
    """The server's config file (see `dockyard registry serve --config`)."""
    spec = inp.spec
    config: dict[str, Any] = {"addr": f"0.0.0.0:{PORT}", "root": DATA_DIR}
    if spec.auth:
        config["htpasswd"] = f"{AUTH_DIR}/htpasswd"
        config["anonymousPull"] = spec.auth.anonymous_pull
        if spec.auth.access is not None or spec.auth.groups:
            config["access"] = {"groups": {g: list(users) for g, users in spec.auth.groups.items()}}
            if spec.auth.access is not None:
                config["access"]["rules"] = [{k: v for k, v in dump(rule).items() if v} for rule in spec.auth.access]
        if spec.auth.token:
            config["token"] = {"keyFile": f"{SIGNING_DIR}/{SIGNING_KEY}", "service": f"{inp.name}.{inp.namespace}",
                               "lifetime": spec.auth.token.lifetime}
        if uses_service_accounts(spec):
            config["serviceAccounts"] = {"audience": SERVICE_ACCOUNT_AUDIENCE}
    if spec.read_only:
        config["readOnly"] = True
    if spec.tls:
        config["tls"] = {"cert": f"{TLS_DIR}/tls.crt", "key": f"{TLS_DIR}/tls.key"}
    if spec.garbage_collection:
        gc = spec.garbage_collection
        config["gc"] = {"schedule": gc.schedule, "deleteUntagged": gc.delete_untagged,
                        "gracePeriod": gc.grace_period}
    if spec.quotas:
        # Whole bytes, rounded down: a limit of 1.5 bytes admits one (and 0.5 admits nothing).
        config["quotas"] = [{"repositories": list(q.repositories), "limit": math.floor(quantity_value(q.limit))}
                            for q in spec.quotas]
    if inp.events_url:
        config["notify"] = {"url": inp.events_url.rstrip("/") + EVENTS_PATH,
                            "tokenFile": f"{EVENTS_DIR}/{EVENTS_TOKEN_KEY}",
                            "registry": {"namespace": inp.namespace, "name": inp.name}}
    if spec.storage.s3:
        config["storage"] = {"s3": s3_config(spec.storage.s3)}
    if spec.webhooks:
        config["source"] = source(inp)
        config["webhooks"] = [{"name": w.name, "url": w.url, "events": list(w.events),
                               "repositories": list(w.repositories),
                               "secretFile": f"{webhook_dir(w.name)}/{w.secret_ref.key}"} for w in spec.webhooks]
    return config


def s3_config(s3: S3Storage) -> dict[str, Any]:
    """`storage.s3` of the server's config: the bucket's coordinates and where the mounted Secrets are."""
    out: dict[str, Any] = {"bucket": s3.bucket, "forcePathStyle": s3.force_path_style, "insecure": s3.insecure,
                           "redirect": s3.redirect}
    for key, value in (("endpoint", s3.endpoint), ("region", s3.region), ("prefix", s3.prefix)):
        if value is not None:
            out[key] = value
    if s3.secret_ref:
        out["credentialsDir"] = S3_CREDENTIALS_DIR
    if s3.ca_secret_ref:
        out["caFile"] = f"{S3_CA_DIR}/{s3.ca_secret_ref.key}"
    return out


def service_account(inp: RenderInput) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(inp, inp.name),
            "automountServiceAccountToken": False}


def config_map(inp: RenderInput) -> dict[str, Any]:
    text = yaml.safe_dump(registry_config(inp), sort_keys=True)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(inp, config_name(inp.name)),
            "data": {"config.yaml": text}}


def checksum(inp: RenderInput) -> str:
    """Changes whenever the config or a referenced Secret's data changes, so pods roll.

    The events token is not part of it: the server re-reads its token file when it changes.
    """
    material = {
        "config": registry_config(inp),
        "secrets": {name: dict(sorted(inp.secrets.get(name, {}).items()))
                    for name in sorted(referenced_secrets(inp.spec))},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def persistent_volume_claim(inp: RenderInput) -> dict[str, Any] | None:
    pvc = inp.spec.storage.pvc
    if pvc is None:
        return None
    spec: dict[str, Any] = {
        "accessModes": list(pvc.access_modes),
        "resources": {"requests": {"storage": inp.claim_size or pvc.size}},
    }
    if pvc.storage_class_name is not None:
        spec["storageClassName"] = pvc.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(inp, claim_name(inp.name), owned=not pvc.retain), "spec": spec}


def restricted_pod() -> dict[str, Any]:
    """The Pod Security Standards' `restricted` level, as a non-root numeric user."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def restricted_container() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _probe(path: str, scheme: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "registry", "scheme": scheme},
            "periodSeconds": period, "timeoutSeconds": 5, "failureThreshold": failures}


def _strategy(spec: RegistrySpec) -> dict[str, Any]:
    if spec.storage.pvc is not None and not spec.storage.shared:
        return {"type": "Recreate"}  # RollingUpdate deadlocks on a ReadWriteOnce volume
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def _volumes(inp: RenderInput) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = inp.spec
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_name(inp.name)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108  the pod's own emptyDir
        {"name": "data", "mountPath": DATA_DIR},
    ]
    if spec.storage.pvc is not None:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": claim_name(inp.name)}})
    elif spec.storage.s3 is not None:
        volumes.append({"name": "data", "emptyDir": {"sizeLimit": S3_SCRATCH_LIMIT}})
    else:
        empty: dict[str, Any] = {}
        if spec.storage.empty_dir and spec.storage.empty_dir.size_limit:
            empty["sizeLimit"] = spec.storage.empty_dir.size_limit
        volumes.append({"name": "data", "emptyDir": empty})
    if spec.auth:
        ref = spec.auth.htpasswd_secret_ref
        volumes.append({"name": "auth", "secret": {
            "secretName": ref.name, "items": [{"key": ref.key, "path": "htpasswd"}]}})
        mounts.append({"name": "auth", "mountPath": AUTH_DIR, "readOnly": True})
    s3 = spec.storage.s3
    if s3 and s3.secret_ref:
        volumes.append({"name": "s3-credentials", "secret": {
            "secretName": s3.secret_ref.name, "items": [{"key": k, "path": k} for k in S3_CREDENTIAL_KEYS]}})
        mounts.append({"name": "s3-credentials", "mountPath": S3_CREDENTIALS_DIR, "readOnly": True})
    if s3 and s3.ca_secret_ref:
        ca = s3.ca_secret_ref
        volumes.append({"name": "s3-ca", "secret": {
            "secretName": ca.name, "items": [{"key": ca.key, "path": ca.key}]}})
        mounts.append({"name": "s3-ca", "mountPath": S3_CA_DIR, "readOnly": True})
    if spec.tls:
        volumes.append({"name": "tls", "secret": {"secretName": spec.tls.secret_name}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
    if spec.auth and spec.auth.token:
        volumes.append({"name": "signing-key", "secret": {
            "secretName": signing_secret_name(inp.name), "items": [{"key": SIGNING_KEY, "path": SIGNING_KEY}]}})
        mounts.append({"name": "signing-key", "mountPath": SIGNING_DIR, "readOnly": True})
    if inp.events_url:
        # Optional: serving images never waits for the notification token; while the Secret
        # is missing the server drops its events with a log line.
        volumes.append({"name": "events", "secret": {
            "secretName": events_secret_name(inp.name), "optional": True,
            "items": [{"key": EVENTS_TOKEN_KEY, "path": EVENTS_TOKEN_KEY}]}})
        mounts.append({"name": "events", "mountPath": EVENTS_DIR, "readOnly": True})
    for i, webhook in enumerate(spec.webhooks or ()):
        key_ref = webhook.secret_ref
        volumes.append({"name": f"webhook-{i}", "secret": {
            "secretName": key_ref.name, "items": [{"key": key_ref.key, "path": key_ref.key}]}})
        mounts.append({"name": f"webhook-{i}", "mountPath": webhook_dir(webhook.name), "readOnly": True})
    return volumes, mounts


def deployment(inp: RenderInput) -> dict[str, Any]:
    spec = inp.spec
    scheme = "HTTPS" if spec.tls else "HTTP"
    volumes, mounts = _volumes(inp)
    container: dict[str, Any] = {
        "name": "registry",
        "image": inp.image,
        "args": ["registry", "serve", "--config", CONFIG_FILE],
        "ports": [{"name": "registry", "containerPort": PORT, "protocol": "TCP"}],
        "livenessProbe": _probe("/healthz", scheme, 10, 6),
        "readinessProbe": _probe("/readyz", scheme, 5, 3),
        "securityContext": restricted_container(),
        "volumeMounts": mounts,
    }
    if spec.resources:
        container["resources"] = spec.resources
    pod: dict[str, Any] = {
        "serviceAccountName": inp.name,
        # Its own token only when it must ask the API server to review ServiceAccount tokens.
        "automountServiceAccountToken": uses_service_accounts(spec),
        "securityContext": restricted_pod(),
        "containers": [container],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = list(spec.tolerations)
    if spec.affinity:
        pod["affinity"] = spec.affinity
    if spec.topology_spread_constraints:
        pod["topologySpreadConstraints"] = [
            {"labelSelector": {"matchLabels": selector_labels(inp.name)}, **c}
            for c in spec.topology_spread_constraints]
    if spec.priority_class_name:
        pod["priorityClassName"] = spec.priority_class_name
    annotations = {**spec.pod_annotations, CHECKSUM_ANNOTATION: checksum(inp)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(inp, inp.name),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(inp.name)},
            "strategy": _strategy(spec),
            "template": {"metadata": {"labels": labels(inp.name), "annotations": annotations}, "spec": pod},
        },
    }


def service(inp: RenderInput) -> dict[str, Any]:
    svc = inp.spec.service
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(inp, inp.name, annotations=svc.annotations),
        "spec": {
            "type": svc.type,
            "selector": selector_labels(inp.name),
            "ports": [{"name": "registry", "port": svc.port, "targetPort": "registry", "protocol": "TCP"}],
        },
    }


def pod_disruption_budget(inp: RenderInput) -> dict[str, Any] | None:
    pdb = inp.spec.pod_disruption_budget
    if inp.spec.replicas <= 1 or not pdb.enabled:
        return None
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(inp, inp.name),
            "spec": {"maxUnavailable": pdb.max_unavailable,
                     "selector": {"matchLabels": selector_labels(inp.name)}}}


def ingress(inp: RenderInput) -> dict[str, Any] | None:
    ing = inp.spec.ingress
    if ing is None:
        return None
    annotations = dict(ing.annotations)
    if ing.class_name and "nginx" in ing.class_name:
        # Image layers are large; nginx's default 1m body limit breaks pushes.
        annotations.setdefault("nginx.ingress.kubernetes.io/proxy-body-size", "0")
        if inp.spec.tls:
            annotations.setdefault("nginx.ingress.kubernetes.io/backend-protocol", "HTTPS")
    spec: dict[str, Any] = {"rules": [{"host": ing.host, "http": {"paths": [{
        "path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": inp.name, "port": {"name": "registry"}}},
    }]}}]}
    if ing.class_name:
        spec["ingressClassName"] = ing.class_name
    if ing.tls_secret_name:
        spec["tls"] = [{"hosts": [ing.host], "secretName": ing.tls_secret_name}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": _meta(inp, inp.name, annotations=annotations), "spec": spec}


def events_secret(inp: RenderInput, token: str) -> dict[str, Any]:
    """The Secret holding the Registry's events token; created once by the reconcile, never re-applied."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(inp, events_secret_name(inp.name)),
            "type": "Opaque", "data": {EVENTS_TOKEN_KEY: base64.b64encode(token.encode()).decode()}}


def signing_secret(inp: RenderInput, key: str) -> dict[str, Any]:
    """The Secret holding the key that signs bearer tokens; created once by the reconcile, never re-applied."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(inp, signing_secret_name(inp.name)),
            "type": "Opaque", "data": {SIGNING_KEY: base64.b64encode(key.encode()).decode()}}


OPTIONAL_KINDS = (("policy/v1", "PodDisruptionBudget"), ("networking.k8s.io/v1", "Ingress"))
"""Children that exist only for some specs; the operator deletes them when no longer rendered."""


def render_registry(inp: RenderInput) -> list[dict[str, Any]]:
    """Every object the operator applies for this Registry, in apply order."""
    objects = [
        service_account(inp),
        config_map(inp),
        persistent_volume_claim(inp),
        deployment(inp),
        service(inp),
        pod_disruption_budget(inp),
        ingress(inp),
    ]
    return [obj for obj in objects if obj is not None]
