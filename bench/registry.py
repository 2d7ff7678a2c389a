"""Registry benchmark: `dockyard registry serve` against distribution, same client, same run.

Both servers run side by side on 127.0.0.1 with filesystem storage in temp dirs on one
filesystem. One aiohttp client (below) drives both through the same code path, alternating
servers on every measurement so drift hits both alike:

- blob push, monolithic (POST + one PUT) and chunked (POST + PATCH... + PUT), and blob pull,
  in MB/s (10^6 bytes/s) for 1 MiB, 64 MiB and 512 MiB blobs. Blobs are random, written once
  to files and streamed from them; the client never holds a whole blob in memory.
- manifest GET and HEAD requests/s with 1 and 32 concurrent connections, for a fixed time,
  median of three rounds.
- server CPU time (user + system, all threads, from /proc/PID/stat) per GB moved and per
  manifest request: on a machine shared with other work this moves far less than wall-clock
  rates do. For CPU and memory rows the ratio reads "lower is better".
- server memory: VmRSS sampled during the run, VmHWM (peak RSS) after each blob size, to show
  whether memory follows blob size.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.registry.processes import (
    RegistryProcess,
    ToolMissing,
    proc_status,
    require_dockyard,
    start_distribution,
    start_dockyard,
)

TITLE = "dockyard vs distribution"
ORDER = 10
MiB = 1024 * 1024
READ_CHUNK = 4 * MiB
PATCH_CHUNK = 16 * MiB
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MANIFEST_ROUNDS = 3  # median of this many runs per server, alternating servers
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
NOFSYNC = Path(__file__).resolve().parent / "nofsync"  # a sitecustomize that makes os.fsync do nothing

Table = tuple[str, list[str], list[list[str]]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds per manifest request measurement of the registry and s3 sections "
                             "(default 3, 1 with --quick)")


@dataclass(frozen=True)
class Blob:
    """A blob to push: a shared random file followed by a short suffix that makes it unique."""

    path: Path
    body_size: int
    suffix: bytes
    digest: str

    @property
    def size(self) -> int:
        return self.body_size + len(self.suffix)


class BlobSource:
    """Random bytes written once to a file; `blob(label)` is a distinct blob of the same size.

    Every push in the benchmark is of a blob the server has never seen, as on a real first
    push: no server gets to skip work for content it already holds. Only the last
    SUFFIX bytes differ, so the digest costs one copy of the file's hash state, not a re-hash.
    """

    SUFFIX = 16

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.body_size = size - self.SUFFIX
        self._hash = hashlib.sha256()
        with open(path, "wb") as f:
            left = self.body_size
            while left:
                chunk = os.urandom(min(READ_CHUNK, left))
                self._hash.update(chunk)
                f.write(chunk)
                left -= len(chunk)

    def blob(self, label: str) -> Blob:
        suffix = label.encode().rjust(self.SUFFIX, b".")[-self.SUFFIX:]
        h = self._hash.copy()
        h.update(suffix)
        return Blob(self.path, self.body_size, suffix, "sha256:" + h.hexdigest())

    def materialize(self, blob: Blob) -> Path:
        """Make the file hold exactly BLOB (its suffix written after the shared bytes), for curl."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.pwrite(fd, blob.suffix, self.body_size)
        finally:
            os.close(fd)
        return self.path


