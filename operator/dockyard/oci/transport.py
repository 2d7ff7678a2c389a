"""The transport under the OCI client: one registry endpoint's session, auth, retries and rate limit.

Every request goes through `Transport.request`, which retries with `backoff.retry`: it applies the rate
limit, authenticates (Bearer tokens per scope, or basic), re-authenticates once on 401 and
backs off on 429/5xx honouring Retry-After. Connection errors give up after a few short
retries, saying at once what they wait for. The OCI API calls themselves live in the client.
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

from dockyard.oci import backoff
from dockyard.oci.backoff import Attempts, Limiter, RetryPolicy, parse_retry_after

log = logging.getLogger("dockyard.replicate")

# Refused, unresolvable or unreachable: nothing was sent, and waiting long rarely helps (a
# registry restarting comes back within seconds), so these give up after about 3.5 s where
# HTTP errors back off for a minute.
CONNECT_RETRY = RetryPolicy(max=3, backoff=0.5, cap=2.0)
# Seconds a TCP (and TLS) connection may take before the host counts as unreachable.
CONNECT_TIMEOUT = 10.0


_HOST_LABEL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_IPV6 = frozenset("0123456789abcdefABCDEF:.")
# RFC 3986 path characters (unreserved, sub-delims, ':' and '@') and '/'; '%' only starts a %XX escape.
_PATH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@/")
_HEX = frozenset("0123456789abcdefABCDEF")


def registry_url(text: str) -> str:
    """The base URL of a registry as the client uses it (no trailing slash), or ValueError saying why not.

    `http://` or `https://` (lower case: the scheme decides TLS), a host name, IPv4 address or
    [IPv6] address, an optional port 1-65535 and an optional path the API paths are appended to.
    No credentials (they come from a Secret), query or fragment, which the request paths would
    end up inside. The CRD's `url` pattern accepts exactly these (tests/unit/test_replication_admission_fields.py).
    """
    def bad(why: str) -> ValueError:
        return ValueError(f"{text!r} is not a registry URL: {why} (e.g. https://registry.example.com or "
                          "http://10.0.0.5:5000)")

    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise bad("it must start with http:// or https://")
    if "?" in rest or "#" in rest:
        raise bad("a registry URL has no query or fragment")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        raise bad("credentials belong in the policy's secretRef, not in the URL")
    port: str | None = None
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        if not bracket or ":" not in host or not set(host) <= _IPV6:
            raise bad(f"{authority!r} is not a bracketed IPv6 address")
        if after and not after.startswith(":"):
            raise bad(f"{authority!r} is not an address and port")
        port = after[1:] if after else None
    else:
        host, colon, after = authority.partition(":")
        port = after if colon else None
        labels = host.split(".")
        if not all(label and set(label) <= _HOST_LABEL and label[0] != "-" and label[-1] != "-"
                   for label in labels):
            raise bad(f"{host!r} is not a host name or IP address")
    if port is not None and not (port.isascii() and port.isdigit() and port[0] != "0" and int(port) <= 65535):
        raise bad(f"the port must be a number from 1 to 65535, not {port!r}")
    if slash:
        plain, *escaped = path.split("%")
        for piece in escaped:
            if len(piece) < 2 or not set(piece[:2]) <= _HEX:
                raise bad("a % in the path must start a %XX escape")
        if not set(plain).union(*(piece[2:] for piece in escaped)) <= _PATH:
            raise bad("the path may only hold URL path characters (no blanks; %-escape the rest)")
    return text.rstrip("/")


class RegistryError(Exception):
    """A request that failed for good; `status` is None for connection-level failures."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after  # seconds the server asked to wait (Retry-After), if it did


class _Final(Exception):
    """Carries an error out of `Transport.request`'s retry loop untouched (a failed token request)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


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


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE.findall(rest))


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    retries: int = 0


class Transport:
    """One registry endpoint: base URL, credentials, limits and an aiohttp session."""

    def __init__(self, url: str, *, credentials: Credentials | None = None, insecure: bool = False,
                 ca_file: str | None = None, retry: RetryPolicy | None = None,
                 requests_per_second: float | None = None, connections: int = 16,
                 stall_timeout: float = 60.0) -> None:
        self.url = registry_url(url)
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

    def challenged(self, header: str | None, scope: str) -> bool:
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

    async def request(self, method: str, url: str, *, scope: str, headers: Mapping[str, str] | None = None,
                        data: bytes | None = None, ok: tuple[int, ...], retry: bool = True,
                        stream: bool = False) -> tuple[aiohttp.ClientResponse, bytes]:
        """Rate limit, auth, one re-authentication on 401, backoff on 429/5xx and connection errors
        (through `backoff.retry`). A status in `ok` is returned with its body read, or, with `stream`,
        unread (the caller releases the response); anything else raises RegistryError once retries run out.
        """
        reauthed = False

        async def attempt(_: Attempts) -> tuple[aiohttp.ClientResponse, bytes]:
            nonlocal reauthed
            while True:
                await self.limiter.take()
                hdrs = CIMultiDict(headers or {})
                try:
                    hdrs.update(await self._auth_header(scope))
                except Exception as e:  # a failed token request is not retried here
                    raise _Final(e) from e
                self.stats.requests[method] += 1
                try:
                    resp = await self.session.request(method, url, headers=hdrs, data=data, allow_redirects=True)
                    status = resp.status
                    if stream and status in ok:
                        return resp, b""
                    try:
                        body = await resp.read()
                    finally:
                        resp.release()
                except _CONNECT_ERRORS as e:
                    raise self._cannot_connect(e) from None
                except (aiohttp.ClientError, TimeoutError) as e:
                    raise RegistryError(f"{method} {url}: {type(e).__name__}: {e}") from None
                if status == 401 and not reauthed and self.challenged(resp.headers.get("WWW-Authenticate"), scope):
                    reauthed = True
                    continue
                if status in ok:
                    return resp, body
                error = error_of(method, url, status, body)
                error.retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                raise error

        def delay(n: int, error: Exception) -> float | None:
            return self._delay(n, error) if retry and isinstance(error, RegistryError) else None

        async def count(_: Exception) -> None:
            self.stats.retries += 1

        try:
            return await backoff.retry(attempt, delay, recover=count)
        except _Final as final:
            raise final.error from None

    async def send(self, method: str, location: str, *, scope: str, data: Any, headers: Mapping[str, str],
                   ok: tuple[int, ...]) -> Response:
        """One body-carrying upload request, not retried here (the body is a stream)."""
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
                    raise error_of(method, location, resp.status, body)
                return Response(resp.status, resp.headers, body)
        except aiohttp.ClientError as e:
            raise RegistryError(f"{method} upload: {type(e).__name__}: {e}") from e

    def _cannot_connect(self, e: Exception) -> ConnectError:
        return ConnectError(self.url, connect_reason(e), retryable=not isinstance(e, aiohttp.ClientSSLError))

    def _delay(self, attempt: int, error: RegistryError) -> float | None:
        """Seconds before the next attempt, or None to give up; connection errors say so at once."""
        if not isinstance(error, ConnectError):
            return self.retry.delay_for(attempt, error)
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


def error_of(method: str, url: str, status: int, body: bytes) -> RegistryError:
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
