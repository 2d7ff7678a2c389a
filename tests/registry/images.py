"""Small but real OCI images for the registry tests, written as OCI image layout directories.

Real clients (skopeo, oras, distribution) only accept content that is well formed: gzip'd tar
layers whose digests match, an image config with `rootfs.diff_ids`, manifests and indexes with
correct descriptors. This module builds exactly that, deterministically from a seed, and writes
it as an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) that
`skopeo copy oci:DIR:TAG ...` reads. Every builder keeps the exact bytes it produced, so tests
can compare what a registry returns byte for byte.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.registry.conftest import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST
from tests.registry.conftest import OCI_LAYER as OCI_LAYER_GZIP
from tests.registry.conftest import digest_of as sha256

REF_NAME = "org.opencontainers.image.ref.name"


def canonical(obj: Any) -> bytes:
    """JSON as registries store it: exact bytes, which is what the digest covers."""
    return json.dumps(obj, indent=2, sort_keys=False).encode()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes

    @property
    def digest(self) -> str:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Image:
    """One single-platform image: config, layers and the manifest bytes that tie them."""

    config: Blob
    layers: tuple[Blob, ...]
    manifest: Blob
    platform: dict[str, str]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)

    @property
    def digest(self) -> str:
        return self.manifest.digest


@dataclass(frozen=True)
class Index:
    """A multi-platform image index and the images it lists."""

    images: tuple[Image, ...]
    manifest: Blob

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return tuple(b for image in self.images for b in image.blobs)


def layer(files: dict[str, bytes]) -> tuple[Blob, str]:
    """A gzip'd tar layer holding FILES; returns the blob and its uncompressed diff_id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    compressed = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    return Blob(OCI_LAYER_GZIP, compressed), sha256(tar_bytes)


def image(seed: int, *, os_name: str = "linux", arch: str = "amd64", layers: int = 2,
          layer_size: int = 64 * 1024, annotations: dict[str, str] | None = None) -> Image:
    """A runnable-shaped image whose layer contents are random bytes derived from SEED."""
    rng = random.Random(seed)
    blobs: list[Blob] = []
    diff_ids: list[str] = []
    for n in range(layers):
        blob, diff_id = layer({f"data/{seed}-{n}.bin": rng.randbytes(layer_size),
                               f"etc/layer-{n}": f"seed {seed} layer {n}\n".encode()})
        blobs.append(blob)
        diff_ids.append(diff_id)
    config = Blob(OCI_CONFIG, canonical({
        "architecture": arch,
        "os": os_name,
        "config": {"Cmd": ["/bin/true"], "Labels": {"dev.dockyard.test.seed": str(seed)}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"dockyard test layer {n}"} for n in range(layers)],
    }))
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b in blobs],
    }
    if annotations:
        manifest["annotations"] = annotations
    return Image(config, tuple(blobs), Blob(OCI_MANIFEST, canonical(manifest)),
                 {"architecture": arch, "os": os_name})


def index(seed: int, platforms: list[tuple[str, str]], **image_args: Any) -> Index:
    """An image index over one image per (os, arch) in PLATFORMS, each with distinct layers."""
    images = tuple(image(seed * 100 + n, os_name=os_name, arch=arch, **image_args)
                   for n, (os_name, arch) in enumerate(platforms))
    body = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [img.manifest.descriptor(platform=img.platform) for img in images],
    }
    return Index(images, Blob(OCI_INDEX, canonical(body)))


@dataclass
class Layout:
    """An OCI image layout directory under construction."""

    path: Path
    refs: list[dict[str, Any]] = field(default_factory=list)

    def _put(self, blob: Blob) -> None:
        algo, hexdigest = blob.digest.split(":", 1)
        target = self.path / "blobs" / algo / hexdigest
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_bytes(blob.data)

    def add(self, tag: str, content: Image | Index) -> Layout:
        for blob in content.blobs:
            self._put(blob)
        if isinstance(content, Index):
            for img in content.images:
                self._put(img.manifest)
        self._put(content.manifest)
        self.refs.append(content.manifest.descriptor(annotations={REF_NAME: tag}))
        return self.write()

    def write(self) -> Layout:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        (self.path / "index.json").write_bytes(canonical(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}))
        return self


def write_layout(path: Path, tags: dict[str, Image | Index]) -> Path:
    """Write TAGS as an OCI image layout at PATH; `skopeo copy oci:PATH:TAG` reads each tag."""
    out = Layout(path)
    for tag, content in tags.items():
        out.add(tag, content)
    return path


def layout_blob(path: Path, digest: str) -> bytes:
    """The bytes of DIGEST in the OCI layout at PATH (e.g. one skopeo copied out)."""
    algo, hexdigest = digest.split(":", 1)
    return (path / "blobs" / algo / hexdigest).read_bytes()


def layout_ref(path: Path, tag: str) -> dict[str, Any]:
    """The descriptor index.json of the layout at PATH holds for TAG."""
    refs = json.loads((path / "index.json").read_bytes())["manifests"]
    for ref in refs:
        if ref.get("annotations", {}).get(REF_NAME) == tag:
            found: dict[str, Any] = ref
            return found
    raise KeyError(f"{tag} not in {path}/index.json")
