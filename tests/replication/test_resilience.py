"""The engine under trouble: a source that dies half way, 429s with Retry-After, a stalled
transfer, and a large blob whose chunked upload is interrupted and resumed."""

from __future__ import annotations

import asyncio
import io
import random
import time

import pytest
from aiohttp import web

from dockyard.replication.state import MemoryState
from tests.registry.conftest import digest_of
from tests.registry.processes import Registries
from tests.replication.conftest import policy, replicate
from tests.replication.helpers import (
    Pusher,
    RecordingProxy,
    fetch_blob,
    fetch_manifest,
    list_tags,
    wait_for,
)


async def assert_no_tag_points_at_incomplete_content(url: str, repo: str) -> list[str]:
    tags = await list_tags(url, repo)
    for tag in tags:
        status, body, _ = await fetch_manifest(url, repo, tag)
        assert status == 200, tag
        doc = __import__("json").loads(body)
        for desc in [doc["config"], *doc["layers"]]:
            blob = await fetch_blob(url, repo, desc["digest"])
            assert blob is not None, f"{tag} has a missing blob"
            assert digest_of(blob) == desc["digest"], f"{tag} has a missing blob"
    return tags


@pytest.mark.parametrize("source_kind", ["distribution", "dockyard"])
async def test_source_killed_half_way_then_a_rerun_completes(registries: Registries, source_kind: str) -> None:
    src = registries.start(source_kind)
    dst = registries.start("distribution")
    tags = [f"1.{i}" for i in range(12)]
    async with Pusher(src.url) as p:
        pushed = {t: await p.image("app", t, [random.randbytes(400_000)]) for t in tags}
    state = MemoryState()
    async with RecordingProxy(dst.url) as proxy:
        # 2 MiB/s: slow enough to kill the source in the middle of the run
        spec = policy(src.url, proxy.url, limits={"concurrency": 2, "bandwidth": "2Mi",
                                                  "retry": {"max": 1, "backoff": "100ms"}})
        run = asyncio.create_task(replicate(spec, state, stall_timeout=2.0))
        await wait_for(lambda: proxy.count("PUT", "/manifests/") >= 3, within=30)
        await asyncio.to_thread(src.kill)
        first = await asyncio.wait_for(run, 60)
    assert first.result in ("PartiallyFailed", "Failed")
    assert first.failed > 0
    assert 3 <= first.copied < len(tags)
    copied = await assert_no_tag_points_at_incomplete_content(dst.url, "app")
    assert len(copied) == first.copied
    failed_tags = {item.tag for item in state.failed}
    # Everything not copied is remembered (a copied image whose referrers could not be
    # listed any more is remembered too, for its referrers).
    assert set(tags) - set(copied) <= failed_tags

    await asyncio.to_thread(src.start)
    async with RecordingProxy(dst.url) as proxy:
        second = await replicate(policy(src.url, proxy.url, limits={"concurrency": 1}), state)
        assert second.result == "Succeeded", second.failed_items
        assert second.copied == len(tags) - first.copied
        assert second.skipped == first.copied
        first_put = next(r.path for r in proxy.records if r.method == "PUT" and "/manifests/" in r.path)
        assert first_put.rsplit("/", 1)[1] in failed_tags  # last run's failures go first
    assert state.failed == []
    for tag, image in pushed.items():
        assert digest_of((await fetch_manifest(dst.url, "app", tag))[1]) == image.digest


async def test_429_with_retry_after_is_honoured_and_the_run_finishes(registries: Registries) -> None:
    src, dst = registries.start("distribution"), registries.start("distribution")
    async with Pusher(src.url) as p:
        for i in range(4):
            await p.image("app", f"v{i}", [random.randbytes(20_000)])
    refused: dict[str, float] = {}
    waited: list[float] = []
    seen = 0

    async def too_many(request: web.Request, proxy: RecordingProxy) -> web.StreamResponse | None:
        nonlocal seen
        seen += 1
        key = request.method + request.path_qs
        if key in refused:
            waited.append(time.monotonic() - refused.pop(key))
            return None
        if seen % 3 == 0 and len(waited) < 6:
            refused[key] = time.monotonic()
            return web.json_response({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]},
                                     status=429, headers={"Retry-After": "1"})
        return None

    async with RecordingProxy(src.url, too_many) as proxy:
        result = await replicate(policy(proxy.url, dst.url, limits={"retry": {"max": 3, "backoff": "10ms"}}))
        assert result.result == "Succeeded", result.failed_items
        assert result.copied == 4, result.failed_items
        assert sum(1 for r in proxy.records if r.status == 429) >= 3
    # Every refused request came back, and only after the second the server asked for.
    assert refused == {}
    assert len(waited) >= 3
    assert min(waited) >= 0.95


