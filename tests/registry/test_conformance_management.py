"""Conformance, content management: end-9 (delete manifests by digest, tags by name) and
end-10 (delete blobs)."""

from __future__ import annotations

from tests.registry.conftest import Client, digest_of


def test_end9_delete_manifest_by_digest(client: Client, repo: str) -> None:
    digest, _ = client.push_image(repo, "v1")
    r = client.request("DELETE", f"/v2/{repo}/manifests/{digest}")
    assert r.status == 202
    for ref in (digest, "v1"):  # the tag pointing to it goes too
        got = client.request("GET", f"/v2/{repo}/manifests/{ref}")
        assert got.status == 404
        assert got.error_codes() == ["MANIFEST_UNKNOWN"]
    assert "v1" not in client.request("GET", f"/v2/{repo}/tags/list").json()["tags"]


def test_end9_delete_unknown_manifest_is_404(client: Client, repo: str) -> None:
    client.push_image(repo, "v1")
    r = client.request("DELETE", f"/v2/{repo}/manifests/{digest_of(b'nope')}")
    assert r.status == 404
    assert r.error_codes() == ["MANIFEST_UNKNOWN"]


def test_end9_delete_tag_keeps_the_manifest(client: Client, repo: str) -> None:
    digest, manifest = client.push_image(repo, "v1")
    assert client.push_manifest(repo, "stable", manifest).status == 201
    assert client.request("DELETE", f"/v2/{repo}/manifests/v1").status == 202
    assert client.request("GET", f"/v2/{repo}/manifests/v1").status == 404
    assert client.request("GET", f"/v2/{repo}/manifests/stable").body == manifest
    assert client.request("GET", f"/v2/{repo}/manifests/{digest}").status == 200
    assert client.request("GET", f"/v2/{repo}/tags/list").json()["tags"] == ["stable"]
    assert client.request("DELETE", f"/v2/{repo}/manifests/v1").status == 404


def test_end10_delete_blob(client: Client, repo: str) -> None:
    digest = client.push_blob(repo, b"to be deleted")
    r = client.request("DELETE", f"/v2/{repo}/blobs/{digest}")
    assert r.status == 202
    got = client.request("GET", f"/v2/{repo}/blobs/{digest}")
    assert got.status == 404
    assert got.error_codes() == ["BLOB_UNKNOWN"]
    again = client.request("DELETE", f"/v2/{repo}/blobs/{digest}")
    assert again.status == 404
    assert again.error_codes() == ["BLOB_UNKNOWN"]


def test_end10_deleting_a_blob_in_one_repository_keeps_it_in_another(client: Client, repo: str) -> None:
    digest = client.push_blob(f"{repo}/a", b"shared")
    client.push_blob(f"{repo}/b", b"shared")
    assert client.request("DELETE", f"/v2/{repo}/a/blobs/{digest}").status == 202
    assert client.request("GET", f"/v2/{repo}/b/blobs/{digest}").body == b"shared"


def test_unsupported_methods_are_405(client: Client, repo: str) -> None:
    digest, _ = client.push_image(repo, "v1")
    for method, path in (("POST", f"/v2/{repo}/manifests/v1"), ("PATCH", f"/v2/{repo}/blobs/{digest}"),
                         ("PUT", f"/v2/{repo}/tags/list"), ("DELETE", "/v2/_catalog")):
        r = client.request(method, path, body=b"")
        assert r.status == 405, (method, path)
        assert r.error_codes() == ["UNSUPPORTED"]
