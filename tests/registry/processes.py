"""Real registry processes on 127.0.0.1 for tests and benchmarks.

`start_dockyard` runs `dockyard registry serve` from the venv; `start_distribution` runs
Debian's `docker-registry` (CNCF distribution) as the peer, and `start_distribution_s3` runs
it on an S3 server (tests/s3's SeaweedFS). All pick a free port, wait until `/v2/` answers
(with a deadline) and are stopped by the context manager.

`Registries` starts any number of them for one test and stops them all at the end, so a
test names the servers it needs inside its body: a missing `dockyard registry serve` or a
missing tool then shows up as that test's failure (or skip) with a readable reason, instead
of an error deep in a fixture. `skopeo` runs the real skopeo client with an isolated auth
file. Outside of pytest (the benchmark) the same helpers raise `ToolMissing`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from email.message import Message
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

DOCKYARD = str(Path(sys.executable).with_name("dockyard"))
DISTRIBUTION = shutil.which("docker-registry") or "/usr/bin/docker-registry"
PASSWORD_USER = "dockyard"


class ToolMissing(RuntimeError):
    """A registry server or client this code needs is not installed."""


def _under_pytest() -> bool:
    return "pytest" in sys.modules and "PYTEST_CURRENT_TEST" in os.environ


def missing(reason: str) -> NoReturn:
    """Skip the running test for REASON; fail it when CI=true; raise outside of pytest."""
    if not _under_pytest():
        raise ToolMissing(reason)
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing tool is a failure)")
    pytest.skip(reason)


def require_tool(name: str, package: str) -> str:
    """The path of executable NAME, or a visible skip (failure under CI=true)."""
    path = shutil.which(name)
    if not path:
        missing(f"`{name}` is not installed (Debian package `{package}`)")
    return path


@functools.cache
def dockyard_serve_problem() -> str | None:
    """Why `dockyard registry serve` cannot run here, or None when it can."""
    if not Path(DOCKYARD).exists():
        return f"{DOCKYARD} does not exist (run `make venv`)"
    probe = subprocess.run([DOCKYARD, "registry", "serve", "--help"], capture_output=True,
                           timeout=60, check=False)
    if probe.returncode != 0:
        lines = (probe.stderr or probe.stdout).decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit code {probe.returncode}"
    return None


def require_dockyard() -> None:
    """Fail the running test, with the reason, when `dockyard registry serve` is unavailable."""
    problem = dockyard_serve_problem()
    if problem is None:
        return
    reason = f"`dockyard registry serve` is not available: {problem}"
    if not _under_pytest():
        raise ToolMissing(reason)
    import pytest

    pytest.fail(reason, pytrace=False)


def write_htpasswd(path: Path, user: str, password: str) -> Path:
    """An htpasswd file with one bcrypt entry, as `htpasswd -B` writes it."""
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
    path.write_text(f"{user}:{hashed}\n")
    return path


def proc_status(pid: int, field: str) -> int:
    """A `/proc/PID/status` memory field (VmRSS, VmHWM) in bytes; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RegistryProcess:
    """A registry server process; `url` is `http://127.0.0.1:PORT`, `host` is `127.0.0.1:PORT`."""

    def __init__(self, argv: Sequence[str], port: int, root: Path, log: Path,
                 env: Mapping[str, str | None] | None = None, scheme: str = "http") -> None:
        self.argv = list(argv)
        self.port = port
        self.root = root
        self.log = log
        self.host = f"127.0.0.1:{port}"
        self.url = f"{scheme}://{self.host}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> RegistryProcess:
        logf = open(self.log, "ab")  # the child keeps its own descriptor
        env = {k: v for k, v in {**os.environ, **(self.env or {})}.items() if v is not None}  # None: unset
        self.proc = subprocess.Popen(self.argv, stdout=logf, stderr=subprocess.STDOUT, env=env)
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
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # 401 and friends: the server is up
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.argv[0]} not ready on {self.url} after {timeout}s:\n{self.output()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
                       timeout: float = 20.0, descriptor_cache: bool = False) -> RegistryProcess:
    """Debian's `docker-registry` (distribution 2.8) with filesystem storage under ROOT.

    `descriptor_cache` turns on the in-memory blob descriptor cache that Debian's default
    configuration enables: the benchmark measures distribution as it ships.
    """
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    auth = (f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n" if htpasswd else "")
    cache = "  cache:\n    blobdescriptor: inmemory\n" if descriptor_cache else ""
    config = root.parent / f"distribution-{port}.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n{cache}"
        # A fixed secret keeps upload URLs valid across a restart, as in any real deployment.
        f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n"
        + auth
    )
    return RegistryProcess([DISTRIBUTION, "serve", str(config)], port, root,
                           root.parent / f"distribution-{port}.log").start(timeout)


