"""Operator benchmark: N Registries applied at once, until all are reconciled and Ready, then idle.

The real operator process (`dockyard operator run -A`, with a token of its ServiceAccount and
the install's RBAC) runs against a real kube-apiserver: `hack/cluster.sh --control-plane-only up`
(etcd, kube-apiserver and the kube-controller-manager's garbage collector, namespace and
ServiceAccount controllers), started, installed and torn down by the integration tier's
`tests/integration/cluster.py`. No Deployment controller runs: the benchmark plays it, as the
tests do, by reporting each Deployment available through its /status.

Measured, on the wall clock:

- apply all s: creating the N Registries (one namespace, `--operator-inflight` requests in flight);
- all reconciled s: from the first create until every Registry has `status.endpoint` and a
  Reconciling condition past `NewGeneration` (children applied, observed status written);
- Ready after available s: from then, while the benchmark reports all N Deployments available
  (the "report available s" part), until every Registry is Ready=True;
- API writes per Registry, by verb and resource: the operator's write requests in the API
  server's audit log (its ServiceAccount's user only, so the benchmark's own writes, made as the
  admin, are not counted), from the first create until the operator has written nothing for
  SETTLE seconds after all are Ready;
- idle writes: the operator's writes in the `--operator-idle` seconds after that (goal: none;
  any are listed in a table of their own).

Every wait is bounded; the API server is torn down at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.cluster import control_plane
from tests.integration.kube import ApiServer, Write, create, list_objects
from tests.integration.operator import Operator, report_available, running_operator

TITLE = "the operator on a real API server: Registries applied at once, until reconciled and Ready, then idle"
ORDER = 30
NS = "bench"
REGISTRIES = "dockyard.dev/v1alpha1/registries"
SETTLE = 5.0  # seconds without an operator write that count as converged
POLL = 0.5

Table = tuple[str, list[str], list[list[str]]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--operator-registries", type=int, default=None, help="Registries (default 500, 20 quick)")
    parser.add_argument("--operator-idle", type=float, default=None,
                        help="seconds of idle after convergence (default 60, 10 quick)")
    parser.add_argument("--operator-inflight", type=int, default=16,
                        help="create and report requests the benchmark keeps in flight (default 16)")


def reconciled(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return bool(status.get("endpoint")) and any(
        c["type"] == "Reconciling" and c["reason"] != "NewGeneration" for c in status.get("conditions", []))


def ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (obj.get("status") or {}).get("conditions", []))


async def wait_all(server: ApiServer, op: Operator, n: int, check: Callable[[dict[str, Any]], bool],
                   limit: float) -> None:
    """Until CHECK holds for all N Registries of the namespace (one list per poll)."""
    deadline = time.monotonic() + limit
    while True:
        op.check()
        done = sum(1 for obj in await list_objects(server, REGISTRIES, NS) if check(obj))
        if done >= n:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n - done} of {n} Registries not done after {limit:.0f}s")
        await asyncio.sleep(POLL)


async def settle(server: ApiServer, op: Operator, since: float, limit: float) -> None:
    """Until the operator has written nothing for SETTLE seconds (at most LIMIT seconds)."""
    deadline = time.monotonic() + limit
    count, quiet_since = len(server.writes(since)), time.monotonic()
    while time.monotonic() - quiet_since < SETTLE and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
        op.check()
        now = len(server.writes(since))
        if now != count:
            count, quiet_since = now, time.monotonic()


async def bounded(inflight: int, calls: list[Callable[[], Any]]) -> None:
    limit = asyncio.Semaphore(inflight)

    async def one(call: Callable[[], Any]) -> None:
        async with limit:
            await call()
    await asyncio.gather(*(one(c) for c in calls))


def registry(name: str) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry", "metadata": {"name": name, "namespace": NS},
            "spec": {"storage": {"pvc": {"size": "1Gi"}}}}


async def measure(server: ApiServer, tmp: Path, n: int, idle: float, inflight: int) -> dict[str, Any]:
    names = [f"r{i:04d}" for i in range(n)]
    limit = 120.0 + n
    await create(server, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    async with running_operator(server.operator_kubeconfig, tmp / "operator.log") as op:
        await asyncio.sleep(3.0)  # let Kopf start watching before the burst
        wall_start, start = time.time(), time.monotonic()
        print(f"controller: creating {n} Registries", file=sys.stderr, flush=True)
        async def create_registry(name: str) -> None:
            await create(server, registry(name))
        await bounded(inflight, [functools.partial(create_registry, name) for name in names])
        created = time.monotonic()
        await wait_all(server, op, n, reconciled, limit)
        done = time.monotonic()
        print(f"controller: all reconciled after {done - start:.1f}s; reporting Deployments available",
              file=sys.stderr, flush=True)
        await bounded(inflight, [functools.partial(report_available, server, NS, name) for name in names])
        reported = time.monotonic()
        await wait_all(server, op, n, ready, limit)
        all_ready = time.monotonic()
        print(f"controller: all Ready {all_ready - done:.1f}s later; waiting until the operator is quiet",
              file=sys.stderr, flush=True)
        await settle(server, op, wall_start, limit)
        mark = time.time()
        writes = server.writes(wall_start)
        print(f"controller: converged; {idle:.0f}s of idle", file=sys.stderr, flush=True)
        await asyncio.sleep(idle)  # the idle window is what is measured
        op.check()
        idle_writes = server.writes(mark)
    return {"n": n, "create_s": created - start, "reconciled_s": done - start, "report_s": reported - done,
            "ready_s": all_ready - done, "writes": writes, "idle_writes": idle_writes, "idle": idle}


def tables(r: dict[str, Any]) -> list[Table]:
    n: int = r["n"]
    writes: list[Write] = r["writes"]
    idle_writes: list[Write] = r["idle_writes"]
    summary = [[str(n), f"{r['create_s']:.1f}", f"{r['reconciled_s']:.1f}", f"{n / r['reconciled_s']:.1f}",
                f"{r['report_s']:.1f}", f"{r['ready_s']:.1f}", f"{len(writes) / n:.2f}",
                f"{len(idle_writes)} in {r['idle']:.0f}s"]]
    by_kind = collections.Counter((w.verb, w.resource) for w in writes)
    failed = collections.Counter((w.verb, w.resource) for w in writes if w.code >= 400)
    rows = [[verb, resource, str(count), f"{count / n:.2f}", str(failed[(verb, resource)])]
            for (verb, resource), count in sorted(by_kind.items(), key=lambda item: (-item[1], item[0]))]
    rows.append(["all", "", str(len(writes)), f"{len(writes) / n:.2f}", str(sum(failed.values()))])
    result: list[Table] = [
        ("Operator (real operator process, real kube-apiserver; the benchmark plays the Deployment controller)",
         ["registries", "apply all s", "all reconciled s", "reconciled/s", "report available s",
          "Ready after available s", "writes/registry", "idle writes"], summary),
        (f"Operator API writes for {n} Registries (audit log, the operator's ServiceAccount only)",
         ["verb", "resource", "writes", "per registry", "failed (>= 400)"], rows),
    ]
    if idle_writes:
        result.append((f"Operator writes in {r['idle']:.0f}s of idle after convergence",
                       ["verb", "resource", "namespace/name", "code"],
                       [[w.verb, w.resource, f"{w.namespace or ''}/{w.name or ''}", str(w.code)] for w in idle_writes]))
    return result


def run(options: Any) -> list[Table]:
    n = options.operator_registries or (20 if options.quick else 500)
    idle = options.operator_idle if options.operator_idle is not None else (10.0 if options.quick else 60.0)
    with tempfile.TemporaryDirectory(prefix="dockyard-bench-") as tmp:
        print("controller: starting the API server (hack/cluster.sh --control-plane-only up)",
              file=sys.stderr, flush=True)
        with control_plane(Path(tmp)) as server:
            result = asyncio.run(measure(server, Path(tmp), n, idle, options.operator_inflight))
    return tables(result)


if __name__ == "__main__":
    import run as runner

    sys.exit(runner.main(["--only", "controller", *sys.argv[1:]]))
