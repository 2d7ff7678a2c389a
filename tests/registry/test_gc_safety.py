"""Garbage collection never takes what a push was acknowledged for.

A 201 for a manifest promises the image is pullable: its config, layers and child manifests
must outlive any GC pass that runs before, during or after the push, whatever the grace
period. The deterministic cases stop a pass between marking and sweeping (the window where
the old mtime-only design lost data) and push into it; the stress test runs pushers against
a GC loop at grace 0 and pulls every acknowledged image afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dockyard.registry import gc
from dockyard.registry.gc import collect
from dockyard.registry.storage import FilesystemStorage
from tests.registry.conftest import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Client, digest_of
from tests.registry.processes import DOCKYARD, start_dockyard

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
HOURS_AGO = time.time() - 3 * 3600


def _age(root: Path) -> None:
    """Make every stored file look hours old, as if written long before the GC pass."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            os.utime(Path(dirpath) / f, (HOURS_AGO, HOURS_AGO))


def _manifest(config: tuple[str, int], layers: list[tuple[str, int]]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers]}).encode()


def _index(children: list[tuple[str, int]]) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": d, "size": s,
         "platform": {"architecture": "amd64", "os": "linux"}} for d, s in children]}).encode()


def _blob_intact(c: Client, repo: str, digest: str) -> bool:
    r = c.request("GET", f"/v2/{repo}/blobs/{digest}")
    return r.status == 200 and "sha256:" + hashlib.sha256(r.body).hexdigest() == digest


def _pullable(c: Client, repo: str, ref: str) -> bool:
    """Manifest, and recursively every child manifest and blob, served and intact."""
    m = c.request("GET", f"/v2/{repo}/manifests/{ref}")
    if m.status != 200 or (":" in ref and digest_of(m.body) != ref):
        return False
    doc = m.json()
    for child in doc.get("manifests", []):
        if not _pullable(c, repo, child["digest"]):
            return False
    blobs = [doc["config"], *doc.get("layers", [])] if "config" in doc else []
    return all(_blob_intact(c, repo, b["digest"]) for b in blobs)


@pytest.fixture
def pause_after_mark(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], None]:
    """Run an action inside a GC pass, after it decided what is garbage and before it deletes."""
    actions: list[Callable[[], None]] = []
    original = gc.after_mark

    def hook() -> None:
        original()
        while actions:
            actions.pop(0)()

    monkeypatch.setattr(gc, "after_mark", hook)
    return actions.append


def test_index_pushed_during_a_pass_keeps_its_old_untagged_child(
        tmp_path: Path, pause_after_mark: Callable[[Callable[[], None]], None]) -> None:
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        child, child_body = c.push_image("app", None)  # untagged: garbage with deleteUntagged
        _age(root)
        pushed: list[int] = []

        def push_index() -> None:
            assert c.request("HEAD", f"/v2/app/manifests/{child}").status == 200
            pushed.append(c.push_manifest("app", "multi", _index([(child, len(child_body))]), OCI_INDEX).status)

        pause_after_mark(push_index)
        collect(FilesystemStorage(root), grace=3600, delete_untagged=True)
        assert pushed == [201]
        assert _pullable(c, "app", "multi"), "GC deleted the child of an index acknowledged during the pass"


@pytest.mark.parametrize("grace", [0.0, 3600.0])
def test_manifest_pushed_during_a_pass_keeps_its_blobs(
        grace: float, tmp_path: Path, pause_after_mark: Callable[[Callable[[], None]], None]) -> None:
    """The blobs were unreferenced when the pass marked; the manifest arrives before the sweep."""
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        config = json.dumps({"os": "linux"}).encode()
        layer = os.urandom(4096)
        blobs = [(c.push_blob("app", config), len(config)), (c.push_blob("app", layer), len(layer))]
        _age(root)
        statuses: list[int] = []

        def push_manifest() -> None:
            for d, _ in blobs:
                assert c.request("HEAD", f"/v2/app/blobs/{d}").status == 200
            statuses.append(c.push_manifest("app", "v1", _manifest(blobs[0], blobs[1:])).status)

        pause_after_mark(push_manifest)
        collect(FilesystemStorage(root), grace=grace)
        assert statuses == [201]
        assert _pullable(c, "app", "v1"), "GC deleted blobs of a manifest acknowledged during the pass"


