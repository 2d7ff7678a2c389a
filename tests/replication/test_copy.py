"""The copy engine against real registries: distribution on both ends, and the embedded
registry as source or destination. Results are checked with independent clients (plain
HTTP, skopeo) and request counts come from a recording proxy in front of the destination."""

from __future__ import annotations

import json
import random
from collections import Counter

from dockyard.oci.client import RegistryClient
from tests.registry.conftest import digest_of
from tests.registry.processes import RegistryProcess
from tests.replication.conftest import policy, replicate
from tests.replication.helpers import (
    Pushed,
    Pusher,
    RecordingProxy,
    fetch_blob,
    fetch_manifest,
    list_tags,
    skopeo_digest,
)

Pair = tuple[RegistryProcess, RegistryProcess]


async def seed_shared(url: str, repos: list[str], tags: list[str], base: list[bytes]) -> dict[tuple[str, str], Pushed]:
    rng = random.Random(7)
    pushed = {}
    async with Pusher(url) as p:
        for repo in repos:
            for tag in tags:
                pushed[repo, tag] = await p.image(repo, tag, [*base, rng.randbytes(20_000)])
    return pushed


async def test_shared_layers_move_once_and_digests_are_preserved(pair: Pair, skopeo: str) -> None:
    src, dst = pair
    base = [random.randbytes(300_000), random.randbytes(100_000)]
    pushed = await seed_shared(src.url, ["team/a", "team/b", "other/c"], ["1.0", "1.1", "2.0"], base)
    unique = {d: len(b) for p in pushed.values() for d, b in p.blobs.items()}
    async with RecordingProxy(dst.url) as proxy:
        result = await replicate(policy(src.url, proxy.url))
        assert (result.result, result.copied, result.failed) == ("Succeeded", 9, 0), result.failed_items
        # Every blob went over the wire once; other repositories got it by cross-repo mount.
        assert result.bytes_copied == sum(unique.values())
        uploads = Counter(r.path.split("digest=")[1] for r in proxy.records
                          if r.method == "PUT" and "digest=" in r.path and r.bytes_in > 0)
        assert set(uploads) == set(unique)
        assert max(uploads.values()) == 1
        assert proxy.count("POST", "mount=") >= 2 * len(base)
    for (repo, tag), image in pushed.items():
        assert skopeo_digest(dst.host, repo, tag) == image.digest
    for digest, size in unique.items():
        blob = await fetch_blob(dst.url, "other/c", digest)
        if blob is not None:
            assert len(blob) == size
            assert digest_of(blob) == digest


async def test_a_second_run_with_nothing_new_only_reads(pair: Pair) -> None:
    src, dst = pair
    await seed_shared(src.url, ["app"], ["1", "2", "3"], [random.randbytes(50_000)])
    spec = policy(src.url, dst.url)
    assert (await replicate(spec)).copied == 3
    async with RecordingProxy(dst.url) as proxy:
        again = await replicate(policy(src.url, proxy.url))
        assert (again.result, again.copied, again.skipped, again.bytes_copied) == ("Succeeded", 0, 3, 0)
        assert proxy.writes() == []
        assert {r.method for r in proxy.records} <= {"GET", "HEAD"}
        assert proxy.count("HEAD", "/manifests/") >= 3


async def test_platform_filter_writes_a_smaller_index_and_no_filter_keeps_it_byte_for_byte(pair: Pair) -> None:
    src, dst = pair
    platforms = [("linux", "amd64"), ("linux", "arm64"), ("linux", "s390x")]
    async with Pusher(src.url) as p:
        images = [(await p.image("multi", None, [random.randbytes(10_000)], platform=plat), plat)
                  for plat in platforms]
        index = await p.index("multi", "1.0", images)
        await p.index("multi", "1.1", images)
    filtered = await replicate(policy(src.url, dst.url, filters={
        "platforms": ["linux/amd64", "linux/arm64"], "tags": {"include": ["1.0"]}}))
    assert filtered.result == "Succeeded"
    assert filtered.copied == 1
    assert any("rewritten by the platform filter" in n for n in filtered.notes)
    status, body, _ = await fetch_manifest(dst.url, "multi", "1.0")
    assert status == 200
    kept = json.loads(body)["manifests"]
    assert [m["platform"]["architecture"] for m in kept] == ["amd64", "arm64"]
    assert digest_of(body) != index.digest
    # The kept images are byte for byte; the dropped one never reached the destination.
    assert [m["digest"] for m in kept] == [images[0][0].digest, images[1][0].digest]
    assert (await fetch_manifest(dst.url, "multi", images[2][0].digest))[0] == 404
    # Rerun: the rewritten index is recognised as current.
    async with RecordingProxy(dst.url) as proxy:
        again = await replicate(policy(src.url, proxy.url, filters={
            "platforms": ["linux/amd64", "linux/arm64"], "tags": {"include": ["1.0"]}}))
        assert (again.copied, again.skipped) == (0, 1)
        assert proxy.writes() == []
    unfiltered = await replicate(policy(src.url, dst.url, filters={"tags": {"include": ["1.1"]}}))
    assert unfiltered.copied == 1
    assert not unfiltered.notes
    status, body, _ = await fetch_manifest(dst.url, "multi", "1.1")
    assert digest_of(body) == index.digest
    assert len(json.loads(body)["manifests"]) == 3


