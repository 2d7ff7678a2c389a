"""What a replication policy selects: repository globs, tag patterns, semver ranges, platforms.

Pure functions of names and versions, no I/O, so the rules users write in `spec.filters`
are tested as tables. The same predicates decide what is copied and what `deletion: mirror`
may delete: a destination tag the filters do not select is never touched.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------- globs


@functools.lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`**` crosses `/`, `*` and `?` stay inside one segment, `[...]` is a character class."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # `a/**/b` matches `a/b` too
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def glob_match(pattern: str, name: str) -> bool:
    return _glob_regex(pattern).match(name) is not None


def is_literal(pattern: str) -> bool:
    """A repository pattern without wildcards names one repository (no catalog needed)."""
    return not any(c in pattern for c in "*?[")


def repository_selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(glob_match(p, name) for p in include):
        return False
    return not any(glob_match(p, name) for p in exclude)


def tag_pattern_match(pattern: str, tag: str) -> bool:
    """`/regex/` is searched (anchor it with ^ and $ yourself); anything else is a glob."""
    if len(pattern) >= 2 and pattern.startswith("/") and pattern.endswith("/"):
        return re.search(pattern[1:-1], tag) is not None
    return glob_match(pattern, tag)


# ----------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class Version:
    """A semantic version; compare with `sort_key()` (prereleases sort below their release)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[tuple[int, int | str], ...] = ()

    @property
    def core(self) -> tuple[int, int, int]:
        return self.major, self.minor, self.patch

    def sort_key(self) -> tuple[Any, ...]:
        # A release sorts after its prereleases: (1, ()) > (0, (...)).
        return (self.core, 0 if self.prerelease else 1, self.prerelease)


_VERSION = re.compile(
    r"^[vV]?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)


def _prerelease(text: str | None) -> tuple[tuple[int, int | str], ...]:
    if not text:
        return ()
    # Numeric identifiers sort before alphanumeric ones (semver 2.0.0, item 11).
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in text.split("."))


def parse_version(tag: str) -> Version | None:
    """`v1.25` -> 1.25.0; `1.2.3-rc.1` keeps its prerelease; anything else -> None."""
    m = _VERSION.match(tag)
    if not m:
        return None
    major, minor, patch, pre = m.groups()
    return Version(int(major), int(minor or 0), int(patch or 0), _prerelease(pre))


class RangeError(ValueError):
    """A semverRange that cannot be read."""


@dataclass(frozen=True)
class Comparator:
    op: str  # one of < <= > >= =
    version: Version

    def test(self, v: Version) -> bool:
        a, b = v.sort_key(), self.version.sort_key()
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "=": a == b}[self.op]


_PARTIAL = re.compile(
    r"^[vV]?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


def _partial(text: str) -> tuple[list[int | None], tuple[tuple[int, int | str], ...]]:
    m = _PARTIAL.match(text)
    if not m:
        raise RangeError(f"not a version: {text!r}")
    parts: list[int | None] = []
    for p in m.groups()[:3]:
        if p is None or p in "xX*":
            parts.append(None)
        else:
            parts.append(int(p))
    # Once a part is missing or a wildcard, the ones after it are too.
    for i in range(1, 3):
        if parts[i - 1] is None:
            parts[i] = None
    return parts, _prerelease(m.group(4))


def _v(major: int, minor: int = 0, patch: int = 0, pre: tuple[tuple[int, int | str], ...] = ()) -> Version:
    return Version(major, minor, patch, pre)


def _lowest(parts: list[int | None], pre: tuple[tuple[int, int | str], ...]) -> Version:
    return _v(parts[0] or 0, parts[1] or 0, parts[2] or 0, pre)


def _next_after(parts: list[int | None]) -> Version | None:
    """The first version above a partial `1.2` (-> 1.3.0) or `1` (-> 2.0.0); None for `*`."""
    major, minor, _ = parts
    if major is None:
        return None
    if minor is None:
        return _v(major + 1)
    return _v(major, minor + 1)


def _comparators(token: str) -> list[Comparator]:
    m = re.match(r"^(<=|>=|<|>|=|\^|~>|~)?\s*(.+)$", token)
    if not m:
        raise RangeError(f"cannot read {token!r}")
    op, text = m.group(1) or "", m.group(2)
    parts, pre = _partial(text)
    full = all(p is not None for p in parts)
    low = _lowest(parts, pre)
    if op in ("", "="):
        if full:
            return [Comparator("=", low)]
        upper = _next_after(parts)
        return [Comparator(">=", low)] + ([Comparator("<", upper)] if upper else [])
    if op == "^":
        major, minor, patch = parts
        if major is None:
            return [Comparator(">=", _v(0))]
        if major > 0 or minor is None:
            upper = _v(major + 1)
        elif minor > 0 or patch is None:
            upper = _v(0, minor + 1)
        else:
            upper = _v(0, 0, (patch or 0) + 1)
        return [Comparator(">=", low), Comparator("<", upper)]
    if op in ("~", "~>"):
        major, minor, _ = parts
        if major is None:
            return [Comparator(">=", _v(0))]
        upper = _v(major + 1) if minor is None else _v(major, minor + 1)
        return [Comparator(">=", low), Comparator("<", upper)]
    if op == ">":
        if full:
            return [Comparator(">", low)]
        upper = _next_after(parts)
        return [Comparator(">=", upper)] if upper else [Comparator("<", _v(0))]
    if op == ">=":
        return [Comparator(">=", low)]
    if op == "<":
        return [Comparator("<", low)]
    # "<=" with a partial: `<=1.2` means below 1.3.0
    if full:
        return [Comparator("<=", low)]
    upper = _next_after(parts)
    return [Comparator("<", upper)] if upper else [Comparator(">=", _v(0))]


@dataclass(frozen=True)
class SemverRange:
    """Alternatives (`||`) of comparator sets (space-separated, all must hold)."""

    alternatives: tuple[tuple[Comparator, ...], ...]

    @classmethod
    def parse(cls, text: str) -> SemverRange:
        alternatives: list[tuple[Comparator, ...]] = []
        for alt in text.split("||"):
            alt = alt.strip()
            hyphen = re.match(r"^(\S+)\s+-\s+(\S+)$", alt)
            if hyphen:
                lo, hi = hyphen.groups()
                comps = _comparators(">=" + lo) + _comparators("<=" + hi)
            else:
                # `>= 1.2` is written with a space sometimes: glue operators to their version.
                tokens = re.sub(r"(<=|>=|<|>|=|\^|~>|~)\s+", r"\1", alt).split()
                if not tokens:
                    comps = [Comparator(">=", _v(0))]
                else:
                    comps = [c for t in tokens for c in _comparators(t)]
            alternatives.append(tuple(comps))
        return cls(tuple(alternatives))

    def matches(self, v: Version) -> bool:
        for comps in self.alternatives:
            if not all(c.test(v) for c in comps):
                continue
            # A prerelease only matches when the range names a prerelease of the same release.
            if v.prerelease and not any(c.version.prerelease and c.version.core == v.core for c in comps):
                continue
            return True
        return False


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
            if len(p) >= 2 and p.startswith("/") and p.endswith("/"):
                try:
                    re.compile(p[1:-1])
                except re.error as e:
                    raise RangeError(f"bad tag regex {p}: {e}") from e

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

_FALLBACK_TAG = re.compile(r"^(sha256|sha512)-([0-9a-f]{64}|[0-9a-f]{128})$")


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
