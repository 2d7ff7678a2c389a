"""Receiving blob uploads: stream request bodies to disk while hashing them.

The event loop reads the socket; a worker thread writes and hashes ~1 MiB batches (hashlib
releases the GIL for large buffers), so reading, hashing and writing overlap and memory stays
bounded no matter how large the blob is. The incremental sha256 state of each upload is
kept in memory keyed by upload id and checked against the data file's size: after a
restart, or when another replica appended to the upload on shared storage, hashlib state
cannot be restored from disk, so the partial file is re-hashed once and the upload goes on.
A chunk that does not arrive completely is truncated away, so an upload's size always
equals the bytes the client got a 2xx for.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from aiohttp import StreamReader

from dockyard.oci import Digest, ErrorCode, Hasher, OCIError
from dockyard.registry.storage import FilesystemStorage, UploadInfo

T = TypeVar("T")
BATCH_BYTES = 1024 * 1024
BATCH_CHUNKS = 256
MAX_TRACKED = 4096  # upload sessions whose hash state and lock are kept in memory


class RangeMismatch(Exception):
    """A chunk that does not continue the upload where it stands (HTTP 416)."""

    def __init__(self, info: UploadInfo) -> None:
        super().__init__(f"upload is at offset {info.size}")
        self.info = info


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux/glibc: the commit's fsync does all the work
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages to disk now, without waiting for them.

    The commit's fsync then finds most of an upload already on disk: the disk writes while
    the rest of the body arrives, instead of all at once after the last byte. Best effort
    (sync_file_range is Linux only); durability still comes from the fsync at commit.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def _write_batch(fd: int, hasher: Hasher, chunks: list[bytes]) -> None:
    """Hash and append a batch with one writev (no joining copy); finish short writes."""
    for chunk in chunks:
        hasher.update(chunk)
    written = os.writev(fd, chunks)
    total = sum(len(c) for c in chunks)
    if written < total:
        rest = memoryview(b"".join(chunks))[written:]
        while rest:
            rest = rest[os.write(fd, rest):]
    start_writeback(fd)


class Uploads:
    """Upload sessions: append chunks, report status, verify and commit, cancel."""

    def __init__(self, storage: FilesystemStorage, executor: Executor,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.storage = storage
        self.executor = executor
        self.on_bytes = on_bytes or (lambda n: None)
        self._hashers: dict[str, Hasher] = {}
        self._locks: dict[str, asyncio.Lock] = {}

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

    async def status(self, name: str, upload_id: str) -> UploadInfo:
        return await self._run(self.storage.upload_info, name, upload_id)

    async def cancel(self, name: str, upload_id: str) -> None:
        async with self._lock(upload_id):
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
            return await self._append_locked(name, upload_id, body, start, length)

    async def _append_locked(self, name: str, upload_id: str, body: StreamReader,
                             start: int | None, length: int | None) -> UploadInfo:
        info = await self._run(self.storage.upload_info, name, upload_id)
        if start is not None and start != info.size:
            raise RangeMismatch(info)
        path = self.storage.upload_data(upload_id)
        hasher = self._hashers.get(upload_id)
        try:
            if hasher is None or hasher.size != info.size:
                hasher = await self._run(self.storage.hash_file, path, "sha256")
                if hasher.size != info.size:  # another writer appended meanwhile
                    raise RangeMismatch(await self._run(self.storage.upload_info, name, upload_id))
            fd = await self._run(os.open, str(path), os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:  # completed or cancelled meanwhile (another replica)
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} is no longer in progress") from None
        before = hasher.copy()
        self._hashers.pop(upload_id, None)
        try:
            received = await self._receive(body, fd, hasher)
            if length is not None and received != length:
                raise OCIError(ErrorCode.SIZE_INVALID,
                               f"received {received} bytes, but Content-Length says {length}")
        except BaseException:
            await asyncio.shield(self._run(os.ftruncate, fd, info.size))
            self._remember(upload_id, before)
            raise
        finally:
            await asyncio.shield(self._run(os.close, fd))
        self._remember(upload_id, hasher)
        return UploadInfo(info.id, info.name, info.size + received, info.started)

    async def _receive(self, body: StreamReader, fd: int, hasher: Hasher) -> int:
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        batch: list[bytes] = []
        batch_bytes = 0
        total = 0
        try:
            async for chunk in body.iter_any():
                batch.append(chunk)
                batch_bytes += len(chunk)
                if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_CHUNKS:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(self.executor, _write_batch, fd, hasher, batch)
                    total += batch_bytes
                    self.on_bytes(batch_bytes)
                    batch, batch_bytes = [], 0
            if pending is not None:
                await pending
                pending = None
            if batch:
                await loop.run_in_executor(self.executor, _write_batch, fd, hasher, batch)
                total += batch_bytes
                self.on_bytes(batch_bytes)
        finally:
            if pending is not None:  # never leave a writer running on a closing descriptor
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
        return total

    async def complete(self, name: str, upload_id: str, digest: Digest, body: StreamReader | None,
                       start: int | None = None, length: int | None = None) -> int:
        """Append the final chunk (if any), verify the digest and publish the blob."""
        async with self._lock(upload_id):
            if body is not None:
                await self._append_locked(name, upload_id, body, start, length)
            hasher = self._hashers.get(upload_id)
            try:
                size = await self._run(self.storage.commit_upload, name, upload_id, digest, hasher)
            except OCIError as e:
                if e.code in (ErrorCode.DIGEST_INVALID, ErrorCode.DENIED):  # the session is gone
                    self._forget(upload_id)
                raise
            self._forget(upload_id)
            return size
