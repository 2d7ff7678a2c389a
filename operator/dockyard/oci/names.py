"""Repository name, tag and reference rules of the Distribution Specification.

The name regex guarantees that no path component is empty, `.`, `..` or starts with `_`,
which the filesystem storage relies on: a valid name is always a safe relative path.
"""

from __future__ import annotations

import re

from dockyard.oci.digest import Digest, DigestError

MAX_NAME_LENGTH = 255
NAME_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")


def valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.fullmatch(name) is not None


def valid_tag(tag: str) -> bool:
    return TAG_RE.fullmatch(tag) is not None


def is_digest_reference(reference: str) -> bool:
    """True when a manifest reference is written as a digest (it contains a colon)."""
    return ":" in reference


def valid_reference(reference: str) -> bool:
    """A tag or a digest of a supported algorithm."""
    if is_digest_reference(reference):
        try:
            Digest.parse(reference)
        except DigestError:
            return False
        return True
    return valid_tag(reference)
