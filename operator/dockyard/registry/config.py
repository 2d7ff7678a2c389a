"""The server's configuration: the operator's ConfigMap (`config.yaml`) merged with flags.

Every key is optional and flags win. Unknown keys and bad values raise `ConfigError`
naming the key, which the command line turns into a one-line error and exit code 2.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from dockyard import cron


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


@dataclass(frozen=True)
class GCConfig:
    interval: float = 24 * 3600.0
    delete_untagged: bool = False
    grace_period: float = 3600.0
    schedule: str | None = None
    """A five-field cron schedule (UTC); when set it decides the runs instead of `interval`."""

    def next_delay(self, now: datetime.datetime) -> float | None:
        """Seconds until the next collection; None when the schedule never fires."""
        if self.schedule is None:
            return self.interval
        upcoming = cron.next_time(self.schedule, now)
        return None if upcoming is None else max(0.0, (upcoming - now).total_seconds())


@dataclass(frozen=True)
class DeliveryConfig:
    """How one destination's events are queued and retried (see `registry.delivery`)."""

    timeout: float = 5.0
    """One POST, connection included."""
    queue_size: int = 1000
    """Events waiting for this destination; beyond it the oldest waiting event is dropped."""
    retry_initial: float = 1.0
    """The first retry's delay; each further one doubles it, up to `retry_max`, with jitter."""
    retry_max: float = 60.0
    retry_for: float = 600.0
    """An event is retried until at least this long after it happened, then dropped."""


@dataclass(frozen=True)
class NotifyConfig:
    """Where to post an event after each tag push (see `registry.notify`)."""

    url: str
    token_file: Path
    namespace: str
    name: str
    delivery: DeliveryConfig = DeliveryConfig()


WEBHOOK_EVENTS = ("push", "delete", "pull")


@dataclass(frozen=True)
class WebhookConfig:
    """`webhooks[]`: where to post CloudEvents of pushes, deletes and pulls (see `registry.webhooks`)."""

    name: str
    url: str
    events: frozenset[str]
    repositories: tuple[str, ...]
    secret_file: Path
    delivery: DeliveryConfig = DeliveryConfig()


@dataclass(frozen=True)
class HTTPLimits:
    """How long and how many connections a client may hold (`http` in the config file).

    Without them a client that opens connections and never finishes a request holds each one
    forever; enough of them exhaust the process's file descriptors.
    """

    header_timeout: float = 30.0
    """From a request's first byte to the end of its headers."""
    idle_timeout: float = 120.0
    """A keep-alive connection with no request in progress (also: a new connection that sends nothing)."""
    body_timeout: float = 60.0
    """A request body that sends nothing for this long (a stalled upload) is closed."""
    max_connections: int = 1024
    """Beyond this, new connections are closed as soon as they are accepted."""


@dataclass(frozen=True)
class AccessConfig:
    """`spec.auth.access` and `spec.auth.groups` as the operator renders them (see registry.access)."""

    rules: tuple[dict[str, Any], ...] | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenConfig:
    """Bearer token authentication (see registry.tokens)."""

    key_file: Path
    service: str
    lifetime: float = 300.0


@dataclass(frozen=True)
class ServiceAccountConfig:
    """Verify ServiceAccount tokens with a TokenReview; in a pod every field has its in-cluster default."""

    audience: str = "dockyard"
    server: str | None = None
    token_file: Path = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    ca_file: Path | None = Path("/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")


@dataclass(frozen=True)
class QuotaConfig:
    """One entry of `quotas`: the repositories it covers (globs) and the bytes they may hold together."""

    repositories: tuple[str, ...]
    limit: int


