"""Push notifications: the registry tells the operator which tag was just pushed.

A ReplicationPolicy with `trigger.onPush` runs when a tag is pushed to its Dockyard source
(`dockyard.controller.push` receives the events). After a manifest PUT that set a tag has
been stored, the server queues, once per tag:

    POST <notify.url>
    Authorization: Bearer <the token in notify.tokenFile>

    {"registry": {"namespace": ..., "name": ...}, "repository": ..., "tag": ..., "digest": ...}

A push never waits for the operator: events go into a bounded queue that one background task
drains, posting each with a short timeout. A full queue, an unreachable operator or a refusal
drops the event with a log line and counts it in /metrics; the policy's next push or its
schedule makes up for a lost event. The token file is a mounted Secret, which Kubernetes
updates by swapping a symlink, so it is re-read whenever its (inode, size, mtime) changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from dockyard.registry.config import NotifyConfig
from dockyard.registry.metrics import Metrics

log = logging.getLogger("dockyard.registry.notify")


@dataclass(frozen=True)
class PushEvent:
    repository: str
    tag: str
    digest: str


class TokenFile:
    """The bearer token, read again whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._token: str | None = None

    def current(self) -> str | None:
        """Blocking (stat, maybe read): call it from a thread. None while the file is missing or empty."""
        try:
            st = os.stat(self.path)
        except OSError:
            self._signature, self._token = None, None
            return None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature != self._signature:
            try:
                self._token = self.path.read_text().strip() or None
            except OSError:
                self._token = None
            self._signature = signature
        return self._token


class Notifier:
    """A bounded queue of push events and the task that posts them to the operator."""

    def __init__(self, config: NotifyConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.token = TokenFile(config.token_file)
        self.queue: asyncio.Queue[PushEvent] = asyncio.Queue(config.queue_size)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def pushed(self, repository: str, tag: str, digest: str) -> None:
        """Queue an event without waiting; drop it (with a log line) when the queue is full."""
        try:
            self.queue.put_nowait(PushEvent(repository, tag, digest))
        except asyncio.QueueFull:
            self.metrics.notification("dropped")
            log.warning("push event for %s:%s dropped: %d events are waiting for %s",
                        repository, tag, self.queue.qsize(), self.config.url)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            headers={"User-Agent": "dockyard-registry"})
        self._task = asyncio.create_task(self._drain())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _drain(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                ok = await self._post(event)
            except Exception:  # never let one event stop the others
                log.exception("push event for %s:%s failed", event.repository, event.tag)
                ok = False
            finally:
                self.queue.task_done()
            self.metrics.notification("sent" if ok else "failed")

    async def _post(self, event: PushEvent) -> bool:
        assert self._session is not None, "start() first"
        token = await asyncio.to_thread(self.token.current)
        if token is None:
            log.warning("push event for %s:%s not sent: no token in %s",
                        event.repository, event.tag, self.config.token_file)
            return False
        body = {"registry": {"namespace": self.config.namespace, "name": self.config.name},
                "repository": event.repository, "tag": event.tag, "digest": event.digest}
        try:
            async with self._session.post(self.config.url, json=body,
                                          headers={"Authorization": f"Bearer {token}"}) as response:
                status = response.status
                detail = (await response.text())[:200] if status >= 300 else ""
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.warning("push event for %s:%s not sent to %s: %s", event.repository, event.tag,
                        self.config.url, str(e) or type(e).__name__)
            return False
        if status >= 300:
            log.warning("push event for %s:%s refused by %s: %d %s", event.repository, event.tag,
                        self.config.url, status, " ".join(detail.split()))
            return False
        return True
