"""OCI primitives shared by the registry server and the replication client.

Pure code only (no I/O): digests, media types, repository name and reference rules and
the Distribution Specification's error codes. Both sides of the wire must agree on these,
so they live in one small module that neither side owns.
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
