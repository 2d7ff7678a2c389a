"""Conformance, bad input: invalid repository names (NAME_INVALID, never a path outside the
storage root), invalid digests and references, oversized headers and request lines, and the
spec's JSON error form on every 4xx."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.registry.conftest import Client, digest_of
from tests.registry.processes import RegistryProcess

BAD_NAMES = [
    "UPPER/case", "trailing-/slash", "double//slash", "-dash", "dot./x", "a..b",
    "_underscore", "x" * 256, "a/%2e%2e/b", "a%2F..%2F..%2Fetc", "semi;colon", "sp%20ace",
]


def _raw(client: Client, request_text: bytes) -> bytes:
    with socket.create_connection((client.host, client.port), timeout=10) as s:
        s.sendall(request_text)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def test_invalid_repository_names_are_400_name_invalid(client: Client) -> None:
    digest = digest_of(b"x")
    for name in BAD_NAMES:
        for method, path in (("GET", f"/v2/{name}/tags/list"), ("HEAD", f"/v2/{name}/manifests/latest"),
                             ("POST", f"/v2/{name}/blobs/uploads/"), ("GET", f"/v2/{name}/blobs/{digest}")):
            r = client.request(method, path, body=b"" if method == "POST" else None)
            assert r.status in (400, 404), (name, method, r.status)
            if method != "HEAD":
                assert r.error_codes()[0] in ("NAME_INVALID", "NAME_UNKNOWN"), (name, r.body)
    r = client.request("GET", "/v2/UPPER/tags/list")
    assert r.status == 400
    assert r.error_codes() == ["NAME_INVALID"]
    assert "UPPER" in r.json()["errors"][0]["message"]


def test_path_traversal_never_escapes_the_storage_root(client: Client, server: RegistryProcess,
                                                       tmp_path: Path) -> None:
    outside = server.root.parent / "outside-secret"
    outside.write_text("sensitive-bytes-42")
    for path in ("/v2/../../outside-secret/tags/list", "/v2/%2e%2e/%2e%2e/outside-secret/tags/list",
                 "/v2/a/blobs/uploads/..%2F..%2F..%2Foutside-secret", "/v2//etc/passwd/tags/list",
                 "/v2/a/manifests/..%2F..%2F..%2Foutside-secret",
                 "/v2/a/referrers/sha256:..%2F..%2F..%2Foutside-secret"):
        raw = _raw(client, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        status = int(raw.split(b" ", 2)[1])
        assert 400 <= status < 500, (path, raw[:200])
        assert b"sensitive-bytes-42" not in raw
    writes = [("POST", "/v2/%2e%2e/%2e%2e/escape/blobs/uploads/"),
              ("PUT", "/v2/a/manifests/..%2F..%2Fescape")]
    for method, path in writes:
        raw = _raw(client, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                           "Connection: close\r\n\r\n{}".encode())
        assert 400 <= int(raw.split(b" ", 2)[1]) < 500, (method, path)
    assert not list(server.root.parent.glob("escape*"))
    assert outside.read_text() == "sensitive-bytes-42"


def test_huge_headers_are_rejected_and_the_server_keeps_serving(client: Client) -> None:
    raw = _raw(client, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert _status(raw) // 100 == 4, raw[:100]
    raw = _raw(client, b"GET /v2/" + b"a" * 100_000 + b"/tags/list HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(raw) // 100 == 4, raw[:100]
    assert client.request("GET", "/v2/").status == 200


def test_garbage_request_does_not_crash_the_server(client: Client) -> None:
    _raw(client, b"\x00\xff\xfe garbage \r\n\r\n")
    _raw(client, b"PATCH /v2/a/blobs/uploads/x HTTP/1.1\r\nContent-Length: -5\r\n\r\n")
    assert client.request("GET", "/v2/").status == 200


def test_invalid_content_length_on_upload_is_rejected(client: Client, repo: str) -> None:
    location = client.start_upload(repo)
    raw = _raw(client, f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n"
                       "Connection: close\r\n\r\n".encode())
    assert _status(raw) // 100 == 4
    assert client.request("GET", location).header("Range") == "0-0"


def test_errors_use_the_spec_json_form(client: Client, repo: str) -> None:
    r = client.request("GET", f"/v2/{repo}/manifests/{digest_of(b'x')}")
    assert r.header("Content-Type", ).startswith("application/json")  # type: ignore[union-attr]
    doc = r.json()
    assert set(doc) == {"errors"}
    (err,) = doc["errors"]
    assert set(err) <= {"code", "message", "detail"}
    assert err["code"] == "NAME_UNKNOWN" or err["code"] == "MANIFEST_UNKNOWN"
    assert isinstance(err["message"], str)
    assert err["message"]


def test_unknown_endpoint_is_404(client: Client) -> None:
    r = client.request("GET", "/v2/a/b/c/unknown-endpoint")
    assert r.status == 404
    assert r.error_codes() == ["NAME_UNKNOWN"]


def test_no_unhandled_exceptions_in_the_server_log(client: Client, server: RegistryProcess) -> None:
    """Runs last in this module: nothing above made the server log a traceback."""
    assert client.request("GET", "/v2/").status == 200
    assert "Traceback" not in server.output()
