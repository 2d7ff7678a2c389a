"""The HTTP surface of the registry: OCI Distribution Specification v1.1 on aiohttp.

One catch-all route under /v2/ dispatches on the path suffix, because repository names
contain slashes. Endpoint ids (end-N) in the handler docstrings follow the spec's table.
A single middleware does authentication, read-only mode, error bodies and metrics; storage
work runs in thread pools so the event loop never blocks on the filesystem, one pool per kind
of work (`pools`), so catalog walks and bcrypt never hold up blob and manifest requests.

A push that would take a repository's quota (`quotas` in the config) over its limit is refused
with 403 DENIED before anything is written (`registry.quotas`, hooked into the storage's writes).

A full disk (or filesystem quota) refuses writes with 507 Insufficient Storage and an OCI error, and
sets `dockyard_registry_storage_full` until a write succeeds again; /readyz stays 200 as
long as the storage can be read, because the pod can still serve pulls, and taking it out
of its Service would stop those too.

Access with an htpasswd file, decided deliberately:

- `/metrics`, `/healthz` and `/readyz` need no credentials: Prometheus and the kubelet
  scrape them without any, and /metrics names no repository, tag or user (request counts
  by method and status, byte counters, durations, GC and notification counters).
- A blob mount without `from` answers 202 with an upload session instead of searching every
  repository for one that holds the blob (the spec allows either); the client then uploads.
- With `--anonymous-pull`, anonymous clients may pull blobs, manifests, tags and referrers
  of any repository they can name, but may not list `_catalog` (that would reveal every
  repository name) or look at upload sessions (those belong to whoever pushes): both need
  credentials, as does the base endpoint `/v2/`, so clients learn to send them for a push.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from aiohttp import web
from aiohttp.typedefs import Middleware

from dockyard.oci import Digest, DigestError, ErrorCode, OCIError, valid_name, valid_tag
from dockyard.oci import mediatypes as mt
from dockyard.oci.errors import error_body
from dockyard.registry.access import AccessPolicy, Identity
from dockyard.registry.auth import Htpasswd
from dockyard.registry.config import QuotaConfig
from dockyard.registry.drivers import StorageUnavailable
from dockyard.registry.gate import TOKEN_PATH, Caller, Gate
from dockyard.registry.manifests import ParsedManifest, parse_manifest
from dockyard.registry.metrics import Metrics
from dockyard.registry.pools import CatalogCache, PerKeyLimit, Pools
from dockyard.registry.quotas import QuotaBook
from dockyard.registry.serviceaccounts import TokenReviewer
from dockyard.registry.storage import Storage, StoredManifest, UploadInfo, blob_key
from dockyard.registry.tokens import TokenIssuer
from dockyard.registry.uploads import RangeMismatch, Uploads
from dockyard.registry.webhooks import Events

T = TypeVar("T")
log = logging.getLogger("dockyard.registry")

READ_ONLY_MESSAGE = "the registry is in read-only maintenance mode: pushes and deletes are disabled"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_METHODS = frozenset({"GET", "HEAD"})
LARGE_MANIFEST = 256 * 1024  # bytes; parsed off the event loop, one at a time
API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
STORAGE_FULL_MESSAGE = "the registry's storage is full"
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

_ROUTES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?P<name>.+)/blobs/uploads/?"), "uploads"),
    (re.compile(r"(?P<name>.+)/blobs/uploads/(?P<id>[^/]+)"), "upload"),
    (re.compile(r"(?P<name>.+)/blobs/(?P<digest>[^/]+)"), "blob"),
    (re.compile(r"(?P<name>.+)/manifests/(?P<reference>[^/]+)"), "manifest"),
    (re.compile(r"(?P<name>.+)/tags/list"), "tags"),
    (re.compile(r"(?P<name>.+)/referrers/(?P<digest>[^/]+)"), "referrers"),
]
REGISTRY: web.AppKey[RegistryService] = web.AppKey("registry")
BLOB_CHUNK = 1024 * 1024
# Requests FileResponse answers (206, 304, 412, If-Range): everything else takes _send_blob.
_PARTIAL_OR_CONDITIONAL = frozenset({"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since",
                                     "If-Unmodified-Since"})
_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?([0-9]+)-([0-9]+)(?:/(?:[0-9]+|\*))?")


def _route(tail: str) -> tuple[str, dict[str, str]] | None:
    """The endpoint kind of a path below /v2/ and its decoded parameters; None when none matches."""
    if unquote(tail) == "_catalog":
        return "catalog", {}
    for pattern, kind in _ROUTES:
        m = pattern.fullmatch(tail)
        if m is not None:
            return kind, {k: unquote(v) for k, v in m.groupdict().items()}
    return None


def _v2_tail(request: web.Request) -> str:
    """The raw path after /v2/: an encoded '/' stays inside the segment it was sent in."""
    raw = request.rel_url.raw_path
    return raw[4:] if raw.startswith("/v2/") else request.match_info.get("tail", "")


CALLER: web.RequestKey[Caller] = web.RequestKey("caller", Caller)
NO_MOUNT: web.RequestKey[bool] = web.RequestKey("no-mount", bool)


class HTTPError(OCIError):
    """An OCI error with extra response headers (WWW-Authenticate, Range, Location)."""

    def __init__(self, code: ErrorCode, message: str | None = None, *, status: int | None = None,
                 headers: dict[str, str] | None = None, detail: Any = None, empty: bool = False) -> None:
        super().__init__(code, message, detail, status)
        self.headers = headers or {}
        self.empty = empty


def _parse_digest(value: str, code: ErrorCode = ErrorCode.DIGEST_INVALID) -> Digest:
    try:
        return Digest.parse(value)
    except DigestError as e:
        raise OCIError(code, str(e), detail={"digest": value[:200]}) from None


def _check_name(name: str) -> str:
    if not valid_name(name):
        raise OCIError(ErrorCode.NAME_INVALID,
                       f"invalid repository name {name[:300]!r}: lowercase components of [a-z0-9] "
                       "separated by '.', '_', '__', '-' and '/', at most 255 characters",
                       detail={"name": name[:300]})
    return name


def _raw_query_value(request: web.Request, key: str) -> str | None:
    """A query value decoded without turning '+' into a space (media types contain '+')."""
    for part in request.rel_url.raw_query_string.split("&"):
        k, sep, v = part.partition("=")
        if sep and unquote(k) == key:
            return unquote(v)
    return None


def _range_header(size: int) -> str:
    return f"0-{max(size - 1, 0)}"


def _ascii_digits(value: str) -> bool:
    """True for a plain decimal number: `str.isdigit` also accepts superscripts and fullwidth digits."""
    return value.isascii() and value.isdigit()


def _non_negative_int(value: str | None, key: str) -> int | None:
    if value is None:
        return None
    if not _ascii_digits(value) or len(value) > 9:
        raise HTTPError(ErrorCode.UNSUPPORTED, f"query parameter {key} must be a non-negative integer",
                        status=400)
    return int(value)


_BYTE_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def _byte_range(value: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=A-B`, `bytes=A-` or `bytes=-N` range; None if unsatisfiable."""
    m = _BYTE_RANGE.fullmatch(value.strip())
    if m is None or m.group(1) == m.group(2) == "":
        return None
    if m.group(1) == "":
        first, last = max(size - int(m.group(2)), 0), size - 1
    else:
        first = int(m.group(1))
        last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    return (first, last) if first <= last < size else None


