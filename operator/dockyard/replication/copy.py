"""The copy engine: executes one run of a ReplicationPolicy between two registries.

Order and safety rules (docs/architecture.md, "Data flow of a push"): blobs before
manifests, index children before their index, the tag written last, so an interrupted run
never leaves a tag pointing at incomplete content. Digests are preserved byte for byte, except that a
platform filter has to write a new, smaller index (noted in the run's summary).

Throughput: every blob is moved at most once per run (single flight per digest; other
destination repositories mount it), blobs already present are skipped after a HEAD, and
work runs with bounded concurrency. Resilience: requests retry with backoff honouring
Retry-After, blob transfers time out only when no byte moves, large blobs go in chunks
and resume from the server's offset, and one artifact's failure never stops the others.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp

from dockyard.api.replication import FailedItem, ReplicationPolicySpec
from dockyard.oci import Digest, mediatypes
from dockyard.oci.backoff import Limiter, RetryPolicy
from dockyard.oci.client import Credentials, RegistryClient, RegistryError, WireManifest, log
from dockyard.replication.filters import (
    TagSelector,
    filter_index_entries,
    is_literal,
    is_referrers_tag,
    parse_version,
    referrers_tag,
    repository_selected,
)
from dockyard.replication.limits import parse_bandwidth, parse_spec_duration
from dockyard.replication.plan import CopyItem, DeleteItem, PathRewrite, Plan, decide, orphaned_destinations
from dockyard.replication.plan import plan_repository as _plan_repository
from dockyard.replication.result import RunResult
from dockyard.replication.state import StateStore
from dockyard.replication.transfer import PIECE, BlobMover

# Seconds the registries get to answer the first request before the run says it is waiting.
PING_PATIENCE = 2.0

T = TypeVar("T")

FOREIGN_LAYERS = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})


@dataclass(frozen=True)
class Access:
    """How to reach one registry of a run: URL, credentials and TLS settings."""

    url: str
    credentials: Credentials | None = None
    insecure: bool = False
    ca_file: str | None = None


@dataclass(frozen=True)
class RunAccess:
    source: Access
    destination: Access


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    bytes: int
    copied: int
    skipped: int
    failed: int


@dataclass(frozen=True)
class EngineOptions:
    chunk_size: int = 32 * 1024 * 1024
    """Blobs larger than this are uploaded in PATCH chunks that resume after interruptions."""
    stall_timeout: float = 60.0
    """Seconds without a byte moved before a transfer is abandoned (and retried)."""
    dry_run: bool = False
    progress: Callable[[Progress], None] | None = None


class Engine:
    """One run: plan every selected repository, then copy, then delete (mirror)."""

    def __init__(self, spec: ReplicationPolicySpec, source: RegistryClient, dest: RegistryClient,
                 options: EngineOptions, failed_before: Sequence[FailedItem] = ()) -> None:
        self.spec = spec
        self.source = source
        self.dest = dest
        self.options = options
        tags = spec.filters.tags
        self.selector = TagSelector(tags.include, tags.exclude, tags.semver_range, spec.filters.latest)
        self.rewrite = PathRewrite(spec.destination_path.prefix, spec.destination_path.strip_prefix)
        self.platforms = spec.filters.platforms
        self.retry = source.retry
        self.result = RunResult()
        self.failed_before = {(f.repository, f.tag) for f in failed_before}
        concurrency = spec.limits.concurrency
        self.item_slots = asyncio.Semaphore(concurrency)
        self.repo_slots = asyncio.Semaphore(concurrency)
        self.blob_slots = asyncio.Semaphore(concurrency)
        bandwidth = parse_bandwidth(spec.limits.bandwidth) if spec.limits.bandwidth is not None else None
        self.bandwidth = Limiter(bandwidth, burst=max(bandwidth or 0, PIECE) if bandwidth else None)
        self._once: dict[tuple[str, ...], asyncio.Future[Any]] = {}
        self._holders: dict[str, asyncio.Future[str | None]] = {}
        self.mover = BlobMover(source, dest, self.retry, self.bandwidth, options.stall_timeout,
                               options.chunk_size, self._moved)
        self._done = 0
        self._total = 0
        self._rewritten: set[str] = set()
        self._source_tags: dict[str, frozenset[str]] = {}
        self._fresh: set[str] = set()

    # ------------------------------------------------------------------ helpers

    def _moved(self, count: int) -> None:
        self.result.bytes_copied += count

    def _progress(self) -> None:
        if self.options.progress:
            r = self.result
            self.options.progress(Progress(self._done, self._total, r.bytes_copied, r.copied, r.skipped, r.failed))

    async def _single(self, key: tuple[str, ...], factory: Callable[[], Awaitable[T]]) -> T:
        """Run `factory()` once per key and run; concurrent callers share its outcome.

        A failure is forgotten so a later caller (another tag) tries again.
        """
        fut = self._once.get(key)
        if fut is None:
            fut = asyncio.ensure_future(factory())
            self._once[key] = fut

            def forget(f: asyncio.Future[Any], key: tuple[str, ...] = key) -> None:
                if f.cancelled() or f.exception() is not None:
                    self._once.pop(key, None)
            fut.add_done_callback(forget)
        result: T = await asyncio.shield(fut)
        return result

    # ------------------------------------------------------------------ run

    async def run(self) -> RunResult:
        try:
            await self._ping()
            repositories = await self._source_repositories()
        except (RegistryError, aiohttp.ClientError, TimeoutError, OSError) as e:
            self.result.fatal = str(e) or type(e).__name__
            return self._finish()
        pairs = [(r, self.rewrite.apply(r)) for r in repositories]
        if self.spec.deletion == "mirror":
            pairs += await self._orphans(repositories)
        retried = {repo for repo, _ in self.failed_before}
        pairs.sort(key=lambda p: p[0] not in retried)
        await asyncio.gather(*(self._repository(src, dst) for src, dst in pairs))
        return self._finish()

    async def _ping(self) -> None:
        """Both registries answer /v2/; one that keeps the run waiting is named at once."""
        sides = {asyncio.ensure_future(r.ping()): (side, r)
                 for side, r in (("source", self.source), ("destination", self.dest))}
        _, pending = await asyncio.wait(sides, timeout=PING_PATIENCE)
        for fut in pending:
            side, registry = sides[fut]
            if not registry.connect_warned:
                log.warning("waiting for the %s registry at %s to answer", side, registry.url)
        await asyncio.gather(*sides)

    def _finish(self) -> RunResult:
        if self._rewritten:
            self.result.notes.append(
                f"{len(self._rewritten)} index(es) rewritten by the platform filter (new digests)")
        self.result.finished = datetime.now(UTC)
        return self.result

    async def _source_repositories(self) -> list[str]:
        include = self.spec.filters.repositories.include
        exclude = self.spec.filters.repositories.exclude
        if include and all(is_literal(p) for p in include):
            names = list(dict.fromkeys(include))
        else:
            names = await self.source.catalog()
        return [n for n in names if repository_selected(n, include, exclude)]

    async def _orphans(self, repositories: Sequence[str]) -> list[tuple[str, str]]:
        try:
            dest_repos = await self.dest.catalog()
        except RegistryError:
            return []  # no catalog at the destination: only repositories the source still has
        repos = self.spec.filters.repositories
        return orphaned_destinations(dest_repos, set(repositories), self.rewrite, repos.include, repos.exclude)

    async def _heads(self, registry: RegistryClient, repo: str, tags: Sequence[str],
                     push: bool) -> dict[str, str | None]:
        digests = await asyncio.gather(*(registry.head_manifest(repo, t, push=push) for t in tags))
        return dict(zip(tags, digests, strict=True))

    async def plan_repository(self, src_repo: str, dst_repo: str) -> Plan:
        source_tags = await self.source.tags(src_repo)
        self._source_tags[src_repo] = frozenset(source_tags or ())
        if source_tags is None:
            if self.spec.deletion != "mirror":
                raise RegistryError(f"repository {src_repo} not found at the source", 404, "NAME_UNKNOWN")
            source_tags = []
        listed = await self.dest.tags(dst_repo, push=True)
        if listed is None:
            self._fresh.add(dst_repo)  # no such repository yet: nothing there to HEAD for
        dest_tags = listed or []
        candidates = [t for t in source_tags if not is_referrers_tag(t)]
        created = await self._created_times(src_repo, candidates)
        selected = self.selector.select(candidates, created)
        dest_set = set(dest_tags)
        # Only tags on both sides need digests to decide; a missing tag is copied regardless.
        both = [t for t in selected if t in dest_set]
        src_digests, dst_digests = await asyncio.gather(
            self._heads(self.source, src_repo, both, False), self._heads(self.dest, dst_repo, both, True))
        source_map: dict[str, str | None] = dict.fromkeys(source_tags)
        source_map.update(src_digests)
        dest_map: dict[str, str | None] = dict.fromkeys(dest_tags)
        dest_map.update(dst_digests)
        # A tag that vanished between listing and HEAD is not copied (nor compared).
        for tag in both:
            if src_digests[tag] is None:
                source_map.pop(tag, None)
            if dst_digests[tag] is None:
                dest_map.pop(tag, None)
        return _plan_repository(
            src_repo, dst_repo, source_map, dest_map, self.selector,
            conflict=self.spec.conflict, mirror_deletions=self.spec.deletion == "mirror",
            rewrites_indexes=bool(self.platforms), failed=self.failed_before, created=created)

    async def _created_times(self, src_repo: str, tags: Sequence[str]) -> dict[str, str] | None:
        """Creation times for `latest: N` when the tags are not all versions (else version order)."""
        matching = [t for t in tags if self.selector.matches(t)]
        if self.selector.latest is None or all(parse_version(t) for t in matching):
            return None
        times = await asyncio.gather(*(self._created(src_repo, t) for t in matching))
        return {t: when for t, when in zip(matching, times, strict=True) if when}

    async def _created(self, src_repo: str, tag: str) -> str:
        """The image config's `created` (of the first image of an index), or "" when unknown."""
        manifest = await self.source.get_manifest(src_repo, tag)
        for _ in range(2):
            if manifest is None:
                return ""
            doc = manifest.parsed()
            if not manifest.is_index:
                break
            entries = doc.get("manifests") or []
            if not entries:
                return ""
            manifest = await self.source.get_manifest(src_repo, entries[0]["digest"])
        config = doc.get("config") or {}
        if not config.get("digest") or int(config.get("size", 0)) > 1024 * 1024:
            return ""
        resp = await self.source.open_blob(src_repo, config["digest"])
        try:
            body = await resp.content.read(1024 * 1024 + 1)
        finally:
            resp.release()
        try:
            return str(json.loads(body).get("created") or "")
        except (ValueError, AttributeError):
            return ""

    async def _repository(self, src_repo: str, dst_repo: str) -> None:
        async with self.repo_slots:
            try:
                plan = await self.plan_repository(src_repo, dst_repo)
            except Exception as e:  # one repository's trouble never stops the others
                self.result.fail(src_repo, "*", f"listing failed: {_describe(e)}")
                self._progress()
                return
        self._total += len(plan.copies) + len(plan.skips) + len(plan.deletes)
        if self.options.dry_run:
            self._dry_run(plan)
            return
        jobs: list[Awaitable[None]] = [self._copy(item) for item in plan.ordered()]
        for skip in plan.skips:
            if skip.reason == "up-to-date" and self.spec.referrers and skip.digest:
                jobs.append(self._skip_with_referrers(skip.source_repo, skip.dest_repo, skip.tag, skip.digest))
            else:
                self.result.skipped += 1
                self._done += 1
        await asyncio.gather(*jobs)
        if plan.deletes:
            await asyncio.gather(*(self._delete(d) for d in plan.deletes))
        self._progress()

    def _dry_run(self, plan: Plan) -> None:
        for c in plan.ordered():
            self.result.would_copy.append(
                f"{c.source_repo}:{c.tag} -> {c.dest_repo}:{c.tag}" + (" (if changed)" if c.verify else ""))
        for d in plan.deletes:
            self.result.would_delete.append(f"{d.dest_repo}:{d.tag}")
        self.result.skipped += len(plan.skips)

    # ------------------------------------------------------------------ artifacts

    async def _copy(self, item: CopyItem) -> None:
        async with self.item_slots:
            try:
                await self._copy_tag(item)
            except Exception as e:  # one artifact's failure never stops the others
                self.result.fail(item.source_repo, item.tag, _describe(e))
            finally:
                self._done += 1
                self._progress()

    async def _skip_with_referrers(self, src_repo: str, dst_repo: str, tag: str, digest: str) -> None:
        async with self.item_slots:
            self.result.skipped += 1
            try:
                await self._referrers(src_repo, dst_repo, digest)
            except Exception as e:
                self.result.fail(src_repo, tag, f"referrers: {_describe(e)}")
            finally:
                self._done += 1
                self._progress()

    async def _copy_tag(self, item: CopyItem) -> None:
        manifest = await self.source.get_manifest(item.source_repo, item.tag)
        if manifest is None:
            raise RegistryError(f"{item.source_repo}:{item.tag} vanished from the source", 404,
                                "MANIFEST_UNKNOWN")
        target, children = self._target(manifest)
        if item.dest_digest is not None:
            verdict = decide(target.digest, item.dest_digest, self.spec.conflict)
            if verdict != "copy":
                self.result.skipped += 1
                if self.spec.referrers:
                    await self._referrers_of(item, manifest, target, children)
                return
        if children is not None:
            await asyncio.gather(*(self._manifest_by_digest(item.source_repo, item.dest_repo, c)
                                   for c in children))
        else:
            await self._blobs(item.source_repo, item.dest_repo, manifest)
        await self.dest.put_manifest(item.dest_repo, item.tag, target)
        self.result.copied += 1
        if self.spec.referrers:
            try:
                await self._referrers_of(item, manifest, target, children)
            except Exception as e:  # the image is there; its referrers are retried next run
                raise RegistryError(f"referrers: {_describe(e)}") from e

    async def _referrers_of(self, item: CopyItem, manifest: WireManifest, target: WireManifest,
                            children: list[str] | None) -> None:
        if target.digest == manifest.digest:
            await self._referrers(item.source_repo, item.dest_repo, manifest.digest)
        else:  # a rewritten index has no referrers of its own; its images may
            for child in children or []:
                await self._referrers(item.source_repo, item.dest_repo, child)

    def _target(self, manifest: WireManifest) -> tuple[WireManifest, list[str] | None]:
        """What the destination tag gets, and the child digests an index needs first."""
        if not manifest.is_index:
            return manifest, None
        doc = manifest.parsed()
        entries = doc.get("manifests") or []
        if not self.platforms:
            return manifest, [e["digest"] for e in entries]
        kept = filter_index_entries(entries, self.platforms)
        if len(kept) == len(entries):
            return manifest, [e["digest"] for e in entries]
        if not kept:
            raise RegistryError(f"no platform of the index matches {', '.join(self.platforms)}", None,
                                "MANIFEST_INVALID")
        doc["manifests"] = kept
        body = json.dumps(doc, separators=(",", ":")).encode()
        rewritten = WireManifest(manifest.media_type, body, str(Digest.of(body)))
        self._rewritten.add(manifest.digest)
        return rewritten, [e["digest"] for e in kept]

    async def _manifest_by_digest(self, src_repo: str, dst_repo: str, digest: str) -> None:
        async def work() -> None:
            if dst_repo not in self._fresh and await self.dest.head_manifest(dst_repo, digest, push=True):
                return
            manifest = await self.source.get_manifest(src_repo, digest)
            if manifest is None:
                raise RegistryError(f"{src_repo}@{digest} is missing at the source", 404, "MANIFEST_UNKNOWN")
            if manifest.is_index:
                children = [e["digest"] for e in manifest.parsed().get("manifests") or []]
                await asyncio.gather(*(self._manifest_by_digest(src_repo, dst_repo, c) for c in children))
            else:
                await self._blobs(src_repo, dst_repo, manifest)
            await self.dest.put_manifest(dst_repo, digest, manifest)

        await self._single(("manifest", dst_repo, digest), work)

    async def _referrers(self, src_repo: str, dst_repo: str, subject: str, depth: int = 0) -> None:
        """Copy the manifests whose subject is `subject` (signatures, SBOMs), then theirs."""
        if self.source.referrers_api is False and referrers_tag(subject) not in self._source_tags.get(src_repo, ()):
            return  # no referrers API and no tag-schema index in the listing: nothing refers to it
        descriptors, fallback = await self.source.referrers(src_repo, subject)
        if not descriptors:
            return
        missing_api = False
        for desc in descriptors:
            digest = desc["digest"]
            if await self.dest.head_manifest(dst_repo, digest, push=True):
                continue
            manifest = await self.source.get_manifest(src_repo, digest)
            if manifest is None:
                continue
            if manifest.is_index:
                children = [e["digest"] for e in manifest.parsed().get("manifests") or []]
                await asyncio.gather(*(self._manifest_by_digest(src_repo, dst_repo, c) for c in children))
            else:
                await self._blobs(src_repo, dst_repo, manifest)
            resp = await self.dest.put_manifest(dst_repo, digest, manifest)
            self.result.copied += 1
            if "OCI-Subject" not in resp.headers:
                missing_api = True
            if depth < 2:
                await self._referrers(src_repo, dst_repo, digest, depth + 1)
        if missing_api:
            await self._update_referrers_tag(dst_repo, subject, descriptors, fallback)

    async def _update_referrers_tag(self, dst_repo: str, subject: str, descriptors: list[dict[str, Any]],
                                    fallback: WireManifest | None) -> None:
        """The destination has no referrers API: maintain the `sha256-<hex>` index there."""
        tag = referrers_tag(subject)
        existing = await self.dest.get_manifest(dst_repo, tag, push=True)
        if fallback is not None and existing is None:
            await self.dest.put_manifest(dst_repo, tag, fallback)  # byte for byte from the source
            return
        doc: dict[str, Any] = existing.parsed() if existing else {
            "schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": []}
        known = {m.get("digest") for m in doc.get("manifests", [])}
        added = [d for d in descriptors if d.get("digest") not in known]
        if not added:
            return
        doc["manifests"] = [*doc.get("manifests", []), *added]
        body = json.dumps(doc, separators=(",", ":")).encode()
        await self.dest.put_manifest(dst_repo, tag, WireManifest(mediatypes.OCI_INDEX, body, str(Digest.of(body))))

    # ------------------------------------------------------------------ blobs

    async def _blobs(self, src_repo: str, dst_repo: str, manifest: WireManifest) -> None:
        doc = manifest.parsed()
        descriptors = ([doc["config"]] if doc.get("config") else []) + list(doc.get("layers") or []) \
            + list(doc.get("blobs") or [])
        await asyncio.gather(*(
            self._single(("blob", dst_repo, d["digest"]),
                         lambda d=d: self._ensure_blob(src_repo, dst_repo, d))  # type: ignore[misc]
            for d in descriptors if d.get("mediaType") not in FOREIGN_LAYERS))

    async def _ensure_blob(self, src_repo: str, dst_repo: str, desc: Mapping[str, Any]) -> None:
        digest = str(desc["digest"])
        if dst_repo not in self._fresh and await self.dest.blob_exists(dst_repo, digest):
            self.result.blobs_skipped += 1
            if digest not in self._holders:
                self._holders[digest] = _resolved(dst_repo)
            return
        location: str | None = None
        holder_fut = self._holders.get(digest)
        if holder_fut is None:
            fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
            self._holders[digest] = fut
            try:
                await self._transfer(src_repo, dst_repo, desc, None)
            except BaseException:
                fut.set_result(None)
                self._holders.pop(digest, None)
                raise
            fut.set_result(dst_repo)
            return
        holder = await asyncio.shield(holder_fut)
        if holder and holder != dst_repo:
            mounted, location = await self.dest.start_upload(dst_repo, mount=digest, mount_from=holder)
            if mounted:
                self.result.blobs_mounted += 1
                return
        await self._transfer(src_repo, dst_repo, desc, location)

    async def _transfer(self, src_repo: str, dst_repo: str, desc: Mapping[str, Any], location: str | None) -> None:
        async with self.blob_slots:
            await self.mover.copy(src_repo, dst_repo, desc, location)
        self.result.blobs_copied += 1

    # ------------------------------------------------------------------ deletion

    async def _delete(self, item: DeleteItem) -> None:
        async with self.item_slots:
            try:
                await self._delete_tag(item)
            except Exception as e:
                self.result.fail(item.dest_repo, item.tag, f"delete: {_describe(e)}")
            finally:
                self._done += 1

    async def _delete_tag(self, item: DeleteItem) -> None:
        resp = await self.dest.delete_manifest(item.dest_repo, item.tag)
        if resp.status in (200, 202, 204):
            self.result.deleted += 1
            return
        if resp.status == 404:
            return
        # The registry cannot delete a tag alone (distribution 2.x): delete its manifest by
        # digest, but only when no other tag of the repository points at it.
        digest = item.digest or await self.dest.head_manifest(item.dest_repo, item.tag, push=True)
        if digest is None:
            return
        others = [t for t in await self.dest.tags(item.dest_repo, push=True) or [] if t != item.tag]
        shared = [t for t, d in (await self._heads(self.dest, item.dest_repo, others, True)).items() if d == digest]
        if shared:
            raise RegistryError(f"the registry cannot delete tag {item.tag} alone and its manifest is also "
                                f"tagged {', '.join(sorted(shared)[:3])}", resp.status)
        resp = await self.dest.delete_manifest(item.dest_repo, digest)
        if resp.status not in (200, 202, 204):
            raise RegistryError(f"DELETE {item.dest_repo}@{digest}: HTTP {resp.status}", resp.status)
        self.result.deleted += 1


