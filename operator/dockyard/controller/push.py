"""Events from Dockyard registries: the small webhook behind `trigger.onPush` and `WebhookFailing`.

A policy whose source is a Dockyard Registry and whose `trigger.onPush` is true runs when a
tag is pushed to that Registry. The registry server tells the operator, after a manifest
PUT by tag has succeeded, with a CloudEvent (see `dockyard.registry.notify` and `.delivery`):

    POST {DOCKYARD_EVENTS_URL}/v1/push
    Content-Type: application/cloudevents+json
    X-Dockyard-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the Registry's events token>

    {"specversion": "1.0", "id": "...", "type": "dev.dockyard.registry.push",
     "source": "/registries/registries/main", "subject": "team/app:v1.2.0", "time": "...",
     "data": {"repository": "team/app", "tag": "v1.2.0", "digest": "sha256:...", ...}}

The answer comes at once: 202 with `{"policies": ["NS/NAME", ...]}`, the policies that will
run; 401 when the body is not signed with the token of the Registry its source names; 400 for
a malformed event; 503 when the token cannot be read from the API server just now (the
registry retries). A policy runs only for repositories and tags its filters select. Runs never
overlap: pushes during a run coalesce into one more run after it, and a run that starts after a
push covers it. A lost event is made good by the next push or by the policy's schedule.

The same endpoint takes `dev.dockyard.registry.webhook.failed` (subject: the webhook's name),
which a registry sends at most once a minute per webhook of its `spec.webhooks` while
deliveries to it fail: the operator posts it as a Warning Event `WebhookFailing` on the
Registry; `dev.dockyard.registry.quota` (the usage of every quota of `spec.quotas` when it
changed), which the operator writes into `status.quotas` (see `controller.quota_status`); and
`dev.dockyard.registry.storage`, how full the storage is (written into `status.storage`, whence
StorageFull and StorageNearlyFull) or, as `{"error": "..."}`, that the registry cannot use it
(`status.storage.error`, whence Stalled=True with reason StorageUnavailable, until a report
without error). Events of other types are accepted (202) and ignored.

Each Registry has its own token: the Registry reconcile creates the Secret `<registry>-events`
(key `token`, owned by the Registry) and mounts it into the registry's pods. An event is
accepted only when signed with the token of the Registry it names, so a registry pod can
trigger runs for its own pushes and nobody else's, the token never crosses the network, and no
secret is shared across namespaces. A Secret of that name which its Registry does not own (as
controller) holds no token. Tokens are read through the API adapter and cached for a few
seconds; a signature that does not match is checked again with the token read anew (at most
once a second per Registry), so a re-created Secret works at once.

The receiver listens on `DOCKYARD_EVENTS_ADDR` (`host:port`) when it is set, and stays off
otherwise. Registries post to `DOCKYARD_EVENTS_URL` (see `controller.reconcile`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf
from aiohttp import web

from dockyard.api import GROUP, VERSION, SpecError
from dockyard.api.replication import ReplicationPolicySpec
from dockyard.api.schema import parse
from dockyard.controller.conditions import storage_conditions
from dockyard.controller.kube import ApiError, Kube
from dockyard.controller.quota_status import newly_full, quantity, quota_status
from dockyard.controller.reconcile import EventPoster
from dockyard.controller.replication_reconcile import PLURAL, PolicyReconciler
from dockyard.render.registry import EVENTS_PATH, EVENTS_TOKEN_KEY, events_secret_name
from dockyard.replication.filters import RangeError, TagSelector, repository_selected

ADDR_ENV = "DOCKYARD_EVENTS_ADDR"
PATH = EVENTS_PATH
TOKEN_TTL = 10.0
"""Seconds a Registry's token (or its absence) is trusted before the Secret is read again."""
REREAD_AFTER = 1.0
"""A token that does not match is read again when the cached one is older than this."""

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SOURCE = re.compile(r"/registries/([^/]+)/([^/]+)")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

log = logging.getLogger("dockyard.push")


@dataclass(frozen=True)
class Subscriber:
    """A policy that runs on pushes to one Registry, with the filters that decide which pushes."""

    namespace: str
    name: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    tags: TagSelector

    def selects(self, repository: str, tag: str) -> bool:
        return repository_selected(repository, self.include, self.exclude) and self.tags.matches(tag)


