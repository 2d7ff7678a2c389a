"""A real S3 server (SeaweedFS's `weed mini`) on 127.0.0.1 for tests and benchmarks.

`start_dockyard_s3` runs `dockyard registry serve` with its storage in a bucket of such a server.

`S3Server` starts `weed mini` (master, volume server, filer and S3 gateway in one process) on
free ports with static credentials, waits until the S3 gateway answers a signed request (with a
deadline), creates buckets with aiobotocore and stops the process. The binary is the one
`hack/s3.sh build` puts in the cache (`hack/s3.sh bin` says where): without it a test skips
with the command to build it, and fails under CI=true.

Two identities: `admin` may do anything; `outsider` holds valid keys with rights on another
bucket only, for access-denied tests.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from tests.registry.processes import DOCKYARD, RegistryProcess, free_port, missing

REPO = Path(__file__).resolve().parents[2]
S3_SH = REPO / "hack" / "s3.sh"
REGION = "us-east-1"
T = TypeVar("T")


@dataclass(frozen=True)
class Identity:
    name: str
    access_key: str
    secret_key: str


@functools.cache
def weed_path() -> Path:
    """Where `hack/s3.sh build` puts `weed` (whether or not it is built yet)."""
    done = subprocess.run([str(S3_SH), "bin"], capture_output=True, text=True, timeout=30, check=True)
    return Path(done.stdout.strip())


def require_weed() -> Path:
    """The built `weed`, or a visible skip (failure under CI=true) naming the command that builds it."""
    path = weed_path()
    if not os.access(path, os.X_OK):
        missing(f"SeaweedFS is not built ({path} is missing): run `hack/s3.sh build` (needs Go)")
    return path


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run COROUTINE to completion from sync code, also while an event loop runs in this thread."""
    result: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


class S3Server:
    """`weed mini` with its S3 gateway on `endpoint` (`http://127.0.0.1:PORT`), data under WORKDIR."""

    _buckets = itertools.count()

    def __init__(self, workdir: Path, weed: Path | None = None, *, bind: str = "127.0.0.1") -> None:
        """BIND is where the S3 gateway listens (0.0.0.0 for pods of the local cluster to reach it);
        SeaweedFS's own servers talk to each other on 127.0.0.1 either way."""
        self.workdir = workdir
        self.bind = bind
        self.weed = weed or require_weed()
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.admin = Identity("admin", "dockyard-admin", secrets.token_hex(16))
        self.outsider = Identity("outsider", "dockyard-outsider", secrets.token_hex(16))
        # A bucket that `outsider` may read; it is never created.
        self.outsider_bucket = f"elsewhere-{secrets.token_hex(4)}"
        self.log = workdir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def access_key(self) -> str:
        return self.admin.access_key

    @property
    def secret_key(self) -> str:
        return self.admin.secret_key

    def argv(self, config: Path) -> list[str]:
        # Every listener on an explicit free port: `weed mini` moves a busy default port elsewhere
        # (racing a concurrent test session), and its default gRPC ports (HTTP port + 10000) may
        # not exist. The admin server runs even without its UI.
        ports = {name: free_port() for name in (
            "master.port", "volume.port", "filer.port", "admin.port",
            "master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc", "admin.port.grpc")}
        return [
            str(self.weed), "mini", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", f"-ip.bind={self.bind}",
            f"-s3.port={self.port}", *(f"-{name}={port}" for name, port in ports.items()),
            f"-s3.config={config}", "-admin.port.legacy=0", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
        ]

    def start(self, timeout: float = 120.0) -> S3Server:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": self.admin.name, "actions": ["Admin", "Read", "List", "Tagging", "Write"],
             "credentials": [{"accessKey": self.admin.access_key, "secretKey": self.admin.secret_key}]},
            {"name": self.outsider.name,
             "actions": [f"Read:{self.outsider_bucket}", f"List:{self.outsider_bucket}"],
             "credentials": [{"accessKey": self.outsider.access_key, "secretKey": self.outsider.secret_key}]},
        ]}))
        # `weed` turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an admin identity: keep them out.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with open(self.log, "ab") as logf:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.argv(config), stdout=logf, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until a signed ListBuckets succeeds: the gateway serves and has loaded the identities."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.output()}")
            if not self._port_answers():
                time.sleep(0.1)
                continue
            try:
                run_sync(self._list_buckets())
                return
            except Exception as err:
                last = repr(err)
                time.sleep(0.2)
        raise TimeoutError(f"weed's S3 gateway not ready on {self.endpoint} after {timeout}s ({last}):\n"
                           f"{self.output()[-4000:]}")

    def _port_answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # 403 to an unsigned request: the gateway serves
        except OSError:
            return False

    async def _list_buckets(self) -> None:
        async with self.client() as s3:
            await s3.list_buckets()

    @asynccontextmanager
    async def client(self, identity: Identity | None = None, *, access_key: str | None = None,
                     secret_key: str | None = None) -> AsyncIterator[Any]:
        """An aiobotocore S3 client for IDENTITY (default `admin`), or for explicit (wrong) keys."""
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        who = identity or self.admin
        config = AioConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                           connect_timeout=5, read_timeout=60)
        async with get_session().create_client(
            "s3", region_name=REGION, endpoint_url=self.endpoint, config=config,
            aws_access_key_id=access_key or who.access_key,
            aws_secret_access_key=secret_key or who.secret_key,
        ) as s3:
            yield s3

    async def create_bucket(self, name: str | None = None) -> str:
        """Create bucket NAME (default: a fresh name) as `admin`; returns its name."""
        name = name or f"dockyard-{next(self._buckets)}-{secrets.token_hex(4)}"
        async with self.client() as s3:
            await s3.create_bucket(Bucket=name)
        return name

    def make_bucket(self) -> str:
        """A fresh, empty bucket's name (callable from sync and async tests alike)."""
        return run_sync(self.create_bucket())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.workdir / "data", ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_dockyard_s3(server: S3Server, root: Path, bucket: str, *extra: str, prefix: str = "registry",
                      access_key: str | None = None, secret_key: str | None = None,
                      endpoint: str | None = None, port: int | None = None, settings: dict[str, Any] | None = None,
                      config: dict[str, Any] | None = None, timeout: float = 20.0) -> RegistryProcess:
    """`dockyard registry serve` with `storage.s3` on SERVER's BUCKET (keys in a credentials directory,
    as the operator mounts them), started and answering on /v2/. ROOT holds the config, the keys and
    the log; several processes may share one ROOT. SETTINGS add to `storage.s3`, CONFIG to the top."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    keys = root / f"s3-credentials-{port}"
    keys.mkdir()
    (keys / "accessKeyId").write_text(access_key or server.access_key)
    (keys / "secretAccessKey").write_text(secret_key or server.secret_key)
    s3 = {"bucket": bucket, "endpoint": endpoint or server.endpoint, "region": REGION, "prefix": prefix,
          "forcePathStyle": True, "credentialsDir": str(keys), **(settings or {})}
    path = root / f"config-{port}.yaml"
    path.write_text(json.dumps({"storage": {"s3": s3}, **(config or {})}))
    argv = [DOCKYARD, "registry", "serve", "--config", str(path), "--root", str(root / f"tmp-{port}"),
            "--addr", f"127.0.0.1:{port}", *extra]
    aws_env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AWS_")}
    return RegistryProcess(argv, port, root, root / f"dockyard-{port}.log", aws_env).start(timeout)
