"""Push events from Dockyard registries: the small webhook behind `trigger.onPush`.

A policy whose source is a Dockyard Registry and whose `trigger.onPush` is true runs when a
tag is pushed to that Registry. The registry server tells the operator, after a manifest
PUT by tag has succeeded (see `dockyard.registry.notify`):

    POST {DOCKYARD_EVENTS_URL}/v1/push
    Authorization: Bearer <token>
    Content-Type: application/json

    {"registry": {"namespace": "registries", "name": "main"},
     "repository": "team/app", "tag": "v1.2.0", "digest": "sha256:..."}

The answer comes at once: 202 with `{"policies": ["NS/NAME", ...]}`, the policies that will
run; 401 when the token is not the Registry's; 400 for a malformed event; 503 when the
token cannot be read from the API server just now. A policy runs only
for repositories and tags its filters select. Runs never overlap: pushes during a run
coalesce into one more run after it, and a run that starts after a push covers it. For the
registry the post is fire-and-forget; a lost event is made good by the next push or by the
policy's schedule.

Each Registry has its own token: the Registry reconcile creates the Secret `<registry>-events`
(key `token`, owned by the Registry) and mounts it into the registry's pods. An event is
accepted only with the token of the Registry it names, so a registry pod can trigger runs for
its own pushes and nobody else's, and no secret is shared across namespaces. A Secret of that
name which its Registry does not own (as controller) holds no token. Tokens are read
through the API adapter and cached for a few seconds; a token that does not match is read
again (at most once a second per Registry), so a re-created Secret works at once.

The receiver listens on `DOCKYARD_EVENTS_ADDR` (`host:port`) when it is set, and stays off
otherwise. Registries post to `DOCKYARD_EVENTS_URL` (see `controller.reconcile`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hmac
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf
from aiohttp import web

from dockyard.api import GROUP, VERSION, SpecError
from dockyard.api.replication import ReplicationPolicySpec
from dockyard.api.schema import parse
from dockyard.controller.kube import ApiError, Kube
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


@dataclass(frozen=True)
class PushEvent:
    registry: tuple[str, str]
    repository: str
    tag: str
    digest: str

    @classmethod
    def parse(cls, doc: Any) -> PushEvent:
        if not isinstance(doc, dict):
            raise ValueError("the event must be a JSON object")
        registry = doc.get("registry")
        if not isinstance(registry, dict):
            raise ValueError("registry: an object {namespace, name} is required")
        fields = {"registry.namespace": registry.get("namespace"), "registry.name": registry.get("name"),
                  "repository": doc.get("repository"), "tag": doc.get("tag"), "digest": doc.get("digest")}
        for key, value in fields.items():
            if not isinstance(value, str) or not value:
                raise ValueError(f"{key}: a non-empty string is required")
        if not _DNS_LABEL.fullmatch(registry["namespace"]):
            raise ValueError("registry.namespace: not a Kubernetes namespace name")
        if not _DNS_SUBDOMAIN.fullmatch(registry["name"]) or len(registry["name"]) > 253:
            raise ValueError("registry.name: not a Kubernetes object name")
        return cls((registry["namespace"], registry["name"]), doc["repository"], doc["tag"], doc["digest"])


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

    async def valid(self, registry: tuple[str, str], presented: bytes) -> bool:
        cached = self._cache.get(registry)
        now = time.monotonic()
        if cached is None or now - cached[0] > self.ttl:
            token = await self._read(registry)
        else:
            token = cached[1]
            if (token is None or not hmac.compare_digest(token, presented)) and now - cached[0] > REREAD_AFTER:
                token = await self._read(registry)
        return token is not None and hmac.compare_digest(token, presented)


def bearer(header: str | None) -> bytes | None:
    if not header or header[:7].lower() != "bearer ":
        return None
    token = header[7:].strip()
    return token.encode() if token else None


class Receiver:
    """The HTTP endpoint; hands matching pushes to the policy reconciler without waiting for it."""

    def __init__(self, tokens: Tokens, reconciler: PolicyReconciler,
                 subscribers: kopf.Index[tuple[str, str], Subscriber]) -> None:
        self.tokens = tokens
        self.reconciler = reconciler
        self.subscribers = subscribers
        self.runner: web.AppRunner | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response({"error": "the bearer token of the Registry named in the event is required"},
                                 status=401, headers={"WWW-Authenticate": "Bearer"})

    async def receive(self, request: web.Request) -> web.Response:
        presented = bearer(request.headers.get("Authorization"))
        if presented is None:
            return self._unauthorized()
        try:
            event = PushEvent.parse(await request.json())
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        try:
            valid = await self.tokens.valid(event.registry, presented)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as e:  # the registry drops the event
            log.warning("cannot check the token of a push to %s/%s: %s", *event.registry, e)
            return web.json_response({"error": "cannot check the token now"}, status=503)
        if not valid:
            log.info("refused a push event for %s/%s: wrong token", *event.registry)
            return self._unauthorized()
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
    receiver = Receiver(Tokens(memo.kube), memo.policy_reconciler, kwargs["push_subscribers"])
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
