"""The registry's HTTP connections: what happens before a request reaches the application.

aiohttp answers requests it cannot parse itself, with a text body that quotes the offending
bytes, and logs the parser's message, which also quotes them. Those bytes can be a client's
credentials (`Authorization : Basic ...` with a space before the colon, or a control
character after the value), so `RegistryRequestHandler` answers such requests with a fixed
OCI error document and logs only the kind of error, never the input.

A connection costs a file descriptor for as long as the client keeps it, so every phase of
one has a time limit (`HTTPLimits`): headers must be complete within `header_timeout` of
their first byte, an idle keep-alive connection (or a new one that sends nothing) is closed
after `idle_timeout`, and a request body that sends nothing for `body_timeout` is closed,
unless the server itself stopped reading it. `ConnectionFactory` closes connections beyond
`max_connections` as soon as they are accepted, and `DescriptorExhaustionLog` turns the
event loop's error per failed accept (thousands a second when descriptors run out) into
one line per interval.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from dockyard.oci import ErrorCode
from dockyard.registry.config import HTTPLimits

log = logging.getLogger("dockyard.registry")


def _status_of(exc: BaseException | None, status: int) -> int:
    """The parser's own 4xx status (400, 413 or 431), else the status aiohttp chose."""
    if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
        return exc.code
    return status


def malformed_request_response(exc: BaseException | None, status: int) -> web.Response:
    """An OCI error document that names the kind of problem and echoes nothing the client sent."""
    status = _status_of(exc, status)
    if status >= 500:
        error = {"code": "UNKNOWN", "message": "internal server error"}
    else:
        kind = type(exc).__name__ if exc is not None else "BadRequest"
        error = {"code": ErrorCode.UNSUPPORTED.name, "message": f"malformed HTTP request ({kind})"}
    response = web.Response(status=status, body=json.dumps({"errors": [error]}).encode(),
                            content_type="application/json")
    response.force_close()
    return response


class RegistryRequestHandler(RequestHandler):
    """aiohttp's connection handler with header and body timeouts, and error answers that quote nothing.

    aiohttp's own keep-alive timer (`keepalive_timeout`, set to `idle_timeout`) closes
    connections that have no request; the header timer added here starts at the first byte
    of a request, so a client trickling header bytes cannot stretch it.
    """

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, limits: HTTPLimits,
                 on_lost: Callable[[RegistryRequestHandler], None], **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, keepalive_timeout=limits.idle_timeout, **kwargs)
        self.limits = limits
        self._clock = loop
        self._on_lost = on_lost
        self._request: web.BaseRequest | None = None
        self._last_data = loop.time()
        self._server_paused = False
        self._timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        self._last_data = self._clock.time()
        if self._request is None and self._timer is None:
            self._timer = self._clock.call_later(self.limits.header_timeout, self._headers_overdue)
        super().data_received(data)

    def pause_reading(self) -> None:
        self._server_paused = True
        super().pause_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        self._server_paused = False
        super().resume_reading(resume_parser)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timer()
        self._on_lost(self)
        super().connection_lost(exc)

    def request_started(self, request: web.BaseRequest) -> None:
        """The headers are complete: the header timer stops, the body timer starts if a body is due."""
        self._cancel_timer()
        self._request = request
        if request.body_exists and not request.content.is_eof():
            self._timer = self._clock.call_at(self._last_data + self.limits.body_timeout, self._body_overdue)

    def request_finished(self) -> None:
        self._cancel_timer()
        self._request = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_overdue(self) -> None:
        self._timer = None
        if self._request is None:
            self._close_slow("request headers took longer than the header timeout")

    def _body_overdue(self) -> None:
        self._timer = None
        request = self._request
        if request is None or request.content.is_eof():
            return
        due = self._last_data + self.limits.body_timeout
        if self._server_paused or self._clock.time() < due:  # data came, or the wait is the server's
            self._timer = self._clock.call_at(max(due, self._clock.time() + 1.0), self._body_overdue)
            return
        self._close_slow("the request body sent nothing for the body timeout")

    def _close_slow(self, why: str) -> None:
        log.info("closed a connection from %s: %s", self.peername, why)
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            log.info("rejected a malformed request from %s: %s", request.remote, type(exc).__name__)
        else:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:  # part of a response went out: the connection is unusable
            raise ConnectionError("a response was already being sent")
        return malformed_request_response(exc, status)


@web.middleware
async def track_requests(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Tell the connection when a request's handler runs, so its header and body timers know the phase."""
    connection = request.protocol
    if not isinstance(connection, RegistryRequestHandler):
        return await handler(request)
    connection.request_started(request)
    try:
        return await handler(request)
    finally:
        connection.request_finished()


class _Refused(asyncio.Protocol):
    """A connection beyond the limit: closed as soon as it is accepted, before reading anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class ConnectionFactory:
    """The listener's protocol factory: a `RegistryRequestHandler` per connection, up to the limit."""

    def __init__(self, server: web.Server, limits: HTTPLimits, handler_args: dict[str, Any]) -> None:
        self.server = server
        self.limits = limits
        self.handler_args = handler_args
        self.open: set[RegistryRequestHandler] = set()
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        if len(self.open) >= self.limits.max_connections:
            self.refused += 1
            return _Refused()
        handler = RegistryRequestHandler(self.server, loop=asyncio.get_running_loop(), limits=self.limits,
                                         on_lost=self.open.discard, **self.handler_args)
        self.open.add(handler)
        return handler


OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class DescriptorExhaustionLog:
    """An event loop exception handler that reports failed accepts once per interval.

    When descriptors run out, asyncio reports every failed accept with a traceback (Python 3.11
    retries up to the backlog in one go): thousands of lines a second that bury everything
    else. One line per interval, with the count, says the same. Other errors go to the
    default handler.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.failures = 0
        self._next_report = 0.0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS):
            loop.default_exception_handler(context)
            return
        self.failures += 1
        now = loop.time()
        if now >= self._next_report:
            self._next_report = now + self.interval
            log.error("cannot accept connections: out of file descriptors or memory (%s); %d failed accepts "
                      "so far, reported at most every %gs", errno.errorcode.get(exc.errno or 0, "?"),
                      self.failures, self.interval)
