"""Fixtures for the registry conformance suite: a real `dockyard registry serve` process and a
minimal HTTP client that shows exactly what went over the wire (status, headers, bytes).

The client is deliberately plain `http.client`: no retries, redirects or header magic that
could hide a protocol mistake of the server.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.registry.processes import RegistryProcess, start_dockyard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY_CONFIG = b"{}"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


@dataclass
class Response:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error_codes(self) -> list[str]:
        return [e["code"] for e in self.json()["errors"]]

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class Client:
    """One registry's HTTP API over a fresh connection per request."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.auth = auth

    def request(self, method: str, path: str, body: bytes | Iterator[bytes] | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60) -> Response:
        h = dict(headers or {})
        if self.auth and "Authorization" not in h:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            h["Authorization"] = f"Basic {token}"
        if isinstance(body, bytes) and "Content-Length" not in h:
            h["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=h,
                         encode_chunked=body is not None and not isinstance(body, bytes))
            r = conn.getresponse()
            data = r.read()
            return Response(r.status, r.headers, data)
        finally:
            conn.close()

    # --- workflows used by many tests -----------------------------------------------------

    def start_upload(self, name: str) -> str:
        r = self.request("POST", f"/v2/{name}/blobs/uploads/")
        assert r.status == 202, r.body
        location = r.header("Location")
        assert location
        return location

    def push_blob(self, name: str, data: bytes, algorithm: str = "sha256") -> str:
        digest = digest_of(data, algorithm)
        location = self.start_upload(name)
        sep = "&" if "?" in location else "?"
        r = self.request("PUT", f"{location}{sep}digest={digest}", body=data,
                         headers={"Content-Type": "application/octet-stream"})
        assert r.status == 201, r.body
        return digest

    def push_manifest(self, name: str, reference: str, manifest: bytes | dict[str, Any],
                      media_type: str = OCI_MANIFEST) -> Response:
        body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        return self.request("PUT", f"/v2/{name}/manifests/{reference}", body=body,
                            headers={"Content-Type": media_type})

    def push_image(self, name: str, tag: str | None, layers: list[bytes] | None = None,
                   **extra: Any) -> tuple[str, bytes]:
        """Config + layers + manifest; returns (manifest digest, manifest bytes)."""
        layers = [os.urandom(64)] if layers is None else layers
        config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
        manifest = image_manifest(self.push_blob(name, config), len(config),
                                  [(self.push_blob(name, layer), len(layer)) for layer in layers], **extra)
        r = self.push_manifest(name, tag or digest_of(manifest), manifest)
        assert r.status == 201, r.body
        return digest_of(manifest), manifest


def image_manifest(config_digest: str, config_size: int, layers: list[tuple[str, int]],
                   config_type: str = OCI_CONFIG, **extra: Any) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
        **extra,
    }
    return json.dumps(doc, indent=1).encode()


_counter = itertools.count()


@pytest.fixture
def repo() -> str:
    """A fresh repository name per test (the server is shared by a module)."""
    return f"conformance/t{next(_counter)}-{os.getpid()}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root = tmp_path_factory.mktemp("registry") / "root"
    with start_dockyard(root) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: RegistryProcess) -> Client:
    return Client(server.url)


def write_htpasswd(path: Path, users: dict[str, str]) -> Path:
    import bcrypt

    path.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                            for u, p in users.items()))
    return path