AUTH_CHECKS_PER_CLIENT = 1
"""bcrypt checks one client address may have running or queued in the pool at once."""


class RegistryService:
    """The application state: storage, upload sessions, auth, metrics and the worker pools."""

    def __init__(self, storage: Storage, *, htpasswd: Htpasswd | None = None,
                 anonymous_pull: bool = False, read_only: bool = False, workers: int = 32,
                 access: AccessPolicy | None = None, tokens: TokenIssuer | None = None,
                 reviewer: TokenReviewer | None = None, quotas: Sequence[QuotaConfig] = ()) -> None:
        self.storage = storage
        self.pools = Pools(io_workers=workers)
        self.executor = self.pools.io
        self.metrics = Metrics()
        self.quotas = QuotaBook(storage, quotas) if quotas else None
        """Usage per quota; the storage asks it before each new link (see registry.quotas)."""
        if self.quotas is not None:
            storage.guard = self.quotas
            self.metrics.quotas = self.quotas.report
        self.quota_rescan = asyncio.Event()
        """Set to have the quota usage recounted now (after a GC pass) rather than at the next interval."""
        self.catalog_cache = CatalogCache(storage.repositories, self.pools.walks, self.metrics.catalog_walked)
        self.auth_limit = PerKeyLimit(AUTH_CHECKS_PER_CLIENT)
        self.uploads = Uploads(storage, self.executor, self.metrics.received)
        self.htpasswd = htpasswd
        self.gate = None if htpasswd is None else Gate(
            htpasswd, lambda request, user, password: self._verify(request, htpasswd, user, password),
            access or AccessPolicy(anonymous_pull=anonymous_pull), tokens, reviewer)
        """Authentication and access rules; None serves everyone everything (no htpasswd configured)."""
        self.read_only = read_only
        self._large_manifests = asyncio.Semaphore(1)
        self.events: Events | None = None
        """Told of pushes, deletes and pulls: the webhooks, and the operator (`notify` in the config)."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ---- middleware ------------------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> None:
        """Who is calling and whether they may use this endpoint; the catalog filters per caller."""
        if self.gate is None:
            return
        caller = await self.gate.caller(request)
        request[CALLER] = caller
        if request.path in ("/v2", "/v2/"):  # anonymous clients learn here to log in
            self.gate.require_login(request, caller)
            return
        route = _route(_v2_tail(request))
        if route is None:
            return
        kind, params = route
        if kind == "catalog":
            self.gate.require_login(request, caller)
            return
        if not valid_name(params["name"]):
            return  # NAME_INVALID from the handler
        # Upload sessions, their status included, belong to pushing.
        action = "push" if kind in ("uploads", "upload") else \
            "delete" if request.method == "DELETE" else "pull" if request.method in READ_METHODS else "push"
        self.gate.check(request, caller, params["name"], action)
        source = request.query.get("from") if kind == "uploads" else None
        if source and valid_name(source) and not self.gate.may(caller, source, "pull"):
            request[NO_MOUNT] = True  # mounting would read a repository the caller may not pull

    async def _verify(self, request: web.Request, htpasswd: Htpasswd, user: str, password: str) -> bool:
        """bcrypt in its own pool, one check at a time per client address, so a client guessing
        passwords waits behind its own guesses and not in front of everyone else's requests."""
        async with self.auth_limit.hold(request.remote or ""):
            ok = htpasswd.cached(user, password)  # a request queued ahead may have checked the same
            if ok is not None:
                return ok
            if request.transport is None or request.transport.is_closing():
                return False  # the client left while it waited: nobody reads the answer, spend no bcrypt
            return await asyncio.get_running_loop().run_in_executor(self.pools.auth, htpasswd.verify,
                                                                    user, password)

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            if request.path.startswith("/v2"):
                await self._authorize(request)
                if self.read_only and request.method in WRITE_METHODS:
                    raise HTTPError(ErrorCode.UNSUPPORTED, READ_ONLY_MESSAGE, status=405)
            response = await handler(request)
            if request.method in WRITE_METHODS and response.status < 300:
                self._written(request)
        except OCIError as e:
            response = self._error_response(e)
        except web.HTTPException as e:
            if e.status in (404, 405) and request.path.startswith("/v2"):
                code = ErrorCode.NAME_UNKNOWN if e.status == 404 else ErrorCode.UNSUPPORTED
                response = self._error_response(OCIError(code, f"{request.method} {request.path}: {e.reason}",
                                                         status=e.status))
            else:
                raise
        except ConnectionResetError:
            # the client went away mid-body; whatever it sent of this chunk was rolled back
            response = self._error_response(OCIError(ErrorCode.BLOB_UPLOAD_INVALID,
                                                     "the connection closed before the request body ended"))
        except OSError as e:
            response = self._storage_full(e) if e.errno in STORAGE_FULL_ERRNOS else self._internal_error(request)
        except StorageUnavailable as e:
            response = self._storage_unavailable(request, e)
        except asyncio.CancelledError:
            raise
        except Exception:
            response = self._internal_error(request)
        return response

    @staticmethod
    def _internal_error(request: web.Request) -> web.Response:
        """500 for a bug or an unexpected storage failure; called from an except clause, which it logs."""
        log.exception("internal error handling %s %s", request.method, request.path)
        return web.json_response({"errors": [{"code": "UNKNOWN", "message": "internal server error"}]},
                                 status=500)

    def _written(self, request: web.Request) -> None:
        """A write succeeded: the disk has room again, and a manifest write may add a repository."""
        self.metrics.storage_full = False
        route = _route(_v2_tail(request)) if request.path.startswith("/v2/") else None
        if route is not None and route[0] == "manifest":
            self.catalog_cache.invalidate()

    def _storage_unavailable(self, request: web.Request, e: StorageUnavailable) -> web.Response:
        """503 UNAVAILABLE: the object store failed or refused the registry; clients retry later."""
        log.error("storage unavailable handling %s %s: %s", request.method, request.path, e)
        return self._error_response(OCIError(ErrorCode.UNAVAILABLE, "the registry's storage is unavailable"))

    def _storage_full(self, e: OSError) -> web.Response:
        """507: the client may retry later, and nothing about the request itself was wrong."""
        if not self.metrics.storage_full:
            log.error("storage is full (%s): refusing writes until one succeeds again", os.strerror(e.errno or 0))
        self.metrics.storage_full = True
        return self._error_response(OCIError(ErrorCode.DENIED, STORAGE_FULL_MESSAGE, status=507))

    @staticmethod
    def _error_response(e: OCIError) -> web.Response:
        headers = dict(getattr(e, "headers", {}))
        if getattr(e, "empty", False):
            return web.Response(status=e.status, headers=headers)
        return web.Response(status=e.status, body=error_body(*getattr(e, "all", [e])),
                            content_type="application/json",
                            headers=headers)

    # ---- dispatch --------------------------------------------------------------------------

    async def base(self, request: web.Request) -> web.StreamResponse:
        """end-1: GET /v2/ answers 200 when the client may use the API."""
        if request.method not in READ_METHODS:
            raise OCIError(ErrorCode.UNSUPPORTED, f"{request.method} is not allowed on /v2/", status=405)
        return web.json_response({}, headers=API_HEADERS)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        # Match on the raw path; each part is decoded afterwards and validated before it is used.
        route = _route(_v2_tail(request))
        if route is None:
            raise OCIError(ErrorCode.NAME_UNKNOWN, f"no such endpoint: {request.path[:300]}", status=404)
        kind, params = route
        if kind == "catalog":
            if request.method not in READ_METHODS:
                raise OCIError(ErrorCode.UNSUPPORTED, f"{request.method} is not allowed on /v2/_catalog",
                               status=405)
            return await self.catalog(request)
        _check_name(params["name"])
        handler = (getattr(self, f"{kind}_{request.method.lower()}", None)
                   if request.method in READ_METHODS | WRITE_METHODS else None)
        if handler is None:
            raise OCIError(ErrorCode.UNSUPPORTED, f"{request.method} is not allowed here", status=405)
        result: web.StreamResponse = await handler(request, **params)
        return result

    # ---- blobs -----------------------------------------------------------------------------

    async def _blob(self, name: str, digest: str, *, touch: bool = False) -> tuple[Digest, int]:
        d = _parse_digest(digest)
        size = await self.run(partial(self.storage.blob_size, name, d, touch=touch))
        if size is None:
            raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {d} is not in repository {name}",
                           detail={"digest": str(d)})
        return d, size

    async def blob_head(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        """end-2: HEAD /v2/<name>/blobs/<digest>."""
        d, size = await self._blob(name, digest, touch=True)
        return web.Response(headers={"Content-Length": str(size), "Docker-Content-Digest": str(d),
                                     "Content-Type": mt.OCTET_STREAM, "Accept-Ranges": "bytes"})

    async def blob_get(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        """end-2: GET /v2/<name>/blobs/<digest>, streamed from disk, Range supported."""
        d, size = await self._blob(name, digest)
        headers = {"Docker-Content-Digest": str(d), "Content-Type": mt.OCTET_STREAM, "Accept-Ranges": "bytes"}
        path = self.storage.driver.local_path(blob_key(d))
        if path is None:
            return await self._stream_blob(request, d, size, headers)
        if any(h in request.headers for h in _PARTIAL_OR_CONDITIONAL):
            return web.FileResponse(path, chunk_size=BLOB_CHUNK, headers=headers)
        return await self._send_blob(request, path, d, headers)

    async def _stream_blob(self, request: web.Request, d: Digest, size: int,
                           headers: dict[str, str]) -> web.StreamResponse:
        """A blob from object storage: a redirect to a presigned URL when configured (the bytes
        skip this process), else streamed through, one byte range (`Range: bytes=A-B`) supported."""
        url = await self.run(self.storage.driver.presign, blob_key(d))
        if url is not None:
            return web.Response(status=307, headers={**headers, "Location": url})
        start, length, status = 0, size, 200
        wanted = request.headers.get("Range")
        if wanted is not None:
            span = _byte_range(wanted, size)
            if span is None:
                raise HTTPError(ErrorCode.UNSUPPORTED, f"unsatisfiable range {wanted[:100]!r} of {size} bytes",
                                status=416, headers={"Content-Range": f"bytes */{size}"})
            start, length, status = span[0], span[1] - span[0] + 1, 206
            headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = length
        await response.prepare(request)
        async for piece in self.storage.driver.stream(blob_key(d), start, length):
            await response.write(piece)
        await response.write_eof()
        return response

    async def _send_blob(self, request: web.Request, path: Path, d: Digest,
                         headers: dict[str, str]) -> web.StreamResponse:
        """The whole blob, read in BLOB_CHUNK pieces by a worker (the next read overlaps the send).

        Measured against sendfile: the receiving client copies bytes the server just read
        (in CPU cache) instead of page-cache pages, and pulls ran faster for curl and aiohttp
        clients alike, at about twice sendfile's (small) server CPU. Memory: two pieces.
        """
        try:
            f = await self.run(open, path, "rb", 0)
        except FileNotFoundError:  # deleted by GC or another replica since the check
            raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {d} is not stored", detail={"digest": str(d)}) from None
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[bytes] | None = None
        try:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            response = web.StreamResponse(headers=headers)
            response.content_length = size
            await response.prepare(request)
            offset = 0
            if size:
                pending = loop.run_in_executor(self.executor, os.pread, fd, min(BLOB_CHUNK, size), 0)
            while pending is not None:
                data = await pending
                pending = None
                if not data:
                    raise ConnectionResetError(f"blob {d} ended at {offset} of {size} bytes")
                offset += len(data)
                if offset < size:
                    pending = loop.run_in_executor(self.executor, os.pread, fd, min(BLOB_CHUNK, size - offset),
                                                   offset)
                await response.write(data)
            await response.write_eof()
            return response
        finally:
            if pending is not None and not pending.done():  # never close under a running read
                pending.add_done_callback(lambda _: f.close())
            else:
                f.close()

    async def blob_delete(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        """end-10: DELETE /v2/<name>/blobs/<digest>."""
        d = _parse_digest(digest)
        if not await self.run(self.storage.delete_blob, name, d):
            raise OCIError(ErrorCode.BLOB_UNKNOWN, f"blob {d} is not in repository {name}",
                           detail={"digest": str(d)})
        return web.Response(status=202)

    # ---- uploads ---------------------------------------------------------------------------

    def _session_headers(self, name: str, info: UploadInfo) -> dict[str, str]:
        return {"Location": f"/v2/{name}/blobs/uploads/{info.id}", "Range": _range_header(info.size),
                "Docker-Upload-UUID": info.id, "Blob-Upload-Session-ID": info.id}

    def _created(self, name: str, digest: Digest) -> web.Response:
        return web.Response(status=201, headers={"Location": f"/v2/{name}/blobs/{digest}",
                                                 "Docker-Content-Digest": str(digest)})

    @staticmethod
    def _content_length(request: web.Request) -> int | None:
        value = request.headers.get("Content-Length")
        if value is None:
            return None
        if not _ascii_digits(value):
            raise OCIError(ErrorCode.SIZE_INVALID, f"invalid Content-Length {value[:50]!r}")
        return int(value)

    def _content_range(self, request: web.Request, name: str, info_id: str) -> int | None:
        value = request.headers.get("Content-Range")
        if value is None:
            return None
        m = _CONTENT_RANGE.fullmatch(value.strip())
        length = self._content_length(request)
        if m is None or int(m.group(2)) < int(m.group(1)) or (
                length is not None and length != int(m.group(2)) - int(m.group(1)) + 1):
            raise HTTPError(ErrorCode.BLOB_UPLOAD_INVALID, f"invalid Content-Range {value[:80]!r}",
                            status=416, headers={"Location": f"/v2/{name}/blobs/uploads/{info_id}"})
        return int(m.group(1))

    def _record_upload(self, info_started: float) -> None:
        self.metrics.upload(max(time.time() - info_started, 0.0))

    async def uploads_post(self, request: web.Request, name: str) -> web.StreamResponse:
        """end-4a (session), end-4b (POST-only with ?digest=), end-11 (mount, with or without from)."""
        q = request.query
        if "mount" in q:
            try:
                digest = Digest.parse(q["mount"])
            except DigestError:
                digest = None
            source = q.get("from")
            # Without `from`, finding a holder would walk every repository: answer with a session.
            if digest is not None and source is not None and valid_name(source) and not request.get(NO_MOUNT) and \
                    await self.run(self.storage.mount_blob, name, digest, source):
                return self._created(name, digest)
        if "digest" in q:
            digest = _parse_digest(q["digest"])
            info = await self.uploads.create(name)
            try:
                await self.uploads.complete(name, info.id, digest, request.content,
                                            length=self._content_length(request))
            except BaseException:
                await asyncio.shield(self.run(self.storage.delete_upload, info.id))
                raise
            self._record_upload(info.started)
            return self._created(name, digest)
        info = await self.uploads.create(name)
        return web.Response(status=202, headers=self._session_headers(name, info))

    async def upload_get(self, request: web.Request, name: str, id: str) -> web.StreamResponse:
        """end-13: GET /v2/<name>/blobs/uploads/<reference>: 204 with the Range received so far."""
        info = await self.uploads.status(name, id)
        return web.Response(status=204, headers=self._session_headers(name, info))

    async def upload_patch(self, request: web.Request, name: str, id: str) -> web.StreamResponse:
        """end-5: PATCH a chunk (Content-Range, in order, else 416) or a stream (no Content-Range)."""
        start = self._content_range(request, name, id)
        try:
            info = await self.uploads.append(name, id, request.content, start,
                                             self._content_length(request))
        except RangeMismatch as e:
            raise HTTPError(ErrorCode.BLOB_UPLOAD_INVALID, str(e), status=416,
                            headers=self._session_headers(name, e.info)) from None
        return web.Response(status=202, headers=self._session_headers(name, info))

    async def upload_put(self, request: web.Request, name: str, id: str) -> web.StreamResponse:
        """end-6: PUT ?digest= closes the upload, optionally with a final chunk."""
        if "digest" not in request.query:
            raise OCIError(ErrorCode.DIGEST_INVALID, "the digest query parameter is required to close an upload")
        digest = _parse_digest(request.query["digest"])
        start = self._content_range(request, name, id)
        length = self._content_length(request)
        has_body = request.body_exists and (length is None or length > 0)
        try:
            info = await self.uploads.complete(name, id, digest, request.content if has_body else None, start,
                                               length)
        except RangeMismatch as e:
            raise HTTPError(ErrorCode.BLOB_UPLOAD_INVALID, str(e), status=416,
                            headers=self._session_headers(name, e.info)) from None
        self._record_upload(info.started)
        return self._created(name, digest)

    async def upload_delete(self, request: web.Request, name: str, id: str) -> web.StreamResponse:
        """end-14: DELETE /v2/<name>/blobs/uploads/<reference> cancels the upload."""
        await self.uploads.cancel(name, id)
        return web.Response(status=204)

    # ---- manifests -------------------------------------------------------------------------

    async def _manifest(self, name: str, reference: str) -> StoredManifest:
        if ":" in reference:
            _parse_digest(reference)
        elif not valid_tag(reference):
            raise OCIError(ErrorCode.MANIFEST_INVALID, f"invalid tag {reference[:200]!r}")
        manifest = await self.run(self.storage.get_manifest, name, reference)
        if manifest is None:
            raise OCIError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {reference[:200]} is not in repository {name}",
                           detail={"name": name, "reference": reference[:200]})
        return manifest

    @staticmethod
    def _manifest_headers(m: StoredManifest) -> dict[str, str]:
        return {"Content-Type": m.media_type, "Docker-Content-Digest": str(m.digest),
                "ETag": f'"{m.digest}"'}

    async def manifest_get(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        """end-3: GET /v2/<name>/manifests/<reference> (tag or digest), bytes as pushed."""
        m = await self._manifest(name, reference)
        if self.events is not None:
            self.events.pulled(name, None if ":" in reference else reference, str(m.digest), m.media_type,
                               len(m.body), _identity(request))
        return web.Response(body=m.body, headers=self._manifest_headers(m))

    async def manifest_head(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        """end-3: HEAD /v2/<name>/manifests/<reference>."""
        m = await self._manifest(name, reference)
        return web.Response(headers={**self._manifest_headers(m), "Content-Length": str(len(m.body))})

    async def manifest_put(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        """end-7: PUT /v2/<name>/manifests/<reference>, by tag or by digest with ?tag=."""
        tags: list[str] = []
        ref_digest: Digest | None = None
        if ":" in reference:
            ref_digest = _parse_digest(reference)
        else:
            tags.append(reference)
        tags.extend(request.query.getall("tag", []))
        for tag in tags:
            if not valid_tag(tag):
                raise OCIError(ErrorCode.MANIFEST_INVALID, f"invalid tag {tag[:200]!r}: "
                               "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", detail={"tag": tag[:200]})
        length = self._content_length(request)
        if length is not None and length > mt.MAX_MANIFEST_SIZE:
            raise OCIError(ErrorCode.SIZE_INVALID, f"manifest of {length} bytes exceeds the "
                           f"{mt.MAX_MANIFEST_SIZE} byte limit", status=413)
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > mt.MAX_MANIFEST_SIZE:
                raise OCIError(ErrorCode.SIZE_INVALID, f"manifest exceeds the {mt.MAX_MANIFEST_SIZE} byte limit",
                               status=413)
        data = bytes(body)
        self.metrics.received(len(data))
        if length is not None and len(data) != length:
            raise OCIError(ErrorCode.SIZE_INVALID, f"received {len(data)} bytes, Content-Length says {length}")
        parsed, digest = await self._read_manifest(data, request.headers.get("Content-Type"),
                                                   ref_digest.algorithm if ref_digest else "sha256")
        if ref_digest is not None and digest != ref_digest:
            raise OCIError(ErrorCode.DIGEST_INVALID, f"the manifest's digest is {digest}, not {ref_digest}",
                           detail={"digest": str(ref_digest)})
        manifest = StoredManifest(digest, parsed.media_type, data)
        descriptor = parsed.descriptor(digest, len(data)) if parsed.subject else None
        missing = await self.run(self.storage.push_manifest, name, tags, manifest, parsed.blobs, parsed.children,
                                 parsed.subject, descriptor)
        if missing:
            first, *rest = [OCIError(ErrorCode.MANIFEST_BLOB_UNKNOWN, f"{kind} {d} is not in repository {name}",
                                     detail={"digest": str(d)}) for kind, d in missing]
            raise _MultiError(first, rest)
        if self.events is not None:
            self.events.pushed(name, tags, str(digest), parsed.media_type, len(data), _identity(request))
        headers = {"Location": f"/v2/{name}/manifests/{digest}", "Docker-Content-Digest": str(digest)}
        if parsed.subject is not None:
            headers["OCI-Subject"] = str(parsed.subject)
        return web.Response(status=201, headers=headers)

    async def _read_manifest(self, data: bytes, content_type: str | None,
                             algorithm: str) -> tuple[ParsedManifest, Digest]:
        """Parse and hash a pushed manifest; large ones one at a time in a worker thread.

        Decoding a 4 MiB document takes tens of milliseconds: on the event loop, twenty of them
        at once would hold every other request for a second.
        """
        def read() -> tuple[ParsedManifest, Digest]:
            return parse_manifest(data, content_type), Digest.of(data, algorithm)

        if len(data) < LARGE_MANIFEST:
            return read()
        async with self._large_manifests:
            return await self.run(read)

    async def manifest_delete(self, request: web.Request, name: str, reference: str) -> web.StreamResponse:
        """end-9: DELETE /v2/<name>/manifests/<digest> (the manifest) or <tag> (just the tag)."""
        if ":" in reference:
            d = _parse_digest(reference)
            if not await self.run(self.storage.delete_manifest, name, d):
                raise OCIError(ErrorCode.MANIFEST_UNKNOWN, f"manifest {d} is not in repository {name}",
                               detail={"digest": str(d)})
        else:
            if not valid_tag(reference):
                raise OCIError(ErrorCode.MANIFEST_INVALID, f"invalid tag {reference[:200]!r}")
            if not await self.run(self.storage.delete_tag, name, reference):
                raise OCIError(ErrorCode.MANIFEST_UNKNOWN, f"tag {reference} is not in repository {name}",
                               detail={"tag": reference})
        if self.events is not None:
            tagged = ":" not in reference
            self.events.deleted(name, reference if tagged else None, None if tagged else reference,
                                _identity(request))
        return web.Response(status=202)

    # ---- discovery -------------------------------------------------------------------------

    @staticmethod
    def _page(items: list[str], request: web.Request, path: str) -> tuple[list[str], dict[str, str]]:
        n = _non_negative_int(request.query.get("n"), "n")
        last = request.query.get("last")
        if last:
            items = [i for i in items if i > last]
        headers: dict[str, str] = {}
        if n is not None:
            if len(items) > n and n > 0:
                headers["Link"] = f'<{path}?n={n}&last={items[n - 1]}>; rel="next"'
            items = items[:n]
        return items, headers

    async def tags_get(self, request: web.Request, name: str) -> web.StreamResponse:
        """end-8a/end-8b: GET /v2/<name>/tags/list[?n=<int>&last=<tag>], lexically sorted."""
        tags = await self.run(self.storage.tags, name)
        if tags is None:
            raise OCIError(ErrorCode.NAME_UNKNOWN, f"repository {name} is not known", detail={"name": name})
        page, headers = self._page(tags, request, f"/v2/{name}/tags/list")
        return web.json_response({"name": name, "tags": page}, headers=headers)

    async def catalog(self, request: web.Request) -> web.StreamResponse:
        """GET /v2/_catalog[?n=<int>&last=<name>]: repositories, lexically sorted."""
        repos = await self.catalog_cache.get()
        caller = request.get(CALLER)
        if self.gate is not None and caller is not None:
            gate = self.gate
            repos = [r for r in repos if gate.policy.may(caller.identity, r, "pull")]
        page, headers = self._page(repos, request, "/v2/_catalog")
        return web.json_response({"repositories": page}, headers=headers)

    async def referrers_get(self, request: web.Request, name: str, digest: str) -> web.StreamResponse:
        """end-12a/end-12b: GET /v2/<name>/referrers/<digest>[?artifactType=]: an image index."""
        d = _parse_digest(digest)
        descriptors = await self.run(self.storage.referrers, name, d)
        headers = {}
        artifact_type = _raw_query_value(request, "artifactType")
        if artifact_type is not None:
            descriptors = [x for x in descriptors if x.get("artifactType") == artifact_type]
            headers["OCI-Filters-Applied"] = "artifactType"
        body = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": descriptors}
        return web.Response(body=json.dumps(body).encode(), content_type=mt.OCI_INDEX, headers=headers)

    # ---- operations ------------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.StreamResponse:
        """The token endpoint (`token` configured): see registry.gate."""
        if self.gate is None or self.gate.tokens is None:
            raise OCIError(ErrorCode.NAME_UNKNOWN, "this registry issues no tokens", status=404)
        if request.method not in ("GET", "POST"):
            raise OCIError(ErrorCode.UNSUPPORTED, f"{request.method} is not allowed on {TOKEN_PATH}", status=405)
        return await self.gate.token(request)

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """Ready while pulls can be served: a full or read-only disk still serves every pull."""
        if not await self.run(self.storage.driver.readable):
            return web.Response(status=503, text="storage is not readable\n")
        if await self.run(self.storage.writable):
            return web.Response(text="ok\n")
        return web.Response(text="ok: serving pulls; storage is not writable, so pushes fail\n")

    async def metrics_get(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=self.metrics.render(), content_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff"})

    def application(self, *outer: Middleware) -> web.Application:
        """The aiohttp application; OUTER middlewares (connection bookkeeping) run before the registry's."""
        app = web.Application(middlewares=[*outer, self.middleware], client_max_size=mt.MAX_MANIFEST_SIZE)
        app[REGISTRY] = self
        app.router.add_route("*", "/v2", self.base)
        app.router.add_route("*", "/v2/", self.base)
        app.router.add_route("*", "/v2/{tail:.+}", self.dispatch)
        app.router.add_route("*", TOKEN_PATH, self.token)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_get)
        app.on_cleanup.append(self._shutdown)
        return app

    async def _shutdown(self, app: web.Application) -> None:
        self.pools.shutdown()


def _identity(request: web.Request) -> Identity | None:
    caller = request.get(CALLER)
    return caller.identity if caller is not None else None


class _MultiError(OCIError):
    """Several errors of one response (the spec's errors list)."""

    def __init__(self, first: OCIError, rest: list[OCIError]) -> None:
        super().__init__(first.code, first.message, first.detail, first.status)
        self.all = [first, *rest]
