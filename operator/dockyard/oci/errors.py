"""The Distribution Specification's error codes and its JSON error body.

Every 4xx the registry returns carries `{"errors": [{"code", "message", "detail"}]}`;
clients (and the replication engine) branch on `code`, so the codes are an enum here.
"""

from __future__ import annotations

import enum
import json
from typing import Any


class ErrorCode(enum.Enum):
    """Spec error code -> default HTTP status and default message."""

    BLOB_UNKNOWN = (404, "blob unknown to registry")
    BLOB_UPLOAD_INVALID = (400, "blob upload invalid")
    BLOB_UPLOAD_UNKNOWN = (404, "blob upload unknown to registry")
    DIGEST_INVALID = (400, "provided digest did not match uploaded content")
    MANIFEST_BLOB_UNKNOWN = (400, "manifest references a manifest or blob unknown to registry")
    MANIFEST_INVALID = (400, "manifest invalid")
    MANIFEST_UNKNOWN = (404, "manifest unknown to registry")
    NAME_INVALID = (400, "invalid repository name")
    NAME_UNKNOWN = (404, "repository name not known to registry")
    SIZE_INVALID = (400, "provided length did not match content length")
    UNAUTHORIZED = (401, "authentication required")
    DENIED = (403, "requested access to the resource is denied")
    UNSUPPORTED = (405, "the operation is unsupported")
    TOOMANYREQUESTS = (429, "too many requests")
    UNAVAILABLE = (503, "service unavailable")  # distribution's errcode; a dependency is down, retry

    @property
    def status(self) -> int:
        return self.value[0]

    @property
    def default_message(self) -> str:
        return self.value[1]


class OCIError(Exception):
    """One spec error; `status` may override the code's default HTTP status."""

    def __init__(self, code: ErrorCode, message: str | None = None, detail: Any = None,
                 status: int | None = None) -> None:
        self.code = code
        self.message = message or code.default_message
        self.detail = detail
        self.status = status or code.status
        super().__init__(f"{code.name}: {self.message}")

    def as_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code.name, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return entry


def error_body(*errors: OCIError) -> bytes:
    """The spec's JSON error document for one or more errors."""
    return json.dumps({"errors": [e.as_dict() for e in errors]}).encode()


def parse_error_body(body: bytes) -> list[tuple[str, str]]:
    """(code, message) pairs from an error document; empty when the body is not one."""
    try:
        doc = json.loads(body)
        return [(str(e["code"]), str(e.get("message", ""))) for e in doc["errors"]]
    except (ValueError, KeyError, TypeError):
        return []