@dataclass(frozen=True)
class S3Config:
    """`storage.s3`: blobs and manifests in an S3 bucket instead of under `root` (which then holds temp
    files only)."""

    bucket: str
    endpoint: str | None = None
    """The store's URL; AWS S3 when None."""
    region: str = "us-east-1"
    prefix: str = ""
    """Keys start with `prefix/` when set; never a leading or trailing slash."""
    force_path_style: bool = False
    insecure: bool = False
    """Do not verify the endpoint's TLS certificate."""
    ca_file: Path | None = None
    """A CA bundle to verify the endpoint with, instead of the system's."""
    credentials_dir: Path | None = None
    """A directory with the files `accessKeyId` and `secretAccessKey`; the AWS default credential chain
    (environment, web identity, instance profile) when None."""
    redirect: bool = False
    """Answer blob GETs with a 307 to a presigned URL of the object."""


@dataclass(frozen=True)
class ServeConfig:
    host: str = "0.0.0.0"  # noqa: S104  in a pod: reachable through its Service; `--addr` narrows it
    port: int = 5000
    root: Path = Path("/var/lib/registry")
    htpasswd: Path | None = None
    anonymous_pull: bool = False
    read_only: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    gc: GCConfig | None = None
    notify: NotifyConfig | None = None
    http: HTTPLimits = HTTPLimits()
    access: AccessConfig = field(default_factory=AccessConfig)
    token: TokenConfig | None = None
    service_accounts: ServiceAccountConfig | None = None
    quotas: tuple[QuotaConfig, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()
    source: str | None = None
    """The CloudEvents `source` of the registry's events; see `registry.webhooks.event_source`."""
    s3: S3Config | None = None
    """Object storage; the filesystem under `root` when None."""


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_config_duration(value: Any, key: str) -> float:
    """`90s`, `30m`, `1h30m`, `24h`, `7d` or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like 1h or 30m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text, pos, seconds = value.strip(), 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(text) or pos == 0:
            raise ConfigError(f"{key}: invalid duration {value!r} (examples: 90s, 30m, 1h30m, 24h)")
    else:
        raise ConfigError(f"{key}: expected a duration like 1h or 30m, got {value!r}")
    if seconds < 0:
        raise ConfigError(f"{key}: duration must not be negative")
    return seconds


def parse_addr(value: Any, key: str = "addr") -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{key}: expected HOST:PORT, got {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: invalid port in {value!r}")
    return host or "0.0.0.0", int(port)  # noqa: S104  an empty host (":5000") means every interface


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _path(value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a file path, got {value!r}")
    return Path(value)


def _mapping(value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    for k in value:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}: unknown key (known: {', '.join(sorted(allowed))})")
    return value


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


DELIVERY_KEYS = {"timeout", "queueSize", "retryInitial", "retryMax", "retryFor"}


def parse_delivery(doc: dict[str, Any], key: str) -> DeliveryConfig:
    """The delivery keys of `notify` or of one webhook; the others are the caller's."""
    cfg = DeliveryConfig()
    if "timeout" in doc:
        cfg = replace(cfg, timeout=positive_duration(doc["timeout"], f"{key}.timeout"))
    if "queueSize" in doc:
        size = doc["queueSize"]
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"{key}.queueSize: expected a positive integer, got {size!r}")
        cfg = replace(cfg, queue_size=size)
    if "retryInitial" in doc:
        cfg = replace(cfg, retry_initial=positive_duration(doc["retryInitial"], f"{key}.retryInitial"))
    if "retryMax" in doc:
        cfg = replace(cfg, retry_max=positive_duration(doc["retryMax"], f"{key}.retryMax"))
    if "retryFor" in doc:
        cfg = replace(cfg, retry_for=parse_config_duration(doc["retryFor"], f"{key}.retryFor"))
    if cfg.retry_max < cfg.retry_initial:
        raise ConfigError(f"{key}.retryMax: must not be less than retryInitial")
    return cfg


def _url(value: Any, key: str) -> str:
    url = _string(value, key)
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep or not rest.split("/")[0]:
        raise ConfigError(f"{key}: expected an http:// or https:// URL, got {url!r}")
    return url


