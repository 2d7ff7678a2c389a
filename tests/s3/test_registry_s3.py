"""The registry with its storage in a bucket of a real S3 server (SeaweedFS), as replicas share it.

Several `dockyard registry serve` processes on one bucket stand for the pods of a Registry behind
a Service without session affinity: an upload started on one continues on the others, a replica
killed mid-request loses nothing acknowledged, GC runs while they push, and a wrong endpoint or
wrong keys leave a running process that says why in its log and is not ready, until it is
restarted with the right keys (what rotating the Secret does to the pods).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from oras.client import OrasClient

from dockyard.registry.config import S3Config
from dockyard.registry.gc import collect
from dockyard.registry.s3 import S3Driver
from dockyard.registry.storage import Storage
from tests.registry import images
from tests.registry.conftest import Client, digest_of, image_manifest
from tests.registry.images import layout_blob, layout_ref, write_layout
from tests.registry.processes import DOCKYARD, RegistryProcess, free_port, request, skopeo
from tests.registry.receiver import Receiver, wait_until
from tests.s3.server import REGION, S3Server, run_sync, start_dockyard_s3

MIB = 1024 * 1024
DEADLINE = 60.0


def keys(server: S3Server, bucket: str, prefix: str = "") -> list[str]:
    async def listing() -> list[str]:
        async with server.client() as s3:
            paginator = s3.get_paginator("list_objects_v2")
            return [o["Key"] async for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
                    for o in page.get("Contents", [])]
    return run_sync(listing())


def driver(server: S3Server, bucket: str, prefix: str = "registry") -> S3Driver:
    return S3Driver(S3Config(bucket=bucket, endpoint=server.endpoint, region=REGION, prefix=prefix,
                             force_path_style=True), server.access_key, server.secret_key)


@pytest.fixture
def replicas(s3_server: S3Server, tmp_path: Path) -> Iterator[list[RegistryProcess]]:
    """Three registry processes sharing one bucket."""
    bucket = s3_server.make_bucket()
    procs: list[RegistryProcess] = []
    try:
        for _ in range(3):
            procs.append(start_dockyard_s3(s3_server, tmp_path, bucket))
        yield procs
    finally:
        for p in procs:
            p.stop()


def bucket_of(proc: RegistryProcess) -> str:
    config = json.loads(next(proc.root.glob(f"config-{proc.port}.yaml")).read_text())
    return str(config["storage"]["s3"]["bucket"])


def patch(client: Client, location: str, data: bytes, start: int) -> str:
    r = client.request("PATCH", location, body=data, headers={
        "Content-Type": "application/octet-stream", "Content-Range": f"{start}-{start + len(data) - 1}"})
    assert r.status == 202, (r.status, r.body)
    assert r.header("Range") == f"0-{start + len(data) - 1}"
    moved = r.header("Location")
    assert moved
    return moved


def test_pushed_content_is_objects_in_the_bucket_and_no_upload_is_left(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket()
    with start_dockyard_s3(s3_server, tmp_path, bucket) as proc:
        client = Client(proc.url)
        digest, _ = client.push_image("team/app", "v1", [os.urandom(20 * MIB)])
        stored = keys(s3_server, bucket)
        layer = json.loads(client.request("GET", f"/v2/team/app/manifests/{digest}").body)["layers"][0]["digest"]

        def usage_shown() -> str | None:
            text = request("GET", f"{proc.url}/metrics").body.decode()
            return text if "dockyard_registry_storage_used_bytes" in text else None
        metrics = wait_until(usage_shown, "storage usage in /metrics", DEADLINE)
        assert "dockyard_registry_storage_capacity_bytes" not in metrics, "a bucket has no capacity to show"
    hexpart = layer.removeprefix("sha256:")
    assert f"registry/blobs/sha256/{hexpart[:2]}/{hexpart}" in stored
    assert "registry/repositories/team/app/_manifests/tags/v1" in stored
    assert [k for k in stored if k.startswith("registry/uploads/")] == [], "a committed upload left parts behind"
    assert [k for k in stored if not k.startswith("registry/")] == [], "everything lives under the prefix"


def test_a_chunked_upload_spread_over_three_replicas(replicas: list[RegistryProcess]) -> None:
    a, b, c = (Client(p.url) for p in replicas)
    pieces = [os.urandom(3 * MIB), os.urandom(7 * MIB + 5), os.urandom(100 * 1024), os.urandom(9 * MIB)]
    final = os.urandom(2 * MIB + 1)
    blob = b"".join(pieces) + final
    digest = digest_of(blob)

    location = a.start_upload("spread/app")
    offset = 0
    for client, piece in zip([b, c, a, b], pieces, strict=True):
        location = patch(client, location, piece, offset)
        offset += len(piece)
    status = c.request("GET", location)
    assert status.status == 204
    assert status.header("Range") == f"0-{offset - 1}", "another replica must see the upload's size"
    done = a.request("PUT", f"{location}&digest={digest}" if "?" in location else f"{location}?digest={digest}",
                     body=final, headers={"Content-Type": "application/octet-stream"})
    assert done.status == 201, done.body

    for client in (a, b, c):
        got = client.request("GET", f"/v2/spread/app/blobs/{digest}")
        assert got.status == 200
        assert got.body == blob, "the blob assembled from parts written by three replicas changed"
    part = b.request("GET", f"/v2/spread/app/blobs/{digest}", headers={"Range": "bytes=1000-1999"})
    assert part.status == 206
    assert part.body == blob[1000:2000]
    assert part.header("Content-Range") == f"bytes 1000-1999/{len(blob)}"
    tail = c.request("GET", f"/v2/spread/app/blobs/{digest}", headers={"Range": "bytes=-10"})
    assert tail.status == 206
    assert tail.body == blob[-10:]
    beyond = c.request("GET", f"/v2/spread/app/blobs/{digest}", headers={"Range": f"bytes={len(blob)}-"})
    assert beyond.status == 416, "a range past the end is unsatisfiable, not a server error"
    assert beyond.header("Content-Range") == f"bytes */{len(blob)}"

    config = b'{"architecture":"amd64","os":"linux"}'
    manifest = image_manifest(c.push_blob("spread/app", config), len(config), [(digest, len(blob))])
    assert c.push_manifest("spread/app", "v1", manifest).status == 201
    assert a.request("GET", "/v2/spread/app/manifests/v1").body == manifest


def test_a_replica_killed_mid_upload_loses_nothing_acknowledged(replicas: list[RegistryProcess],
                                                                s3_server: S3Server) -> None:
    a, b, _ = replicas
    bucket = bucket_of(a)
    blob = os.urandom(30 * MIB)
    digest = digest_of(blob)
    location = patch(Client(a.url), Client(a.url).start_upload("crash/app"), blob[:6 * MIB], 0)

    release = threading.Event()

    def body() -> Iterator[bytes]:
        for i in range(6, 16):  # 10 MiB: one 8 MiB part reaches the bucket, the rest is in memory
            yield blob[i * MIB:(i + 1) * MIB]
        release.wait(DEADLINE)

    def send() -> None:
        try:
            Client(b.url).request("PATCH", location, body=body(),
                                  headers={"Content-Type": "application/octet-stream"}, timeout=DEADLINE)
        except OSError:
            pass  # the replica died under it: no 2xx, as after any crash
    sender = threading.Thread(target=send)
    sender.start()
    upload_id = location.split("/")[-1].split("?")[0]
    wait_until(lambda: f"registry/uploads/{upload_id}/parts/{6 * MIB:020d}" in keys(s3_server, bucket),
               "the killed replica wrote a part", DEADLINE)
    b.kill()
    release.set()
    sender.join(DEADLINE)

    client = Client(a.url)
    status = client.request("GET", location)
    assert status.status == 204
    have = int((status.header("Range") or "0-0").split("-")[1]) + 1
    assert have in (6 * MIB, 14 * MIB), f"the upload stands at {have}: parts of the body must be whole"
    done = client.request("PUT", f"{location}&digest={digest}" if "?" in location else f"{location}?digest={digest}",
                          body=blob[have:], headers={"Content-Type": "application/octet-stream",
                                                     "Content-Range": f"{have}-{len(blob) - 1}"})
    assert done.status == 201, done.body
    got = client.request("GET", f"/v2/crash/app/blobs/{digest}")
    assert got.status == 200
    assert got.body == blob


def test_gc_on_s3_deletes_garbage_and_keeps_every_acknowledged_push(replicas: list[RegistryProcess],
                                                                    s3_server: S3Server) -> None:
    a, b, _ = replicas
    bucket = bucket_of(a)
    config = next(a.root.glob(f"config-{a.port}.yaml"))
    garbage = Client(a.url).push_blob("gc/garbage", os.urandom(1000))
    Client(a.url).request("DELETE", f"/v2/gc/garbage/blobs/{garbage}")

    stop = threading.Event()
    acknowledged: list[tuple[str, str, bytes]] = []
    unexpected: list[str] = []

    def pusher(proc: RegistryProcess, name: str) -> None:
        client = Client(proc.url)
        n = 0
        while not stop.is_set():
            try:
                layer = os.urandom(64 * 1024)
                cfg = json.dumps({"n": n, "name": name}).encode()
                layers = [(client.push_blob(name, layer), len(layer))]
                manifest = image_manifest(client.push_blob(name, cfg), len(cfg), layers)
            except AssertionError as e:
                unexpected.append(f"blob push: {e}")
                return
            r = client.push_manifest(name, f"v{n}", manifest)
            if r.status == 201:
                acknowledged.append((name, f"v{n}", manifest))
            elif r.status != 400 or "MANIFEST_BLOB_UNKNOWN" not in r.error_codes():
                unexpected.append(f"manifest push: {r.status} {r.body[:300]!r}")  # a pass took a blob: retry
            n += 1
    threads = [threading.Thread(target=pusher, args=(p, f"gc/{i}")) for i, p in enumerate((a, b))]
    for t in threads:
        t.start()
    passes = 0
    try:
        deadline = time.monotonic() + DEADLINE
        while passes < 4 and time.monotonic() < deadline:
            gc = subprocess.run([DOCKYARD, "registry", "gc", "--config", str(config), "--grace-period", "0s",
                                 "--json"], capture_output=True, text=True, timeout=DEADLINE, check=False)
            assert gc.returncode == 0, gc.stderr
            passes += 1
    finally:
        stop.set()
        for t in threads:
            t.join(DEADLINE)
    assert passes == 4
    assert unexpected == []
    assert len(acknowledged) >= 4, f"pushes hardly ran during GC ({len(acknowledged)} acknowledged)"
    hexpart = garbage.removeprefix("sha256:")
    assert f"registry/blobs/sha256/{hexpart[:2]}/{hexpart}" not in keys(s3_server, bucket), "garbage was kept"
    reader = Client(b.url)
    for name, tag, manifest in acknowledged:
        got = reader.request("GET", f"/v2/{name}/manifests/{tag}")
        assert got.status == 200, f"{name}:{tag} was acknowledged, then lost"
        assert got.body == manifest
        for ref in [json.loads(manifest)["config"], *json.loads(manifest)["layers"]]:
            blob = reader.request("GET", f"/v2/{name}/blobs/{ref['digest']}")
            assert blob.status == 200, f"{name}:{tag} lost blob {ref['digest']}"
            assert digest_of(blob.body) == ref["digest"]


def test_gc_aborts_abandoned_uploads_and_multipart_assemblies(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket()
    with start_dockyard_s3(s3_server, tmp_path, bucket) as proc:
        client = Client(proc.url)
        patch(client, client.start_upload("gone/app"), os.urandom(MIB), 0)

    async def start_multipart() -> None:
        async with s3_server.client() as s3:
            await s3.create_multipart_upload(Bucket=bucket, Key="registry/blobs/sha256/00/dead")
    run_sync(start_multipart())

    async def multipart() -> list[str]:
        async with s3_server.client() as s3:
            return [u["Key"] for u in (await s3.list_multipart_uploads(Bucket=bucket)).get("Uploads", [])]
    assert run_sync(multipart()) == ["registry/blobs/sha256/00/dead"]

    storage = Storage(driver(s3_server, bucket))
    try:
        assert collect(storage, grace=0).uploads_deleted == 0, "a fresh upload is never collected"
        report = collect(storage, grace=0, now=time.time() + 2 * 86400)
    finally:
        storage.driver.close()
    assert report.uploads_deleted == 1
    assert [k for k in keys(s3_server, bucket) if k.startswith("registry/uploads/")] == []
    assert run_sync(multipart()) == []


def test_skopeo_and_oras_round_trips(s3_server: S3Server, tmp_path: Path) -> None:
    img = images.image(seed=41, layers=3)
    layout = write_layout(tmp_path / "in", {"v1": img})
    with start_dockyard_s3(s3_server, tmp_path, s3_server.make_bucket()) as proc:
        skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", f"oci:{layout}:v1",
               f"docker://{proc.host}/team/app:v1", workdir=tmp_path)
        out = tmp_path / "out"
        skopeo("copy", "--insecure-policy", "--src-tls-verify=false", f"docker://{proc.host}/team/app:v1",
               f"oci:{out}:v1", workdir=tmp_path)
        assert layout_ref(out, "v1")["digest"] == img.digest
        for blob in img.blobs:
            assert layout_blob(out, blob.digest) == blob.data, f"blob {blob.digest} changed on the way"

        artifact = tmp_path / "artifact.bin"
        artifact.write_bytes(os.urandom(12 * MIB))  # oras sends it in PATCH chunks
        oras = OrasClient(hostname=proc.host, insecure=True)
        oras.push(target=f"{proc.host}/team/artifact:v1", files=[str(artifact)], disable_path_validation=True)
        pulled = oras.pull(target=f"{proc.host}/team/artifact:v1", outdir=str(tmp_path / "pulled"))
        assert [Path(p).read_bytes() for p in pulled] == [artifact.read_bytes()]


def test_redirect_sends_blob_gets_to_the_bucket(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket()
    with start_dockyard_s3(s3_server, tmp_path, bucket, settings={"redirect": True}) as proc:
        data = os.urandom(3 * MIB)
        digest = Client(proc.url).push_blob("team/app", data)
        r = Client(proc.url).request("GET", f"/v2/team/app/blobs/{digest}")
        assert r.status == 307
        location = r.header("Location") or ""
        assert location.startswith(s3_server.endpoint), location
        fetched = request("GET", location)
        assert fetched.status == 200
        assert hashlib.sha256(fetched.body).hexdigest() == digest.removeprefix("sha256:")


@pytest.mark.parametrize("fault", ["wrong keys", "wrong endpoint"])
def test_unreachable_storage_is_named_in_the_log_and_reported_and_the_process_waits(
        fault: str, s3_server: S3Server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket()
    bad: dict[str, Any] = ({"secret_key": "not-the-secret"} if fault == "wrong keys"
                           else {"endpoint": f"http://127.0.0.1:{free_port()}"})
    with Receiver(keep_reports=True) as receiver:
        notify = {"notify": {"url": receiver.url("/events"), "tokenFile": str(_token(tmp_path)),
                             "registry": {"namespace": "team", "name": "s3"}}}
        with start_dockyard_s3(s3_server, tmp_path, bucket, config=notify, **bad) as proc:
            wanted = "SignatureDoesNotMatch" if fault == "wrong keys" else "Could not connect"
            wait_until(lambda: "storage unavailable" in proc.output() and wanted in proc.output(),
                       f"the log names the failure ({wanted})", DEADLINE)
            assert "not-the-secret" not in proc.output(), "the log must never show a secret key"
            assert request("GET", f"{proc.url}/readyz").status == 503, "a pod without storage is not ready"
            push = Client(proc.url).request("POST", "/v2/team/app/blobs/uploads/")
            assert push.status == 503, push.body
            assert Client(proc.url).request("GET", "/v2/").status == 200
            reports = wait_until(lambda: [d.event for d in receiver.at("/events")
                                          if d.event.get("type") == "dev.dockyard.registry.storage"],
                                 "a storage report reached the operator", DEADLINE)
            assert wanted in reports[0]["data"]["error"]
            assert proc.alive(), "the process waits for its storage instead of exiting into a crash loop"

        # The right keys and endpoint (a rotated Secret rolls the pods): the same bucket serves.
        with start_dockyard_s3(s3_server, tmp_path, bucket, config=notify) as proc:
            wait_until(lambda: request("GET", f"{proc.url}/readyz").status == 200, "ready", DEADLINE)
            Client(proc.url).push_image("team/app", "v1")


def _token(tmp_path: Path) -> Path:
    path = tmp_path / "events-token"
    path.write_text("events-token-for-tests")
    return path


def test_gc_on_s3_honours_the_grace_period_through_use_markers(s3_server: S3Server, tmp_path: Path) -> None:
    """Objects keep no settable time: what tells an old unreferenced blob from a young one is the
    use marker, which must survive the pass's set-aside and re-check (copies are always young)."""
    bucket = s3_server.make_bucket()
    with start_dockyard_s3(s3_server, tmp_path, bucket) as proc:
        client = Client(proc.url)
        old, young = (client.push_blob("gc/app", os.urandom(2000)) for _ in range(2))
        for d in (old, young):
            assert client.request("DELETE", f"/v2/gc/app/blobs/{d}").status == 202

    def key(d: str) -> str:
        return f"blobs/sha256/{d[7:9]}/{d[7:]}"

    async def age(d: str, seconds: float) -> None:
        async with s3_server.client() as s3:
            marker = repr(time.time() - seconds).encode()
            await s3.put_object(Bucket=bucket, Key=f"registry/_used/{key(d)}", Body=marker)
    run_sync(age(old, 7200))

    storage = Storage(driver(s3_server, bucket))
    try:
        report = collect(storage, grace=3600)
    finally:
        storage.driver.close()
    stored = keys(s3_server, bucket, "registry/blobs/")
    assert f"registry/{key(old)}" not in stored, f"a blob unused for two hours outlived a one-hour grace: {report}"
    assert f"registry/{key(young)}" in stored, "a blob uploaded just now was collected"
    assert report.blobs_deleted == 1
    assert report.blobs_kept_young == 1


