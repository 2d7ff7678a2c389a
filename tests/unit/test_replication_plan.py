"""Plan computation: what a run copies, skips and deletes, and where it writes."""

from __future__ import annotations

import pytest

from dockyard.replication.filters import TagSelector
from dockyard.replication.plan import PathRewrite, decide, orphaned_destinations, plan_repository

REF_TAG = "sha256-" + "e" * 64


@pytest.mark.parametrize(("rewrite", "source", "dest"), [
    (PathRewrite(), "library/nginx", "library/nginx"),
    (PathRewrite(prefix="mirror/"), "library/nginx", "mirror/library/nginx"),
    (PathRewrite(prefix="mirror/", strip_prefix="library/"), "library/nginx", "mirror/nginx"),
    (PathRewrite(prefix="mirror/", strip_prefix="library/"), "bitnami/redis", "mirror/bitnami/redis"),
    (PathRewrite(strip_prefix="team/"), "team/app", "app"),
    (PathRewrite(strip_prefix="team/"), "teammate/app", "teammate/app"),
])
def test_path_rewrite(rewrite: PathRewrite, source: str, dest: str) -> None:
    assert rewrite.apply(source) == dest
    assert source in rewrite.sources_of(dest)


def test_rewrite_inverse_ignores_other_prefixes() -> None:
    assert PathRewrite(prefix="mirror/").sources_of("other/nginx") == []


@pytest.mark.parametrize(("target", "dest", "conflict", "expected"), [
    ("sha256:a", None, "overwrite", "copy"),
    ("sha256:a", None, "skip", "copy"),
    ("sha256:a", "sha256:a", "overwrite", "up-to-date"),
    ("sha256:a", "sha256:b", "overwrite", "copy"),
    ("sha256:a", "sha256:b", "skip", "conflict"),
])
def test_decide(target: str, dest: str | None, conflict: str, expected: str) -> None:
    assert decide(target, dest, conflict) == expected  # type: ignore[arg-type]


SOURCE = {"1.0": "sha256:1", "1.1": "sha256:2", "2.0": "sha256:3", "latest": "sha256:3", REF_TAG: "sha256:r"}


def test_plan_copies_new_skips_current_and_never_copies_referrer_tags_as_tags() -> None:
    dest = {"1.0": "sha256:1", "1.1": "sha256:old"}
    plan = plan_repository("src", "dst", SOURCE, dest, TagSelector())
    assert [c.tag for c in plan.copies] == ["1.1", "2.0", "latest"]
    assert [(s.tag, s.reason) for s in plan.skips] == [("1.0", "up-to-date")]
    assert plan.deletes == []
    moved = next(c for c in plan.copies if c.tag == "1.1")
    assert (moved.source_digest, moved.dest_digest) == ("sha256:2", "sha256:old")


def test_conflict_skip_keeps_destination_tags_that_point_elsewhere() -> None:
    plan = plan_repository("src", "dst", SOURCE, {"1.1": "sha256:theirs"}, TagSelector(), conflict="skip")
    assert [(s.tag, s.reason) for s in plan.skips] == [("1.1", "conflict")]
    assert "1.1" not in [c.tag for c in plan.copies]


def test_deletion_mirror_deletes_only_selected_tags_the_source_lost() -> None:
    dest = {"1.0": "sha256:1", "0.9": "sha256:0", "nightly": "sha256:n", "0.8-rc": "sha256:8", REF_TAG: "x"}
    selector = TagSelector(exclude=("*-rc",), semver_range=">=0.1")
    plan = plan_repository("src", "dst", SOURCE, dest, selector, mirror_deletions=True)
    # nightly is not a version and 0.8-rc is excluded: filters that exclude a tag protect it
    assert [(d.tag, d.digest) for d in plan.deletes] == [("0.9", "sha256:0")]


def test_deletion_mirror_keeps_tags_outside_latest_that_the_source_still_has() -> None:
    source = {"1.0": "sha256:1", "1.1": "sha256:2", "1.2": "sha256:3"}
    dest = {"1.0": "sha256:1", "1.1": "sha256:2", "1.2": "sha256:3"}
    plan = plan_repository("src", "dst", source, dest, TagSelector(latest=1), mirror_deletions=True)
    assert plan.deletes == []
    assert [s.tag for s in plan.skips] == ["1.2"]


def test_no_deletions_without_mirror() -> None:
    plan = plan_repository("src", "dst", {}, {"1.0": "sha256:1"}, TagSelector())
    assert plan.deletes == []
    assert plan.copies == []


def test_last_runs_failures_go_first() -> None:
    plan = plan_repository("src", "dst", SOURCE, {}, TagSelector(), failed={("src", "latest")})
    ordered = plan.ordered()
    assert ordered[0].tag == "latest"
    assert ordered[0].retry
    assert [c.tag for c in ordered[1:]] == ["1.0", "1.1", "2.0"]


def test_platform_filter_defers_judgement_of_differing_digests() -> None:
    plan = plan_repository("src", "dst", {"1.0": "sha256:index"}, {"1.0": "sha256:filtered"}, TagSelector(),
                           rewrites_indexes=True)
    assert len(plan.copies) == 1
    assert plan.copies[0].verify
    same = plan_repository("src", "dst", {"1.0": "sha256:x"}, {"1.0": "sha256:x"}, TagSelector(),
                           rewrites_indexes=True)
    assert same.copies == []
    assert same.skips[0].reason == "up-to-date"


def test_orphaned_destination_repositories() -> None:
    rewrite = PathRewrite(prefix="mirror/", strip_prefix="library/")
    dest = ["mirror/nginx", "mirror/redis", "mirror/internal/x", "unrelated/app"]
    orphans = orphaned_destinations(dest, {"library/nginx"}, rewrite, ("library/**",), ("library/internal/**",))
    assert orphans == [("library/redis", "mirror/redis")]


def test_latest_uses_creation_times_when_given() -> None:
    source = {"main": "sha256:1", "dev": "sha256:2", "old": "sha256:3"}
    created = {"main": "2024-02-01T00:00:00Z", "dev": "2024-03-01T00:00:00Z", "old": "2023-01-01T00:00:00Z"}
    plan = plan_repository("src", "dst", source, {}, TagSelector(latest=2), created=created)
    assert [c.tag for c in plan.copies] == ["dev", "main"]