def parse_notify(doc: Any) -> NotifyConfig:
    notify = _mapping(doc, "notify", {"url", "tokenFile", "registry", *DELIVERY_KEYS})
    for key in ("url", "tokenFile", "registry"):
        if key not in notify:
            raise ConfigError(f"notify.{key}: is required")
    url = _url(notify["url"], "notify.url")
    registry = _mapping(notify["registry"], "notify.registry", {"namespace", "name"})
    for key in ("namespace", "name"):
        if key not in registry:
            raise ConfigError(f"notify.registry.{key}: is required")
    cfg = NotifyConfig(url=url, token_file=_path(notify["tokenFile"], "notify.tokenFile"),
                       namespace=_string(registry["namespace"], "notify.registry.namespace"),
                       name=_string(registry["name"], "notify.registry.name"),
                       delivery=parse_delivery(notify, "notify"))
    return cfg


_WEBHOOK_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def parse_webhooks(doc: Any) -> tuple[WebhookConfig, ...]:
    from dockyard.api.patterns import glob_error

    if not isinstance(doc, list):
        raise ConfigError(f"webhooks: expected a list, got {type(doc).__name__}")
    hooks: list[WebhookConfig] = []
    for i, item in enumerate(doc):
        key = f"webhooks[{i}]"
        hook = _mapping(item, key, {"name", "url", "events", "repositories", "secretFile", *DELIVERY_KEYS})
        for required in ("name", "url", "events", "secretFile"):
            if required not in hook:
                raise ConfigError(f"{key}.{required}: is required")
        name = _string(hook["name"], f"{key}.name")
        if not _WEBHOOK_NAME.fullmatch(name):
            raise ConfigError(f"{key}.name: expected a DNS label (a-z, 0-9, '-'), got {name!r}")
        if any(h.name == name for h in hooks):
            raise ConfigError(f"{key}.name: {name!r} is used by another webhook")
        events = _strings(hook["events"], f"{key}.events", empty=False)
        if unknown := [e for e in events if e not in WEBHOOK_EVENTS]:
            raise ConfigError(f"{key}.events: unknown event {unknown[0]!r} (known: {', '.join(WEBHOOK_EVENTS)})")
        repositories = _strings(hook.get("repositories", ["**"]), f"{key}.repositories", empty=False)
        for glob in repositories:
            if (error := glob_error(glob)) is not None:
                raise ConfigError(f"{key}.repositories: {error}")
        hooks.append(WebhookConfig(name=name, url=_url(hook["url"], f"{key}.url"), events=frozenset(events),
                                   repositories=tuple(repositories),
                                   secret_file=_path(hook["secretFile"], f"{key}.secretFile"),
                                   delivery=parse_delivery(hook, key)))
    return tuple(hooks)


def positive_duration(value: Any, key: str) -> float:
    seconds = parse_config_duration(value, key)
    if seconds <= 0:
        raise ConfigError(f"{key}: must be greater than zero")
    return seconds


def positive_int(value: Any, key: str) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
    return value


def parse_http(doc: Any) -> HTTPLimits:
    http = _mapping(doc, "http", {"headerTimeout", "idleTimeout", "bodyTimeout", "maxConnections"})
    limits = HTTPLimits()
    if "headerTimeout" in http:
        limits = replace(limits, header_timeout=positive_duration(http["headerTimeout"], "http.headerTimeout"))
    if "idleTimeout" in http:
        limits = replace(limits, idle_timeout=positive_duration(http["idleTimeout"], "http.idleTimeout"))
    if "bodyTimeout" in http:
        limits = replace(limits, body_timeout=positive_duration(http["bodyTimeout"], "http.bodyTimeout"))
    if "maxConnections" in http:
        limits = replace(limits, max_connections=positive_int(http["maxConnections"], "http.maxConnections"))
    return limits


