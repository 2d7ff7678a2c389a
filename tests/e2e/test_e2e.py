"""End to end on a real cluster: the install, then every example a plain cluster can run.

What a cluster admin does and sees: `kubectl apply -k manifests/` gives a running operator
that may not delete a PersistentVolumeClaim; each examples/registry-*.yaml (but those on S3
storage, which need a bucket) becomes Ready (after reporting the Secrets it misses, if any),
serves a push and a pull through `kubectl port-forward` with skopeo (with its htpasswd users
and its TLS certificate where the example has them), follows `kubectl scale`, and keeps its
images on a retained PVC across deleting and re-creating the Registry.

Examples are adapted to the cluster only where they must be: they go into a namespace of
the test's own; a StorageClass the cluster lacks is replaced by the cluster's default (a
ReadWriteMany example needs DOCKYARD_E2E_RWX_CLASS naming a class that provisions RWX
volumes, or it is skipped); the Secrets an example names are created by the test.
"""

from __future__ import annotations

import copy
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import (
    OPERATOR,
    OPERATOR_NAMESPACE,
    ROOT,
    Install,
    Kube,
    port_forward,
    wait_until,
)
from tests.registry.images import Image, image, layout_blob, layout_ref, write_layout
from tests.registry.processes import skopeo, write_htpasswd

# Creating a kind cluster and building the image happen in the first test's setup.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]


def _needs_object_store(path: Path) -> bool:
    return any((d or {}).get("kind") == "Registry" and "s3" in d["spec"]["storage"]
               for d in yaml.safe_load_all(path.read_text()))


# An example on S3 storage needs a bucket, which a plain cluster does not have; the unit and
# integration tiers admit and render it.
EXAMPLES = [p for p in sorted((ROOT / "examples").glob("registry-*.yaml")) if not _needs_object_store(p)]
READY_TIMEOUT = 420.0  # image pulls and volume provisioning on a cold cluster
CHANGE_TIMEOUT = 180.0
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


# --- examples, adapted to the cluster ------------------------------------------------------------


@dataclass
class Access:
    """How a client reaches one deployed registry: TLS trust and credentials."""

    ca_dir: Path | None = None
    user: str | None = None
    password: str | None = None
    anonymous_pull: bool = True

    def flags(self, side: str, *, creds: bool) -> list[str]:
        tls = [f"--{side}-cert-dir", str(self.ca_dir)] if self.ca_dir else [f"--{side}-tls-verify=false"]
        if creds and self.user:
            return [*tls, f"--{side}-creds", f"{self.user}:{self.password}"]
        return tls


@dataclass
class Example:
    path: Path
    namespace: str
    docs: list[dict[str, Any]]
    secrets: list[dict[str, Any]] = field(default_factory=list)
    access: Access = field(default_factory=Access)

    @property
    def registry(self) -> dict[str, Any]:
        return next(d for d in self.docs if d["kind"] == "Registry")

    @property
    def name(self) -> str:
        name: str = self.registry["metadata"]["name"]
        return name

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.registry["spec"]
        return spec

    @property
    def replicas(self) -> int:
        return int(self.spec.get("replicas", 1))

    @property
    def pvc(self) -> dict[str, Any] | None:
        pvc: dict[str, Any] | None = self.spec["storage"].get("pvc")
        return pvc


