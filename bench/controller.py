"""Operator benchmark: N Registries applied at once, until all are reconciled, then silence.

The real operator process runs against the API emulator of the integration tier (no API
server can run here), which counts every write request. Measured: seconds from creating N
Registries to all of them reconciled (children applied, status written), seconds until all are
Ready once their Deployments report available, API writes per Registry by kind of write, and
writes in a quiet period afterwards (the goal is zero).
"""

from __future__ import annotations

import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.emulator import Emulator, create  # noqa: E402
from tests.integration.operator import report_available, running_operator  # noqa: E402

NS = "bench"
REGISTRIES = "dockyard.dev/v1alpha1/registries"
DEPLOYMENTS = "apps/v1/deployments"


def kubeconfig(emulator: Emulator, path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "bench",
        "clusters": [{"name": "bench", "cluster": {"server": str(emulator.url).rstrip("/")}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": "bench"}}],
    }))
    return path


def classify(method: str, path: str) -> str:
    if path.endswith("/status"):
        return "status patch"
    if path.endswith("/events"):
        return "event"
    if "/registries/" in path:
        return "registry metadata (Kopf)"
    return "child apply" if method == "PATCH" else f"{method.lower()} child"


async def wait_all(emulator: Emulator, names: list[str], check: Any, limit: float) -> None:
    deadline = time.monotonic() + limit
    pending = set(names)
    while pending:
        pending = {n for n in pending if not check(emulator.live(REGISTRIES, NS, n) or {})}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} registries not done after {limit}s")
        await asyncio.sleep(0.05)


def reconciled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(status.get("endpoint")) and any(
        c["type"] == "Reconciling" and c["reason"] != "NewGeneration" for c in status.get("conditions", []))


def ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions", []))


async def measure(n: int, quiet: float) -> dict[str, Any]:
    names = [f"r{i:04d}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        async with Emulator().serving() as emulator:
            config = kubeconfig(emulator, Path(tmp) / "kubeconfig")
            async with running_operator(config, Path(tmp) / "operator.log") as op:
                start = time.monotonic()
                for name in names:
                    await create(emulator, {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
                                            "metadata": {"name": name, "namespace": NS},
                                            "spec": {"storage": {"pvc": {"size": "1Gi"}}}})
                created = time.monotonic()
                await wait_all(emulator, names, reconciled, 60 + n)
                done = time.monotonic()
                for name in names:
                    await report_available(emulator, NS, name)
                await wait_all(emulator, names, ready, 60 + n)
                all_ready = time.monotonic()
                await asyncio.sleep(3.0)  # let the last events drain before the quiet window
                mark = time.monotonic()
                writes = [w for w in emulator.writes(start) if not (  # leave out what the bench wrote
                    (w.method == "POST" and w.path.endswith("/registries"))
                    or ("/deployments/" in w.path and w.path.endswith("/status")))]
                await asyncio.sleep(quiet)
                steady = len(emulator.writes(mark))
                op.check()
    kinds = collections.Counter(classify(w.method, w.path) for w in writes)
    return {"n": n, "create_s": created - start, "reconciled_s": done - start, "ready_s": all_ready - done,
            "writes": len(writes), "kinds": kinds, "steady": steady, "quiet": quiet}


TITLE = "the operator: Registries applied at once, until reconciled and Ready, then silence"
ORDER = 30


def run(options: Any) -> list[tuple[str, list[str], list[list[str]]]]:
    sizes = [20] if options.quick else [100, 500]
    rows: list[list[str]] = []
    notes: list[list[str]] = []
    for n in sizes:
        r = asyncio.run(measure(n, quiet=2.0 if options.quick else 5.0))
        rows.append([str(n), f"{r['create_s']:.1f}", f"{r['reconciled_s']:.1f}", f"{n / r['reconciled_s']:.0f}",
                     f"{r['ready_s']:.1f}", f"{r['writes'] / n:.1f}", f"{r['steady']} in {r['quiet']:.0f}s"])
        notes.extend([str(n), kind, f"{count / n:.1f}"] for kind, count in sorted(r["kinds"].items()))
    return [
        ("Operator (real operator process against the API emulator)",
         ["registries", "apply all s", "all reconciled s", "reconciles/s", "Ready after available s",
          "writes/registry", "steady-state writes"], rows),
        ("Operator writes per Registry, by kind", ["registries", "write", "per registry"], notes),
    ]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    for title, columns, table in run(parser.parse_args()):
        print(title, columns, *table, sep="\n")
