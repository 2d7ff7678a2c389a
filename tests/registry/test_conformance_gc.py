"""Online garbage collection: `dockyard registry gc` and the server's background schedule.

Unreferenced blobs go, referenced ones stay, nothing younger than the grace period is
touched, untagged manifests go only when asked, and a GC running while clients push never
breaks an image that was pushed completely.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from tests.registry.conftest import OCI_INDEX, OCI_MANIFEST, Client, digest_of
from tests.registry.processes import DOCKYARD, RegistryProcess, free_port, start_dockyard

HOURS_AGO = time.time() - 3 * 3600


def _gc(root: Path, *args: str) -> dict[str, object]:
    r = subprocess.run([DOCKYARD, "registry", "gc", "--root", str(root), "--json", *args],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    report: dict[str, object] = json.loads(r.stdout)
    return report


def _age_everything(root: Path) -> None:
    """Make all stored files look hours old, as if pushed long before this GC run."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            os.utime(Path(dirpath) / f, (HOURS_AGO, HOURS_AGO))


def _pullable(c: Client, repo: str, ref: str) -> bool:
    m = c.request("GET", f"/v2/{repo}/manifests/{ref}")
    if m.status != 200:
        return False
    doc = m.json()
    for desc in [doc.get("config"), *doc.get("layers", [])]:
        if desc and c.request("GET", f"/v2/{repo}/blobs/{desc['digest']}").status != 200:
            return False
    return True


def test_gc_removes_unreferenced_and_keeps_referenced_blobs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        c.push_image("app", "v1", layers=[b"kept layer"])
        orphan = c.push_blob("app", b"o" * 5000)
        _age_everything(root)
        report = _gc(root, "--grace-period", "1h")
        assert report["blobs_deleted"] == 1
        assert report["bytes_freed"] == 5000
        assert report["deleted"] == [orphan]
        assert c.request("GET", f"/v2/app/blobs/{orphan}").status == 404
        assert _pullable(c, "app", "v1")


def test_gc_summary_line_without_json(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        Client(server.url).push_blob("app", b"x" * 10)
    _age_everything(root)
    r = subprocess.run([DOCKYARD, "registry", "gc", "--root", str(root)], capture_output=True, text=True,
                       timeout=60, check=True)
    assert r.stdout.startswith("gc: freed 1 blobs (10 bytes)")


def test_gc_keeps_blobs_younger_than_the_grace_period(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        young = c.push_blob("app", b"pushed a moment ago; its manifest may be on its way")
        report = _gc(root, "--grace-period", "1h")
        assert report["blobs_deleted"] == 0
        assert report["blobs_kept_young"] == 1
        assert c.request("GET", f"/v2/app/blobs/{young}").status == 200


def test_gc_dry_run_deletes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        orphan = c.push_blob("app", b"orphan")
        _age_everything(root)
        report = _gc(root, "--dry-run", "--grace-period", "1h")
        assert report["dry_run"] is True
        assert report["blobs_deleted"] == 1
        assert c.request("GET", f"/v2/app/blobs/{orphan}").status == 200


def test_gc_delete_untagged_keeps_what_tags_reach(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        old, _ = c.push_image("app", "latest", layers=[b"old only"])
        new, new_body = c.push_image("app", "latest", layers=[b"new only"])
        # an index whose children are reachable only through the index
        child, child_body = c.push_image("app", None, layers=[b"child layer"])
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": child, "size": len(child_body)}]}).encode()
        assert c.push_manifest("app", "multi", index, OCI_INDEX).status == 201
        # a referrer of a live manifest stays, a referrer of the untagged one goes
        def referrer(subject: str, size: int, note: str) -> str:
            cfg = c.push_blob("app", note.encode())
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "x/y",
                               "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cfg,
                                          "size": len(note)},
                               "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": subject,
                                                         "size": size}}).encode()
            assert c.push_manifest("app", digest_of(body), body).status == 201
            return digest_of(body)
        live_ref = referrer(new, len(new_body), "signature of new")
        dead_ref = referrer(old, 1, "signature of old")
        _age_everything(root)

        without = _gc(root, "--grace-period", "1h")
        assert without["manifests_deleted"] == 0
        assert c.request("GET", f"/v2/app/manifests/{old}").status == 200

        report = _gc(root, "--grace-period", "1h", "--delete-untagged")
        assert report["manifests_deleted"] == 2
        assert c.request("GET", f"/v2/app/manifests/{old}").status == 404
        assert c.request("GET", f"/v2/app/manifests/{dead_ref}").status == 404
        assert c.request("GET", f"/v2/app/manifests/{live_ref}").status == 200
        assert c.request("GET", f"/v2/app/manifests/{child}").status == 200
        assert _pullable(c, "app", "latest")
        assert _pullable(c, "app", child)
        assert c.request("GET", f"/v2/app/blobs/{digest_of(b'old only')}").status == 404
        assert c.request("GET", f"/v2/app/blobs/{digest_of(b'child layer')}").status == 200


def test_background_gc_runs_online_while_clients_push(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text("gc: {interval: 200ms, gracePeriod: 10s, deleteUntagged: true}\n")
    port = free_port()
    proc = RegistryProcess([DOCKYARD, "registry", "serve", "--config", str(config), "--root", str(root),
                            "--addr", f"127.0.0.1:{port}"], port, root, tmp_path / "serve.log")
    with proc.start():
        c = Client(proc.url)
        orphan = c.push_blob("app", b"nobody references me")
        pushed: list[tuple[str, str]] = []
        errors: list[str] = []

        def pusher(worker: int) -> None:
            for i in range(15):
                repo = f"app/w{worker}"
                try:
                    layers = [os.urandom(20_000), f"shared base {i % 3}".encode()]
                    c.push_image(repo, f"v{i}", layers=layers)
                    pushed.append((repo, f"v{i}"))
                except AssertionError as e:
                    errors.append(str(e))
                time.sleep(0.05)

        threads = [threading.Thread(target=pusher, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors
        assert len(pushed) == 45
        deadline = time.monotonic() + 60
        # GET, not HEAD: a HEAD counts as a client about to reference the blob and restarts its grace period
        while c.request("GET", f"/v2/app/blobs/{orphan}").status != 404:
            assert time.monotonic() < deadline, "the background GC never removed the orphan blob"
            time.sleep(0.2)
        for repo, tag in pushed:
            assert _pullable(c, repo, tag), (repo, tag)
        metrics = c.request("GET", "/metrics").body.decode()
        runs = [line for line in metrics.splitlines() if line.startswith("dockyard_registry_gc_runs_total ")]
        assert runs
        assert float(runs[0].split()[1]) > 0


def test_gc_never_removes_an_upload_being_created(tmp_path: Path) -> None:
    """Between `mkdir` and its first file an upload directory is empty; GC must leave it alone."""
    from dockyard.registry.gc import STALE_UPLOAD_SECONDS, collect
    from dockyard.registry.storage import FilesystemStorage

    storage = FilesystemStorage(tmp_path / "root")
    fresh = storage.root / "uploads" / "fresh"
    fresh.mkdir()
    abandoned = storage.root / "uploads" / "abandoned"
    abandoned.mkdir()
    old = time.time() - STALE_UPLOAD_SECONDS - 60
    os.utime(abandoned, (old, old))

    report = collect(FilesystemStorage(tmp_path / "root"), grace=0)
    assert fresh.is_dir(), "an upload being created was deleted under the client"
    assert not abandoned.exists()
    assert report.uploads_deleted == 1
