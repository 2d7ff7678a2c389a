"""Moving one blob from a source registry to a destination registry, safely.

Blobs stream from the source GET into the destination upload without touching disk or
holding the blob in memory. The digest is computed while streaming and the last piece is
held back until it matches, so corrupt bytes never complete an upload. Small blobs go in
one PUT; blobs above the chunk size go in PATCH chunks, and after an interruption the
upload resumes at the offset the destination reports (re-reading the source from a hash
snapshot), from zero only when the destination lost the session. A transfer is abandoned
only when no byte moves for the stall timeout, never because it takes long.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from dockyard.oci import Digest, Hasher
from dockyard.oci.backoff import RETRYABLE_STATUSES, Attempts, Limiter, RetryPolicy, retry
from dockyard.oci.client import RegistryClient, RegistryError, with_query
from dockyard.replication.limits import ProgressGuard, Stalled

PIECE = 256 * 1024


class DigestMismatch(Exception):
    """The source sent bytes that do not hash to the digest that names them."""


def retryable(error: BaseException) -> bool:
    """Worth another attempt: a retryable HTTP status, a connection error, a stall or corrupt bytes."""
    if isinstance(error, RegistryError):
        return error.status is None or error.status in RETRYABLE_STATUSES
    return isinstance(error, Stalled | aiohttp.ClientError | TimeoutError | ConnectionError | DigestMismatch)


class _Reader:
    """A source blob stream positioned at `offset`, read in bounded pieces."""

    def __init__(self, resp: aiohttp.ClientResponse, offset: int) -> None:
        self.resp = resp
        self.offset = offset
        self._buffer = b""

    async def read(self, limit: int) -> bytes:
        if not self._buffer:
            self._buffer = await self.resp.content.read(PIECE)
            if not self._buffer:
                return b""
        piece, self._buffer = self._buffer[:limit], self._buffer[limit:]
        self.offset += len(piece)
        return piece

    def close(self) -> None:
        self.resp.release()


class BlobMover:
    """Copies blobs between two registries with the run's retry policy and bandwidth limit."""

    def __init__(self, source: RegistryClient, dest: RegistryClient, retry: RetryPolicy, bandwidth: Limiter,
                 stall_timeout: float, chunk_size: int, on_bytes: Callable[[int], None]) -> None:
        self.source = source
        self.dest = dest
        self.retry = retry
        self.bandwidth = bandwidth
        self.stall_timeout = stall_timeout
        self.chunk_size = chunk_size
        self.on_bytes = on_bytes

    async def copy(self, src_repo: str, dst_repo: str, desc: Mapping[str, Any], location: str | None) -> None:
        """Copy the blob `desc` describes; `location` is an upload session already open, if any."""
        if int(desc.get("size", -1)) > self.chunk_size:
            await self._chunked(src_repo, dst_repo, desc, location)
        else:
            await self._monolithic(src_repo, dst_repo, desc, location)

    async def _pieces(self, reader: _Reader, count: int, hasher: Hasher, guard: ProgressGuard,
                      verify: Digest | None) -> AsyncIterator[bytes]:
        """`count` bytes from the source; with `verify`, the last piece is held back until the
        digest of everything read checks out, so a corrupt blob never completes upstream."""
        pending = b""
        remaining = count
        while remaining > 0:
            piece = await reader.read(min(PIECE, remaining))
            if not piece:
                raise DigestMismatch(f"source blob ended {remaining} bytes early")
            guard.tick()
            await self.bandwidth.take(len(piece))
            hasher.update(piece)
            remaining -= len(piece)
            if pending:
                self.on_bytes(len(pending))
                yield pending
            pending = piece
        if verify is not None and not hasher.verify(verify):
            raise DigestMismatch(f"source sent content of digest {hasher.digest()} for {verify}")
        if pending:
            self.on_bytes(len(pending))
            yield pending

    def _delay(self, attempt: int, error: Exception) -> float | None:
        return self.retry.delay(attempt, getattr(error, "status", None)) if retryable(error) else None

    async def _monolithic(self, src_repo: str, dst_repo: str, desc: Mapping[str, Any],
                          location: str | None) -> None:
        digest = str(desc["digest"])
        size = int(desc["size"])
        expected = Digest.parse(digest)

        async def attempt(_attempts: Attempts) -> None:
            nonlocal location
            if location is None:
                _, location = await self.dest.start_upload(dst_repo)
            async with ProgressGuard(self.stall_timeout) as guard:
                reader = _Reader(await self.source.open_blob(src_repo, digest), 0)
                try:
                    body = self._pieces(reader, size, Hasher(expected.algorithm), guard, expected)
                    await self.dest.send(dst_repo, "PUT", with_query(location, digest=digest), data=body,
                                         headers={"Content-Type": "application/octet-stream",
                                                  "Content-Length": str(size)}, ok=(201, 204))
                finally:
                    reader.close()

        async def abandon(_error: Exception) -> None:
            """Start the next attempt in a fresh session."""
            nonlocal location
            if location is not None:
                await self.dest.cancel_upload(dst_repo, location)
            location = None

        await retry(attempt, self._delay, recover=abandon)

    async def _open_at(self, src_repo: str, digest: str, offset: int, snapshots: dict[int, Hasher],
                       guard: ProgressGuard) -> tuple[_Reader, Hasher]:
        """A reader at `offset` and the hash of the bytes before it (re-read from a snapshot)."""
        base = max(k for k in snapshots if k <= offset)
        hasher = snapshots[base].copy()
        resp = await self.source.open_blob(src_repo, digest, base)
        reader = _Reader(resp, base)
        if resp.status == 200 and base:  # the source ignored Range: skip what it resent
            reader.offset = 0
            while reader.offset < base:
                if not await reader.read(base - reader.offset):
                    raise DigestMismatch("source blob ended early")
                guard.tick()
        while reader.offset < offset:
            piece = await reader.read(offset - reader.offset)
            if not piece:
                raise DigestMismatch("source blob ended early")
            hasher.update(piece)
            guard.tick()
        return reader, hasher

    async def _chunked(self, src_repo: str, dst_repo: str, desc: Mapping[str, Any], location: str | None) -> None:
        """PATCH chunks; after a failure, ask the server how much it holds and resume there."""
        digest = str(desc["digest"])
        size = int(desc["size"])
        expected = Digest.parse(digest)
        chunk = self.chunk_size
        if location is None:
            _, location = await self.dest.start_upload(dst_repo)
        session: str = location
        offset = 0
        snapshots: dict[int, Hasher] = {0: Hasher(expected.algorithm)}

        async def attempt(attempts: Attempts) -> None:
            nonlocal session, offset, snapshots
            reader: _Reader | None = None
            try:
                async with ProgressGuard(self.stall_timeout) as guard:
                    while offset < size:
                        if reader is None or reader.offset != offset:
                            if reader is not None:
                                reader.close()
                            reader, hasher = await self._open_at(src_repo, digest, offset, snapshots, guard)
                        n = min(chunk, size - offset)
                        last = offset + n == size
                        body = self._pieces(reader, n, hasher, guard, expected if last else None)
                        resp = await self.dest.send(
                            dst_repo, "PATCH", session, data=body, ok=(202, 204),
                            headers={"Content-Type": "application/octet-stream", "Content-Length": str(n),
                                     "Content-Range": f"{offset}-{offset + n - 1}"})
                        session = self.dest.absolute(resp.headers.get("Location") or session)
                        offset += n
                        snapshots = {k: v for k, v in snapshots.items() if k == 0 or k >= offset - 4 * chunk}
                        snapshots[offset] = hasher.copy()
                        attempts.progressed()
                    await self.dest.send(dst_repo, "PUT", with_query(session, digest=digest), data=b"",
                                         headers={"Content-Length": "0"}, ok=(201, 204))
            finally:
                if reader is not None:
                    reader.close()

        async def resume(_error: Exception) -> None:
            """Continue where the destination says the upload got to, from zero when it lost the session."""
            nonlocal session, offset, snapshots
            held = await self.dest.upload_status(dst_repo, session)
            if held is None or held > size:
                _, session = await self.dest.start_upload(dst_repo)
                offset, snapshots = 0, {0: Hasher(expected.algorithm)}
            else:
                offset = held

        await retry(attempt, self._delay, recover=resume)
