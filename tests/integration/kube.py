"""A real kube-apiserver for the integration tier, and the requests tests make to it.

Why this module exists: the operator's correctness rests on what a real API server does —
structural schemas and CEL with its cost budget, quantity canonicalisation, server-side apply
and managedFields, the status and scale subresources, owner-reference garbage collection,
RBAC with the operator's own ServiceAccount. ``hack/cluster.sh --control-plane-only`` starts
etcd, kube-apiserver and the kube-controller-manager's garbage collector, namespace and
ServiceAccount controllers (envtest-style, no node); the tests play the other controllers, for
example by reporting a Deployment available through ``/status``.

``ApiServer`` holds one such server for the test session: ``url``, ``kubeconfig`` (an admin
client), ``operator_kubeconfig`` (the ``dockyard-operator`` ServiceAccount of the install, bound
to the install's ClusterRole: the operator runs with exactly the rights it has in a cluster),
``live()`` (a synchronous GET, for predicates), and ``writes()``: the write requests a user made,
read from the API server's audit log.

The request helpers ``create``, ``get``, ``list_objects``, ``patch``, ``apply``, ``delete`` and
``wait_for`` speak HTTP to it as any client would; ``ApiError`` carries a failed request's Status.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import inspect
import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, overload

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")
Body = dict[str, Any]

OPERATOR_USER = "system:serviceaccount:dockyard-system:dockyard-operator"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


@functools.cache
def cluster_bin_dir() -> Path:
    """Where hack/cluster.sh keeps the Kubernetes binaries it builds (kubectl among them)."""
    done = subprocess.run([str(ROOT / "hack" / "cluster.sh"), "bin-dir"], capture_output=True, text=True,
                          timeout=60, check=True)
    return Path(done.stdout.strip())


class Write(NamedTuple):
    """A write request as the API server's audit log recorded it."""
    verb: str
    resource: str  # plural, with "/subresource" when there is one
    namespace: str | None
    name: str | None
    code: int


class ApiError(Exception):
    """A request the API server answered with a failure Status."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.reason = body.get("reason") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{status} {self.reason}: {message}")


@dataclass
class ApiServer:
    """One running API server; see the module docstring."""

    directory: Path
    url: str
    token: str
    ca: Path
    operator_kubeconfig: Path = field(default=Path())
    _ssl: ssl.SSLContext = field(init=False, repr=False)
    _resources: dict[tuple[str, str], tuple[str, bool]] = field(default_factory=dict, repr=False)
    _namespaced: dict[str, bool] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._ssl = ssl.create_default_context(cafile=str(self.ca))

    @classmethod
    def from_directory(cls, directory: Path) -> ApiServer:
        config = yaml.safe_load((directory / "kubeconfig").read_text())
        return cls(directory, config["clusters"][0]["cluster"]["server"],
                   config["users"][0]["user"]["token"], directory / "pki" / "apiserver.crt")

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.directory / "audit.log"

    # -- requests ------------------------------------------------------------------------------

    @asynccontextmanager
    async def request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                      data: bytes | None = None,
                      headers: Mapping[str, str] | None = None) -> AsyncIterator[aiohttp.ClientResponse]:
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        async with aiohttp.ClientSession() as session, session.request(
                method, self.url + path, params=params or {}, data=data, headers=all_headers,
                ssl=self._ssl) as response:
            yield response

    def live(self, resource: str, namespace: str | None, name: str) -> Body | None:
        """GET one object synchronously (for predicates); None when it does not exist."""
        request = urllib.request.Request(self.url + self.path(resource, namespace, name),
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, context=self._ssl, timeout=30) as response:
                found: Body = json.loads(response.read())
                return found
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise ApiError(exc.code, json.loads(exc.read() or b"null")) from None

    def path(self, resource: str, namespace: str | None, name: str | None = None,
             subresource: str | None = None) -> str:
        """The URL path of RESOURCE (``group/version/plural``, ``v1/plural`` for the core group)."""
        *group_version, plural = resource.split("/")
        base = f"/apis/{'/'.join(group_version)}" if len(group_version) == 2 else f"/api/{group_version[0]}"
        if namespace is not None and self._is_namespaced(resource):
            base += f"/namespaces/{namespace}"
        base += f"/{plural}"
        if name is not None:
            base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
        return base

    def _discover(self, group_version: str) -> None:
        prefix = "/api/" if "/" not in group_version else "/apis/"
        request = urllib.request.Request(self.url + prefix + group_version,
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, context=self._ssl, timeout=30) as response:
            listing = json.loads(response.read())
        for res in listing["resources"]:
            if "/" in res["name"]:
                continue
            self._resources[(group_version, res["kind"])] = (f"{group_version}/{res['name']}", res["namespaced"])
            self._namespaced[f"{group_version}/{res['name']}"] = res["namespaced"]

    def _is_namespaced(self, resource: str) -> bool:
        if resource not in self._namespaced:
            self._discover(resource.rsplit("/", 1)[0])
        return self._namespaced.get(resource, True)

    def resource_for(self, api_version: str, kind: str) -> str:
        if (api_version, kind) not in self._resources:
            self._discover(api_version)
        return self._resources[(api_version, kind)][0]

    # -- the audit log -------------------------------------------------------------------------

    def writes(self, since: float = 0.0, *, user: str = OPERATOR_USER) -> list[Write]:
        """USER's write requests that completed after the wall-clock time SINCE (``time.time()``)."""
        found = []
        with self.audit_log.open() as log:
            for line in log:
                event = json.loads(line)
                if event["verb"] not in WRITE_VERBS or event["user"]["username"] != user:
                    continue
                stamp = datetime.datetime.fromisoformat(event["stageTimestamp"].replace("Z", "+00:00"))
                if stamp.timestamp() < since:
                    continue
                ref = event.get("objectRef", {})
                resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
                found.append(Write(event["verb"], resource, ref.get("namespace"), ref.get("name"),
                                   event.get("responseStatus", {}).get("code", 0)))
        return found


