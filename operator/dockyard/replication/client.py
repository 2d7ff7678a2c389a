"""The replication engine's OCI client, which lives in `dockyard.oci.client` (the registry server may use it too)."""

from dockyard.oci.client import (
    MANIFEST_ACCEPT,
    ConnectError,
    Credentials,
    RegistryClient,
    RegistryError,
    Response,
    Transport,
    WireManifest,
    log,
    next_link,
    parse_challenge,
    with_query,
)

__all__ = [
    "MANIFEST_ACCEPT",
    "ConnectError",
    "Credentials",
    "RegistryClient",
    "RegistryError",
    "Response",
    "Transport",
    "WireManifest",
    "log",
    "next_link",
    "parse_challenge",
    "with_query",
]
