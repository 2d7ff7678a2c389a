"""Which registry pods may ask the API server to review ServiceAccount tokens.

The install ships a ClusterRole that allows only `tokenreviews` `create` and a ClusterRoleBinding
of it with no subjects (`dockyard-registry-tokenreview`). A Registry whose access rules name
ServiceAccounts needs its pods' ServiceAccount among the binding's subjects; the operator adds
it when the rules appear and removes it when they go or the Registry is deleted, and at start-up
drops subjects whose Registry no longer needs them. TokenReview is cluster-scoped, so no
namespaced Role could grant it; the operator holds `bind` on that one ClusterRole and may
update only that one binding.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dockyard.api import API_VERSION, SpecError
from dockyard.api.registry import RegistrySpec
from dockyard.api.schema import parse
from dockyard.controller.kube import ApiError, Kube
from dockyard.render.registry import REVIEWER_BINDING, uses_service_accounts

log = logging.getLogger("dockyard.controller")
RBAC = "rbac.authorization.k8s.io/v1"
ATTEMPTS = 5


def subject(namespace: str, name: str) -> dict[str, str]:
    """The Registry's pods run as a ServiceAccount named like the Registry."""
    return {"kind": "ServiceAccount", "name": name, "namespace": namespace}


def _key(s: dict[str, Any]) -> tuple[str, str]:
    return str(s.get("namespace", "")), str(s.get("name", ""))


class Reviewers:
    """The binding's subjects, kept in step by the one operator that changes them.

    Knowing them saves each reconcile of a Registry that names no ServiceAccount a read of the
    binding; a Registry that does name them, or whose subject the operator added, reads it.
    """

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.members: set[tuple[str, str]] | None = None
        """Registries whose ServiceAccount is a subject; None until the binding was read."""

    async def _update(self, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> str | None:
        """Read-modify-write the binding's subjects (retrying conflicts); an error to report, or None."""
        for _ in range(ATTEMPTS):
            binding = await self.kube.get(RBAC, "ClusterRoleBinding", None, REVIEWER_BINDING)
            if binding is None:
                self.members = None
                return (f"the ClusterRoleBinding {REVIEWER_BINDING!r} of the install is missing: re-apply the "
                        "install (manifests/) so the registry may review ServiceAccount tokens")
            subjects = list(binding.get("subjects") or [])
            wanted = change(subjects)
            try:
                if wanted != subjects:
                    await self.kube.replace({**binding, "subjects": wanted})
            except ApiError as e:
                if e.status != 409:
                    return f"the ClusterRoleBinding {REVIEWER_BINDING!r} could not be updated: {e.message}"
                continue
            self.members = {_key(s) for s in wanted}
            return None
        self.members = None
        return f"the ClusterRoleBinding {REVIEWER_BINDING!r} kept changing; will retry"

    async def set(self, namespace: str, name: str, wanted: bool) -> str | None:
        if not wanted and self.members is not None and (namespace, name) not in self.members:
            return None
        me = subject(namespace, name)
        return await self._update(lambda subjects: [s for s in subjects if s != me] + ([me] if wanted else []))

    async def prune(self) -> None:
        """Drop subjects of Registries that are gone or no longer name ServiceAccounts."""
        needed: list[dict[str, str]] = []
        for body in await self.kube.list(API_VERSION, "Registry", None):
            meta = body.get("metadata") or {}
            try:
                spec = parse(RegistrySpec, body.get("spec"))
            except SpecError:
                continue
            if uses_service_accounts(spec) and not meta.get("deletionTimestamp"):
                needed.append(subject(meta.get("namespace", ""), meta.get("name", "")))
        error = await self._update(lambda subjects: [s for s in subjects if s in needed])
        if error:
            log.warning("%s", error)
