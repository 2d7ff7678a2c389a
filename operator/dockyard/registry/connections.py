"""The registry's HTTP connections: what happens before a request reaches the application.

aiohttp answers requests it cannot parse itself, with a text body that quotes the offending
bytes, and logs the parser's message, which also quotes them. Those bytes can be a client's
credentials (`Authorization : Basic ...` with a space before the colon, or a control
character after the value), so `RegistryRequestHandler` answers such requests with a fixed
OCI error document and logs only the kind of error, never the input.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from dockyard.oci import ErrorCode

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
    """aiohttp's connection handler with error answers and logs that never quote the request."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if isinstance(exc, HttpProcessingError):
            log.info("rejected a malformed request from %s: %s", request.remote, type(exc).__name__)
        else:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:  # part of a response went out: the connection is unusable
            raise ConnectionError("a response was already being sent")
        return malformed_request_response(exc, status)


class ConnectionFactory:
    """The listener's protocol factory: one `RegistryRequestHandler` per accepted connection."""

    def __init__(self, server: web.Server, handler_args: dict[str, Any]) -> None:
        self.server = server
        self.handler_args = handler_args

    def __call__(self) -> asyncio.Protocol:
        return RegistryRequestHandler(self.server, loop=asyncio.get_running_loop(), **self.handler_args)
