"""S3 benchmark: `dockyard registry serve` against distribution, both storing in one real S3 server.

SeaweedFS (`weed mini`, the binary `hack/s3.sh build` makes) runs on free ports of 127.0.0.1
with its data under a temp dir, started and stopped by the benchmark (tests/s3/server.py's
`S3Server`). Each registry gets a fresh bucket of its own on it:

- Dockyard with `storage.s3` (path-style addressing, keys in a credentials directory; blob GETs
  streamed through the registry, `redirect` off as by default);
- distribution 2.8 (Debian `docker-registry`) with its `s3` driver, redirects disabled so that
  it streams blobs through itself too, and with the in-memory blob descriptor cache of
  Debian's default configuration, as in the registry section (`start_distribution_s3` of
  tests/registry/processes.py).

The client and the measurements are the registry section's (bench/registry.py), servers
alternating on every measurement: blob push (monolithic and chunked) and pull at 1, 64 and
512 MiB (fewer repetitions at 512 MiB), manifest GET requests/s with 1 and 32 connections,
server CPU per GB and per request (the registry process only: the S3 server's CPU is not in
it) and the registry's memory. Without `weed` the section is skipped with one line saying how
to build it (a failure under CI=true).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.registry.processes import RegistryProcess, require_dockyard, require_tool, start_distribution_s3
from tests.s3.server import S3Server, require_weed, start_dockyard_s3

from registry import MiB, Plan, Table, manifest_seconds, measure_sampled, start_servers, titled

TITLE = "dockyard vs distribution, both on one S3 server (SeaweedFS)"
ORDER = 15


def s3_plan(quick: bool, duration: float) -> Plan:
    reps = {1 * MiB: 10, 8 * MiB: 3} if quick else {1 * MiB: 30, 64 * MiB: 5, 512 * MiB: 3}
    return Plan(reps, duration, curl=False, methods=("GET",))


def start_dockyard_on(s3: S3Server, workdir: Path) -> RegistryProcess:
    require_dockyard()
    return start_dockyard_s3(s3, workdir / "dockyard", s3.make_bucket())


def start_distribution_on(s3: S3Server, workdir: Path) -> RegistryProcess:
    require_tool("docker-registry", "docker-registry")
    return start_distribution_s3(workdir / "distribution" / "root", endpoint=s3.endpoint, bucket=s3.make_bucket(),
                                 access_key=s3.access_key, secret_key=s3.secret_key, descriptor_cache=True)


async def run_async(options: argparse.Namespace) -> list[Table]:
    weed = require_weed()  # ToolMissing: bench/run.py prints the section as skipped, with the reason
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-s3-") as tmp:
        workdir = Path(tmp)
        print("  starting SeaweedFS (weed mini) ...", file=sys.stderr, flush=True)
        with S3Server(workdir / "s3", weed).start() as s3:
            servers = start_servers({"dockyard": functools.partial(start_dockyard_on, s3, workdir),
                                     "distribution": functools.partial(start_distribution_on, s3, workdir)}, notes)
            try:
                rows = await measure_sampled(servers, workdir, s3_plan(options.quick, manifest_seconds(options)),
                                             "s3 benchmark")
            finally:
                for server in servers:
                    server.process.stop()
    title = f"s3: {TITLE} (127.0.0.1, {os.cpu_count()} CPUs, S3 data under {tempfile.gettempdir()})"
    return [(titled(title, notes), ["measurement", *(s.name for s in servers), "dockyard/distribution"], rows)]


def run(options: argparse.Namespace) -> list[Table]:
    return asyncio.run(run_async(options))
