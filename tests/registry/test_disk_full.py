"""A full disk: pushes answer 507 with an OCI error, pulls and readiness keep working, nothing is left behind.

The registry's root is a real 4 MiB tmpfs (tests run as root; without the privilege to mount
the test is skipped with the reason, or fails under CI=true).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry.conftest import Client, Response, digest_of
from tests.registry.processes import RegistryProcess, fill, start_dockyard, tmpfs

FULL_MESSAGE = "the registry's storage is full"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "4m") as disk:
        yield disk


def _assert_full(r: Response) -> None:
    assert r.status == 507, (r.status, r.body)
    errors = r.json()["errors"]
    assert errors[0]["code"] in ("DENIED", "UNKNOWN")
    assert errors[0]["message"] == FULL_MESSAGE


def _metric(server: RegistryProcess, name: str) -> float:
    for line in Client(server.url).request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"/metrics has no {name}")


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for d in ("tmp", "uploads") for p in (root / d).rglob("*"))


def test_a_full_disk_refuses_pushes_with_507_and_keeps_serving_pulls(small_disk: Path) -> None:
    root = small_disk / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        layer = b"pulled after the disk filled up"
        digest, manifest = c.push_image("app", "v1", layers=[layer])
        early_session = c.start_upload("app")
        assert _metric(server, "dockyard_registry_storage_full") == 0

        for _ in range(64):  # monolithic pushes until the disk is full
            data = os.urandom(256 * 1024)
            r = c.request("POST", f"/v2/app/blobs/uploads/?digest={digest_of(data)}", body=data,
                          headers={"Content-Type": "application/octet-stream"})
            if r.status != 201:
                break
        _assert_full(r)
        assert _metric(server, "dockyard_registry_storage_full") == 1

        fill(small_disk / "filler")
        _assert_full(c.request("POST", "/v2/app/blobs/uploads/", body=b""))
        _assert_full(c.request("PATCH", early_session, body=os.urandom(64 * 1024),
                               headers={"Content-Type": "application/octet-stream"}))
        _assert_full(c.push_manifest("app", "v2", manifest))

        assert c.request("GET", f"/v2/app/blobs/{digest_of(layer)}").body == layer
        assert c.request("GET", "/v2/app/manifests/v1").body == manifest
        assert c.request("GET", f"/v2/app/manifests/{digest}").status == 200
        for _ in range(3):
            assert c.request("GET", "/readyz").status == 200
        assert c.request("DELETE", early_session).status == 204
        assert _leftovers(root) == []

        (small_disk / "filler").unlink()
        c.push_blob("app", b"room again")
        assert _metric(server, "dockyard_registry_storage_full") == 0
