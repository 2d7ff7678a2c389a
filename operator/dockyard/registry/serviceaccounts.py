"""Kubernetes ServiceAccounts as registry users: a projected token as the password, checked by a TokenReview.

A pod mounts a projected ServiceAccount token with audience `dockyard` and presents it as the
basic-auth password (any user name). The registry asks the API server (TokenReview, the only
permission its own ServiceAccount has) whether the token is valid for that audience and whose
it is; `system:serviceaccount:NS:NAME` becomes the identity NS/NAME that access rules match.
Answers are cached by the token's hash for a minute (failures for ten seconds), in a bounded
cache, so a pull of a hundred layers costs one review.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import time
from collections import OrderedDict
from pathlib import Path

import aiohttp

from dockyard.registry.config import ServiceAccountConfig

USER_PREFIX = "system:serviceaccount:"
CACHE_SIZE = 4096
VALID_SECONDS = 60.0
INVALID_SECONDS = 10.0


class ReviewUnavailable(Exception):
    """The API server could not be asked (the caller answers 503, not 401)."""


def looks_like_token(password: str) -> bool:
    """A JWT (header.payload.signature, base64url): what a ServiceAccount token looks like."""
    return password.startswith("eyJ") and password.count(".") == 2 and len(password) < 16384


class TokenReviewer:
    def __init__(self, cfg: ServiceAccountConfig) -> None:
        self.cfg = cfg
        server = cfg.server
        if server is None:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise ValueError("serviceAccounts: no server given and KUBERNETES_SERVICE_HOST is not set")
            server = f"https://{'[' + host + ']' if ':' in host else host}:{port}"
        self.url = server.rstrip("/") + "/apis/authentication.k8s.io/v1/tokenreviews"
        self._ssl = ssl.create_default_context(cafile=str(cfg.ca_file)) if cfg.ca_file else None
        self._cache: OrderedDict[bytes, tuple[float, str | None]] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    def _own_token(self) -> str:
        return Path(self.cfg.token_file).read_text().strip()  # re-read: the kubelet rotates it

    async def review(self, token: str) -> str | None:
        """NAMESPACE/NAME of the ServiceAccount the token belongs to, or None when it is not valid here."""
        key = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            self._cache.move_to_end(key)
            return hit[1]
        who = await self._ask(token)
        self._cache[key] = (time.monotonic() + (VALID_SECONDS if who else INVALID_SECONDS), who)
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return who

    async def _ask(self, token: str) -> str | None:
        if self._session is None:
            async with self._lock:
                if self._session is None:
                    self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self.cfg.audience]}}
        try:
            own = await asyncio.to_thread(self._own_token)
            async with self._session.post(self.url, json=body, ssl=self._ssl if self._ssl else True,
                                          headers={"Authorization": f"Bearer {own}"}) as r:
                if r.status not in (200, 201):
                    raise ReviewUnavailable(f"TokenReview answered HTTP {r.status}")
                doc = await r.json()
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as e:
            raise ReviewUnavailable(f"TokenReview failed: {type(e).__name__}") from None
        status = doc.get("status") or {}
        username = (status.get("user") or {}).get("username", "")
        if not status.get("authenticated") or self.cfg.audience not in (status.get("audiences") or []):
            return None
        if not username.startswith(USER_PREFIX) or username.count(":") != 3:
            return None
        namespace, name = username[len(USER_PREFIX):].split(":")
        return f"{namespace}/{name}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