@dataclass
class Server:
    name: str
    process: RegistryProcess
    rss_samples: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.process.url

    def peak_rss(self) -> int:
        return proc_status(self.process.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server process (all its threads) has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def blob_chunks(blob: Blob, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
    """Stream bytes [start, start+length) of BLOB in READ_CHUNK pieces, reading off the event loop."""
    end = blob.size if length is None else start + length
    if start < blob.body_size:
        f = await asyncio.to_thread(open, blob.path, "rb")
        try:
            await asyncio.to_thread(f.seek, start)
            pos = start
            while pos < min(end, blob.body_size):
                chunk = await asyncio.to_thread(f.read, min(READ_CHUNK, min(end, blob.body_size) - pos))
                if not chunk:
                    raise EOFError(f"{blob.path} ended at {pos}")
                pos += len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(f.close)
    if end > blob.body_size:
        yield blob.suffix[max(start - blob.body_size, 0):end - blob.body_size]


class Client:
    """The OCI distribution calls the benchmark makes, identical for every server."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    def _location(self, resp: aiohttp.ClientResponse) -> str:
        return urllib.parse.urljoin(self.base + "/", resp.headers["Location"])

    @staticmethod
    async def _expect(resp: aiohttp.ClientResponse, status: int, what: str) -> None:
        if resp.status != status:
            body = await resp.text()
            raise RuntimeError(f"{what}: expected {status}, got {resp.status}: {body[:300]}")

    async def start_upload(self, repo: str) -> str:
        async with self.session.post(f"{self.base}/v2/{repo}/blobs/uploads/") as resp:
            await self._expect(resp, 202, "POST upload")
            return self._location(resp)

    @staticmethod
    def _with_digest(location: str, digest: str) -> str:
        return location + ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})

    async def push_monolithic(self, repo: str, blob: Blob) -> None:
        location = await self.start_upload(repo)
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(blob.size)}
        async with self.session.put(self._with_digest(location, blob.digest), headers=headers,
                                    data=blob_chunks(blob)) as resp:
            await self._expect(resp, 201, "PUT blob")

    async def push_chunked(self, repo: str, blob: Blob) -> None:
        location = await self.start_upload(repo)
        for start in range(0, blob.size, PATCH_CHUNK):
            length = min(PATCH_CHUNK, blob.size - start)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length),
                       "Content-Range": f"{start}-{start + length - 1}"}
            async with self.session.patch(location, headers=headers,
                                          data=blob_chunks(blob, start, length)) as resp:
                await self._expect(resp, 202, "PATCH chunk")
                location = self._location(resp)
        async with self.session.put(self._with_digest(location, blob.digest),
                                    headers={"Content-Length": "0"}) as resp:
            await self._expect(resp, 201, "PUT close upload")

    async def pull(self, repo: str, blob: Blob) -> None:
        received = 0
        async with self.session.get(f"{self.base}/v2/{repo}/blobs/{blob.digest}") as resp:
            await self._expect(resp, 200, "GET blob")
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                received += len(chunk)
        if received != blob.size:
            raise RuntimeError(f"GET blob returned {received} bytes, expected {blob.size}")

    async def push_bytes(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        location = await self.start_upload(repo)
        async with self.session.put(self._with_digest(location, digest), data=data,
                                    headers={"Content-Type": "application/octet-stream"}) as resp:
            await self._expect(resp, 201, "PUT small blob")
        return digest

    async def push_image(self, repo: str, tag: str) -> bytes:
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        layer = os.urandom(4096)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": await self.push_bytes(repo, config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": await self.push_bytes(repo, layer), "size": len(layer)}],
        }).encode()
        async with self.session.put(f"{self.base}/v2/{repo}/manifests/{tag}", data=manifest,
                                    headers={"Content-Type": OCI_MANIFEST}) as resp:
            await self._expect(resp, 201, "PUT manifest")
        return manifest

    async def manifest(self, method: str, repo: str, tag: str, size: int) -> None:
        async with self.session.request(method, f"{self.base}/v2/{repo}/manifests/{tag}",
                                        headers={"Accept": OCI_MANIFEST}) as resp:
            body = await resp.read()
            if resp.status != 200 or (method == "GET" and len(body) != size):
                raise RuntimeError(f"{method} manifest: {resp.status}, {len(body)} bytes")


async def curl(*args: str) -> dict[str, str]:
    """Run curl quietly; returns its `-w` variables (http_code, time_total, size_*)."""
    fmt_vars = "%{http_code} %{time_total} %{size_download} %{size_upload}"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-o", "/dev/null", "-H", "Expect:", "-w", fmt_vars, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"curl {' '.join(args)}: exit {proc.returncode}: {err.decode()[:300]}")
    code, total, down, up = out.decode().split()
    return {"http_code": code, "time_total": total, "size_download": down, "size_upload": up}


async def curl_push(client: Client, source: BlobSource, repo: str, blob: Blob) -> float:
    """Monolithic push with curl (POST by the benchmark's client, PUT by curl): seconds of the PUT."""
    path = await asyncio.to_thread(source.materialize, blob)
    location = await client.start_upload(repo)
    await settle()
    result = await curl("-T", str(path), "-H", "Content-Type: application/octet-stream",
                        client._with_digest(location, blob.digest))
    if result["http_code"] != "201" or int(float(result["size_upload"])) != blob.size:
        raise RuntimeError(f"curl PUT blob: {result}")
    return float(result["time_total"])


async def curl_pull(client: Client, repo: str, blob: Blob) -> float:
    """Blob pull with curl to /dev/null: seconds of the GET."""
    result = await curl(f"{client.base}/v2/{repo}/blobs/{blob.digest}")
    if result["http_code"] != "200" or int(float(result["size_download"])) != blob.size:
        raise RuntimeError(f"curl GET blob: {result}")
    return float(result["time_total"])


async def curl_rounds(servers: list[Server], clients: dict[str, Client], source: BlobSource, reps: int,
                      costs: dict[str, dict[str, Cost]]) -> None:
    """Monolithic push and pull with curl, an independent client, alternating servers."""
    repo = f"bench/curl-{source.body_size + source.SUFFIX}"
    for n in range(reps):
        for s in servers if n % 2 == 0 else servers[::-1]:
            blob = source.blob(f"{s.name}-curl{n}")
            costs[s.name]["curl push"].walls.append(await curl_push(clients[s.name], source, repo, blob))
            await settle()
            costs[s.name]["curl pull"].walls.append(await curl_pull(clients[s.name], repo, blob))
            await settle()


async def sample_rss(servers: list[Server], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for server in servers:
            server.rss_samples.append(await asyncio.to_thread(proc_status, server.process.pid, "VmRSS"))
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass


async def settle() -> None:
    """Write back dirty pages, so no measurement pays for the writeback of the one before."""
    await asyncio.to_thread(os.sync)


@dataclass
class Cost:
    """Wall-clock seconds of each run of one operation, and the server CPU seconds they used."""

    walls: list[float] = field(default_factory=list)
    cpu: float = 0.0
    work: float = 0.0  # bytes moved or requests answered

    def rate(self, size: float) -> float:
        return size / statistics.median(self.walls)

    def cpu_per(self, unit: float) -> float:
        return self.cpu / (self.work / unit)


async def timed(server: Server, cost: Cost, op: Awaitable[None], work: float) -> None:
    cpu0 = await asyncio.to_thread(server.cpu_seconds)
    t0 = time.perf_counter()
    await op
    cost.walls.append(time.perf_counter() - t0)
    cost.cpu += await asyncio.to_thread(server.cpu_seconds) - cpu0
    cost.work += work


async def requests_per_second(op: Callable[[], Awaitable[None]], concurrency: int,
                              duration: float) -> tuple[float, int]:
    """Run OP back to back on CONCURRENCY workers for DURATION seconds: (requests/s, requests)."""
    done = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await op()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - t0), done


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


@dataclass(frozen=True)
class Plan:
    """What `measure` does: blob sizes (bytes) with their repetitions, in order; whether to add the
    curl rows; which manifest methods to time, for how many seconds a round."""

    reps: dict[int, int]
    duration: float
    curl: bool = True
    methods: tuple[str, ...] = ("GET", "HEAD")


def manifest_seconds(options: argparse.Namespace) -> float:
    """`--duration`, or its default (3 s, 1 s with `--quick`)."""
    duration: float | None = options.duration
    return duration or (1.0 if options.quick else 3.0)


def registry_plan(quick: bool, duration: float) -> Plan:
    return Plan({1 * MiB: 20, 8 * MiB: 3} if quick else {1 * MiB: 50, 64 * MiB: 7, 512 * MiB: 5}, duration)


def ratio_row(servers: list[Server], label: str, values: dict[str, float | None]) -> list[str]:
    """A table row: LABEL, each server's value, and dockyard/distribution when both were measured."""
    a, b = values.get("dockyard"), values.get("distribution")
    ratio = f"{a / b:.2f}x" if a is not None and b else "n/a"
    return [label, *(fmt(values.get(s.name)) for s in servers), ratio]


def client_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=64, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


async def blob_rows(servers: list[Server], clients: dict[str, Client], workdir: Path, size: int, reps: int,
                    with_curl: bool) -> list[list[str]]:
    """Push (monolithic, chunked) and pull REPS blobs of SIZE bytes per server, alternating servers."""
    print(f"  blobs of {size // MiB} MiB ...", file=sys.stderr, flush=True)
    source = await asyncio.to_thread(BlobSource, workdir / f"blob-{size}", size)
    costs = {s.name: {k: Cost() for k in ("mono", "chunked", "pull", "curl push", "curl pull")} for s in servers}
    for n in range(reps):
        for s in servers if n % 2 == 0 else servers[::-1]:
            c, cost = clients[s.name], costs[s.name]
            mono, chunked = source.blob(f"{s.name}-m{n}"), source.blob(f"{s.name}-c{n}")
            await settle()
            await timed(s, cost["mono"], c.push_monolithic(f"bench/mono-{size}", mono), size)
            await settle()
            await timed(s, cost["pull"], c.pull(f"bench/mono-{size}", mono), size)
            await settle()
            await timed(s, cost["chunked"], c.push_chunked(f"bench/chunked-{size}", chunked), size)
    if with_curl:
        await curl_rounds(servers, clients, source, reps, costs)
    await asyncio.to_thread(source.path.unlink)
    label = f"{size // MiB} MiB"
    rows = []
    for key, text in (("mono", "push monolithic"), ("chunked", "push chunked"), ("pull", "pull"),
                      ("curl push", "curl push monolithic"), ("curl pull", "curl pull")):
        if costs[servers[0].name][key].walls:
            rows.append(ratio_row(servers, f"{text} {label} (MB/s)",
                                  {s.name: costs[s.name][key].rate(size) / 1e6 for s in servers}))
    for key, text in (("mono", "push monolithic"), ("pull", "pull")):
        rows.append(ratio_row(servers, f"  server CPU, {text} {label} (s/GB)",
                              {s.name: costs[s.name][key].cpu_per(1e9) for s in servers}))
    rows.append(ratio_row(servers, f"peak RSS after {label} blobs (MiB)",
                          {s.name: s.peak_rss() / MiB for s in servers}))
    return rows


async def manifest_rows(servers: list[Server], clients: dict[str, Client], methods: tuple[str, ...],
                        duration: float) -> list[list[str]]:
    """Requests/s and server CPU per request for one small manifest by tag, 1 and 32 connections."""
    manifests = {s.name: len(await clients[s.name].push_image("bench/manifest", "latest")) for s in servers}
    rows = []
    for method in methods:
        for concurrency in (1, 32):
            print(f"  manifest {method} x{concurrency} ...", file=sys.stderr, flush=True)
            costs = {s.name: Cost() for s in servers}
            for _ in range(MANIFEST_ROUNDS):
                for s in servers:
                    op = functools.partial(clients[s.name].manifest, method, "bench/manifest", "latest",
                                           manifests[s.name])
                    cpu0 = await asyncio.to_thread(s.cpu_seconds)
                    rate, count = await requests_per_second(op, concurrency, duration)
                    costs[s.name].walls.append(1 / rate)
                    costs[s.name].cpu += await asyncio.to_thread(s.cpu_seconds) - cpu0
                    costs[s.name].work += count
            rows.append(ratio_row(servers, f"manifest {method}, {concurrency} conn (req/s)",
                                  {name: cost.rate(1) for name, cost in costs.items()}))
            rows.append(ratio_row(servers, f"  server CPU per {method}, {concurrency} conn (us)",
                                  {name: cost.cpu_per(1) * 1e6 for name, cost in costs.items()}))
    return rows


async def measure(servers: list[Server], workdir: Path, plan: Plan) -> list[list[str]]:
    """The rows of the comparison table: blobs of each size, manifests, then memory."""
    rows: list[list[str]] = []
    with_curl = plan.curl and shutil.which("curl") is not None
    async with client_session() as session:
        clients = {s.name: Client(session, s.url) for s in servers}
        for c in clients.values():  # warm up: first connections, first writes
            await c.push_image("warmup/image", "v1")
        for size, reps in plan.reps.items():
            rows += await blob_rows(servers, clients, workdir, size, reps, with_curl)
        rows += await manifest_rows(servers, clients, plan.methods, plan.duration)
    rows.append(ratio_row(servers, "max sampled VmRSS (MiB)", {s.name: max(s.rss_samples, default=0) / MiB
                                                               for s in servers}))
    rows.append(ratio_row(servers, "peak RSS, VmHWM (MiB)", {s.name: s.peak_rss() / MiB for s in servers}))
    return rows


async def measure_sampled(servers: list[Server], workdir: Path, plan: Plan, what: str) -> list[list[str]]:
    """`measure` while sampling the servers' RSS; a failed request ends the benchmark with a post-mortem."""
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(servers, stop))
    try:
        return await measure(servers, workdir, plan)
    except (aiohttp.ClientError, RuntimeError) as failed:
        raise SystemExit(f"{what} failed: {failed!r}\n{post_mortem(servers)}") from failed
    finally:
        stop.set()
        await sampler


def start_servers(starters: dict[str, Callable[[], RegistryProcess]], notes: list[str]) -> list[Server]:
    """Start each server by name; a missing tool becomes a note (that server is not measured).
    With none started, the benchmark ends naming why."""
    servers: list[Server] = []
    try:
        for name, start in starters.items():
            try:
                servers.append(Server(name, start()))
            except (FileNotFoundError, ToolMissing) as missing:
                notes.append(f"{name} not measured: {missing}")
    except BaseException:
        for server in servers:
            server.process.stop()
        raise
    if not servers:
        raise SystemExit("no registry server to measure:\n" + "\n".join(notes))
    return servers


def titled(title: str, notes: list[str]) -> str:
    return "".join([title, *(f"\n  note: {note}" for note in notes)])


async def measure_fsync(servers: list[Server], workdir: Path, quick: bool) -> list[list[str]]:
    """Monolithic pushes to dockyard as it runs and to a dockyard whose os.fsync does nothing.

    The second server has `bench/nofsync` on its PYTHONPATH (a sitecustomize that replaces
    os.fsync), so the difference is what flushing each blob before its 201 costs; it is
    the same code otherwise. Servers alternate; `sync` before each push as everywhere.
    """
    sizes = [1 * MiB, 8 * MiB] if quick else [1 * MiB, 64 * MiB, 512 * MiB]
    reps = {1 * MiB: 10 if quick else 30, 8 * MiB: 3, 64 * MiB: 5, 512 * MiB: 5}
    rows: list[list[str]] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=120)) as session:
        clients = {s.name: Client(session, s.url) for s in servers}
        for size in sizes:
            print(f"  fsync cost, blobs of {size // MiB} MiB ...", file=sys.stderr, flush=True)
            source = await asyncio.to_thread(BlobSource, workdir / f"fsync-blob-{size}", size)
            costs = {s.name: Cost() for s in servers}
            for n in range(reps[size]):
                for s in servers if n % 2 == 0 else servers[::-1]:
                    await settle()
                    await timed(s, costs[s.name], clients[s.name].push_monolithic(
                        f"bench/fsync-{size}", source.blob(f"{s.name}-f{n}")), size)
            rates = [costs[s.name].rate(size) / 1e6 for s in servers]
            walls = [statistics.median(costs[s.name].walls) * 1000 for s in servers]
            rows.append([f"push monolithic {size // MiB} MiB", fmt(rates[0]), fmt(rates[1]),
                         f"{rates[0] / rates[1]:.2f}x", fmt(walls[0] - walls[1])])
            await asyncio.to_thread(source.path.unlink)
    return rows


