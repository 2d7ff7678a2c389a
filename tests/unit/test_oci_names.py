"""Repository names, tags and references follow the Distribution Specification's regexes,
and a valid name can never address a path outside the storage root."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockyard.oci import is_digest_reference, valid_name, valid_reference, valid_tag


@pytest.mark.parametrize("name", [
    "a", "library/ubuntu", "my-org/my.app", "a__b", "a---b", "x/y/z/w", "0", "a" * 255, "ab_c/d.e-f",
])
def test_valid_names(name: str) -> None:
    assert valid_name(name)


@pytest.mark.parametrize("name", [
    "", "A", "a/", "/a", "a//b", "a/../b", "..", ".", "a/./b", "-a", "a-", "a.", "_a", "a/_layers",
    "a___b", "a b", "a%2fb", "a" * 256, "a\x00b", "ü", "a:b",
])
def test_invalid_names(name: str) -> None:
    assert not valid_name(name)


@given(st.text(alphabet=st.sampled_from("ab0./_-%:\\ A\x00"), max_size=40))
def test_valid_names_are_safe_relative_paths(name: str) -> None:
    if not valid_name(name):
        return
    parts = name.split("/")
    assert all(p and p not in (".", "..") and not p.startswith(("_", ".", "-")) for p in parts)
    assert not name.startswith("/")


@pytest.mark.parametrize(("tag", "ok"), [
    ("latest", True), ("v1.2.3", True), ("_x", True), ("A-b_c.d", True), ("x" * 128, True),
    ("x" * 129, False), ("-x", False), (".x", False), ("a/b", False), ("", False), ("a:b", False),
])
def test_tags(tag: str, ok: bool) -> None:
    assert valid_tag(tag) is ok


def test_references() -> None:
    digest = "sha256:" + hashlib.sha256(b"").hexdigest()
    assert is_digest_reference(digest)
    assert valid_reference(digest)
    assert not is_digest_reference("latest")
    assert valid_reference("latest")
    assert not valid_reference("sha256:short")
    assert not valid_reference("..")
