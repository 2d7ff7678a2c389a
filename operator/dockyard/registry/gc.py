"""Online garbage collection: mark what manifests reference, sweep the rest after a grace period.

It runs while the registry serves. What keeps in-flight pushes safe is time, not a lock:
a blob is only deleted when nothing references it AND its file has not been written or
referenced for `grace` seconds. Uploads commit by renaming a fresh file (new mtime); a
manifest push, a mount and a manifest's reference check refresh the mtime of the blobs
they touch; the sweep re-reads the mtime right before unlinking. A client that checks a
blob with HEAD and then pushes a manifest more than `grace` later may see
MANIFEST_BLOB_UNKNOWN and must push the blob again; nothing served is ever corrupt.

Untagged manifests (optional) are those no tag reaches, directly or through an index, and
that are not referrers of a live manifest; they are deleted only when older than `grace`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dockyard.oci import Digest, DigestError
from dockyard.registry.manifests import parse_manifest
from dockyard.registry.storage import FilesystemStorage, subject_of

STALE_UPLOAD_SECONDS = 24 * 3600.0


@dataclass
class GCReport:
    dry_run: bool = False
    repositories: int = 0
    manifests_marked: int = 0
    blobs_marked: int = 0
    blobs_deleted: int = 0
    bytes_freed: int = 0
    blobs_kept_young: int = 0
    manifests_deleted: int = 0
    uploads_deleted: int = 0
    seconds: float = 0.0
    deleted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (f"gc: {verb} {self.blobs_deleted} blobs ({self.bytes_freed} bytes), "
                f"{self.manifests_deleted} untagged manifests, {self.uploads_deleted} stale uploads; "
                f"kept {self.blobs_marked} referenced blobs and {self.blobs_kept_young} younger than "
                f"the grace period in {self.seconds:.2f}s")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _references(storage: FilesystemStorage, digest: Digest) -> tuple[list[Digest], list[Digest]]:
    """(blobs, child manifests) a stored manifest references; empty when unreadable."""
    try:
        with open(storage.blob_path(digest), "rb") as f:
            body = f.read()
        parsed = parse_manifest(body, None)
    except (OSError, ValueError):
        return [], []
    return parsed.blobs, parsed.children


def _age(path: Path, now: float) -> float | None:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return None


def _live_manifests(storage: FilesystemStorage, name: str, revisions: dict[Digest, Path]) -> set[Digest]:
    """Manifests reachable from tags (through indexes) plus referrers of live manifests."""
    live: set[Digest] = set()
    todo = [d for d in (storage.resolve(name, t) for t in storage.tags(name) or []) if d is not None]
    subjects: dict[Digest, list[Digest]] = {}
    for d in revisions:
        with contextlib.suppress(OSError):
            with open(storage.blob_path(d), "rb") as f:
                s = subject_of(f.read())
            if s is not None:
                subjects.setdefault(s, []).append(d)
    while todo:
        d = todo.pop()
        if d in live or d not in revisions:
            continue
        live.add(d)
        todo.extend(_references(storage, d)[1])
        todo.extend(subjects.get(d, []))
    return live


def collect(root: Path, *, grace: float = 3600.0, delete_untagged: bool = False, dry_run: bool = False,  # noqa: C901
            now: float | None = None) -> GCReport:
    """One mark-and-sweep pass over the storage under `root`. Blocking; safe while serving."""
    start = time.monotonic()
    now = time.time() if now is None else now

    def clock() -> float:  # `now`, advancing with real time while the pass runs
        return now + (time.monotonic() - start)

    storage = FilesystemStorage(root)
    report = GCReport(dry_run=dry_run)
    marked: set[Digest] = set()

    for name in storage.repositories():
        report.repositories += 1
        revisions = dict(storage.iter_repository_manifests(name))
        keep = set(revisions)
        if delete_untagged:
            live = _live_manifests(storage, name, revisions)
            for d, link in revisions.items():
                age = _age(link, now)
                if d in live or age is None or age < grace:
                    continue
                keep.discard(d)
                report.manifests_deleted += 1
                report.deleted.append(f"{name}@{d}")
                if not dry_run:
                    storage.delete_manifest(name, d)
        for d in keep:
            marked.add(d)
            blobs, children = _references(storage, d)
            marked.update(blobs)
            marked.update(children)
        report.manifests_marked += len(keep)

    report.blobs_marked = len(marked)
    for alg_dir in sorted(storage.blobs.iterdir()) if storage.blobs.is_dir() else []:
        for prefix in sorted(alg_dir.iterdir()) if alg_dir.is_dir() else []:
            for path in sorted(prefix.iterdir()) if prefix.is_dir() else []:
                try:
                    d = Digest.parse(f"{alg_dir.name}:{path.name}")
                except DigestError:
                    continue
                if d in marked:
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if clock() - st.st_mtime < grace:
                    report.blobs_kept_young += 1
                    continue
                if not dry_run:
                    try:  # re-read right before unlinking: a push may have just referenced it
                        if clock() - os.stat(path).st_mtime < grace:
                            report.blobs_kept_young += 1
                            continue
                        path.unlink()
                    except FileNotFoundError:
                        continue
                report.blobs_deleted += 1
                report.bytes_freed += st.st_size
                report.deleted.append(str(d))

    uploads_ttl = max(grace, STALE_UPLOAD_SECONDS)
    for upload in sorted(storage.uploads.iterdir()) if storage.uploads.is_dir() else []:
        # The directory itself counts: an upload being created has no files in it yet.
        ages = [a for a in (_age(upload, now), _age(upload / "data", now), _age(upload / "info", now))
                if a is not None]
        if not ages or min(ages) < uploads_ttl:
            continue
        report.uploads_deleted += 1
        if not dry_run:
            shutil.rmtree(upload, ignore_errors=True)
    for tmp in storage.tmp.iterdir() if storage.tmp.is_dir() else []:
        age = _age(tmp, now)
        if age is not None and age > max(grace, 3600.0) and not dry_run:
            with contextlib.suppress(OSError):
                tmp.unlink()
    report.seconds = time.monotonic() - start
    return report
