"""`dockyard registry serve` (and `make run`) on a taken port: one line naming it and how to pick another."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dockyard.cli", "registry", "serve", "--root", str(tmp_path),
                           *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_taken_port_is_one_line_and_exit_2(tmp_path: Path, how: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        out = serve(tmp_path, "--addr", addr) if how == "flag" else serve(tmp_path, env={"DOCKYARD_ADDR": addr})
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert f"cannot listen on {addr}: the port is taken" in out.stderr
    assert "DOCKYARD_ADDR" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_bad_dockyard_addr_is_named(tmp_path: Path) -> None:
    out = serve(tmp_path, env={"DOCKYARD_ADDR": "localhost"})
    assert out.returncode == 2
    assert "DOCKYARD_ADDR" in out.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_takes_the_address_from_dockyard_addr() -> None:
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "run", "DOCKYARD_ADDR=127.0.0.1:5099"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--addr 127.0.0.1:5099" in out.stdout