ACTIONS = ("pull", "push", "delete")


def _strings(value: Any, key: str, *, empty: bool = True) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: expected a list of non-empty strings, got {value!r}")
    if not empty and not value:
        raise ConfigError(f"{key}: must not be empty")
    return value


def parse_access(doc: Any) -> AccessConfig:
    from dockyard.api.patterns import glob_error

    access = _mapping(doc, "access", {"rules", "groups"})
    groups = access.get("groups") or {}
    if not isinstance(groups, dict):
        raise ConfigError(f"access.groups: expected a mapping of group names to users, got {groups!r}")
    parsed_groups = {str(g): _strings(users, f"access.groups.{g}") for g, users in groups.items()}
    rules: list[dict[str, Any]] | None = None
    if access.get("rules") is not None:
        if not isinstance(access["rules"], list) or not access["rules"]:
            raise ConfigError("access.rules: expected a non-empty list of rules")
        rules = []
        for i, rule in enumerate(access["rules"]):
            key = f"access.rules[{i}]"
            rule = _mapping(rule, key, {"repositories", "actions", "users", "groups", "serviceAccounts"})
            for glob in _strings(rule.get("repositories"), f"{key}.repositories", empty=False):
                if (error := glob_error(glob)) is not None:
                    raise ConfigError(f"{key}.repositories: {error}")
            actions = _strings(rule.get("actions"), f"{key}.actions", empty=False)
            if unknown := [a for a in actions if a not in ACTIONS]:
                raise ConfigError(f"{key}.actions: unknown action {unknown[0]!r} (known: {', '.join(ACTIONS)})")
            for subject in ("users", "groups", "serviceAccounts"):
                _strings(rule.get(subject, []), f"{key}.{subject}")
            if missing := [g for g in rule.get("groups", []) if g not in parsed_groups]:
                raise ConfigError(f"{key}.groups: group {missing[0]!r} is not defined in access.groups")
            rules.append(rule)
    return AccessConfig(tuple(rules) if rules is not None else None, parsed_groups)


def parse_token(doc: Any) -> TokenConfig:
    token = _mapping(doc, "token", {"keyFile", "service", "lifetime"})
    for key in ("keyFile", "service"):
        if key not in token:
            raise ConfigError(f"token.{key}: is required")
    cfg = TokenConfig(_path(token["keyFile"], "token.keyFile"), _string(token["service"], "token.service"))
    if "lifetime" in token:
        cfg = replace(cfg, lifetime=parse_config_duration(token["lifetime"], "token.lifetime"))
        if not 10 <= cfg.lifetime <= 24 * 3600:
            raise ConfigError("token.lifetime: must be between 10s and 24h")
    return cfg


def parse_service_accounts(doc: Any) -> ServiceAccountConfig:
    sa = _mapping(doc or {}, "serviceAccounts", {"audience", "server", "tokenFile", "caFile"})
    cfg = ServiceAccountConfig()
    if "audience" in sa:
        cfg = replace(cfg, audience=_string(sa["audience"], "serviceAccounts.audience"))
    if "server" in sa:
        cfg = replace(cfg, server=_string(sa["server"], "serviceAccounts.server"))
    if "tokenFile" in sa:
        cfg = replace(cfg, token_file=_path(sa["tokenFile"], "serviceAccounts.tokenFile"))
    if "caFile" in sa:
        cfg = replace(cfg, ca_file=_path(sa["caFile"], "serviceAccounts.caFile") if sa["caFile"] else None)
    return cfg


