"""Authentication (htpasswd, bcrypt) and read-only maintenance mode, against a real server.

UNAUTHORIZED with `WWW-Authenticate: Basic realm="dockyard"`, anonymous pull with
authenticated push, credential changes picked up without a restart, and DENIED/UNSUPPORTED
writes with a message that says the registry is in maintenance.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from dockyard.registry.auth import Htpasswd
from tests.registry.conftest import Client, digest_of, write_htpasswd
from tests.registry.processes import RegistryProcess, start_dockyard


@pytest.fixture(scope="module")
def htpasswd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_htpasswd(tmp_path_factory.mktemp("auth") / "htpasswd", {"alice": "wonderland", "bob": "builder"})


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory, htpasswd: Path) -> Iterator[RegistryProcess]:
    with start_dockyard(tmp_path_factory.mktemp("private") / "root", "--htpasswd", str(htpasswd)) as p:
        yield p


def _assert_unauthorized(r: object) -> None:
    from tests.registry.conftest import Response

    assert isinstance(r, Response)
    assert r.status == 401
    assert r.header("WWW-Authenticate") == 'Basic realm="dockyard"'
    assert r.error_codes() == ["UNAUTHORIZED"]


def test_every_endpoint_needs_credentials(private: RegistryProcess) -> None:
    anon = Client(private.url)
    for method, path in (("GET", "/v2/"), ("GET", "/v2/a/tags/list"), ("HEAD", "/v2/a/manifests/x"),
                         ("POST", "/v2/a/blobs/uploads/"), ("GET", "/v2/_catalog"),
                         ("GET", f"/v2/a/referrers/{digest_of(b'x')}")):
        r = anon.request(method, path, body=b"" if method == "POST" else None)
        assert r.status == 401, (method, path)
        assert r.header("WWW-Authenticate") == 'Basic realm="dockyard"'
    _assert_unauthorized(anon.request("GET", "/v2/"))


def test_wrong_password_and_unknown_user_are_unauthorized(private: RegistryProcess) -> None:
    _assert_unauthorized(Client(private.url, ("alice", "wrong")).request("GET", "/v2/"))
    _assert_unauthorized(Client(private.url, ("mallory", "wonderland")).request("GET", "/v2/"))
    _assert_unauthorized(Client(private.url).request("GET", "/v2/", headers={"Authorization": "Basic !!!"}))
    _assert_unauthorized(Client(private.url).request("GET", "/v2/", headers={"Authorization": "Bearer abc"}))


def test_valid_user_can_push_and_pull(private: RegistryProcess) -> None:
    alice = Client(private.url, ("alice", "wonderland"))
    assert alice.request("GET", "/v2/").status == 200
    digest, manifest = alice.push_image("team/app", "v1")
    bob = Client(private.url, ("bob", "builder"))
    assert bob.request("GET", f"/v2/team/app/manifests/{digest}").body == manifest


def test_health_and_readiness_need_no_credentials(private: RegistryProcess) -> None:
    anon = Client(private.url)
    assert anon.request("GET", "/healthz").status == 200
    assert anon.request("GET", "/readyz").status == 200


def test_htpasswd_changes_apply_without_restart(tmp_path: Path) -> None:
    path = write_htpasswd(tmp_path / "htpasswd", {"old": "secret1"})
    with start_dockyard(tmp_path / "root", "--htpasswd", str(path)) as server:
        pid = server.proc.pid if server.proc else None
        assert Client(server.url, ("old", "secret1")).request("GET", "/v2/").status == 200
        # replace the file the way a Secret update does: a new file renamed over the old one
        new = write_htpasswd(tmp_path / "htpasswd.new", {"new": "secret2"})
        new.replace(path)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if Client(server.url, ("new", "secret2")).request("GET", "/v2/").status == 200:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the new htpasswd was not picked up within 10s")
        _assert_unauthorized(Client(server.url, ("old", "secret1")).request("GET", "/v2/"))
        assert server.proc is not None
        assert server.proc.pid == pid


def test_anonymous_pull_with_authenticated_push(tmp_path: Path, htpasswd: Path) -> None:
    with start_dockyard(tmp_path / "root", "--htpasswd", str(htpasswd), "--anonymous-pull") as server:
        alice = Client(server.url, ("alice", "wonderland"))
        digest, manifest = alice.push_image("public/app", "v1")
        anon = Client(server.url)
        # the base endpoint still challenges, so clients know to send credentials for a push
        _assert_unauthorized(anon.request("GET", "/v2/"))
        assert anon.request("GET", "/v2/public/app/manifests/v1").body == manifest
        empty = anon.request("GET", "/v2/public/app/manifests/v1", headers={"Authorization": "Basic Og=="})
        assert empty.body == manifest  # ":" (empty user and password) counts as anonymous
        assert anon.request("HEAD", f"/v2/public/app/manifests/{digest}").status == 200
        assert anon.request("GET", "/v2/public/app/tags/list").json()["tags"] == ["v1"]
        _assert_unauthorized(anon.request("POST", "/v2/public/app/blobs/uploads/", body=b""))
        _assert_unauthorized(anon.request("DELETE", f"/v2/public/app/manifests/{digest}"))
        # credentials, when sent, are still checked
        _assert_unauthorized(Client(server.url, ("alice", "bad")).request("GET", "/v2/public/app/tags/list"))


def test_read_only_mode_refuses_writes_with_a_maintenance_message(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        digest, manifest = Client(server.url).push_image("app", "v1")
    with start_dockyard(root, "--read-only") as server:
        c = Client(server.url)
        assert c.request("GET", "/v2/app/manifests/v1").body == manifest
        for method, path, body in (("POST", "/v2/app/blobs/uploads/", b""),
                                   ("PUT", "/v2/app/manifests/v2", manifest),
                                   ("DELETE", f"/v2/app/manifests/{digest}", None),
                                   ("PATCH", "/v2/app/blobs/uploads/" + "0" * 32, b"x")):
            r = c.request(method, path, body=body)
            assert r.status in (403, 405), (method, r.status)
            assert r.error_codes()[0] in ("UNSUPPORTED", "DENIED")
            assert "read-only" in r.json()["errors"][0]["message"]
            assert "maintenance" in r.json()["errors"][0]["message"]
        assert c.request("GET", "/v2/app/manifests/v1").status == 200
        assert c.request("GET", "/v2/app/tags/list").json()["tags"] == ["v1"]


def test_verification_results_are_cached_until_the_file_changes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_htpasswd(tmp_path / "htpasswd", {"u": "p"})
    # htpasswd -B writes $2y$ hashes; they must be accepted too
    path.write_text(path.read_text().replace("$2b$", "$2y$", 1))
    calls = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(1)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    h = Htpasswd(path)
    assert all(h.verify("u", "p") for _ in range(20))
    assert not h.verify("u", "wrong")
    assert len(calls) == 2
    assert h.cached("u", "p") is True
    write_htpasswd(path, {"u": "changed"})
    assert h.reload_if_changed()
    assert h.cached("u", "p") is None
    assert not h.verify("u", "p")
    assert h.verify("u", "changed")
