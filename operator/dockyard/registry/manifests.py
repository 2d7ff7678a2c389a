"""Reading manifests: strict validation of pushes, and a tolerant reading for garbage collection.

Pure functions over a manifest body. The registry stores the bytes exactly as received.
`parse_manifest` admits only what every later reader understands (schemaVersion 2, an OCI or
Docker v2 manifest or index, well-formed descriptors), as distribution does; anything else
is MANIFEST_INVALID, so no push can store a document that later stops garbage collection.
`references` is GC's reading: it trusts no shape and collects every descriptor a stored
manifest could mean, because under-reading a manifest deletes blobs it needs.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from dockyard.oci import Digest, DigestError, ErrorCode, OCIError
from dockyard.oci import mediatypes as mt


@dataclass(frozen=True)
class ParsedManifest:
    media_type: str
    blobs: list[Digest] = field(default_factory=list)
    children: list[Digest] = field(default_factory=list)
    subject: Digest | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None

    def descriptor(self, digest: Digest, size: int) -> dict[str, Any]:
        """The descriptor the referrers API lists for this manifest."""
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": str(digest), "size": size}
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        if self.annotations:
            d["annotations"] = self.annotations
        return d


def _invalid(message: str) -> OCIError:
    return OCIError(ErrorCode.MANIFEST_INVALID, message)


def _load(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise _invalid("manifest is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(f"manifest is not valid JSON: {e}") from None


def _descriptor(desc: Any, where: str) -> Digest:
    if not isinstance(desc, dict):
        raise _invalid(f"{where}: expected a descriptor object")
    digest = desc.get("digest")
    if not isinstance(digest, str):
        raise _invalid(f"{where}: descriptor has no digest")
    try:
        parsed = Digest.parse(digest)
    except DigestError as e:
        raise _invalid(f"{where}: {e}") from None
    size = desc.get("size")
    if type(size) is not int or size < 0:
        raise _invalid(f"{where}: descriptor size must be a non-negative integer")
    if not isinstance(desc.get("mediaType", ""), str):
        raise _invalid(f"{where}: descriptor mediaType must be a string")
    urls = desc.get("urls")
    if urls is not None and (not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)):
        raise _invalid(f"{where}: descriptor urls must be a list of strings")
    return parsed


def _descriptors(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key)
    if not isinstance(value, list):
        raise _invalid(f"{key} must be a list of descriptors")
    return value


def _is_foreign(desc: dict[str, Any]) -> bool:
    """A non-distributable layer with URLs to fetch it from: the registry need not hold it."""
    return desc.get("mediaType") in mt.NON_DISTRIBUTABLE_LAYERS and bool(desc.get("urls"))


def _base_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    base = content_type.split(";", 1)[0].strip().lower()
    return None if base in ("", "application/json", mt.OCTET_STREAM) else base


def _media_type(doc: dict[str, Any], content_type: str | None) -> str:
    """The manifest's type: declared in the body, else the Content-Type, else its shape."""
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    header = _base_type(content_type)
    if declared and header and header != declared:
        raise _invalid(f"Content-Type {header!r} does not match the manifest's mediaType {declared!r}")
    media_type = declared or header or (mt.OCI_INDEX if "manifests" in doc
                                        else mt.OCI_MANIFEST if "config" in doc else None)
    if media_type is None:
        raise _invalid("cannot tell the manifest's type: set mediaType in the body or the Content-Type header")
    if media_type not in mt.MANIFEST_TYPES:
        raise _invalid(f"unsupported manifest type {media_type[:200]!r}: the registry stores OCI image "
                       "manifests and indexes and Docker v2 manifests and manifest lists")
    return media_type


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    """Check a pushed manifest; raise MANIFEST_INVALID with a precise message when it is wrong."""
    doc = _load(body)
    if not isinstance(doc, dict):
        raise _invalid("manifest must be a JSON object")
    if type(doc.get("schemaVersion")) is not int or doc["schemaVersion"] != 2:
        raise _invalid("schemaVersion must be 2")
    media_type = _media_type(doc, content_type)
    blobs: list[Digest] = []
    children: list[Digest] = []
    if media_type in mt.IMAGE_TYPES:
        if "manifests" in doc:
            raise _invalid(f"an image manifest ({media_type}) has no manifests list")
        blobs.append(_descriptor(doc.get("config"), "config"))
        layers = _descriptors(doc, "layers") if "layers" in doc else []
        for i, desc in enumerate(layers):
            digest = _descriptor(desc, f"layers[{i}]")
            if not _is_foreign(desc):
                blobs.append(digest)
    else:
        if "config" in doc or "layers" in doc:
            raise _invalid(f"an index ({media_type}) has no config or layers")
        children.extend(_descriptor(d, f"manifests[{i}]") for i, d in enumerate(_descriptors(doc, "manifests")))

    subject = _descriptor(doc["subject"], "subject") if "subject" in doc else None
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    if not artifact_type and media_type in mt.IMAGE_TYPES:
        artifact_type = doc["config"].get("mediaType")
    annotations = doc.get("annotations")
    if annotations is not None and (not isinstance(annotations, dict)
                                    or not all(isinstance(v, str) for v in annotations.values())):
        raise _invalid("annotations must be a map of strings")
    return ParsedManifest(media_type, blobs, children, subject, artifact_type, annotations or None)


def references(body: bytes) -> tuple[list[Digest], list[Digest]]:
    """(blobs, child manifests) a stored manifest may reference, whatever its declared type.

    Every descriptor under config, layers, blobs (image-spec 1.1-rc artifacts) and manifests
    counts, so a document of an unexpected shape keeps more, never less. Raises ValueError
    when the body is not a JSON object.
    """
    try:
        doc = json.loads(body)
    except (RecursionError, UnicodeDecodeError) as e:
        raise ValueError(str(e)) from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")

    def digests(value: Any) -> list[Digest]:
        out: list[Digest] = []
        for desc in value if isinstance(value, list) else [value]:
            with contextlib.suppress(AttributeError, TypeError, DigestError):
                out.append(Digest.parse(desc["digest"]))
        return out

    blobs = [d for key in ("config", "layers", "blobs") for d in digests(doc.get(key))]
    return blobs, digests(doc.get("manifests"))
