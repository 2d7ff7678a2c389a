"""Storage quotas (`quotas` in the config, `spec.quotas` of the Registry).

A quota covers the repositories matching any of its globs (RE2, `dockyard.api.patterns.glob_regex`)
and limits the bytes they hold together. What a repository holds is its layer links and manifest
revisions whose blob exists; a blob held by several repositories of one quota counts once in it
(and once in every other quota covering one of them).

`QuotaBook` keeps, per quota, the distinct digests held and their total size:

- Built by a walk of the storage (`rescan`), at start-up and again periodically and after each GC
  pass (the server runs it in the `walks` pool, off the event loop), because GC and other replicas
  on shared storage change what is held without this process seeing it.
- Kept current between walks for this process's own writes: the storage calls `admit` around every
  write that links a blob into a repository (upload commit, mount, manifest put) and `unlinked`
  after a blob or manifest delete (see `Storage.guard`).

`admit` is where a push is refused: before the blob is published or linked, every quota covering
the repository that does not already count the digest must have room for it, counting the
admissions still in flight in this process, else the write fails with DENIED (403) naming the
quota, its usage and the push's size. Nothing is written then; the upload session is removed by
the storage.

Across replicas: each process counts its own writes exactly (a push it admits is in its book
before the next admission) and learns of other replicas' writes and of GC at the next walk, so
usage converges within the rescan interval; replicas admitting concurrently may together go over
a limit by what they admitted within that interval.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from dockyard.api.patterns import glob_regex
from dockyard.oci import Digest, ErrorCode, OCIError
from dockyard.registry.config import QuotaConfig
from dockyard.registry.storage import LAYER, MANIFEST, Storage

log = logging.getLogger("dockyard.registry")

RESCAN_SECONDS = 60.0
"""How often usage is recomputed from the storage (GC and other replicas change it)."""
READY_TIMEOUT = 60.0
"""How long a push into a quota waits for the first walk before it is refused as unavailable."""
NEARLY_FULL = 0.9
"""Usage from which a quota counts as nearly full (logged once per crossing; the operator's Event)."""
_MAX_COVERING_CACHE = 8192

Holder = tuple[str, str]
"""(repository, LAYER or MANIFEST): one link that holds a digest."""


def human_bytes(n: int) -> str:
    """`512 B`, `200 MiB`, `49.9 GiB`: binary units, one decimal where it matters."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024
        if value < 1024 or unit == "EiB":
            text = f"{value:.1f}"
            return f"{text.removesuffix('.0')} {unit}"
    raise AssertionError("unreachable")


@dataclass
class Quota:
    """One quota's state. `used` is the total size of `sizes`, the digests some holder holds."""

    number: int
    """Its position in `quotas` (and `spec.quotas`), counting from 1, as messages and metrics name it."""
    repositories: tuple[str, ...]
    limit: int
    globs: tuple[Any, ...] = field(repr=False)
    holders: dict[Digest, set[Holder]] = field(default_factory=dict, repr=False)
    sizes: dict[Digest, int] = field(default_factory=dict, repr=False)
    used: int = 0
    pending: dict[Digest, list[int]] = field(default_factory=dict, repr=False)
    """Digests admitted but not yet linked: digest -> [admissions in flight, size]."""
    pending_bytes: int = 0
    nearly_full: bool = False

    def covers(self, repository: str) -> bool:
        return any(g.match(repository) for g in self.globs)

    @property
    def label(self) -> str:
        return ",".join(self.repositories)

    def add(self, holder: Holder, digest: Digest, size: int) -> None:
        holders = self.holders.get(digest)
        if holders is None:
            holders = self.holders[digest] = set()
            self.sizes[digest] = size
            self.used += size
        holders.add(holder)

    def remove(self, holder: Holder, digest: Digest) -> None:
        holders = self.holders.get(digest)
        if holders is None:
            return
        holders.discard(holder)
        if not holders:
            del self.holders[digest]
            self.used -= self.sizes.pop(digest)

    def reserve(self, digest: Digest, size: int) -> None:
        entry = self.pending.get(digest)
        if entry is None:
            self.pending[digest] = [1, size]
            self.pending_bytes += size
        else:
            entry[0] += 1

    def release(self, digest: Digest) -> None:
        entry = self.pending.get(digest)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self.pending[digest]
            self.pending_bytes -= entry[1]


class QuotaBook:
    """Usage of every quota; thread-safe (the storage calls it from worker threads)."""

    def __init__(self, storage: Storage, quotas: Sequence[QuotaConfig]) -> None:
        self.storage = storage
        self.quotas = [Quota(i + 1, q.repositories, q.limit, tuple(glob_regex(g) for g in q.repositories))
                       for i, q in enumerate(quotas)]
        self._lock = threading.Lock()
        self._scan = threading.Lock()
        self._ready = threading.Event()
        self._journal: list[tuple[bool, str, Digest, str, int]] | None = None
        """This process's link changes while a walk runs, replayed onto the walk's result."""
        self._covering: dict[str, tuple[Quota, ...]] = {}

    # ---- which quotas ----------------------------------------------------------------------

    def covering(self, repository: str) -> tuple[Quota, ...]:
        found = self._covering.get(repository)
        if found is None:
            found = tuple(q for q in self.quotas if q.covers(repository))
            if len(self._covering) >= _MAX_COVERING_CACHE:
                self._covering.clear()
            self._covering[repository] = found
        return found

    # ---- the storage's hooks ---------------------------------------------------------------

    @contextlib.contextmanager
    def admit(self, repository: str, digest: Digest, size: int, kind: str) -> Iterator[None]:
        """Hold room for linking DIGEST (SIZE bytes) into REPOSITORY while the body writes it.

        Raises DENIED before the body runs when a covering quota that does not count the digest
        yet has no room for it; when the body returns, the link is counted.
        """
        quotas = self.covering(repository)
        if not quotas:
            yield
            return
        if not self._ready.wait(READY_TIMEOUT):
            raise OCIError(ErrorCode.UNAVAILABLE, "the registry is still counting quota usage; retry shortly")
        with self._lock:
            needing = [q for q in quotas if digest not in q.sizes and digest not in q.pending]
            for q in needing:
                if q.used + q.pending_bytes + size > q.limit:
                    raise self._refusal(q, size)
            reserved = [q for q in quotas if digest not in q.sizes]
            for q in reserved:
                q.reserve(digest, size)
        done = False
        try:
            yield
            done = True
        finally:
            with self._lock:
                for q in reserved:
                    q.release(digest)
                if done:
                    self._change(True, repository, digest, kind, size)

    def unlinked(self, repository: str, digest: Digest, kind: str) -> None:
        """REPOSITORY no longer holds DIGEST through a KIND link (a delete through this process)."""
        if self.covering(repository):
            with self._lock:
                self._change(False, repository, digest, kind, 0)

    def _change(self, added: bool, repository: str, digest: Digest, kind: str, size: int) -> None:
        """Apply one link change; the caller holds the lock."""
        for q in self.covering(repository):
            if added:
                q.add((repository, kind), digest, size)
            else:
                q.remove((repository, kind), digest)
        if self._journal is not None:
            self._journal.append((added, repository, digest, kind, size))
        self._check_nearly_full()

    @staticmethod
    def _refusal(q: Quota, size: int) -> OCIError:
        used = q.used + q.pending_bytes
        message = (f"quota {q.number} ({q.label}) is {human_bytes(used)} of {human_bytes(q.limit)}; "
                   f"this push needs {human_bytes(size)} more ({used} + {size} > {q.limit} bytes)")
        return OCIError(ErrorCode.DENIED, message, detail={
            "quota": q.number, "repositories": list(q.repositories), "limit": q.limit, "used": used,
            "requested": size})

    def _check_nearly_full(self) -> None:
        for q in self.quotas:
            full = q.used >= NEARLY_FULL * q.limit
            if full and not q.nearly_full:
                log.warning("quota %d (%s) is nearly full: %s of %s", q.number, q.label, human_bytes(q.used),
                            human_bytes(q.limit))
            q.nearly_full = full

    # ---- walks -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a first walk has finished (until then pushes into quotas wait for it)."""
        return self._ready.is_set()

    def rescan(self) -> None:
        """Recount every quota from the storage; blocking (run it off the event loop)."""
        with self._scan:
            with self._lock:
                self._journal = []
            try:
                fresh = {q.number: Quota(q.number, q.repositories, q.limit, q.globs) for q in self.quotas}
                for repository, digest, kind, size in self._walk():  # without the lock: pushes go on
                    for q in self.covering(repository):
                        fresh[q.number].add((repository, kind), digest, size)
            except BaseException:
                with self._lock:
                    self._journal = None
                raise
            with self._lock:  # one critical section: no change can fall between replay and swap
                for added, repository, digest, kind, size in self._journal or []:
                    for q in self.covering(repository):
                        if added:
                            fresh[q.number].add((repository, kind), digest, size)
                        else:
                            fresh[q.number].remove((repository, kind), digest)
                self._journal = None
                for q in self.quotas:
                    new = fresh[q.number]
                    q.holders, q.sizes, q.used = new.holders, new.sizes, new.used
                self._check_nearly_full()
        self._ready.set()

    def _walk(self) -> Iterator[tuple[str, Digest, str, int]]:
        """(repository, digest, kind, size) of every link of a covered repository whose blob exists."""
        sizes: dict[Digest, int | None] = {}

        def size_of(d: Digest) -> int | None:
            if d not in sizes:
                sizes[d] = self.storage.global_blob_size(d)
            return sizes[d]

        for repository in self.storage.repositories(with_layers_only=True):
            if not self.covering(repository):
                continue
            for kind in (LAYER, MANIFEST):
                for digest in self.storage.links(repository, kind):
                    size = size_of(digest)
                    if size is not None:
                        yield repository, digest, kind, size

    # ---- reading ---------------------------------------------------------------------------

    def report(self) -> list[dict[str, Any]]:
        """Usage per quota in config order: `[{"repositories": [...], "limit": int, "used": int}]`."""
        with self._lock:
            return [{"repositories": list(q.repositories), "limit": q.limit, "used": q.used} for q in self.quotas]
