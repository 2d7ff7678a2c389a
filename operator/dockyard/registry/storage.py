"""The registry's OCI layout: content-addressed blobs plus per-repository links, on any driver.

Keys (every component comes from a validated repository name, tag, digest or upload id, so no
request can address anything outside the layout; `drivers.py` stores them):

    blobs/<alg>/<hex[:2]>/<hex>                              blob and manifest bytes
    repositories/<name>/_layers/<alg>/<hex>                  the repository may serve this blob
    repositories/<name>/_manifests/revisions/<alg>/<hex>     manifest link; holds its media type
    repositories/<name>/_manifests/tags/<tag>                holds the tagged digest
    repositories/<name>/_referrers/<alg>/<subject hex>/<alg>-<hex>   descriptor of a referrer
    uploads/<id>/info (and the driver's data)                upload sessions in progress
    gc/intents/<id>.json, gc/intents/<id>.done               manifest pushes, for GC (see gc.py)
    gc/trash/...                                             what a GC pass set aside (see gc.py)
    gc/lock                                                  held by the GC pass running now

Every object is written whole (the driver's `write` is atomic and durable), so a killed
process, a failed digest check or a power loss never leaves a partial blob, manifest or tag
behind, and what a 201 acknowledged survives. The interface is synchronous and thread-safe;
the server calls it from a thread pool. `FilesystemStorage(root)` is this layout on the
filesystem driver; `s3.S3Driver` puts it in a bucket.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from typing import Any, Protocol

from dockyard.oci import Digest, DigestError, ErrorCode, Hasher, OCIError
from dockyard.oci.names import valid_name, valid_tag
from dockyard.registry.drivers import Driver, FilesystemDriver

UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
BLOBS = "blobs"
REPOSITORIES = "repositories"
INTENTS = "gc/intents"
TRASH = "gc/trash"
GC_LOCK = "gc/lock"


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


MEDIA_TYPE_NOTE = "media-type"


def _notable(value: str) -> bool:
    """Whether a value can travel as a note (S3 user metadata: printable ASCII, small)."""
    return value.isascii() and value.isprintable() and len(value) <= 255


def blob_key(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


class Storage:
    """The OCI layout over a driver (see the module docstring)."""

    def __init__(self, driver: Driver, manifest_cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.driver = driver
        self._cache: OrderedDict[Digest, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = manifest_cache_bytes
        self._cache_lock = Lock()
        self.guard: WriteGuard = Unguarded()
        """Admits (or refuses, with an OCIError) each new link before anything is written (quotas)."""
        self._linker = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dockyard-link")
        """Links a committed blob to its repository while the commit publishes the blob."""

    # ---- keys ------------------------------------------------------------------------------

    @staticmethod
    def repo_key(name: str) -> str:
        if not valid_name(name):  # defence in depth: the HTTP layer validates first
            raise OCIError(ErrorCode.NAME_INVALID, f"invalid repository name {name[:300]!r}")
        return f"{REPOSITORIES}/{name}"

    def layer_key(self, name: str, digest: Digest) -> str:
        return f"{self.repo_key(name)}/_layers/{digest.algorithm}/{digest.hex}"

    def revision_key(self, name: str, digest: Digest) -> str:
        return f"{self.repo_key(name)}/_manifests/revisions/{digest.algorithm}/{digest.hex}"

    def tag_key(self, name: str, tag: str) -> str:
        if not valid_tag(tag):
            raise OCIError(ErrorCode.MANIFEST_INVALID, f"invalid tag {tag[:200]!r}")
        return f"{self.repo_key(name)}/_manifests/tags/{tag}"

    def referrers_key(self, name: str, subject: Digest) -> str:
        return f"{self.repo_key(name)}/_referrers/{subject.algorithm}/{subject.hex}"

    def referrer_key(self, name: str, subject: Digest, digest: Digest) -> str:
        return f"{self.referrers_key(name, subject)}/{digest.algorithm}-{digest.hex}"

    @staticmethod
    def _upload_key(upload_id: str) -> str:
        if not UPLOAD_ID_RE.fullmatch(upload_id):
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"unknown upload {upload_id[:100]!r}")
        return f"uploads/{upload_id}"

    def _exists(self, key: str) -> bool:
        return self.driver.stat(key) is not None

    def _read_text(self, key: str) -> str | None:
        data = self.driver.read(key)
        return None if data is None else data.decode(errors="replace")

    # ---- blobs ---------------------------------------------------------------------------

    def _linked(self, name: str, digest: Digest) -> bool:
        return self._exists(self.layer_key(name, digest)) or self._exists(self.revision_key(name, digest))

    def blob_size(self, name: str, digest: Digest, *, touch: bool = False) -> int | None:
        """Size of a blob the repository may serve (a layer or one of its manifests).

        With `touch` (a client's HEAD, which usually precedes a manifest naming the blob) the
        blob counts as just used, so GC's grace period gives the manifest time to arrive.
        """
        if not self._linked(name, digest):
            return None
        st = self.driver.stat(blob_key(digest))
        if st is None:
            return None
        if touch:
            self.driver.touch(blob_key(digest))
        return st.size

    def global_blob_size(self, digest: Digest) -> int | None:
        st = self.driver.stat(blob_key(digest))
        return None if st is None else st.size

    def link_blob(self, name: str, digest: Digest) -> None:
        """Let the repository serve the blob (durably: a manifest acknowledged later relies on it)."""
        key = self.layer_key(name, digest)
        if isinstance(self.driver, FilesystemDriver):
            self.driver.make_entry(key)  # an empty file: no temp file and rename
        elif not self._exists(key):
            self.driver.write(key, b"")

    def mount_blob(self, name: str, digest: Digest, source: str | None) -> bool:
        """Link a blob that the source repository holds.

        Without a source nothing is mounted: finding a holder means walking every repository,
        so the HTTP layer answers with an upload session instead (the spec allows it).
        """
        if source is None or not valid_name(source) or self.blob_size(source, digest) is None:
            return False
        size = self.global_blob_size(digest)
        if size is None:
            return False
        with self.guard.admit(name, digest, size, LAYER):
            self.link_blob(name, digest)
        self.driver.touch(blob_key(digest))
        return True

    def delete_blob(self, name: str, digest: Digest) -> bool:
        """Unlink a blob from one repository; GC reclaims the bytes when nothing uses them."""
        if not self.driver.delete(self.layer_key(name, digest)):
            return False
        self.guard.unlinked(name, digest, LAYER)
        return True

    # ---- uploads -------------------------------------------------------------------------

    def create_upload(self, name: str) -> UploadInfo:
        """A new upload session; on failure (a full disk) nothing of it is left behind. Not flushed
        to disk: a 202 acknowledges no content, and a session that a power loss takes away (or
        leaves with an empty info file) is answered with BLOB_UPLOAD_UNKNOWN, on which clients
        start the upload again. What a commit publishes is flushed. The info is complete before
        anyone knows the id."""
        self.repo_key(name)
        upload_id = uuid.uuid4().hex
        started = time.time()
        try:
            self.driver.upload_start(upload_id, json.dumps({"name": name, "started": started}).encode())
        except BaseException:
            self.delete_upload(upload_id)
            raise
        return UploadInfo(upload_id, name, 0, started)

    def upload_info(self, name: str, upload_id: str) -> UploadInfo:
        raw = self.driver.read(f"{self._upload_key(upload_id)}/info")
        try:
            info = json.loads(raw) if raw is not None else None
        except ValueError:
            info = None
        size = self.driver.upload_size(upload_id) if isinstance(info, dict) else None
        if not isinstance(info, dict) or info.get("name") != name or size is None:
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} is not known for {name}")
        return UploadInfo(upload_id, name, size, float(info.get("started", 0)))

    def delete_upload(self, upload_id: str) -> None:
        self._upload_key(upload_id)
        self.driver.upload_delete(upload_id)

    def hash_upload(self, upload_id: str, algorithm: str) -> Hasher:
        """Hash an upload's data from the start (its hash state is not in this process's memory)."""
        h = Hasher(algorithm)
        for chunk in self.driver.upload_chunks(upload_id):
            h.update(chunk)
        return h

    def commit_upload(self, name: str, upload_id: str, digest: Digest, hasher: Hasher | None,
                      info: UploadInfo | None = None) -> UploadInfo:
        """Verify the upload against `digest` and move it into place; returns the session as committed.

        `hasher` is the incremental hash of the data when this process received all of it;
        without it (another replica received some, the process restarted, a different
        algorithm was requested) the data is hashed once here. INFO is the session as the
        caller, holding the upload's lock, just found or left it (None: read here). A committed session is left
        for `delete_upload` (the HTTP layer removes it after answering); a refused one is removed.
        """
        try:
            return self._commit_upload(name, upload_id, digest, hasher, info)
        except FileNotFoundError:  # completed or cancelled meanwhile (another request or replica)
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} is no longer in progress") from None

    def _commit_upload(self, name: str, upload_id: str, digest: Digest, hasher: Hasher | None,
                       info: UploadInfo | None) -> UploadInfo:
        info = info or self.upload_info(name, upload_id)
        with contextlib.ExitStack() as admitted:
            try:  # before hashing and publishing: a refused upload is removed whole (quotas)
                admitted.enter_context(self.guard.admit(name, digest, info.size, LAYER))
            except OCIError:
                self.delete_upload(upload_id)
                raise
            if hasher is None or hasher.algorithm != digest.algorithm or hasher.size != info.size:
                hasher = self.hash_upload(upload_id, digest.algorithm)
            if hasher.size != info.size:
                raise OCIError(ErrorCode.BLOB_UPLOAD_INVALID, "upload changed while it was being verified")
            if not hasher.verify(digest):
                self.delete_upload(upload_id)
                raise OCIError(ErrorCode.DIGEST_INVALID,
                               f"the uploaded content has digest {hasher.digest()}, not {digest}",
                               detail={"digest": str(digest)})
            self._publish_linked(name, upload_id, digest, info.size)
        return info

    def _publish_linked(self, name: str, upload_id: str, digest: Digest, size: int) -> None:
        """Publish the upload as the blob and link it to the repository, both at once: the link
        needs no order with the blob, since a link whose blob is missing (a crash in between)
        reads as an unknown blob everywhere, and a manifest's check looks at the blob itself.
        So the flushes of the two overlap."""
        linking = self._linker.submit(self.link_blob, name, digest)
        try:
            self.driver.upload_publish(upload_id, blob_key(digest), size)
        except BaseException:
            with contextlib.suppress(Exception):
                linking.result()
            raise
        linking.result()

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
        value = self._read_text(self.tag_key(name, reference))
        if value is None:
            return None
        try:
            return Digest.parse(value.strip())
        except DigestError:
            return None

    def manifest_body(self, digest: Digest) -> bytes | None:
        body = self._cached_body(digest)
        if body is None:
            body = self.driver.read(blob_key(digest))
            if body is None:
                return None
            self._cache_put(digest, body)
        return body

    def get_manifest(self, name: str, reference: str) -> StoredManifest | None:
        """By digest, or by tag. A tag written with a note of its manifest's media type (object
        storage keeps notes) spares the read of the revision link: one request for a pull's
        first step instead of two. Tags without the note (older writers, files) read it."""
        media_type = None
        if ":" in reference:
            digest = self.resolve(name, reference)
        else:
            got = self.driver.read_noted(self.tag_key(name, reference))
            if got is None:
                return None
            try:
                digest = Digest.parse(got[0].decode(errors="replace").strip())
            except DigestError:
                return None
            media_type = got[1].get(MEDIA_TYPE_NOTE)
        if digest is None:
            return None
        if media_type is None:
            media_type = self._read_text(self.revision_key(name, digest))
        if media_type is None:
            return None
        body = self.manifest_body(digest)
        return None if body is None else StoredManifest(digest, media_type, body)

    def has_manifest(self, name: str, digest: Digest) -> bool:
        return self._exists(self.revision_key(name, digest)) and self._exists(blob_key(digest))

    def has_layer(self, name: str, digest: Digest) -> bool:
        """True when the repository holds the blob; marks it used for GC's grace period."""
        if not (self._linked(name, digest) and self._exists(blob_key(digest))):
            return False
        self.driver.touch(blob_key(digest))
        return True

    def put_manifest(self, name: str, tag: str | None, manifest: StoredManifest,
                     subject: Digest | None = None, descriptor: dict[str, Any] | None = None) -> None:
        key = blob_key(manifest.digest)
        if self._exists(key):
            self.driver.touch(key)
        else:
            self.driver.write(key, manifest.body)
        self.driver.write(self.revision_key(name, manifest.digest), manifest.media_type.encode())
        if subject is not None and descriptor is not None:
            self.driver.write(self.referrer_key(name, subject, manifest.digest),
                              json.dumps(descriptor, separators=(",", ":")).encode())
        if tag is not None:
            notes = {MEDIA_TYPE_NOTE: manifest.media_type} if _notable(manifest.media_type) else None
            self.driver.write(self.tag_key(name, tag), str(manifest.digest).encode(), notes=notes)

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

    def _begin_intent(self, name: str, digests: list[Digest]) -> str:
        key = f"{INTENTS}/{uuid.uuid4().hex}.json"
        doc = {"name": name, "digests": [str(d) for d in dict.fromkeys(digests)]}
        # Visible whole or not at all; not flushed: a power loss ends the push anyway.
        self.driver.write(key, json.dumps(doc, separators=(",", ":")).encode(), durable=False)
        return key

    def _end_intent(self, key: str, done: bool) -> None:
        if done and self._exists(GC_LOCK):
            self.driver.move(key, key.removesuffix(".json") + ".done")
        else:
            self.driver.delete(key)

    def intents_now(self) -> list[tuple[str, str, list[Digest]]]:
        """Every recorded intent (in progress or done): (key, repository, digests)."""
        out: list[tuple[str, str, list[Digest]]] = []
        for entry in self.driver.list(INTENTS):
            key = f"{INTENTS}/{entry}"
            # A push that ends while this lists renames its intent to .done (a pass holds the
            # lock whenever this is read for GC), so read it under that name.
            for candidate in (key, key.removesuffix(".json") + ".done"):
                raw = self.driver.read(candidate)
                if raw is None:
                    continue  # done meanwhile, or refused and removed: it made no links
                try:
                    doc = json.loads(raw)
                    out.append((candidate, str(doc["name"]), [Digest.parse(d) for d in doc["digests"]]))
                except (ValueError, KeyError, TypeError, DigestError):
                    out.append((candidate, "", []))
                break
        return out

    def delete_manifest(self, name: str, digest: Digest) -> bool:
        """Delete a manifest revision, every tag pointing to it and its referrer entry."""
        manifest = self.get_manifest(name, str(digest))
        if not self.driver.delete(self.revision_key(name, digest)):
            return False
        self.guard.unlinked(name, digest, MANIFEST)
        for tag in self.tags(name) or []:
            if self.resolve(name, tag) == digest:
                self.driver.delete(self.tag_key(name, tag))
        if manifest is not None:
            subject = subject_of(manifest.body)
            if subject is not None:
                self.driver.delete(self.referrer_key(name, subject, digest))
        return True

    def delete_tag(self, name: str, tag: str) -> bool:
        return self.driver.delete(self.tag_key(name, tag))

    def tags(self, name: str) -> list[str] | None:
        """Sorted tags; None when the repository does not exist."""
        repo = self.repo_key(name)
        tags = self.driver.list(f"{repo}/_manifests/tags")
        if tags:
            return tags
        return [] if self.driver.list(f"{repo}/_manifests") else None

    def repository_exists(self, name: str) -> bool:
        return bool(set(self.driver.list(self.repo_key(name))) & {"_manifests", "_layers"})

    def referrers(self, name: str, subject: Digest) -> list[dict[str, Any]]:
        base = self.referrers_key(name, subject)
        out: list[dict[str, Any]] = []
        for entry in self.driver.list(base):
            raw = self.driver.read(f"{base}/{entry}")
            alg, _, hexpart = entry.partition("-")
            try:
                ref = Digest.parse(f"{alg}:{hexpart}")
                descriptor = json.loads(raw) if raw is not None else None
            except (DigestError, ValueError):
                continue
            if isinstance(descriptor, dict) and self.has_manifest(name, ref):
                out.append(descriptor)
        return out

    def repositories(self, *, with_layers_only: bool = False) -> list[str]:
        """Every repository with manifests (and, WITH_LAYERS_ONLY, those holding only layers); a
        walk of the names' levels, not of the links below them."""
        names: list[str] = []
        todo = [REPOSITORIES]
        marks = {"_manifests", "_layers"} if with_layers_only else {"_manifests"}
        while todo:
            prefix = todo.pop()
            children = self.driver.list(prefix)
            if marks & set(children):
                names.append(prefix.removeprefix(REPOSITORIES + "/"))
            todo.extend(f"{prefix}/{c}" for c in children if not c.startswith("_"))
        return sorted(names)

    def links(self, name: str, kind: str) -> Iterator[Digest]:
        """Digests the repository links as layers (LAYER) or manifest revisions (MANIFEST)."""
        base = self.repo_key(name) + ("/_layers" if kind == LAYER else "/_manifests/revisions")
        for alg in self.driver.list(base):
            for hexpart in self.driver.list(f"{base}/{alg}"):
                try:
                    yield Digest.parse(f"{alg}:{hexpart}")
                except DigestError:
                    continue

    def writable(self) -> bool:
        """Whether the storage takes a write now; never leaves anything behind."""
        return self.driver.writable()


class FilesystemStorage(Storage):
    """The layout on a local (or shared) filesystem under `root`."""

    driver: FilesystemDriver

    def __init__(self, root: Path, manifest_cache_bytes: int = 64 * 1024 * 1024) -> None:
        super().__init__(FilesystemDriver(root), manifest_cache_bytes)
        self.root = self.driver.root

    def blob_path(self, digest: Digest) -> Path:
        return self.root / blob_key(digest)

    def revision_path(self, name: str, digest: Digest) -> Path:
        return self.root / self.revision_key(name, digest)

    def upload_data(self, upload_id: str) -> Path:
        return self.root / self._upload_key(upload_id) / "data"


def subject_of(body: bytes) -> Digest | None:
    """The `subject` digest of a stored manifest, if it has a valid one."""
    try:
        doc = json.loads(body)
        return Digest.parse(doc["subject"]["digest"])
    except (ValueError, KeyError, TypeError, DigestError):
        return None