def _openssl(workdir: Path, common_name: str, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for NAMES (and 127.0.0.1, where port-forward listens)."""
    exe = shutil.which("openssl")
    if not exe:
        pytest.skip("openssl is not installed: it makes the example's TLS certificates")
    workdir.mkdir(parents=True, exist_ok=True)
    crt, key = workdir / "tls.crt", workdir / "tls.key"
    san = ",".join([f"DNS:{n}" for n in names] + ["IP:127.0.0.1"])
    subprocess.run([exe, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(crt), "-subj", f"/CN={common_name}",
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True, timeout=60)
    return crt, key


def _tls_secret(name: str, namespace: str, crt: Path, key: Path) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {"tls.crt": crt.read_text(), "tls.key": key.read_text()}}


def storage_classes(kube: Kube) -> tuple[set[str], str | None]:
    classes = kube.items("storageclasses")
    names = {c["metadata"]["name"] for c in classes}
    default = next((c["metadata"]["name"] for c in classes
                    if c["metadata"].get("annotations", {}).get(DEFAULT_CLASS) == "true"), None)
    return names, default


def load_example(path: Path, installed: Install, namespace: str, workdir: Path) -> Example:
    """The example at PATH, placed in NAMESPACE, with the storage and Secrets this cluster needs.

    The Secrets the Registry names are made here (the test must know the password and trust
    the certificate), replacing any the example file brings.
    """
    kube = installed.kube
    workdir.mkdir(parents=True, exist_ok=True)
    # The test's namespace replaces the example's (and any Namespace object it brings).
    docs = [d for d in yaml.safe_load_all(path.read_text())
            if d and d.get("kind") not in ("Namespace", "Secret")]
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = namespace
    example = Example(path, namespace, docs)
    spec = example.spec
    if pvc := example.pvc:
        names, default = storage_classes(kube)
        if "ReadWriteMany" in pvc.get("accessModes", []):
            rwx = os.environ.get("DOCKYARD_E2E_RWX_CLASS") or installed.cluster.rwx_class
            if not rwx:
                pytest.skip(f"{path.name} needs ReadWriteMany volumes: set DOCKYARD_E2E_RWX_CLASS to a "
                            "StorageClass of this cluster that provisions them")
            pvc["storageClassName"] = rwx
        elif pvc.get("storageClassName") not in names:
            if default is None:
                pytest.skip(f"{path.name} needs a PersistentVolumeClaim and this cluster has no default "
                            "StorageClass")
            pvc.pop("storageClassName", None)

    auth = spec.get("auth")
    if auth:
        ref = auth["htpasswdSecretRef"]
        example.access.user, example.access.password = "e2e", uuid.uuid4().hex
        example.access.anonymous_pull = bool(auth.get("anonymousPull", False))
        htpasswd = write_htpasswd(workdir / "htpasswd", example.access.user, example.access.password)
        if auth.get("access") is not None:  # the test's user may do everything under e2e/, first rule
            auth["access"] = [{"repositories": ["e2e/**"], "users": [example.access.user],
                               "actions": ["pull", "push", "delete"]}, *auth["access"]]
        example.secrets.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                "metadata": {"name": ref["name"], "namespace": namespace},
                                "stringData": {ref.get("key", "htpasswd"): htpasswd.read_text()}})
    for hook in spec.get("webhooks") or []:
        ref = hook["secretRef"]
        example.secrets.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                "metadata": {"name": ref["name"], "namespace": namespace},
                                "stringData": {ref.get("key", "secret"): uuid.uuid4().hex}})
    tls = spec.get("tls")
    if tls:
        service = example.name
        dns_names = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
                     f"{service}.{namespace}.svc.cluster.local", "localhost"]
        crt, key = _openssl(workdir / "tls", f"{service}.{namespace}.svc", dns_names)
        example.access.ca_dir = workdir / "ca"
        example.access.ca_dir.mkdir()
        (example.access.ca_dir / "ca.crt").write_bytes(crt.read_bytes())
        example.secrets.append(_tls_secret(tls["secretName"], namespace, crt, key))
    ingress = spec.get("ingress") or {}
    tls_name = ingress.get("tlsSecretName")
    if tls_name and tls_name not in {s["metadata"]["name"] for s in example.secrets}:
        crt, key = _openssl(workdir / "ingress-tls", ingress["host"], [ingress["host"]])
        example.secrets.append(_tls_secret(tls_name, namespace, crt, key))
    return example


# --- watching a Registry -------------------------------------------------------------------------


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c.get("type") == ctype:
            found: dict[str, Any] = c
            return found
    return None


def current(obj: dict[str, Any]) -> bool:
    return bool(obj.get("status", {}).get("observedGeneration") == obj["metadata"].get("generation"))


def wait_ready(kube: Kube, ex: Example, replicas: int | None = None) -> dict[str, Any]:
    """The Registry once Ready=True for its current generation, with REPLICAS pods ready."""
    want = ex.replicas if replicas is None else replicas

    def ready() -> dict[str, Any] | None:
        obj = kube.get("-n", ex.namespace, "registry", ex.name)
        c = condition(obj, "Ready")
        if obj and current(obj) and c and c["status"] == "True" \
                and obj["status"].get("readyReplicas", 0) == want:
            return obj
        return None

    return wait_until(f"registry {ex.namespace}/{ex.name} is Ready with {want} ready replicas", ready,
                      timeout=READY_TIMEOUT, interval=2, diagnose=lambda: kube.describe_namespace(ex.namespace))


def children(kube: Kube, ex: Example, kind: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={ex.name},app.kubernetes.io/managed-by=dockyard"
    return kube.items("-n", ex.namespace, kind, "-l", selector)


def the_child(kube: Kube, ex: Example, kind: str) -> dict[str, Any]:
    found = children(kube, ex, kind)
    assert len(found) == 1, f"expected one {kind} of registry {ex.name}, found {len(found)}"
    return found[0]


def argocd_health(obj: dict[str, Any]) -> str | None:
    """What Argo CD's health check (manifests/gitops) says of OBJ; None without a Lua interpreter."""
    if not any(shutil.which(name) for name in ("lua5.1", "luajit", "lua")):
        return None
    from tests.unit.test_manifests import argo_health, health_scripts

    health, _ = argo_health(health_scripts()[f"resource.customizations.health.dockyard.dev_{obj['kind']}"], obj)
    return health


def deploy(kube: Kube, ex: Example) -> dict[str, Any]:
    """Apply the example; when it needs Secrets, first see it report them missing, then create them.

    Argo CD's health check must agree with the status on the way: Degraded while Stalled,
    Healthy once Ready.
    """
    if ex.secrets:
        kube.apply(ex.docs)

        def stalled() -> dict[str, Any] | None:
            obj = kube.get("-n", ex.namespace, "registry", ex.name)
            c = condition(obj, "Stalled")
            if obj and current(obj) and c and c["status"] == "True" and c.get("reason") == "SecretNotFound":
                return obj
            return None

        obj = wait_until(f"registry {ex.name} reports Stalled=True, reason SecretNotFound", stalled,
                         timeout=CHANGE_TIMEOUT, interval=2,
                         diagnose=lambda: kube.describe_namespace(ex.namespace))
        assert argocd_health(obj) in (None, "Degraded")
        kube.apply(ex.secrets)
    else:
        kube.apply(ex.docs)
    ready = wait_ready(kube, ex)
    assert argocd_health(ready) in (None, "Healthy")
    return ready


# --- talking to a registry through port-forward --------------------------------------------------


def _connects(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=5):
            return True
    except OSError:
        return False


class Client:
    """skopeo against one Registry's Service: by its DNS name from the node where the cluster's DNS
    is known (the local cluster), else through `kubectl port-forward`."""

    def __init__(self, installed: Install, ex: Example, workdir: Path) -> None:
        self.kube, self.ex, self.workdir = installed.kube, ex, workdir
        self.resolv_conf = installed.cluster.resolv_conf
        workdir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _service(self) -> Iterator[str]:
        svc = the_child(self.kube, self.ex, "services")
        ports = svc["spec"]["ports"]
        port = int(next((p for p in ports if p.get("name") == "registry"), ports[0])["port"])
        name = svc["metadata"]["name"]
        if self.resolv_conf:
            # kube-proxy programs a new endpoint a moment after the pod turns ready.
            address = (svc["spec"]["clusterIP"], port)
            wait_until(f"Service {name} accepts connections", lambda: _connects(address),
                       timeout=CHANGE_TIMEOUT, interval=0.5)
            yield f"{name}.{self.ex.namespace}.svc.cluster.local:{port}"
        else:
            with port_forward(self.kube, self.ex.namespace, name, port) as host:
                yield host

    def skopeo(self, *args: str, check: bool = True) -> bool:
        done = skopeo("copy", "--insecure-policy", *args, workdir=self.workdir, check=check,
                      resolv_conf=self.resolv_conf)
        return done.returncode == 0

    def push(self, img: Image, ref: str, *, creds: bool = True, check: bool = True) -> bool:
        layout = write_layout(self.workdir / f"src-{uuid.uuid4().hex[:6]}", {"t": img})
        with self._service() as host:
            return self.skopeo(*self.ex.access.flags("dest", creds=creds), f"oci:{layout}:t",
                               f"docker://{host}/{ref}", check=check)

    def pull(self, img: Image, ref: str) -> None:
        """Pull REF (anonymously where the example allows it) and compare it byte for byte with IMG."""
        out = self.workdir / f"pulled-{uuid.uuid4().hex[:6]}"
        creds = not self.ex.access.anonymous_pull
        with self._service() as host:
            self.skopeo(*self.ex.access.flags("src", creds=creds), f"docker://{host}/{ref}", f"oci:{out}:t")
        assert layout_ref(out, "t")["digest"] == img.digest, f"{ref} came back with another digest"
        for blob in img.blobs:
            assert layout_blob(out, blob.digest) == blob.data, f"{ref}: blob {blob.digest} differs"


# --- the tests -----------------------------------------------------------------------------------


def can_i(kube: Kube, *args: str) -> bool:
    """`kubectl auth can-i ARGS` as the operator's ServiceAccount, in every namespace."""
    done = kube.run("auth", "can-i", *args, "--all-namespaces",
                    f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR}", check=False)
    answer = done.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(args)}: {done.stderr.strip()}"
    return answer == "yes"


