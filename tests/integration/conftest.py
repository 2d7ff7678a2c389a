"""Fixtures of the integration tier: a real kube-apiserver with Dockyard's CRDs and RBAC.

* ``apiserver`` (session) — etcd, kube-apiserver and the kube-controller-manager's garbage
  collector, namespace and ServiceAccount controllers, started by
  ``hack/cluster.sh --control-plane-only up`` on free ports of 127.0.0.1 and stopped at the
  end. The CRDs from ``crds/`` are applied to it (the real admission of the install) and so are
  the install's namespace and RBAC (``manifests/namespace.yaml``, ``rbac.yaml``); the operator's
  kubeconfig carries a token of its ServiceAccount. Outside CI, a machine that cannot start
  the server (no Go, no etcd) skips the tier with the reason; in CI that is a failure.
* ``namespace`` — a fresh namespace for one test. Afterwards Dockyard objects left in it lose
  their finalizers (the test's operator has stopped by then) and the namespace is deleted.
* ``kubeconfig`` — the operator's kubeconfig (its ServiceAccount's token).

The request helpers live in ``kube.py``; import them from there.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from tests.integration.kube import ApiError, ApiServer, cluster_bin_dir, create, delete, list_objects, patch
from tests.registry.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "hack" / "cluster.sh"
DOCKYARD_KINDS = ("dockyard.dev/v1alpha1/registries", "dockyard.dev/v1alpha1/replicationpolicies")


def kubectl(server: ApiServer, *args: str, input: str | None = None) -> str:
    """Run the cluster's own kubectl as the admin; fail the test with its error."""
    exe = str(cluster_bin_dir() / "kubectl")
    done = subprocess.run([exe, "--kubeconfig", str(server.kubeconfig), *args], input=input,
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    directory = tmp_path_factory.mktemp("apiserver")
    env = {**os.environ, "DOCKYARD_CLUSTER_DIR": str(directory / "cluster"),
           "DOCKYARD_APISERVER_PORT": str(free_port()), "DOCKYARD_ETCD_PORT": str(_free_port_pair())}
    up = subprocess.run([str(CLUSTER), "--control-plane-only", "up"], env=env, capture_output=True,
                        text=True, timeout=1800, check=False)
    try:
        if up.returncode != 0:
            why = (up.stderr.strip().splitlines() or [f"exit code {up.returncode}"])[-1]
            if os.environ.get("CI") == "true":
                pytest.fail(f"hack/cluster.sh could not start the API server:\n{up.stderr[-4000:]}")
            pytest.skip(f"no API server for the integration tier: {why}")
        server = ApiServer.from_directory(directory / "cluster")
        kubectl(server, "apply", "--server-side", "-f", str(ROOT / "crds"))
        for crd in sorted((ROOT / "crds").glob("*.yaml")):
            name = yaml.safe_load(crd.read_text())["metadata"]["name"]
            kubectl(server, "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        for manifest in ("namespace.yaml", "rbac.yaml", "user-roles.yaml"):
            kubectl(server, "apply", "--server-side", "-f", str(ROOT / "manifests" / manifest))
        token = kubectl(server, "-n", "dockyard-system", "create", "token", "dockyard-operator",
                        "--duration=24h").strip()
        server.operator_kubeconfig = directory / "operator.kubeconfig"
        config = yaml.safe_load(server.kubeconfig.read_text())
        config["users"][0]["user"] = {"token": token}
        server.operator_kubeconfig.write_text(yaml.safe_dump(config))
        yield server
    finally:
        subprocess.run([str(CLUSTER), "--control-plane-only", "down"], env=env, capture_output=True,
                       timeout=300, check=False)


def _free_port_pair() -> int:
    """A free port whose successor is free too (etcd's client and peer ports)."""
    while True:
        port = free_port()
        if port < 65535:
            try:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


@pytest_asyncio.fixture()
async def namespace(apiserver: ApiServer) -> AsyncIterator[str]:
    name = f"it-{uuid.uuid4().hex[:10]}"
    await create(apiserver, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        yield name
    finally:
        for resource in DOCKYARD_KINDS:
            for obj in await list_objects(apiserver, resource, name):
                with contextlib.suppress(ApiError):  # gone meanwhile
                    await patch(apiserver, resource, obj["metadata"]["name"], {"metadata": {"finalizers": None}},
                                name)
        await delete(apiserver, "v1/namespaces", name)


@pytest.fixture()
def kubeconfig(apiserver: ApiServer) -> Path:
    return apiserver.operator_kubeconfig
