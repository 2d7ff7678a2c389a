"""The real operator process (`dockyard operator run -A`) pointed at the real API server.

Shared by the integration tests of every kind: they start the operator exactly as a cluster
would (a process reading KUBECONFIG, with the token of its ServiceAccount), drive the API server
like kubectl and the controllers the tier does not run would, and read what the operator wrote.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.integration.kube import ApiServer, patch
from tests.registry.processes import DOCKYARD, free_port


class Operator:
    """The operator process; `check()` fails the test with its log when it died."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-8000:]

    def check(self) -> None:
        if self.proc.returncode is not None:
            pytest.fail(f"the operator exited with {self.proc.returncode}:\n{self.output()}")

    async def stop(self) -> None:
        if self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:  # the API server keeps serving while Kopf shuts down
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


@asynccontextmanager
async def running_operator(kubeconfig: Path, log: Path, *, image: str = "dockyard:test",
                           scope: tuple[str, ...] = ("-A",)) -> AsyncIterator[Operator]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "DOCKYARD_IMAGE": image}
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        proc = await asyncio.create_subprocess_exec(
            DOCKYARD, "operator", "run", *scope, "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
            stdout=fd, stderr=asyncio.subprocess.STDOUT, env=env)
    finally:
        os.close(fd)
    op = Operator(proc, log)
    try:
        yield op
    finally:
        await op.stop()


async def report_available(server: ApiServer, namespace: str, name: str) -> None:
    """What the Deployment controller (not run in this tier) writes once all pods of `name` are up."""
    dep = server.live("apps/v1/deployments", namespace, name)
    assert dep is not None, f"no Deployment {namespace}/{name}"
    n = dep["spec"]["replicas"]
    await patch(server, "apps/v1/deployments", name, {"status": {
        "observedGeneration": dep["metadata"]["generation"], "replicas": n, "updatedReplicas": n,
        "readyReplicas": n, "availableReplicas": n,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
    }}, namespace, subresource="status")
