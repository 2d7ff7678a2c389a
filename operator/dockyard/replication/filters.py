"""What a replication policy selects: repository globs, tag patterns, semver ranges, platforms.

Pure functions of names and versions, no I/O, so the rules users write in `spec.filters`
are tested as tables. The same predicates decide what is copied and what `deletion: mirror`
may delete: a destination tag the filters do not select is never touched.

The grammars and parsers of these strings (globs and `/regex/` compiled with RE2, semver
ranges, platforms) live in `dockyard.api.patterns`, so the API model refuses, when a policy is
read, every value the engine could not use; they are re-exported here. Every regex runs on RE2:
matching is linear in the tag, whatever the user wrote. Python's `re` is not imported here.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dockyard.api.patterns import (
    PLATFORM_PATTERN,
    SEMVER_RANGE_PATTERN,
    Comparator,
    RangeError,
    SemverRange,
    Version,
    compile_regex,
    glob_error,
    glob_regex,
    is_regex,
    parse_version,
    pattern_error,
    platform_error,
    semver_range_error,
    tag_regex,
)

__all__ = [
    "PLATFORM_PATTERN", "SEMVER_RANGE_PATTERN", "Comparator", "RangeError", "SemverRange", "TagSelector", "Version",
    "filter_index_entries", "glob_error", "glob_match", "is_literal", "is_referrers_tag", "newest", "parse_version",
    "pattern_error", "platform_error", "platform_match", "referrers_tag", "repository_selected", "semver_match",
    "semver_range_error", "tag_pattern_match",
]

# ----------------------------------------------------------------------------- globs


def glob_match(pattern: str, name: str) -> bool:
    return glob_regex(pattern).match(name) is not None


def is_literal(pattern: str) -> bool:
    """A repository pattern without wildcards names one repository (no catalog needed)."""
    return not any(c in pattern for c in "*?[")


def repository_selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(glob_match(p, name) for p in include):
        return False
    return not any(glob_match(p, name) for p in exclude)


def tag_pattern_match(pattern: str, tag: str) -> bool:
    """`/regex/` is searched (anchor it with ^ and $ yourself); anything else is a glob."""
    if is_regex(pattern):
        return tag_regex(pattern[1:-1]).search(tag) is not None
    return glob_match(pattern, tag)


# ----------------------------------------------------------------------------- versions


def semver_match(range_text: str, tag: str) -> bool:
    v = parse_version(tag)
    return v is not None and SemverRange.parse(range_text).matches(v)


# ----------------------------------------------------------------------------- tags


@dataclass(frozen=True)
class TagSelector:
    """The tag half of `spec.filters`, compiled once per run."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    semver_range: str | None = None
    latest: int | None = None

    def __post_init__(self) -> None:
        if self.semver_range is not None:
            SemverRange.parse(self.semver_range)  # fail early on a bad range
        for p in (*self.include, *self.exclude):
            error = pattern_error(p)
            if error is not None:
                raise RangeError(error)

    @functools.cached_property
    def _range(self) -> SemverRange | None:
        return SemverRange.parse(self.semver_range) if self.semver_range is not None else None

    def matches(self, tag: str) -> bool:
        """Include/exclude/semver: the test `deletion: mirror` also uses (no `latest`)."""
        if self.include and not any(tag_pattern_match(p, tag) for p in self.include):
            return False
        if any(tag_pattern_match(p, tag) for p in self.exclude):
            return False
        if self._range is not None:
            v = parse_version(tag)
            return v is not None and self._range.matches(v)
        return True

    def select(self, tags: Iterable[str], created: Mapping[str, str] | None = None) -> list[str]:
        """The selected tags, newest first when `latest` is set, else in input order."""
        chosen = [t for t in tags if self.matches(t)]
        if self.latest is None:
            return chosen
        return newest(chosen, created)[: self.latest]


def newest(tags: Iterable[str], created: Mapping[str, str] | None = None) -> list[str]:
    """Newest first: by creation time when known, else versions by precedence above other tags."""
    def key(tag: str) -> tuple[Any, ...]:
        when = (created or {}).get(tag, "")
        v = parse_version(tag)
        return (when, v is not None, v.sort_key() if v else (), tag)

    return sorted(tags, key=key, reverse=True)


# ----------------------------------------------------------------------------- referrer tags

_FALLBACK_TAG = compile_regex(r"^(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})$")


def is_referrers_tag(tag: str) -> bool:
    """The referrers tag schema (`sha256-<hex>`): copied with its subject, never as a tag of its own."""
    return _FALLBACK_TAG.match(tag) is not None


def referrers_tag(digest: str) -> str:
    return digest.replace(":", "-", 1)


# ----------------------------------------------------------------------------- platforms


def _platform_string(platform: Mapping[str, Any]) -> str:
    parts = [str(platform.get("os", "")), str(platform.get("architecture", ""))]
    if platform.get("variant"):
        parts.append(str(platform["variant"]))
    return "/".join(parts)


def platform_match(patterns: Sequence[str], platform: Mapping[str, Any]) -> bool:
    """`linux/arm64` matches every variant of it; `linux/arm/v7` only that variant."""
    os_, arch = str(platform.get("os", "")), str(platform.get("architecture", ""))
    variant = str(platform.get("variant", "") or "")
    for p in patterns:
        want = p.strip().split("/")
        if len(want) < 2:
            continue
        if want[0] == os_ and want[1] == arch and (len(want) < 3 or want[2] == variant):
            return True
    return False


def filter_index_entries(entries: Sequence[Mapping[str, Any]], patterns: Sequence[str]) -> list[dict[str, Any]]:
    """Index entries kept by a platform filter, in their original order.

    Entries without a platform are kept. BuildKit attestations (platform unknown/unknown,
    annotated with the digest they describe) follow the image they describe.
    """
    kept_digests: set[str] = set()
    kept: list[tuple[int, dict[str, Any]]] = []
    deferred: list[tuple[int, Mapping[str, Any]]] = []
    for i, entry in enumerate(entries):
        platform = entry.get("platform")
        annotations = entry.get("annotations") or {}
        if annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            deferred.append((i, entry))
        elif platform is None or platform_match(patterns, platform):
            kept_digests.add(str(entry.get("digest")))
            kept.append((i, dict(entry)))
    for i, entry in deferred:
        if (entry.get("annotations") or {}).get("vnd.docker.reference.digest") in kept_digests:
            kept.append((i, dict(entry)))
    kept.sort(key=lambda pair: pair[0])
    return [e for _, e in kept]