def parse_quotas(doc: Any) -> tuple[QuotaConfig, ...]:
    """`quotas: [{repositories: [GLOB, ...], limit: BYTES}]`, as the operator renders `spec.quotas`."""
    from dockyard.api.patterns import glob_error

    if not isinstance(doc, list):
        raise ConfigError(f"quotas: expected a list of quotas, got {type(doc).__name__}")
    quotas = []
    for i, item in enumerate(doc):
        key = f"quotas[{i}]"
        quota = _mapping(item, key, {"repositories", "limit"})
        for required in ("repositories", "limit"):
            if required not in quota:
                raise ConfigError(f"{key}.{required}: is required")
        globs = _strings(quota["repositories"], f"{key}.repositories", empty=False)
        for glob in globs:
            if (error := glob_error(glob)) is not None:
                raise ConfigError(f"{key}.repositories: {error}")
        limit = quota["limit"]
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"{key}.limit: expected a number of bytes (an integer, 0 or more), got {limit!r}")
        quotas.append(QuotaConfig(tuple(globs), limit))
    return tuple(quotas)


S3_KEYS = {"bucket", "endpoint", "region", "prefix", "forcePathStyle", "insecure", "caFile", "credentialsDir",
           "redirect"}


def parse_storage(doc: Any) -> S3Config | None:
    """`storage: {s3: {...}}`, as the operator renders `spec.storage.s3`; None without `s3`.

    The bucket, endpoint and prefix follow the grammars admission checks them with
    (`dockyard.api.patterns`), so a hand-written config fails here, not at the first request.
    """
    from dockyard.api.patterns import S3_BUCKET_PATTERN, S3_ENDPOINT_PATTERN

    storage = _mapping(doc, "storage", {"s3"})
    if storage.get("s3") is None:
        return None
    s3 = _mapping(storage["s3"], "storage.s3", S3_KEYS)
    if "bucket" not in s3:
        raise ConfigError("storage.s3.bucket: is required")
    bucket = _string(s3["bucket"], "storage.s3.bucket")
    if not re.fullmatch(S3_BUCKET_PATTERN, bucket):
        raise ConfigError(f"storage.s3.bucket: {bucket!r} is not a bucket name (3-63 lowercase letters, digits, "
                          "'.' and '-', starting and ending with a letter or digit)")
    cfg = S3Config(bucket=bucket)
    if s3.get("endpoint") is not None:
        endpoint = _string(s3["endpoint"], "storage.s3.endpoint")
        if not re.fullmatch(S3_ENDPOINT_PATTERN, endpoint):
            raise ConfigError(f"storage.s3.endpoint: expected an http:// or https:// URL of a host and port "
                              f"without a path, got {endpoint!r}")
        cfg = replace(cfg, endpoint=endpoint)
    if "region" in s3:
        cfg = replace(cfg, region=_string(s3["region"], "storage.s3.region"))
    if "prefix" in s3:
        prefix = s3["prefix"]
        if not isinstance(prefix, str):
            raise ConfigError(f"storage.s3.prefix: expected a string, got {prefix!r}")
        if prefix and (prefix.startswith("/") or prefix.endswith("/") or "//" in prefix):
            raise ConfigError(f"storage.s3.prefix: {prefix!r} must not start or end with '/' or hold '//'")
        cfg = replace(cfg, prefix=prefix)
    if "forcePathStyle" in s3:
        cfg = replace(cfg, force_path_style=_bool(s3["forcePathStyle"], "storage.s3.forcePathStyle"))
    if "insecure" in s3:
        cfg = replace(cfg, insecure=_bool(s3["insecure"], "storage.s3.insecure"))
    if "redirect" in s3:
        cfg = replace(cfg, redirect=_bool(s3["redirect"], "storage.s3.redirect"))
    if s3.get("caFile") is not None:
        cfg = replace(cfg, ca_file=_path(s3["caFile"], "storage.s3.caFile"))
    if s3.get("credentialsDir") is not None:
        cfg = replace(cfg, credentials_dir=_path(s3["credentialsDir"], "storage.s3.credentialsDir"))
    if cfg.insecure and cfg.ca_file is not None:
        raise ConfigError("storage.s3.insecure: set insecure or caFile, not both (insecure verifies nothing)")
    return cfg