async def test_signatures_and_sboms_follow_their_image(pair: Pair) -> None:
    src, dst = pair
    async with Pusher(src.url) as p:
        image = await p.image("signed", "1.0", [random.randbytes(5_000)])
        sig = await p.referrer("signed", image, "application/vnd.dev.cosign.artifact.sig.v1+json", b"sig")
        sbom = await p.referrer("signed", image, "application/spdx+json", b'{"spdxVersion": "SPDX-2.3"}')
    result = await replicate(policy(src.url, dst.url))
    assert result.result == "Succeeded"
    assert result.copied == 3  # the image and its two referrers
    for ref in (sig, sbom):
        status, body, _ = await fetch_manifest(dst.url, "signed", ref.digest)
        assert status == 200
        assert digest_of(body) == ref.digest
    # Whatever the destination offers (referrers API or the tag schema), a client finds both.
    reader = RegistryClient(dst.url)
    try:
        found, _ = await reader.referrers("signed", image.digest)
    finally:
        await reader.close()
    assert {d["digest"] for d in found} == {sig.digest, sbom.digest}
    # Without `referrers` they stay behind.
    async with Pusher(src.url) as p:
        other = await p.image("plain", "1.0", [random.randbytes(5_000)])
        lone = await p.referrer("plain", other, "application/spdx+json", b"{}")
    await replicate(policy(src.url, dst.url, referrers=False, filters={"repositories": {"include": ["plain"]}}))
    assert (await fetch_manifest(dst.url, "plain", lone.digest))[0] == 404


async def test_conflict_skip_keeps_and_overwrite_replaces(pair: Pair) -> None:
    src, dst = pair
    async with Pusher(src.url) as p:
        theirs = await p.image("app", "1.0", [random.randbytes(4_000)])
        await p.image("app", "2.0", [random.randbytes(4_000)])
    async with Pusher(dst.url) as p:
        mine = await p.image("app", "1.0", [random.randbytes(4_000)])
    skipped = await replicate(policy(src.url, dst.url, conflict="skip"))
    assert (skipped.copied, skipped.skipped, skipped.result) == (1, 1, "Succeeded")
    assert digest_of((await fetch_manifest(dst.url, "app", "1.0"))[1]) == mine.digest
    overwritten = await replicate(policy(src.url, dst.url, conflict="overwrite"))
    assert (overwritten.copied, overwritten.skipped) == (1, 1)
    assert digest_of((await fetch_manifest(dst.url, "app", "1.0"))[1]) == theirs.digest


async def test_deletion_mirror_removes_only_what_the_filters_select(pair: Pair) -> None:
    src, dst = pair
    async with Pusher(src.url) as p:
        doomed = await p.image("app", "1.0", [random.randbytes(4_000)])
        await p.image("app", "1.1", [random.randbytes(4_000)])
    spec = policy(src.url, dst.url, deletion="mirror", filters={"tags": {"semverRange": ">=1"}})
    assert (await replicate(spec)).copied == 2
    async with Pusher(dst.url) as p:
        await p.image("app", "local-build", [random.randbytes(4_000)])  # not a version: not selected
    async with Pusher(src.url) as p:
        await p.session.delete(f"{src.url}/v2/app/manifests/{doomed.digest}")
    assert "1.0" not in await list_tags(src.url, "app")
    mirrored = await replicate(spec)
    assert (mirrored.result, mirrored.deleted) == ("Succeeded", 1), mirrored.failed_items
    assert await list_tags(dst.url, "app") == ["1.1", "local-build"]
    none = await replicate(policy(src.url, dst.url, filters={"tags": {"semverRange": ">=1"}}))
    assert none.deleted == 0


async def test_latest_orders_tags_that_are_not_versions_by_creation_time(pair: Pair) -> None:
    src, dst = pair
    async with Pusher(src.url) as p:
        await p.image("app", "zeta", [random.randbytes(1000)], created="2024-01-01T00:00:00Z")
        await p.image("app", "alpha", [random.randbytes(1000)], created="2024-03-01T00:00:00Z")
        await p.image("app", "main", [random.randbytes(1000)], created="2024-02-01T00:00:00Z")
        await p.image("app", "old", [random.randbytes(1000)], created="2023-06-01T00:00:00Z")
    result = await replicate(policy(src.url, dst.url, filters={"latest": 2}))
    assert result.copied == 2
    assert await list_tags(dst.url, "app") == ["alpha", "main"]