def _resolved(value: str) -> asyncio.Future[str | None]:
    fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
    fut.set_result(value)
    return fut


def _describe(error: BaseException) -> str:
    text = str(error)
    return text if text else type(error).__name__


def registry_for(access: Access, spec: ReplicationPolicySpec, options: EngineOptions) -> RegistryClient:
    limits = spec.limits
    retry = RetryPolicy(max=limits.retry.max, backoff=parse_spec_duration(limits.retry.backoff))
    return RegistryClient(access.url, credentials=access.credentials, insecure=access.insecure, ca_file=access.ca_file,
                    retry=retry, requests_per_second=limits.requests_per_second,
                    connections=max(8, limits.concurrency * 2), stall_timeout=options.stall_timeout)


async def run_policy(policy: ReplicationPolicySpec, credentials: RunAccess, state: StateStore,
                     options: EngineOptions | None = None) -> RunResult:
    """One pass of a policy: copy what the filters select, delete what the mirror says, and
    remember what failed (tried first next time). Never raises for registry trouble: the
    result says what happened (`fatal` when nothing could be done)."""
    options = options or EngineOptions()
    failed_before = await asyncio.to_thread(state.load)
    source = registry_for(credentials.source, policy, options)
    dest = registry_for(credentials.destination, policy, options)
    try:
        result = await Engine(policy, source, dest, options, failed_before).run()
    finally:
        await asyncio.gather(source.close(), dest.close())
    if not options.dry_run:
        # A run that could not even list the source learned nothing: keep what is remembered.
        remember = list(failed_before) if result.fatal else result.failed_items
        await asyncio.to_thread(state.save, remember)
    return result
