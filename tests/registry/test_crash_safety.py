"""A registry killed with SIGKILL mid-upload never serves a corrupt blob, and can carry on.

An OOM kill or a node failure hits a registry in the middle of a layer push. What users must
never see afterwards is a blob whose bytes do not match its digest, or a half-written blob that
clients then skip ("already exists") forever. Each test kills the server with SIGKILL while a
request body is only partly sent, restarts it on the same storage root and port, and checks
that the digest is 404 until the upload really completes, then serves exactly the right bytes.
The tests run against distribution too, which shows they demand nothing a registry cannot do.
"""

from __future__ import annotations

import hashlib
import random
import socket
import urllib.parse
from pathlib import Path

import pytest

from tests.registry.processes import Registries, RegistryProcess, Response, request

KINDS = ["dockyard", "distribution"]
MiB = 1024 * 1024
CHUNK = 8 * MiB
BLOB_SIZE = 6 * CHUNK + 12345  # not a multiple of the chunk size


def random_blob(seed: int, size: int = BLOB_SIZE) -> tuple[bytes, str]:
    data = random.Random(seed).randbytes(size)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def with_query(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urllib.parse.urlencode(params)


class Upload:
    """One blob upload session, driven the way a client drives it."""

    def __init__(self, server: RegistryProcess, repo: str) -> None:
        self.server = server
        started = request("POST", f"{server.url}/v2/{repo}/blobs/uploads/", data=b"")
        assert started.status == 202, f"POST upload -> {started.status} {started.body[:200]!r}"
        self.location = self._absolute(started)

    def _absolute(self, resp: Response) -> str:
        location = resp.headers["Location"]
        assert isinstance(location, str), "an upload response must carry Location"
        assert location, "an upload response must carry Location"
        return urllib.parse.urljoin(self.server.url + "/", location)

    def patch(self, data: bytes, start: int) -> Response:
        resp = request("PATCH", self.location, data=data, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(data) - 1}"})
        assert resp.status == 202, f"PATCH {start}+{len(data)} -> {resp.status} {resp.body[:200]!r}"
        self.location = self._absolute(resp)
        return resp

    def offset(self) -> int | None:
        """Bytes the registry holds for this upload, or None when it no longer knows it."""
        status = request("GET", self.location)
        if status.status == 404:
            return None
        assert status.status == 204, f"upload status -> {status.status} {status.body[:200]!r}"
        self.location = self._absolute(status)
        start, end = status.headers["Range"].removeprefix("bytes=").split("-")
        assert int(start) == 0
        return int(end) + 1

    def finish(self, digest: str, data: bytes = b"") -> Response:
        return request("PUT", with_query(self.location, digest=digest), data=data,
                       headers={"Content-Type": "application/octet-stream"})


def send_partial(url: str, method: str, total: int, body: bytes, headers: dict[str, str]) -> socket.socket:
    """Start METHOD URL announcing TOTAL body bytes, send only BODY and leave the request open."""
    parts = urllib.parse.urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30)
    head = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {total}",
            *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    sock.sendall("\r\n".join(head).encode() + body)
    return sock


def assert_absent(server: RegistryProcess, repo: str, digest: str) -> None:
    for method in ("HEAD", "GET"):
        got = request(method, f"{server.url}/v2/{repo}/blobs/{digest}")
        assert got.status == 404, f"{method} of an incomplete blob answered {got.status}"


def assert_exact(server: RegistryProcess, repo: str, digest: str, data: bytes) -> None:
    head = request("HEAD", f"{server.url}/v2/{repo}/blobs/{digest}")
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(data)
    got = request("GET", f"{server.url}/v2/{repo}/blobs/{digest}")
    assert got.status == 200
    assert hashlib.sha256(got.body).hexdigest() == digest.removeprefix("sha256:")
    assert got.body == data


