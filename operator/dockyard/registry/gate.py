"""Who is calling, and may they: credentials to a caller, a caller and an endpoint to allow or deny.

Credentials come as basic auth (an htpasswd user, or any user name with a ServiceAccount token
as the password when access rules name ServiceAccounts), as a bearer token this registry issued
(with `token` configured), or not at all (anonymous). A token carries, for each repository the
client asked about, every action the access rules allow the caller there. What the caller may do on a repository is
the access policy's answer (`registry.access`), or, for a bearer token, exactly what it grants.

Refusals: a caller without credentials, or with a bearer token that does not grant the action,
gets 401 with a challenge naming the scope it needs (so docker, containerd, skopeo, oras and
helm fetch a token for it); an authenticated basic-auth caller gets 403 DENIED naming the
action and repository. Wrong credentials are a 401 whatever they were.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

from aiohttp import web

from dockyard.oci import ErrorCode, OCIError
from dockyard.registry.access import ANONYMOUS, AccessPolicy, Identity
from dockyard.registry.auth import Htpasswd
from dockyard.registry.serviceaccounts import ReviewUnavailable, TokenReviewer, looks_like_token
from dockyard.registry.tokens import Grant, TokenError, TokenIssuer, parse_scopes

Verify = Callable[[web.Request, str, str], Awaitable[bool]]
TOKEN_PATH = "/token"  # noqa: S105  the endpoint's path, not a secret


class Refused(OCIError):
    """401/403/503 with the headers a client needs to recover (WWW-Authenticate)."""

    def __init__(self, code: ErrorCode, message: str, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(code, message, None, status)
        self.headers = headers or {}
        self.empty = False


@dataclass(frozen=True)
class Caller:
    identity: Identity
    grant: Grant | None = None
    """Set when the request carried a bearer token: then the token alone decides."""


def _identity_of(subject: str) -> Identity:
    kind, _, name = subject.partition(":")
    if kind in ("user", "serviceaccount"):
        return Identity(kind, name)  # type: ignore[arg-type]
    return ANONYMOUS


def _subject_of(identity: Identity) -> str:
    return f"{identity.kind}:{identity.name}"


class Gate:
    def __init__(self, htpasswd: Htpasswd, verify: Verify, policy: AccessPolicy,
                 tokens: TokenIssuer | None = None, reviewer: TokenReviewer | None = None) -> None:
        self.htpasswd = htpasswd
        self.verify = verify
        self.policy = policy
        self.tokens = tokens
        self.reviewer = reviewer

    # ---- callers --------------------------------------------------------------------------------

    async def caller(self, request: web.Request) -> Caller:
        header = request.headers.get("Authorization", "")
        if self.tokens is not None and header[:7].lower() == "bearer ":
            try:
                grant = self.tokens.verify(header[7:].strip())
            except TokenError:
                raise self.challenge(request, None, error="invalid_token",
                                     message="the bearer token is not valid here (expired or not issued by this "
                                             "registry)") from None
            return Caller(_identity_of(grant.subject), grant)
        creds = Htpasswd.parse_header(header or None)
        if creds is None or creds == ("", ""):  # some clients answer a challenge with empty credentials
            return Caller(ANONYMOUS)
        return Caller(await self.identify(request, *creds))

    async def identify(self, request: web.Request, user: str, password: str) -> Identity:
        """The identity basic credentials prove; 401 when they prove none."""
        if self.reviewer is not None and looks_like_token(password):
            try:
                account = await self.reviewer.review(password)
            except ReviewUnavailable as e:
                raise Refused(ErrorCode.UNAVAILABLE, f"cannot check ServiceAccount tokens now: {e}", 503) from None
            if account is None:
                raise self.challenge(request, None, message="the ServiceAccount token is not valid for this "
                                                            "registry (audience dockyard)")
            return Identity("serviceaccount", account)
        ok = self.htpasswd.cached(user, password)  # known answers skip the per-client bcrypt queue
        if not (ok if ok is not None else await self.verify(request, user, password)):
            raise self.challenge(request, None, message="invalid username or password")
        return Identity("user", user)

    # ---- decisions ------------------------------------------------------------------------------

    def may(self, caller: Caller, repository: str, action: str) -> bool:
        if caller.grant is not None:
            return caller.grant.may(repository, action)
        return self.policy.may(caller.identity, repository, action)

    def check(self, request: web.Request, caller: Caller, repository: str, action: str) -> None:
        if self.may(caller, repository, action):
            return
        scope = f"repository:{repository}:{'pull,push' if action == 'push' else action}"
        if caller.grant is not None:
            raise self.challenge(request, scope, error="insufficient_scope",
                                 message=f"the token does not grant {action} on {repository}")
        if not caller.identity.authenticated:
            raise self.challenge(request, scope, message="authentication required")
        raise Refused(ErrorCode.DENIED, f"{caller.identity} may not {action} {repository}", 403)

    def require_login(self, request: web.Request, caller: Caller) -> None:
        """Endpoints for authenticated callers only (the base endpoint, the catalog, upload status)."""
        if not caller.identity.authenticated:
            raise self.challenge(request, None, message="authentication required")

    def challenge(self, request: web.Request, scope: str | None, *, message: str,
                  error: str | None = None) -> Refused:
        if self.tokens is None:
            value = 'Basic realm="dockyard"'
        else:
            value = f'Bearer realm="{_base_url(request)}{TOKEN_PATH}",service="{self.tokens.service}"'
            if scope:
                value += f',scope="{scope}"'
            if error:
                value += f',error="{error}"'
        return Refused(ErrorCode.UNAUTHORIZED, message, 401, {"WWW-Authenticate": value})

    # ---- the token endpoint -----------------------------------------------------------------------

    async def token(self, request: web.Request) -> web.StreamResponse:
        """GET (distribution token) or POST (OAuth2 password grant) /token: a token for the granted scopes."""
        if self.tokens is None:
            raise web.HTTPNotFound()
        if request.method == "POST":
            form = parse_qs((await request.read()).decode("utf-8", "replace"))
            scopes = form.get("scope", [])
            user, password = (form.get("username") or [""])[0], (form.get("password") or [""])[0]
            identity = await self.identify(request, user, password) if user or password else ANONYMOUS
        else:
            scopes = request.query.getall("scope", [])
            identity = (await self.caller(request)).identity
        # Everything the caller may do on each repository asked about, not only the actions asked
        # for: a client that fetched a pull token for its first HEAD can then push with it (oras-py
        # reuses its first token), and the token still grants no more than the credentials do.
        granted = {repo: self.policy.allowed(identity, repo) for repo in parse_scopes(scopes)}
        token, lifetime = self.tokens.issue(_subject_of(identity), {r: a for r, a in granted.items() if a})
        issued = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return web.json_response({"token": token, "access_token": token, "expires_in": lifetime,
                                  "issued_at": issued})


def _base_url(request: web.Request) -> str:
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip()
    scheme = proto if proto in ("http", "https") else ("https" if request.secure else "http")
    return f"{scheme}://{request.host}"
