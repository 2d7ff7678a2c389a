"""Manifest PUTs are validated as strictly as distribution does, so nothing stored can stop GC.

A manifest the registry acknowledges must be one every later reader (pulls, the referrers
API, garbage collection) understands: schemaVersion 2, a known media type, well-formed
descriptors. Foreign (non-distributable) layers are the one reference that need not exist.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dockyard.oci import Digest
from dockyard.registry.storage import FilesystemStorage, StoredManifest
from tests.registry.conftest import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, Client, digest_of
from tests.registry.processes import DOCKYARD, RegistryProcess

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"


def _gc(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKYARD, "registry", "gc", "--root", str(root), "--json", "--grace-period", "0s"],
                          capture_output=True, text=True, timeout=60, check=False)


def _config(client: Client, repo: str) -> dict[str, object]:
    body = b'{"os":"linux"}'
    return {"mediaType": OCI_CONFIG, "digest": client.push_blob(repo, body), "size": len(body)}


def test_schema1_manifest_is_refused_and_gc_keeps_working(server: RegistryProcess, client: Client,
                                                           repo: str) -> None:
    body = json.dumps({"schemaVersion": 1, "name": repo, "tag": "t", "fsLayers": [], "history": []}).encode()
    r = client.push_manifest(repo, "t", body, SCHEMA1)
    assert r.status == 400
    assert r.error_codes() == ["MANIFEST_INVALID"]
    gc = _gc(server.root)
    assert gc.returncode == 0, gc.stderr


@pytest.mark.parametrize(("case", "content_type", "doc"), [
    ("no schemaVersion, unknown type", "application/x-anything",
     {"config": {"mediaType": OCI_CONFIG, "digest": digest_of(b"x"), "size": 1}, "layers": []}),
    ("unknown declared type", "application/json",
     {"schemaVersion": 2, "mediaType": "application/vnd.example.thing+json", "layers": []}),
    ("image without config", OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}),
    ("index without manifests", OCI_INDEX, {"schemaVersion": 2, "mediaType": OCI_INDEX}),
    ("image with a manifests list", DOCKER_MANIFEST,
     {"schemaVersion": 2, "manifests": [],
      "config": {"mediaType": OCI_CONFIG, "digest": digest_of(b"x"), "size": 1}, "layers": []}),
    ("index with layers", OCI_INDEX, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "layers": []}),
    ("schemaVersion as a string", OCI_INDEX, {"schemaVersion": "2", "mediaType": OCI_INDEX, "manifests": []}),
    ("layer descriptor without digest", OCI_MANIFEST,
     {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
      "config": {"mediaType": OCI_CONFIG, "digest": digest_of(b"x"), "size": 1},
      "layers": [{"mediaType": OCI_LAYER, "size": 1}]}),
])
def test_malformed_manifests_are_manifest_invalid(client: Client, repo: str, case: str, content_type: str,
                                                  doc: dict[str, object]) -> None:
    r = client.push_manifest(repo, "bad", json.dumps(doc).encode(), content_type)
    assert r.status == 400, case
    assert r.error_codes() == ["MANIFEST_INVALID"], case
    assert client.request("GET", f"/v2/{repo}/manifests/bad").status == 404


def test_deeply_nested_manifest_is_400_not_500(client: Client, repo: str) -> None:
    nested = b'{"schemaVersion":2,"mediaType":"' + OCI_INDEX.encode() + b'","manifests":[],"annotations":' \
        + b"[" * 5000 + b"]" * 5000 + b"}"
    r = client.push_manifest(repo, "deep", nested, OCI_INDEX)
    assert r.status == 400
    assert r.error_codes() == ["MANIFEST_INVALID"]


@pytest.mark.parametrize("media_type", [FOREIGN, NONDISTRIBUTABLE])
def test_foreign_layers_need_not_be_pushed(client: Client, repo: str, media_type: str) -> None:
    """The distribution spec: non-distributable layers are fetched from their `urls`, not the registry."""
    foreign = {"mediaType": media_type, "digest": digest_of(b"windows base layer"), "size": 18,
               "urls": ["https://example.com/layer.tar.gz"]}
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": _config(client, repo),
                       "layers": [foreign]}).encode()
    r = client.push_manifest(repo, "win", body)
    assert r.status == 201, r.body
    assert client.request("GET", f"/v2/{repo}/manifests/win").body == body


def test_a_foreign_layer_without_urls_must_be_pushed(client: Client, repo: str) -> None:
    layer = {"mediaType": FOREIGN, "digest": digest_of(b"windows base layer"), "size": 18}
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": _config(client, repo),
                       "layers": [layer]}).encode()
    r = client.push_manifest(repo, "win", body)
    assert r.status == 400
    assert r.error_codes() == ["MANIFEST_BLOB_UNKNOWN"]


def test_gc_skips_and_reports_an_unreadable_stored_manifest(tmp_path: Path) -> None:
    """Data written before validation was strict (or damaged on disk) must not stop collection."""
    root = tmp_path / "root"
    storage = FilesystemStorage(root)
    body = b"{this is not json"
    storage.put_manifest("app", "broken", StoredManifest(Digest.of(body), OCI_MANIFEST, body))
    orphan = b"nobody references me"
    d = Digest.of(orphan)
    storage.blob_path(d).parent.mkdir(parents=True, exist_ok=True)
    storage.blob_path(d).write_bytes(orphan)
    gc = _gc(root)
    assert gc.returncode == 0, gc.stderr
    report = json.loads(gc.stdout)
    assert report["manifests_unreadable"] == [f"app@{Digest.of(body)}"]
    assert report["blobs_deleted"] == 1
