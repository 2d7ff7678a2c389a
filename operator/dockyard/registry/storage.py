"""Filesystem storage of the embedded registry: content-addressed blobs plus per-repository links.

Layout under the root directory (every path component below comes from a validated
repository name, tag, digest or upload id, so no request can address a path outside it):

    blobs/<alg>/<hex[:2]>/<hex>                              blob and manifest bytes
    repositories/<name>/_layers/<alg>/<hex>                  the repository may serve this blob
    repositories/<name>/_manifests/revisions/<alg>/<hex>     manifest link; holds its media type
    repositories/<name>/_manifests/tags/<tag>                holds the tagged digest
    repositories/<name>/_referrers/<alg>/<subject hex>/<alg>-<hex>   descriptor of a referrer
    uploads/<id>/data, uploads/<id>/info                     upload sessions in progress
    tmp/                                                     temp files, renamed into place
    gc/intents/<id>.json, gc/intents/<id>.done               manifest pushes, for GC (see gc.py)
    gc/trash/...                                             what a GC pass set aside (see gc.py)
    gc/lock                                                  held by the GC pass running now

Every visible file is written to a temp file first, flushed to disk, and moved with
`os.replace`; the directory entry is flushed after the move. So a killed process, a failed
digest check or a power loss never leaves a partial blob, manifest or tag behind, and what a
201 acknowledged survives a power loss. The interface is synchronous and thread-safe; the
server calls it from a thread pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any, Protocol

from dockyard.oci import Digest, DigestError, ErrorCode, Hasher, OCIError
from dockyard.oci.names import valid_name, valid_tag

UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
READ_CHUNK = 4 * 1024 * 1024


LAYER = "layer"
MANIFEST = "manifest"
"""Kinds of link by which a repository holds a blob (for `WriteGuard`)."""


class WriteGuard(Protocol):
    """Told of every link a write adds or a delete removes; may refuse an addition (quotas.QuotaBook)."""

    def admit(self, repository: str, digest: Digest, size: int, kind: str) -> AbstractContextManager[None]: ...
    def unlinked(self, repository: str, digest: Digest, kind: str) -> None: ...


class Unguarded:
    """Admits everything."""

    def admit(self, repository: str, digest: Digest, size: int, kind: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def unlinked(self, repository: str, digest: Digest, kind: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class StoredManifest:
    digest: Digest
    media_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class UploadInfo:
    id: str
    name: str
    size: int
    started: float


class Storage(Protocol):
    """What the HTTP layer needs from a storage driver (filesystem now, object storage later)."""

    def blob_size(self, name: str, digest: Digest, *, touch: bool = False) -> int | None: ...
    def blob_path(self, digest: Digest) -> Path: ...
    def mount_blob(self, name: str, digest: Digest, source: str | None) -> bool: ...
    def delete_blob(self, name: str, digest: Digest) -> bool: ...
    def get_manifest(self, name: str, reference: str) -> StoredManifest | None: ...
    def put_manifest(self, name: str, tag: str | None, manifest: StoredManifest) -> None: ...
    def push_manifest(self, name: str, tags: list[str], manifest: StoredManifest, blobs: list[Digest],
                      children: list[Digest], subject: Digest | None = None,
                      descriptor: dict[str, Any] | None = None) -> list[tuple[str, Digest]]: ...
    def delete_manifest(self, name: str, digest: Digest) -> bool: ...
    def delete_tag(self, name: str, tag: str) -> bool: ...
    def tags(self, name: str) -> list[str] | None: ...
    def repositories(self) -> list[str]: ...


class FilesystemStorage:
    """Content-addressed storage on a local (or shared) filesystem."""

    def __init__(self, root: Path, manifest_cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.repos = self.root / "repositories"
        self.uploads = self.root / "uploads"
        self.tmp = self.root / "tmp"
        self.intents = self.root / "gc" / "intents"
        self.trash = self.root / "gc" / "trash"
        self.gc_lock = self.root / "gc" / "lock"
        for d in (self.blobs, self.repos, self.uploads, self.tmp, self.intents):
            d.mkdir(parents=True, exist_ok=True)
        self._cache: OrderedDict[Digest, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = manifest_cache_bytes
        self._cache_lock = Lock()
        self.guard: WriteGuard = Unguarded()
        """Admits (or refuses, with an OCIError) each new link before anything is written (quotas)."""

    # ---- paths -------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        return self.blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def _repo(self, name: str) -> Path:
        if not valid_name(name):  # defence in depth: the HTTP layer validates first
            raise OCIError(ErrorCode.NAME_INVALID, f"invalid repository name {name[:300]!r}")
        return self.repos / name

    def _layer_link(self, name: str, digest: Digest) -> Path:
        return self._repo(name) / "_layers" / digest.algorithm / digest.hex

    def revision_path(self, name: str, digest: Digest) -> Path:
        return self._repo(name) / "_manifests" / "revisions" / digest.algorithm / digest.hex

    def _tag(self, name: str, tag: str) -> Path:
        if not valid_tag(tag):
            raise OCIError(ErrorCode.MANIFEST_INVALID, f"invalid tag {tag[:200]!r}")
        return self._repo(name) / "_manifests" / "tags" / tag

    def referrers_dir(self, name: str, subject: Digest) -> Path:
        return self._repo(name) / "_referrers" / subject.algorithm / subject.hex

    # ---- small atomic file helpers -------------------------------------------------------

    def temp_path(self) -> Path:
        return self.tmp / uuid.uuid4().hex

    def _write_atomic(self, path: Path, data: bytes) -> None:
        tmp = self.temp_path()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._publish(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _publish(self, src: Path, dest: Path) -> None:
        """Move a flushed file into place and flush its directory entry (and those of new directories)."""
        created = self._make_parents(dest)
        os.replace(src, dest)
        self._flush_entries(dest, created)

    def _make_parents(self, path: Path) -> Path | None:
        """Create the missing directories above `path`; the highest one created, or None."""
        if path.parent.is_dir():  # the common case: one stat, on every commit
            return None
        top = None
        for parent in reversed(path.parents):
            if parent.is_relative_to(self.root) and not parent.is_dir():
                top = top or parent
        path.parent.mkdir(parents=True, exist_ok=True)
        return top

    def _flush_entries(self, path: Path, created: Path | None) -> None:
        """fsync the directory holding `path`, and every directory up to the one holding `created`."""
        stop = created.parent if created is not None else path.parent
        directory = path.parent
        while True:
            _fsync_dir(directory)
            if directory == stop or directory == self.root:
                return
            directory = directory.parent

    @staticmethod
    def _read_text(path: Path) -> str | None:
        try:
            with open(path) as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None

    @staticmethod
    def _touch(path: Path) -> None:
        """Mark a blob as recently used so online GC's grace period protects it."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)

    # ---- blobs ---------------------------------------------------------------------------

    def blob_size(self, name: str, digest: Digest, *, touch: bool = False) -> int | None:
        """Size of a blob the repository may serve (a layer or one of its manifests).

        With `touch` (a client's HEAD, which usually precedes a manifest naming the blob) the
        blob counts as just used, so GC's grace period gives the manifest time to arrive.
        """
        if not (self._layer_link(name, digest).exists() or self.revision_path(name, digest).exists()):
            return None
        path = self.blob_path(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        if touch:
            self._touch(path)
        return size

    def global_blob_size(self, digest: Digest) -> int | None:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def link_blob(self, name: str, digest: Digest) -> None:
        """Let the repository serve the blob; flushed, since a manifest acknowledged later relies on it."""
        link = self._layer_link(name, digest)
        created = self._make_parents(link)
        if link.exists():
            return
        link.touch()
        self._flush_entries(link, created)

    def mount_blob(self, name: str, digest: Digest, source: str | None) -> bool:
        """Link a blob that the source repository holds.

        Without a source nothing is mounted: finding a holder means walking every repository,
        so the HTTP layer answers with an upload session instead (the spec allows it).
        """
        if source is None or not valid_name(source) or self.blob_size(source, digest) is None:
            return False
        path = self.blob_path(digest)
        size = self.global_blob_size(digest)
        if size is None:
            return False
        with self.guard.admit(name, digest, size, LAYER):
            self.link_blob(name, digest)
        self._touch(path)
        return True

    def delete_blob(self, name: str, digest: Digest) -> bool:
        """Unlink a blob from one repository; GC reclaims the bytes when nothing uses them."""
        try:
            self._layer_link(name, digest).unlink()
        except FileNotFoundError:
            return False
        self.guard.unlinked(name, digest, LAYER)
        return True

    def store_blob_file(self, src: Path, digest: Digest) -> None:
        """Flush a verified file and move it into the content-addressed store (idempotent under races).

        The blob counts as new from now on (not from its last write, which may be long ago when
        an upload is closed by a PUT without a body), so GC's grace period starts here.
        """
        with open(src, "rb") as f:
            os.fsync(f.fileno())
        os.utime(src)
        self._publish(src, self.blob_path(digest))

    # ---- uploads -------------------------------------------------------------------------

    def _upload_dir(self, upload_id: str) -> Path:
        if not UPLOAD_ID_RE.fullmatch(upload_id):
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"unknown upload {upload_id[:100]!r}")
        return self.uploads / upload_id

    def create_upload(self, name: str) -> UploadInfo:
        """A new upload session; on failure (a full disk) nothing of it is left behind. Not flushed
        to disk: a 202 acknowledges no content, and a session that a power loss takes away (or
        leaves with an empty info file) is answered with BLOB_UPLOAD_UNKNOWN, on which clients
        start the upload again. What a commit publishes is flushed (`store_blob_file`). The info
        file is complete before anyone knows the id."""
        self._repo(name)
        upload_id = uuid.uuid4().hex
        d = self.uploads / upload_id
        d.mkdir(parents=True)
        started = time.time()
        try:
            (d / "data").touch()
            (d / "info").write_bytes(json.dumps({"name": name, "started": started}).encode())
        except BaseException:
            self.delete_upload(upload_id)
            raise
        return UploadInfo(upload_id, name, 0, started)

    def upload_info(self, name: str, upload_id: str) -> UploadInfo:
        d = self._upload_dir(upload_id)
        raw = self._read_text(d / "info")
        try:
            info = json.loads(raw) if raw is not None else None
            size = (d / "data").stat().st_size
        except (ValueError, FileNotFoundError):
            info = None
        if not isinstance(info, dict) or info.get("name") != name:
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} is not known for {name}")
        return UploadInfo(upload_id, name, size, float(info.get("started", 0)))

    def upload_data(self, upload_id: str) -> Path:
        return self._upload_dir(upload_id) / "data"

    def delete_upload(self, upload_id: str) -> None:
        d = self._upload_dir(upload_id)
        for child in ("info", "data"):
            with contextlib.suppress(FileNotFoundError):
                (d / child).unlink()
        with contextlib.suppress(OSError):
            d.rmdir()

    def hash_file(self, path: Path, algorithm: str, limit: int | None = None) -> Hasher:
        """Hash a file from the start (resuming an upload whose hash state is not in memory)."""
        h = Hasher(algorithm)
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        with open(path, "rb", buffering=0) as f:
            while limit is None or h.size < limit:
                want = READ_CHUNK if limit is None else min(READ_CHUNK, limit - h.size)
                n = f.readinto(view[:want])
                if not n:
                    break
                h.update(view[:n])
        return h

    def commit_upload(self, name: str, upload_id: str, digest: Digest, hasher: Hasher | None) -> int:
        """Verify the upload against `digest` and move it into place; returns the blob size.

        `hasher` is the incremental hash of the data file when the server has it in memory;
        without it (another replica received the data, the process restarted, a different
        algorithm was requested) the file is hashed once here.
        """
        try:
            return self._commit_upload(name, upload_id, digest, hasher)
        except FileNotFoundError:  # completed or cancelled meanwhile (another request or replica)
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} is no longer in progress") from None

    def _commit_upload(self, name: str, upload_id: str, digest: Digest, hasher: Hasher | None) -> int:
        info = self.upload_info(name, upload_id)
        data = self.upload_data(upload_id)
        with contextlib.ExitStack() as admitted:
            try:  # before hashing and publishing: a refused upload is removed whole (quotas)
                admitted.enter_context(self.guard.admit(name, digest, info.size, LAYER))
            except OCIError:
                self.delete_upload(upload_id)
                raise
            if hasher is None or hasher.algorithm != digest.algorithm or hasher.size != info.size:
                hasher = self.hash_file(data, digest.algorithm)
            if hasher.size != info.size:
                raise OCIError(ErrorCode.BLOB_UPLOAD_INVALID, "upload changed while it was being verified")
            if not hasher.verify(digest):
                self.delete_upload(upload_id)
                raise OCIError(ErrorCode.DIGEST_INVALID,
                               f"the uploaded content has digest {hasher.digest()}, not {digest}",
                               detail={"digest": str(digest)})
            self.store_blob_file(data, digest)
            self.link_blob(name, digest)
        self.delete_upload(upload_id)
        return info.size

    # ---- manifests -----------------------------------------------------------------------

    def _cached_body(self, digest: Digest) -> bytes | None:
        with self._cache_lock:
            body = self._cache.get(digest)
            if body is not None:
                self._cache.move_to_end(digest)
            return body

    def _cache_put(self, digest: Digest, body: bytes) -> None:
        with self._cache_lock:
            if digest in self._cache or len(body) > self._cache_limit // 4:
                return
            self._cache[digest] = body
            self._cache_bytes += len(body)
            while self._cache_bytes > self._cache_limit:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= len(old)

    def resolve(self, name: str, reference: str) -> Digest | None:
        if ":" in reference:
            try:
                return Digest.parse(reference)
            except DigestError as e:
                raise OCIError(ErrorCode.DIGEST_INVALID, str(e)) from None
        value = self._read_text(self._tag(name, reference))
        if value is None:
            return None
        try:
            return Digest.parse(value.strip())
        except DigestError:
            return None

    def get_manifest(self, name: str, reference: str) -> StoredManifest | None:
        digest = self.resolve(name, reference)
        if digest is None:
            return None
        media_type = self._read_text(self.revision_path(name, digest))
        if media_type is None:
            return None
        body = self._cached_body(digest)
        if body is None:
            try:
                with open(self.blob_path(digest), "rb") as f:
                    body = f.read()
            except FileNotFoundError:
                return None
            self._cache_put(digest, body)
        return StoredManifest(digest, media_type, body)

    def has_manifest(self, name: str, digest: Digest) -> bool:
        return self.revision_path(name, digest).exists() and self.blob_path(digest).exists()

    def has_layer(self, name: str, digest: Digest) -> bool:
        """True when the repository holds the blob; refreshes its mtime for GC's grace period."""
        path = self.blob_path(digest)
        if not ((self._layer_link(name, digest).exists() or self.revision_path(name, digest).exists())
                and path.exists()):
            return False
        self._touch(path)
        return True

    def put_manifest(self, name: str, tag: str | None, manifest: StoredManifest,
                     subject: Digest | None = None, descriptor: dict[str, Any] | None = None) -> None:
        path = self.blob_path(manifest.digest)
        if path.exists():
            self._touch(path)
        else:
            self._write_atomic(path, manifest.body)
        self._write_atomic(self.revision_path(name, manifest.digest), manifest.media_type.encode())
        if subject is not None and descriptor is not None:
            entry = self.referrers_dir(name, subject) / f"{manifest.digest.algorithm}-{manifest.digest.hex}"
            self._write_atomic(entry, json.dumps(descriptor, separators=(",", ":")).encode())
        if tag is not None:
            self._write_atomic(self._tag(name, tag), str(manifest.digest).encode())

    def push_manifest(self, name: str, tags: list[str], manifest: StoredManifest, blobs: list[Digest],
                      children: list[Digest], subject: Digest | None = None,
                      descriptor: dict[str, Any] | None = None) -> list[tuple[str, Digest]]:
        """Store a pushed manifest if everything it references is here; else return what is missing.

        The push first records an intent naming the manifest and its references, then checks
        them, then writes; a GC pass re-reads intents after it has set garbage aside and puts
        back anything an intent names (gc.py has the whole argument). With no pass running the
        intent is removed when the push is done; during a pass it stays (marked done) until
        that pass ends.
        """
        intent = self._begin_intent(name, [manifest.digest, *blobs, *children])
        done = False
        try:
            missing = [("blob", d) for d in dict.fromkeys(blobs) if not self.has_layer(name, d)]
            missing += [("manifest", d) for d in dict.fromkeys(children) if not self.has_layer(name, d)]
            if missing:
                return missing
            with self.guard.admit(name, manifest.digest, len(manifest.body), MANIFEST):
                self.put_manifest(name, tags[0] if tags else None, manifest, subject, descriptor)
            for tag in tags[1:]:
                self.put_manifest(name, tag, manifest)
            done = True
            return []
        finally:
            self._end_intent(intent, done)

    def _begin_intent(self, name: str, digests: list[Digest]) -> Path:
        path = self.intents / f"{uuid.uuid4().hex}.json"
        doc = {"name": name, "digests": [str(d) for d in dict.fromkeys(digests)]}
        tmp = self.temp_path()
        try:  # visible whole or not at all; not flushed: a power loss ends the push anyway
            tmp.write_bytes(json.dumps(doc, separators=(",", ":")).encode())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _end_intent(self, path: Path, done: bool) -> None:
        with contextlib.suppress(FileNotFoundError):
            if done and self.gc_lock.exists():
                os.replace(path, path.with_suffix(".done"))
            else:
                path.unlink()

    def intents_now(self) -> list[tuple[Path, str, list[Digest]]]:
        """Every recorded intent (in progress or done): (file, repository, digests)."""
        out: list[tuple[Path, str, list[Digest]]] = []
        for entry in sorted(os.listdir(self.intents)) if self.intents.is_dir() else []:
            path = self.intents / entry
            # A push that ends while this lists renames its intent to .done (a pass holds the
            # lock whenever this is read for GC), so read it under that name.
            for candidate in (path, path.with_suffix(".done")):
                try:
                    doc = json.loads(candidate.read_bytes())
                    out.append((candidate, str(doc["name"]), [Digest.parse(d) for d in doc["digests"]]))
                    break
                except FileNotFoundError:
                    continue  # done meanwhile, or refused and removed: it made no links
                except (ValueError, KeyError, TypeError, DigestError):
                    out.append((candidate, "", []))
                    break
        return out

    def delete_manifest(self, name: str, digest: Digest) -> bool:
        """Delete a manifest revision, every tag pointing to it and its referrer entry."""
        manifest = self.get_manifest(name, str(digest))
        try:
            self.revision_path(name, digest).unlink()
        except FileNotFoundError:
            return False
        self.guard.unlinked(name, digest, MANIFEST)
        for tag in self.tags(name) or []:
            if self.resolve(name, tag) == digest:
                with contextlib.suppress(FileNotFoundError):
                    self._tag(name, tag).unlink()
        if manifest is not None:
            subject = subject_of(manifest.body)
            if subject is not None:
                with contextlib.suppress(FileNotFoundError):
                    (self.referrers_dir(name, subject) / f"{digest.algorithm}-{digest.hex}").unlink()
        return True

    def delete_tag(self, name: str, tag: str) -> bool:
        try:
            self._tag(name, tag).unlink()
            return True
        except FileNotFoundError:
            return False

    def tags(self, name: str) -> list[str] | None:
        """Sorted tags; None when the repository does not exist."""
        repo = self._repo(name)
        try:
            return sorted(os.listdir(repo / "_manifests" / "tags"))
        except FileNotFoundError:
            return [] if (repo / "_manifests").is_dir() else None

    def repository_exists(self, name: str) -> bool:
        return (self._repo(name) / "_manifests").is_dir() or (self._repo(name) / "_layers").is_dir()

    def referrers(self, name: str, subject: Digest) -> list[dict[str, Any]]:
        d = self.referrers_dir(name, subject)
        try:
            entries = sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        for entry in entries:
            raw = self._read_text(d / entry)
            alg, _, hexpart = entry.partition("-")
            try:
                ref = Digest.parse(f"{alg}:{hexpart}")
                descriptor = json.loads(raw) if raw is not None else None
            except (DigestError, ValueError):
                continue
            if isinstance(descriptor, dict) and self.has_manifest(name, ref):
                out.append(descriptor)
        return out

    def repositories(self) -> list[str]:
        names: list[str] = []
        for dirpath, dirnames, _ in os.walk(self.repos):
            if "_manifests" in dirnames:
                names.append(os.path.relpath(dirpath, self.repos).replace(os.sep, "/"))
            dirnames[:] = [d for d in dirnames if not d.startswith("_")]
        return sorted(names)

    def iter_repository_manifests(self, name: str) -> Iterator[tuple[Digest, Path]]:
        base = self._repo(name) / "_manifests" / "revisions"
        for alg in sorted(os.listdir(base)) if base.is_dir() else []:
            for hexpart in os.listdir(base / alg):
                try:
                    yield Digest.parse(f"{alg}:{hexpart}"), base / alg / hexpart
                except DigestError:
                    continue

    def writable(self) -> bool:
        """Whether a temp file can be created, written and removed under the root; never leaves it behind."""
        probe = self.tmp / f"ready-{uuid.uuid4().hex}"
        try:
            with open(probe, "wb") as f:
                f.write(b"ok")
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def subject_of(body: bytes) -> Digest | None:
    """The `subject` digest of a stored manifest, if it has a valid one."""
    try:
        doc = json.loads(body)
        return Digest.parse(doc["subject"]["digest"])
    except (ValueError, KeyError, TypeError, DigestError):
        return None
