"""The one adapter through which Dockyard talks to the Kubernetes API.

An async client on aiohttp (no blocking calls in the event loop) with credentials taken from
the same places kubectl and Kopf use: in-cluster service account, else `KUBECONFIG`.
Writes are server-side apply with field manager `dockyard` (force, on objects Dockyard
owns) and merge patches of the status subresource.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from dockyard.api import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"

CORE_PLURALS = {
    "ServiceAccount": "serviceaccounts", "ConfigMap": "configmaps", "Secret": "secrets",
    "Service": "services", "PersistentVolumeClaim": "persistentvolumeclaims", "Event": "events",
    "Deployment": "deployments", "PodDisruptionBudget": "poddisruptionbudgets", "Ingress": "ingresses",
    "Job": "jobs", "CronJob": "cronjobs", "Registry": "registries",
    "ReplicationPolicy": "replicationpolicies", "Role": "roles", "RoleBinding": "rolebindings",
    "Namespace": "namespaces", "ClusterRoleBinding": "clusterrolebindings",
}
NAMESPACE_TERMINATING = "NamespaceTerminating"
"""The cause of the API server's 403 to anything new in a namespace that is being deleted."""


class ApiError(Exception):
    """An error answer of the API server: `status` is the HTTP code, `reason` the Status reason,
    `causes` the reasons of its `details.causes`."""

    def __init__(self, status: int, reason: str, message: str, causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes

    @property
    def namespace_terminating(self) -> bool:
        """Refused because the namespace is being deleted: it takes no new objects."""
        return self.status == 403 and NAMESPACE_TERMINATING in self.causes


def path_of(api_version: str, kind: str, namespace: str | None, name: str | None = None,
            subresource: str | None = None) -> str:
    plural = CORE_PLURALS[kind]
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


@dataclass
class Credentials:
    server: str
    token: str | None = None
    ssl: ssl.SSLContext | bool = True


def _load_credentials() -> Credentials:
    """Blocking (reads files, may run an exec plugin): call it through a thread."""
    from kubernetes import client, config  # the loaders understand every kubeconfig flavour

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    token = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
    sslctx: ssl.SSLContext | bool = True
    if cfg.host.startswith("https"):
        if not cfg.verify_ssl:
            sslctx = False
        else:
            sslctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert) if cfg.ssl_ca_cert \
                else ssl.create_default_context()
            if cfg.cert_file and cfg.key_file:
                sslctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    if token and token.lower().startswith("bearer "):
        token = token[7:]
    return Credentials(server=cfg.host.rstrip("/"), token=token, ssl=sslctx)


class Kube:
    """Typed-enough access to the API: get, apply, patch status, delete, create."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        self._session = aiohttp.ClientSession(
            base_url=credentials.server, headers={"Accept": "application/json", "User-Agent": "dockyard"},
            timeout=aiohttp.ClientTimeout(total=60, sock_connect=10),
            connector=aiohttp.TCPConnector(ssl=credentials.ssl, limit=32))

    @classmethod
    async def from_environment(cls) -> Kube:
        return cls(await asyncio.to_thread(_load_credentials))

    async def close(self) -> None:
        await self._session.close()

    async def _request(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                       body: Any = None, content_type: str = "application/json") -> dict[str, Any] | None:
        data = None if body is None else json.dumps(body)
        for attempt in (1, 2):
            headers = {"Content-Type": content_type} if data is not None else {}
            if self.credentials.token:
                headers["Authorization"] = f"Bearer {self.credentials.token}"
            async with self._session.request(method, path, params=params, data=data, headers=headers) as resp:
                status, reason, text = resp.status, resp.reason, await resp.text()
            if status == 401 and attempt == 1:  # rotated service-account token: load it again
                self.credentials.token = (await asyncio.to_thread(_load_credentials)).token
                continue
            break
        if status == 404 and method == "GET":
            return None
        if status >= 400:
            try:
                answer = json.loads(text)
            except ValueError:
                raise ApiError(status, reason or "", text[:500]) from None
            causes = tuple(str(c.get("reason", "")) for c in (answer.get("details") or {}).get("causes") or [])
            raise ApiError(status, answer.get("reason", ""), answer.get("message", text), causes)
        result: dict[str, Any] = json.loads(text) if text else {}
        return result

    async def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        return await self._request("GET", path_of(api_version, kind, namespace, name))

    async def namespace_terminating(self, name: str) -> bool:
        """Whether the namespace is being deleted, or is gone."""
        namespace = await self.get("v1", "Namespace", None, name)
        return (namespace is None or bool(namespace["metadata"].get("deletionTimestamp"))
                or (namespace.get("status") or {}).get("phase") == "Terminating")

    async def list(self, api_version: str, kind: str, namespace: str | None,
                   label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self._request("GET", path_of(api_version, kind, namespace), params=params)
        return list((result or {}).get("items", []))

    async def apply(self, obj: Mapping[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        """Server-side apply as field manager `dockyard`, taking over conflicting fields."""
        meta = obj["metadata"]
        path = path_of(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"], subresource)
        result = await self._request("PATCH", path, body=obj, content_type=APPLY,
                                     params={"fieldManager": FIELD_MANAGER, "force": "true"})
        assert result is not None
        return result

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str,
                           status: Mapping[str, Any]) -> dict[str, Any]:
        path = path_of(api_version, kind, namespace, name, "status")
        result = await self._request("PATCH", path, body={"status": status}, content_type=MERGE)
        assert result is not None
        return result

    async def replace(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """PUT the whole object; its metadata.resourceVersion makes it fail (409) if it changed meanwhile."""
        meta = obj["metadata"]
        result = await self._request("PUT", path_of(obj["apiVersion"], obj["kind"], meta.get("namespace"),
                                                    meta["name"]), body=obj)
        assert result is not None
        return result

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = path_of(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        result = await self._request("POST", path, body=obj)
        assert result is not None
        return result

    async def delete(self, api_version: str, kind: str, namespace: str, name: str,
                     uid: str | None = None) -> None:
        """Delete (background propagation); with `uid`, only that incarnation of the object."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._request("DELETE", path_of(api_version, kind, namespace, name), body=body)
        except ApiError as e:
            if e.status not in (404, 409):
                raise
