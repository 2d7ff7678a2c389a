"""Delivering the registry's events over HTTP: one engine for webhooks and for the operator.

Every event is a CloudEvent 1.0 in structured JSON mode, POSTed to a destination:

    POST <url>
    Content-Type: application/cloudevents+json
    X-Dockyard-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with the destination's key>

    {"specversion": "1.0", "id": "<uuid4>", "source": "/registries/<namespace>/<name>",
     "type": "dev.dockyard.registry.push", "time": "2026-01-02T03:04:05.678Z",
     "subject": "team/app:v1", "datacontenttype": "application/json",
     "data": {"repository": "team/app", "tag": "v1", "digest": "sha256:...",
              "mediaType": "...", "size": 1234, "actor": "alice"}}

A receiver recomputes the HMAC over the raw body it got and compares in constant time; the
event's `id` identifies it across retries, so a receiver can drop a repeated delivery.

Each destination has a bounded queue and one task that drains it in order, so a request of
the registry never waits for a receiver: `Destination.submit` only appends. A full queue drops
its oldest event (counted): the newest events are the ones still worth delivering. The task
POSTs each event with a short timeout; a connection error, a timeout, 5xx or 429 is retried
after an exponential backoff with full jitter (a `Retry-After` is honoured within the retry window),
until `retry_for` after the event happened (at least 10 minutes by default), then the event
is dropped and counted. Any other answer of 300 or more drops it at once: asking again would
get the same answer. A missing key file is retried too (the mounted Secret may not be there yet);
nothing is ever sent unsigned.

The key is a mounted Secret, which Kubernetes updates by swapping a symlink, so `KeyFile`
reads it again whenever its (inode, size, mtime) changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email.utils
import hashlib
import hmac
import json
import logging
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from dockyard.registry.config import DeliveryConfig

log = logging.getLogger("dockyard.registry.delivery")

CONTENT_TYPE = "application/cloudevents+json"
SIGNATURE_HEADER = "X-Dockyard-Signature"
TYPE_PREFIX = "dev.dockyard.registry."
OUTCOMES = ("delivered", "retried", "dropped")


class KeyFile:
    """A key or token in a file, read again whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._key: str | None = None

    def current(self) -> str | None:
        """Blocking (stat, maybe read): call it from a thread. None while the file is missing or empty.

        Surrounding whitespace is not part of the key: a Secret made from a file often ends in a newline.
        """
        try:
            st = os.stat(self.path)
        except OSError:
            self._signature, self._key = None, None
            return None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature != self._signature:
            try:
                self._key = self.path.read_text().strip() or None
            except (OSError, UnicodeDecodeError):
                self._key = None
            self._signature = signature
        return self._key


def sign(key: bytes, body: bytes) -> str:
    """The `X-Dockyard-Signature` value of BODY."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def cloud_event(type_: str, source: str, subject: str | None, data: dict[str, Any]) -> bytes:
    """A CloudEvent 1.0 in structured JSON mode, as the body of a POST."""
    event: dict[str, Any] = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": source,
                             "type": TYPE_PREFIX + type_, "time": now_rfc3339(),
                             "datacontenttype": "application/json", "data": data}
    if subject is not None:
        event["subject"] = subject
    return json.dumps(event, separators=(",", ":")).encode()


@dataclass
class Pending:
    """An event waiting for, or in, delivery."""

    body: bytes
    label: str
    """What the log lines call it: `push of team/app:v1`."""
    created: float = field(default_factory=time.monotonic)
    attempts: int = 0


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); None without a usable one."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff(config: DeliveryConfig, attempts: int, rng: Callable[[], float] = random.random) -> float:
    """Full jitter: a random delay up to initial * 2^(attempts-1), capped at retry_max; never below a tenth
    of the cap's step, so a burst of retries cannot spin."""
    step = min(config.retry_max, config.retry_initial * 2.0 ** min(attempts - 1, 30))
    return max(step * rng(), step / 10)


