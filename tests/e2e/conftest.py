"""A real Kubernetes cluster with Dockyard installed the way users install it.

`make test` runs this tier on the local one-node cluster of `hack/cluster.sh` (real control
plane, kubelet, containerd, kube-proxy, CoreDNS, a hostPath provisioner; no Docker), started
for the session unless one already runs there, and stopped afterwards (DOCKYARD_E2E_KEEP=1
keeps it). The image is built without Docker by `hack/image.sh` and imported into the
cluster's containerd. Starting that cluster needs root; elsewhere the tier skips with the
reason, except in CI, where it fails.

`make e2e` (DOCKYARD_E2E=1) prefers the cluster in KUBECONFIG when it answers, then a kind
cluster named $KIND_CLUSTER (kind and a Docker engine needed; the image is built with
`docker build` and loaded with `kind load`), then the local cluster. On a KUBECONFIG cluster
$DOCKYARD_IMAGE must be an image the nodes can pull.

Dockyard is then installed with `kubectl apply -k` from a copy of manifests/ whose image is
set to $DOCKYARD_IMAGE. Every test works in a namespace of its own, deleted at the end. All
waiting is polling with a deadline, and a timeout reports the Registry's status, the
namespace's events and the operator's log.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.integration.kube import cluster_bin_dir

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "dockyard-system"
OPERATOR = "dockyard-operator"
IMAGE_PLACEHOLDER = "dockyard"

T = TypeVar("T")


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def wait_until(what: str, probe: Callable[[], T | None], *, timeout: float, interval: float = 1.0,
               diagnose: Callable[[], str] | None = None) -> T:
    """Poll PROBE until it returns something truthy, or fail after TIMEOUT seconds saying WHAT."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            details = diagnose() if diagnose else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting until {what}\n{details}")
        time.sleep(interval)


class Kube:
    """kubectl against one cluster (one kubeconfig), with readable failures."""

    def __init__(self, kubectl: str, kubeconfig: str | None) -> None:
        self.kubectl = kubectl
        self.env = {**os.environ}
        if kubeconfig:
            self.env["KUBECONFIG"] = kubeconfig

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.kubectl, *args], input=input, capture_output=True, text=True,
                              env=self.env, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited with {done.returncode}:\n"
                                 f"{done.stderr.strip()}")
        return done

    def get(self, *args: str) -> dict[str, Any] | None:
        """`kubectl get ARGS -o json`, or None when the object does not exist."""
        done = self.run("get", *args, "-o", "json", check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr or "not found" in done.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)}: {done.stderr.strip()}")
        found: dict[str, Any] = json.loads(done.stdout)
        return found

    def items(self, *args: str) -> list[dict[str, Any]]:
        listed = self.get(*args)
        return list(listed["items"]) if listed else []

    def apply(self, docs: list[dict[str, Any]]) -> None:
        self.run("apply", "-f", "-", input=yaml.safe_dump_all(docs, sort_keys=False))

    def reachable(self) -> tuple[bool, str]:
        done = self.run("version", "--request-timeout=5s", check=False, timeout=30)
        lines = done.stderr.strip().splitlines()
        return done.returncode == 0, (lines[-1] if lines else f"exit code {done.returncode}")

    def operator_log(self, tail: int = 60) -> str:
        done = self.run("-n", OPERATOR_NAMESPACE, "logs", f"deployment/{OPERATOR}", f"--tail={tail}",
                        check=False)
        return done.stdout or done.stderr

    def describe_namespace(self, namespace: str) -> str:
        parts = []
        for args in (("get", "registries,deployments,pods,pvc,services", "-o", "wide"),
                     ("get", "events", "--sort-by=.lastTimestamp")):
            done = self.run("-n", namespace, *args, check=False)
            parts.append(f"$ kubectl -n {namespace} {' '.join(args)}\n{done.stdout}{done.stderr}")
        for reg in self.items("-n", namespace, "registries"):
            parts.append(f"registry/{reg['metadata']['name']} status:\n"
                         + yaml.safe_dump(reg.get("status", {}), sort_keys=False))
        parts.append(f"operator log (tail):\n{self.operator_log()}")
        return "\n".join(parts)


@dataclass
class Cluster:
    kube: Kube
    image: str
    description: str
    # The local cluster's extras: a StorageClass provisioning ReadWriteMany volumes, a
    # resolv.conf naming the cluster's DNS (for clients on the node), the API server's audit log.
    rwx_class: str | None = None
    resolv_conf: Path | None = None
    audit_log: Path | None = None


def _tool_problems() -> list[str]:
    problems = []
    if not shutil.which("kind"):
        problems.append("kind is not installed")
    docker = shutil.which("docker")
    if not docker:
        problems.append("docker is not installed")
    else:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=60, check=False)
        if info.returncode != 0:
            lines = (info.stderr or info.stdout).strip().splitlines()
            problems.append(f"no Docker engine ({lines[-1] if lines else 'docker info failed'})")
    return problems


