"""Digest parsing and hashing: strict enough that a digest is always a safe file name."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.oci import Digest, DigestError, Hasher


def test_parse_sha256_and_sha512() -> None:
    h256 = hashlib.sha256(b"x").hexdigest()
    h512 = hashlib.sha512(b"x").hexdigest()
    assert Digest.parse(f"sha256:{h256}") == Digest("sha256", h256)
    assert str(Digest.parse(f"sha512:{h512}")) == f"sha512:{h512}"


@pytest.mark.parametrize("bad", [
    "", "sha256", "sha256:", ":abc", "sha256:" + "0" * 63, "sha256:" + "0" * 65, "sha256:" + "G" * 64,
    "sha256:" + "A" * 64, "md5:" + "0" * 32, "sha512:" + "0" * 64, "sha256:../" + "0" * 61,
    "SHA256:" + "0" * 64, "sha256:" + "0" * 64 + "\n", "sha256:/" + "0" * 63,
])
def test_invalid_digests_are_rejected(bad: str) -> None:
    with pytest.raises(DigestError):
        Digest.parse(bad)


@given(st.text(max_size=200))
def test_anything_that_parses_is_a_safe_path_component(value: str) -> None:
    try:
        d = Digest.parse(value)
    except DigestError:
        return
    assert d.algorithm in ("sha256", "sha512")
    assert set(d.hex) <= set("0123456789abcdef")
    assert str(d) == value


@given(st.lists(st.binary(max_size=5000), max_size=10), st.sampled_from(["sha256", "sha512"]))
def test_streaming_hasher_equals_one_shot_digest(chunks: list[bytes], algorithm: str) -> None:
    h = Hasher(algorithm)
    for c in chunks:
        h.update(c)
    data = b"".join(chunks)
    assert h.digest() == Digest.of(data, algorithm)
    assert h.size == len(data)
    assert h.verify(Digest.of(data, algorithm))
    assert not h.verify(Digest.of(data + b"x", algorithm))


def test_hasher_copy_is_independent() -> None:
    h = Hasher()
    h.update(b"abc")
    saved = h.copy()
    h.update(b"def")
    assert saved.digest() == Digest.of(b"abc")
    assert saved.size == 3
    assert h.digest() == Digest.of(b"abcdef")


def test_unsupported_algorithm() -> None:
    with pytest.raises(DigestError):
        Hasher("md5")
