"""Conformance, pull workflow: end-1, end-2 (blobs, Range) and end-3 (manifests by tag and digest)."""

from __future__ import annotations

import json
import os

from tests.registry.conftest import OCI_MANIFEST, Client, digest_of


def test_end1_base_endpoint_answers_200(client: Client) -> None:
    r = client.request("GET", "/v2/")
    assert r.status == 200
    assert r.header("Docker-Distribution-API-Version") == "registry/2.0"


def test_end2_get_blob_returns_exact_bytes_with_digest_and_length(client: Client, repo: str) -> None:
    data = os.urandom(300_000)
    digest = client.push_blob(repo, data)
    r = client.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert r.status == 200
    assert r.body == data
    assert r.header("Docker-Content-Digest") == digest
    assert r.header("Content-Length") == str(len(data))


def test_end2_head_blob_has_headers_and_no_body(client: Client, repo: str) -> None:
    data = os.urandom(1234)
    digest = client.push_blob(repo, data)
    r = client.request("HEAD", f"/v2/{repo}/blobs/{digest}")
    assert r.status == 200
    assert r.body == b""
    assert r.header("Content-Length") == "1234"
    assert r.header("Docker-Content-Digest") == digest


def test_end2_range_get_returns_206_with_the_slice(client: Client, repo: str) -> None:
    data = os.urandom(10_000)
    digest = client.push_blob(repo, data)
    r = client.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=100-199"})
    assert r.status == 206
    assert r.body == data[100:200]
    assert r.header("Content-Range") == "bytes 100-199/10000"
    tail = client.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=9990-"})
    assert tail.status == 206
    assert tail.body == data[9990:]


def test_end2_unsatisfiable_range_is_416(client: Client, repo: str) -> None:
    digest = client.push_blob(repo, b"short")
    r = client.request("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=100-200"})
    assert r.status == 416


def test_end2_unknown_blob_is_404_blob_unknown(client: Client, repo: str) -> None:
    client.push_blob(repo, b"something")
    missing = digest_of(b"never pushed")
    for method in ("GET", "HEAD"):
        r = client.request(method, f"/v2/{repo}/blobs/{missing}")
        assert r.status == 404
    assert client.request("GET", f"/v2/{repo}/blobs/{missing}").error_codes() == ["BLOB_UNKNOWN"]


def test_end2_blob_of_another_repository_is_not_served(client: Client, repo: str) -> None:
    digest = client.push_blob(repo, b"private to one repository")
    r = client.request("GET", f"/v2/{repo}-other/blobs/{digest}")
    assert r.status == 404
    assert r.error_codes() == ["BLOB_UNKNOWN"]


def test_end2_invalid_digest_is_400_digest_invalid(client: Client, repo: str) -> None:
    for bad in ("sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64, "nocolon"):
        r = client.request("GET", f"/v2/{repo}/blobs/{bad}")
        assert r.status == 400, bad
        assert r.error_codes() == ["DIGEST_INVALID"], bad


def test_end3_get_manifest_by_tag_and_digest_is_byte_exact(client: Client, repo: str) -> None:
    digest, manifest = client.push_image(repo, "v1")
    for ref in ("v1", digest):
        r = client.request("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert r.status == 200
        assert r.body == manifest
        assert r.header("Content-Type") == OCI_MANIFEST
        assert r.header("Docker-Content-Digest") == digest
        assert r.header("Content-Length") == str(len(manifest))


def test_end3_head_manifest(client: Client, repo: str) -> None:
    digest, manifest = client.push_image(repo, "v1")
    r = client.request("HEAD", f"/v2/{repo}/manifests/v1")
    assert r.status == 200
    assert r.body == b""
    assert r.header("Docker-Content-Digest") == digest
    assert r.header("Content-Length") == str(len(manifest))
    assert r.header("Content-Type") == OCI_MANIFEST


def test_end3_content_type_is_the_manifests_own_media_type(client: Client, repo: str) -> None:
    docker = "application/vnd.docker.distribution.manifest.v2+json"
    config = client.push_blob(repo, b'{"os":"linux"}')
    body = json.dumps({"schemaVersion": 2, "mediaType": docker,
                       "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                  "digest": config, "size": 14},
                       "layers": []}).encode()
    assert client.push_manifest(repo, "docker", body, docker).status == 201
    r = client.request("GET", f"/v2/{repo}/manifests/docker")
    assert r.header("Content-Type") == docker


def test_end3_unknown_manifest_is_404_manifest_unknown(client: Client, repo: str) -> None:
    client.push_image(repo, "v1")
    for ref in ("nope", digest_of(b"unknown")):
        r = client.request("GET", f"/v2/{repo}/manifests/{ref}")
        assert r.status == 404
        assert r.error_codes() == ["MANIFEST_UNKNOWN"]
        assert client.request("HEAD", f"/v2/{repo}/manifests/{ref}").status == 404


def test_end3_manifest_of_another_repository_is_not_served(client: Client, repo: str) -> None:
    digest, _ = client.push_image(repo, "v1")
    assert client.request("GET", f"/v2/{repo}x/manifests/{digest}").status == 404


def test_sha512_blob_round_trip(client: Client, repo: str) -> None:
    data = os.urandom(5000)
    digest = client.push_blob(repo, data, "sha512")
    assert digest.startswith("sha512:")
    r = client.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert r.status == 200
    assert r.body == data
    assert r.header("Docker-Content-Digest") == digest
