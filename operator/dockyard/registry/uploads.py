"""Receiving blob uploads: stream request bodies to storage while hashing them.

The event loop reads the socket; a worker thread writes and hashes ~1 MiB batches (hashlib
releases the GIL for large buffers), so reading, hashing and writing overlap and memory stays
bounded no matter how large the blob is. The incremental sha256 state of each upload is
kept in memory keyed by upload id and checked against the upload's size. After a restart,
or when another replica appended to the upload (shared storage, object storage behind a
Service without session affinity), hashlib state cannot be restored, so this process stops
hashing that upload and the commit hashes the stored data once, whichever replica it lands on.
A chunk that does not arrive completely is cut away again (the driver's writer aborts), so an
upload's size always equals the bytes the client got a 2xx for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import NamedTuple, TypeVar

from aiohttp import StreamReader

from dockyard.oci import Digest, ErrorCode, Hasher, OCIError
from dockyard.registry.drivers import UploadWriter
from dockyard.registry.storage import Storage, UploadInfo

log = logging.getLogger("dockyard.registry")
T = TypeVar("T")
BATCH_BYTES = 1024 * 1024
BATCH_CHUNKS = 256
MAX_TRACKED = 4096  # upload sessions whose hash state and lock are kept in memory


class Opened(NamedTuple):
    """A session as a request found it, a writer appending to it, and its hash state if current."""

    info: UploadInfo
    writer: UploadWriter
    hasher: Hasher | None


class RangeMismatch(Exception):
    """A chunk that does not continue the upload where it stands (HTTP 416)."""

    def __init__(self, info: UploadInfo) -> None:
        super().__init__(f"upload is at offset {info.size}")
        self.info = info


def _write_batch(writer: UploadWriter, hasher: Hasher | None, chunks: list[bytes], side: Executor) -> None:
    """Write CHUNKS and hash them, on two cores: the write (the copy into the page cache, or a
    part's upload) runs in SIDE while this thread hashes (hashlib and writes release the GIL)."""
    if hasher is None:
        writer.write(chunks)
        return
    writing = side.submit(writer.write, chunks)
    try:
        for chunk in chunks:
            hasher.update(chunk)
    finally:
        writing.result()


def _finish(writer: UploadWriter, hasher: Hasher | None, chunks: list[bytes], side: Executor) -> None:
    """Write the last batch and close the writer; if the write fails, abort it instead."""
    try:
        if chunks:
            _write_batch(writer, hasher, chunks, side)
    except BaseException:
        writer.abort()
        raise
    writer.close()


class Uploads:
    """Upload sessions: append chunks, report status, verify and commit, cancel."""

    def __init__(self, storage: Storage, executor: Executor,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.storage = storage
        self.executor = executor
        self._writers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dockyard-write")
        """Writes a batch while the worker that received it hashes it (never waits on anything)."""
        self.on_bytes = on_bytes or (lambda n: None)
        self._hashers: dict[str, Hasher] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._committed: dict[str, None] = {}  # recently committed sessions, oldest first

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _lock(self, upload_id: str) -> asyncio.Lock:
        lock = self._locks.get(upload_id)
        if lock is None:
            if len(self._locks) >= MAX_TRACKED:  # abandoned sessions: forget idle ones
                for key in [k for k, v in self._locks.items() if not v.locked()]:
                    self._forget(key)
            lock = self._locks[upload_id] = asyncio.Lock()
        return lock

    def _remember(self, upload_id: str, hasher: Hasher) -> None:
        """Keep hash state for the next chunk; dropping it only costs a re-hash."""
        if len(self._hashers) >= MAX_TRACKED:
            self._hashers.pop(next(iter(self._hashers)))
        self._hashers[upload_id] = hasher

    async def create(self, name: str) -> UploadInfo:
        info = await self._run(self.storage.create_upload, name)
        self._remember(info.id, Hasher("sha256"))  # the first chunk needs no re-hash of the empty file
        return info

    def _in_progress(self, upload_id: str) -> None:
        if upload_id in self._committed:
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} is no longer in progress")

    async def status(self, name: str, upload_id: str) -> UploadInfo:
        self._in_progress(upload_id)
        return await self._run(self.storage.upload_info, name, upload_id)

    async def cancel(self, name: str, upload_id: str) -> None:
        async with self._lock(upload_id):
            self._in_progress(upload_id)
            await self._run(self.storage.upload_info, name, upload_id)
            await self._run(self.storage.delete_upload, upload_id)
            self._forget(upload_id)

    def _forget(self, upload_id: str) -> None:
        self._hashers.pop(upload_id, None)
        self._locks.pop(upload_id, None)

    async def append(self, name: str, upload_id: str, body: StreamReader,
                     start: int | None = None, length: int | None = None) -> UploadInfo:
        """Append a request body; `start` is the Content-Range start the client claims."""
        async with self._lock(upload_id):
            self._in_progress(upload_id)
            return await self._append_locked(name, upload_id, body, start, length)

    async def _append_locked(self, name: str, upload_id: str, body: StreamReader,
                             start: int | None, length: int | None) -> UploadInfo:
        hasher = self._hashers.pop(upload_id, None)
        before = hasher.copy() if hasher is not None else None
        opening = asyncio.get_running_loop().run_in_executor(self.executor, self._open, name, upload_id, start,
                                                             hasher)
        try:
            info, received, hasher = await self._receive(body, opening, length)
        except BaseException:
            if before is not None:
                self._remember(upload_id, before)
            raise
        if hasher is not None:
            self._remember(upload_id, hasher)
        return UploadInfo(info.id, info.name, info.size + received, info.started)

    def _open(self, name: str, upload_id: str, start: int | None, hasher: Hasher | None) -> Opened:
        """The session, checked against the Content-Range start; a writer appending to it; HASHER
        if it has hashed exactly the session's bytes so far (else None: another process appended,
        and the commit hashes the stored data)."""
        info = self.storage.upload_info(name, upload_id)
        if start is not None and start != info.size:
            raise RangeMismatch(info)
        try:
            writer = self.storage.driver.upload_writer(upload_id, info.size)
        except FileNotFoundError:  # completed or cancelled meanwhile (another replica)
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} is no longer in progress") from None
        return Opened(info, writer, hasher if hasher is not None and hasher.size == info.size else None)

    async def _receive(self, body: StreamReader, opening: asyncio.Future[Opened],
                       length: int | None) -> tuple[UploadInfo, int, Hasher | None]:
        """Write the body to the session OPENING opens, and close its writer; on any failure the
        writer aborts instead. The body starts to arrive while a worker opens the session.

        Chunks are taken as the parser made them (`readchunk`, not `readany`, which joins what
        is buffered into one more copy). The last batch and the close share one worker call.
        """
        loop = asyncio.get_running_loop()
        opened: Opened | None = None
        pending: asyncio.Future[None] | None = None
        finish: asyncio.Future[None] | None = None
        batch: list[bytes] = []
        batch_bytes = 0
        total = 0
        try:
            async for chunk, _ in body.iter_chunks():
                batch.append(chunk)
                batch_bytes += len(chunk)
                if (batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_CHUNKS) and not body.at_eof():
                    opened = opened or await opening
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(self.executor, _write_batch, opened.writer, opened.hasher,
                                                   batch, self._writers)
                    total += batch_bytes
                    self.on_bytes(batch_bytes)
                    batch, batch_bytes = [], 0
            opened = opened or await opening
            if pending is not None:
                await pending
                pending = None
            total += batch_bytes
            if length is not None and total != length:
                raise OCIError(ErrorCode.SIZE_INVALID, f"received {total} bytes, but Content-Length says {length}")
            finish = loop.run_in_executor(self.executor, _finish, opened.writer, opened.hasher, batch,
                                          self._writers)
            await asyncio.shield(finish)
        except BaseException:
            if pending is not None:  # never leave a writer running on a closing descriptor
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
            if opened is None:  # the body broke off (or the session was refused) before it opened
                with contextlib.suppress(BaseException):
                    opened = await asyncio.shield(opening)
            if finish is None and opened is not None:
                await asyncio.shield(self._run(opened.writer.abort))
            raise
        self.on_bytes(batch_bytes)
        return opened.info, total, opened.hasher

    async def complete(self, name: str, upload_id: str, digest: Digest, body: StreamReader | None,
                       start: int | None = None, length: int | None = None) -> UploadInfo:
        """Append the final chunk (if any), verify the digest and publish the blob; the session as
        it was closed."""
        async with self._lock(upload_id):
            self._in_progress(upload_id)
            # Without a body, the commit reads the session itself (one worker call, not two).
            info = await self._append_locked(name, upload_id, body, start, length) if body is not None else None
            hasher = self._hashers.get(upload_id)
            try:
                info = await self._run(self.storage.commit_upload, name, upload_id, digest, hasher, info)
            except OCIError as e:
                if e.code in (ErrorCode.DIGEST_INVALID, ErrorCode.DENIED):  # the session is gone
                    self._forget(upload_id)
                raise
            self._forget(upload_id)
            self._remove_later(upload_id)
            return info

    def _remove_later(self, upload_id: str) -> None:
        """Remove a committed session's leftovers (its info, on S3 its parts) without holding up
        the 201: nothing reads them any more, and if this process dies first, GC's sweep of
        abandoned sessions removes them. This process answers for the session as gone from now
        on (the ids of the last MAX_TRACKED committed sessions are kept; ids are never reused)."""
        self._committed[upload_id] = None
        if len(self._committed) > MAX_TRACKED:
            del self._committed[next(iter(self._committed))]
        with contextlib.suppress(RuntimeError):  # shutting down: the sweep removes it
            self.executor.submit(self._remove, upload_id)  # no wake-up of the event loop when done

    def _remove(self, upload_id: str) -> None:
        try:
            self.storage.delete_upload(upload_id)
        except Exception as e:  # the sweep removes what is left
            log.warning("could not remove the committed upload %s (GC will): %s", upload_id, e)
