"""Filters users write in spec.filters: repository globs, tag patterns, semver ranges, latest, platforms."""

from __future__ import annotations

import pytest

from dockyard.replication.filters import (
    RangeError,
    SemverRange,
    TagSelector,
    filter_index_entries,
    glob_match,
    is_literal,
    is_referrers_tag,
    parse_version,
    platform_match,
    repository_selected,
    semver_match,
)

GLOBS = [
    ("library/nginx", "library/nginx", True),
    ("library/*", "library/nginx", True),
    ("library/*", "library/team/nginx", False),
    ("library/**", "library/team/nginx", True),
    ("**/nginx", "nginx", True),
    ("**/nginx", "a/b/nginx", True),
    ("**", "anything/at/all", True),
    ("team-?/app", "team-a/app", True),
    ("team-?/app", "team-ab/app", False),
    ("app[0-9]", "app7", True),
    ("app[!0-9]", "app7", False),
    ("library/nginx", "library/nginx-unprivileged", False),
    ("a.b", "axb", False),
]


@pytest.mark.parametrize(("pattern", "name", "expected"), GLOBS)
def test_repository_globs(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern, name) is expected


def test_repository_include_exclude() -> None:
    include, exclude = ("library/**",), ("library/internal/*",)
    assert repository_selected("library/nginx", include, exclude)
    assert not repository_selected("library/internal/db", include, exclude)
    assert not repository_selected("other/nginx", include, exclude)
    assert repository_selected("anything", (), ())
    assert is_literal("library/nginx")
    assert not is_literal("library/*")


SEMVER = [
    (">=1.25.0 <2", "1.25", True),
    (">=1.25.0 <2", "v1.26.3", True),
    (">=1.25.0 <2", "1.24.9", False),
    (">=1.25.0 <2", "2.0.0", False),
    (">=1.25.0", "latest", False),
    (">=1.25.0", "1.25-alpine", False),  # a variant, not a release
    ("^1.2", "1.2.0", True),
    ("^1.2", "1.99.1", True),
    ("^1.2", "2.0.0", False),
    ("^1.2", "1.1.9", False),
    ("^0.2.3", "0.2.9", True),
    ("^0.2.3", "0.3.0", False),
    ("^0.0.3", "0.0.4", False),
    ("~1.2", "1.2.7", True),
    ("~1.2", "1.3.0", False),
    ("~1.2.3", "1.2.2", False),
    ("~1", "1.9", True),
    ("1.x", "1.0.1", True),
    ("1.x", "v1.99", True),
    ("1.x", "2.0", False),
    ("1.2.x", "1.2.5", True),
    ("1.2", "1.2.5", True),
    ("1.2", "1.3.0", False),
    ("1.2.3", "1.2.3", True),
    ("=1.2.3", "v1.2.3", True),
    ("1.2.3", "1.2.4", False),
    ("*", "0.0.1", True),
    (">1.2", "1.2.9", False),
    (">1.2", "1.3.0", True),
    ("<=1.2", "1.2.9", True),
    ("<=1.2", "1.3.0", False),
    ("1.2 - 1.4", "1.4.5", True),
    ("1.2 - 1.4", "1.5.0", False),
    ("<1.0 || >=2.0", "0.9", True),
    ("<1.0 || >=2.0", "1.5", False),
    ("<1.0 || >=2.0", "2.1", True),
    (">= 1.25", "1.25.1", True),
    (">=1.0", "1.2.0-rc1", False),  # prereleases only when the range names one
    (">=1.2.0-rc.1", "1.2.0-rc.2", True),
    (">=1.2.0-rc.1", "1.3.0-rc.1", False),
    (">=1.2.0-rc.1", "1.2.0", True),
    ("<1.2.0", "1.2.0-rc.1", False),
    (">=1.0.0", "1.0.0+build.5", True),
    (">=1", "sha256-abc", False),
]


@pytest.mark.parametrize(("rng", "tag", "expected"), SEMVER)
def test_semver_ranges(rng: str, tag: str, expected: bool) -> None:
    assert semver_match(rng, tag) is expected