def push_subscribers(*, namespace: str | None, name: str, spec: kopf.Spec,
                     **_: Any) -> dict[tuple[str, str], Subscriber]:
    """(namespace, name) of a source Registry -> the onPush policies copying from it."""
    try:
        parsed = parse(ReplicationPolicySpec, dict(spec))
        ref = parsed.source.registry_ref
        if not parsed.trigger.on_push or ref is None:
            return {}
        tags = parsed.filters.tags
        selector = TagSelector(tags.include, tags.exclude, tags.semver_range)
    except (SpecError, RangeError):
        return {}
    ns = namespace or "default"
    repos = parsed.filters.repositories
    return {(ref.namespace or ns, ref.name): Subscriber(ns, name, repos.include, repos.exclude, selector)}


TYPE_PREFIX = "dev.dockyard.registry."
SIGNATURE_HEADER = "X-Dockyard-Signature"


@dataclass(frozen=True)
class CloudEvent:
    """The envelope of a registry's event: who sent it (the Registry in `source`), its type and data."""

    registry: tuple[str, str]
    type: str
    subject: str | None
    data: dict[str, Any]

    @classmethod
    def parse(cls, doc: Any) -> CloudEvent:
        if not isinstance(doc, dict):
            raise ValueError("the event must be a JSON object")
        if doc.get("specversion") != "1.0":
            raise ValueError("specversion: 1.0 is required")
        for key in ("id", "type", "source"):
            if not isinstance(doc.get(key), str) or not doc[key]:
                raise ValueError(f"{key}: a non-empty string is required")
        source = _SOURCE.fullmatch(doc["source"])
        if source is None:
            raise ValueError("source: /registries/<namespace>/<name> is required")
        namespace, name = source.groups()
        if not _DNS_LABEL.fullmatch(namespace):
            raise ValueError("source: not a Kubernetes namespace name")
        if not _DNS_SUBDOMAIN.fullmatch(name) or len(name) > 253:
            raise ValueError("source: not a Kubernetes object name")
        data = doc.get("data")
        if not isinstance(data, dict):
            raise ValueError("data: an object is required")
        subject = doc.get("subject")
        return cls((namespace, name), doc["type"], subject if isinstance(subject, str) else None, data)


@dataclass(frozen=True)
class PushEvent:
    registry: tuple[str, str]
    repository: str
    tag: str
    digest: str

    @classmethod
    def of(cls, event: CloudEvent) -> PushEvent:
        fields = {key: event.data.get(key) for key in ("repository", "tag", "digest")}
        for key, value in fields.items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"data.{key}: a non-empty string is required")
        return cls(event.registry, event.data["repository"], event.data["tag"], event.data["digest"])


def failure_message(data: Mapping[str, Any]) -> str:
    """The Warning Event's message for a `webhook.failed` report."""
    def text(key: str, limit: int = 200) -> str:
        return " ".join(str(data.get(key) or "?").split())[:limit]
    message = f"webhook {text('webhook', 63)} ({text('host')}) is failing: {text('error')}"
    dropped = data.get("dropped")
    if isinstance(dropped, int) and not isinstance(dropped, bool) and dropped > 0:
        message += f"; {dropped} events dropped since the last report"
    return message


ERROR_MAX_LENGTH = 1024
"""A storage error is one line of the store's answer; longer ones are cut, so status stays small."""


def storage_report(data: Mapping[str, Any]) -> dict[str, Any]:
    """The status.storage merge patch of a `dev.dockyard.registry.storage` report; ValueError if malformed.

    A report is usage, `{"usedBytes": N, "capacityBytes": N, "full": bool}` (no capacityBytes from object
    storage, which has no size), which clears an earlier error; or `{"error": "..."}` when the registry
    cannot use its storage, which keeps the last usage known. Keys set to None are removed.
    """
    error = data.get("error")
    if error is not None:
        text = " ".join(error.split())[:ERROR_MAX_LENGTH] if isinstance(error, str) else ""
        if not text:
            raise ValueError("error must be a non-empty string")
        return {"error": text}
    used, capacity, full = data.get("usedBytes"), data.get("capacityBytes"), data.get("full")
    if type(used) is not int or used < 0 or type(full) is not bool:
        raise ValueError("usedBytes (an integer, 0 or more) and full (a boolean) are required, or error")
    if capacity is not None and (type(capacity) is not int or capacity < used):
        raise ValueError("capacityBytes must be an integer no less than usedBytes")
    return {"used": quantity(used), "usedBytes": used, "capacityBytes": capacity, "full": full, "error": None}


def signature_matches(token: bytes, body: bytes, presented: str) -> bool:
    expected = "sha256=" + hmac.new(token, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), presented.encode())


