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
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TypeVar

from aiohttp import StreamReader

from dockyard.oci import Digest, ErrorCode, Hasher, OCIError
from dockyard.registry.drivers import UploadWriter
from dockyard.registry.storage import Storage, UploadInfo

T = TypeVar("T")
BATCH_BYTES = 1024 * 1024
BATCH_CHUNKS = 256
MAX_TRACKED = 4096  # upload sessions whose hash state and lock are kept in memory


class RangeMismatch(Exception):
    """A chunk that does not continue the upload where it stands (HTTP 416)."""

    def __init__(self, info: UploadInfo) -> None:
        super().__init__(f"upload is at offset {info.size}")
        self.info = info


def _write_batch(writer: UploadWriter, hasher: Hasher | None, chunks: list[bytes]) -> None:
    if hasher is not None:
        for chunk in chunks:
            hasher.update(chunk)
    writer.write(chunks)


class Uploads:
    """Upload sessions: append chunks, report status, verify and commit, cancel."""

    def __init__(self, storage: Storage, executor: Executor,
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
        hasher = self._hashers.pop(upload_id, None)
        if hasher is not None and hasher.size != info.size:
            hasher = None  # another process appended: the commit hashes the stored data
        try:
            writer = await self._run(self.storage.driver.upload_writer, upload_id, info.size)
        except FileNotFoundError:  # completed or cancelled meanwhile (another replica)
            raise OCIError(ErrorCode.BLOB_UPLOAD_UNKNOWN, f"upload {upload_id} is no longer in progress") from None
        before = hasher.copy() if hasher is not None else None
        try:
            received = await self._receive(body, writer, hasher)
            if length is not None and received != length:
                raise OCIError(ErrorCode.SIZE_INVALID,
                               f"received {received} bytes, but Content-Length says {length}")
        except BaseException:
            await asyncio.shield(self._run(writer.abort))
            if before is not None:
                self._remember(upload_id, before)
            raise
        await asyncio.shield(self._run(writer.close))
        if hasher is not None:
            self._remember(upload_id, hasher)
        return UploadInfo(info.id, info.name, info.size + received, info.started)

    async def _receive(self, body: StreamReader, writer: UploadWriter, hasher: Hasher | None) -> int:
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
                    pending = loop.run_in_executor(self.executor, _write_batch, writer, hasher, batch)
                    total += batch_bytes
                    self.on_bytes(batch_bytes)
                    batch, batch_bytes = [], 0
            if pending is not None:
                await pending
                pending = None
            if batch:
                await loop.run_in_executor(self.executor, _write_batch, writer, hasher, batch)
                total += batch_bytes
                self.on_bytes(batch_bytes)
        finally:
            if pending is not None:  # never leave a writer running on a closing descriptor
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)
        return total

    async def complete(self, name: str, upload_id: str, digest: Digest, body: StreamReader | None,
                       start: int | None = None, length: int | None = None) -> UploadInfo:
        """Append the final chunk (if any), verify the digest and publish the blob; the session as
        it was closed."""
        async with self._lock(upload_id):
            if body is not None:
                info = await self._append_locked(name, upload_id, body, start, length)
            else:
                info = await self._run(self.storage.upload_info, name, upload_id)
            hasher = self._hashers.get(upload_id)
            try:
                await self._run(self.storage.commit_upload, name, upload_id, digest, hasher, info)
            except OCIError as e:
                if e.code in (ErrorCode.DIGEST_INVALID, ErrorCode.DENIED):  # the session is gone
                    self._forget(upload_id)
                raise
            self._forget(upload_id)
            return info
