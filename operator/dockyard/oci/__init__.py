"""OCI primitives shared by the registry server and the replication engine.

The package itself is pure (no I/O): digests, media types, repository name and reference
rules, the Distribution Specification's error codes and backoff arithmetic (`backoff`). Both
sides of the wire must agree on these, so they live in one small module that neither side
owns. The async OCI client (`oci.client` over `oci.transport`) is the one part that does
I/O; it is imported explicitly, never from here, so importing `dockyard.oci` stays aiohttp-free.
"""

from dockyard.oci.digest import ALGORITHMS, Digest, DigestError, Hasher
from dockyard.oci.errors import ErrorCode, OCIError
from dockyard.oci.names import (
    MAX_NAME_LENGTH,
    is_digest_reference,
    valid_name,
    valid_reference,
    valid_tag,
)

__all__ = [
    "ALGORITHMS",
    "MAX_NAME_LENGTH",
    "Digest",
    "DigestError",
    "ErrorCode",
    "Hasher",
    "OCIError",
    "is_digest_reference",
    "valid_name",
    "valid_reference",
    "valid_tag",
]