def test_versions_read_leading_v_and_missing_parts() -> None:
    v = parse_version("v1.25")
    assert v is not None
    assert v.core == (1, 25, 0)
    assert parse_version("1") is not None
    assert parse_version("latest") is None
    assert parse_version("1.2.3.4") is None
    assert parse_version("01.2") is None
    rc1, rc2, final = (parse_version(t) for t in ("1.0.0-rc.1", "1.0.0-rc.2", "1.0.0"))
    assert rc1
    assert rc2
    assert final
    assert rc1.sort_key() < rc2.sort_key() < final.sort_key()


@pytest.mark.parametrize("bad", [">=banana", "^", "1.2.3.4.5", ">=1.2 <"])
def test_bad_ranges_are_errors(bad: str) -> None:
    with pytest.raises(RangeError):
        SemverRange.parse(bad)


TAGS = ["1.24.0", "1.25.0", "1.25.1-alpine", "1.26.0", "1.26.0-rc1", "2.0.0", "latest", "edge", "v1.27"]


@pytest.mark.parametrize(("selector", "expected"), [
    (TagSelector(), TAGS),
    (TagSelector(include=("1.*",)), ["1.24.0", "1.25.0", "1.25.1-alpine", "1.26.0", "1.26.0-rc1"]),
    (TagSelector(exclude=("*-rc*", "*-alpine")), ["1.24.0", "1.25.0", "1.26.0", "2.0.0", "latest", "edge", "v1.27"]),
    (TagSelector(include=(r"/^v?\d+\.\d+(\.\d+)?$/",)), ["1.24.0", "1.25.0", "1.26.0", "2.0.0", "v1.27"]),
    (TagSelector(exclude=("/rc/",)), [t for t in TAGS if "rc" not in t]),
    (TagSelector(semver_range=">=1.25.0 <2"), ["1.25.0", "1.26.0", "v1.27"]),
    (TagSelector(semver_range=">=1.25.0", latest=2), ["2.0.0", "v1.27"]),
    (TagSelector(exclude=("latest", "edge"), latest=3), ["2.0.0", "v1.27", "1.26.0"]),
    (TagSelector(include=("latest",), semver_range=">=1"), []),
])
def test_tag_selection(selector: TagSelector, expected: list[str]) -> None:
    assert selector.select(TAGS) == expected


def test_latest_prefers_creation_time_when_known() -> None:
    created = {"a": "2024-03-01T00:00:00Z", "b": "2024-01-01T00:00:00Z", "c": "2024-02-01T00:00:00Z"}
    assert TagSelector(latest=2).select(["a", "b", "c"], created) == ["a", "c"]


def test_referrers_tags_are_recognised() -> None:
    assert is_referrers_tag("sha256-" + "a" * 64)
    assert not is_referrers_tag("sha256-abc")
    assert not is_referrers_tag("1.0")


def test_platforms() -> None:
    assert platform_match(["linux/arm64"], {"os": "linux", "architecture": "arm64", "variant": "v8"})
    assert platform_match(["linux/arm/v7"], {"os": "linux", "architecture": "arm", "variant": "v7"})
    assert not platform_match(["linux/arm/v7"], {"os": "linux", "architecture": "arm", "variant": "v6"})
    assert not platform_match(["linux/amd64"], {"os": "windows", "architecture": "amd64"})


def test_index_filter_keeps_order_and_attestations_of_kept_images() -> None:
    entries = [
        {"digest": "sha256:a", "platform": {"os": "linux", "architecture": "amd64"}},
        {"digest": "sha256:b", "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:c", "platform": {"os": "linux", "architecture": "s390x"}},
        {"digest": "sha256:att-a", "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                         "vnd.docker.reference.digest": "sha256:a"}},
        {"digest": "sha256:att-c", "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                         "vnd.docker.reference.digest": "sha256:c"}},
    ]
    kept = filter_index_entries(entries, ["linux/amd64", "linux/arm64"])
    assert [e["digest"] for e in kept] == ["sha256:a", "sha256:b", "sha256:att-a"]