def test_operator_runs_its_own_image_with_least_privilege(installed: Install) -> None:
    kube = installed.kube
    deployment = kube.get("-n", OPERATOR_NAMESPACE, "deployment", OPERATOR)
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert container["image"] == env["DOCKYARD_IMAGE"] == installed.image
    assert deployment["status"].get("availableReplicas") == 1
    pods = kube.items("-n", OPERATOR_NAMESPACE, "pods", "-l", "app.kubernetes.io/name=dockyard-operator")
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert len(running) == 1, [p["status"].get("phase") for p in pods]
    assert all(s["ready"] for s in running[0]["status"]["containerStatuses"])

    assert can_i(kube, "patch", "registries.dockyard.dev", "--subresource=status")
    assert can_i(kube, "create", "deployments.apps")
    assert can_i(kube, "create", "persistentvolumeclaims")
    assert not can_i(kube, "delete", "persistentvolumeclaims"), "the operator may delete PVCs (images)"
    assert can_i(kube, "create", "secrets"), "each Registry's push events token Secret is created"
    for verb in ("update", "patch", "delete"):
        assert not can_i(kube, verb, "secrets"), f"the operator may {verb} Secrets (it reads and creates only)"
    assert not can_i(kube, "delete", "namespaces")


@pytest.fixture(params=EXAMPLES, ids=[p.stem for p in EXAMPLES])
def example(request: pytest.FixtureRequest, installed: Install, namespace: str, tmp_path: Path) -> Example:
    return load_example(request.param, installed, namespace, tmp_path / "example")