def _run(*argv: str, timeout: float, what: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{what} failed ({' '.join(argv)}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def _build_and_load(image: str, kind_cluster: str) -> None:
    _run("docker", "build", "-t", image, str(ROOT), timeout=1800, what="building the image")
    _run("kind", "load", "docker-image", image, "--name", kind_cluster, timeout=600,
         what="loading the image into kind")


LOCAL_DIR = Path(os.environ.get("DOCKYARD_CLUSTER_DIR", "/tmp/dockyard-cluster"))


def _local_cluster(image: str, kubectl: str) -> Iterator[Cluster]:
    """The one-node cluster of hack/cluster.sh, started unless it already runs; the image imported."""
    def unavailable(why: str) -> None:
        if env_flag("CI"):
            pytest.fail(f"the local cluster cannot run: {why}")
        pytest.skip(f"no Kubernetes cluster for the e2e tier: {why}")

    if os.geteuid() != 0:
        unavailable("hack/cluster.sh needs root (containerd, the kubelet, iptables)")
    cluster_sh = str(ROOT / "hack" / "cluster.sh")
    kubeconfig = LOCAL_DIR / "kubeconfig"
    started = False
    if not (kubeconfig.exists() and Kube(kubectl, str(kubeconfig)).reachable()[0]):
        subprocess.run([cluster_sh, "down"], capture_output=True, timeout=300, check=False)
        up = subprocess.run([cluster_sh, "up"], capture_output=True, text=True, timeout=1800, check=False)
        if up.returncode != 0:
            unavailable(f"hack/cluster.sh up failed:\n{up.stderr[-4000:]}")
        started = True
    try:
        archive = subprocess.run([str(ROOT / "hack" / "image.sh"), "build", "--tag", image], capture_output=True,
                                 text=True, timeout=1800, check=False)
        if archive.returncode != 0:
            raise AssertionError(f"hack/image.sh build failed:\n{archive.stderr[-4000:]}")
        socket = Path((LOCAL_DIR / "run-dir").read_text().strip()) / "containerd.sock"
        _run(str(ROOT / "hack" / "image.sh"), "import", archive.stdout.strip().splitlines()[-1],
             "--address", str(socket), timeout=600, what="importing the image into containerd")
        resolv = LOCAL_DIR / "resolv.conf"
        resolv.write_text("nameserver 10.96.0.10\nsearch svc.cluster.local cluster.local\noptions ndots:5\n")
        yield Cluster(Kube(kubectl, str(kubeconfig)), image, "the local one-node cluster (hack/cluster.sh)",
                      rwx_class="standard", resolv_conf=resolv, audit_log=LOCAL_DIR / "audit.log")
    finally:
        if started and not env_flag("DOCKYARD_E2E_KEEP"):
            subprocess.run([cluster_sh, "down"], capture_output=True, timeout=300, check=False)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    kubectl = shutil.which("kubectl")
    # The local cluster's own kubectl (built by hack/cluster.sh at the cluster's version) first.
    built = cluster_bin_dir() / "kubectl"
    local_kubectl = str(built) if built.exists() else kubectl
    image = os.environ.get("DOCKYARD_IMAGE", "dockyard:dev")
    if os.environ.get("DOCKYARD_E2E") != "1":
        if not local_kubectl:
            (pytest.fail if env_flag("CI") else pytest.skip)("no kubectl: run hack/cluster.sh build")
        yield from _local_cluster(image, str(local_kubectl))
        return
    if not kubectl:
        pytest.skip("kubectl is not installed")
    kind_cluster = os.environ.get("KIND_CLUSTER", "dockyard")

    kube = Kube(kubectl, os.environ.get("KUBECONFIG"))
    if kube.reachable()[0]:
        context = kube.run("config", "current-context", check=False).stdout.strip()
        if context.startswith("kind-") and not _tool_problems():
            _build_and_load(image, context.removeprefix("kind-"))
            yield Cluster(kube, image, f"kind cluster {context[5:]} from KUBECONFIG")
        else:
            # The nodes must pull the image themselves: build and push it beforehand.
            yield Cluster(kube, image, f"cluster {context or '(default)'} from KUBECONFIG")
        return

    if _tool_problems():
        yield from _local_cluster(image, str(local_kubectl))
        return
    kubeconfig = str(tmp_path_factory.mktemp("kind") / "kubeconfig")
    existing = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True, timeout=60,
                              check=False).stdout.split()
    created = kind_cluster not in existing
    if created:
        _run("kind", "create", "cluster", "--name", kind_cluster, "--kubeconfig", kubeconfig,
             "--wait", "180s", timeout=900, what="creating the kind cluster")
    else:
        _run("kind", "export", "kubeconfig", "--name", kind_cluster, "--kubeconfig", kubeconfig,
             timeout=60, what="exporting the kind cluster's kubeconfig")
    try:
        _build_and_load(image, kind_cluster)
        yield Cluster(Kube(kubectl, kubeconfig), image, f"kind cluster {kind_cluster}")
    finally:
        if created and not env_flag("DOCKYARD_E2E_KEEP"):
            subprocess.run(["kind", "delete", "cluster", "--name", kind_cluster], capture_output=True,
                           timeout=600, check=False)


def set_image(directory: Path, ref: str) -> None:
    """`kustomize edit set image dockyard=REF` in DIRECTORY; the same edit by hand without kustomize."""
    exe = shutil.which("kustomize")
    if exe:
        _run_in(directory, exe, "edit", "set", "image", f"{IMAGE_PLACEHOLDER}={ref}")
        return
    path = directory / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    name, digest = ref.split("@", 1) if "@" in ref else (ref, None)
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    entry = {"name": IMAGE_PLACEHOLDER, "newName": name}
    if digest:
        entry["digest"] = digest
    elif tag:
        entry["newTag"] = tag
    others = [i for i in kustomization.get("images", []) if i["name"] != IMAGE_PLACEHOLDER]
    kustomization["images"] = [*others, entry]
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))


