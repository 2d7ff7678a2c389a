"""The Dockyard API (dockyard.dev/v1alpha1): typed models, defaults, validation, CRDs."""

from dockyard.api.schema import SpecError

GROUP = "dockyard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "dockyard"

__all__ = ["API_VERSION", "FIELD_MANAGER", "GROUP", "VERSION", "SpecError"]
