"""Conformance, content discovery: end-8a/8b (tag list and pagination), end-12a/12b (referrers,
`OCI-Subject`, `artifactType` filtering, `OCI-Filters-Applied`) and `/v2/_catalog` pagination."""

from __future__ import annotations

import json
import os
from urllib.parse import quote

from tests.registry.conftest import EMPTY_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Client, digest_of

SBOM = "application/spdx+json"
SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"


def _tag_all(client: Client, repo: str, tags: list[str]) -> None:
    _, manifest = client.push_image(repo, tags[0])
    for tag in tags[1:]:
        assert client.push_manifest(repo, tag, manifest).status == 201


def test_end8a_tag_list_is_lexically_sorted(client: Client, repo: str) -> None:
    tags = ["v2", "latest", "v10", "A", "v1"]
    _tag_all(client, repo, tags)
    r = client.request("GET", f"/v2/{repo}/tags/list")
    assert r.status == 200
    assert r.json() == {"name": repo, "tags": sorted(tags)}
    assert r.header("Link") is None


def test_end8b_pagination_with_n_last_and_link(client: Client, repo: str) -> None:
    tags = [f"t{i:02d}" for i in range(7)]
    _tag_all(client, repo, tags)
    seen: list[str] = []
    url = f"/v2/{repo}/tags/list?n=3"
    pages = 0
    while url:
        r = client.request("GET", url)
        assert r.status == 200
        page = r.json()["tags"]
        assert len(page) <= 3
        seen += page
        pages += 1
        link = r.header("Link")
        if link is None:
            break
        assert link.endswith('; rel="next"')
        url = link[link.index("<") + 1:link.index(">")]
    assert seen == tags
    assert pages == 3


def test_end8b_last_returns_tags_after_it(client: Client, repo: str) -> None:
    _tag_all(client, repo, ["a", "b", "c", "d"])
    r = client.request("GET", f"/v2/{repo}/tags/list?n=2&last=b")
    assert r.json()["tags"] == ["c", "d"]
    assert r.header("Link") is None
    assert client.request("GET", f"/v2/{repo}/tags/list?last=c").json()["tags"] == ["d"]
    assert client.request("GET", f"/v2/{repo}/tags/list?n=0").json()["tags"] == []


def test_end8b_invalid_n_is_400(client: Client, repo: str) -> None:
    _tag_all(client, repo, ["a"])
    for n in ("-1", "abc", "1e3"):
        assert client.request("GET", f"/v2/{repo}/tags/list?n={n}").status == 400, n


def test_end8a_unknown_repository_is_404_name_unknown(client: Client, repo: str) -> None:
    r = client.request("GET", f"/v2/{repo}/tags/list")
    assert r.status == 404
    assert r.error_codes() == ["NAME_UNKNOWN"]


def test_catalog_lists_repositories_with_pagination(client: Client, repo: str) -> None:
    names = [f"{repo}/cat{i}" for i in range(5)]
    for name in names:
        client.push_image(name, "v1")
    everything = client.request("GET", "/v2/_catalog").json()["repositories"]
    assert everything == sorted(everything)
    assert set(names) <= set(everything)
    seen: list[str] = []
    url = "/v2/_catalog?n=2"
    while url:
        r = client.request("GET", url)
        seen += r.json()["repositories"]
        link = r.header("Link")
        url = link[link.index("<") + 1:link.index(">")] if link else ""
    assert seen == everything


def _referrer(client: Client, repo: str, subject: str, subject_size: int, artifact_type: str,
              annotations: dict[str, str], tag: str | None = None) -> str:
    empty = client.push_blob(repo, EMPTY_CONFIG)
    payload = client.push_blob(repo, os.urandom(32))
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": OCI_EMPTY, "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": payload, "size": 32}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size},
        "annotations": annotations,
    }).encode()
    digest = digest_of(body)
    r = client.push_manifest(repo, tag or digest, body)
    assert r.status == 201
    assert r.header("OCI-Subject") == subject
    return digest


