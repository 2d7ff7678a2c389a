"""An async OCI Distribution client: the replication engine's only way to talk to registries.

Covers what copying needs and nothing else: ping, token (Bearer) and basic auth,
catalog and tag listing with pagination, manifests, streamed blob reads, uploads
(monolithic, chunked with resume, cross-repository mount) and the referrers API with
its tag-schema fallback. Every request goes through one place that applies the rate
limit, retries with backoff honouring Retry-After, and re-authenticates on 401.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from dockyard.oci import Digest, mediatypes
from dockyard.replication.limits import Limiter, RetryPolicy, parse_retry_after

log = logging.getLogger("dockyard.replicate")

# Refused, unresolvable or unreachable: nothing was sent, and waiting long rarely helps (a
# registry restarting comes back within seconds), so these give up after about 3.5 s where
# HTTP errors back off for a minute.
CONNECT_RETRY = RetryPolicy(max=3, backoff=0.5, cap=2.0)
# Seconds a TCP (and TLS) connection may take before the host counts as unreachable.
CONNECT_TIMEOUT = 10.0

MANIFEST_ACCEPT = ", ".join([
    mediatypes.OCI_INDEX, mediatypes.OCI_MANIFEST, mediatypes.DOCKER_LIST, mediatypes.DOCKER_MANIFEST,
    "application/vnd.oci.artifact.manifest.v1+json",
])


class RegistryError(Exception):
    """A request that failed for good; `status` is None for connection-level failures."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    @classmethod
    def parse(cls, text: str) -> Credentials:
        """`user:password` (the password may contain colons)."""
        user, sep, password = text.partition(":")
        if not sep or not user:
            raise ValueError("credentials must be written as user:password")
        return cls(user, password)

    @classmethod
    def from_docker_config(cls, config: Mapping[str, Any] | str, registry_url: str) -> Credentials | None:
        """The entry of a `.dockerconfigjson` for the registry's host, if any."""
        data = json.loads(config) if isinstance(config, str) else config
        auths: Mapping[str, Any] = data.get("auths", {})
        host = urlsplit(registry_url).netloc
        aliases = {host}
        if host in ("registry-1.docker.io", "docker.io", "index.docker.io"):
            aliases |= {"https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io"}
        for key, entry in auths.items():
            key_host = urlsplit(key).netloc if "://" in key else key.split("/")[0]
            if key in aliases or key_host in aliases:
                if entry.get("auth"):
                    return cls.parse(base64.b64decode(entry["auth"]).decode())
                if entry.get("username"):
                    return cls(entry["username"], entry.get("password", ""))
        return None

    def basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


@dataclass
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WireManifest:
    """A manifest as it travels over the wire: media type, exact bytes and their digest."""

    media_type: str
    body: bytes
    digest: str

    def parsed(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.body)
        return doc

    @property
    def is_index(self) -> bool:
        if self.media_type in mediatypes.INDEX_TYPES:
            return True
        return "manifests" in self.parsed() and "layers" not in self.parsed()


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE.findall(rest))


def next_link(header: str | None, base: str) -> str | None:
    """The `rel="next"` target of a Link header, absolute."""
    if not header:
        return None
    for part in header.split(","):
        m = re.match(r'\s*<([^>]*)>\s*;\s*rel="?next"?', part)
        if m:
            return str(urljoin(base, m.group(1)))
    return None


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    retries: int = 0


