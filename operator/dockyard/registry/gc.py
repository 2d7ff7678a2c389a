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
  g2 set aside every candidate by moving it into gc/trash (the driver's `move`: once it
     returns, reads find the candidate missing at its key; a rename on a filesystem, a copy
     and then the delete on S3);
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

The argument uses only the order of operations and that reads see completed writes (S3 has
read-after-write consistency), so it holds on every driver. Objects in a bucket have no mtime
one can set: the S3 driver keeps use times (`touch`) as markers that `move` carries along.

What is set aside is unavailable until g3 puts it back: only candidates a concurrent push
names can be put back, and those were unreferenced garbage a moment before.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from dockyard.oci import Digest, DigestError
from dockyard.registry.drivers import Stat
from dockyard.registry.manifests import references
from dockyard.registry.storage import (
    BLOBS,
    GC_LOCK,
    MANIFEST,
    REPOSITORIES,
    TRASH,
    Storage,
    blob_key,
    subject_of,
)

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
def _locked(storage: Storage) -> Iterator[None]:
    """Hold gc/lock for one pass, refreshing it so a pass that dies frees it within minutes."""
    driver = storage.driver
    owner = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode()
    for _ in range(2):
        if driver.create(GC_LOCK, owner):
            break
        st = driver.stat(GC_LOCK)
        if st is None:
            continue
        if time.time() - st.modified < LOCK_STALE_SECONDS:
            holder = (driver.read(GC_LOCK) or b"").decode(errors="replace")[:200]
            raise GCBusy(f"another garbage collection holds {GC_LOCK} ({holder})")
        driver.delete(GC_LOCK)
    else:
        raise GCBusy(f"could not take {GC_LOCK}")
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LOCK_HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a missed beat only ages the lock
                driver.write(GC_LOCK, owner, durable=False)

    beat = threading.Thread(target=heartbeat, name="dockyard-gc-lock", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        driver.delete(GC_LOCK)


# ---- setting aside and putting back -------------------------------------------------------------


def _trash_blob(d: Digest) -> str:
    return f"{TRASH}/blobs/{d.algorithm}/{d.hex}"


def _trash_revision(name: str, d: Digest) -> str:
    return f"{TRASH}/repositories/{name}/{d.algorithm}/{d.hex}"


def restore_set_aside(storage: Storage) -> int:
    """Put back everything in gc/trash (left by a pass that died); returns how many objects."""
    restored = 0
    driver = storage.driver
    for key, _ in list(driver.walk(f"{TRASH}/blobs")):
        alg, hexpart = key.split("/")[-2:]
        with contextlib.suppress(DigestError):
            restored += driver.move(key, blob_key(Digest.parse(f"{alg}:{hexpart}")))
    for key, _ in list(driver.walk(f"{TRASH}/repositories")):
        parts = key.removeprefix(f"{TRASH}/repositories/").split("/")
        name, alg, hexpart = "/".join(parts[:-2]), parts[-2], parts[-1]
        restored += driver.move(key, f"{REPOSITORIES}/{name}/_manifests/revisions/{alg}/{hexpart}")
    driver.delete_tree(TRASH)
    return restored


def recover(storage: Storage) -> int:
    """At start-up: put back what a dead pass set aside, unless a live pass is running."""
    try:
        with _locked(storage):
            return restore_set_aside(storage)
    except GCBusy:
        return 0


# ---- marking ----------------------------------------------------------------------------------


def _age(storage: Storage, key: str, now: float) -> float | None:
    """Seconds since the object was last written or used; None when it is gone."""
    used = storage.driver.used(key)
    return None if used is None else now - used


class Marker:
    """Reads each stored manifest once per pass (they are immutable by digest)."""

    def __init__(self, storage: Storage, report: GCReport) -> None:
        self.storage = storage
        self.report = report
        self._refs: dict[Digest, tuple[list[Digest], list[Digest]] | None] = {}

    def refs(self, name: str, d: Digest) -> tuple[list[Digest], list[Digest]] | None:
        """(blobs, children) of a manifest; None when it cannot be read (reported once)."""
        if d not in self._refs:
            body = self.storage.manifest_body(d)
            try:
                if body is None:
                    raise ValueError("missing")
                self._refs[d] = references(body)
            except ValueError:
                self._refs[d] = None
                self.report.manifests_unreadable.append(f"{name}@{d}")
        return self._refs[d]

    def live(self, name: str, revisions: list[Digest], now: float, grace: float) -> set[Digest]:
        """Manifests reachable from tags and young manifests, through children and referrers."""
        subjects: dict[Digest, list[Digest]] = {}
        for d in revisions:
            body = self.storage.manifest_body(d)
            s = subject_of(body) if body is not None else None
            if s is not None:
                subjects.setdefault(s, []).append(d)
        todo = [d for d in (self.storage.resolve(name, t) for t in self.storage.tags(name) or []) if d]
        todo += [d for d in revisions
                 if (_age(self.storage, self.storage.revision_key(name, d), now) or 0.0) < grace]
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

    def __init__(self, storage: Storage, marker: Marker, report: GCReport, grace: float) -> None:
        self.storage = storage
        self.marker = marker
        self.report = report
        self.grace = grace
        self.blobs: dict[Digest, int] = {}  # set aside: digest -> size
        self.manifests: list[tuple[str, Digest]] = []

    def set_aside(self, manifests: list[tuple[str, Digest]], blobs: list[Digest]) -> None:
        driver = self.storage.driver
        for name, d in manifests:
            if driver.move(self.storage.revision_key(name, d), _trash_revision(name, d)):
                self.manifests.append((name, d))
        for d in blobs:
            size = self.storage.global_blob_size(d)
            if size is not None and driver.move(blob_key(d), _trash_blob(d)):
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
            if d in claimed.get(name, set()) or tagged or self.storage.driver.stat(self.storage.revision_key(name, d)):
                self._put_back_manifest(name, d)
                keep_blobs.add(d)
                refs = self.marker.refs(name, d)
                if refs is not None:
                    keep_blobs.update(refs[0] + refs[1])
        for d in list(self.blobs):
            age = _age(self.storage, _trash_blob(d), time.time())
            if d in every_claim or d in keep_blobs or (age is not None and age < self.grace):
                self._put_back_blob(d)

    def _put_back_manifest(self, name: str, d: Digest) -> None:
        self.manifests.remove((name, d))
        self.report.kept_for_pushes += 1
        driver, live = self.storage.driver, self.storage.revision_key(name, d)
        if driver.stat(live) is not None:
            driver.delete(_trash_revision(name, d))
        else:
            driver.move(_trash_revision(name, d), live)

    def _put_back_blob(self, d: Digest) -> None:
        del self.blobs[d]
        self.report.kept_for_pushes += 1
        self.storage.driver.move(_trash_blob(d), blob_key(d))

    def delete(self) -> None:
        driver = self.storage.driver
        for name, d in self.manifests:
            subject = self._subject(d)
            driver.delete(_trash_revision(name, d))
            if subject is not None:
                driver.delete(self.storage.referrer_key(name, subject, d))
            self.report.manifests_deleted += 1
            self.report.deleted.append(f"{name}@{d}")
        for d, size in self.blobs.items():
            if not driver.delete(_trash_blob(d)):
                continue  # put back by a server start meanwhile
            self.report.blobs_deleted += 1
            self.report.bytes_freed += size
            self.report.deleted.append(str(d))
        driver.delete_tree(TRASH)

    def _subject(self, d: Digest) -> Digest | None:
        for key in (blob_key(d), _trash_blob(d)):
            body = self.storage.driver.read(key)
            if body is not None:
                return subject_of(body)
        return None


# ---- one pass ---------------------------------------------------------------------------------


def collect(storage: Storage, *, grace: float = 3600.0, delete_untagged: bool = False, dry_run: bool = False,
            now: float | None = None) -> GCReport:
    """One pass over the storage. Blocking; safe while serving. Raises GCBusy."""
    if dry_run:
        return _pass(storage, grace, delete_untagged, True, now)
    with _locked(storage):
        restore_set_aside(storage)
        return _pass(storage, grace, delete_untagged, False, now)


def _pass(storage: Storage, grace: float, delete_untagged: bool, dry_run: bool,
          now: float | None) -> GCReport:
    start = time.monotonic()
    now = time.time() if now is None else now
    report = GCReport(dry_run=dry_run)
    marker = Marker(storage, report)
    marked: set[Digest] = set()
    dead_manifests: list[tuple[str, Digest]] = []

    for name in storage.repositories():
        report.repositories += 1
        revisions = list(storage.links(name, MANIFEST))
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
    for d, st in _stored_blobs(storage):
        if d in marked:
            continue
        age = _age(storage, blob_key(d), now + (time.monotonic() - start))
        if age is None:
            continue
        if age < grace:
            report.blobs_kept_young += 1
            continue
        dead_blobs.append(d)
        sizes[d] = st.size

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
    _clean_uploads(storage, now, grace, report)
    report.seconds = time.monotonic() - start
    return report


def _stored_blobs(storage: Storage) -> Iterator[tuple[Digest, Stat]]:
    for key, st in storage.driver.walk(BLOBS):
        parts = key.split("/")
        if len(parts) != 4:
            continue
        try:
            yield Digest.parse(f"{parts[1]}:{parts[3]}"), st
        except DigestError:
            continue


def _forget_intents(storage: Storage) -> None:
    """Remove done intents (their links are in place for the next pass) and those of dead pushes."""
    now = time.time()
    for key, _, _ in storage.intents_now():
        age = _age(storage, key, now)
        if key.endswith(".done") or (age is not None and age > DEAD_INTENT_SECONDS):
            storage.driver.delete(key)


def _clean_uploads(storage: Storage, now: float, grace: float, report: GCReport) -> None:
    """Remove upload sessions nobody wrote to for a day (or the grace period, if longer)."""
    uploads_ttl = max(grace, STALE_UPLOAD_SECONDS)
    for upload_id, last in list(storage.driver.uploads()):
        if now - last < uploads_ttl:
            continue
        report.uploads_deleted += 1
        if not report.dry_run:
            storage.driver.upload_delete(upload_id)
    if not report.dry_run:
        storage.driver.clean(now - max(grace, 3600.0))
