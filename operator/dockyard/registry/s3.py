"""The S3 storage driver: the registry's objects in a bucket (AWS S3, MinIO, SeaweedFS, Ceph RGW...).

Every process of a Registry shares the bucket; none keeps state of its own that another needs,
so replicas scale out behind a plain Service:

* Upload sessions live in the bucket as parts, `uploads/<id>/parts/<offset>`: a request
  appends by writing 8 MiB parts, and a remainder smaller than S3's 5 MiB minimum part size is
  rewritten together with the next request's first bytes. Any replica continues an upload
  (the parts are listed to learn its size), and any replica can read the parts back to check
  the digest when it did not see all the bytes itself (multipart uploads cannot be read before
  they complete, which is why in-progress data are plain objects). The commit assembles the
  parts server-side into the blob's key with a multipart upload of UploadPartCopy requests, so
  the blob appears whole or not at all and no byte passes through the registry again.
* Objects have no modification time one can set, so a blob's use time is a marker
  `_used/<key>` holding the time: written with the blob, by each use (`touch`), and carried
  along by `move` (whose copy has a new write time). GC's grace period works as on a
  filesystem.
* `create` is a conditional PUT (If-None-Match: *): GC's lock.

The client is aiobotocore on an event loop of the driver's own (a daemon thread): the storage
layer above is synchronous and runs in the registry's thread pools, which wait here for the
loop. Errors the bucket answers (wrong keys, no such bucket, an endpoint that does not
answer) become `StorageUnavailable` with one line naming the bucket, the endpoint and the code.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dockyard.registry.config import S3Config
from dockyard.registry.drivers import Stat, StorageUnavailable, Usage

T = TypeVar("T")
PART_SIZE = 8 * 1024 * 1024
MIN_PART = 5 * 1024 * 1024  # S3's minimum for every part but the last
COPY_LIMIT = 5 * 1024 * 1024 * 1024  # the largest CopyObject; beyond it, copy in parts
COPY_CONCURRENCY = 8
STREAM_PIECE = 2 * 1024 * 1024
PRESIGN_SECONDS = 600
USED = "_used"
MARKED = ("blobs/", "gc/trash/blobs/")
MISSING = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchUpload"})


@dataclass(frozen=True, slots=True)
class Part:
    offset: int
    size: int
    key: str


def _missing(e: ClientError) -> bool:
    return str(e.response.get("Error", {}).get("Code")) in MISSING


class S3Driver:
    kind = "s3"

    def __init__(self, settings: S3Config, access_key: str | None = None, secret_key: str | None = None) -> None:
        """SETTINGS from the config's `storage.s3`; without keys, the AWS default credential chain
        (environment, web identity as with IRSA, instance profile)."""
        self.settings = settings
        self._keys = (access_key, secret_key)
        self.bucket = settings.bucket
        self._prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self._where = f"S3 bucket {settings.bucket} at {settings.endpoint or 'AWS ' + settings.region}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dockyard-s3", daemon=True)
        self._thread.start()
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = self._call(self._open())
        self._listed: dict[str, builtins.list[Part]] = {}
        """Each upload's parts as this process last listed or wrote them: what the next step of
        the same request (a writer after the size check, the commit after the writer) starts
        from when the parts still end where that step expects; any doubt lists again."""
        self._listed_lock = threading.Lock()

    async def _open(self) -> Any:
        s = self.settings
        config = Config(s3={"addressing_style": "path" if s.force_path_style else "auto"},
                        retries={"max_attempts": 4, "mode": "standard"},
                        connect_timeout=10, read_timeout=120, max_pool_connections=64,
                        signature_version="s3v4")
        verify: bool | str = False if s.insecure else (str(s.ca_file) if s.ca_file else True)
        client = get_session().create_client(
            "s3", endpoint_url=s.endpoint, region_name=s.region, aws_access_key_id=self._keys[0],
            aws_secret_access_key=self._keys[1], config=config, verify=verify)
        return await self._stack.enter_async_context(client)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._call(self._stack.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # ---- plumbing --------------------------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run COROUTINE on the driver's loop and wait; S3 failures become StorageUnavailable."""
        try:
            return self._submit(coro).result()
        except ClientError as e:
            if _missing(e):
                raise
            raise self.unavailable(e) from None
        except BotoCoreError as e:
            raise self.unavailable(e) from None

    def unavailable(self, e: Exception) -> StorageUnavailable:
        if isinstance(e, ClientError):
            err = e.response.get("Error", {})
            code = err.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = err.get("Message") or str(e)
            return StorageUnavailable(f"{self._where}: {code}: {message}")
        return StorageUnavailable(f"{self._where}: {type(e).__name__}: {e}")

    def _key(self, key: str) -> str:
        return self._prefix + key

    # ---- objects ---------------------------------------------------------------------------

    def read(self, key: str) -> bytes | None:
        got = self.read_noted(key)
        return None if got is None else got[0]

    def read_noted(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """The object and its notes, kept as the object's user metadata: one GET for both."""
        async def get() -> tuple[bytes, dict[str, str]] | None:
            try:
                response = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as e:
                if _missing(e):
                    return None
                raise
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data, dict(response.get("Metadata") or {})
        return self._call(get())

    def write(self, key: str, data: bytes, *, durable: bool = True, notes: dict[str, str] | None = None) -> None:
        """One PUT: atomic, and durable when S3 answers. A blob written counts as used now. NOTES
        (ASCII) travel as user metadata."""
        extra = {"Metadata": notes} if notes else {}
        self._call(self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra))
        if self._marked(key):
            self.touch(key)

    def create(self, key: str, data: bytes) -> bool:
        async def put_if_absent() -> bool:
            try:
                await self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
                return True
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") == "PreconditionFailed":
                    return False
                raise
        return self._call(put_if_absent())

    async def _head(self, key: str) -> Stat | None:
        try:
            r = await self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as e:
            if _missing(e):
                return None
            raise
        return Stat(int(r["ContentLength"]), r["LastModified"].timestamp())

    def stat(self, key: str) -> Stat | None:
        return self._call(self._head(key))

    @staticmethod
    def _marked(key: str) -> bool:
        """Keys whose use time GC reads: blobs, in place or set aside."""
        return key.startswith(MARKED)

    def touch(self, key: str) -> None:
        self.write(f"{USED}/{key}", repr(time.time()).encode())

    def used(self, key: str) -> float | None:
        """The marker's time where there is one (a touch, or the time a move carried along), else
        when the object was written; None when the object is gone."""
        st = self.stat(key)
        if st is None:
            return None
        marker = self.read(f"{USED}/{key}") if self._marked(key) else None
        try:
            return float(marker) if marker else st.modified
        except ValueError:
            return st.modified

    def delete(self, key: str) -> bool:
        if self.stat(key) is None:
            return False
        self._remove(key)
        return True

    def move(self, src: str, dest: str) -> bool:
        """Copy, then delete the source: not atomic, but a reader sees the object at SRC until DEST
        holds it whole. A blob's use time travels with it (the copy's own write time is now)."""
        used = self.used(src) if self._marked(src) else None
        st = self.stat(src)
        if st is None:
            return False
        self._call(self._copy(self._key(src), self._key(dest), st.size))
        if self._marked(dest):
            self.write(f"{USED}/{dest}", repr(used if used is not None else st.modified).encode())
        self._remove(src)
        return True

    def _remove(self, key: str) -> None:
        """Delete KEY, and a blob's use marker with it (S3 answers a delete of nothing with success)."""
        self._call(self._client.delete_object(Bucket=self.bucket, Key=self._key(key)))
        if self._marked(key):
            self._call(self._client.delete_object(Bucket=self.bucket, Key=self._key(f"{USED}/{key}")))

    async def _copy(self, src: str, dest: str, size: int) -> None:
        if size <= COPY_LIMIT:
            await self._client.copy_object(Bucket=self.bucket, Key=dest, CopySource={"Bucket": self.bucket, "Key": src})
            return
        ranges = [(start, min(start + COPY_LIMIT, size) - 1) for start in range(0, size, COPY_LIMIT)]
        await self._assemble(dest, [(src, f"bytes={a}-{b}") for a, b in ranges])

    async def _assemble(self, dest: str, sources: builtins.list[tuple[str, str | None]]) -> None:
        """DEST made of SOURCES (key, byte range or None) in order, copied server-side; visible whole."""
        mpu = await self._client.create_multipart_upload(Bucket=self.bucket, Key=dest)
        upload_id = mpu["UploadId"]
        limit = asyncio.Semaphore(COPY_CONCURRENCY)

        async def copy(number: int, key: str, byte_range: str | None) -> dict[str, Any]:
            extra = {"CopySourceRange": byte_range} if byte_range else {}
            async with limit:
                r = await self._client.upload_part_copy(
                    Bucket=self.bucket, Key=dest, UploadId=upload_id, PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": key}, **extra)
            return {"PartNumber": number, "ETag": r["CopyPartResult"]["ETag"]}
        try:
            parts = await asyncio.gather(*(copy(i + 1, k, r) for i, (k, r) in enumerate(sources)))
            await self._client.complete_multipart_upload(Bucket=self.bucket, Key=dest, UploadId=upload_id,
                                                         MultipartUpload={"Parts": list(parts)})
        except BaseException:
            with contextlib.suppress(Exception):
                await self._client.abort_multipart_upload(Bucket=self.bucket, Key=dest, UploadId=upload_id)
            raise

    async def _list(self, prefix: str, delimiter: bool) -> builtins.list[dict[str, Any]]:
        pages: builtins.list[dict[str, Any]] = []
        paginator = self._client.get_paginator("list_objects_v2")
        args = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        if delimiter:
            args["Delimiter"] = "/"
        async for page in paginator.paginate(**args):
            pages.append(page)
        return pages

    def list(self, prefix: str) -> list[str]:
        base = self._key(prefix.rstrip("/") + "/")
        names: set[str] = set()
        for page in self._call(self._list(prefix.rstrip("/") + "/", True)):
            names.update(p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", []))
            names.update(o["Key"][len(base):] for o in page.get("Contents", []))
        names.discard("")
        return sorted(names)

    def walk(self, prefix: str) -> Iterator[tuple[str, Stat]]:
        for page in self._call(self._list(prefix.rstrip("/") + "/", False)):
            for o in page.get("Contents", []):
                yield o["Key"][len(self._prefix):], Stat(int(o["Size"]), o["LastModified"].timestamp())

    def delete_tree(self, prefix: str) -> None:
        keys = [self._key(k) for k, _ in self.walk(prefix)]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i:i + 1000]]
            self._call(self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}))

    # ---- uploads ---------------------------------------------------------------------------

    def parts(self, upload_id: str) -> builtins.list[Part]:
        """The upload's parts from offset 0 on, as far as they continue each other."""
        found: dict[int, Part] = {}
        for key, st in self.walk(f"uploads/{upload_id}/parts"):
            with contextlib.suppress(ValueError):
                offset = int(key.rsplit("/", 1)[1])
                found[offset] = Part(offset, st.size, key)
        out: builtins.list[Part] = []
        at = 0
        while at in found and found[at].size > 0:
            out.append(found[at])
            at += found[at].size
        return out

    def part_key(self, upload_id: str, offset: int) -> str:
        return f"uploads/{upload_id}/parts/{offset:020d}"

    def upload_start(self, upload_id: str, info: bytes) -> None:
        """The info object is the session's first object; its parts follow."""
        self.write(f"uploads/{upload_id}/info", info, durable=False)

    def upload_size(self, upload_id: str) -> int | None:
        parts = self.parts(upload_id)
        self._remember(upload_id, parts)
        return _end(parts)

    def _remember(self, upload_id: str, parts: builtins.list[Part]) -> None:
        with self._listed_lock:
            if len(self._listed) >= 4096:
                self._listed.clear()
            self._listed[upload_id] = parts

    def _known_parts(self, upload_id: str, end: int) -> builtins.list[Part]:
        """The remembered parts when they end at END (taken, so they are used once), else a listing."""
        with self._listed_lock:
            parts = self._listed.pop(upload_id, None)
        return parts if parts is not None and _end(parts) == end else self.parts(upload_id)

    def upload_writer(self, upload_id: str, offset: int) -> PartWriter:
        return PartWriter(self, upload_id, offset, self._known_parts(upload_id, offset))

    def upload_chunks(self, upload_id: str) -> Iterator[bytes]:
        for part in self.parts(upload_id):
            data = self.read(part.key)
            if data is None:
                raise FileNotFoundError(part.key)
            yield data

    def upload_publish(self, upload_id: str, key: str, size: int) -> None:
        """Assemble the SIZE bytes of parts at KEY (server-side); it counts as used from now on."""
        parts = self._known_parts(upload_id, size)
        if _end(parts) != size:
            raise FileNotFoundError(f"upload {upload_id} holds {_end(parts)} bytes, not {size}")
        self._remember(upload_id, parts)  # for upload_delete
        if not parts:
            self.write(key, b"")
            return
        if len(parts) == 1:
            self._call(self._copy(self._key(parts[0].key), self._key(key), parts[0].size))
        else:
            self._call(self._assemble(self._key(key), [(self._key(p.key), None) for p in parts]))
        if self._marked(key):
            self.touch(key)

    def upload_delete(self, upload_id: str) -> None:
        """One DeleteObjects for the parts this process knows of (after a commit), else a listing."""
        with self._listed_lock:
            parts = self._listed.pop(upload_id, None)
        if parts is None:
            self.delete_tree(f"uploads/{upload_id}")
            return
        batch = [{"Key": self._key(k)} for k in [f"uploads/{upload_id}/info", *(p.key for p in parts)]]
        self._call(self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}))

    def uploads(self) -> Iterator[tuple[str, float]]:
        last: dict[str, float] = {}
        for key, st in self.walk("uploads"):
            upload_id = key.split("/")[1]
            last[upload_id] = max(last.get(upload_id, 0.0), st.modified)
        yield from last.items()

    def clean(self, before: float) -> None:
        """Abort multipart uploads started before BEFORE (commits that died mid-assembly)."""
        async def abort_old() -> None:
            paginator = self._client.get_paginator("list_multipart_uploads")
            cutoff = before
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=self._prefix):
                for u in page.get("Uploads", []):
                    if u["Initiated"].timestamp() < cutoff:
                        with contextlib.suppress(ClientError):
                            await self._client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"],
                                                                      UploadId=u["UploadId"])
        self._call(abort_old())

    # ---- reading blobs and health -------------------------------------------------------------

    def local_path(self, key: str) -> Path | None:
        return None

    async def stream(self, key: str, start: int, length: int) -> AsyncIterator[bytes]:
        """LENGTH bytes from START, read on the driver's loop and handed to the caller's loop."""
        async def open_body() -> Any:
            r = await self._client.get_object(Bucket=self.bucket, Key=self._key(key),
                                              Range=f"bytes={start}-{start + length - 1}")
            return r["Body"]
        if length <= 0:
            return
        body = await asyncio.wrap_future(self._submit(open_body()))
        # The next piece is read while the caller sends this one: two pieces in memory at most.
        pending: Future[bytes] | None = self._submit(body.read(min(STREAM_PIECE, length)))
        try:
            remaining = length
            while pending is not None:
                piece: bytes = await asyncio.wrap_future(pending)
                pending = None
                if not piece:
                    raise ConnectionResetError(f"{key} ended {remaining} bytes early")
                remaining -= len(piece)
                if remaining > 0:
                    pending = self._submit(body.read(min(STREAM_PIECE, remaining)))
                yield piece
        finally:
            if pending is not None:  # the caller stopped early: never close under a running read
                pending.cancel()
            self._loop.call_soon_threadsafe(body.close)

    def presign(self, key: str) -> str | None:
        if not self.settings.redirect:
            return None
        url: str = self._call(self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=PRESIGN_SECONDS))
        return url

    def usage(self) -> Usage:
        return Usage(sum(st.size for _, st in self.walk("blobs")), None)

    def check(self) -> None:
        """The bucket answers and takes a write with these credentials; else StorageUnavailable."""
        self._call(self._probe_list())
        probe = f"_probe/{threading.get_ident()}-{time.monotonic_ns()}"
        self.write(probe, b"ok")
        self._remove(probe)

    async def _probe_list(self) -> None:
        """A one-key listing: unlike HEAD, its error answer has a body naming the code
        (SignatureDoesNotMatch, InvalidAccessKeyId, NoSuchBucket, AccessDenied)."""
        await self._client.list_objects_v2(Bucket=self.bucket, Prefix=self._prefix, MaxKeys=1)

    def readable(self) -> bool:
        try:
            self._call(self._probe_list())
            return True
        except StorageUnavailable:
            return False

    def writable(self) -> bool:
        try:
            self.check()
            return True
        except StorageUnavailable:
            return False


