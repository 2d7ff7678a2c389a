"""The grammars of the strings the copy engine reads from `spec.filters`, and their parsers.

Globs, `/regex/` tag patterns, semver ranges and platforms are parsed here, in the API layer,
so the model (`dockyard.api.replication`) refuses exactly what the engine
(`dockyard.replication.filters`, which matches with these same objects) cannot use: a policy
is refused when it is read, not when its Job starts. Where a schema `pattern` can express the
grammar (semverRange, platforms) the same pattern is in the CRD and is checked first here.

Every regex here, the users' `/regex/` tag patterns and the globs translated to regexes above
all, runs on RE2 (`google-re2`): matching takes time linear in the text, so a pattern such as
`/^(a+)+$/` cannot stall the operator's event loop (the push receiver runs these predicates).
RE2 has no backreferences or lookarounds; a pattern RE2 cannot compile is refused by the model
(`pattern_error`). Python's `re` is not imported here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import re2  # type: ignore[import-untyped]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a user's bad pattern is reported as an error, not logged by the C++ library


def compile_regex(pattern: str) -> Any:
    """An RE2 regex; `re2.error` when RE2 cannot compile it (backreferences, lookarounds, ...)."""
    return re2.compile(pattern, _OPTIONS)


def _error_text(e: Exception) -> str:
    arg = e.args[0] if e.args else str(e)
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


# ----------------------------------------------------------------------------- globs


@functools.lru_cache(maxsize=1024)
def glob_regex(pattern: str) -> Any:
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
                out.append(re2.escape(c))
            else:
                body = pattern[i + 1:end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re2.escape(c))
        i += 1
    return compile_regex("(?s)" + "".join(out) + r"\z")


def is_regex(pattern: str) -> bool:
    """A tag pattern written `/.../` is a regex; anything else is a glob."""
    return len(pattern) >= 2 and pattern.startswith("/") and pattern.endswith("/")


@functools.lru_cache(maxsize=1024)
def tag_regex(body: str) -> Any:
    return compile_regex(body)


_HOST_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
URL_PATTERN = (rf"^https?://({_HOST_LABEL}(\.{_HOST_LABEL})*|\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\])(:{_PORT})?"
               r"(/([A-Za-z0-9._~!$&'()*+,;=:@/-]|%[0-9A-Fa-f]{2})*)?$")
"""A registry base URL as the OCI client reads it (`dockyard.oci.client.registry_url`): http or https, a host
name or IPv4 or [IPv6] address, a port 1-65535, a path; no credentials, query or fragment."""
URL_MAX_LENGTH = 2048
S3_ENDPOINT_PATTERN = (rf"^https?://({_HOST_LABEL}(\.{_HOST_LABEL})*|\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\])"
                       rf"(:{_PORT})?/?$")
"""An S3 endpoint: http or https, a host name or IPv4 or [IPv6] address, a port; no path (the bucket and
the keys make the path), credentials, query or fragment."""
S3_BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
"""An S3 bucket name: 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or
digit (AWS's rules, which S3-compatible stores follow)."""
S3_PREFIX_PATTERN = r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$"
"""A prefix of the registry's object keys: segments of the characters AWS calls safe in keys, joined by
single slashes; no leading or trailing slash (the registry adds the one after it)."""
S3_PREFIX_MAX_LENGTH = 512
"""Object keys are at most 1024 bytes; the registry's own part of a key needs room after the prefix."""
REPOSITORY_GLOB_MAX_LENGTH = 512
"""Repository names are at most 255 characters with the registry's host (distribution spec); a glob
may spell them out longer."""
PATTERNS_MAX_ITEMS = 256


def glob_error(pattern: str) -> str | None:
    """Why the engine cannot use a glob (a character class RE2 refuses, e.g. `[z-a]`), or None."""
    try:
        glob_regex(pattern)
    except re2.error as e:
        return f"{pattern!r} is not a valid glob: {_error_text(e)}"
    return None


def pattern_error(pattern: str) -> str | None:
    """Why the engine cannot use a tag pattern (`/regex/` RE2 cannot compile, or a bad glob), or None."""
    if not is_regex(pattern):
        return glob_error(pattern)
    try:
        tag_regex(pattern[1:-1])
    except re2.error as e:
        return (f"{pattern} is not a regular expression RE2 accepts ({_error_text(e)}); "
                "backreferences and lookarounds are not supported")
    return None


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


_VERSION = compile_regex(
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


_PARTIAL = compile_regex(
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


_TOKEN = compile_regex(r"^(<=|>=|<|>|=|\^|~>|~)?\s*(.+)$")
_HYPHEN = compile_regex(r"^(\S+)\s+-\s+(\S+)$")
_GLUE = compile_regex(r"(<=|>=|<|>|=|\^|~>|~)\s+")

# The grammar of a semverRange, as a schema `pattern` (the API server checks it with Go's RE2) and
# as the first check of `SemverRange.parse`, so admission and the engine accept the same ranges.
# Alternatives are separated by `||`; each is a hyphen range (`1.2 - 1.4`) or comparators separated
# by blanks, each an optional operator (blanks may follow it or sit inside `>=`, as the parser glues
# them) and a partial version (`1`, `1.x`, `v1.2.3-rc.1`, `*`).
_BLANK = r"[ \t]"
_PART = r"(?:[0-9]+|[xX*])"
_PARTIAL_VERSION = rf"[vV]?{_PART}(?:\.{_PART}){{0,2}}(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
_OPERATOR = rf"(?:<{_BLANK}*=|>{_BLANK}*=|~{_BLANK}*>|<|>|=|\^|~)"
_COMPARATOR = rf"(?:{_OPERATOR}{_BLANK}*)?{_PARTIAL_VERSION}"
_ALTERNATIVE = (rf"{_BLANK}*(?:{_PARTIAL_VERSION}{_BLANK}+-{_BLANK}+{_PARTIAL_VERSION}|"
                rf"{_COMPARATOR}(?:{_BLANK}+{_COMPARATOR})*){_BLANK}*")
SEMVER_RANGE_PATTERN = rf"^{_ALTERNATIVE}(?:\|\|{_ALTERNATIVE})*$"
_RANGE = compile_regex(SEMVER_RANGE_PATTERN)


def _comparators(token: str) -> list[Comparator]:
    m = _TOKEN.match(token)
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
        if _RANGE.match(text) is None:
            raise RangeError(f"{text!r} is not a semver range (e.g. '>=1.25.0 <2', '^1.2', '~1.2', '1.x', "
                             "'1.2 - 1.4', alternatives separated by '||')")
        return cls.read(text)

    @classmethod
    def read(cls, text: str) -> SemverRange:
        """The comparators of a range that passed the grammar (`parse` checks it first)."""
        alternatives: list[tuple[Comparator, ...]] = []
        for alt in text.split("||"):
            alt = alt.strip()
            hyphen = _HYPHEN.match(alt)
            if hyphen:
                lo, hi = hyphen.groups()
                comps = _comparators(">=" + lo) + _comparators("<=" + hi)
            else:
                # `>= 1.2` is written with a space sometimes: glue operators to their version.
                tokens = _GLUE.sub(r"\1", alt).split()
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


def semver_range_error(text: str) -> str | None:
    """Why the engine cannot read a semverRange, or None."""
    try:
        SemverRange.parse(text)
    except RangeError as e:
        return str(e)
    return None


# ----------------------------------------------------------------------------- platforms

PLATFORM_PATTERN = r"^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)?$"
"""`os/architecture` or `os/architecture/variant`, as `platform_match` reads a pattern."""
_PLATFORM = compile_regex(PLATFORM_PATTERN)


def platform_error(pattern: str) -> str | None:
    """Why `platform_match` cannot use a platform pattern (it would select nothing), or None."""
    if _PLATFORM.match(pattern) is None:
        return f"{pattern!r} is not a platform: write os/architecture[/variant], e.g. linux/arm64 or linux/arm/v7"
    return None
