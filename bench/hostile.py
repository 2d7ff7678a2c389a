"""Hostile load: how long an ordinary request waits while other clients misbehave.

Both servers (dockyard and distribution, htpasswd auth on both) hold one pushed blob. A
prober sends HEAD requests for it one after another, with valid credentials, while a load
runs, and the table shows the median and the worst latency it saw. The loads:

- none (the baseline);
- 20 clients pushing 4 MiB manifests (the largest a registry must accept) in a loop;
- 64 clients sending a wrong password in a loop (each costs the server a bcrypt check).

A server that parses manifests or checks passwords where it serves blobs shows it here as a
worst case in hundreds of milliseconds; one that isolates the work keeps it near the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.registry.processes import (
    RegistryProcess,
    ToolMissing,
    require_dockyard,
    start_distribution,
    start_dockyard,
    write_htpasswd,
)

TITLE = "latency under hostile load"
ORDER = 30
USER, PASSWORD = "bench", "bench-password"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MANIFEST_BYTES = 4 * 1024 * 1024 - 4096
Table = tuple[str, list[str], list[list[str]]]
Load = Callable[[aiohttp.ClientSession, str, dict[str, str], asyncio.Event], Coroutine[Any, Any, None]]


async def _push_blob(session: aiohttp.ClientSession, url: str, auth: dict[str, str], data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with session.post(f"{url}/v2/bench/blobs/uploads/", headers=auth) as r:
        location = r.headers["Location"]
    if location.startswith("/"):
        location = url + location
    sep = "&" if "?" in location else "?"
    async with session.put(f"{location}{sep}digest={digest}", data=data,
                           headers={**auth, "Content-Type": "application/octet-stream"}) as r:
        if r.status != 201:
            raise RuntimeError(f"blob push answered {r.status}: {await r.text()}")
    return digest


def _big_manifest(config: str) -> bytes:
    """A valid manifest just under 4 MiB of many small annotations: decoding cost grows with entries."""
    annotations = {f"org.example.k{i:06d}": "v" * 40 for i in range(MANIFEST_BYTES // 64)}
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config,
                                  "size": 2},
                       "layers": [], "annotations": annotations}).encode()


def _manifest_load(body: bytes) -> Load:
    async def load(session: aiohttp.ClientSession, url: str, auth: dict[str, str], stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(aiohttp.ClientError):
                async with session.put(f"{url}/v2/bench/manifests/big", data=body,
                                       headers={**auth, "Content-Type": OCI_MANIFEST}) as r:
                    await r.read()
    return load


async def _wrong_password(session: aiohttp.ClientSession, url: str, auth: dict[str, str],
                          stop: asyncio.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        with contextlib.suppress(aiohttp.ClientError):
            # a different wrong password each time, so no server can answer from a cache
            wrong = aiohttp.BasicAuth(USER, f"wrong-{n}").encode()
            async with session.get(f"{url}/v2/", headers={"Authorization": wrong}) as r:
                await r.read()


async def _probe(url: str, auth: dict[str, str], blob: str, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.monotonic()
            async with session.head(f"{url}/v2/bench/blobs/{blob}", headers=auth) as r:
                if r.status != 200:
                    raise RuntimeError(f"probe HEAD answered {r.status}")
            latencies.append(time.monotonic() - start)
    return latencies


async def _measure(url: str, blob: str, load: Load | None, clients: int, seconds: float) -> list[float]:
    auth = {"Authorization": aiohttp.BasicAuth(USER, PASSWORD).encode()}
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=clients + 1, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        tasks: list[asyncio.Task[None]] = []
        if load is not None:
            tasks = [asyncio.create_task(load(session, url, auth, stop)) for _ in range(clients)]
        if tasks:
            await asyncio.sleep(0.5)  # let the load reach steady state before probing
        try:
            return await _probe(url, auth, blob, seconds)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)


def _ms(values: list[float], q: str) -> str:
    if not values:
        return "-"
    v = statistics.median(values) if q == "p50" else max(values)
    return f"{v * 1000:.1f}"


async def run_async(options: argparse.Namespace) -> list[Table]:
    seconds = 2.0 if options.quick else 5.0
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-hostile-") as tmp:
        work = Path(tmp)
        htpasswd = write_htpasswd(work / "htpasswd", USER, PASSWORD)
        servers: dict[str, RegistryProcess] = {}
        try:
            try:
                require_dockyard()
                servers["dockyard"] = start_dockyard(work / "dockyard" / "root", "--htpasswd", str(htpasswd))
            except ToolMissing as e:
                print(f"hostile: dockyard not measured: {e}", file=sys.stderr)
            with contextlib.suppress(ToolMissing):
                servers["distribution"] = start_distribution(work / "distribution" / "root", htpasswd=htpasswd)
            auth = {"Authorization": aiohttp.BasicAuth(USER, PASSWORD).encode()}
            blobs: dict[str, str] = {}
            manifests: dict[str, bytes] = {}
            async with aiohttp.ClientSession() as session:
                for name, proc in servers.items():
                    blobs[name] = await _push_blob(session, proc.url, auth, os.urandom(1024))
                    config = await _push_blob(session, proc.url, auth, b"{}")
                    manifests[name] = _big_manifest(config)
            loads: list[tuple[str, Callable[[str], Load | None], int]] = [
                ("none", lambda n: None, 0),
                ("20 clients pushing 4 MiB manifests", lambda n: _manifest_load(manifests[n]), 20),
                ("64 clients with wrong passwords", lambda n: _wrong_password, 64),
            ]
            rows: list[list[str]] = []
            for label, make, clients in loads:
                results: dict[str, list[float]] = {}
                for name, proc in servers.items():
                    print(f"hostile: {name}: {label}", file=sys.stderr)
                    results[name] = await _measure(proc.url, blobs[name], make(name), clients, seconds)
                d, p = results.get("dockyard", []), results.get("distribution", [])
                ratio = (f"{statistics.median(d) / statistics.median(p):.2f}x" if d and p else "-")
                rows.append([label, _ms(d, "p50"), _ms(d, "max"), _ms(p, "p50"), _ms(p, "max"), ratio,
                             str(len(d)), str(len(p))])
        finally:
            for proc in servers.values():
                proc.stop()
    columns = ["load", "dockyard p50 ms", "dockyard max ms", "distribution p50 ms", "distribution max ms",
               "p50 ratio (lower is better)", "dockyard probes", "distribution probes"]
    return [(f"blob HEAD latency under hostile load ({seconds:.0f} s each)", columns, rows)]


def run(options: argparse.Namespace) -> list[Table]:
    return asyncio.run(run_async(options))