def _end(parts: list[Part]) -> int:
    return parts[-1].offset + parts[-1].size if parts else 0


class PartWriter:
    """Appends a request body to an upload as parts (see the module docstring)."""

    def __init__(self, driver: S3Driver, upload_id: str, offset: int, parts: list[Part]) -> None:
        self.driver = driver
        self.upload_id = upload_id
        self.start = offset
        self.buffer = bytearray()
        self.parts = [p for p in parts if p.offset + p.size <= offset]
        self.written: list[str] = []
        self.restore: tuple[str, bytes] | None = None
        self.added = 0
        self.pending: Future[Any] | None = None
        self.tail: Part | None = None
        last = self.parts[-1] if self.parts else None
        if last is not None and last.offset + last.size == offset and last.size < MIN_PART:
            data = driver.read(last.key)
            if data is None:
                raise FileNotFoundError(last.key)
            self.restore = (last.key, data)
            self.start = last.offset
            self.buffer += data
            self.tail = self.parts.pop()

    def _put(self, data: bytes) -> None:
        """Start the PUT of the next part; at most one is in flight, so the body keeps arriving
        while a part travels, and memory holds one part besides the buffer."""
        self._wait()
        key = self.driver.part_key(self.upload_id, self.start)
        self.written.append(key)
        self.parts.append(Part(self.start, len(data), key))
        self.start += len(data)
        self.pending = self.driver._submit(self.driver._client.put_object(
            Bucket=self.driver.bucket, Key=self.driver._key(key), Body=data))

    def _wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            try:
                pending.result()
            except (ClientError, BotoCoreError) as e:
                raise self.driver.unavailable(e) from None

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.buffer += chunk
            self.added += len(chunk)
        while len(self.buffer) >= PART_SIZE:
            self._put(bytes(memoryview(self.buffer)[:PART_SIZE]))
            del self.buffer[:PART_SIZE]

    def close(self) -> None:
        if self.buffer and self.added:
            self._put(bytes(self.buffer))
        elif self.tail is not None:  # nothing new: the short last part stays as it was
            self.parts.append(self.tail)
        self.buffer = bytearray()
        self._wait()
        self.driver._remember(self.upload_id, self.parts)

    def abort(self) -> None:
        with contextlib.suppress(StorageUnavailable):
            self._wait()
        for key in self.written:
            with contextlib.suppress(StorageUnavailable):
                self.driver._call(self.driver._client.delete_object(Bucket=self.driver.bucket,
                                                                    Key=self.driver._key(key)))
        if self.restore is not None:
            self.driver.write(*self.restore)
        self.buffer = bytearray()
