"""The OCI client against real registries: catalog and tag pagination."""

from __future__ import annotations

import random

import pytest

from dockyard.oci.client import RegistryClient
from tests.registry.processes import Registries
from tests.replication.helpers import Pusher, RecordingProxy


# distribution 2.8 pages the catalog but answers every tag list in one page.
@pytest.mark.parametrize(("kind", "tags_paged"), [("distribution", False), ("dockyard", True)])
async def test_catalog_and_tags_follow_pagination(registries: Registries, kind: str, tags_paged: bool) -> None:
    server = registries.start(kind)
    repos = [f"team/app{i}" for i in range(5)]
    tags = [f"1.{i}" for i in range(7)]
    async with Pusher(server.url) as p:
        for repo in repos:
            for tag in tags:
                await p.image(repo, tag, [random.randbytes(100)])
    async with RecordingProxy(server.url) as proxy:
        client = RegistryClient(proxy.url)
        try:
            assert sorted(await client.catalog(page=2)) == repos
            assert sorted(await client.tags("team/app3", page=3) or []) == sorted(tags)
            assert await client.tags("team/nope") is None
        finally:
            await client.close()
    assert proxy.count("GET", "/v2/_catalog") == 3
    assert proxy.count("GET", "/v2/team/app3/tags/list") == (3 if tags_paged else 1)
