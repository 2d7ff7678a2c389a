"""A receiver of the registry's events for the tests: a real aiohttp server on 127.0.0.1 in a thread.

It records every POST (path, headers, exact body) and answers as each path is told: a script
of statuses (then 200 once the script is used up), or never (a receiver that accepted the
request and hangs). The registry's storage and quota usage reports are answered at once and
not recorded unless asked for: they come on their own schedule.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

DEADLINE = 15.0


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc

    def signed_with(self, key: str) -> bool:
        expected = "sha256=" + hmac.new(key.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("X-Dockyard-Signature", ""), expected)


REPORT_TYPES = ("dev.dockyard.registry.storage", "dev.dockyard.registry.quota")


def _is_report(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("type") in REPORT_TYPES)
    except (ValueError, AttributeError):
        return False


class Receiver:
    def __init__(self, *, keep_reports: bool = False) -> None:
        self.keep_reports = keep_reports
        """Record the storage and quota usage reports too (else they are answered and forgotten)."""
        self.deliveries: list[Delivery] = []
        self.scripts: dict[str, list[int | tuple[int, dict[str, str]]]] = {}
        self.hanging: set[str] = set()
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._release: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, *statuses: int | tuple[int, dict[str, str]]) -> None:
        """Answer the next POSTs to PATH with these statuses (optionally with headers), then 200."""
        with self._lock:
            self.scripts[path] = list(statuses)

    def at(self, path: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if _is_report(body) and not self.keep_reports:
            return web.json_response({}, status=202)  # the registry's periodic usage reports
        with self._lock:
            self.deliveries.append(Delivery(request.path, dict(request.headers), body))
            script = self.scripts.get(request.path) or []
            answer = script.pop(0) if script else 200
        if request.path in self.hanging:
            assert self._release is not None
            await self._release.wait()
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return web.json_response({}, status=status, headers=headers)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.shutdown())
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10), "the receiver did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        def stop() -> None:
            assert self._release is not None
            self._release.set()
            self._loop.stop()
        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)


def wait_until(predicate: Callable[[], Any], message: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
