"""An async OCI Distribution client: the replication engine's only way to talk to registries.

Covers what copying needs and nothing else: ping, token (Bearer) and basic auth,
catalog and tag listing with pagination, manifests, streamed blob reads, uploads
(monolithic, chunked with resume, cross-repository mount) and the referrers API with
its tag-schema fallback. Sessions, auth, retries and the rate limit are the transport's
(`Transport`); this module only says which requests to make and what their answers mean.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin

import aiohttp

from dockyard.oci import Digest, mediatypes
from dockyard.oci.backoff import RetryPolicy
from dockyard.oci.transport import (
    ConnectError,
    Credentials,
    RegistryError,
    Response,
    Stats,
    Transport,
    error_of,
    log,
    parse_challenge,
    registry_url,
)

__all__ = [
    "MANIFEST_ACCEPT",
    "ConnectError",
    "Credentials",
    "RegistryClient",
    "RegistryError",
    "Response",
    "Transport",
    "WireManifest",
    "log",
    "next_link",
    "parse_challenge",
    "registry_url",
    "with_query",
]

MANIFEST_ACCEPT = ", ".join([
    mediatypes.OCI_INDEX, mediatypes.OCI_MANIFEST, mediatypes.DOCKER_LIST, mediatypes.DOCKER_MANIFEST,
    "application/vnd.oci.artifact.manifest.v1+json",
])


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


def next_link(header: str | None, base: str) -> str | None:
    """The `rel="next"` target of a Link header, absolute."""
    if not header:
        return None
    for part in header.split(","):
        m = re.match(r'\s*<([^>]*)>\s*;\s*rel="?next"?', part)
        if m:
            return str(urljoin(base, m.group(1)))
    return None


class RegistryClient:
    """The OCI Distribution API of one registry, over a `Transport` (session, auth, retries, rate limit)."""

    def __init__(self, url: str, *, credentials: Credentials | None = None, insecure: bool = False,
                 ca_file: str | None = None, retry: RetryPolicy | None = None,
                 requests_per_second: float | None = None, connections: int = 16,
                 stall_timeout: float = 60.0) -> None:
        self.transport = Transport(url, credentials=credentials, insecure=insecure, ca_file=ca_file, retry=retry,
                                   requests_per_second=requests_per_second, connections=connections,
                                   stall_timeout=stall_timeout)
        self.url = self.transport.url
        self.referrers_api: bool | None = None

    @property
    def retry(self) -> RetryPolicy:
        return self.transport.retry

    @property
    def stats(self) -> Stats:
        return self.transport.stats

    @property
    def connect_warned(self) -> bool:
        """A connection failure was logged: the user knows what the run waits for."""
        return self.transport.connect_warned

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def absolute(self, location: str) -> str:
        return self.transport.absolute(location)

    async def call(self, method: str, url: str, *, scope: str, headers: Mapping[str, str] | None = None,
                   data: bytes | None = None, ok: tuple[int, ...] = (200,), retry: bool = True) -> Response:
        """A request whose body is read; retried on 429/5xx/connection errors, re-authenticated on 401.

        Statuses in `ok` and 404 are returned; anything else raises RegistryError.
        """
        if not url.startswith(("http://", "https://")):
            url = self.url + url
        resp, body = await self.transport.request(method, url, scope=scope, headers=headers, data=data,
                                          ok=(*ok, 404), retry=retry)
        return Response(resp.status, resp.headers, body)

    # ------------------------------------------------------------------ listing

    async def ping(self) -> None:
        resp = await self.call("GET", "/v2/", scope="", ok=(200, 401))
        if resp.status == 404:
            raise RegistryError(f"{self.url} is not an OCI registry (/v2/ answered 404)", 404)
        if resp.status == 401:
            self.transport.challenged(resp.headers.get("WWW-Authenticate"), "")

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
            raise error_of("PUT", f"/v2/{repo}/manifests/{reference}", 404, resp.body)
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
        resp, _ = await self.transport.request("GET", f"{self.url}/v2/{repo}/blobs/{digest}", scope=self.scope(repo),
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
            raise error_of("POST", url, 404, resp.body)
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
        return await self.transport.send(method, location, scope=self.scope(repo, True), data=data,
                                         headers=headers, ok=ok)

    async def cancel_upload(self, repo: str, location: str) -> None:
        try:
            await self.call("DELETE", location, scope=self.scope(repo, True), ok=(204, 200, 202, 400, 405),
                            retry=False)
        except RegistryError:
            pass  # an abandoned session expires on the server anyway


def with_query(location: str, **params: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode(params)
