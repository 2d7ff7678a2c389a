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


async def _update(kube: Kube, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> str | None:
    """Read-modify-write the binding's subjects (retrying conflicts); an error to report, or None."""
    for _ in range(ATTEMPTS):
        binding = await kube.get(RBAC, "ClusterRoleBinding", None, REVIEWER_BINDING)
        if binding is None:
            return (f"the ClusterRoleBinding {REVIEWER_BINDING!r} of the install is missing: re-apply the "
                    "install (manifests/) so the registry may review ServiceAccount tokens")
        subjects = list(binding.get("subjects") or [])
        wanted = change(subjects)
        if wanted == subjects:
            return None
        try:
            await kube.replace({**binding, "subjects": wanted})
            return None
        except ApiError as e:
            if e.status != 409:
                return f"the ClusterRoleBinding {REVIEWER_BINDING!r} could not be updated: {e.message}"
    return f"the ClusterRoleBinding {REVIEWER_BINDING!r} kept changing; will retry"


async def set_reviewer(kube: Kube, namespace: str, name: str, wanted: bool) -> str | None:
    me = subject(namespace, name)
    return await _update(kube, lambda subjects: [s for s in subjects if s != me] + ([me] if wanted else []))


async def prune_reviewers(kube: Kube) -> None:
    """Drop subjects of Registries that are gone or no longer name ServiceAccounts."""
    needed: list[dict[str, str]] = []
    for body in await kube.list(API_VERSION, "Registry", None):
        meta = body.get("metadata") or {}
        try:
            spec = parse(RegistrySpec, body.get("spec"))
        except SpecError:
            continue
        if uses_service_accounts(spec) and not meta.get("deletionTimestamp"):
            needed.append(subject(meta.get("namespace", ""), meta.get("name", "")))
    error = await _update(kube, lambda subjects: [s for s in subjects if s in needed])
    if error:
        log.warning("%s", error)