def test_end12a_referrers_list_descriptors_with_artifact_type_and_annotations(client: Client,
                                                                            repo: str) -> None:
    subject, body = client.push_image(repo, "v1")
    sbom = _referrer(client, repo, subject, len(body), SBOM, {"org.example": "sbom"})
    sig = _referrer(client, repo, subject, len(body), SIGNATURE, {"org.example": "sig"})
    r = client.request("GET", f"/v2/{repo}/referrers/{subject}")
    assert r.status == 200
    assert r.header("Content-Type") == OCI_INDEX
    index = r.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == OCI_INDEX
    found = {d["digest"]: d for d in index["manifests"]}
    assert set(found) == {sbom, sig}
    assert found[sbom]["artifactType"] == SBOM
    assert found[sbom]["annotations"] == {"org.example": "sbom"}
    assert found[sig]["artifactType"] == SIGNATURE
    for digest, desc in found.items():
        assert desc["mediaType"] == OCI_MANIFEST
        assert desc["size"] == len(client.request("GET", f"/v2/{repo}/manifests/{digest}").body)
    assert r.header("OCI-Filters-Applied") is None


def test_end12b_artifact_type_filter(client: Client, repo: str) -> None:
    subject, body = client.push_image(repo, "v1")
    sbom = _referrer(client, repo, subject, len(body), SBOM, {})
    _referrer(client, repo, subject, len(body), SIGNATURE, {})
    r = client.request("GET", f"/v2/{repo}/referrers/{subject}?artifactType={quote(SBOM, safe='')}")
    assert r.status == 200
    assert r.header("OCI-Filters-Applied") == "artifactType"
    assert [d["digest"] for d in r.json()["manifests"]] == [sbom]
    none = client.request("GET", f"/v2/{repo}/referrers/{subject}?artifactType=application/none")
    assert none.json()["manifests"] == []


def test_end12a_referrers_of_unknown_subject_is_an_empty_index(client: Client, repo: str) -> None:
    r = client.request("GET", f"/v2/{repo}/referrers/{digest_of(b'nothing refers to me')}")
    assert r.status == 200
    assert r.json()["manifests"] == []


def test_end12a_subject_may_be_pushed_before_the_subject_exists(client: Client, repo: str) -> None:
    future = digest_of(b"subject pushed later")
    ref = _referrer(client, repo, future, 20, SBOM, {})
    r = client.request("GET", f"/v2/{repo}/referrers/{future}")
    assert [d["digest"] for d in r.json()["manifests"]] == [ref]


def test_end12a_image_manifest_without_artifact_type_reports_config_media_type(client: Client,
                                                                               repo: str) -> None:
    subject, body = client.push_image(repo, "v1")
    config = client.push_blob(repo, b'{"kind":"note"}')
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.example.note.config", "digest": config, "size": 15},
        "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": len(body)},
    }).encode()
    assert client.push_manifest(repo, digest_of(manifest), manifest).status == 201
    found = client.request("GET", f"/v2/{repo}/referrers/{subject}").json()["manifests"]
    assert [d["artifactType"] for d in found] == ["application/vnd.example.note.config"]


def test_end12a_deleted_referrer_disappears(client: Client, repo: str) -> None:
    subject, body = client.push_image(repo, "v1")
    ref = _referrer(client, repo, subject, len(body), SBOM, {})
    assert client.request("DELETE", f"/v2/{repo}/manifests/{ref}").status == 202
    assert client.request("GET", f"/v2/{repo}/referrers/{subject}").json()["manifests"] == []


def test_end12a_invalid_digest_is_400(client: Client, repo: str) -> None:
    r = client.request("GET", f"/v2/{repo}/referrers/sha256:nothex")
    assert r.status == 400
    assert r.error_codes() == ["DIGEST_INVALID"]