def token_of(secret: Mapping[str, Any] | None, registry: str) -> bytes | None:
    """The events token in a Registry's Secret, if the Secret is the one its Registry owns."""
    if secret is None:
        return None
    owners = (secret.get("metadata") or {}).get("ownerReferences") or []
    if not any(ref.get("kind") == "Registry" and ref.get("name") == registry and ref.get("controller")
               for ref in owners):
        return None  # not Dockyard's: anyone allowed to create Secrets could have written it
    value = (secret.get("data") or {}).get(EVENTS_TOKEN_KEY)
    try:
        token = base64.b64decode(value, validate=True).strip() if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        return None
    return token or None


class Tokens:
    """Registry events tokens from their Secrets, cached for `TOKEN_TTL` seconds."""

    def __init__(self, kube: Kube, ttl: float = TOKEN_TTL, limit: int = 4096) -> None:
        self.kube = kube
        self.ttl = ttl
        self.limit = limit
        self._cache: dict[tuple[str, str], tuple[float, bytes | None]] = {}

    async def _read(self, registry: tuple[str, str]) -> bytes | None:
        namespace, name = registry
        token = token_of(await self.kube.get("v1", "Secret", namespace, events_secret_name(name)), name)
        if len(self._cache) >= self.limit:
            self._cache.clear()
        self._cache[registry] = (time.monotonic(), token)
        return token

    async def valid(self, registry: tuple[str, str], body: bytes, signature: str) -> bool:
        """Whether SIGNATURE is the HMAC of BODY keyed with the Registry's token."""
        cached = self._cache.get(registry)
        now = time.monotonic()
        if cached is None or now - cached[0] > self.ttl:
            token = await self._read(registry)
        else:
            token = cached[1]
            if (token is None or not signature_matches(token, body, signature)) and now - cached[0] > REREAD_AFTER:
                token = await self._read(registry)
        return token is not None and signature_matches(token, body, signature)