async def test_a_stalled_transfer_is_retried_but_a_slow_one_is_never_cut_off(registries: Registries) -> None:
    src, dst = registries.start("distribution"), registries.start("distribution")
    async with Pusher(src.url) as p:
        image = await p.image("app", "1.0", [random.randbytes(3 * 1024 * 1024)])
    layer = next(d for d, b in image.blobs.items() if len(b) > 1024 * 1024)
    hung, release = asyncio.Event(), asyncio.Event()

    async def hang_once(request: web.Request, proxy: RecordingProxy) -> web.StreamResponse | None:
        if request.method == "GET" and request.path.endswith(layer) and not hung.is_set():
            hung.set()
            resp = web.StreamResponse(headers={"Content-Length": str(3 * 1024 * 1024)})
            await resp.prepare(request)
            await resp.write(b"x" * 65536)
            await release.wait()  # no other byte until the run is over
            return resp
        return None

    async with RecordingProxy(src.url, hang_once) as proxy:
        started = time.monotonic()
        # 1 MiB/s for a 3 MiB layer: about 3 s of transfer against a 1 s stall timeout
        result = await replicate(policy(proxy.url, dst.url, limits={"bandwidth": "1Mi"}), stall_timeout=1.0)
        elapsed = time.monotonic() - started
        release.set()
    assert hung.is_set()
    assert result.result == "Succeeded", result.failed_items
    assert 2.5 < elapsed < 30
    assert digest_of((await fetch_manifest(dst.url, "app", "1.0"))[1]) == image.digest


