"""Test tooling for replication against real registries: image seeding and a recording proxy.

Images are pushed with plain aiohttp requests (not the client under test), and a small
aiohttp reverse proxy in front of a registry records every request and can inject
failures (429 with Retry-After, cut connections) to exercise the engine's resilience.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from tests.registry.conftest import OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_LAYER, OCI_MANIFEST, digest_of


def random_blob(size: int, rng: random.Random | None = None) -> bytes:
    if rng is None:
        return os.urandom(size)
    return rng.randbytes(size)


@dataclass
class Pushed:
    digest: str
    manifest: bytes
    blobs: dict[str, bytes] = field(default_factory=dict)


class Pusher:
    """Pushes blobs and manifests with plain HTTP (POST + PUT), no auth."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.session.close()

    async def __aenter__(self) -> Pusher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def blob(self, repo: str, data: bytes) -> dict[str, Any]:
        digest = digest_of(data)
        async with self.session.head(f"{self.url}/v2/{repo}/blobs/{digest}") as r:
            if r.status == 200:
                return {"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}
        async with self.session.post(f"{self.url}/v2/{repo}/blobs/uploads/") as r:
            assert r.status == 202, await r.text()
            location = r.headers["Location"]
        if not location.startswith("http"):
            location = self.url + location
        sep = "&" if "?" in location else "?"
        async with self.session.put(f"{location}{sep}digest={digest}", data=io.BytesIO(data),
                                    headers={"Content-Type": "application/octet-stream"}) as r:
            assert r.status == 201, await r.text()
        return {"mediaType": OCI_LAYER, "digest": digest, "size": len(data)}

    async def manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> aiohttp.ClientResponse:
        async with self.session.put(f"{self.url}/v2/{repo}/manifests/{reference}", data=body,
                                    headers={"Content-Type": media_type}) as r:
            assert r.status == 201, await r.text()
            return r

    async def image(self, repo: str, tag: str | None, layers: list[bytes],
                    platform: tuple[str, str] = ("linux", "amd64"), created: str = "2024-01-01T00:00:00Z",
                    subject: dict[str, Any] | None = None, artifact_type: str | None = None) -> Pushed:
        config = json.dumps({"architecture": platform[1], "os": platform[0], "created": created,
                             "rootfs": {"type": "layers", "diff_ids": [digest_of(x) for x in layers]}}).encode()
        cdesc = await self.blob(repo, config)
        cdesc["mediaType"] = OCI_CONFIG
        ldescs = [await self.blob(repo, layer) for layer in layers]
        doc: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cdesc, "layers": ldescs}
        if artifact_type:
            doc["artifactType"] = artifact_type
        if subject:
            doc["subject"] = subject
        body = json.dumps(doc, indent=2).encode()
        digest = digest_of(body)
        await self.manifest(repo, tag or digest, body, OCI_MANIFEST)
        blobs = {cdesc["digest"]: config, **{d["digest"]: x for d, x in zip(ldescs, layers, strict=True)}}
        return Pushed(digest, body, blobs)

    async def index(self, repo: str, tag: str, images: list[tuple[Pushed, tuple[str, str]]]) -> Pushed:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": p.digest, "size": len(p.manifest),
             "platform": {"os": plat[0], "architecture": plat[1]}} for p, plat in images]}
        body = json.dumps(doc, indent=2).encode()
        await self.manifest(repo, tag, body, OCI_INDEX)
        return Pushed(digest_of(body), body)

    async def referrer(self, repo: str, subject: Pushed, artifact_type: str, payload: bytes) -> Pushed:
        """Attach an artifact to `subject`; maintains the sha256-<hex> tag where there is no referrers API."""
        empty = b"{}"
        edesc = await self.blob(repo, empty)
        edesc["mediaType"] = OCI_EMPTY
        ldesc = await self.blob(repo, payload)
        ldesc["mediaType"] = "application/octet-stream"
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type, "config": edesc,
               "layers": [ldesc],
               "subject": {"mediaType": OCI_MANIFEST if b'"layers"' in subject.manifest else OCI_INDEX,
                           "digest": subject.digest, "size": len(subject.manifest)}}
        body = json.dumps(doc).encode()
        digest = digest_of(body)
        async with self.session.put(f"{self.url}/v2/{repo}/manifests/{digest}", data=body,
                                    headers={"Content-Type": OCI_MANIFEST}) as r:
            assert r.status == 201, await r.text()
            has_api = "OCI-Subject" in r.headers
        if not has_api:
            tag = subject.digest.replace(":", "-")
            async with self.session.get(f"{self.url}/v2/{repo}/manifests/{tag}",
                                        headers={"Accept": OCI_INDEX}) as r:
                current: dict[str, Any] = json.loads(await r.read()) if r.status == 200 else {
                    "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
            current["manifests"].append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
                                         "artifactType": artifact_type})
            await self.manifest(repo, tag, json.dumps(current).encode(), OCI_INDEX)
        return Pushed(digest, body)


# ----------------------------------------------------------------------------- reading back


async def fetch_manifest(url: str, repo: str, reference: str) -> tuple[int, bytes, str]:
    async with aiohttp.ClientSession() as s, s.get(
            f"{url}/v2/{repo}/manifests/{reference}",
            headers={"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"}) as r:
        return r.status, await r.read(), r.headers.get("Content-Type", "")


async def fetch_blob(url: str, repo: str, digest: str) -> bytes | None:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v2/{repo}/blobs/{digest}") as r:
        return await r.read() if r.status == 200 else None


async def list_tags(url: str, repo: str) -> list[str]:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/v2/{repo}/tags/list") as r:
        if r.status != 200:
            return []
        return sorted((await r.json()).get("tags") or [])


def skopeo_digest(host: str, repo: str, tag: str) -> str:
    """The digest an independent client (skopeo) sees for a tag."""
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{repo}:{tag}"],
                         check=True, capture_output=True, timeout=60).stdout
    return digest_of(out)


# ----------------------------------------------------------------------------- proxy

Hook = Callable[[web.Request, "RecordingProxy"], Awaitable[web.StreamResponse | None]]


@dataclass
class Record:
    method: str
    path: str
    status: int
    bytes_in: int


class RecordingProxy:
    """A reverse proxy on 127.0.0.1 that records requests; `hook` may answer instead of upstream."""

    def __init__(self, upstream: str, hook: Hook | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.hook = hook
        self.records: list[Record] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> RecordingProxy:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def stop(self) -> None:
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def __aenter__(self) -> RecordingProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def count(self, method: str, path_part: str = "") -> int:
        return sum(1 for r in self.records if r.method == method and path_part in r.path)

    def writes(self) -> list[Record]:
        return [r for r in self.records if r.method in ("PUT", "POST", "PATCH", "DELETE")]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.hook is not None:
            answer = await self.hook(request, self)
            if answer is not None:
                self.records.append(Record(request.method, request.path_qs, answer.status, 0))
                return answer
        body = await request.read()
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                         data=io.BytesIO(body) if body else None, allow_redirects=False) as up:
            payload = await up.read()
            out = web.Response(status=up.status, body=payload if request.method != "HEAD" else None)
            for k, v in up.headers.items():
                if k.lower() in ("content-length", "transfer-encoding", "date", "server", "connection"):
                    continue
                if k.lower() == "location":
                    v = v.replace(self.upstream, self.url)
                out.headers.add(k, v)
            if request.method == "HEAD" and "Content-Length" in up.headers:
                out.headers["Content-Length"] = up.headers["Content-Length"]
        self.records.append(Record(request.method, request.path_qs, up.status, len(body)))
        return out


async def wait_for(predicate: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.02)
