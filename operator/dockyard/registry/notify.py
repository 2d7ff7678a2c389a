"""Push notifications: the registry tells the operator which tag was just pushed.

A ReplicationPolicy with `trigger.onPush` runs when a tag is pushed to its Dockyard source
(`dockyard.controller.push` receives the events). After a manifest PUT that set a tag has
been stored, the server queues, once per tag, a CloudEvent (see `registry.delivery`):

    POST <notify.url>
    Content-Type: application/cloudevents+json
    X-Dockyard-Signature: sha256=<HMAC-SHA256 of the body, keyed with the token in notify.tokenFile>

    {"specversion": "1.0", "type": "dev.dockyard.registry.push", "source": "/registries/<ns>/<name>",
     "subject": "<repository>:<tag>", "data": {"repository", "tag", "digest", "mediaType", "size", "actor"}, ...}

The same destination carries `dev.dockyard.registry.webhook.failed` events, at most one a
minute per failing webhook (see `registry.webhooks`), which the operator turns into Warning
Events on the Registry, and `dev.dockyard.registry.quota` events with the usage of every quota
whenever it changed (checked every QUOTA_REPORT_SECONDS), which the operator writes into
status.quotas, and `dev.dockyard.registry.storage` events (the volume's used and total bytes, and
whether writes hit a full disk) when they changed, which become status.storage and the
StorageFull and StorageNearlyFull conditions.

A push never waits for the operator: the events go through the webhooks' delivery engine, a
bounded queue drained by one task, retried with backoff when the operator is unreachable or
answers 5xx, dropped (with a log line, counted in /metrics) when the queue is full or the
retries run out; the policy's next push or its schedule makes up for a lost event. The token
file is a mounted Secret, re-read whenever it changes.
"""

from __future__ import annotations

import aiohttp

from dockyard.registry.config import NotifyConfig
from dockyard.registry.delivery import Destination, KeyFile, cloud_event
from dockyard.registry.metrics import Metrics

TokenFile = KeyFile
"""The events token is the HMAC key of the operator's destination."""

_RESULTS = {"delivered": "sent", "retried": "retried", "dropped": "dropped"}


class Notifier:
    """The operator as a destination of push and webhook-failure events."""

    def __init__(self, config: NotifyConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.source = registry_source(config.namespace, config.name)
        self.destination = Destination("operator", config.url, KeyFile(config.token_file), config.delivery,
                                       count=lambda outcome: metrics.notification(_RESULTS[outcome]),
                                       what="event")
        metrics.notification_depth = lambda: self.destination.depth
        # Usage reports queue apart (counted as reports), so a backlog of them never delays or
        # crowds out a push event, nor the other way round.
        self.reports = Destination("operator-reports", config.url, KeyFile(config.token_file), config.delivery,
                                   count=lambda outcome: metrics.report(_RESULTS[outcome]), what="report")
        self._session: aiohttp.ClientSession | None = None

    def pushed(self, repository: str, tag: str, data: dict[str, object]) -> None:
        """Queue the push event of one tag without waiting."""
        body = cloud_event("push", self.source, f"{repository}:{tag}", data)
        self.destination.submit(body, f"push of {repository}:{tag}")

    def webhook_failed(self, data: dict[str, object]) -> None:
        body = cloud_event("webhook.failed", self.source, str(data["webhook"]), data)
        self.destination.submit(body, f"failure report of webhook {data['webhook']}")

    def quota_usage(self, quotas: list[dict[str, object]]) -> None:
        """Queue the usage of every quota (the operator shows it in the Registry's status.quotas)."""
        body = cloud_event("quota", self.source, None, {"quotas": quotas})
        self.reports.submit(body, "quota usage report")

    def storage_usage(self, usage: dict[str, object]) -> None:
        """Queue the storage's usage (bytes used, capacity, whether writes hit a full disk)."""
        body = cloud_event("storage", self.source, None, usage)
        self.reports.submit(body, "storage usage report")

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": "dockyard-registry"})
        await self.destination.start(self._session)
        await self.reports.start(self._session)

    async def close(self) -> None:
        await self.destination.close()
        await self.reports.close()
        if self._session is not None:
            await self._session.close()


def registry_source(namespace: str, name: str) -> str:
    """The CloudEvents `source` of a Registry's events."""
    return f"/registries/{namespace}/{name}"