class RegistryClient:
    """One registry endpoint: base URL, credentials, limits and an aiohttp session."""

    def __init__(self, url: str, *, credentials: Credentials | None = None, insecure: bool = False,
                 ca_file: str | None = None, retry: RetryPolicy | None = None,
                 requests_per_second: float | None = None, connections: int = 16,
                 stall_timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.credentials = credentials
        self.retry = retry or RetryPolicy()
        self.limiter = Limiter(requests_per_second)
        self.stall_timeout = stall_timeout
        self.stats = Stats()
        self._insecure = insecure
        self._ca_file = ca_file
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._basic = False
        self._bearer: dict[str, str] | None = None
        self._tokens: dict[str, tuple[str, float]] = {}
        self._token_locks: dict[str, asyncio.Lock] = {}
        self.referrers_api: bool | None = None
        self.connect_warned = False  # a connection failure was logged: the user knows what we wait for

    # ------------------------------------------------------------------ session

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https://"):
            return False
        if self._insecure:
            return False
        ctx = ssl.create_default_context(cafile=self._ca_file)
        return ctx

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, ssl=self._ssl())
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(self.stall_timeout, CONNECT_TIMEOUT),
                                            sock_read=self.stall_timeout)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                                  auto_decompress=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def absolute(self, location: str) -> str:
        return urljoin(self.url + "/", location)

    # ------------------------------------------------------------------ auth

    async def _auth_header(self, scope: str) -> dict[str, str]:
        if self._bearer is not None:
            cached = self._tokens.get(scope)
            if cached and cached[1] > time.monotonic():
                return {"Authorization": f"Bearer {cached[0]}"}
            return {"Authorization": f"Bearer {await self._token(scope)}"}
        if self._basic and self.credentials:
            return {"Authorization": self.credentials.basic()}
        return {}

    async def _token(self, scope: str) -> str:
        lock = self._token_locks.setdefault(scope, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(scope)
            if cached and cached[1] > time.monotonic():
                return cached[0]
            assert self._bearer is not None
            params: list[tuple[str, str]] = []
            if self._bearer.get("service"):
                params.append(("service", self._bearer["service"]))
            params += [("scope", s) for s in scope.split(" ") if s]
            headers = {"Authorization": self.credentials.basic()} if self.credentials else {}
            url = self._bearer["realm"] + ("&" if "?" in self._bearer["realm"] else "?") + urlencode(params)
            try:
                async with self.session.get(url, headers=headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RegistryError(f"token request to {self._bearer['realm']} failed: HTTP {resp.status}",
                                            resp.status, "UNAUTHORIZED")
            except aiohttp.ClientError as e:
                raise RegistryError(f"token request failed: {e}") from e
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            if not token:
                raise RegistryError("token response has no token", 401, "UNAUTHORIZED")
            ttl = float(doc.get("expires_in") or 60)
            self._tokens[scope] = (token, time.monotonic() + max(ttl - 10, ttl / 2))
            return str(token)

    def _challenged(self, header: str | None, scope: str) -> bool:
        """Learn the auth scheme from a 401; False when retrying cannot help."""
        if not header:
            return False
        scheme, params = parse_challenge(header)
        if scheme == "bearer" and "realm" in params:
            fresh = self._bearer is None or scope in self._tokens
            self._bearer = {"realm": params["realm"], "service": params.get("service", "")}
            self._tokens.pop(scope, None)
            return fresh
        if scheme == "basic" and self.credentials and not self._basic:
            self._basic = True
            return True
        return False

    # ------------------------------------------------------------------ requests

    async def call(self, method: str, url: str, *, scope: str, headers: Mapping[str, str] | None = None,
                   data: bytes | None = None, ok: tuple[int, ...] = (200,), retry: bool = True) -> Response:
        """A request whose body is read; retried on 429/5xx/connection errors, re-authenticated on 401.

        Statuses in `ok` and 404 are returned; anything else raises RegistryError.
        """
        if not url.startswith(("http://", "https://")):
            url = self.url + url
        resp, body = await self._exchange(method, url, scope=scope, headers=headers, data=data,
                                          ok=(*ok, 404), retry=retry)
        return Response(resp.status, resp.headers, body)

    async def _exchange(self, method: str, url: str, *, scope: str, headers: Mapping[str, str] | None = None,
                        data: bytes | None = None, ok: tuple[int, ...], retry: bool = True,
                        stream: bool = False) -> tuple[aiohttp.ClientResponse, bytes]:
        """The one retry loop: rate limit, auth, one re-authentication on 401, backoff on 429/5xx and
        connection errors. A status in `ok` is returned with its body read, or, with `stream`, unread
        (the caller releases the response); anything else raises RegistryError once retries run out.
        """
        attempt = 0
        reauthed = False
        while True:
            await self.limiter.take()
            hdrs = CIMultiDict(headers or {})
            hdrs.update(await self._auth_header(scope))
            self.stats.requests[method] += 1
            status: int | None = None
            retry_after: float | None = None
            try:
                resp = await self.session.request(method, url, headers=hdrs, data=data, allow_redirects=True)
                status = resp.status
                if stream and status in ok:
                    return resp, b""
                try:
                    body = await resp.read()
                finally:
                    resp.release()
                if status == 401 and not reauthed and self._challenged(resp.headers.get("WWW-Authenticate"), scope):
                    reauthed = True
                    continue
                if status in ok:
                    return resp, body
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                error = _error_of(method, url, status, body)
            except _CONNECT_ERRORS as e:
                error = self._cannot_connect(e)
            except (aiohttp.ClientError, TimeoutError) as e:
                error = RegistryError(f"{method} {url}: {type(e).__name__}: {e}")
            attempt += 1
            delay = self._delay(attempt, status, retry_after, error) if retry else None
            if delay is None:
                raise error
            self.stats.retries += 1
            await asyncio.sleep(delay)

    def _cannot_connect(self, e: Exception) -> ConnectError:
        return ConnectError(self.url, connect_reason(e), retryable=not isinstance(e, aiohttp.ClientSSLError))

    def _delay(self, attempt: int, status: int | None, retry_after: float | None,
               error: RegistryError) -> float | None:
        """Seconds before the next attempt, or None to give up; connection errors say so at once."""
        if not isinstance(error, ConnectError):
            return self.retry.delay(attempt, status, retry_after)
        if not error.retryable or attempt > self.retry.max:
            return None
        delay = CONNECT_RETRY.delay(attempt)
        if delay is None:
            error.args = (f"{error}; gave up after {attempt} attempts",)
            return None
        self.connect_warned = True
        log.warning("waiting for %s: %s; retrying in %.1fs (attempt %d of %d)", self.url, error.reason,
                    delay, attempt, CONNECT_RETRY.max + 1)
        return delay

    # ------------------------------------------------------------------ listing

    async def ping(self) -> None:
        resp = await self.call("GET", "/v2/", scope="", ok=(200, 401))
        if resp.status == 404:
            raise RegistryError(f"{self.url} is not an OCI registry (/v2/ answered 404)", 404)
        if resp.status == 401:
            self._challenged(resp.headers.get("WWW-Authenticate"), "")

    async def catalog(self, page: int = 1000) -> list[str]:
        url: str | None = f"{self.url}/v2/_catalog?n={page}"
        names: list[str] = []
        while url:
            resp = await self.call("GET", url, scope="registry:catalog:*")
            if resp.status == 404:
                raise RegistryError(f"{self.url} offers no catalog: list repositories explicitly", 404)
            names.extend(resp.json().get("repositories") or [])
            url = next_link(resp.headers.get("Link"), self.url)
        return names

    async def tags(self, repo: str, *, push: bool = False, page: int = 1000) -> list[str] | None:
        """Every tag of a repository, or None when the repository does not exist."""
        url: str | None = f"{self.url}/v2/{repo}/tags/list?n={page}"
        tags: list[str] = []
        while url:
            resp = await self.call("GET", url, scope=self.scope(repo, push))
            if resp.status == 404:
                return None if not tags else tags
            tags.extend(resp.json().get("tags") or [])
            url = next_link(resp.headers.get("Link"), self.url)
        return tags

    @staticmethod
    def scope(repo: str, push: bool = False) -> str:
        return f"repository:{repo}:{'pull,push' if push else 'pull'}"

    # ------------------------------------------------------------------ manifests

    async def head_manifest(self, repo: str, reference: str, *, push: bool = False) -> str | None:
        """The digest a tag or digest reference resolves to, or None when absent."""
        resp = await self.call("HEAD", f"/v2/{repo}/manifests/{reference}", scope=self.scope(repo, push),
                               headers={"Accept": MANIFEST_ACCEPT})
        if resp.status == 404:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        if digest:
            return digest
        manifest = await self.get_manifest(repo, reference, push=push)
        return manifest.digest if manifest else None

    async def get_manifest(self, repo: str, reference: str, *, push: bool = False) -> WireManifest | None:
        resp = await self.call("GET", f"/v2/{repo}/manifests/{reference}", scope=self.scope(repo, push),
                               headers={"Accept": MANIFEST_ACCEPT})
        if resp.status == 404:
            return None
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if not media_type or media_type in ("application/json", "text/plain"):
            media_type = json.loads(resp.body).get("mediaType", media_type)
        if media_type in (mediatypes.DOCKER_MANIFEST_V1_SIGNED,
                          "application/vnd.docker.distribution.manifest.v1+json"):
            raise RegistryError(f"{repo}:{reference} is a schema 1 manifest, which cannot be copied "
                                "without changing its digest", 415, "UNSUPPORTED")
        algorithm = reference.split(":", 1)[0] if ":" in reference else "sha256"
        digest = str(Digest.of(resp.body, algorithm))
        if ":" in reference and digest != reference:
            raise RegistryError(f"{repo}@{reference}: the registry sent content with digest {digest}",
                                None, "DIGEST_INVALID")
        return WireManifest(media_type, resp.body, digest)

    async def put_manifest(self, repo: str, reference: str, manifest: WireManifest) -> Response:
        """PUT a manifest byte for byte; the response tells whether the referrers API saw a subject."""
        resp = await self.call("PUT", f"/v2/{repo}/manifests/{reference}", scope=self.scope(repo, True),
                               headers={"Content-Type": manifest.media_type}, data=manifest.body,
                               ok=(200, 201, 202))
        if resp.status == 404:
            raise _error_of("PUT", f"/v2/{repo}/manifests/{reference}", 404, resp.body)
        return resp

    async def delete_manifest(self, repo: str, reference: str) -> Response:
        return await self.call("DELETE", f"/v2/{repo}/manifests/{reference}", scope=self.scope(repo, True),
                               ok=(200, 202, 204, 400, 405))

    # ------------------------------------------------------------------ referrers

    async def referrers(self, repo: str, digest: str) -> tuple[list[dict[str, Any]], WireManifest | None]:
        """Descriptors of manifests whose subject is `digest`.

        Uses the referrers API; when the registry does not offer it, reads the tag-schema
        index `sha256-<hex>` instead, which is also returned so it can be copied verbatim.
        """
        if self.referrers_api is not False:
            resp = await self.call("GET", f"/v2/{repo}/referrers/{digest}", scope=self.scope(repo),
                                   headers={"Accept": mediatypes.OCI_INDEX}, ok=(200, 400, 405))
            ctype = resp.headers.get("Content-Type", "")
            if resp.status == 200 and "json" in ctype:
                try:
                    doc = resp.json()
                except ValueError:
                    doc = None
                if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
                    self.referrers_api = True
                    return list(doc["manifests"]), None
            if self.referrers_api is None:
                self.referrers_api = False
        fallback = await self.get_manifest(repo, digest.replace(":", "-", 1))
        if fallback is None:
            return [], None
        return list(fallback.parsed().get("manifests") or []), fallback

    # ------------------------------------------------------------------ blobs

    async def blob_exists(self, repo: str, digest: str) -> bool:
        resp = await self.call("HEAD", f"/v2/{repo}/blobs/{digest}", scope=self.scope(repo, True))
        return resp.status == 200

    async def open_blob(self, repo: str, digest: str, offset: int = 0) -> aiohttp.ClientResponse:
        """A streaming GET of a blob from `offset` (Range); the caller releases the response."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        resp, _ = await self._exchange("GET", f"{self.url}/v2/{repo}/blobs/{digest}", scope=self.scope(repo),
                                       headers=headers, ok=(200, 206), stream=True)
        return resp

    async def start_upload(self, repo: str, *, mount: str | None = None,
                           mount_from: str | None = None) -> tuple[str | None, str]:
        """POST an upload; returns (None, location) for a session, ("mounted", url) when mounted."""
        scope = self.scope(repo, True)
        url = f"/v2/{repo}/blobs/uploads/"
        if mount:
            url += "?" + urlencode({"mount": mount, **({"from": mount_from} if mount_from else {})})
            if mount_from:
                scope += f" repository:{mount_from}:pull"
        resp = await self.call("POST", url, scope=scope, ok=(201, 202))
        if resp.status == 404:
            raise _error_of("POST", url, 404, resp.body)
        location = self.absolute(resp.headers.get("Location", ""))
        return ("mounted" if resp.status == 201 else None), location

    async def upload_status(self, repo: str, location: str) -> int | None:
        """Bytes the server holds for an upload session, or None when the session is gone."""
        resp = await self.call("GET", location, scope=self.scope(repo, True), ok=(204, 200))
        if resp.status == 404:
            return None
        rng = resp.headers.get("Range", "")
        m = re.match(r"(?:bytes=)?0-(\d+)", rng)
        return int(m.group(1)) + 1 if m else 0

    async def send(self, repo: str, method: str, location: str, *, data: Any, headers: Mapping[str, str],
                   ok: tuple[int, ...]) -> Response:
        """One body-carrying upload request, not retried here (the body is a stream)."""
        scope = self.scope(repo, True)
        hdrs = CIMultiDict(headers)
        hdrs.update(await self._auth_header(scope))
        await self.limiter.take()
        self.stats.requests[method] += 1
        try:
            async with self.session.request(method, location, headers=hdrs, data=data) as resp:
                body = await resp.read()
                if resp.status == 401 and scope in self._tokens:
                    # A token that expired during a long upload: the caller resumes with a new one.
                    self._tokens.pop(scope, None)
                    raise RegistryError(f"{method} upload: token expired", None, "TOKEN_EXPIRED")
                if resp.status not in ok:
                    raise _error_of(method, location, resp.status, body)
                return Response(resp.status, resp.headers, body)
        except aiohttp.ClientError as e:
            raise RegistryError(f"{method} upload: {type(e).__name__}: {e}") from e

    async def cancel_upload(self, repo: str, location: str) -> None:
        try:
            await self.call("DELETE", location, scope=self.scope(repo, True), ok=(204, 200, 202, 400, 405),
                            retry=False)
        except RegistryError:
            pass  # an abandoned session expires on the server anyway


_CONNECT_ERRORS: tuple[type[Exception], ...] = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


class ConnectError(RegistryError):
    """The registry could not be reached at all: refused, unresolvable, unreachable or a bad certificate."""

    def __init__(self, url: str, reason: str, *, retryable: bool = True) -> None:
        super().__init__(f"cannot connect to {url}: {reason}")
        self.reason = reason
        self.retryable = retryable


def connect_reason(e: Exception) -> str:
    """Why a connection failed, in words: refused, name not resolved, timed out."""
    import socket

    if isinstance(e, aiohttp.ConnectionTimeoutError):
        return "no answer to the connection attempt (host unreachable or firewalled?)"
    if isinstance(e, aiohttp.ClientSSLError):
        return f"TLS failed: {e}"
    assert isinstance(e, aiohttp.ClientConnectorError)
    os_error = e.os_error
    if isinstance(os_error, socket.gaierror) or isinstance(e, aiohttp.ClientConnectorDNSError):
        return f"the host name {e.host} does not resolve ({os_error.strerror or os_error})"
    if isinstance(os_error, ConnectionRefusedError):
        return f"connection refused (nothing listens on {e.host} port {e.port})"
    return f"{os_error.strerror or os_error} ({e.host} port {e.port})"


def with_query(location: str, **params: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode(params)


def _error_of(method: str, url: str, status: int, body: bytes) -> RegistryError:
    code, message = None, ""
    try:
        errors = json.loads(body).get("errors") or []
        if errors:
            code = errors[0].get("code")
            message = errors[0].get("message", "")
    except (ValueError, AttributeError):
        message = body[:200].decode(errors="replace").strip()
    path = urlsplit(url).path
    text = f"{method} {path}: HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    return RegistryError(text, status, code)