@pytest.mark.parametrize("kind", KINDS)
def test_kill_mid_chunk_then_resume_or_restart(kind: str, tmp_path: Path) -> None:
    data, digest = random_blob(41)
    with Registries(tmp_path) as regs:
        server = regs.start(kind)
        upload = Upload(server, "crash/chunked")
        acknowledged = 0
        for _ in range(3):
            upload.patch(data[acknowledged:acknowledged + CHUNK], acknowledged)
            acknowledged += CHUNK
        assert_absent(server, "crash/chunked", digest)

        # The fourth chunk is half on the wire when the server dies.
        half = data[acknowledged:acknowledged + CHUNK // 2]
        sock = send_partial(upload.location, "PATCH", CHUNK, half, {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{acknowledged}-{acknowledged + CHUNK - 1}"})
        server.kill()
        sock.close()
        server.restart()
        assert_absent(server, "crash/chunked", digest)

        offset = upload.offset()
        if offset is None:  # the registry forgot the upload: the client starts over
            upload, offset = Upload(server, "crash/chunked"), 0
        assert offset <= acknowledged + len(half), "the registry claims bytes that were never sent"
        while offset < len(data):
            upload.patch(data[offset:offset + CHUNK], offset)
            offset = min(offset + CHUNK, len(data))
            assert_absent(server, "crash/chunked", digest)
        done = upload.finish(digest)
        assert done.status == 201, f"PUT -> {done.status} {done.body[:300]!r}"
        assert done.headers["Docker-Content-Digest"] == digest
        assert_exact(server, "crash/chunked", digest, data)

        server.kill()
        server.restart()
        assert_exact(server, "crash/chunked", digest, data)


@pytest.mark.parametrize("kind", KINDS)
def test_acknowledged_chunks_survive_a_restart(kind: str, tmp_path: Path) -> None:
    """Upload state lives on disk: after SIGKILL the session resumes where the 202s left it."""
    data, digest = random_blob(42, 3 * CHUNK + 7)
    with Registries(tmp_path) as regs:
        server = regs.start(kind)
        upload = Upload(server, "crash/resume")
        upload.patch(data[:CHUNK], 0)
        upload.patch(data[CHUNK:2 * CHUNK], CHUNK)
        server.kill()
        server.restart()

        assert upload.offset() == 2 * CHUNK, "acknowledged chunks must survive a crash"
        assert_absent(server, "crash/resume", digest)
        upload.patch(data[2 * CHUNK:], 2 * CHUNK)
        done = upload.finish(digest)
        assert done.status == 201, f"PUT -> {done.status} {done.body[:300]!r}"
        assert_exact(server, "crash/resume", digest, data)


@pytest.mark.parametrize("kind", KINDS)
def test_killed_monolithic_put_leaves_no_blob(kind: str, tmp_path: Path) -> None:
    data, digest = random_blob(43)
    with Registries(tmp_path) as regs:
        server = regs.start(kind)
        upload = Upload(server, "crash/mono")
        sock = send_partial(with_query(upload.location, digest=digest), "PUT", len(data),
                            data[:len(data) // 2], {"Content-Type": "application/octet-stream"})
        server.kill()
        sock.close()
        server.restart()
        assert_absent(server, "crash/mono", digest)

        again = Upload(server, "crash/mono")
        done = again.finish(digest, data)
        assert done.status == 201, f"PUT -> {done.status} {done.body[:300]!r}"
        assert_exact(server, "crash/mono", digest, data)


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_bodies_from_a_vanished_client_leave_no_blob(kind: str, tmp_path: Path) -> None:
    """The client dies instead: a truncated PUT and a truncated POST-only push store nothing."""
    data, digest = random_blob(44, 4 * MiB + 3)
    with Registries(tmp_path) as regs:
        server = regs.start(kind)
        upload = Upload(server, "crash/client")
        send_partial(with_query(upload.location, digest=digest), "PUT", len(data), data[:MiB],
                     {"Content-Type": "application/octet-stream"}).close()
        send_partial(f"{server.url}/v2/crash/client/blobs/uploads/?digest={digest}", "POST", len(data),
                     data[:2 * MiB], {"Content-Type": "application/octet-stream"}).close()
        assert_absent(server, "crash/client", digest)

        other, other_digest = random_blob(45, MiB)
        assert Upload(server, "crash/client").finish(other_digest, other).status == 201
        assert_absent(server, "crash/client", digest)
        assert Upload(server, "crash/client").finish(digest, data).status == 201
        assert_exact(server, "crash/client", digest, data)