def test_example_becomes_ready_and_serves_push_and_pull(installed: Install, example: Example,
                                                       tmp_path: Path) -> None:
    kube = installed.kube
    registry = deploy(kube, example)
    assert registry["status"].get("endpoint"), "a Ready registry reports its in-cluster endpoint"
    if not example.spec.get("image"):
        pod = the_child(kube, example, "deployments")["spec"]["template"]["spec"]
        images = {c["image"] for c in pod["containers"]}
        assert images == {installed.image}, "registry pods must run the operator's own image by default"

    client = Client(installed, example, tmp_path / "client")
    img = image(seed=1, layers=2)
    if example.access.user:
        assert not client.push(img, "e2e/hello:v1", creds=False, check=False), \
            "an anonymous push was accepted by a registry with auth"
    assert client.push(img, "e2e/hello:v1")
    client.pull(img, "e2e/hello:v1")


def test_kubectl_scale_reaches_the_deployment(installed: Install, example: Example, tmp_path: Path) -> None:
    kube = installed.kube
    deploy(kube, example)
    client = Client(installed, example, tmp_path / "client")
    img = image(seed=7, layers=1)
    client.push(img, "e2e/scaled:v1")

    target = example.replicas - 1 if example.replicas > 1 else 0
    for replicas in (target, example.replicas):
        kube.run("-n", example.namespace, "scale", f"registry/{example.name}", f"--replicas={replicas}")

        def deployment_follows(want: int = replicas) -> bool:
            dep = the_child(kube, example, "deployments")
            return bool(dep["spec"]["replicas"] == want and dep["status"].get("replicas", 0) == want)

        wait_until(f"the Deployment of {example.name} runs {replicas} replicas", deployment_follows,
                   timeout=CHANGE_TIMEOUT, interval=2, diagnose=lambda: kube.describe_namespace(example.namespace))
    wait_ready(kube, example)
    if example.pvc:
        client.pull(img, "e2e/scaled:v1")  # the new pods serve what the old ones stored


