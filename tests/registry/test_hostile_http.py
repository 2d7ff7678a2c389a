"""The registry under hostile or unusual input: malformed headers, Unicode digits, long passwords.

Every test talks to a real `dockyard registry serve` process over a socket, so what is
checked is exactly what a client would receive and what the server would log.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.registry.conftest import Client, write_htpasswd
from tests.registry.processes import RegistryProcess, start_dockyard

CREDENTIALS = base64.b64encode(b"user:pass").decode()  # dXNlcjpwYXNz


def raw_request(server: RegistryProcess, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes as they are (no client library fixing them up) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(payload)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    return received


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    workdir = tmp_path_factory.mktemp("hostile")
    htpasswd = write_htpasswd(workdir / "htpasswd", {"user": "pass"})
    with start_dockyard(workdir / "root", "--htpasswd", str(htpasswd)) as proc:
        yield proc


@pytest.mark.parametrize("header", [
    f"Authorization : Basic {CREDENTIALS}",
    f"Authorization: Basic {CREDENTIALS}\x01",
], ids=["space-before-colon", "control-character"])
def test_malformed_authorization_is_neither_logged_nor_echoed(private: RegistryProcess, header: str) -> None:
    raw = raw_request(private, f"GET /v2/ HTTP/1.1\r\nHost: x\r\n{header}\r\n\r\n".encode("latin-1"))
    status, headers, body = split_response(raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    errors = json.loads(body)["errors"]
    assert errors
    assert {"code", "message"} <= errors[0].keys()
    for secret in (CREDENTIALS.encode(), b"user:pass"):
        assert secret not in raw
    # the server has logged the rejection by now: it wrote the response after logging
    log = private.output()
    assert "malformed" in log
    assert CREDENTIALS not in log
    assert "user:pass" not in log


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    with start_dockyard(tmp_path_factory.mktemp("open") / "root") as proc:
        yield proc


@pytest.mark.parametrize("path", ["/v2/_catalog?n=%C2%B2", "/v2/digits/tags/list?n=%C2%B9",
                                  "/v2/_catalog?n=%EF%BC%91"])
def test_unicode_digits_in_n_are_a_client_error(open_server: RegistryProcess, path: str) -> None:
    c = Client(open_server.url)
    c.push_image("digits", "v1")
    r = c.request("GET", path)
    assert r.status == 400, r.body
    assert r.error_codes() == ["UNSUPPORTED"]


def test_unicode_digits_in_content_length_are_a_client_error(open_server: RegistryProcess) -> None:
    location = Client(open_server.url).start_upload("digits")
    raw = raw_request(open_server, (f"PATCH {location} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                    "Content-Length: \u00b2\r\n\r\nxx").encode())
    status, _, body = split_response(raw)
    assert status == 400
    assert json.loads(body)["errors"][0]["code"]


def _htpasswd_72(path: Path, user: str, password: bytes) -> Path:
    """What `htpasswd -B` writes for a long password: bcrypt reads only its first 72 bytes."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is not None:
        subprocess.run([htpasswd, "-B", "-b", "-c", "-C", "5", str(path), user, password.decode()], check=True,
                       capture_output=True)
    else:
        path.write_text(f"{user}:{bcrypt.hashpw(password[:72], bcrypt.gensalt(rounds=5)).decode()}\n")
    return path


def test_passwords_longer_than_72_bytes_compare_their_first_72(tmp_path: Path) -> None:
    password = b"p" * 40 + b"q" * 40
    htpasswd = _htpasswd_72(tmp_path / "htpasswd", "long", password)
    with start_dockyard(tmp_path / "root", "--htpasswd", str(htpasswd)) as server:
        assert Client(server.url, ("long", password.decode())).request("GET", "/v2/").status == 200
        # as in distribution (Go's bcrypt): bytes past the 72nd are not part of the password
        assert Client(server.url, ("long", password[:72].decode() + "zzzz")).request("GET", "/v2/").status == 200
        assert Client(server.url, ("long", password[:71].decode())).request("GET", "/v2/").status == 401