async def _call(server: ApiServer, method: str, path: str, *, params: Mapping[str, str] | None = None,
                body: Any = None, content_type: str = "application/json") -> Any:
    data = None if body is None else body.encode() if isinstance(body, str) else json.dumps(body).encode()
    headers = {"Content-Type": content_type, "User-Agent": "dockyard-tests/1"}
    async with server.request(method, path, params=params, data=data, headers=headers) as response:
        text = await response.text()
        payload = json.loads(text) if text else None
        if response.status >= 400:
            raise ApiError(response.status, payload)
        return payload


async def create(server: ApiServer, obj: Body, *, namespace: str | None = None) -> Body:
    """POST an object; its resource is found from apiVersion and kind."""
    resource = server.resource_for(obj["apiVersion"], obj["kind"])
    namespace = namespace or obj.get("metadata", {}).get("namespace")
    result: Body = await _call(server, "POST", server.path(resource, namespace), body=obj)
    return result


async def get(server: ApiServer, resource: str, name: str, namespace: str | None = None, *,
              subresource: str | None = None) -> Body | None:
    """GET one object (or its subresource); None when it does not exist."""
    try:
        result: Body = await _call(server, "GET", server.path(resource, namespace, name, subresource))
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return result


async def list_objects(server: ApiServer, resource: str, namespace: str | None = None, *,
                       label_selector: str | None = None) -> list[Body]:
    params = {"labelSelector": label_selector} if label_selector else {}
    result = await _call(server, "GET", server.path(resource, namespace), params=params)
    items: list[Body] = result["items"]
    return items


async def patch(server: ApiServer, resource: str, name: str, body: Any, namespace: str | None = None, *,
                subresource: str | None = None, content_type: str = "application/merge-patch+json",
                params: Mapping[str, str] | None = None) -> Body:
    """PATCH an object (merge patch unless another content type is given)."""
    result: Body = await _call(server, "PATCH", server.path(resource, namespace, name, subresource),
                               body=body, content_type=content_type, params=params)
    return result


async def apply(server: ApiServer, obj: Body, *, manager: str, force: bool = False,
                subresource: str | None = None) -> Body:
    """Server-side apply an object as the given field manager."""
    resource = server.resource_for(obj["apiVersion"], obj["kind"])
    meta = obj["metadata"]
    params = {"fieldManager": manager, **({"force": "true"} if force else {})}
    return await patch(server, resource, meta["name"], obj, meta.get("namespace"), subresource=subresource,
                       content_type="application/apply-patch+yaml", params=params)


async def delete(server: ApiServer, resource: str, name: str, namespace: str | None = None, *,
                 propagation_policy: str | None = None) -> Body | None:
    """DELETE an object; None when it did not exist."""
    body = {"propagationPolicy": propagation_policy} if propagation_policy else None
    try:
        result: Body = await _call(server, "DELETE", server.path(resource, namespace, name), body=body)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return result


@overload
async def wait_for(predicate: Callable[[], Awaitable[T | None]], timeout: float = ..., *,  # noqa: ASYNC109
                   interval: float = ..., message: str = ...) -> T: ...


@overload
async def wait_for(predicate: Callable[[], T | None], timeout: float = ..., *,  # noqa: ASYNC109
                   interval: float = ..., message: str = ...) -> T: ...


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, *,  # noqa: ASYNC109
                   interval: float = 0.1, message: str = "") -> Any:
    """Poll a (sync or async) predicate until it returns something truthy; return that value.

    The overloads drop None from the result type: a falsy value (None included) is never returned.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        last = result
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(f"condition not met within {timeout}s: {what} (last value: {last!r})")
        await asyncio.sleep(interval)