def test_deleting_keeps_the_pvc_and_recreating_reattaches(installed: Install, example: Example,
                                                         tmp_path: Path) -> None:
    kube = installed.kube
    deploy(kube, example)
    client = Client(installed, example, tmp_path / "client")
    img = image(seed=23, layers=2)
    client.push(img, "e2e/kept:v1")
    status = (kube.get("-n", example.namespace, "registry", example.name) or {}).get("status", {})
    claim_name = (status.get("storage") or {}).get("claimName") or f"{example.name}-data"
    claim = kube.get("-n", example.namespace, "pvc", claim_name)
    retain = bool(example.pvc and example.pvc.get("retain", True))
    if example.pvc:
        assert claim is not None, f"no PVC {claim_name}"
        assert bool(claim["metadata"].get("ownerReferences")) is not retain, \
            "a retained PVC must have no owner; a retain: false PVC must be owned by the Registry"
    else:
        assert claim is None, "ephemeral storage must not create a PersistentVolumeClaim"
        assert children(kube, example, "persistentvolumeclaims") == [], \
            "ephemeral storage must not create a PersistentVolumeClaim"

    kube.run("-n", example.namespace, "delete", "registry", example.name, "--wait=true", "--timeout=120s",
             timeout=180)
    wait_until(f"the children of {example.name} are garbage-collected",
               lambda: not children(kube, example, "deployments") and not children(kube, example, "services"),
               timeout=CHANGE_TIMEOUT, interval=2, diagnose=lambda: kube.describe_namespace(example.namespace))
    if not example.pvc:
        return
    if not retain:
        wait_until(f"the PVC {claim_name} of a retain: false registry is deleted",
                   lambda: kube.get("-n", example.namespace, "pvc", claim_name) is None,
                   timeout=CHANGE_TIMEOUT, interval=2)
        return
    kept = kube.get("-n", example.namespace, "pvc", claim_name)
    assert claim is not None, "deleting the Registry deleted its retained PVC"
    assert kept is not None, "deleting the Registry deleted its retained PVC"
    assert kept["metadata"]["uid"] == claim["metadata"]["uid"]
    assert "deletionTimestamp" not in kept["metadata"]

    kube.apply(copy.deepcopy(example.docs))
    wait_ready(kube, example)
    again = kube.get("-n", example.namespace, "pvc", claim_name)
    assert again is not None, "the re-created Registry got a new PVC instead of re-attaching the old one"
    assert again["metadata"]["uid"] == claim["metadata"]["uid"], \
        "the re-created Registry got a new PVC instead of re-attaching the old one"
    client.pull(img, "e2e/kept:v1")
