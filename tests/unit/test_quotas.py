"""Quotas without a server: the rendered config, its parsing, and the book's arithmetic on a real storage dir."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.oci import Digest, ErrorCode, OCIError
from dockyard.registry.config import ConfigError, QuotaConfig, parse_config
from dockyard.registry.metrics import Metrics, label_value
from dockyard.registry.quotas import QuotaBook, human_bytes
from dockyard.registry.storage import LAYER, MANIFEST, FilesystemStorage
from tests.unit.test_render import RWO, render


def _config(spec: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(render(spec)["ConfigMap"]["data"]["config.yaml"])
    return loaded


def test_quotas_render_as_whole_bytes_and_the_server_reads_them() -> None:
    assert "quotas" not in _config({"storage": RWO})
    config = _config({"storage": RWO, "quotas": [
        {"repositories": ["team-a/**"], "limit": "50Gi"},
        {"repositories": ["team-b/*", "shared"], "limit": "1.5"},
        {"repositories": ["tiny"], "limit": "1500m"},
        {"repositories": ["k"], "limit": "1e3"}]})
    assert config["quotas"] == [
        {"repositories": ["team-a/**"], "limit": 50 * 2**30},
        {"repositories": ["team-b/*", "shared"], "limit": 1},
        {"repositories": ["tiny"], "limit": 1},
        {"repositories": ["k"], "limit": 1000}]
    assert parse_config(config).quotas == (
        QuotaConfig(("team-a/**",), 50 * 2**30), QuotaConfig(("team-b/*", "shared"), 1),
        QuotaConfig(("tiny",), 1), QuotaConfig(("k",), 1000))


def test_a_quota_change_rolls_the_pods() -> None:
    def checksum(limit: str) -> str:
        value: str = render({"storage": RWO, "quotas": [{"repositories": ["a/**"], "limit": limit}]})[
            "Deployment"]["spec"]["template"]["metadata"]["annotations"]["dockyard.dev/checksum"]
        return value

    assert checksum("1Gi") != checksum("2Gi")


@pytest.mark.parametrize(("quotas", "error"), [
    ({"repositories": ["a"], "limit": 1}, "quotas: expected a list of quotas"),
    ([{"repositories": ["a"]}], "quotas[0].limit: is required"),
    ([{"limit": 5}], "quotas[0].repositories: is required"),
    ([{"repositories": [], "limit": 5}], "quotas[0].repositories: must not be empty"),
    ([{"repositories": "a/**", "limit": 5}], "quotas[0].repositories: expected a list"),
    ([{"repositories": ["a"], "limit": 5}, {"repositories": ["[z-a]"], "limit": 5}],
     "quotas[1].repositories: '[z-a]' is not a valid glob"),
    ([{"repositories": ["a"], "limit": "50Gi"}], "quotas[0].limit: expected a number of bytes"),
    ([{"repositories": ["a"], "limit": True}], "quotas[0].limit: expected a number of bytes"),
    ([{"repositories": ["a"], "limit": -1}], "quotas[0].limit: expected a number of bytes"),
    ([{"repositories": ["a"], "limit": 1.5}], "quotas[0].limit: expected a number of bytes"),
    ([{"repositories": ["a"], "limit": 5, "soft": True}], "quotas[0].soft: unknown key"),
    (["a/**"], "quotas[0]: expected a mapping"),
])
def test_bad_quotas_are_refused_naming_the_key(quotas: Any, error: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(error)):
        parse_config({"quotas": quotas})


def test_human_sizes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 200 * 2**20, int(49.9 * 2**30), 50 * 2**30, 2**70)] == [
        "0 B", "1023 B", "1 KiB", "1.5 KiB", "200 MiB", "49.9 GiB", "50 GiB", "1024 EiB"]


def test_metrics_escape_label_values() -> None:
    assert label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    metrics = Metrics()
    metrics.quotas = lambda: [{"repositories": ["team-a/**", 'x"y'], "limit": 10, "used": 3}]
    text = metrics.render()
    assert 'dockyard_registry_quota_used_bytes{quota="1",repositories="team-a/**,x\\"y"} 3\n' in text
    assert 'dockyard_registry_quota_limit_bytes{quota="1",repositories="team-a/**,x\\"y"} 10\n' in text


# ---- the book, on a real storage directory -------------------------------------------------------


def _blob(storage: FilesystemStorage, data: bytes, *repos: str, kind: str = LAYER) -> Digest:
    digest = Digest.of(data)
    path = storage.blob_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    for repo in repos:
        link = storage.revision_path(repo, digest) if kind == MANIFEST else \
            storage.root / "repositories" / repo / "_layers" / digest.algorithm / digest.hex
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text("application/vnd.oci.image.manifest.v1+json" if kind == MANIFEST else "")
    return digest


@pytest.fixture
def storage(tmp_path: Path) -> FilesystemStorage:
    return FilesystemStorage(tmp_path)


def test_the_walk_counts_shared_blobs_once_per_quota(storage: FilesystemStorage) -> None:
    _blob(storage, b"a" * 100, "team-a/app", "team-a/lib", "other")
    _blob(storage, b"b" * 10, "team-a/app", kind=MANIFEST)
    _blob(storage, b"c" * 7, "other")
    dangling = Digest.of(b"gone")
    link = storage.root / "repositories" / "team-a/app/_layers" / dangling.algorithm / dangling.hex
    link.touch()  # GC removed its blob: it holds nothing
    book = QuotaBook(storage, [QuotaConfig(("team-a/**",), 1000), QuotaConfig(("**",), 1000)])
    book.rescan()
    assert book.report() == [{"repositories": ["team-a/**"], "limit": 1000, "used": 110},
                             {"repositories": ["**"], "limit": 1000, "used": 117}]


def test_admissions_in_flight_hold_their_room(storage: FilesystemStorage) -> None:
    book = QuotaBook(storage, [QuotaConfig(("a/*",), 100)])
    book.rescan()
    one, two = Digest.of(b"1"), Digest.of(b"2")
    with book.admit("a/x", one, 60, LAYER):
        with pytest.raises(OCIError) as refused, book.admit("a/y", two, 60, LAYER):
            pass
        with book.admit("a/y", one, 60, LAYER):  # the same blob in flight: no more room needed
            pass
    assert refused.value.code is ErrorCode.DENIED
    assert refused.value.message.startswith("quota 1 (a/*) is 60 B of 100 B; this push needs 60 B more")
    assert book.report()[0]["used"] == 60
    with book.admit("b/x", two, 10**9, LAYER):  # not covered
        pass
    with pytest.raises(RuntimeError), book.admit("a/x", two, 40, LAYER):
        raise RuntimeError("the write failed")
    assert book.report()[0]["used"] == 60, "a failed write counts nothing"
    book.unlinked("a/x", one, LAYER)
    assert book.report()[0]["used"] == 60, "a/y still holds it"
    book.unlinked("a/y", one, LAYER)
    assert book.report()[0]["used"] == 0


class _WritesDuringTheWalk(QuotaBook):
    """A book whose walk is overtaken by this process's own writes."""

    def _walk(self) -> Iterator[tuple[str, Digest, str, int]]:
        found = list(super()._walk())
        new = Digest.of(b"new")
        with self.admit("a/x", new, 5, LAYER):
            pass
        self.unlinked("a/x", Digest.of(b"old"), LAYER)
        yield from found


def test_own_writes_during_a_walk_are_not_lost(storage: FilesystemStorage) -> None:
    _blob(storage, b"old", "a/x")
    book = _WritesDuringTheWalk(storage, [QuotaConfig(("a/*",), 100)])
    book._ready.set()
    book.rescan()
    assert book.report()[0]["used"] == 5
