"""Dockyard and distribution hold the same content byte for byte, whichever way it is copied.

Users mirror between Dockyard and other registries; a digest that changes on the way breaks
signatures, pinned deployments and every `@sha256:` reference. skopeo copies with `--all
--preserve-digests` in both directions, then both sides are read back over HTTP and compared:
raw manifest bytes, and every blob's bytes and sha256.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.registry import images
from tests.registry.conftest import OCI_INDEX, OCI_MANIFEST
from tests.registry.images import Image, Index, write_layout
from tests.registry.processes import Registries, RegistryProcess, request, skopeo

ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


def manifest(server: RegistryProcess, repo: str, ref: str) -> bytes:
    got = request("GET", f"{server.url}/v2/{repo}/manifests/{ref}", headers=ACCEPT)
    assert got.status == 200, f"{server.argv[0]}: manifest {repo}:{ref} -> {got.status} {got.body[:200]!r}"
    return got.body


def blob(server: RegistryProcess, repo: str, digest: str) -> bytes:
    got = request("GET", f"{server.url}/v2/{repo}/blobs/{digest}")
    assert got.status == 200, f"{server.argv[0]}: blob {repo}@{digest} -> {got.status}"
    assert "sha256:" + hashlib.sha256(got.body).hexdigest() == digest, "blob bytes do not match their digest"
    return got.body


def assert_same_content(a: RegistryProcess, b: RegistryProcess, repo: str, tag: str,
                        content: Image | Index) -> None:
    """Both registries serve CONTENT under REPO:TAG, byte for byte as it was built."""
    for server in (a, b):
        assert manifest(server, repo, tag) == content.manifest.data
        assert manifest(server, repo, content.digest) == content.manifest.data
        head = request("HEAD", f"{server.url}/v2/{repo}/manifests/{tag}", headers=ACCEPT)
        assert head.headers["Docker-Content-Digest"] == content.digest
    children = content.images if isinstance(content, Index) else (content,)
    for img in children:
        assert manifest(a, repo, img.digest) == manifest(b, repo, img.digest) == img.manifest.data
        for layer in img.blobs:
            assert blob(a, repo, layer.digest) == blob(b, repo, layer.digest) == layer.data


def copy_all(tmp_path: Path, src: RegistryProcess, dst: RegistryProcess, repo: str, tag: str) -> None:
    skopeo("copy", "--all", "--preserve-digests", "--insecure-policy", "--src-tls-verify=false",
           "--dest-tls-verify=false", f"docker://{src.host}/{repo}:{tag}",
           f"docker://{dst.host}/{repo}:{tag}", workdir=tmp_path)


def push(tmp_path: Path, layout: Path, tag: str, server: RegistryProcess, repo: str) -> None:
    skopeo("copy", "--all", "--insecure-policy", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
           f"docker://{server.host}/{repo}:{tag}", workdir=tmp_path)


def interop(tmp_path: Path, regs: Registries, source: str, destination: str) -> None:
    src, dst = regs.start(source), regs.start(destination)
    multi = images.index(seed=21, platforms=[("linux", "amd64"), ("linux", "arm64")])
    single = images.image(seed=22, layers=3, annotations={"org.opencontainers.image.title": "single"})
    layout = write_layout(tmp_path / "layout", {"multi": multi, "single": single})
    for tag, content in (("multi", multi), ("single", single)):
        push(tmp_path, layout, tag, src, "mirror/app")
        copy_all(tmp_path, src, dst, "mirror/app", tag)
        assert_same_content(src, dst, "mirror/app", tag, content)
    listed = request("GET", f"{dst.url}/v2/mirror/app/tags/list").json()
    assert sorted(listed["tags"]) == ["multi", "single"]


@pytest.mark.parametrize(("source", "destination"), [("dockyard", "distribution"),
                                                     ("distribution", "dockyard")])
def test_copy_preserves_digests(source: str, destination: str, tmp_path: Path) -> None:
    with Registries(tmp_path) as regs:
        interop(tmp_path, regs, source, destination)


def test_round_trip_through_distribution(tmp_path: Path) -> None:
    """dockyard -> distribution -> a second dockyard: the last copy equals the first push."""
    img = images.image(seed=23, layers=2)
    layout = write_layout(tmp_path / "layout", {"v1": img})
    with Registries(tmp_path) as regs:
        first, peer, second = regs.dockyard(), regs.distribution(), regs.dockyard()
        push(tmp_path, layout, "v1", first, "rt/app")
        copy_all(tmp_path, first, peer, "rt/app", "v1")
        copy_all(tmp_path, peer, second, "rt/app", "v1")
        assert_same_content(first, second, "rt/app", "v1", img)