def post_mortem(servers: list[Server]) -> str:
    """Which server died (exit status) and the end of every server's log."""
    report = []
    for s in servers:
        proc = s.process.proc
        state = "running" if s.process.alive() else f"exited with {proc.returncode if proc else '?'}"
        tail = "\n    ".join(s.process.output().splitlines()[-15:])
        report.append(f"{s.name} ({s.url}, pid {s.process.pid}): {state}\n    {tail}")
    return "\n".join(report)


def start_dockyard_fs(root: Path) -> RegistryProcess:
    require_dockyard()
    return start_dockyard(root)


async def run_async(options: argparse.Namespace) -> list[Table]:
    quick: bool = options.quick
    notes: list[str] = []
    fsync_rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        workdir = Path(tmp)
        servers = start_servers({
            "dockyard": functools.partial(start_dockyard_fs, workdir / "dockyard" / "root"),
            "distribution": functools.partial(start_distribution, workdir / "distribution" / "root",
                                              descriptor_cache=True),
        }, notes)
        try:
            names = [s.name for s in servers]
            plan = registry_plan(quick, manifest_seconds(options))
            rows = await measure_sampled(servers, workdir, plan, "registry benchmark")
            if servers[0].name == "dockyard":
                for server in servers[1:]:  # the fsync comparison runs on its own
                    server.process.stop()
                env = {"PYTHONPATH": os.pathsep.join([str(NOFSYNC), os.environ.get("PYTHONPATH", "")])}
                servers = [servers[0], Server("dockyard without fsync", start_dockyard(
                    workdir / "nofsync" / "root", env=env))]
                try:
                    fsync_rows = await measure_fsync(servers, workdir, quick)
                except (aiohttp.ClientError, RuntimeError) as failed:
                    raise SystemExit(f"registry fsync benchmark failed: {failed!r}\n{post_mortem(servers)}") from failed
        finally:
            for server in servers:
                server.process.stop()
    title = f"registry: {TITLE} (127.0.0.1, {os.cpu_count()} CPUs, storage under {tempfile.gettempdir()})"
    tables: list[Table] = [(titled(title, notes), ["measurement", *names, "dockyard/distribution"], rows)]
    if fsync_rows:
        tables.append(("registry: what flushing each blob to disk before its 201 costs (dockyard, same run; "
                       "the second server's os.fsync does nothing)",
                       ["measurement (MB/s)", "dockyard", "without fsync", "ratio", "fsync ms per push"],
                       fsync_rows))
    return tables


def run(options: argparse.Namespace) -> list[Table]:
    return asyncio.run(run_async(options))