def _run_in(directory: Path, *argv: str) -> None:
    done = subprocess.run(list(argv), cwd=directory, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"


@dataclass
class Install:
    kube: Kube
    image: str
    crds: list[str]
    cluster: Cluster


@pytest.fixture(scope="session")
def installed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Install:
    """Dockyard installed with `kubectl apply -k` from manifests/ with the image set, and running."""
    kube = cluster.kube
    copy = tmp_path_factory.mktemp("install") / "manifests"
    shutil.copytree(ROOT / "manifests", copy)
    set_image(copy, cluster.image)
    kube.run("apply", "-k", str(copy), timeout=300)
    crds = [yaml.safe_load(p.read_text())["metadata"]["name"] for p in sorted((copy / "crds").glob("*.yaml"))]
    for crd in crds:
        kube.run("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=120s", timeout=180)
    # A cluster kept from an earlier session runs an operator of an earlier build of the same tag.
    kube.run("-n", OPERATOR_NAMESPACE, "rollout", "restart", f"deployment/{OPERATOR}", timeout=60)
    done = kube.run("-n", OPERATOR_NAMESPACE, "rollout", "status", f"deployment/{OPERATOR}",
                    "--timeout=300s", check=False, timeout=360)
    if done.returncode != 0:
        pods = kube.run("-n", OPERATOR_NAMESPACE, "describe", "pods", check=False).stdout
        hint = ("" if cluster.description.startswith("kind") else
                f"(the nodes pull {cluster.image} themselves: push it, or set DOCKYARD_IMAGE)\n")
        raise AssertionError(f"the operator did not become available on {cluster.description}:\n{hint}"
                             f"{done.stderr}\n{pods[-4000:]}\n{kube.operator_log()}")
    return Install(kube, cluster.image, crds, cluster)


@pytest.fixture
def namespace(installed: Install) -> Iterator[str]:
    """A namespace of the test's own; deleted afterwards (kept with DOCKYARD_E2E_KEEP=1)."""
    name = f"dockyard-e2e-{uuid.uuid4().hex[:8]}"
    installed.kube.run("create", "namespace", name)
    try:
        yield name
    finally:
        if not env_flag("DOCKYARD_E2E_KEEP"):
            installed.kube.run("delete", "namespace", name, "--wait=false", check=False)


def service_url(kube: Kube, namespace: str, name: str, port: int = 5000, timeout: float = 120) -> str:
    """`http://CLUSTER-IP:PORT` of a registry's Service once it answers from the node. A Ready pod
    serves through the Service only after the EndpointSlice controller and kube-proxy caught up."""
    service = kube.get("-n", namespace, "service", name) or {}
    url = f"http://{service['spec']['clusterIP']}:{port}"

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/v2/", timeout=5):
                return True
        except urllib.error.HTTPError:
            return True  # 401 and friends: a registry answered
        except OSError:
            return False
    wait_until(f"the Service {namespace}/{name} answers", answers, timeout=timeout,
               diagnose=lambda: kube.describe_namespace(namespace))
    return url


@contextmanager
def port_forward(kube: Kube, namespace: str, service: str, port: int,
                 timeout: float = 60) -> Iterator[str]:
    """`kubectl port-forward service/SERVICE :PORT`; yields the local `127.0.0.1:PORT` kubectl bound."""
    errors = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [kube.kubectl, "-n", namespace, "port-forward", "--address", "127.0.0.1",
         f"service/{service}", f":{port}"],
        stdout=subprocess.PIPE, stderr=errors, text=True, env=kube.env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + timeout
        local = None
        while local is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"kubectl port-forward to {namespace}/{service} did not start in {timeout}s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                proc.wait(10)
                errors.seek(0)
                err = errors.read().strip()
                raise AssertionError(f"kubectl port-forward to {namespace}/{service} exited: {err}")
            match = re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line)
            if match:
                local = f"127.0.0.1:{match.group(1)}"
        yield local
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        errors.close()