class Receiver:
    """The HTTP endpoint; hands matching pushes to the policy reconciler without waiting for it."""

    def __init__(self, tokens: Tokens, reconciler: PolicyReconciler,
                 subscribers: kopf.Index[tuple[str, str], Subscriber],
                 post_event: EventPoster | None = None,
                 on_registry: Callable[[str, str], Coroutine[Any, Any, None]] | None = None) -> None:
        self.tokens = tokens
        self.on_registry = on_registry
        """Reconciles a Registry (its storage conditions follow the usage its registry reports)."""
        self.reconciler = reconciler
        self.subscribers = subscribers
        self.post_event = post_event or reconciler.post_event
        """Posts through the API adapter: `kopf.event` works only inside Kopf's handlers."""
        self.runner: web.AppRunner | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response({"error": "the body must be signed (X-Dockyard-Signature: sha256=HMAC) with "
                                           "the events token of the Registry named in the event's source"},
                                 status=401)

    async def receive(self, request: web.Request) -> web.Response:
        signature = request.headers.get(SIGNATURE_HEADER, "").strip()
        if not signature.startswith("sha256="):
            return self._unauthorized()
        body = await request.read()
        try:
            event = CloudEvent.parse(json.loads(body))
            push = PushEvent.of(event) if event.type == TYPE_PREFIX + "push" else None
        except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            return web.json_response({"error": str(e)}, status=400)
        try:
            valid = await self.tokens.valid(event.registry, body, signature)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:  # the registry tries again
            log.warning("cannot check the signature of an event from %s/%s: %s", *event.registry, e)
            return web.json_response({"error": "cannot check the signature now"}, status=503)
        if not valid:
            log.info("refused an event from %s/%s: bad signature", *event.registry)
            return self._unauthorized()
        if push is not None:
            return self._pushed(push)
        if event.type == TYPE_PREFIX + "webhook.failed":
            return await self._webhook_failed(event)
        if event.type == TYPE_PREFIX + "quota":
            return await self._quota(event)
        if event.type == TYPE_PREFIX + "storage":
            return await self._storage(event)
        return web.json_response({"ignored": event.type[:200]}, status=202)

    def _pushed(self, event: PushEvent) -> web.Response:
        matched = sorted({(s.namespace, s.name) for s in self.subscribers.get(event.registry, [])
                          if s.selects(event.repository, event.tag)})
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        label = f"{event.repository}:{event.tag}@{event.digest} at {stamp}"
        for namespace, name in matched:
            task = asyncio.create_task(self.reconciler.push(namespace, name, label))
            self.tasks.add(task)
            task.add_done_callback(self._done)
        if matched:
            log.info("push of %s:%s to %s/%s runs %s", event.repository, event.tag, *event.registry,
                     ", ".join(f"{ns}/{n}" for ns, n in matched))
        return web.json_response({"policies": [f"{ns}/{n}" for ns, n in matched]}, status=202)

    async def _webhook_failed(self, event: CloudEvent) -> web.Response:
        namespace, name = event.registry
        try:
            registry = await self.tokens.kube.get(f"{GROUP}/{VERSION}", "Registry", namespace, name)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("cannot read Registry %s/%s for its webhook failure: %s", namespace, name, e)
            return web.json_response({"error": "cannot read the Registry now"}, status=503)
        if registry is None:
            return web.json_response({"error": "no such Registry"}, status=404)
        message = failure_message(event.data)
        log.info("Registry %s/%s: %s", namespace, name, message)
        self.post_event(registry, "Warning", "WebhookFailing", message)
        return web.json_response({}, status=202)

    async def _quota(self, event: CloudEvent) -> web.Response:
        """Write the reported usage into status.quotas; a QuotaNearlyFull Event for each quota crossing 90 %."""
        namespace, name = event.registry
        kube = self.tokens.kube
        try:
            registry = await kube.get(f"{GROUP}/{VERSION}", "Registry", namespace, name)
            if registry is None:
                return web.json_response({"error": "no such Registry"}, status=404)
            try:
                quotas = quota_status((registry.get("spec") or {}).get("quotas") or [], event.data.get("quotas"))
            except ValueError as e:
                return web.json_response({"error": str(e)}, status=400)
            old = (registry.get("status") or {}).get("quotas") or []
            if quotas != old:
                await kube.patch_status(f"{GROUP}/{VERSION}", "Registry", namespace, name, {"quotas": quotas})
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("cannot write the quota usage of Registry %s/%s: %s", namespace, name, e)
            return web.json_response({"error": "cannot write the status now"}, status=503)
        for message in newly_full(old, quotas):
            self.post_event(registry, "Warning", "QuotaNearlyFull", message)
        return web.json_response({}, status=202)

    async def _storage(self, event: CloudEvent) -> web.Response:
        """Write the reported usage or error into status.storage; the Registry's reconcile derives its
        storage conditions and StorageUnavailable (and their Events) from it, so it runs again when one of
        them would change."""
        namespace, name = event.registry
        try:
            usage = storage_report(event.data)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        kube = self.tokens.kube
        try:
            registry = await kube.get(f"{GROUP}/{VERSION}", "Registry", namespace, name)
            if registry is None:
                return web.json_response({"error": "no such Registry"}, status=404)
            old = ((registry.get("status") or {}).get("storage")) or {}
            new = {k: v for k, v in {**old, **usage}.items() if v is not None}
            if any(old.get(k) != v for k, v in usage.items()):
                await kube.patch_status(f"{GROUP}/{VERSION}", "Registry", namespace, name, {"storage": usage})
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("cannot write the storage usage of Registry %s/%s: %s", namespace, name, e)
            return web.json_response({"error": "cannot write the status now"}, status=503)
        if old.get("error") != new.get("error"):
            log.info("Registry %s/%s: %s", namespace, name,
                     f"storage unavailable: {new['error']}" if new.get("error") else "storage available again")
        if self.on_registry is not None and (storage_conditions(old, 0) != storage_conditions(new, 0)
                                             or old.get("error") != new.get("error")):
            task = asyncio.create_task(self.on_registry(namespace, name))
            self.tasks.add(task)
            task.add_done_callback(self._done)
        return web.json_response({}, status=202)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a push-triggered reconcile failed", exc_info=task.exception())

    async def start(self, host: str, port: int) -> None:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_post(PATH, self.receive)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.runner is not None:
            await self.runner.cleanup()


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{ADDR_ENV} must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104  in a pod: reachable through its Service


async def start_receiver(memo: kopf.Memo, **kwargs: Any) -> None:
    """Runs after the policy reconciler exists (registered after it, see `controller.main`)."""
    addr = os.environ.get(ADDR_ENV)
    if not addr:
        return
    host, port = parse_addr(addr)
    receiver = Receiver(Tokens(memo.kube), memo.policy_reconciler, kwargs["push_subscribers"],
                        on_registry=memo.reconciler.request)
    await receiver.start(host, port)
    memo.push_receiver = receiver
    log.info("receiving push events on http://%s:%d%s", host, port, PATH)


async def stop_receiver(memo: kopf.Memo, **_: Any) -> None:
    receiver: Receiver | None = getattr(memo, "push_receiver", None)
    if receiver is not None:
        await receiver.stop()


def register(registry: kopf.OperatorRegistry) -> None:
    """Register the receiver's handlers, after those of ReplicationPolicies (see `controller.main`)."""
    kopf.index(GROUP, VERSION, PLURAL, registry=registry)(push_subscribers)
    kopf.on.startup(registry=registry)(start_receiver)
    kopf.on.cleanup(registry=registry)(stop_receiver)
