"""Validation of pushed manifests: what they reference and how the referrers API describes them.

Pure functions over the request body. The registry stores the bytes exactly as received;
it only reads the fields it needs: the media type, the blobs (config, layers) of an image
manifest, the children of an index and the optional `subject`.
"""

from __future__ import annotations

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


def _descriptor_digest(desc: Any, where: str) -> Digest:
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
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where}: descriptor size must be a non-negative integer")
    if not isinstance(desc.get("mediaType", ""), str):
        raise _invalid(f"{where}: descriptor mediaType must be a string")
    return parsed


def _base_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:  # noqa: C901  one check per field
    """Check a manifest body; raise MANIFEST_INVALID with a precise message when it is wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise _invalid(f"manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise _invalid("manifest must be a JSON object")
    header = _base_type(content_type)
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise _invalid("mediaType must be a string")
    if declared and header and header not in (declared, "application/json", mt.OCTET_STREAM):
        raise _invalid(f"Content-Type {header!r} does not match the manifest's mediaType {declared!r}")
    media_type = declared or (header if header not in (None, "application/json", mt.OCTET_STREAM)
                              else (mt.OCI_INDEX if "manifests" in doc else mt.OCI_MANIFEST))
    assert media_type is not None
    if media_type in mt.MANIFEST_TYPES and doc.get("schemaVersion") != 2:
        raise _invalid("schemaVersion must be 2")

    blobs: list[Digest] = []
    children: list[Digest] = []
    if media_type in mt.IMAGE_TYPES or ("config" in doc and "manifests" not in doc):
        if "config" in doc or media_type in mt.IMAGE_TYPES:
            blobs.append(_descriptor_digest(doc.get("config"), "config"))
        layers = doc.get("layers", [])
        if not isinstance(layers, list):
            raise _invalid("layers must be a list")
        blobs.extend(_descriptor_digest(d, f"layers[{i}]") for i, d in enumerate(layers))
    if media_type in mt.INDEX_TYPES or "manifests" in doc:
        manifests = doc.get("manifests", [])
        if not isinstance(manifests, list):
            raise _invalid("manifests must be a list")
        children.extend(_descriptor_digest(d, f"manifests[{i}]") for i, d in enumerate(manifests))
    if "blobs" in doc and isinstance(doc["blobs"], list):  # artifact manifests of image-spec 1.1-rc
        blobs.extend(_descriptor_digest(d, f"blobs[{i}]") for i, d in enumerate(doc["blobs"]))

    subject = None
    if "subject" in doc:
        subject = _descriptor_digest(doc["subject"], "subject")
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise _invalid("artifactType must be a string")
    if not artifact_type and media_type in mt.IMAGE_TYPES and isinstance(doc.get("config"), dict):
        artifact_type = doc["config"].get("mediaType")
    annotations = doc.get("annotations")
    if annotations is not None and (not isinstance(annotations, dict)
                                    or not all(isinstance(v, str) for v in annotations.values())):
        raise _invalid("annotations must be a map of strings")
    return ParsedManifest(media_type, blobs, children, subject, artifact_type, annotations or None)