class Failure(Exception):
    """One delivery attempt that did not succeed; `retry` says whether another may."""

    def __init__(self, reason: str, *, retry: bool, wait: float | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.wait = wait
        self.status = status


class Destination:
    """A receiver of events: its bounded queue, and the task that delivers them in order."""

    def __init__(self, name: str, url: str, key: KeyFile, config: DeliveryConfig, *,
                 count: Callable[[str], None], failed: Callable[[Destination, Failure], None] | None = None,
                 what: str = "event") -> None:
        self.name = name
        self.url = url
        self.host = urlsplit(url).netloc
        self.key = key
        self.config = config
        self.count = count
        """Called with each outcome: delivered, retried, dropped."""
        self.failed = failed
        """Called after every attempt that did not succeed (to tell someone; must not block)."""
        self.what = what
        self.queue: deque[Pending] = deque()
        self.dropped = 0
        """Events dropped so far, for whoever reports failures."""
        self._current: Pending | None = None
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Events waiting, the one being delivered included."""
        return len(self.queue) + (self._current is not None)

    def submit(self, body: bytes, label: str) -> None:
        """Queue an event without waiting; when the queue is full its oldest waiting event is dropped."""
        if len(self.queue) >= self.config.queue_size:
            self._drop(self.queue.popleft(), f"{self.config.queue_size} newer events are waiting")
        self.queue.append(Pending(body, label))
        self._wake.set()

    def _drop(self, pending: Pending, reason: str) -> None:
        self.dropped += 1
        self.count("dropped")
        log.warning("%s %s dropped (%s): %s", self.what, pending.label, self.url, reason)

    async def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._task = asyncio.create_task(self._drain(), name=f"deliver-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _drain(self) -> None:
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._current = pending = self.queue.popleft()
            try:
                await self._deliver(pending)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one event stop the others
                log.exception("%s %s for %s failed", self.what, pending.label, self.url)
                self.dropped += 1
                self.count("dropped")
            finally:
                self._current = None

    async def _deliver(self, pending: Pending) -> None:
        """Attempt, and retry, until delivered or dropped."""
        while True:
            pending.attempts += 1
            try:
                await self._post(pending)
            except Failure as failure:
                elapsed = time.monotonic() - pending.created
                give_up = not failure.retry or elapsed >= self.config.retry_for
                if give_up:
                    self._drop(pending, failure.reason if not failure.retry else
                               f"{failure.reason}; given up after {pending.attempts} attempts in {elapsed:.0f}s")
                if self.failed is not None:
                    self.failed(self, failure)
                if give_up:
                    return
                delay = backoff(self.config, pending.attempts)
                if failure.wait is not None:  # honoured as far as the event's retry window reaches
                    delay = max(delay, min(failure.wait, self.config.retry_for - elapsed))
                self.count("retried")
                log_ = log.warning if pending.attempts == 1 else log.info
                log_("%s %s not delivered (%s): %s; attempt %d in %.1fs", self.what, pending.label,
                     self.url, failure.reason, pending.attempts + 1, delay)
                await asyncio.sleep(delay)
                continue
            self.count("delivered")
            return

    async def _post(self, pending: Pending) -> None:
        assert self._session is not None, "start() first"
        key = await asyncio.to_thread(self.key.current)
        if key is None:
            raise Failure(f"no key in {self.key.path}", retry=True)
        headers = {"Content-Type": CONTENT_TYPE, SIGNATURE_HEADER: sign(key.encode(), pending.body)}
        try:
            async with self._session.post(self.url, data=pending.body, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                                          allow_redirects=False) as response:
                status = response.status
                detail = " ".join((await response.text(errors="replace"))[:200].split()) if status >= 300 else ""
                wait = retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise Failure(str(e) or type(e).__name__, retry=True) from None
        if status < 300:
            return
        reason = f"{status} {detail}".strip()
        raise Failure(reason, retry=status >= 500 or status == 429, wait=wait, status=status)
