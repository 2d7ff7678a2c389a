"""The `Registry` kind (dockyard.dev/v1alpha1): spec and status models.

Field names are the public contract (see docs/architecture.md, "Layers"); `make crds`
generates the CRD from these classes, so a field exists here or nowhere.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from dockyard.api import cron_grammar
from dockyard.api.patterns import (
    PATTERNS_MAX_ITEMS,
    REPOSITORY_GLOB_MAX_LENGTH,
    S3_BUCKET_PATTERN,
    S3_ENDPOINT_PATTERN,
    S3_PREFIX_MAX_LENGTH,
    S3_PREFIX_PATTERN,
    URL_MAX_LENGTH,
    URL_PATTERN,
    glob_error,
)
from dockyard.api.schema import (
    ANNOTATIONS,
    CRON_BACKWARDS_PATTERN,
    CRON_MAX_LENGTH,
    CRON_PATTERN,
    DNS_LABEL,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN,
    DURATION_MAX_LENGTH,
    DURATION_PATTERN,
    NAME_MAX_LENGTH,
    Int64,
    Model,
    Quantity,
    Raw,
    Rule,
    cel_string,
    meta,
    pattern_matches,
)

AccessMode = Literal["ReadWriteOnce", "ReadWriteOncePod", "ReadWriteMany"]

_UNITS: dict[str, Fraction] = {
    "": Fraction(1), "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 10**3),
    "k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12),
    "P": Fraction(10**15), "E": Fraction(10**18),
    "Ki": Fraction(2**10), "Mi": Fraction(2**20), "Gi": Fraction(2**30), "Ti": Fraction(2**40),
    "Pi": Fraction(2**50), "Ei": Fraction(2**60),
}
_QUANTITY = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|([KMGTPE]i|[numkMGTPE])?)")
_MAX_QUANTITY = Fraction(2**63 - 1)


def quantity_value(q: str) -> Fraction:
    """The exact value of a quantity, as the API server's `quantity()` computes it.

    Exact arithmetic, so `1100M` equals `1.1G`; like Kubernetes, magnitudes are rounded up
    to a multiple of 1n and capped at 2^63-1.
    """
    match = _QUANTITY.fullmatch(q)
    if match is None:
        raise ValueError(f"{q!r} is not a quantity")
    number, exponent, suffix = match.groups()
    if exponent:
        # Beyond len(q) + 40 the result is capped or rounds up to 1n whatever the digits are;
        # clamping keeps `1e999999999` from costing a billion-digit power.
        bound = len(q) + 40
        digits = exponent[1:].lstrip("+-").lstrip("0") or "0"
        power = min(int(digits), bound) if len(digits) <= 6 else bound
        scale = Fraction(10) ** (-power if "-" in exponent else power)
    else:
        scale = _UNITS[suffix or ""]
    value = Fraction(number) * scale
    magnitude = min(Fraction(math.ceil(abs(value) * 10**9), 10**9), _MAX_QUANTITY)
    return magnitude if value >= 0 else -magnitude


@dataclass(frozen=True)
class PVCStorage(Model):
    DOC = "Filesystem storage on a PersistentVolumeClaim named <registry>-data."
    RULES = (
        Rule(
            cel="has(self.storageClassName) == has(oldSelf.storageClassName) && "
                "(!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
            message="storage.pvc.storageClassName is immutable",
            check=lambda new, old: new.storage_class_name == old.storage_class_name,
            transition=True,
            field_path=".storageClassName",
        ),
        Rule(
            cel="quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
            message="storage.pvc.size cannot shrink (volumes can only be expanded)",
            check=lambda new, old: quantity_value(new.size) >= quantity_value(old.size),
            transition=True,
            field_path=".size",
        ),
    )
    size: Quantity = field(metadata=meta("Requested capacity; growing it expands the PVC."))
    storage_class_name: str | None = field(
        default=None, metadata=meta("StorageClass of the claim (immutable); cluster default when unset.",
                                    max_length=NAME_MAX_LENGTH))
    access_modes: tuple[AccessMode, ...] = field(
        default=("ReadWriteOnce",), metadata=meta("Access modes of the claim.", min_items=1, max_items=3))
    retain: bool = field(
        default=True,
        metadata=meta("Keep the PVC (and the images) when the Registry is deleted; a new Registry "
                      "of the same name re-attaches it. When false the PVC is owned and deleted."))


@dataclass(frozen=True)
class EmptyDirStorage(Model):
    DOC = "Ephemeral storage that lives and dies with each pod (caches, tests)."
    size_limit: Quantity | None = field(default=None, metadata=meta("Size limit of the emptyDir volume."))


S3_REGION_PATTERN = r"^[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$"
"""AWS regions (`eu-central-1`) and what S3-compatible stores call theirs (`garage`, `auto`, `default`)."""


@dataclass(frozen=True)
class SecretRef(Model):
    name: str = field(metadata=meta("Secret name, in the Registry's namespace.", **DNS_SUBDOMAIN))


@dataclass(frozen=True)
class CASecretRef(Model):
    name: str = field(metadata=meta("Secret name, in the Registry's namespace.", **DNS_SUBDOMAIN))
    key: str = field(default="ca.crt", metadata=meta("Key in the Secret.", max_length=NAME_MAX_LENGTH))


@dataclass(frozen=True)
class S3Storage(Model):
    DOC = ("Blobs and manifests in an S3 bucket (AWS or an S3-compatible store): every replica serves "
           "the same content, so replicas > 1 and autoscaling work, and an upload may hit any replica.")
    RULES = (
        Rule(
            cel="!(self.insecure && has(self.caSecretRef))",
            message="storage.s3.insecure and storage.s3.caSecretRef exclude each other: insecure turns "
                    "certificate verification off, caSecretRef says what to verify with",
            check=lambda s: not (s.insecure and s.ca_secret_ref is not None),
            field_path=".insecure",
        ),
    )
    bucket: str = field(metadata=meta("The bucket, which must exist; give each registry a bucket or a prefix "
                                      "of its own.", pattern=S3_BUCKET_PATTERN, max_length=63))
    endpoint: str | None = field(default=None, metadata=meta(
        "The store's http:// or https:// URL (MinIO, Ceph, SeaweedFS, ...); AWS S3 when unset.",
        pattern=S3_ENDPOINT_PATTERN, max_length=URL_MAX_LENGTH))
    region: str | None = field(default=None, metadata=meta(
        "The bucket's region; us-east-1 when unset.", pattern=S3_REGION_PATTERN, max_length=63))
    prefix: str | None = field(default=None, metadata=meta(
        "Keys start with this prefix and a slash, so registries can share a bucket; no leading or trailing "
        "slash.", pattern=S3_PREFIX_PATTERN, max_length=S3_PREFIX_MAX_LENGTH))
    secret_ref: SecretRef | None = field(default=None, metadata=meta(
        "Secret with the keys accessKeyId and secretAccessKey; when unset the pods use the AWS default "
        "credential chain (environment, web identity such as IRSA, instance profile)."))
    force_path_style: bool = field(default=False, metadata=meta(
        "Address the bucket in the path (ENDPOINT/BUCKET/KEY) instead of the host name (BUCKET.ENDPOINT); "
        "most self-hosted stores need it."))
    ca_secret_ref: CASecretRef | None = field(default=None, metadata=meta(
        "Secret key holding the CA bundle that verifies the endpoint's certificate; the system's CAs when "
        "unset."))
    insecure: bool = field(default=False, metadata=meta(
        "Do not verify the endpoint's TLS certificate (test setups only)."))
    redirect: bool = field(default=False, metadata=meta(
        "Answer blob downloads with a 307 to a presigned URL of the object, so clients fetch from the store "
        "directly; the store must be reachable from the clients."))


@dataclass(frozen=True)
class Storage(Model):
    DOC = "Where images are stored: exactly one of pvc, emptyDir or s3."
    RULES = (
        Rule(
            cel="(has(self.pvc) ? 1 : 0) + (has(self.emptyDir) ? 1 : 0) + (has(self.s3) ? 1 : 0) == 1",
            message="exactly one of storage.pvc, storage.emptyDir or storage.s3 must be set",
            check=lambda s: (s.pvc is not None) + (s.empty_dir is not None) + (s.s3 is not None) == 1,
        ),
    )
    pvc: PVCStorage | None = field(default=None, metadata=meta("Filesystem on a PersistentVolumeClaim."))
    empty_dir: EmptyDirStorage | None = field(default=None, metadata=meta("Ephemeral emptyDir volume."))
    s3: S3Storage | None = field(default=None, metadata=meta(
        "An S3 bucket (AWS or an S3-compatible store), which every replica serves: replicas > 1 and "
        "autoscaling work."))

    @property
    def shared(self) -> bool:
        """Whether several pods can serve the same content from this storage."""
        return self.s3 is not None or (self.pvc is not None and "ReadWriteMany" in self.pvc.access_modes)


@dataclass(frozen=True)
class SecretKeyRef(Model):
    name: str = field(metadata=meta("Secret name, in the Registry's namespace.", **DNS_SUBDOMAIN))
    key: str = field(default="htpasswd", metadata=meta("Key in the Secret.", max_length=NAME_MAX_LENGTH))


Action = Literal["pull", "push", "delete"]
SERVICE_ACCOUNT_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
RULES_MAX_ITEMS = 128
SUBJECTS_MAX_ITEMS = 64


@dataclass(frozen=True)
class AccessRule(Model):
    DOC = ("Who may do what on which repositories. Rules are read in order and the first whose "
           "repositories and subjects both match decides; no matching rule denies.")
    RULES = (
        Rule(
            cel="size(self.users) + size(self.groups) + size(self.serviceAccounts) > 0",
            message="a rule needs at least one subject: users, groups or serviceAccounts",
            check=lambda r: bool(r.users or r.groups or r.service_accounts),
        ),
    )
    repositories: tuple[str, ...] = field(metadata=meta(
        "Repository globs: `*` stays within one path segment, `**` crosses segments.", min_items=1,
        max_items=PATTERNS_MAX_ITEMS, item_max_length=REPOSITORY_GLOB_MAX_LENGTH, item_check=glob_error))
    actions: tuple[Action, ...] = field(metadata=meta("What the rule allows: pull, push, delete.", min_items=1,
                                                      max_items=3))
    users: tuple[str, ...] = field(default=(), metadata=meta(
        "htpasswd users; `*` is every authenticated user (with anonymousPull, anonymous clients too).",
        max_items=SUBJECTS_MAX_ITEMS, item_max_length=NAME_MAX_LENGTH))
    groups: tuple[str, ...] = field(default=(), metadata=meta(
        "Groups defined in auth.groups.", max_items=16, item_max_length=63))
    service_accounts: tuple[str, ...] = field(default=(), metadata=meta(
        "Kubernetes ServiceAccounts as NAMESPACE/NAME; a pod presents its projected token (audience "
        "dockyard) as the password.", max_items=SUBJECTS_MAX_ITEMS, item_max_length=317,
        item_pattern=SERVICE_ACCOUNT_PATTERN))


@dataclass(frozen=True)
class TokenAuth(Model):
    DOC = ("Bearer token authentication (the distribution token flow): the registry challenges with "
           "Bearer and issues short-lived signed tokens at /token; basic auth keeps working.")
    lifetime: str = field(default="5m", metadata=meta("How long an issued token is valid.",
                                                      pattern=DURATION_PATTERN, max_length=DURATION_MAX_LENGTH))


@dataclass(frozen=True)
class Auth(Model):
    DOC = "HTTP basic authentication from an htpasswd file (bcrypt) kept in a Secret, and access rules."
    RULES = (
        Rule(
            cel="!has(self.groups) || self.groups.all(g, g.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",
            message="group names are lowercase DNS labels",
            check=lambda a: all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", g) for g in a.groups),
            field_path=".groups",
        ),
        Rule(
            cel="!has(self.access) || self.access.all(r, !has(r.groups) || "
                "r.groups.all(g, has(self.groups) && g in self.groups))",
            message="every group an access rule names must be defined in auth.groups",
            check=lambda a: all(g in a.groups for r in a.access or () for g in r.groups),
            field_path=".access",
        ),
    )
    htpasswd_secret_ref: SecretKeyRef = field(metadata=meta("Secret key holding the htpasswd file."))
    anonymous_pull: bool = field(default=False, metadata=meta(
        "Allow pulls without credentials: of every repository without access rules, else of what rules "
        "grant to users: ['*']."))
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict, metadata=meta(
        "Named groups of htpasswd users, for access rules.", max_properties=64, item_max_length=NAME_MAX_LENGTH))
    access: tuple[AccessRule, ...] | None = field(default=None, metadata=meta(
        "Ordered access rules; without them every authenticated user may pull, push and delete everything.",
        min_items=1, max_items=RULES_MAX_ITEMS))
    token: TokenAuth | None = field(default=None, metadata=meta("Bearer token authentication; off when unset."))


@dataclass(frozen=True)
class TLS(Model):
    DOC = "Serve HTTPS inside the cluster."
    secret_name: str = field(
        metadata=meta("A kubernetes.io/tls Secret (tls.crt, tls.key).", **DNS_SUBDOMAIN))


@dataclass(frozen=True)
class Service(Model):
    DOC = "The Service in front of the registry pods."
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = field(
        default="ClusterIP", metadata=meta("Service type."))
    port: int = field(default=5000, metadata=meta("Service port.", minimum=1, maximum=65535))
    annotations: dict[str, str] = field(default_factory=dict, metadata=meta("Service annotations.", **ANNOTATIONS))


@dataclass(frozen=True)
class Ingress(Model):
    DOC = "An Ingress exposing the registry outside the cluster."
    host: str = field(metadata=meta("Public host name.", **DNS_SUBDOMAIN))
    class_name: str | None = field(default=None, metadata=meta("IngressClass name.", max_length=NAME_MAX_LENGTH))
    annotations: dict[str, str] = field(default_factory=dict, metadata=meta("Ingress annotations.", **ANNOTATIONS))
    tls_secret_name: str | None = field(
        default=None, metadata=meta("TLS Secret for the host; the URL is https when set.", **DNS_SUBDOMAIN))


@dataclass(frozen=True)
class PodDisruptionBudget(Model):
    DOC = "The PodDisruptionBudget created when replicas > 1."
    enabled: bool = field(default=True, metadata=meta("Create the PDB when replicas > 1."))
    max_unavailable: int = field(default=1, metadata=meta("Pods that may be down at once.", minimum=1))


@dataclass(frozen=True)
class GarbageCollection(Model):
    DOC = "Online garbage collection: unreferenced blobs are removed while the registry keeps serving."
    RULES = (
        Rule(
            cel=f"self.schedule.matches({cel_string(CRON_PATTERN)})",
            message=("garbageCollection.schedule must be a cron expression with five fields (minute 0-59, "
                     "hour 0-23, day of month 1-31, month 1-12 or JAN-DEC, day of week 0-6 or SUN-SAT) "
                     "or a macro such as @daily, e.g. '0 3 * * *'"),
            check=lambda g: pattern_matches(CRON_PATTERN, g.schedule),
            field_path=".schedule",
        ),
        Rule(
            cel=f"!self.schedule.matches({cel_string(CRON_BACKWARDS_PATTERN)})",
            message="garbageCollection.schedule has a range that runs backwards, e.g. '20-10' instead of '10-20'",
            check=lambda g: not pattern_matches(CRON_BACKWARDS_PATTERN, g.schedule),
            field_path=".schedule",
        ),
    )
    schedule: str = field(
        default="0 3 * * *", metadata=meta("When to collect (cron, UTC).", max_length=CRON_MAX_LENGTH,
                      check=cron_grammar.schedule_error))
    delete_untagged: bool = field(
        default=False, metadata=meta("Also delete manifests no tag, index or live subject refers to."))
    grace_period: str = field(
        default="1h", metadata=meta("How long an uploaded blob waits for its manifest (an upload or a "
                                    "HEAD restarts it) and an untagged manifest lives with deleteUntagged. "
                                    "Whatever the value, nothing an acknowledged push references is "
                                    "collected.", pattern=DURATION_PATTERN,
                                    max_length=DURATION_MAX_LENGTH))


@dataclass(frozen=True)
class Quota(Model):
    DOC = ("A storage limit on a set of repositories: a push that would exceed it is refused before its "
           "bytes are committed. A blob shared by several repositories of the set counts once.")
    RULES = (
        Rule(
            cel="quantity(self.limit).isGreaterThan(quantity('0'))",
            message="a quota's limit must be greater than zero",
            check=lambda q: quantity_value(q.limit) > 0,
            field_path=".limit",
        ),
    )
    repositories: tuple[str, ...] = field(metadata=meta(
        "Repository globs: `*` stays within one path segment, `**` crosses segments.", min_items=1,
        max_items=PATTERNS_MAX_ITEMS, item_max_length=REPOSITORY_GLOB_MAX_LENGTH, item_check=glob_error))
    limit: Quantity = field(metadata=meta("Bytes the repositories may hold together, e.g. 50Gi."))


WebhookEvent = Literal["push", "delete", "pull"]


@dataclass(frozen=True)
class WebhookSecretRef(Model):
    name: str = field(metadata=meta("Secret name, in the Registry's namespace.", **DNS_SUBDOMAIN))
    key: str = field(default="secret", metadata=meta("Key in the Secret.", max_length=NAME_MAX_LENGTH))


@dataclass(frozen=True)
class Webhook(Model):
    DOC = ("Where to POST a CloudEvent after each matching event, signed with HMAC-SHA256 of the body "
           "(X-Dockyard-Signature: sha256=HEX) and retried with backoff for at least 10 minutes.")
    name: str = field(metadata=meta("Name, unique in the Registry (shown in metrics and Events).",
                                    **DNS_LABEL))
    url: str = field(metadata=meta("The receiver's http:// or https:// URL.", pattern=URL_PATTERN,
                                   max_length=URL_MAX_LENGTH))
    events: tuple[WebhookEvent, ...] = field(metadata=meta("Which events: push, delete, pull.", min_items=1,
                                                            max_items=3))
    secret_ref: WebhookSecretRef = field(metadata=meta("Secret key holding the HMAC signing key."))
    repositories: tuple[str, ...] = field(default=("**",), metadata=meta(
        "Repository globs the webhook hears about.", min_items=1, max_items=PATTERNS_MAX_ITEMS,
        item_max_length=REPOSITORY_GLOB_MAX_LENGTH, item_check=glob_error))


@dataclass(frozen=True)
class RegistrySpec(Model):
    DOC = "The desired state of a registry."
    RULES = (
        Rule(
            cel="!has(self.webhooks) || self.webhooks.all(w, self.webhooks.exists_one(x, x.name == w.name))",
            message="webhook names must be unique",
            check=lambda s: len({w.name for w in s.webhooks or ()}) == len(s.webhooks or ()),
            field_path=".webhooks",
        ),
        Rule(
            cel="self.replicas <= 1 || has(self.storage.s3) || (has(self.storage.pvc) && "
                "self.storage.pvc.accessModes.exists(m, m == 'ReadWriteMany'))",
            message="replicas > 1 needs shared storage: storage.s3, or storage.pvc with accessModes "
                    "[ReadWriteMany]",
            check=lambda s: s.replicas <= 1 or s.storage.shared,
            field_path=".replicas",
        ),
    )
    storage: Storage = field(metadata=meta("Where images are stored."))
    replicas: int = field(default=1, metadata=meta("Registry pods (also the scale subresource).", minimum=0))
    image: str | None = field(
        default=None, metadata=meta("Registry image; defaults to the operator's own image.", max_length=1024))
    auth: Auth | None = field(default=None, metadata=meta("Basic authentication."))
    tls: TLS | None = field(default=None, metadata=meta("HTTPS with a kubernetes.io/tls Secret."))
    service: Service = field(default_factory=Service, metadata=meta("The Service."))
    ingress: Ingress | None = field(default=None, metadata=meta("External exposure."))
    garbage_collection: GarbageCollection | None = field(
        default=None, metadata=meta("Online garbage collection; off when unset."))
    read_only: bool = field(
        default=False, metadata=meta("Maintenance mode: pulls work, pushes and deletes are refused."))
    resources: Raw | None = field(default=None, metadata=meta("Container resources."))
    node_selector: dict[str, str] = field(
        default_factory=dict, metadata=meta("Pod node selector.", max_properties=64, item_max_length=63))
    tolerations: tuple[Raw, ...] = field(default=(), metadata=meta("Pod tolerations.", max_items=64))
    affinity: Raw | None = field(default=None, metadata=meta("Pod affinity."))
    topology_spread_constraints: tuple[Raw, ...] = field(
        default=(), metadata=meta("Pod topology spread constraints.", max_items=32))
    priority_class_name: str | None = field(
        default=None, metadata=meta("Pod priority class.", max_length=NAME_MAX_LENGTH))
    pod_annotations: dict[str, str] = field(
        default_factory=dict, metadata=meta("Extra pod annotations.", **ANNOTATIONS))
    pod_disruption_budget: PodDisruptionBudget = field(
        default_factory=PodDisruptionBudget, metadata=meta("Disruption budget for replicas > 1."))
    quotas: tuple[Quota, ...] | None = field(default=None, metadata=meta(
        "Storage limits per set of repositories.", min_items=1, max_items=64))
    webhooks: tuple[Webhook, ...] | None = field(default=None, metadata=meta(
        "Receivers of push, delete and pull events.", min_items=1, max_items=16))


@dataclass(frozen=True)
class Condition(Model):
    type: str = field(metadata=meta("Ready, Reconciling or Stalled."))
    status: Literal["True", "False", "Unknown"] = field(metadata=meta("Condition status."))
    reason: str = field(metadata=meta("CamelCase reason."))
    message: str = field(metadata=meta("Human-readable message."))
    last_transition_time: str = field(metadata=meta("When the status last changed."))
    observed_generation: int | None = field(default=None, metadata=meta("Generation the condition is for."))


@dataclass(frozen=True)
class StorageStatus(Model):
    claim_name: str | None = field(default=None, metadata=meta("PVC name."))
    capacity: str | None = field(default=None, metadata=meta("Capacity reported by the PVC."))
    used: str | None = field(default=None, metadata=meta(
        "Bytes used on the storage's filesystem (for s3: the bytes the registry's objects hold), as a quantity."))
    used_bytes: Int64 | None = field(default=None, metadata=meta("The same, in bytes."))
    capacity_bytes: Int64 | None = field(default=None, metadata=meta("Size of the storage's filesystem, in bytes."))
    full: bool | None = field(default=None, metadata=meta("Whether the last write hit a full disk."))
    error: str | None = field(default=None, metadata=meta(
        "Why the registry cannot use its storage, as it last reported (say, a bucket it cannot reach); "
        "unset while it can."))


@dataclass(frozen=True)
class QuotaStatus(Model):
    repositories: tuple[str, ...] = field(metadata=meta("The quota's repository globs."))
    limit: str = field(metadata=meta("The quota's limit."))
    used: str = field(metadata=meta("Bytes the repositories hold now, as a quantity."))
    used_bytes: Int64 | None = field(default=None, metadata=meta("The same, in bytes."))
    limit_bytes: Int64 | None = field(default=None, metadata=meta("The limit, in bytes."))


@dataclass(frozen=True)
class RegistryStatus(Model):
    observed_generation: int | None = field(default=None, metadata=meta("Last generation handled."))
    conditions: tuple[Condition, ...] = field(default=(), metadata=meta("kstatus conditions."))
    replicas: int | None = field(default=None, metadata=meta("Pods of the current Deployment."))
    ready_replicas: int | None = field(default=None, metadata=meta("Pods ready to serve."))
    selector: str | None = field(default=None, metadata=meta("Label selector of the pods (scale)."))
    endpoint: str | None = field(default=None, metadata=meta("In-cluster URL."))
    url: str | None = field(default=None, metadata=meta("External URL (ingress)."))
    storage: StorageStatus | None = field(default=None, metadata=meta("Storage details."))
    quotas: tuple[QuotaStatus, ...] | None = field(default=None, metadata=meta("Usage of each quota, in spec order."))


NAME_PATTERN = DNS_LABEL_PATTERN