def start_distribution_s3(root: Path, *, endpoint: str, bucket: str, access_key: str, secret_key: str,
                          port: int | None = None, rootdirectory: str = "/distribution",
                          redirect: bool = False, timeout: float = 20.0,
                          descriptor_cache: bool = False) -> RegistryProcess:
    """Debian's `docker-registry` (distribution 2.8) with its `s3` storage driver.

    The objects go to BUCKET under ROOTDIRECTORY on the S3 server at ENDPOINT (plain HTTP,
    SigV4, region us-east-1); ROOT holds only the configuration and the log. With a
    `regionendpoint`, distribution 2.8 addresses buckets by path (it has no `forcepathstyle`
    setting). By default blob GETs are served by distribution itself; with REDIRECT it answers
    them with a redirect to a presigned S3 URL, as it ships. `descriptor_cache` as for
    `start_distribution`. The AWS_* variables of this process
    stay out of its environment: with AWS_CA_BUNDLE set, distribution 2.8 panics at start
    ("LoadCustomCABundleError: ... HTTPClient's transport unsupported type").
    """
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    config = root.parent / f"distribution-s3-{port}.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        "storage:\n"
        f"  s3:\n    regionendpoint: {json.dumps(endpoint)}\n    region: us-east-1\n"
        f"    bucket: {json.dumps(bucket)}\n    accesskey: {json.dumps(access_key)}\n"
        f"    secretkey: {json.dumps(secret_key)}\n    secure: false\n    v4auth: true\n"
        f"    rootdirectory: {json.dumps(rootdirectory)}\n"
        "  delete:\n    enabled: true\n"
        f"  redirect:\n    disable: {json.dumps(not redirect)}\n"
        + ("  cache:\n    blobdescriptor: inmemory\n" if descriptor_cache else "")
        + f"http:\n  addr: 127.0.0.1:{port}\n  secret: {secrets.token_hex(16)}\n"
    )
    aws_env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AWS_")}
    return RegistryProcess([DISTRIBUTION, "serve", str(config)], port, root,
                           root.parent / f"distribution-s3-{port}.log", aws_env).start(timeout)


class Registries:
    """Registry servers for one test; every server started through it is stopped on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[RegistryProcess] = []

    def _root(self, kind: str) -> Path:
        root = self.workdir / f"{kind}-{len(self.started)}" / "root"
        root.parent.mkdir(parents=True, exist_ok=True)
        return root

    def dockyard(self, *extra: str, root: Path | None = None) -> RegistryProcess:
        require_dockyard()
        server = start_dockyard(root or self._root("dockyard"), *extra)
        self.started.append(server)
        return server

    def distribution(self, *, htpasswd: Path | None = None, root: Path | None = None) -> RegistryProcess:
        require_tool("docker-registry", "docker-registry")
        server = start_distribution(root or self._root("distribution"), htpasswd=htpasswd)
        self.started.append(server)
        return server

    def start(self, kind: str, **kwargs: object) -> RegistryProcess:
        """`dockyard` or `distribution` by name, for tests parametrized over both."""
        htpasswd = kwargs.get("htpasswd")
        if kind == "dockyard":
            return self.dockyard(*(["--htpasswd", str(htpasswd)] if htpasswd else []))
        if kind == "distribution":
            assert htpasswd is None or isinstance(htpasswd, Path)
            return self.distribution(htpasswd=htpasswd)
        raise ValueError(f"unknown registry kind {kind!r}")

    def close(self) -> None:
        for server in self.started:
            server.stop()

    def __enter__(self) -> Registries:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def skopeo(*args: str, workdir: Path, check: bool = True, timeout: float = 300,
           resolv_conf: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real skopeo with an auth file of its own (never the user's credentials).

    With RESOLV_CONF, skopeo resolves names with that file instead of /etc/resolv.conf (bound
    over it in a mount namespace of its own: root only), e.g. a cluster's DNS for Service names.
    """
    exe = require_tool("skopeo", "skopeo")
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(workdir / "skopeo-auth.json")}
    argv = [exe, *args]
    if resolv_conf is not None:
        argv = ["unshare", "--mount", "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
                str(resolv_conf), *argv]
    done = subprocess.run(argv, capture_output=True, timeout=timeout, env=env, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} exited with {done.returncode}:\n"
                             f"{done.stderr.decode(errors='replace')}")
    return done


class Response:
    """What a loopback HTTP request returned: status, headers (case-insensitive) and body."""

    def __init__(self, status: int, headers: Message, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def request(method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None,
            auth: tuple[str, str] | None = None, timeout: float = 30) -> Response:
    """One plain HTTP request to a test registry; HTTP errors are returned, not raised."""
    hdrs = dict(headers or {})
    if auth:
        hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return Response(err.code, err.headers, err.read())


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A real small filesystem at DIRECTORY to fill up (needs root; else a skip, or a failure in CI)."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        missing(f"cannot mount a tmpfs to fill up (needs root): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def resize_tmpfs(directory: Path, size: str) -> None:
    """Grow (or shrink) a mounted tmpfs, as a volume expansion grows a PersistentVolume."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(directory)], check=True, capture_output=True)


def fill(path: Path) -> None:
    """Take every byte that is left on PATH's filesystem, so even creating a small file fails."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):  # ENOSPC: go on with smaller writes
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def serve_refuses(config: dict[str, object], workdir: Path) -> str:
    """`dockyard registry serve` with CONFIG must exit 2 with one line on stderr; returns that line."""
    require_dockyard()
    path = workdir / "config.yaml"
    path.write_text(json.dumps(config))
    done = subprocess.run([DOCKYARD, "registry", "serve", "--config", str(path), "--root", str(workdir / "root"),
                           "--addr", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr.strip()
