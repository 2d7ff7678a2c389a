"""The spec's error codes and JSON error body."""

from __future__ import annotations

import json

from dockyard.oci import ErrorCode, OCIError
from dockyard.oci.errors import error_body, parse_error_body

SPEC_CODES = {
    "BLOB_UNKNOWN": 404, "BLOB_UPLOAD_INVALID": 400, "BLOB_UPLOAD_UNKNOWN": 404, "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400, "MANIFEST_INVALID": 400, "MANIFEST_UNKNOWN": 404, "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404, "SIZE_INVALID": 400, "UNAUTHORIZED": 401, "DENIED": 403, "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
}
DISTRIBUTION_CODES = {"UNAVAILABLE": 503}  # distribution's errcode package, beyond the spec's table


def test_every_spec_code_exists_with_its_status() -> None:
    assert {c.name: c.status for c in ErrorCode} == SPEC_CODES | DISTRIBUTION_CODES


def test_error_body_round_trip() -> None:
    a = OCIError(ErrorCode.BLOB_UNKNOWN, detail={"digest": "sha256:x"})
    b = OCIError(ErrorCode.SIZE_INVALID, "too big", status=413)
    doc = json.loads(error_body(a, b))
    assert doc == {"errors": [
        {"code": "BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": {"digest": "sha256:x"}},
        {"code": "SIZE_INVALID", "message": "too big"},
    ]}
    assert b.status == 413
    assert parse_error_body(error_body(a)) == [("BLOB_UNKNOWN", "blob unknown to registry")]
    assert parse_error_body(b"<html>") == []
    assert parse_error_body(b'{"errors": 3}') == []
