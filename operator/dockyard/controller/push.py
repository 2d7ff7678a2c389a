"""Push events from Dockyard registries: the small webhook behind `trigger.onPush`.

A policy whose source is a Dockyard Registry and whose `trigger.onPush` is true runs when a
tag is pushed to that Registry. The registry server tells the operator, after a manifest
PUT by tag has succeeded:

    POST {DOCKYARD_EVENTS_URL}/v1/push
    Authorization: Bearer <token>
    Content-Type: application/json

    {"registry": {"namespace": "registries", "name": "main"},
     "repository": "team/app", "tag": "v1.2.0", "digest": "sha256:..."}

The answer comes at once: 202 with `{"policies": ["NS/NAME", ...]}`, the policies that will
run; 401 for a wrong token; 400 for a malformed event. A policy runs only for repositories
and tags its filters select. Runs never overlap: pushes during a run coalesce into one more
run after it, and a run that starts after a push covers it. For the registry the post is
fire-and-forget; a lost event is made good by the next push or by the policy's schedule.

The receiver listens on `DOCKYARD_EVENTS_ADDR` (`host:port`) when it is set, with the shared
token read from the file `DOCKYARD_EVENTS_TOKEN_FILE` or from `DOCKYARD_EVENTS_TOKEN`. Without
a token it stays off: anyone who can reach it could otherwise start runs.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import logging
import os
from dataclasses import dataclass
from typing import Any

import kopf
from aiohttp import web

from dockyard.api import GROUP, VERSION, SpecError
from dockyard.api.replication import ReplicationPolicySpec
from dockyard.api.schema import parse
from dockyard.controller.replication import PLURAL, PolicyReconciler
from dockyard.replication.filters import RangeError, TagSelector, repository_selected

ADDR_ENV = "DOCKYARD_EVENTS_ADDR"
TOKEN_ENV = "DOCKYARD_EVENTS_TOKEN"
TOKEN_FILE_ENV = "DOCKYARD_EVENTS_TOKEN_FILE"
PATH = "/v1/push"

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


@kopf.index(GROUP, VERSION, PLURAL)
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
        return cls((registry["namespace"], registry["name"]), doc["repository"], doc["tag"], doc["digest"])


class Receiver:
    """The HTTP endpoint; hands matching pushes to the policy reconciler without waiting for it."""

    def __init__(self, token: str, reconciler: PolicyReconciler,
                 subscribers: kopf.Index[tuple[str, str], Subscriber]) -> None:
        self.token = token
        self.reconciler = reconciler
        self.subscribers = subscribers
        self.runner: web.AppRunner | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def receive(self, request: web.Request) -> web.Response:
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                   f"Bearer {self.token}".encode()):
            return web.json_response({"error": "a valid bearer token is required"}, status=401)
        try:
            event = PushEvent.parse(await request.json())
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
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


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


async def token_from_environment() -> str | None:
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        return await asyncio.to_thread(_read, path)
    return os.environ.get(TOKEN_ENV) or None


def parse_addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{ADDR_ENV} must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


@kopf.on.startup()
async def start_receiver(memo: kopf.Memo, **kwargs: Any) -> None:
    """Runs after the policy reconciler exists (this module imports `controller.replication`)."""
    addr = os.environ.get(ADDR_ENV)
    if not addr:
        return
    token = await token_from_environment()
    if not token:
        log.warning("%s is set but neither %s nor %s: push events stay off", ADDR_ENV, TOKEN_FILE_ENV, TOKEN_ENV)
        return
    host, port = parse_addr(addr)
    receiver = Receiver(token, memo.policy_reconciler, kwargs["push_subscribers"])
    await receiver.start(host, port)
    memo.push_receiver = receiver
    log.info("receiving push events on http://%s:%d%s", host, port, PATH)


@kopf.on.cleanup()
async def stop_receiver(memo: kopf.Memo, **_: Any) -> None:
    receiver: Receiver | None = getattr(memo, "push_receiver", None)
    if receiver is not None:
        await receiver.stop()