TOP_KEYS = {"addr", "root", "htpasswd", "anonymousPull", "readOnly", "tls", "gc", "notify", "http", "access",
            "token", "serviceAccounts", "quotas", "webhooks", "source", "storage"}


def parse_config(doc: Any) -> ServeConfig:
    """Validate the YAML document of the config file."""
    if doc is None:
        return ServeConfig()
    doc = _mapping(doc, "config", TOP_KEYS)
    cfg = ServeConfig()
    if "addr" in doc:
        host, port = parse_addr(doc["addr"])
        cfg = replace(cfg, host=host, port=port)
    if "root" in doc:
        cfg = replace(cfg, root=_path(doc["root"], "root"))
    if "htpasswd" in doc and doc["htpasswd"] is not None:
        cfg = replace(cfg, htpasswd=_path(doc["htpasswd"], "htpasswd"))
    if "anonymousPull" in doc:
        cfg = replace(cfg, anonymous_pull=_bool(doc["anonymousPull"], "anonymousPull"))
    if "readOnly" in doc:
        cfg = replace(cfg, read_only=_bool(doc["readOnly"], "readOnly"))
    if doc.get("tls") is not None:
        tls = _mapping(doc["tls"], "tls", {"cert", "key"})
        if set(tls) != {"cert", "key"}:
            raise ConfigError("tls: both cert and key are required")
        cfg = replace(cfg, tls_cert=_path(tls["cert"], "tls.cert"), tls_key=_path(tls["key"], "tls.key"))
    if doc.get("gc") is not None:
        gc = _mapping(doc["gc"], "gc", {"interval", "schedule", "deleteUntagged", "gracePeriod"})
        g = GCConfig()
        if "interval" in gc and "schedule" in gc:
            raise ConfigError("gc: set either interval or schedule, not both")
        if "schedule" in gc:
            if not isinstance(gc["schedule"], str):
                raise ConfigError(f"gc.schedule: expected a cron schedule like '0 3 * * *', got {gc['schedule']!r}")
            try:
                cron.parse(gc["schedule"])
            except cron.CronError as e:
                raise ConfigError(f"gc.schedule: {e}") from None
            g = replace(g, schedule=gc["schedule"])
        if "interval" in gc:
            g = replace(g, interval=parse_config_duration(gc["interval"], "gc.interval"))
            if g.interval <= 0:
                raise ConfigError("gc.interval: must be greater than zero")
        if "deleteUntagged" in gc:
            g = replace(g, delete_untagged=_bool(gc["deleteUntagged"], "gc.deleteUntagged"))
        if "gracePeriod" in gc:
            g = replace(g, grace_period=parse_config_duration(gc["gracePeriod"], "gc.gracePeriod"))
        cfg = replace(cfg, gc=g)
    if doc.get("notify") is not None:
        cfg = replace(cfg, notify=parse_notify(doc["notify"]))
    if doc.get("http") is not None:
        cfg = replace(cfg, http=parse_http(doc["http"]))
    if doc.get("access") is not None:
        cfg = replace(cfg, access=parse_access(doc["access"]))
    if doc.get("token") is not None:
        cfg = replace(cfg, token=parse_token(doc["token"]))
    if "serviceAccounts" in doc:
        cfg = replace(cfg, service_accounts=parse_service_accounts(doc["serviceAccounts"]))
    if doc.get("quotas") is not None:
        cfg = replace(cfg, quotas=parse_quotas(doc["quotas"]))
    if doc.get("webhooks") is not None:
        cfg = replace(cfg, webhooks=parse_webhooks(doc["webhooks"]))
    if doc.get("source") is not None:
        cfg = replace(cfg, source=_string(doc["source"], "source"))
    if doc.get("storage") is not None:
        cfg = replace(cfg, s3=parse_storage(doc["storage"]))
    return cfg


def load_config(path: Path) -> ServeConfig:
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_config(doc)
