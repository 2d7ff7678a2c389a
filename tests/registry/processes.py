"""Real registry processes on 127.0.0.1 for tests and benchmarks.

`start_dockyard` runs `dockyard registry serve` from the venv; `start_distribution` runs
Debian's `docker-registry` (CNCF distribution) as the peer. Both pick a free port, wait
until `/v2/` answers (with a deadline) and are stopped by the context manager.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

DOCKYARD = str(Path(sys.executable).with_name("dockyard"))
DISTRIBUTION = shutil.which("docker-registry") or "/usr/bin/docker-registry"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RegistryProcess:
    """A registry server process; `url` is `http://127.0.0.1:PORT`, `host` is `127.0.0.1:PORT`."""

    def __init__(self, argv: Sequence[str], port: int, root: Path, log: Path,
                 env: dict[str, str] | None = None, scheme: str = "http") -> None:
        self.argv = list(argv)
        self.port = port
        self.root = root
        self.log = log
        self.host = f"127.0.0.1:{port}"
        self.url = f"{scheme}://{self.host}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> RegistryProcess:
        logf = open(self.log, "ab")  # noqa: SIM115 - owned by the process for its lifetime
        self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(self.env or {})})
        logf.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}:\n{self.output()}")
            try:
                urllib.request.urlopen(f"{self.url}/v2/", timeout=1)  # noqa: S310 - loopback only
                return
            except urllib.error.HTTPError:
                return  # 401 and friends: the server is up
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.argv[0]} not ready on {self.url} after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the crash a power loss or OOM kill would cause."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self, timeout: float = 20.0) -> RegistryProcess:
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> RegistryProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_dockyard(root: Path, *extra: str, port: int | None = None,
                   env: dict[str, str] | None = None, timeout: float = 20.0) -> RegistryProcess:
    """`dockyard registry serve --root ROOT --addr 127.0.0.1:PORT [extra...]`, started and ready."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    scheme = "https" if "--tls-cert" in extra else "http"
    argv = [DOCKYARD, "registry", "serve", "--root", str(root), "--addr", f"127.0.0.1:{port}", *extra]
    return RegistryProcess(argv, port, root, root.parent / f"dockyard-{port}.log", env, scheme).start(timeout)


def start_distribution(root: Path, *, port: int | None = None, htpasswd: Path | None = None,
                       timeout: float = 20.0) -> RegistryProcess:
    """Debian's `docker-registry` (distribution 2.8) with filesystem storage under ROOT."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    auth = (f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n" if htpasswd else "")
    config = root.parent / f"distribution-{port}.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        + auth
    )
    return RegistryProcess([DISTRIBUTION, "serve", str(config)], port, root,
                           root.parent / f"distribution-{port}.log").start(timeout)
