"""Replication benchmark: `dockyard replicate` against `skopeo sync` on the same data, same run.

N repositories x M tags on a distribution registry; every image shares two base layers with
all others and has one small layer of its own. Each tool copies everything into a fresh
distribution registry on 127.0.0.1 (both as command-line processes, as users run them):

- first copy, seconds (best of the rounds), and the ratio skopeo/dockyard;
- a no-change rerun, seconds, also per 100 tags;
- bytes uploaded to the destination, counted by a TCP relay in a separate pass so the
  timed runs go direct, against the unique blob bytes of the data set.

skopeo runs `skopeo sync --src docker --dest docker --all` once per repository (tls-verify
false), with a fresh HOME so its blob-info cache starts empty, like Dockyard's run does.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.registry.processes import DOCKYARD, RegistryProcess, start_distribution
from tests.replication.helpers import Pusher

TITLE = "dockyard replicate vs skopeo sync"
ORDER = 20
MiB = 1024 * 1024
BASE_LAYERS = (4 * MiB, 1 * MiB)
OWN_LAYER = 256 * 1024
CONCURRENCY = 8

Table = tuple[str, list[str], list[list[str]]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replication-repos", type=int, default=None, help="repositories (default 10, 3 quick)")
    parser.add_argument("--replication-tags", type=int, default=None, help="tags per repository (default 10, 4 quick)")


async def seed(url: str, repos: int, tags: int) -> int:
    """Push the data set; returns its unique blob bytes."""
    rng = random.Random(2024)
    base = [rng.randbytes(n) for n in BASE_LAYERS]
    unique: dict[str, int] = {}
    async with Pusher(url) as p:
        for r in range(repos):
            for t in range(tags):
                image = await p.image(f"app{r}", f"1.{t}.0", [*base, rng.randbytes(OWN_LAYER)])
                unique.update({d: len(b) for d, b in image.blobs.items()})
    return sum(unique.values())


class Relay:
    """A TCP relay counting the bytes clients send upstream (request headers and bodies)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sent = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
        try:
            while data := await reader.read(256 * 1024):
                if count:
                    self.sent += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False))


def dockyard_cmd(src: str, dst: str, work: Path) -> list[str]:
    policy = work / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
        "metadata": {"name": "bench", "namespace": "bench"},
        "spec": {"source": {"url": f"http://{src}"}, "destination": {"url": f"http://{dst}"},
                 "limits": {"concurrency": CONCURRENCY}}}))
    return [DOCKYARD, "replicate", "-f", str(policy), "--state", str(work / "state.json")]


def skopeo_cmds(src: str, dst: str, repos: int) -> list[list[str]]:
    return [["skopeo", "sync", "--src", "docker", "--dest", "docker", "--all", "--src-tls-verify=false",
             "--dest-tls-verify=false", f"{src}/app{r}", f"{dst}/"] for r in range(repos)]


ENGINE_SECONDS: list[float] = []
"""`duration` of each `dockyard replicate` summary: the run without process start-up."""


def timed(cmds: list[list[str]], home: Path) -> float:
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share")}
    started = time.monotonic()
    for cmd in cmds:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed: {(out.stderr or out.stdout).strip()[-500:]}")
        m = re.search(r"duration ([0-9.]+)s", out.stdout)
        if cmd[0] == DOCKYARD and m:
            ENGINE_SECONDS.append(float(m.group(1)))
    return time.monotonic() - started


def tool_cmds(tool: str, src: str, dst: str, work: Path, repos: int) -> list[list[str]]:
    return [dockyard_cmd(src, dst, work)] if tool == "dockyard" else skopeo_cmds(src, dst, repos)


def fmt(seconds: float) -> str:
    return f"{seconds:.2f}"


async def measure(repos: int, tags: int, rounds: int, tmp: Path) -> list[Table]:
    servers: list[RegistryProcess] = []

    def registry(name: str) -> RegistryProcess:
        server = start_distribution(tmp / name / "root")
        servers.append(server)
        return server

    try:
        source = registry("source")
        print(f"  seeding {repos} x {tags} images", file=sys.stderr, flush=True)
        unique = await seed(source.url, repos, tags)
        first: dict[str, list[float]] = {"dockyard": [], "skopeo": []}
        rerun: dict[str, float] = {}
        rerun_engine = float("nan")
        for rnd in range(rounds):
            order = ["dockyard", "skopeo"] if rnd % 2 == 0 else ["skopeo", "dockyard"]
            for tool in order:
                dest = registry(f"{tool}-{rnd}")
                work = tmp / f"work-{tool}-{rnd}"
                work.mkdir()
                cmds = tool_cmds(tool, source.host, dest.host, work, repos)
                first[tool].append(timed(cmds, work))
                print(f"  round {rnd + 1}: {tool} {first[tool][-1]:.2f}s", file=sys.stderr, flush=True)
                if rnd == 0:
                    rerun[tool] = timed(cmds, work)
                    if tool == "dockyard":
                        rerun_engine = ENGINE_SECONDS[-1]
                dest.stop()
        moved: dict[str, int] = {}
        for tool in ("dockyard", "skopeo"):
            dest = registry(f"{tool}-bytes")
            relay = await Relay(dest.port).start()
            work = tmp / f"work-{tool}-bytes"
            work.mkdir()
            await asyncio.to_thread(timed, tool_cmds(tool, source.host, f"127.0.0.1:{relay.port}", work, repos),
                                    work)
            await relay.stop()
            moved[tool] = relay.sent
            dest.stop()
    finally:
        for server in servers:
            server.stop()
    best = {tool: min(times) for tool, times in first.items()}
    count = repos * tags
    rows = [
        [tool, fmt(best[tool]), fmt(rerun[tool]), fmt(rerun[tool] * 100 / count),
         f"{moved[tool] / MiB:.1f}", f"{moved[tool] / unique:.2f}"]
        for tool in ("dockyard", "skopeo")
    ]
    rows.append(["skopeo/dockyard", f"{best['skopeo'] / best['dockyard']:.2f}x",
                 f"{rerun['skopeo'] / rerun['dockyard']:.2f}x", "", "", ""])
    title = (f"replication: {repos} repositories x {tags} tags ({count} images, shared base layers), "
             f"distribution -> distribution on 127.0.0.1, best of {rounds}\n"
             f"  unique blob bytes {unique / MiB:.1f} MiB; dockyard concurrency {CONCURRENCY}; "
             f"bytes uploaded include HTTP headers and manifests\n"
             f"  dockyard no-change rerun without process start-up: {rerun_engine:.2f}s "
             f"({rerun_engine * 100 / count:.2f}s per 100 tags)")
    columns = ["tool", "first copy s", "no-change rerun s", "rerun s/100 tags", "uploaded MiB", "uploaded/unique"]
    return [(title, columns, rows)]


def run(options: argparse.Namespace) -> list[Table]:
    quick = bool(getattr(options, "quick", False))
    repos = getattr(options, "replication_repos", None) or (3 if quick else 10)
    tags = getattr(options, "replication_tags", None) or (4 if quick else 10)
    for tool in ("skopeo", "docker-registry"):
        if not shutil.which(tool):
            raise SystemExit(f"bench/replication.py needs {tool} (apt-get install {tool})")
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-repl-") as tmp:
        return asyncio.run(measure(repos, tags, 1 if quick else 3, Path(tmp)))


def main(quick: bool) -> None:
    """Run the section alone and print its table (bench/run.py does the same for every section)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import render

    for table in run(argparse.Namespace(quick=quick, replication_repos=None, replication_tags=None)):
        print(render(table))


if __name__ == "__main__":
    main("--quick" in sys.argv)
