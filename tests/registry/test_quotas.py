"""Storage quotas with real clients: skopeo and plain HTTP push into quota'd repositories.

The registry runs with `quotas` in its config file, as the operator renders `spec.quotas`. A push
that would take a quota over its limit is refused with DENIED naming the quota, its usage and
the push's size, and leaves nothing behind in the storage (no blob, link, tag or upload); a blob
the quota already counts is admitted even at the limit; deletes give the room back; /metrics
shows usage and limit; repositories outside a quota's globs are not limited by it.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.registry import images
from tests.registry.conftest import Client, digest_of
from tests.registry.images import Image, write_layout
from tests.registry.processes import DOCKYARD, RegistryProcess, request, skopeo, start_dockyard

KiB = 1024


def _start(tmp_path: Path, quotas: list[dict[str, object]]) -> RegistryProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"quotas": quotas}))
    return start_dockyard(tmp_path / "root", "--config", str(path))


def _size(img: Image) -> int:
    """What an image holds in a repository: config, layers and the manifest."""
    return sum(b.size for b in img.blobs) + img.manifest.size


def _push(tmp_path: Path, server: RegistryProcess, img: Image, ref: str) -> subprocess.CompletedProcess[bytes]:
    layout = write_layout(tmp_path / f"layout-{img.digest[7:19]}", {"v1": img})
    return skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", f"oci:{layout}:v1",
                  f"docker://{server.host}/{ref}", workdir=tmp_path, check=False)


def _metric(server: RegistryProcess, name: str, quota: int, globs: str) -> int:
    text = request("GET", f"{server.url}/metrics").body.decode()
    m = re.search(rf'^dockyard_registry_quota_{name}_bytes\{{quota="{quota}",repositories="{re.escape(globs)}"\}} '
                  r"(\d+)$", text, re.M)
    assert m is not None, text
    return int(m.group(1))


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _blob_file(root: Path, digest: str) -> Path:
    alg, hexpart = digest.split(":")
    return root / "blobs" / alg / hexpart[:2] / hexpart


def _links(root: Path, digest: str) -> list[Path]:
    alg, hexpart = digest.split(":")
    return [p for p in (root / "repositories").rglob(hexpart) if p.parent.name == alg]


def _human(n: int) -> str:
    return f"{n / KiB:.1f}".removesuffix(".0") + " KiB"


def test_a_push_over_the_quota_is_refused_with_the_numbers_and_leaves_nothing(tmp_path: Path) -> None:
    limit = 300 * KiB
    with _start(tmp_path, [{"repositories": ["team-a/**"], "limit": limit}]) as server:
        root = server.root
        one, two = images.image(seed=1), images.image(seed=2)
        for img, tag in ((one, "v1"), (two, "v2")):
            done = _push(tmp_path, server, img, f"team-a/app:{tag}")
            assert done.returncode == 0, done.stderr.decode()
        used = _size(one) + _size(two)
        assert _metric(server, "used", 1, "team-a/**") == used
        assert _metric(server, "limit", 1, "team-a/**") == limit

        big = images.image(seed=3, layers=1, layer_size=128 * KiB)
        layer = big.layers[0]
        assert used + layer.size > limit
        refused = _push(tmp_path, server, big, "team-a/app:v3")
        err = refused.stderr.decode()
        assert refused.returncode != 0
        assert "denied" in err.lower(), err
        assert f"quota 1 (team-a/**) is {_human(used)} of 300 KiB; this push needs {_human(layer.size)} more" in err, \
            err
        assert not _blob_file(root, layer.digest).exists(), "the refused layer was stored"
        assert _links(root, layer.digest) == []
        assert not (root / "repositories/team-a/app/_manifests/tags/v3").exists()
        assert not _links(root, big.digest)
        assert list((root / "uploads").iterdir()) == [], "the refused upload's session remains"
        assert _metric(server, "used", 1, "team-a/**") == used

        # The quota covers team-a/** only.
        done = _push(tmp_path, server, big, "team-b/app:v3")
        assert done.returncode == 0, done.stderr.decode()
        assert _blob_file(root, layer.digest).exists()
        assert _metric(server, "used", 1, "team-a/**") == used


def test_a_direct_upload_mount_or_manifest_over_the_quota_is_refused(tmp_path: Path) -> None:
    limit = 100 * KiB
    with _start(tmp_path, [{"repositories": ["team-a/**", "shared"], "limit": limit}]) as server:
        root, client = server.root, Client(server.url)
        first = os.urandom(80 * KiB)
        first_digest = client.push_blob("team-a/app", first)
        assert _metric(server, "used", 1, "team-a/**,shared") == len(first)

        # A chunked upload whose final PUT would go over: refused, the session and its data removed.
        data = os.urandom(30 * KiB)
        digest = digest_of(data)
        location = client.start_upload("team-a/app")
        r = client.request("PATCH", location, body=data, headers={"Content-Type": "application/octet-stream"})
        assert r.status == 202, r.body
        r = client.request("PUT", f"{location}?digest={digest}")
        assert r.status == 403, r.body
        assert r.error_codes() == ["DENIED"]
        error = r.json()["errors"][0]
        assert error["message"] == (f"quota 1 (team-a/**,shared) is 80 KiB of 100 KiB; this push needs 30 KiB more "
                                    f"({len(first)} + {len(data)} > {limit} bytes)")
        assert error["detail"] == {"quota": 1, "repositories": ["team-a/**", "shared"], "limit": limit,
                                   "used": len(first), "requested": len(data)}
        assert client.request("GET", location).status == 404
        assert list((root / "uploads").iterdir()) == []
        assert not _blob_file(root, digest).exists()
        assert _links(root, digest) == []

        # The same as one POST with ?digest=.
        r = client.request("POST", f"/v2/shared/blobs/uploads/?digest={digest}", body=data,
                           headers={"Content-Type": "application/octet-stream"})
        assert r.status == 403, r.body
        assert "this push needs 30 KiB more" in r.body.decode()
        assert list((root / "uploads").iterdir()) == []

        # A mount from a repository outside the quota.
        client.push_blob("elsewhere", data)
        r = client.request("POST", f"/v2/team-a/app/blobs/uploads/?mount={digest}&from=elsewhere")
        assert r.status == 403, r.body
        assert r.error_codes() == ["DENIED"]
        assert _links(root, digest) == [root / "repositories/elsewhere/_layers" / digest.replace(":", "/")]

        # A blob the quota already counts is admitted at the limit, by upload and by mount.
        assert client.push_blob("shared", first) == first_digest
        r = client.request("POST", f"/v2/team-a/other/blobs/uploads/?mount={first_digest}&from=team-a/app")
        assert r.status == 201, r.body
        assert _metric(server, "used", 1, "team-a/**,shared") == len(first)

        # A manifest is counted too: here it is what no longer fits.
        config = os.urandom(19 * KiB)
        config_digest = client.push_blob("team-a/app", config)
        manifest = images.canonical({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": first_digest,
                        "size": len(first)}],
            "annotations": {"padding": "x" * 2 * KiB}})
        r = client.push_manifest("team-a/app", "v1", manifest)
        assert r.status == 403, r.body
        assert f"this push needs {_human(len(manifest))} more" in r.body.decode()
        assert not (root / "repositories/team-a/app/_manifests/tags/v1").exists()
        assert not _blob_file(root, digest_of(manifest)).exists()
        assert not list((root / "gc/intents").iterdir())


def test_shared_blobs_count_once_and_deletes_give_room_back(tmp_path: Path) -> None:
    one, two = images.image(seed=11), images.image(seed=12)
    limit = _size(one) + 1000
    with _start(tmp_path, [{"repositories": ["team-a/**"], "limit": limit}]) as server:
        done = _push(tmp_path, server, one, "team-a/app:v1")
        assert done.returncode == 0, done.stderr.decode()
        assert _metric(server, "used", 1, "team-a/**") == _size(one)

        # At the limit, the same image in another repository of the quota and under another tag.
        done = _push(tmp_path, server, one, "team-a/copy:v1")
        assert done.returncode == 0, done.stderr.decode()
        skopeo("copy", "--insecure-policy", "--src-tls-verify=false", "--dest-tls-verify=false",
               f"docker://{server.host}/team-a/app:v1", f"docker://{server.host}/team-a/app:latest",
               workdir=tmp_path)
        assert _metric(server, "used", 1, "team-a/**") == _size(one)
        refused = _push(tmp_path, server, two, "team-a/app:v2")
        assert refused.returncode != 0
        assert "quota 1 (team-a/**)" in refused.stderr.decode()

        # Deleting through this registry gives the room back at once: the manifest and, once no
        # repository of the quota links them, the blobs.
        client = Client(server.url)
        for repo in ("team-a/app", "team-a/copy"):
            assert client.request("DELETE", f"/v2/{repo}/manifests/{one.digest}").status == 202
        assert _metric(server, "used", 1, "team-a/**") == _size(one) - one.manifest.size
        for repo in ("team-a/app", "team-a/copy"):
            for blob in one.blobs:
                assert client.request("DELETE", f"/v2/{repo}/blobs/{blob.digest}").status == 202
        assert _metric(server, "used", 1, "team-a/**") == 0
        done = _push(tmp_path, server, two, "team-a/app:v2")
        assert done.returncode == 0, done.stderr.decode()
        assert _metric(server, "used", 1, "team-a/**") == _size(two)


def test_the_walk_counts_what_garbage_collection_freed(tmp_path: Path) -> None:
    """GC (or another replica) changes the storage behind the server's back: the next walk counts it."""
    one = images.image(seed=21)
    with _start(tmp_path, [{"repositories": ["team-a/**"], "limit": 10 * 1024 * KiB}]) as server:
        done = _push(tmp_path, server, one, "team-a/app:v1")
        assert done.returncode == 0, done.stderr.decode()
        skopeo("delete", "--tls-verify=false", f"docker://{server.host}/team-a/app:v1", workdir=tmp_path)
        # The layers stay linked until garbage collection removes them.
        assert _metric(server, "used", 1, "team-a/**") == _size(one) - one.manifest.size
        gc = subprocess.run([DOCKYARD, "registry", "gc", "--root", str(server.root), "--grace-period", "0s"],
                            capture_output=True, text=True, timeout=120, check=False)
        assert gc.returncode == 0, gc.stderr
        assert all(not _blob_file(server.root, b.digest).exists() for b in one.blobs)
        server.restart()
        _wait(lambda: _metric(server, "used", 1, "team-a/**") == 0, "the start-up walk to count nothing")
