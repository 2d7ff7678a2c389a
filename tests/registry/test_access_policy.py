"""Who may see what: /metrics with authentication, anonymous pull's limits, read-only and GC.

The choices (see `dockyard.registry.app`): /metrics needs no credentials because it names no
repository; with `--anonymous-pull`, anonymous clients may pull blobs, manifests and tags of
any repository they can name, but may not list the catalog or look at upload sessions; and
`--read-only` also stops the scheduled garbage collection.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry.conftest import Client, digest_of, write_htpasswd
from tests.registry.processes import DOCKYARD, RegistryProcess, free_port, start_dockyard

ALICE = ("alice", "wonderland")


@pytest.fixture(scope="module")
def anonymous_pull(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    workdir = tmp_path_factory.mktemp("policy")
    htpasswd = write_htpasswd(workdir / "htpasswd", {ALICE[0]: ALICE[1]})
    with start_dockyard(workdir / "root", "--htpasswd", str(htpasswd), "--anonymous-pull") as proc:
        yield proc


def test_metrics_need_no_credentials_and_name_no_repository(anonymous_pull: RegistryProcess) -> None:
    alice = Client(anonymous_pull.url, ALICE)
    alice.push_image("secret-project/app", "v1")
    r = Client(anonymous_pull.url).request("GET", "/metrics")
    assert r.status == 200
    assert b"dockyard_registry_http_requests_total" in r.body
    assert b"secret-project" not in r.body


def test_anonymous_clients_pull_but_do_not_list_the_catalog(anonymous_pull: RegistryProcess) -> None:
    alice = Client(anonymous_pull.url, ALICE)
    _, manifest = alice.push_image("listed/app", "v1", layers=[b"layer of listed/app"])
    anon = Client(anonymous_pull.url)
    assert anon.request("GET", "/v2/listed/app/manifests/v1").body == manifest
    assert anon.request("GET", f"/v2/listed/app/blobs/{digest_of(b'layer of listed/app')}").status == 200
    assert anon.request("GET", "/v2/listed/app/tags/list").json()["tags"] == ["v1"]
    for path in ("/v2/_catalog", "/v2/_catalog?n=1", "/v2/%5Fcatalog"):
        r = anon.request("GET", path)
        assert r.status == 401, path
        assert r.error_codes() == ["UNAUTHORIZED"]
    assert "listed/app" in alice.request("GET", "/v2/_catalog").json()["repositories"]


def test_upload_status_needs_credentials(anonymous_pull: RegistryProcess) -> None:
    alice = Client(anonymous_pull.url, ALICE)
    location = alice.start_upload("uploads/app")
    anon = Client(anonymous_pull.url)
    for method in ("GET", "HEAD"):
        r = anon.request(method, location)
        assert r.status == 401, method
        assert r.header("WWW-Authenticate") == 'Basic realm="dockyard"'
    assert alice.request("GET", location).status == 204


def _metric(proc: RegistryProcess, name: str) -> float:
    for line in Client(proc.url).request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"/metrics has no {name}")


def _gc_skipped_events(proc: RegistryProcess) -> list[str]:
    return [line for line in proc.output().splitlines() if '"event": "gc skipped' in line]


def test_read_only_mode_skips_scheduled_gc_and_says_so_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    orphan = b"nobody references me"
    blob = root / "blobs" / "sha256" / digest_of(orphan)[7:9] / digest_of(orphan)[7:]
    blob.parent.mkdir(parents=True)
    blob.write_bytes(orphan)
    config = tmp_path / "config.yaml"
    config.write_text("gc: {interval: 100ms, gracePeriod: 0s, deleteUntagged: true}\n")
    port = free_port()
    proc = RegistryProcess([DOCKYARD, "registry", "serve", "--config", str(config), "--root", str(root),
                            "--addr", f"127.0.0.1:{port}", "--read-only"], port, root, tmp_path / "serve.log")
    with proc.start():
        deadline = time.monotonic() + 30
        while _metric(proc, "dockyard_registry_gc_skipped_total") < 3:
            assert time.monotonic() < deadline, "no scheduled GC run was skipped within 30s"
            time.sleep(0.05)
        assert _metric(proc, "dockyard_registry_gc_runs_total") == 0
        assert blob.exists()
        assert len(_gc_skipped_events(proc)) == 1
