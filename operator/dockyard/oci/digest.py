"""Content digests (`algorithm:hex`) as the OCI image spec defines them.

Registered algorithms are sha256 and sha512; their encoded parts are lowercase hex of a
fixed length. Anything else is rejected before it reaches a filesystem path, which is why
`Digest.parse` is strict: the hex part becomes a file name in storage.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

# algorithm -> length of the hex-encoded digest
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}

# The grammar of the image spec; registered algorithms are then checked strictly.
_GRAMMAR = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


class DigestError(ValueError):
    """A string that is not a valid digest of a supported algorithm."""


class _Hash(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> _Hash: ...


@dataclass(frozen=True, slots=True)
class Digest:
    """A parsed digest; `str(d)` is the canonical `algorithm:hex` form."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, value: str) -> Digest:
        if not _GRAMMAR.match(value):
            raise DigestError(f"invalid digest {value[:150]!r}: expected algorithm:hex")
        algorithm, _, encoded = value.partition(":")
        length = ALGORITHMS.get(algorithm)
        if length is None:
            raise DigestError(f"unsupported digest algorithm {algorithm[:32]!r} (supported: sha256, sha512)")
        if len(encoded) != length or not re.fullmatch(r"[0-9a-f]+", encoded):
            raise DigestError(f"invalid {algorithm} digest: expected {length} lowercase hex characters")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes | memoryview, algorithm: str = "sha256") -> Digest:
        h = _new(algorithm)
        h.update(data)
        return cls(algorithm, h.hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def _new(algorithm: str) -> _Hash:
    if algorithm not in ALGORITHMS:
        raise DigestError(f"unsupported digest algorithm {algorithm!r}")
    h: _Hash = hashlib.new(algorithm)
    return h


class Hasher:
    """A streaming hasher: feed chunks with `update`, read `digest()` any time."""

    __slots__ = ("_h", "algorithm", "size")

    def __init__(self, algorithm: str = "sha256") -> None:
        self.algorithm = algorithm
        self._h = _new(algorithm)
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._h.hexdigest())

    def copy(self) -> Hasher:
        other = Hasher.__new__(Hasher)
        other.algorithm, other._h, other.size = self.algorithm, self._h.copy(), self.size
        return other

    def verify(self, expected: Digest) -> bool:
        return expected.algorithm == self.algorithm and self._h.hexdigest() == expected.hex
