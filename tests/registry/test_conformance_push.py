"""Conformance, push workflow: end-4a/4b, end-5, end-6, end-7, end-11, end-13, end-14 and the
error codes a client meets while pushing (DIGEST_INVALID, SIZE_INVALID, BLOB_UPLOAD_UNKNOWN,
MANIFEST_BLOB_UNKNOWN, MANIFEST_INVALID)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from tests.registry.conftest import (
    EMPTY_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Client,
    digest_of,
    image_manifest,
)


def _blob_visible(client: Client, repo: str, digest: str) -> bool:
    return client.request("HEAD", f"/v2/{repo}/blobs/{digest}").status == 200


# ---- blobs -------------------------------------------------------------------------------------

def test_end4a_post_opens_a_session_with_location(client: Client, repo: str) -> None:
    r = client.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status == 202
    assert r.header("Location", ).startswith(f"/v2/{repo}/blobs/uploads/")  # type: ignore[union-attr]
    assert r.header("Range") == "0-0"


def test_end4a_end6_monolithic_post_then_put(client: Client, repo: str) -> None:
    data = os.urandom(70_000)
    digest = digest_of(data)
    location = client.start_upload(repo)
    r = client.request("PUT", f"{location}?digest={digest}", body=data)
    assert r.status == 201
    assert r.header("Location") == f"/v2/{repo}/blobs/{digest}"
    assert r.header("Docker-Content-Digest") == digest
    assert client.request("GET", f"/v2/{repo}/blobs/{digest}").body == data


def test_end4b_post_with_digest_uploads_in_one_request(client: Client, repo: str) -> None:
    data = os.urandom(4096)
    digest = digest_of(data)
    r = client.request("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", body=data,
                       headers={"Content-Type": "application/octet-stream"})
    assert r.status == 201
    assert r.header("Location") == f"/v2/{repo}/blobs/{digest}"
    assert client.request("GET", f"/v2/{repo}/blobs/{digest}").body == data


def test_end4b_post_with_wrong_digest_is_rejected_and_leaves_nothing(client: Client, repo: str) -> None:
    claimed = digest_of(b"what the client claims")
    r = client.request("POST", f"/v2/{repo}/blobs/uploads/?digest={claimed}", body=b"something else")
    assert r.status == 400
    assert r.error_codes() == ["DIGEST_INVALID"]
    assert not _blob_visible(client, repo, claimed)
    assert not _blob_visible(client, repo, digest_of(b"something else"))


def test_end5_chunked_upload_in_order_then_close(client: Client, repo: str) -> None:
    data = os.urandom(3 * 65536 + 17)
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    location = client.start_upload(repo)
    offset = 0
    for chunk in chunks:
        r = client.request("PATCH", location, body=chunk, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
        assert r.status == 202, r.body
        offset += len(chunk)
        assert r.header("Range") == f"0-{offset - 1}"
        location = r.header("Location")  # type: ignore[assignment]
        assert location
    digest = digest_of(data)
    r = client.request("PUT", f"{location}?digest={digest}")
    assert r.status == 201
    assert client.request("GET", f"/v2/{repo}/blobs/{digest}").body == data


def test_end5_out_of_order_chunk_is_416_with_current_range(client: Client, repo: str) -> None:
    location = client.start_upload(repo)
    assert client.request("PATCH", location, body=b"0123456789",
                          headers={"Content-Range": "0-9"}).status == 202
    skipped = client.request("PATCH", location, body=b"abcdefghij", headers={"Content-Range": "20-29"})
    assert skipped.status == 416
    assert skipped.header("Range") == "0-9"
    repeated = client.request("PATCH", location, body=b"0123456789", headers={"Content-Range": "0-9"})
    assert repeated.status == 416
    # the upload is intact and continues where it stood
    assert client.request("PATCH", location, body=b"abcdefghij",
                          headers={"Content-Range": "10-19"}).status == 202
    digest = digest_of(b"0123456789abcdefghij")
    assert client.request("PUT", f"{location}?digest={digest}").status == 201


def test_end5_malformed_content_range_is_416(client: Client, repo: str) -> None:
    location = client.start_upload(repo)
    for value in ("abc", "5-2", "0-9"):  # the last one does not match the 3-byte body
        r = client.request("PATCH", location, body=b"abc", headers={"Content-Range": value})
        assert r.status == 416, value


def test_end5_streamed_patch_without_content_range(client: Client, repo: str) -> None:
    data = os.urandom(1_000_003)

    def stream() -> Iterator[bytes]:
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]

    location = client.start_upload(repo)
    r = client.request("PATCH", location, body=stream(), headers={"Content-Type": "application/octet-stream"})
    assert r.status == 202
    assert r.header("Range") == f"0-{len(data) - 1}"
    digest = digest_of(data)
    assert client.request("PUT", f"{r.header('Location')}?digest={digest}").status == 201
    assert client.request("GET", f"/v2/{repo}/blobs/{digest}").body == data


def test_end6_put_with_final_chunk(client: Client, repo: str) -> None:
    location = client.start_upload(repo)
    assert client.request("PATCH", location, body=b"first-", headers={"Content-Range": "0-5"}).status == 202
    digest = digest_of(b"first-last")
    r = client.request("PUT", f"{location}?digest={digest}", body=b"last",
                       headers={"Content-Range": "6-9"})
    assert r.status == 201
    assert client.request("GET", f"/v2/{repo}/blobs/{digest}").body == b"first-last"


def test_end6_put_with_wrong_digest_is_digest_invalid_and_nothing_visible(client: Client, repo: str) -> None:
    location = client.start_upload(repo)
    wrong = digest_of(b"other content")
    r = client.request("PUT", f"{location}?digest={wrong}", body=b"actual content")
    assert r.status == 400
    assert r.error_codes() == ["DIGEST_INVALID"]
    assert not _blob_visible(client, repo, wrong)
    assert not _blob_visible(client, repo, digest_of(b"actual content"))


def test_end6_put_without_digest_is_rejected(client: Client, repo: str) -> None:
    location = client.start_upload(repo)
    r = client.request("PUT", location, body=b"data")
    assert r.status == 400
    assert r.error_codes() == ["DIGEST_INVALID"]


def test_end6_sha512_digest_is_verified(client: Client, repo: str) -> None:
    data = os.urandom(100_000)
    location = client.start_upload(repo)
    assert client.request("PATCH", location, body=data).status == 202
    digest = digest_of(data, "sha512")
    r = client.request("PUT", f"{location}?digest={digest}")
    assert r.status == 201
    assert r.header("Docker-Content-Digest") == digest


def test_end13_upload_status_is_204_with_range(client: Client, repo: str) -> None:
    location = client.start_upload(repo)
    r = client.request("GET", location)
    assert r.status == 204
    assert r.header("Range") == "0-0"
    client.request("PATCH", location, body=b"x" * 100, headers={"Content-Range": "0-99"})
    r = client.request("GET", location)
    assert r.status == 204
    assert r.header("Range") == "0-99"
    assert r.header("Location")


def test_end13_unknown_upload_is_404_blob_upload_unknown(client: Client, repo: str) -> None:
    for upload in ("0" * 32, "not-an-upload", "..%2F..%2Fetc"):
        r = client.request("GET", f"/v2/{repo}/blobs/uploads/{upload}")
        assert r.status == 404, upload
        assert r.error_codes() == ["BLOB_UPLOAD_UNKNOWN"]


def test_end13_upload_of_another_repository_is_unknown(client: Client, repo: str) -> None:
    location = client.start_upload(repo)
    upload_id = location.rsplit("/", 1)[1]
    r = client.request("GET", f"/v2/{repo}-other/blobs/uploads/{upload_id}")
    assert r.status == 404
    assert r.error_codes() == ["BLOB_UPLOAD_UNKNOWN"]


def test_end14_delete_cancels_the_upload(client: Client, repo: str) -> None:
    location = client.start_upload(repo)
    client.request("PATCH", location, body=b"partial")
    r = client.request("DELETE", location)
    assert r.status == 204
    assert client.request("GET", location).status == 404
    assert client.request("PUT", f"{location}?digest={digest_of(b'partial')}").status == 404
    assert client.request("DELETE", location).status == 404


def test_end6_completed_upload_is_gone_at_once(client: Client, repo: str) -> None:
    data = os.urandom(3000)
    location = client.start_upload(repo)
    assert client.request("PATCH", location, body=data).status == 202
    assert client.request("PUT", f"{location}?digest={digest_of(data)}").status == 201
    # Straight after the 201, before the session's leftovers are removed in the background.
    for method, url in (("GET", location), ("PATCH", location), ("PUT", f"{location}?digest={digest_of(data)}"),
                        ("DELETE", location)):
        r = client.request(method, url, body=b"more" if method == "PATCH" else b"")
        assert r.status == 404, (method, r.status, r.body)
        assert r.error_codes() == ["BLOB_UPLOAD_UNKNOWN"]
    assert client.request("GET", f"/v2/{repo}/blobs/{digest_of(data)}").body == data


def test_end11_mount_from_another_repository(client: Client, repo: str) -> None:
    data = os.urandom(2048)
    digest = client.push_blob(f"{repo}/source", data)
    r = client.request("POST", f"/v2/{repo}/target/blobs/uploads/?mount={digest}&from={repo}/source")
    assert r.status == 201
    assert r.header("Location") == f"/v2/{repo}/target/blobs/{digest}"
    assert r.header("Docker-Content-Digest") == digest
    assert client.request("GET", f"/v2/{repo}/target/blobs/{digest}").body == data


def test_end11_mount_without_from_answers_with_an_upload_session(client: Client, repo: str) -> None:
    """Finding a holder without `from` meant walking every repository per request (365 ms with
    20k of them), so the registry declines, as the spec allows: 202 and a session to upload to."""
    digest = client.push_blob(f"{repo}/a", b"shared layer")
    r = client.request("POST", f"/v2/{repo}/b/blobs/uploads/?mount={digest}")
    assert r.status == 202
    location = r.header("Location")
    assert location
    assert "/blobs/uploads/" in location
    assert client.request("PUT", f"{location}?digest={digest}", body=b"shared layer").status == 201
    assert client.request("GET", f"/v2/{repo}/b/blobs/{digest}").body == b"shared layer"


def test_end11_failed_mount_falls_back_to_an_upload_session(client: Client, repo: str) -> None:
    digest = client.push_blob(f"{repo}/a", b"only in a")
    for query in (f"mount={digest_of(b'nowhere')}&from={repo}/a",
                  f"mount={digest}&from={repo}/does-not-have-it",
                  f"mount={digest}&from=INVALID..name",
                  "mount=not-a-digest"):
        r = client.request("POST", f"/v2/{repo}/b/blobs/uploads/?{query}")
        assert r.status == 202, query
        location = r.header("Location")
        assert location
        assert "/blobs/uploads/" in location
    # the fallback session is a working upload
    assert client.request("PUT", f"{location}?digest={digest_of(b'x')}", body=b"x").status == 201


# ---- manifests -----------------------------------------------------------------------------------

def test_end7_put_manifest_by_tag(client: Client, repo: str) -> None:
    config = client.push_blob(repo, b'{"os":"linux"}')
    layer = client.push_blob(repo, b"layer")
    manifest = image_manifest(config, 14, [(layer, 5)])
    r = client.push_manifest(repo, "v1", manifest)
    assert r.status == 201
    assert r.header("Location") == f"/v2/{repo}/manifests/{digest_of(manifest)}"
    assert r.header("Docker-Content-Digest") == digest_of(manifest)
    assert client.request("GET", f"/v2/{repo}/manifests/v1").body == manifest


def test_end7_put_manifest_by_digest_with_tag_parameters(client: Client, repo: str) -> None:
    config = client.push_blob(repo, b"{}")
    manifest = image_manifest(config, 2, [])
    digest = digest_of(manifest)
    r = client.request("PUT", f"/v2/{repo}/manifests/{digest}?tag=a&tag=b", body=manifest,
                       headers={"Content-Type": OCI_MANIFEST})
    assert r.status == 201
    for tag in ("a", "b"):
        assert client.request("GET", f"/v2/{repo}/manifests/{tag}").body == manifest
    assert client.request("GET", f"/v2/{repo}/tags/list").json()["tags"] == ["a", "b"]


def test_end7_put_by_digest_that_does_not_match_is_digest_invalid(client: Client, repo: str) -> None:
    config = client.push_blob(repo, b"{}")
    manifest = image_manifest(config, 2, [])
    r = client.push_manifest(repo, digest_of(b"something else"), manifest)
    assert r.status == 400
    assert r.error_codes() == ["DIGEST_INVALID"]


def test_end7_sha512_manifest_digest(client: Client, repo: str) -> None:
    config = client.push_blob(repo, b"{}")
    manifest = image_manifest(config, 2, [])
    digest = digest_of(manifest, "sha512")
    r = client.push_manifest(repo, digest, manifest)
    assert r.status == 201
    assert r.header("Docker-Content-Digest") == digest
    assert client.request("GET", f"/v2/{repo}/manifests/{digest}").body == manifest


def test_end7_manifest_is_stored_byte_for_byte(client: Client, repo: str) -> None:
    config = client.push_blob(repo, b"{}")
    body = ('{\n  "schemaVersion" : 2 ,"mediaType":"' + OCI_MANIFEST + '",\n\t"config": {"size":2,'
            '"digest":"' + config + '","mediaType":"application/vnd.oci.image.config.v1+json"},'
            '"layers":[],"annotations":{"z":"1","a":"\\u00e9"}}   \n').encode()
    r = client.push_manifest(repo, "odd-formatting", body)
    assert r.status == 201
    assert r.header("Docker-Content-Digest") == digest_of(body)
    assert client.request("GET", f"/v2/{repo}/manifests/odd-formatting").body == body


def test_end7_missing_layer_is_manifest_blob_unknown(client: Client, repo: str) -> None:
    config = client.push_blob(repo, b"{}")
    missing = digest_of(b"layer never pushed")
    r = client.push_manifest(repo, "v1", image_manifest(config, 2, [(missing, 18)]))
    assert r.status == 400
    assert r.error_codes() == ["MANIFEST_BLOB_UNKNOWN"]
    assert r.json()["errors"][0]["detail"]["digest"] == missing
    assert client.request("GET", f"/v2/{repo}/manifests/v1").status == 404


def test_end7_missing_config_is_manifest_blob_unknown(client: Client, repo: str) -> None:
    r = client.push_manifest(repo, "v1", image_manifest(digest_of(b"no config"), 9, []))
    assert r.status == 400
    assert r.error_codes() == ["MANIFEST_BLOB_UNKNOWN"]


def test_end7_index_of_pushed_manifests(client: Client, repo: str) -> None:
    amd, amd_body = client.push_image(repo, None)
    arm, arm_body = client.push_image(repo, None)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": amd, "size": len(amd_body),
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": arm, "size": len(arm_body),
         "platform": {"architecture": "arm64", "os": "linux"}}]}).encode()
    r = client.push_manifest(repo, "multi", index, OCI_INDEX)
    assert r.status == 201
    got = client.request("GET", f"/v2/{repo}/manifests/multi")
    assert got.body == index
    assert got.header("Content-Type") == OCI_INDEX


def test_end7_index_with_unknown_child_is_manifest_blob_unknown(client: Client, repo: str) -> None:
    missing = digest_of(b"child never pushed")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": missing, "size": 10}]}).encode()
    r = client.push_manifest(repo, "multi", index, OCI_INDEX)
    assert r.status == 400
    assert r.error_codes() == ["MANIFEST_BLOB_UNKNOWN"]


def test_end7_artifact_manifest_with_empty_config(client: Client, repo: str) -> None:
    empty = client.push_blob(repo, EMPTY_CONFIG)
    payload = client.push_blob(repo, b"artifact payload")
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.thing",
        "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/vnd.example.payload", "digest": payload, "size": 16}],
    }).encode()
    assert client.push_manifest(repo, "artifact", manifest).status == 201
    assert client.request("GET", f"/v2/{repo}/manifests/artifact").body == manifest


def test_end7_manifest_over_4_mib_is_413(client: Client, repo: str) -> None:
    config = client.push_blob(repo, b"{}")
    big = image_manifest(config, 2, [], annotations={"padding": "x" * (4 * 1024 * 1024)})
    r = client.push_manifest(repo, "huge", big)
    assert r.status == 413
    assert client.request("GET", f"/v2/{repo}/manifests/huge").status == 404


def test_end7_invalid_manifests_are_manifest_invalid(client: Client, repo: str) -> None:
    config = client.push_blob(repo, b"{}")
    cases = {
        "not json": b"{not json",
        "not an object": b"[1, 2]",
        "bad layer digest": image_manifest(config, 2, [("sha256:1234", 4)]),
        "negative size": image_manifest(config, -2, []),
        "wrong schema version": json.dumps({"schemaVersion": 1, "mediaType": OCI_MANIFEST,
                                            "config": {"digest": config, "size": 2}}).encode(),
    }
    for what, body in cases.items():
        r = client.push_manifest(repo, "bad", body)
        assert r.status == 400, what
        assert r.error_codes() == ["MANIFEST_INVALID"], what
    mismatch = client.push_manifest(repo, "bad", image_manifest(config, 2, []), OCI_INDEX)
    assert mismatch.status == 400
    assert mismatch.error_codes() == ["MANIFEST_INVALID"]


def test_end7_invalid_tag_is_rejected(client: Client, repo: str) -> None:
    config = client.push_blob(repo, b"{}")
    manifest = image_manifest(config, 2, [])
    for tag in ("-leading-dash", ".dot", "x" * 129):
        r = client.push_manifest(repo, tag, manifest)
        assert r.status == 400, tag
        assert r.error_codes() == ["MANIFEST_INVALID"]


def test_end7_retag_moves_the_tag(client: Client, repo: str) -> None:
    first, _ = client.push_image(repo, "latest")
    second, _ = client.push_image(repo, "latest")
    assert first != second
    r = client.request("HEAD", f"/v2/{repo}/manifests/latest")
    assert r.header("Docker-Content-Digest") == second
    assert client.request("HEAD", f"/v2/{repo}/manifests/{first}").status == 200


def test_size_invalid_when_body_is_shorter_than_content_length(client: Client, repo: str) -> None:
    import socket

    location = client.start_upload(repo)
    with socket.create_connection((client.host, client.port), timeout=10) as s:
        s.sendall(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                  "Content-Range: 0-999\r\n\r\n".encode() + b"y" * 400)
        s.shutdown(socket.SHUT_WR)
        s.recv(65536)
    # the truncated chunk was discarded: the upload is still empty and can continue
    r = client.request("GET", location)
    assert r.status == 204
    assert r.header("Range") == "0-0"
    data = os.urandom(1000)
    assert client.request("PATCH", location, body=data, headers={"Content-Range": "0-999"}).status == 202
    assert client.request("PUT", f"{location}?digest={digest_of(data)}").status == 201


def test_end11_mount_without_from_needs_a_repository_that_holds_the_blob(client: Client, repo: str) -> None:
    digest = client.push_blob(f"{repo}/a", b"deleted everywhere")
    assert client.request("DELETE", f"/v2/{repo}/a/blobs/{digest}").status == 202
    r = client.request("POST", f"/v2/{repo}/b/blobs/uploads/?mount={digest}")
    assert r.status == 202  # no repository holds it any more: an upload session instead
    assert client.request("GET", f"/v2/{repo}/b/blobs/{digest}").status == 404