# distribution keeps an upload's offset in its signed Location (`_state`): after a PATCH
# that broke half way its session is gone, so it is interrupted before the chunk arrives.
# The embedded registry keeps upload state in storage and resumes in the middle of a chunk.
@pytest.mark.parametrize(("dest_kind", "partial"), [("distribution", False), ("dockyard", True)])
async def test_large_blob_goes_in_chunks_and_resumes_after_an_interruption(
        registries: Registries, dest_kind: str, partial: bool) -> None:
    src, dst = registries.start("distribution"), registries.start(dest_kind)
    size, chunk = 5 * 1024 * 1024 + 12345, 1024 * 1024
    big = random.randbytes(size)
    async with Pusher(src.url) as p:
        image = await p.image("big", "1.0", [big])
    patches = 0
    forwarded: list[int] = []
    status_checks = 0

    async def cut_third_patch(request: web.Request, proxy: RecordingProxy) -> web.StreamResponse | None:
        nonlocal patches, status_checks
        if request.method == "GET" and "/blobs/uploads/" in request.path:
            status_checks += 1
        if request.method != "PATCH":
            return None
        patches += 1
        body = await request.read()
        if patches != 3:
            forwarded.append(len(body))
            return None
        # Half the chunk (or nothing) reaches the registry, then the connection "breaks".
        start = int(request.headers["Content-Range"].split("-")[0])
        half = body[: len(body) // 2]
        if not partial:
            return web.Response(status=502, text="upstream connection reset")
        assert proxy._session is not None
        async with proxy._session.patch(proxy.upstream + request.path_qs, data=io.BytesIO(half), headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(half) - 1}"}) as up:
            assert up.status == 202
        forwarded.append(len(half))
        return web.Response(status=502, text="upstream connection reset")

    async with RecordingProxy(dst.url, cut_third_patch) as proxy:
        result = await replicate(policy(src.url, proxy.url), chunk_size=chunk)
    assert result.result == "Succeeded", result.failed_items
    assert patches >= size // chunk + 1
    assert status_checks >= 1  # asked the server how much it holds
    # Resumed, not restarted: the registry received each byte about once.
    assert size <= sum(forwarded) < size + chunk
    blob = await fetch_blob(dst.url, "big", digest_of(big))
    assert blob == big
    assert digest_of((await fetch_manifest(dst.url, "big", "1.0"))[1]) == image.digest


async def test_one_broken_artifact_does_not_stop_the_others(registries: Registries) -> None:
    src, dst = registries.start("distribution"), registries.start("distribution")
    async with Pusher(src.url) as p:
        good = [await p.image("app", f"ok{i}", [random.randbytes(10_000)]) for i in range(3)]
        broken = await p.image("app", "broken", [random.randbytes(10_000)])
    bad_layer = next(d for d in broken.blobs if d not in {x for g in good for x in g.blobs})

    async def lose_blob(request: web.Request, proxy: RecordingProxy) -> web.StreamResponse | None:
        if request.path.endswith(bad_layer) and request.method in ("GET", "HEAD"):
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN", "message": "gone"}]}, status=404)
        return None

    async with RecordingProxy(src.url, lose_blob) as proxy:
        result = await replicate(policy(proxy.url, dst.url))
    assert (result.result, result.copied, result.failed) == ("PartiallyFailed", 3, 1)
    assert [i.tag for i in result.failed_items] == ["broken"]
    assert await list_tags(dst.url, "app") == ["ok0", "ok1", "ok2"]




async def test_corrupt_bytes_from_the_source_never_complete_at_the_destination(registries: Registries) -> None:
    src, dst = registries.start("distribution"), registries.start("distribution")
    async with Pusher(src.url) as p:
        image = await p.image("app", "1.0", [random.randbytes(200_000)])
    layer = next(d for d, b in image.blobs.items() if len(b) == 200_000)

    async def flip_a_byte(request: web.Request, proxy: RecordingProxy) -> web.StreamResponse | None:
        if request.method == "GET" and request.path.endswith(layer):
            assert proxy._session is not None
            async with proxy._session.get(proxy.upstream + request.path_qs) as up:
                body = bytearray(await up.read())
            body[1000] ^= 0xFF
            return web.Response(body=bytes(body), headers={"Docker-Content-Digest": layer})
        return None

    async with RecordingProxy(src.url, flip_a_byte) as proxy, RecordingProxy(dst.url) as gate:
        result = await replicate(policy(proxy.url, gate.url))
    assert (result.result, result.failed) == ("Failed", 1)
    assert "digest" in result.failed_items[0].error
    # The engine checks the digest before the last bytes leave: no upload of the layer ever
    # completed (the registry would have had to reject it itself).
    assert [r for r in gate.records if r.method == "PUT" and layer in r.path] == []
    assert await fetch_blob(dst.url, "app", layer) is None
    assert await list_tags(dst.url, "app") == []


async def test_requests_per_second_is_respected(registries: Registries) -> None:
    src, dst = registries.start("distribution"), registries.start("distribution")
    async with Pusher(src.url) as p:
        for i in range(4):
            await p.image("app", f"1.{i}", [random.randbytes(1000)])
    async with RecordingProxy(src.url) as proxy:
        started = time.monotonic()
        result = await replicate(policy(proxy.url, dst.url, limits={"requestsPerSecond": 10}))
        elapsed = time.monotonic() - started
    assert result.result == "Succeeded"
    sent = len(proxy.records)
    assert sent > 15
    # a burst of 10, then 10 per second
    assert elapsed >= (sent - 10) / 10 * 0.9


async def test_a_token_expiring_during_a_chunked_upload_is_renewed_and_the_upload_resumes(
        registries: Registries) -> None:
    src, dst = registries.start("distribution"), registries.start("distribution")
    big = random.randbytes(3 * 1024 * 1024 + 7)
    async with Pusher(src.url) as p:
        image = await p.image("big", "1.0", [big])
    generation = 1
    tokens_issued = 0
    patches = 0

    async def expiring_tokens(request: web.Request, proxy: RecordingProxy) -> web.StreamResponse | None:
        nonlocal generation, tokens_issued, patches
        if request.path == "/token":
            tokens_issued += 1
            return web.json_response({"token": f"gen{generation}", "expires_in": 3600})
        if request.path == "/v2/":
            return None
        if request.headers.get("Authorization") != f"Bearer gen{generation}":
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "token expired"}]}, status=401,
                headers={"WWW-Authenticate": f'Bearer realm="{proxy.url}/token",service="t"'})
        if request.method == "PATCH":
            patches += 1
            if patches == 2:
                generation += 1  # every token issued so far expires now
        return None

    async with RecordingProxy(dst.url, expiring_tokens) as proxy:
        result = await replicate(policy(src.url, proxy.url), chunk_size=1024 * 1024)
    assert result.result == "Succeeded", result.failed_items
    assert generation == 2
    assert tokens_issued >= 2
    assert await fetch_blob(dst.url, "big", digest_of(big)) == big
    assert digest_of((await fetch_manifest(dst.url, "big", "1.0"))[1]) == image.digest