def test_gc_reads_a_manifest_by_its_stored_type_not_by_its_shape(tmp_path: Path) -> None:
    """A Docker v2 manifest carrying an empty `manifests` list is still an image: keep its blobs."""
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        config = b'{"os":"linux"}'
        layer = os.urandom(2048)
        cfg, lay = (c.push_blob("app", config), len(config)), (c.push_blob("app", layer), len(layer))
        from dockyard.oci import Digest
        from dockyard.registry.storage import StoredManifest

        body = json.dumps({"schemaVersion": 2, "manifests": [],
                           "config": {"mediaType": OCI_CONFIG, "digest": cfg[0], "size": cfg[1]},
                           "layers": [{"mediaType": OCI_LAYER, "digest": lay[0], "size": lay[1]}]}).encode()
        # Stored directly: the registry now refuses this shape at PUT, older data may hold it.
        FilesystemStorage(root).put_manifest("app", "odd", StoredManifest(Digest.of(body), DOCKER_MANIFEST, body))
        _age(root)
        report = collect(FilesystemStorage(root), grace=0, delete_untagged=True)
        assert report.blobs_deleted == 0
        assert _pullable(c, "app", "odd")


def test_a_blob_committed_by_an_empty_put_gets_a_fresh_grace_period(tmp_path: Path) -> None:
    """PATCH long ago, PUT without a body now: the new blob is as young as the PUT."""
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        data = os.urandom(10_000)
        location = c.start_upload("app")
        patch = c.request("PATCH", location, body=data, headers={"Content-Type": "application/octet-stream"})
        assert patch.status == 202
        _age(root)  # the last PATCH was hours ago
        digest = digest_of(data)
        assert c.request("PUT", f"{location}?digest={digest}").status == 201
        report = collect(FilesystemStorage(root), grace=3600)
        assert report.blobs_deleted == 0
        assert _blob_intact(c, "app", digest)


def test_head_on_a_blob_protects_it_for_the_grace_period(tmp_path: Path) -> None:
    """A client checks a layer with HEAD, then pushes the manifest: GC between the two keeps it."""
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        digest = c.push_blob("app", os.urandom(4096))
        _age(root)
        assert c.request("HEAD", f"/v2/app/blobs/{digest}").status == 200
        assert collect(FilesystemStorage(root), grace=3600).blobs_deleted == 0
        assert _blob_intact(c, "app", digest)


def test_a_gc_killed_mid_pass_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             pause_after_mark: Callable[[Callable[[], None]], None]) -> None:
    """What a pass set aside before it died is put back by the next server start (and pass)."""
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        config = b'{"os":"linux"}'
        cfg = (c.push_blob("app", config), len(config))
        _age(root)
        statuses: list[int] = []

        def push() -> None:
            statuses.append(c.push_manifest("app", "v1", _manifest(cfg, [])).status)

        pause_after_mark(push)

        class Killed(Exception):
            pass

        def die(_: object) -> None:
            raise Killed

        with monkeypatch.context() as m:
            m.setattr(gc.Sweep, "recheck", die)
            with pytest.raises(Killed):
                collect(FilesystemStorage(root), grace=0)
        assert statuses == [201]
        assert not _pullable(c, "app", "v1"), "the pass died before it set the config blob aside"
        server.restart()  # a server start puts back what the dead pass set aside
        assert _pullable(c, "app", "v1")
        collect(FilesystemStorage(root), grace=0)
        assert _pullable(c, "app", "v1")


# ---- stress: pushers against a GC loop at grace 0 --------------------------------------------


