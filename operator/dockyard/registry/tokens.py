"""Bearer tokens: the distribution token flow, with the registry as its own token server.

A client without a token gets `401` with `WWW-Authenticate: Bearer realm="<base>/token",
service="<service>",scope="repository:<name>:<actions>"`. It asks the realm for a token
(`GET /token?service=...&scope=...`, with basic credentials, a ServiceAccount token as the
password, or none), and the registry answers with a JWT (HS256, signed with the key the
operator keeps in a Secret) granting, per requested repository, the requested actions the
access rules allow. Later requests carry `Authorization: Bearer <jwt>`; the registry checks
the signature, the audience (its service name) and the expiry, and allows exactly what the
token grants. Basic credentials keep working on every request.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt

ISSUER = "dockyard"
ALGORITHM = "HS256"
_SCOPE = re.compile(r"repository:(?P<name>[^:]+):(?P<actions>[a-z*,]*)")


class TokenError(Exception):
    """A bearer token that is malformed, forged, expired or meant for another service."""


@dataclass(frozen=True)
class Grant:
    """What one token allows: the subject and the actions per repository."""

    subject: str
    repositories: dict[str, frozenset[str]]

    def may(self, repository: str, action: str) -> bool:
        return action in self.repositories.get(repository, frozenset())


def parse_scopes(values: list[str]) -> dict[str, set[str]]:
    """`repository:NAME:pull,push` scopes (several per value, space separated) to {NAME: actions}.

    Other resource types (`registry:catalog:*`) grant nothing per repository and are ignored:
    the catalog lists what the caller may pull whatever the token says.
    """
    wanted: dict[str, set[str]] = {}
    for value in values:
        for scope in value.split():
            m = _SCOPE.fullmatch(scope)
            if m is None:
                continue
            actions = {"pull", "push", "delete"} if m["actions"] == "*" else set(m["actions"].split(","))
            wanted.setdefault(m["name"], set()).update(a for a in actions if a in ("pull", "push", "delete"))
    return wanted


class TokenIssuer:
    def __init__(self, key: bytes, service: str, lifetime: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        if len(key) < 32:
            raise ValueError("the token signing key must be at least 32 bytes")
        self.key = key
        self.service = service
        self.lifetime = lifetime
        self.clock = clock

    def issue(self, subject: str, granted: dict[str, frozenset[str]]) -> tuple[str, int]:
        """A signed token for `granted`; returns (token, seconds it is valid)."""
        now = int(self.clock())
        claims = {
            "iss": ISSUER, "sub": subject, "aud": self.service, "iat": now, "nbf": now - 5,
            "exp": now + int(self.lifetime), "jti": secrets.token_hex(16),
            "access": [{"type": "repository", "name": name, "actions": sorted(actions)}
                       for name, actions in sorted(granted.items())],
        }
        return jwt.encode(claims, self.key, algorithm=ALGORITHM), int(self.lifetime)

    def verify(self, token: str) -> Grant:
        try:
            claims = jwt.decode(token, self.key, algorithms=[ALGORITHM], audience=self.service, issuer=ISSUER,
                                options={"require": ["exp", "iat", "aud", "iss", "sub"]})
        except jwt.PyJWTError as e:
            raise TokenError(str(e)) from None
        repositories: dict[str, frozenset[str]] = {}
        for entry in claims.get("access") or []:
            if isinstance(entry, dict) and entry.get("type") == "repository" and isinstance(entry.get("name"), str):
                repositories[entry["name"]] = frozenset(a for a in entry.get("actions") or [] if isinstance(a, str))
        return Grant(str(claims["sub"]), repositories)
