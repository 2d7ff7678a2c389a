"""Start and stop the integration tier's API server, with Dockyard installed on it.

``control_plane(directory)`` runs ``hack/cluster.sh --control-plane-only up`` on free ports of
127.0.0.1 with its state under DIRECTORY: etcd, kube-apiserver (audit log at
``DIRECTORY/cluster/audit.log``) and the kube-controller-manager's garbage collector, namespace
and ServiceAccount controllers. It applies the CRDs from ``crds/`` (and waits until they are
Established) and the install's ``manifests/namespace.yaml``, ``rbac.yaml`` and
``user-roles.yaml``, writes ``DIRECTORY/operator.kubeconfig`` with a token of the
``dockyard-operator`` ServiceAccount, yields the ``ApiServer`` and runs ``down`` on the way out,
also when starting or installing failed. A start that fails raises ``ClusterError``.

Used by the tier's session fixture (``conftest.py``) and by the operator benchmark
(``bench/controller.py``).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from tests.integration.kube import ROOT, ApiServer, cluster_bin_dir
from tests.registry.processes import free_port

CLUSTER = ROOT / "hack" / "cluster.sh"
MANIFESTS = ("namespace.yaml", "rbac.yaml", "user-roles.yaml")


class ClusterError(RuntimeError):
    """``hack/cluster.sh --control-plane-only up`` failed; ``stderr`` is what it said."""

    def __init__(self, returncode: int, stderr: str) -> None:
        self.returncode = returncode
        self.stderr = stderr
        super().__init__((stderr.strip().splitlines() or [f"exit code {returncode}"])[-1])


def kubectl(server: ApiServer, *args: str, input: str | None = None) -> str:
    """Run the cluster's own kubectl as the admin; fail the test with its error."""
    exe = str(cluster_bin_dir() / "kubectl")
    done = subprocess.run([exe, "--kubeconfig", str(server.kubeconfig), *args], input=input,
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def control_plane(directory: Path) -> Iterator[ApiServer]:
    """The API server with Dockyard's CRDs, namespace and RBAC; see the module docstring."""
    env = {**os.environ, "DOCKYARD_CLUSTER_DIR": str(directory / "cluster"),
           "DOCKYARD_APISERVER_PORT": str(free_port()), "DOCKYARD_ETCD_PORT": str(_free_port_pair())}
    try:
        up = subprocess.run([str(CLUSTER), "--control-plane-only", "up"], env=env, capture_output=True,
                            text=True, timeout=1800, check=False)
        if up.returncode != 0:
            raise ClusterError(up.returncode, up.stderr)
        server = ApiServer.from_directory(directory / "cluster")
        install(server, directory / "operator.kubeconfig")
        yield server
    finally:
        subprocess.run([str(CLUSTER), "--control-plane-only", "down"], env=env, capture_output=True,
                       timeout=300, check=False)


def install(server: ApiServer, operator_kubeconfig: Path) -> None:
    """Apply the CRDs, namespace and RBAC; write the operator's kubeconfig to OPERATOR_KUBECONFIG."""
    kubectl(server, "apply", "--server-side", "-f", str(ROOT / "crds"))
    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        name = yaml.safe_load(crd.read_text())["metadata"]["name"]
        kubectl(server, "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    for manifest in MANIFESTS:
        kubectl(server, "apply", "--server-side", "-f", str(ROOT / "manifests" / manifest))
    token = kubectl(server, "-n", "dockyard-system", "create", "token", "dockyard-operator",
                    "--duration=24h").strip()
    server.operator_kubeconfig = operator_kubeconfig
    config = yaml.safe_load(server.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": token}
    server.operator_kubeconfig.write_text(yaml.safe_dump(config))


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