def test_a_tag_notes_its_media_type_and_a_tag_without_the_note_still_serves(s3_server: S3Server,
                                                                             tmp_path: Path) -> None:
    """A GET by tag reads one object when the tag carries its manifest's media type as metadata;
    a tag written without it (by an older registry) is served through the revision link."""
    bucket = s3_server.make_bucket()
    with start_dockyard_s3(s3_server, tmp_path, bucket) as proc:
        client = Client(proc.url)
        digest, manifest = client.push_image("team/app", "v1")
        tag_key = "registry/repositories/team/app/_manifests/tags/v1"

        async def tag_metadata() -> dict[str, str]:
            async with s3_server.client() as s3:
                return dict((await s3.head_object(Bucket=bucket, Key=tag_key))["Metadata"])
        assert run_sync(tag_metadata()) == {"media-type": "application/vnd.oci.image.manifest.v1+json"}

        async def rewrite_plain() -> None:
            async with s3_server.client() as s3:
                await s3.put_object(Bucket=bucket, Key=tag_key, Body=digest.encode())
        run_sync(rewrite_plain())
        assert run_sync(tag_metadata()) == {}
        got = client.request("GET", "/v2/team/app/manifests/v1")
        assert got.status == 200
        assert got.body == manifest
        assert got.header("Content-Type") == "application/vnd.oci.image.manifest.v1+json"
        assert got.header("Docker-Content-Digest") == digest
