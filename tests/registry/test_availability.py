"""Staying available under abuse: slow clients, connection floods and descriptor exhaustion.

Each test runs a real `dockyard registry serve` with shortened limits (command line flags) and
waits on conditions with generous deadlines: the deadlines bound liveness, not speed.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry.conftest import Client
from tests.registry.processes import DOCKYARD, RegistryProcess, free_port, start_dockyard


def _connect(server: RegistryProcess, first_bytes: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    if first_bytes:
        s.sendall(first_bytes)
    return s


def _closed_by_server(s: socket.socket, deadline: float) -> bool:
    """True once the server closed the connection (EOF or reset) before DEADLINE (monotonic)."""
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            if s.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


@contextlib.contextmanager
def _sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for s in opened:
            s.close()


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[RegistryProcess]:
    with start_dockyard(tmp_path / "root", "--header-timeout", "1s", "--idle-timeout", "2s",
                        "--body-timeout", "1s", "--max-connections", "40") as proc:
        yield proc


def test_partial_request_headers_are_closed_after_the_header_timeout(strict: RegistryProcess) -> None:
    with _sockets() as conns:
        conns += [_connect(strict, b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow") for _ in range(30)]
        deadline = time.monotonic() + 15
        assert all(_closed_by_server(s, deadline) for s in conns)
    assert Client(strict.url).request("GET", "/v2/").status == 200


def test_idle_connections_are_closed_after_the_idle_timeout(strict: RegistryProcess) -> None:
    with _sockets() as conns:
        conns.append(_connect(strict))
        conns.append(_connect(strict, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"))
        conns[1].settimeout(10)
        assert conns[1].recv(65536).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 15
        assert all(_closed_by_server(s, deadline) for s in conns)


def test_a_stalled_upload_body_is_closed_after_the_body_timeout(strict: RegistryProcess) -> None:
    location = Client(strict.url).start_upload("slow/app")
    with _sockets() as conns:
        conns.append(_connect(strict, (f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                                       "Content-Type: application/octet-stream\r\n\r\n").encode() + b"x" * 10))
        assert _closed_by_server(conns[0], time.monotonic() + 15)
    # the partial chunk was rolled back: the upload is still at offset 0
    deadline = time.monotonic() + 15
    while (r := Client(strict.url).request("GET", location)).header("Range") != "0-0":
        assert time.monotonic() < deadline, r.header("Range")
        time.sleep(0.05)


def test_connections_beyond_the_limit_are_closed_at_accept(strict: RegistryProcess) -> None:
    with _sockets() as conns:
        for _ in range(40):  # each holds a slot: a request in progress, headers not finished
            conns.append(_connect(strict, b"GET /v2/ HTTP/1.1\r\n"))
        extra = _connect(strict, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        conns.append(extra)
        extra.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            assert extra.recv(65536) == b""  # closed without an answer
    deadline = time.monotonic() + 15
    while True:  # the slots free up as the server sees the connections close
        with contextlib.suppress(OSError):
            if Client(strict.url).request("GET", "/v2/", timeout=5).status == 200:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_running_out_of_descriptors_is_logged_once_per_interval(tmp_path: Path) -> None:
    root = tmp_path / "root"
    port = free_port()
    argv = ["prlimit", "--nofile=96:96", "--", DOCKYARD, "registry", "serve", "--root", str(root),
            "--addr", f"127.0.0.1:{port}", "--header-timeout", "30s"]
    with RegistryProcess(argv, port, root, tmp_path / "serve.log").start() as proc, _sockets() as conns:
        for _ in range(300):
            conns.append(_connect(proc, b"GET /v2/ HTTP/1.1\r\n"))
        # the server keeps running: the flood sits in the backlog while descriptors are out
        deadline = time.monotonic() + 15
        while "descriptors" not in proc.output():
            assert proc.alive(), proc.output()[-3000:]
            assert time.monotonic() < deadline, proc.output()[-3000:]
            time.sleep(0.05)
        for s in conns:
            s.close()
        conns.clear()
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError):
                if Client(proc.url).request("GET", "/v2/", timeout=5).status == 200:
                    break
            assert proc.alive(), proc.output()[-3000:]
            assert time.monotonic() < deadline, proc.output()[-3000:]
            time.sleep(0.1)
        log = proc.output()
        assert log.count("Traceback") == 0, log[-3000:]
        assert len([line for line in log.splitlines() if "descriptors" in line]) <= 5, log[-3000:]