@dataclass
class Ledger:
    """What the registry acknowledged and has not been asked to delete since."""

    images: dict[tuple[str, str], str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


def _push_blob_if_missing(c: Client, repo: str, data: bytes) -> tuple[str, int]:
    digest = digest_of(data)
    if c.request("HEAD", f"/v2/{repo}/blobs/{digest}").status != 200:
        c.push_blob(repo, data)
    return digest, len(data)


def _pusher(c: Client, worker: int, stop: threading.Event, ledger: Ledger, shared: list[bytes]) -> None:
    rng = random.Random(worker)
    repo = f"stress/w{worker % 2}"
    n = 0
    while not stop.is_set():
        n += 1
        tag = f"w{worker}-{n}"
        try:
            config = json.dumps({"worker": worker, "n": n}).encode()
            layers = [os.urandom(rng.randint(100, 3000)), rng.choice(shared)]
            cfg = _push_blob_if_missing(c, repo, config)
            lays = [_push_blob_if_missing(c, repo, layer) for layer in layers]
            body = _manifest(cfg, lays)
            if rng.random() < 0.4:  # a multi-arch push: the child is untagged until the index lands
                child = c.push_manifest(repo, digest_of(body), body)
                if child.status != 201:
                    ledger.refused += 1
                    continue
                body, media_type = _index([(digest_of(body), len(body))]), OCI_INDEX
            else:
                media_type = OCI_MANIFEST
            r = c.push_manifest(repo, tag, body, media_type)
            if r.status == 201:
                with ledger.lock:
                    ledger.images[(repo, tag)] = digest_of(body)
                    ledger.acknowledged += 1
            elif r.error_codes() and set(r.error_codes()) <= {"MANIFEST_BLOB_UNKNOWN"}:
                ledger.refused += 1  # GC took an unreferenced blob first: the push failed, visibly
            else:
                ledger.errors.append(f"{r.status} {r.body[:200]!r}")
            if r.status == 201 and rng.random() < 0.15:  # delete an earlier image: its blobs become garbage
                with ledger.lock:
                    mine = [k for k in ledger.images if k[0] == repo]
                    victim = rng.choice(mine) if mine else None
                    digest = ledger.images.pop(victim) if victim else None
                if victim and digest:
                    c.request("DELETE", f"/v2/{repo}/manifests/{digest}")
        except AssertionError:  # a blob upload answered an error: GC cannot cause that
            ledger.errors.append(f"blob push failed for {tag}")


def test_every_acknowledged_push_survives_a_gc_loop_at_grace_zero(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("gc: {interval: 200ms, gracePeriod: 0s, deleteUntagged: true}\n")
    with start_dockyard(tmp_path / "root", "--config", str(config)) as proc:
        c = Client(proc.url)
        shared = [f"shared base layer {i}".encode() * 100 for i in range(4)]
        ledger = Ledger()
        stop = threading.Event()
        threads = [threading.Thread(target=_pusher, args=(c, w, stop, ledger, shared)) for w in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ledger.errors:
            stop.wait(0.5)
        stop.set()
        for t in threads:
            t.join(60)
        assert not ledger.errors
        broken = [k for k, d in ledger.images.items() if not _pullable(c, k[0], k[1])]
        metrics = c.request("GET", "/metrics").body.decode()
        stats = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                 if line.startswith("dockyard_registry_gc_")}
    assert ledger.acknowledged >= 50, "too few pushes to have raced the collector"
    assert stats.get("dockyard_registry_gc_runs_total", 0) >= 20, stats
    assert stats.get("dockyard_registry_gc_freed_bytes_total", 0) > 0, stats
    assert not broken, f"{len(broken)} of {ledger.acknowledged} acknowledged pushes broken: {broken[:5]}"


def test_one_pass_at_a_time_and_a_dead_pass_frees_the_lock(tmp_path: Path) -> None:
    """Replicas sharing storage may all schedule GC; a second pass refuses while one runs."""
    root = tmp_path / "root"
    lock = FilesystemStorage(root).root / "gc" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text('{"host": "replica-1", "pid": 1}')
    argv = [DOCKYARD, "registry", "gc", "--root", str(root)]
    busy = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert busy.returncode == 1
    assert "another garbage collection" in busy.stderr
    assert "replica-1" in busy.stderr
    os.utime(lock, (HOURS_AGO, HOURS_AGO))  # its holder stopped refreshing it: it died
    taken = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert taken.returncode == 0, taken.stderr
    assert not lock.exists()


def test_what_a_push_acknowledges_is_flushed_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Power loss cannot be produced here; the test records which files and directories reach fsync."""
    from dockyard.oci import Digest
    from dockyard.registry.storage import StoredManifest

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    storage = FilesystemStorage(tmp_path / "root")
    data = b"layer bytes"
    upload = storage.create_upload("app")
    storage.upload_data(upload.id).write_bytes(data)
    blob = Digest.of(data)
    synced.clear()
    storage.commit_upload("app", upload.id, blob, None)
    blob_path = storage.blob_path(blob)
    assert str(storage.upload_data(upload.id)) in synced, "the blob's bytes were not flushed"
    assert str(blob_path.parent) in synced, "the blob's directory entry was not flushed"
    layers = storage.root / "repositories" / "app" / "_layers" / blob.algorithm
    for directory in (layers, layers.parent, layers.parent.parent, storage.root / "repositories"):
        assert str(directory) in synced, f"{directory}: the repository's link to the blob was not flushed"

    body = _manifest((str(blob), len(data)), [])
    synced.clear()
    storage.put_manifest("app", "v1", StoredManifest(Digest.of(body), OCI_MANIFEST, body))
    for path in (storage.blob_path(Digest.of(body)).parent, storage.revision_path("app", Digest.of(body)).parent,
                 storage.root / "repositories" / "app" / "_manifests" / "tags"):
        assert str(path) in synced, f"{path} was not flushed"
