"""Webhooks: CloudEvents of pushes, deletes and pulls for the receivers in `webhooks` of the config.

    webhooks:
    - name: ci                       # a DNS label; names the webhook in /metrics and in Events
      url: https://ci.example.com/hook
      events: [push, delete]         # push, delete, pull
      repositories: ["team/**"]      # globs, `**` crosses `/` (default: every repository)
      secretFile: /etc/dockyard/webhooks/ci/secret   # the HMAC key
      # optional: timeout (5s), queueSize (1000), retryInitial (1s), retryMax (60s), retryFor (10m)

What the registry sends (delivery, signature, queueing and retries: see `registry.delivery`):

- `dev.dockyard.registry.push` after a manifest PUT answered 201: one event per tag it set
  (subject `<repository>:<tag>`), or one for the digest when it set none (`<repository>@<digest>`);
- `dev.dockyard.registry.delete` after a manifest DELETE answered 202: by tag (the tag is gone,
  the manifest stays) or by digest (the manifest and its tags are gone);
- `dev.dockyard.registry.pull` after a manifest GET answered 200 (HEAD is not a pull: clients
  send it to check for updates).

`data` is {repository, tag, digest, mediaType, size, actor}; fields that do not apply (the
tag of a push by digest, the digest of a tag delete) are null, and so is `actor` without
authentication. `source` is `/registries/<namespace>/<name>` in a cluster (`source` in the
config, else `notify.registry`), else the registry's address.

While a webhook's deliveries fail, the registry tells the operator (when `notify` is set) with
a `dev.dockyard.registry.webhook.failed` event at most once a minute per webhook, naming the
webhook, its URL's host, the last error and the events dropped since the last report; the
operator posts it as a Warning Event `WebhookFailing` on the Registry.

Emitting never waits: the matching is a few RE2 matches, the rest happens in each webhook's task.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from dockyard.api.patterns import glob_regex
from dockyard.registry.access import Identity
from dockyard.registry.config import ServeConfig, WebhookConfig
from dockyard.registry.delivery import Destination, Failure, KeyFile, cloud_event
from dockyard.registry.metrics import Metrics
from dockyard.registry.notify import Notifier, registry_source

REPORT_EVERY = 60.0
"""Seconds between two failure reports of one webhook to the operator."""


def event_source(cfg: ServeConfig) -> str:
    if cfg.source:
        return cfg.source
    if cfg.notify is not None:
        return registry_source(cfg.notify.namespace, cfg.notify.name)
    scheme = "https" if cfg.tls_cert else "http"
    return f"{scheme}://{cfg.host}:{cfg.port}"


def actor_of(identity: Identity | None) -> str | None:
    if identity is None or not identity.authenticated:
        return None
    if identity.kind == "serviceaccount":
        return "system:serviceaccount:" + identity.name.replace("/", ":", 1)
    return identity.name


def _depth_of(destination: Destination) -> Callable[[], int]:
    return lambda: destination.depth


@dataclass
class Webhook:
    config: WebhookConfig
    destination: Destination
    patterns: tuple[Any, ...]
    last_report: float | None = None
    reported_dropped: int = 0

    def wants(self, event: str, repository: str) -> bool:
        return event in self.config.events and any(p.match(repository) is not None for p in self.patterns)


class Events:
    """What the registry tells others after a request: its webhooks, and the operator's push events."""

    def __init__(self, cfg: ServeConfig, metrics: Metrics, notifier: Notifier | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = event_source(cfg)
        self.notifier = notifier
        self.clock = clock
        self.webhooks: list[Webhook] = []
        for hook in cfg.webhooks:
            destination = Destination(hook.name, hook.url, KeyFile(hook.secret_file), hook.delivery,
                                      count=lambda outcome: None, failed=self._failed, what=f"webhook {hook.name}:")
            destination.count = metrics.webhook(hook.name, _depth_of(destination))
            self.webhooks.append(Webhook(hook, destination, tuple(glob_regex(g) for g in hook.repositories)))
        self._session: aiohttp.ClientSession | None = None

    def _emit(self, event: str, repository: str, tag: str | None, digest: str | None, data: dict[str, Any]) -> None:
        targets = [w for w in self.webhooks if w.wants(event, repository)]
        if not targets:
            return
        subject = f"{repository}:{tag}" if tag else f"{repository}@{digest}"
        body = cloud_event(event, self.source, subject,
                           {"repository": repository, "tag": tag, "digest": digest, **data})
        for webhook in targets:
            webhook.destination.submit(body, f"{event} of {subject}")

    def pushed(self, repository: str, tags: list[str], digest: str, media_type: str, size: int,
               identity: Identity | None) -> None:
        data = {"mediaType": media_type, "size": size, "actor": actor_of(identity)}
        each: list[str | None] = [*tags] or [None]
        for tag in each:
            self._emit("push", repository, tag, digest, data)
            if tag is not None and self.notifier is not None:
                self.notifier.pushed(repository, tag,
                                     {"repository": repository, "tag": tag, "digest": digest, **data})

    def deleted(self, repository: str, tag: str | None, digest: str | None, identity: Identity | None) -> None:
        self._emit("delete", repository, tag, digest, {"mediaType": None, "size": None,
                                                        "actor": actor_of(identity)})

    def pulled(self, repository: str, tag: str | None, digest: str, media_type: str, size: int,
               identity: Identity | None) -> None:
        if not any(w.wants("pull", repository) for w in self.webhooks):
            return
        self._emit("pull", repository, tag, digest, {"mediaType": media_type, "size": size,
                                                      "actor": actor_of(identity)})

    def _failed(self, destination: Destination, failure: Failure) -> None:
        """A delivery attempt failed: tell the operator, at most once a minute per webhook."""
        webhook = next(w for w in self.webhooks if w.destination is destination)
        now = self.clock()
        if self.notifier is None or (webhook.last_report is not None and now - webhook.last_report < REPORT_EVERY):
            return
        webhook.last_report = now
        dropped = destination.dropped - webhook.reported_dropped
        webhook.reported_dropped = destination.dropped
        self.notifier.webhook_failed({"webhook": webhook.config.name, "host": destination.host,
                                      "status": failure.status, "error": failure.reason,
                                      "dropped": dropped, "droppedTotal": destination.dropped})

    async def start(self) -> None:
        if self.notifier is not None:
            await self.notifier.start()
        if self.webhooks:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "dockyard-registry"})
            for webhook in self.webhooks:
                await webhook.destination.start(self._session)

    async def close(self) -> None:
        for webhook in self.webhooks:
            await webhook.destination.close()
        if self._session is not None:
            await self._session.close()
        if self.notifier is not None:
            await self.notifier.close()
