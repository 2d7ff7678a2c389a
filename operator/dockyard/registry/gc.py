"""Online garbage collection: mark what manifests reference, set the rest aside, re-check, delete.

It runs while the registry (one or many replicas on shared storage) serves pushes. The promise
is: nothing a manifest push was acknowledged for (201) is ever collected while a manifest
references it, whatever the grace period and however long the pass takes.

The argument. A manifest push (storage.push_manifest) does, in order:
  p1 write an intent naming the manifest and everything it references;
  p2 check every reference exists (the blob file, the child's revision link);
  p3 write the manifest's links and tags;
  p4 remove the intent, or, while a pass holds gc/lock, mark it done (the pass removes it).
A pass does, in order, holding gc/lock:
  g0 put back anything a pass that died had set aside;
  g1 mark: walk every repository, reading manifests, tags and referrers;
  g2 set aside every candidate by renaming it into gc/trash (atomic; reads see it missing);
  g3 re-check: read all intents, then put back every candidate an intent names, or that was
     used (touched) after g1, or whose manifest was re-pushed or tagged meanwhile;
  g4 delete what is still set aside.
Take a push acknowledged with 201 that references a candidate X. Its check p2 saw X, so p2
came before X was set aside (g2), hence p1 came before g3 read the intents. At g3 the intent
is either still there (in progress, or done and kept because the lock was held), and X is
put back; or it was removed at p4 because no pass held the lock then, which means p3 came
before this pass started and g1 saw the push's links, so X was never a candidate. A push
whose p2 came after g2 finds X missing and is refused (MANIFEST_BLOB_UNKNOWN); the client
pushes the blob again. An intent older than an hour with no done mark belongs to a push
that died; the pass removes it.

The grace period is therefore not what keeps pushes safe; it is how long an uploaded blob
waits for its manifest (upload commit and HEAD restart it) and how long an untagged manifest
lives with `deleteUntagged`. Untagged manifests are those no tag reaches, directly or
through an index, that are not referrers of a live manifest and are older than the grace
period (young ones are roots too: an index pushed by digest keeps its children).

What is set aside is unavailable until g3 puts it back: only candidates a concurrent push
names can be put back, and those were unreferenced garbage a moment before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dockyard.oci import Digest, DigestError
from dockyard.registry.manifests import references
from dockyard.registry.storage import FilesystemStorage, subject_of

STALE_UPLOAD_SECONDS = 24 * 3600.0
DEAD_INTENT_SECONDS = 3600.0
LOCK_HEARTBEAT_SECONDS = 10.0
LOCK_STALE_SECONDS = 120.0


class GCBusy(RuntimeError):
    """Another pass holds the lock."""


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
    kept_for_pushes: int = 0
    uploads_deleted: int = 0
    seconds: float = 0.0
    deleted: list[str] = field(default_factory=list)
    manifests_unreadable: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        unreadable = (f"; skipped {len(self.manifests_unreadable)} unreadable manifests "
                      f"({', '.join(self.manifests_unreadable[:3])})" if self.manifests_unreadable else "")
        return (f"gc: {verb} {self.blobs_deleted} blobs ({self.bytes_freed} bytes), "
                f"{self.manifests_deleted} untagged manifests, {self.uploads_deleted} stale uploads; "
                f"kept {self.blobs_marked} referenced blobs, {self.blobs_kept_young} younger than "
                f"the grace period and {self.kept_for_pushes} that pushes claimed during the pass, "
                f"in {self.seconds:.2f}s{unreadable}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def after_mark() -> None:
    """The point where a pass has decided what is garbage and not yet touched it (g1 -> g2).

    Nothing happens here; tests replace it to push into the window the argument is about.
    """


# ---- the lock ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(storage: FilesystemStorage) -> Iterator[None]:
    """Hold gc/lock for one pass, refreshing it so a pass that dies frees it within minutes."""
    path = storage.gc_lock
    owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < LOCK_STALE_SECONDS:
                raise GCBusy(f"another garbage collection holds {path} ({path.read_text()[:200]})") from None
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    else:
        raise GCBusy(f"could not take {path}")
    with os.fdopen(fd, "wb") as f:
        f.write(owner)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LOCK_HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(path)

    beat = threading.Thread(target=heartbeat, name="dockyard-gc-lock", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# ---- setting aside and putting back -------------------------------------------------------------


def _trash_blob(storage: FilesystemStorage, d: Digest) -> Path:
    return storage.trash / "blobs" / d.algorithm / d.hex


def _trash_revision(storage: FilesystemStorage, name: str, d: Digest) -> Path:
    return storage.trash / "repositories" / name / d.algorithm / d.hex


def _move(src: Path, dest: Path) -> bool:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        return True
    except FileNotFoundError:
        return False


def restore_set_aside(storage: FilesystemStorage) -> int:
    """Put back everything in gc/trash (left by a pass that died); returns how many files."""
    restored = 0
    blobs = storage.trash / "blobs"
    for path in sorted(blobs.rglob("*")) if blobs.is_dir() else []:
        if path.is_file():
            rel = path.relative_to(blobs)
            d = Digest.parse(f"{rel.parts[0]}:{rel.parts[-1]}")
            restored += _move(path, storage.blob_path(d))
    repos = storage.trash / "repositories"
    for path in sorted(repos.rglob("*")) if repos.is_dir() else []:
        if path.is_file():
            rel = path.relative_to(repos)
            name, alg, hexpart = "/".join(rel.parts[:-2]), rel.parts[-2], rel.parts[-1]
            dest = storage.repos / name / "_manifests" / "revisions" / alg / hexpart
            restored += _move(path, dest)
    shutil.rmtree(storage.trash, ignore_errors=True)
    return restored


def recover(root: Path) -> int:
    """At start-up: put back what a dead pass set aside, unless a live pass is running."""
    storage = FilesystemStorage(root)
    try:
        with _locked(storage):
            return restore_set_aside(storage)
    except GCBusy:
        return 0


# ---- marking ----------------------------------------------------------------------------------


def _age(path: Path, now: float) -> float | None:
    try:
        return now - path.stat().st_mtime
    except FileNotFoundError:
        return None


class Marker:
    """Reads each stored manifest once per pass (they are immutable by digest)."""

    def __init__(self, storage: FilesystemStorage, report: GCReport) -> None:
        self.storage = storage
        self.report = report
        self._refs: dict[Digest, tuple[list[Digest], list[Digest]] | None] = {}

    def refs(self, name: str, d: Digest) -> tuple[list[Digest], list[Digest]] | None:
        """(blobs, children) of a manifest; None when it cannot be read (reported once)."""
        if d not in self._refs:
            try:
                with open(self.storage.blob_path(d), "rb") as f:
                    self._refs[d] = references(f.read())
            except (OSError, ValueError):
                self._refs[d] = None
                self.report.manifests_unreadable.append(f"{name}@{d}")
        return self._refs[d]

    def live(self, name: str, revisions: dict[Digest, Path], now: float, grace: float) -> set[Digest]:
        """Manifests reachable from tags and young manifests, through children and referrers."""
        subjects: dict[Digest, list[Digest]] = {}
        for d in revisions:
            with contextlib.suppress(OSError):
                with open(self.storage.blob_path(d), "rb") as f:
                    s = subject_of(f.read())
                if s is not None:
                    subjects.setdefault(s, []).append(d)
        todo = [d for d in (self.storage.resolve(name, t) for t in self.storage.tags(name) or []) if d]
        todo += [d for d, link in revisions.items() if (_age(link, now) or 0.0) < grace]
        live: set[Digest] = set()
        while todo:
            d = todo.pop()
            if d in live or d not in revisions:
                continue
            live.add(d)
            refs = self.refs(name, d)
            if refs is None:
                continue
            todo.extend(refs[1])
            todo.extend(subjects.get(d, []))
        return live


# ---- the sweep --------------------------------------------------------------------------------


class Sweep:
    """Candidates of one pass: set aside (g2), re-checked against intents (g3), deleted (g4)."""

    def __init__(self, storage: FilesystemStorage, marker: Marker, report: GCReport, grace: float) -> None:
        self.storage = storage
        self.marker = marker
        self.report = report
        self.grace = grace
        self.blobs: dict[Digest, int] = {}  # set aside: digest -> size
        self.manifests: list[tuple[str, Digest]] = []

    def set_aside(self, manifests: list[tuple[str, Digest]], blobs: list[Digest]) -> None:
        for name, d in manifests:
            if _move(self.storage.revision_path(name, d), _trash_revision(self.storage, name, d)):
                self.manifests.append((name, d))
        for d in blobs:
            src = self.storage.blob_path(d)
            try:
                size = src.stat().st_size
            except FileNotFoundError:
                continue
            if _move(src, _trash_blob(self.storage, d)):
                self.blobs[d] = size

    def recheck(self) -> None:
        """Put back what a push claimed (an intent names it), re-pushed, tagged or touched meanwhile."""
        claimed: dict[str, set[Digest]] = {}
        for _, name, digests in self.storage.intents_now():
            claimed.setdefault(name, set()).update(digests)
        every_claim = set().union(*claimed.values()) if claimed else set()
        keep_blobs: set[Digest] = set()
        for name, d in list(self.manifests):
            tagged = d in {self.storage.resolve(name, t) for t in self.storage.tags(name) or []}
            if d in claimed.get(name, set()) or tagged or self.storage.revision_path(name, d).exists():
                self._put_back_manifest(name, d)
                keep_blobs.add(d)
                refs = self.marker.refs(name, d)
                if refs is not None:
                    keep_blobs.update(refs[0] + refs[1])
        for d in list(self.blobs):
            age = _age(_trash_blob(self.storage, d), time.time())
            if d in every_claim or d in keep_blobs or (age is not None and age < self.grace):
                self._put_back_blob(d)

    def _put_back_manifest(self, name: str, d: Digest) -> None:
        self.manifests.remove((name, d))
        self.report.kept_for_pushes += 1
        trash = _trash_revision(self.storage, name, d)
        if self.storage.revision_path(name, d).exists():
            trash.unlink(missing_ok=True)
        else:
            _move(trash, self.storage.revision_path(name, d))

    def _put_back_blob(self, d: Digest) -> None:
        del self.blobs[d]
        self.report.kept_for_pushes += 1
        _move(_trash_blob(self.storage, d), self.storage.blob_path(d))

    def delete(self) -> None:
        for name, d in self.manifests:
            subject = self._subject(d)
            _trash_revision(self.storage, name, d).unlink(missing_ok=True)
            if subject is not None:
                ref = self.storage.referrers_dir(name, subject) / f"{d.algorithm}-{d.hex}"
                ref.unlink(missing_ok=True)
            self.report.manifests_deleted += 1
            self.report.deleted.append(f"{name}@{d}")
        for d, size in self.blobs.items():
            try:
                _trash_blob(self.storage, d).unlink()
            except FileNotFoundError:
                continue  # put back by a server start meanwhile
            self.report.blobs_deleted += 1
            self.report.bytes_freed += size
            self.report.deleted.append(str(d))
        shutil.rmtree(self.storage.trash, ignore_errors=True)

    def _subject(self, d: Digest) -> Digest | None:
        for path in (self.storage.blob_path(d), _trash_blob(self.storage, d)):
            with contextlib.suppress(OSError):
                return subject_of(path.read_bytes())
        return None


# ---- one pass ---------------------------------------------------------------------------------


def collect(root: Path, *, grace: float = 3600.0, delete_untagged: bool = False, dry_run: bool = False,
            now: float | None = None) -> GCReport:
    """One pass over the storage under `root`. Blocking; safe while serving. Raises GCBusy."""
    storage = FilesystemStorage(root)
    if dry_run:
        return _pass(storage, grace, delete_untagged, True, now)
    with _locked(storage):
        restore_set_aside(storage)
        return _pass(storage, grace, delete_untagged, False, now)


def _pass(storage: FilesystemStorage, grace: float, delete_untagged: bool, dry_run: bool,
          now: float | None) -> GCReport:
    start = time.monotonic()
    now = time.time() if now is None else now
    report = GCReport(dry_run=dry_run)
    marker = Marker(storage, report)
    marked: set[Digest] = set()
    dead_manifests: list[tuple[str, Digest]] = []

    for name in storage.repositories():
        report.repositories += 1
        revisions = dict(storage.iter_repository_manifests(name))
        keep = set(revisions)
        if delete_untagged:
            live = marker.live(name, revisions, now, grace)
            for d in revisions:
                if d in live or marker.refs(name, d) is None:  # unreadable: never deleted
                    continue
                keep.discard(d)
                dead_manifests.append((name, d))
        for d in keep:
            marked.add(d)
            refs = marker.refs(name, d)
            if refs is not None:
                marked.update(refs[0] + refs[1])
        report.manifests_marked += len(keep)
    report.blobs_marked = len(marked)

    dead_blobs: list[Digest] = []
    sizes: dict[Digest, int] = {}
    for d, path in _stored_blobs(storage):
        if d in marked:
            continue
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if now + (time.monotonic() - start) - st.st_mtime < grace:
            report.blobs_kept_young += 1
            continue
        dead_blobs.append(d)
        sizes[d] = st.st_size

    after_mark()
    if dry_run:
        report.manifests_deleted = len(dead_manifests)
        report.blobs_deleted = len(dead_blobs)
        report.bytes_freed = sum(sizes.values())
        report.deleted = [f"{n}@{d}" for n, d in dead_manifests] + [str(d) for d in dead_blobs]
    else:
        sweep = Sweep(storage, marker, report, grace)
        sweep.set_aside(dead_manifests, dead_blobs)
        sweep.recheck()
        sweep.delete()
        _forget_intents(storage)
    _clean_uploads_and_tmp(storage, now, grace, report)
    report.seconds = time.monotonic() - start
    return report


def _stored_blobs(storage: FilesystemStorage) -> Iterator[tuple[Digest, Path]]:
    for alg_dir in sorted(storage.blobs.iterdir()) if storage.blobs.is_dir() else []:
        for prefix in sorted(alg_dir.iterdir()) if alg_dir.is_dir() else []:
            for path in sorted(prefix.iterdir()) if prefix.is_dir() else []:
                try:
                    yield Digest.parse(f"{alg_dir.name}:{path.name}"), path
                except DigestError:
                    continue


def _forget_intents(storage: FilesystemStorage) -> None:
    """Remove done intents (their links are in place for the next pass) and those of dead pushes."""
    now = time.time()
    for path, _, _ in storage.intents_now():
        age = _age(path, now)
        if path.suffix == ".done" or (age is not None and age > DEAD_INTENT_SECONDS):
            path.unlink(missing_ok=True)


def _clean_uploads_and_tmp(storage: FilesystemStorage, now: float, grace: float, report: GCReport) -> None:
    uploads_ttl = max(grace, STALE_UPLOAD_SECONDS)
    for upload in sorted(storage.uploads.iterdir()) if storage.uploads.is_dir() else []:
        # The directory itself counts: an upload being created has no files in it yet.
        ages = [a for a in (_age(upload, now), _age(upload / "data", now), _age(upload / "info", now))
                if a is not None]
        if not ages or min(ages) < uploads_ttl:
            continue
        report.uploads_deleted += 1
        if not report.dry_run:
            shutil.rmtree(upload, ignore_errors=True)
    for tmp in storage.tmp.iterdir() if storage.tmp.is_dir() else []:
        age = _age(tmp, now)
        if age is not None and age > max(grace, 3600.0) and not report.dry_run:
            with contextlib.suppress(OSError):
                tmp.unlink()
