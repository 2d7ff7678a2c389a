"""Filesystem storage guarantees: a failed digest check or a crash never makes a blob visible,
identical concurrent pushes are safe, and an upload continues after a restart or on another
replica that shares the storage."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from dockyard.oci import Digest, ErrorCode, Hasher, OCIError
from dockyard.registry.drivers import WRITE_BYTES, FileAppender
from dockyard.registry.storage import FilesystemStorage, StoredManifest
from tests.registry.conftest import Client, digest_of
from tests.registry.processes import start_dockyard


def _files(path: Path) -> list[Path]:
    return [Path(d) / f for d, _, files in os.walk(path) for f in files]


def _upload(storage: FilesystemStorage, name: str, data: bytes) -> str:
    info = storage.create_upload(name)
    storage.upload_data(info.id).write_bytes(data)
    return info.id


def test_bad_digest_leaves_nothing_visible(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path)
    upload = _upload(s, "app", b"real content")
    wrong = Digest.parse(digest_of(b"claimed content"))
    with pytest.raises(OCIError) as e:
        s.commit_upload("app", upload, wrong, None)
    assert e.value.code is ErrorCode.DIGEST_INVALID
    assert _files(s.root / "blobs") == []
    assert s.blob_size("app", wrong) is None
    assert s.blob_size("app", Digest.parse(digest_of(b"real content"))) is None
    assert _files(s.root / "uploads") == []


def test_partial_upload_is_never_served(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path)
    data = os.urandom(10_000)
    _upload(s, "app", data[:5000])  # the process died here
    assert s.blob_size("app", Digest.parse(digest_of(data))) is None
    assert _files(s.root / "blobs") == []


def test_commit_rehashes_when_no_hash_state_is_in_memory(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path)
    data = os.urandom(9 * 1024 * 1024 + 3)  # more than one read chunk
    upload = _upload(s, "app", data)
    digest = Digest.parse(digest_of(data))
    assert s.commit_upload("app", upload, digest, None).size == len(data)
    assert s.blob_path(digest).read_bytes() == data


def test_commit_ignores_a_stale_hasher(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path)
    upload = _upload(s, "app", b"abcdef")
    stale = Hasher()
    stale.update(b"abc")  # another replica appended "def" since
    digest = Digest.parse(digest_of(b"abcdef"))
    assert s.commit_upload("app", upload, digest, stale).size == 6


def test_manifest_writes_leave_no_temp_files(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path)
    body = b'{"schemaVersion":2}'
    s.put_manifest("app", "v1", StoredManifest(Digest.of(body), "application/vnd.oci.image.manifest.v1+json", body))
    assert _files(s.root / "tmp") == []
    got = s.get_manifest("app", "v1")
    assert got is not None
    assert got.body == body


def test_storage_refuses_unsafe_names_even_if_called_directly(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path / "root")
    for name in ("../escape", "/abs", "a/../../b", "A", "a/_layers"):
        with pytest.raises(OCIError):
            s.create_upload(name)
    assert not (tmp_path / "escape").exists()


def test_referenced_blob_check_refreshes_its_age(tmp_path: Path) -> None:
    s = FilesystemStorage(tmp_path)
    digest = Digest.parse(digest_of(b"layer"))
    s.commit_upload("app", _upload(s, "app", b"layer"), digest, None)
    old = time.time() - 7200
    os.utime(s.blob_path(digest), (old, old))
    assert s.has_layer("app", digest)
    assert time.time() - s.blob_path(digest).stat().st_mtime < 60


def test_concurrent_identical_pushes(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = digest_of(data)
    with start_dockyard(tmp_path / "root") as server:
        c = Client(server.url)
        results: list[int] = []
        barrier = threading.Barrier(8)

        def push() -> None:
            location = c.start_upload("app")
            barrier.wait()
            results.append(c.request("PUT", f"{location}?digest={digest}", body=data).status)

        threads = [threading.Thread(target=push) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == [201] * 8
        assert c.request("GET", f"/v2/app/blobs/{digest}").body == data
        blob_files = _files(server.root / "blobs")
        assert len(blob_files) == 1
        deadline = time.monotonic() + 10  # committed sessions are removed after their 201
        while _files(server.root / "uploads") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _files(server.root / "uploads") == []
        assert _files(server.root / "tmp") == []


def test_upload_continues_after_restart(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024)
    half = len(data) // 2
    with start_dockyard(tmp_path / "root") as server:
        c = Client(server.url)
        location = c.start_upload("app")
        r = c.request("PATCH", location, body=data[:half], headers={"Content-Range": f"0-{half - 1}"})
        assert r.status == 202
        server.kill()  # SIGKILL: no chance to persist anything in memory
        server.start()
        status = c.request("GET", location)
        assert status.status == 204
        assert status.header("Range") == f"0-{half - 1}"
        r = c.request("PATCH", location, body=data[half:], headers={"Content-Range": f"{half}-{len(data) - 1}"})
        assert r.status == 202
        r = c.request("PUT", f"{location}?digest={digest_of(data)}")
        assert r.status == 201
        assert c.request("GET", f"/v2/app/blobs/{digest_of(data)}").body == data


def test_upload_continues_on_another_replica_with_shared_storage(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    data = os.urandom(1024 * 1024)
    third = len(data) // 3
    with start_dockyard(root) as a, start_dockyard(root) as b:
        ca, cb = Client(a.url), Client(b.url)
        location = ca.start_upload("app")
        assert ca.request("PATCH", location, body=data[:third],
                          headers={"Content-Range": f"0-{third - 1}"}).status == 202
        assert cb.request("GET", location).header("Range") == f"0-{third - 1}"
        assert cb.request("PATCH", location, body=data[third:2 * third],
                          headers={"Content-Range": f"{third}-{2 * third - 1}"}).status == 202
        # back on the first replica, whose in-memory hash state is now stale
        assert ca.request("PATCH", location, body=data[2 * third:],
                          headers={"Content-Range": f"{2 * third}-{len(data) - 1}"}).status == 202
        assert cb.request("PUT", f"{location}?digest={digest_of(data)}").status == 201
        assert ca.request("GET", f"/v2/app/blobs/{digest_of(data)}").body == data


def test_upload_finished_on_one_replica_is_unknown_on_the_other(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    with start_dockyard(root) as a, start_dockyard(root) as b:
        ca, cb = Client(a.url), Client(b.url)
        done = ca.start_upload("app")
        assert cb.request("PATCH", done, body=b"abc").status == 202  # b now holds hash state
        assert ca.request("PUT", f"{done}?digest={digest_of(b'abc')}").status == 201
        for method, body in (("PATCH", b"more"), ("PUT", b"")):
            r = cb.request(method, f"{done}?digest={digest_of(b'abc')}", body=body)
            assert r.status == 404, method
            assert r.error_codes() == ["BLOB_UPLOAD_UNKNOWN"]
        cancelled = ca.start_upload("app")
        assert cb.request("PATCH", cancelled, body=b"x").status == 202
        assert ca.request("DELETE", cancelled).status == 204
        assert cb.request("PATCH", cancelled, body=b"y").status == 404
        assert "Traceback" not in a.output() + b.output()


def test_appends_reach_the_file_whole_in_writes_of_bounded_size(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # One writev per batch made the kernel allocate page-cache folios as large as the batch;
    # the appender hands it at most WRITE_BYTES per call, and the file is still exactly the body.
    writes: list[int] = []
    real_writev = os.writev

    def writev(fd: int, buffers: list[memoryview]) -> int:
        writes.append(sum(len(b) for b in buffers))
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "writev", writev)
    path = tmp_path / "data"
    path.write_bytes(b"kept")
    chunks = [b"", os.urandom(1), os.urandom(WRITE_BYTES + 5), os.urandom(WRITE_BYTES), os.urandom(3),
              os.urandom(3 * WRITE_BYTES - 9)]
    appender = FileAppender(path, 4)
    appender.write(chunks)
    appender.close()
    assert path.read_bytes() == b"kept" + b"".join(chunks)
    assert max(writes) == WRITE_BYTES
    assert sum(writes) == sum(len(c) for c in chunks)
