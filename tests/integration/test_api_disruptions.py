"""The operator rides out what a real control plane does to its clients, produced for real.

The API server restarts (an upgrade, a crashed process): every watch stream breaks mid-way and
the operator must reconnect. etcd compacts its history (the API server does so every five
minutes): a watch resumed from a resource version older than the compaction is answered
410 Expired and the operator must list afresh. Both happen here to a real kube-apiserver and
etcd, not to an imitation of them; what a user notices is that the operator keeps serving changes
and, having nothing new to do, writes nothing. The test runs its own control plane: killing the
session's would take every later test down with it if the restart failed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.cluster import control_plane
from tests.integration.kube import ApiServer, create, patch, wait_for
from tests.integration.operator import Operator, report_available, running_operator
from tests.integration.test_push_events import DEADLINE, live, operator_writes, registry, settle

REGISTRIES = "dockyard.dev/v1alpha1/registries"
DEPLOYMENTS = "apps/v1/deployments"
CONFIGMAPS = "v1/configmaps"


def _apiserver_process(server: ApiServer) -> tuple[Path, int, list[str]]:
    """The pid file, pid and command line (executable by its full path) of the running kube-apiserver."""
    pidfile = server.directory / "pids" / "kube-apiserver"
    pid = int(pidfile.read_text())
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    return pidfile, pid, [os.readlink(f"/proc/{pid}/exe"), *argv[1:]]


def compact_etcd(server: ApiServer) -> None:
    """Compact etcd's whole history, through its v3 HTTP gateway (etcdctl need not be installed)."""
    _, _, argv = _apiserver_process(server)
    etcd = next(a.split("=", 1)[1] for a in argv if a.startswith("--etcd-servers="))

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(etcd + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    revision = int(call("/v3/kv/range", {"key": "AA==", "count_only": True})["header"]["revision"])
    call("/v3/kv/compaction", {"revision": str(revision), "physical": True})


def exited(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


async def restart_apiserver(server: ApiServer) -> None:
    """Kill kube-apiserver (a crash: a graceful stop waits a minute for its own watchers), start it
    again with the same command line, and wait until it is ready."""
    pidfile, pid, argv = _apiserver_process(server)
    os.kill(pid, signal.SIGKILL)

    await wait_for(lambda: exited(pid), DEADLINE, message="kube-apiserver stopped")
    port = urllib.parse.urlsplit(server.url).port

    def port_free() -> bool:
        # The leader thread can be a zombie while the others still hold the listening socket.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True
    await wait_for(port_free, DEADLINE, message=f"port {port} released by the killed kube-apiserver")
    log = server.directory / "logs" / "kube-apiserver.log"
    # In the background, detached, as hack/cluster.sh starts it (which stops it by the pid file).
    shell = await asyncio.create_subprocess_exec(
        "sh", "-c", 'setsid "$@" >>"$0" 2>&1 </dev/null & echo $!', str(log), *argv, stdout=asyncio.subprocess.PIPE)
    started, _ = await shell.communicate()
    assert shell.returncode == 0, started
    assert started.strip().isdigit(), started
    pidfile.write_bytes(started)
    new = int(started)

    async def ready() -> bool:
        if exited(new):
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise AssertionError("the restarted kube-apiserver exited:\n" + "\n".join(tail))
        try:
            async with server.request("GET", "/readyz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False
    # Generous: on a loaded 2-core machine a cold start of kube-apiserver can take a while.
    await wait_for(ready, 4 * DEADLINE, interval=0.5, message="kube-apiserver ready again")


async def wait_ready(server: ApiServer, op: Operator, namespace: str, name: str) -> None:
    def ready() -> bool:
        op.check()
        obj = server.live(REGISTRIES, namespace, name) or {}
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in (obj.get("status") or {}).get("conditions") or [])
    await wait_for(ready, DEADLINE, message=f"Registry {name} Ready")


@pytest.fixture
def own_apiserver(apiserver: ApiServer, tmp_path: Path) -> Iterator[ApiServer]:
    """A control plane of this test's own (after the session's, so a machine without one skips)."""
    with control_plane(tmp_path / "control-plane") as server:
        yield server


async def test_the_operator_resumes_after_an_api_server_restart_over_a_compacted_history(
        own_apiserver: ApiServer, tmp_path: Path) -> None:
    apiserver, namespace = own_apiserver, "disruptions"
    await create(apiserver, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    async with running_operator(apiserver.operator_kubeconfig, tmp_path / "operator.log") as op:
        await create(apiserver, registry("main", namespace))
        await live(apiserver, op, DEPLOYMENTS, namespace, "main")
        await report_available(apiserver, namespace, "main")
        await wait_ready(apiserver, op, namespace, "main")
        await settle(apiserver, op, namespace)

        # Other writes move the cluster's resource version past everything the operator has seen;
        # compacted, the versions its watches would resume from are gone.
        for i in range(3):
            await create(apiserver, {"apiVersion": "v1", "kind": "ConfigMap",
                                     "metadata": {"name": f"unrelated-{i}", "namespace": namespace}})
        compact_etcd(apiserver)
        mark = time.time()
        await restart_apiserver(apiserver)

        # The operator watches again: a new Registry is served, and an edit of the old one too.
        await create(apiserver, registry("after", namespace))
        await live(apiserver, op, DEPLOYMENTS, namespace, "after")
        await settle(apiserver, op, namespace)
        rewritten = [w for w in operator_writes(apiserver, namespace, mark)
                     if re.fullmatch(r"main(-.*)?", w.name or "")]
        assert rewritten == [], f"relisting what it had handled made the operator write: {rewritten}"

        await patch(apiserver, REGISTRIES, "main", {"spec": {"readOnly": True}}, namespace)

        def read_only() -> bool:
            op.check()
            config = (apiserver.live(CONFIGMAPS, namespace, "main-config") or {}).get("data") or {}
            return "readOnly: true" in config.get("config.yaml", "")
        await wait_for(read_only, DEADLINE, message="an edit after the restart is applied")
