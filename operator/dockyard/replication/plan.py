"""What one run does: which tags to copy, which to skip, which destination tags to delete.

Pure functions over listings (tag -> digest on each side) so the decisions users care
about — conflict policy, the deletion mirror, path rewriting, retrying last run's
failures first — are tested as tables without a registry. The copy engine fetches the
listings and executes the plan.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from dockyard.replication.filters import TagSelector, is_referrers_tag, repository_selected

Conflict = Literal["overwrite", "skip"]
Decision = Literal["copy", "up-to-date", "conflict"]


@dataclass(frozen=True)
class PathRewrite:
    """`stripPrefix` is removed from names that start with it, then `prefix` is prepended."""

    prefix: str = ""
    strip_prefix: str = ""

    def apply(self, repository: str) -> str:
        name = repository
        if self.strip_prefix and name.startswith(self.strip_prefix):
            name = name[len(self.strip_prefix):]
        return self.prefix + name

    def sources_of(self, destination: str) -> list[str]:
        """Every source name that `apply` maps onto `destination` (used by the deletion mirror)."""
        if not destination.startswith(self.prefix):
            return []
        rest = destination[len(self.prefix):]
        candidates = []
        if self.strip_prefix:
            candidates.append(self.strip_prefix + rest)
        candidates.append(rest)
        return [c for c in dict.fromkeys(candidates) if c and self.apply(c) == destination]


def decide(target_digest: str, dest_digest: str | None, conflict: Conflict) -> Decision:
    """Whether a tag needs writing, given the digest the destination tag should have."""
    if dest_digest is None:
        return "copy"
    if dest_digest == target_digest:
        return "up-to-date"
    return "copy" if conflict == "overwrite" else "conflict"


@dataclass(frozen=True)
class CopyItem:
    source_repo: str
    dest_repo: str
    tag: str
    source_digest: str | None
    dest_digest: str | None
    verify: bool = False
    """The destination digest can only be judged after the copy's target is computed
    (a platform filter rewrites indexes)."""
    retry: bool = False
    """This item failed in the previous run."""


@dataclass(frozen=True)
class SkipItem:
    source_repo: str
    dest_repo: str
    tag: str
    reason: Literal["up-to-date", "conflict"]
    digest: str | None = None
    """The source digest of the tag."""


@dataclass(frozen=True)
class DeleteItem:
    dest_repo: str
    tag: str
    digest: str | None


@dataclass
class Plan:
    copies: list[CopyItem] = field(default_factory=list)
    skips: list[SkipItem] = field(default_factory=list)
    deletes: list[DeleteItem] = field(default_factory=list)

    def extend(self, other: Plan) -> None:
        self.copies.extend(other.copies)
        self.skips.extend(other.skips)
        self.deletes.extend(other.deletes)

    def ordered(self) -> list[CopyItem]:
        """Copies with last run's failures first, otherwise in listing order."""
        return sorted(self.copies, key=lambda c: not c.retry)


def plan_repository(
    source_repo: str,
    dest_repo: str,
    source_tags: Mapping[str, str | None],
    dest_tags: Mapping[str, str | None],
    selector: TagSelector,
    *,
    conflict: Conflict = "overwrite",
    mirror_deletions: bool = False,
    rewrites_indexes: bool = False,
    failed: Collection[tuple[str, str]] = (),
    created: Mapping[str, str] | None = None,
) -> Plan:
    """The plan of one source repository copied into one destination repository.

    `source_tags`/`dest_tags` map tags to manifest digests (None when unknown). Tags of
    the referrers tag schema (`sha256-<hex>`) are not tags of their own: they travel with
    their subject. With `rewrites_indexes`, a destination digest that differs from the
    source cannot be judged yet (the filtered index has a new digest): the item is
    planned as a copy marked `verify`. `created` (tag -> creation time) orders `latest`
    when the tags are not all versions.
    """
    plan = Plan()
    candidates = [t for t in source_tags if not is_referrers_tag(t)]
    for tag in selector.select(candidates, created):
        src = source_tags[tag]
        dst = dest_tags.get(tag)
        retry = (source_repo, tag) in failed
        if src is not None and dst is not None and not (rewrites_indexes and src != dst):
            verdict = decide(src, dst, conflict)
            if verdict != "copy":
                plan.skips.append(SkipItem(source_repo, dest_repo, tag, verdict, src))
                continue
        plan.copies.append(CopyItem(source_repo, dest_repo, tag, src, dst,
                                    verify=dst is not None and rewrites_indexes, retry=retry))
    if mirror_deletions:
        for tag, digest in dest_tags.items():
            if tag in source_tags or is_referrers_tag(tag) or not selector.matches(tag):
                continue
            plan.deletes.append(DeleteItem(dest_repo, tag, digest))
    return plan


def orphaned_destinations(
    dest_repositories: Iterable[str],
    source_repositories: Collection[str],
    rewrite: PathRewrite,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
) -> list[tuple[str, str]]:
    """Destination repositories whose selected source repository no longer exists.

    Returns (source name, destination name) pairs; the deletion mirror plans them with an
    empty source listing, so only tags the filters select are deleted.
    """
    out = []
    for dest in dest_repositories:
        for source in rewrite.sources_of(dest):
            if source not in source_repositories and repository_selected(source, include, exclude):
                out.append((source, dest))
                break
    return out
