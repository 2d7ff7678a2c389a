"""The labels every child of a Dockyard object carries.

Children get these and nothing else from their parent: GitOps tools track objects by label,
so copying a Registry's own labels onto its Deployment would make Argo CD or Flux claim it.
"""

from __future__ import annotations

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "dockyard"


def selector_labels(app: str, name: str) -> dict[str, str]:
    """What selects the children of one object: the app and the parent's name."""
    return {NAME_LABEL: app, INSTANCE_LABEL: name}


def labels(app: str, name: str) -> dict[str, str]:
    return {**selector_labels(app, name), MANAGED_BY_LABEL: MANAGER}


def selector_string(app: str, name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(app, name).items())
