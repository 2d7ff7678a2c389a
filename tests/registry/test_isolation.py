"""Expensive requests must not starve cheap ones: catalog walks and bcrypt run apart from blob I/O.

The registry gets 5,000 repositories written straight into its storage layout (pushing them
would take minutes), an htpasswd entry with a realistic bcrypt cost, and a flood of catalog
listings and wrong passwords. A blob HEAD issued in the middle must still answer within a
generous liveness bound, and the catalog must have been walked fewer times than it was asked.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from tests.registry.conftest import Client, digest_of
from tests.registry.processes import RegistryProcess, start_dockyard

USER, PASSWORD = "alice", "wonderland"
REPOSITORIES = 5000
CATALOG_REQUESTS = 40
WRONG_PASSWORDS = 64
LIVENESS_BOUND = 5.0  # seconds: a bound on starvation, not a latency target


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _many_repositories(root: Path, count: int) -> None:
    """Empty repositories as the storage layout has them: repositories/<name>/_manifests/tags."""
    for i in range(count):
        os.makedirs(root / "repositories" / f"team{i % 50}" / f"app{i}" / "_manifests" / "tags")


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    workdir = tmp_path_factory.mktemp("crowded")
    htpasswd = workdir / "htpasswd"
    htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=12)).decode()}\n")
    _many_repositories(workdir / "root", REPOSITORIES)
    with start_dockyard(workdir / "root", "--htpasswd", str(htpasswd)) as proc:
        yield proc


def _metric(server: RegistryProcess, name: str) -> float:
    for line in Client(server.url).request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"/metrics has no {name}")


async def _status(session: aiohttp.ClientSession, method: str, url: str, authorization: str) -> int:
    async with session.request(method, url, headers={"Authorization": authorization}) as r:
        await r.read()
        return r.status


async def _flood_and_head(server: RegistryProcess, blob_url: str) -> tuple[float, list[int]]:
    good = _basic(USER, PASSWORD)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as flood, aiohttp.ClientSession() as probe:
        catalog = [asyncio.create_task(_status(flood, "GET", f"{server.url}/v2/_catalog?n=1", good))
                   for _ in range(CATALOG_REQUESTS)]
        wrong = [asyncio.create_task(_status(flood, "GET", f"{server.url}/v2/", _basic(USER, f"guess-{i}")))
                 for i in range(WRONG_PASSWORDS)]
        # the flood is being served once the first listing has come back
        await asyncio.wait(catalog, return_when=asyncio.FIRST_COMPLETED)
        started = time.monotonic()
        status = await asyncio.wait_for(_status(probe, "HEAD", blob_url, good), timeout=60)
        head_seconds = time.monotonic() - started
        assert status == 200
        listings = await asyncio.wait_for(asyncio.gather(*catalog), timeout=120)
        for task in wrong:
            task.cancel()
        await asyncio.gather(*wrong, return_exceptions=True)
        return head_seconds, listings


def test_blob_requests_stay_live_under_catalog_and_wrong_password_floods(crowded: RegistryProcess) -> None:
    alice = Client(crowded.url, (USER, PASSWORD))
    digest = alice.push_blob("team0/app0", b"a layer someone is pulling")
    assert digest == digest_of(b"a layer someone is pulling")
    walks_before = _metric(crowded, "dockyard_registry_catalog_walks_total")

    head_seconds, listings = asyncio.run(_flood_and_head(crowded, f"{crowded.url}/v2/team0/app0/blobs/{digest}"))

    assert head_seconds < LIVENESS_BOUND, f"a blob HEAD waited {head_seconds:.1f}s behind the flood"
    assert listings == [200] * CATALOG_REQUESTS
    walks = _metric(crowded, "dockyard_registry_catalog_walks_total") - walks_before
    assert 1 <= walks < CATALOG_REQUESTS


def test_catalog_listings_see_a_new_repository_at_once(crowded: RegistryProcess) -> None:
    alice = Client(crowded.url, (USER, PASSWORD))
    assert alice.request("GET", "/v2/_catalog?n=1").status == 200
    alice.push_image("zz/new", "v1")
    assert alice.request("GET", "/v2/_catalog?last=zz").json()["repositories"] == ["zz/new"]


def test_mount_without_from_starts_an_upload_instead_of_searching(crowded: RegistryProcess) -> None:
    """Without `from`, finding a holder means walking every repository: the spec lets the registry decline."""
    alice = Client(crowded.url, (USER, PASSWORD))
    digest = alice.push_blob("team1/app1", b"held by team1/app1 only")
    r = alice.request("POST", f"/v2/team2/app2/blobs/uploads/?mount={digest}")
    assert r.status == 202
    location = r.header("Location")
    assert location
    assert "/blobs/uploads/" in location
    assert alice.request("HEAD", f"/v2/team2/app2/blobs/{digest}").status == 404
    assert alice.request("PUT", f"{location}?digest={digest}", body=b"held by team1/app1 only").status == 201
