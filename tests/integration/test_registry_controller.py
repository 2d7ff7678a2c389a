"""The Registry controller end to end: the real operator process against a real API server.

The tests act as kubectl (create, scale, delete by hand) and as the controllers this tier does
not run: they report Deployments available through `/status`, bind claims as the volume binder
would and release a claim's `pvc-protection` finalizer once nothing uses it. The
kube-controller-manager's garbage collector collects dependents by owner references, as in a
cluster: asynchronously. Each test works in its own namespace and checks what a cluster admin
would see: children, status, events, and silence once everything has converged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from tests.integration.kube import (
    ApiError,
    ApiServer,
    Write,
    _call,
    apply,
    create,
    delete,
    get,
    list_objects,
    patch,
    wait_for,
)
from tests.integration.operator import Operator, report_available, running_operator
from tests.registry.processes import free_port

CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"
REGISTRIES = "dockyard.dev/v1alpha1/registries"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
CONFIGMAPS = "v1/configmaps"
SERVICEACCOUNTS = "v1/serviceaccounts"
PVCS = "v1/persistentvolumeclaims"
PDBS = "policy/v1/poddisruptionbudgets"
SECRETS = "v1/secrets"
EVENTS = "v1/events"
NAMESPACES = "v1/namespaces"
STORAGECLASSES = "storage.k8s.io/v1/storageclasses"
DEADLINE = 60.0  # two shared cores: the operator, the API server, etcd and the GC compete
CHECKSUM = "dockyard.dev/checksum"
PVC_PROTECTION = "kubernetes.io/pvc-protection"

RWO = {"pvc": {"size": "1Gi"}}
RWX = {"pvc": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}
BOTH_STORAGES = {"pvc": {"size": "1Gi"}, "emptyDir": {}}  # refused by the CRD's rule on spec.storage


def registry(name: str, spec: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest_asyncio.fixture()
async def operator(apiserver: ApiServer, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[Operator]:
    async with running_operator(kubeconfig, tmp_path / "operator.log") as op:
        yield op


def condition(apiserver: ApiServer, namespace: str, name: str, type_: str) -> dict[str, Any]:
    obj = apiserver.live(REGISTRIES, namespace, name) or {}
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


async def wait_condition(apiserver: ApiServer, op: Operator, namespace: str, name: str, type_: str, status: str,
                         reason: str | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        op.check()
        cond = condition(apiserver, namespace, name, type_)
        ok = cond.get("status") == status and (reason is None or cond.get("reason") == reason)
        return cond if ok else None
    return await wait_for(check, DEADLINE, message=f"{name}: {type_}={status} {reason or ''}")


async def wait_live(apiserver: ApiServer, op: Operator, resource: str, namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        op.check()
        return apiserver.live(resource, namespace, name)
    return await wait_for(check, DEADLINE, message=f"{resource} {name} exists")


def spec_of(apiserver: ApiServer, resource: str, namespace: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = (apiserver.live(resource, namespace, name) or {}).get("spec") or {}
    return spec


def pod_annotations(apiserver: ApiServer, namespace: str, name: str) -> dict[str, str]:
    template = spec_of(apiserver, DEPLOYMENTS, namespace, name).get("template") or {}
    annotations: dict[str, str] = (template.get("metadata") or {}).get("annotations") or {}
    return annotations


def claim_size(apiserver: ApiServer, namespace: str, name: str) -> str | None:
    size: str | None = spec_of(apiserver, PVCS, namespace, name).get("resources", {}).get("requests", {}).get("storage")
    return size


async def events_for(apiserver: ApiServer, namespace: str, name: str) -> list[dict[str, Any]]:
    items = await list_objects(apiserver, EVENTS, namespace)
    return [e for e in items if e.get("involvedObject", {}).get("name") == name
            and e.get("involvedObject", {}).get("kind") == "Registry"]


async def _events_with(apiserver: ApiServer, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in await events_for(apiserver, namespace, name) if e["reason"] == reason]


async def ready(apiserver: ApiServer, op: Operator, namespace: str, name: str) -> None:
    await wait_live(apiserver, op, DEPLOYMENTS, namespace, name)
    await report_available(apiserver, namespace, name)
    await wait_condition(apiserver, op, namespace, name, "Ready", "True")


def writes_to(apiserver: ApiServer, namespace: str, since: float) -> list[Write]:
    """The operator's writes since SINCE into NAMESPACE or outside any namespace. Earlier tests'
    namespaces may still be terminating meanwhile, and their Registries are reconciled too."""
    return [w for w in apiserver.writes(since) if w.namespace in (namespace, None)]


async def quiet(apiserver: ApiServer, op: Operator, namespace: str, seconds: float = 3.0) -> list[Write]:
    """The operator's writes during a quiet period (the tests make none)."""
    mark = time.time()
    await asyncio.sleep(seconds)  # observing a time window is the assertion itself
    op.check()
    return writes_to(apiserver, namespace, mark)


async def test_create_makes_owned_children_and_reports_progress(
        apiserver: ApiServer, namespace: str, operator: Operator) -> None:
    reg = await create(apiserver, registry("main", {"storage": RWO}, namespace))
    uid = reg["metadata"]["uid"]
    dep = await wait_live(apiserver, operator, DEPLOYMENTS, namespace, "main")
    for resource, name in [(SERVICES, "main"), (CONFIGMAPS, "main-config"),
                           (SERVICEACCOUNTS, "main"), (DEPLOYMENTS, "main")]:
        obj = await wait_live(apiserver, operator, resource, namespace, name)
        (ref,) = obj["metadata"]["ownerReferences"]
        assert (ref["uid"], ref["kind"], ref["controller"]) == (uid, "Registry", True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "dockyard"
        managers = {m["manager"] for m in obj["metadata"]["managedFields"]}
        assert managers == {"dockyard"}
    pvc = await wait_live(apiserver, operator, PVCS, namespace, "main-data")
    assert "ownerReferences" not in pvc["metadata"], "a retained PVC must never be garbage-collected"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "dockyard:test"

    cond = await wait_condition(apiserver, operator, namespace, "main", "Reconciling", "True")
    assert cond["observedGeneration"] == 1

    def reported() -> dict[str, Any] | None:
        status: dict[str, Any] = (apiserver.live(REGISTRIES, namespace, "main") or {}).get("status") or {}
        return status if status.get("endpoint") else None
    status = await wait_for(reported, DEADLINE, message="status reports the endpoint")
    assert status["observedGeneration"] == 1
    assert status["selector"] == "app.kubernetes.io/name=dockyard-registry,app.kubernetes.io/instance=main"
    assert status["endpoint"] == f"http://main.{namespace}.svc:5000"
    assert condition(apiserver, namespace, "main", "Ready")["status"] == "False"
    assert condition(apiserver, namespace, "main", "Stalled")["status"] == "False"


async def test_available_deployment_makes_the_registry_ready_with_one_event(
        apiserver: ApiServer, namespace: str, operator: Operator) -> None:
    await create(apiserver, registry("main", {"storage": RWO}, namespace))
    await ready(apiserver, operator, namespace, "main")
    status = apiserver.live(REGISTRIES, namespace, "main")["status"]  # type: ignore[index]
    assert (status["replicas"], status["readyReplicas"]) == (1, 1)
    assert condition(apiserver, namespace, "main", "Reconciling")["status"] == "False"
    events = await wait_for(lambda: _events_with(apiserver, namespace, "main", "Ready"), DEADLINE)
    assert len(events) == 1
    assert events[0]["type"] == "Normal"


async def test_scale_subresource_drives_the_deployment_and_the_pdb(
        apiserver: ApiServer, namespace: str, operator: Operator) -> None:
    await create(apiserver, registry("ha", {"storage": RWX}, namespace))
    await ready(apiserver, operator, namespace, "ha")
    assert apiserver.live(PDBS, namespace, "ha") is None

    await patch(apiserver, REGISTRIES, "ha", {"spec": {"replicas": 3}}, namespace, subresource="scale")
    await wait_for(lambda: spec_of(apiserver, DEPLOYMENTS, namespace, "ha").get("replicas") == 3, DEADLINE,
                   message="Deployment scaled to 3")
    pdb = await wait_live(apiserver, operator, PDBS, namespace, "ha")
    assert pdb["spec"]["maxUnavailable"] == 1
    await wait_condition(apiserver, operator, namespace, "ha", "Ready", "False")
    await report_available(apiserver, namespace, "ha")
    await wait_condition(apiserver, operator, namespace, "ha", "Ready", "True")
    scale = await get(apiserver, REGISTRIES, "ha", namespace, subresource="scale")
    assert scale is not None
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "app.kubernetes.io/name=dockyard-registry,app.kubernetes.io/instance=ha"

    await patch(apiserver, REGISTRIES, "ha", {"spec": {"replicas": 1}}, namespace)
    await wait_for(lambda: apiserver.live(PDBS, namespace, "ha") is None, DEADLINE, message="PDB removed at 1 replica")
    assert spec_of(apiserver, DEPLOYMENTS, namespace, "ha")["replicas"] == 1


async def test_children_deleted_or_changed_by_hand_come_back(
        apiserver: ApiServer, namespace: str, operator: Operator) -> None:
    await create(apiserver, registry("main", {"storage": RWO}, namespace))
    await ready(apiserver, operator, namespace, "main")
    old = apiserver.live(SERVICES, namespace, "main")
    assert old is not None
    await delete(apiserver, SERVICES, "main", namespace)

    def recreated() -> dict[str, Any] | None:
        svc = apiserver.live(SERVICES, namespace, "main")
        return svc if svc and svc["metadata"]["uid"] != old["metadata"]["uid"] else None
    svc = await wait_for(recreated, DEADLINE, message="Service re-created")
    assert svc["spec"]["ports"][0]["port"] == 5000

    await patch(apiserver, DEPLOYMENTS, "main", {"spec": {"replicas": 5}}, namespace)
    await wait_for(lambda: spec_of(apiserver, DEPLOYMENTS, namespace, "main").get("replicas") == 1,
                   DEADLINE, message="Deployment replicas repaired")


async def test_missing_secret_stalls_then_recovers_and_rotation_rolls_pods(
        apiserver: ApiServer, namespace: str, operator: Operator) -> None:
    spec = {"storage": RWO, "auth": {"htpasswdSecretRef": {"name": "users"}}}
    await create(apiserver, registry("secure", spec, namespace))
    cond = await wait_condition(apiserver, operator, namespace, "secure", "Stalled", "True", "SecretNotFound")
    assert "users" in cond["message"]
    assert apiserver.live(DEPLOYMENTS, namespace, "secure") is None
    warnings = await wait_for(lambda: _events_with(apiserver, namespace, "secure", "SecretNotFound"), DEADLINE)
    assert len(warnings) == 1
    assert warnings[0]["type"] == "Warning"

    await create(apiserver, {"apiVersion": "v1", "kind": "Secret",
                             "metadata": {"name": "users", "namespace": namespace},
                             "data": {"htpasswd": base64.b64encode(b"alice:$2y$05$abc").decode()}})
    await wait_condition(apiserver, operator, namespace, "secure", "Stalled", "False")
    await wait_live(apiserver, operator, DEPLOYMENTS, namespace, "secure")
    first = pod_annotations(apiserver, namespace, "secure")[CHECKSUM]
    await ready(apiserver, operator, namespace, "secure")
    assert len(await _events_with(apiserver, namespace, "secure", "SecretNotFound")) == 1

    await patch(apiserver, SECRETS, "users", {"data": {"htpasswd": base64.b64encode(b"bob:$2y$05$def").decode()}},
                namespace)
    await wait_for(lambda: pod_annotations(apiserver, namespace, "secure").get(CHECKSUM) != first, DEADLINE,
                   message="pods roll on rotation")


async def _admitted(apiserver: ApiServer, obj: dict[str, Any]) -> bool:
    """Whether the server would store OBJ now (a dry run: nothing is stored)."""
    resource = apiserver.resource_for(obj["apiVersion"], obj["kind"])
    try:
        await _call(apiserver, "POST", apiserver.path(resource, obj["metadata"]["namespace"]), body=obj,
                    params={"dryRun": "All"})
    except ApiError as exc:
        if exc.status == 422:
            return False
        raise
    return True


@contextlib.asynccontextmanager
async def registry_crd_before_the_storage_rule(apiserver: ApiServer, probe: dict[str, Any]) -> AsyncIterator[None]:
    """The Registry CRD as it was before `exactly one of storage.pvc, storage.emptyDir or storage.s3`, applied
    by the install's own field manager; the CRD as it was is restored afterwards: other tests
    share it. PROBE is an object only that rule refuses: it tells when either version is served."""
    live = await get(apiserver, CRDS, "registries.dockyard.dev")
    assert live is not None
    (manager,) = {m["manager"] for m in live["metadata"]["managedFields"] if m["operation"] == "Apply"}
    installed = {"apiVersion": live["apiVersion"], "kind": live["kind"],
                 "metadata": {"name": live["metadata"]["name"]}, "spec": live["spec"]}
    older = copy.deepcopy(installed)
    storage = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["storage"]
    rules = [r for r in storage["x-kubernetes-validations"] if "exactly one of" not in r.get("message", "")]
    assert len(rules) < len(storage["x-kubernetes-validations"]), "the CRD has no storage rule to remove"
    if rules:
        storage["x-kubernetes-validations"] = rules
    else:
        del storage["x-kubernetes-validations"]
    try:
        await apply(apiserver, older, manager=manager, force=True)
        await wait_for(lambda: _admitted(apiserver, probe), DEADLINE, message="the older CRD is served")
        yield
    finally:
        await apply(apiserver, installed, manager=manager, force=True)
        await wait_for(lambda: _refused(apiserver, probe), DEADLINE, message="the installed CRD is served again")


async def _refused(apiserver: ApiServer, obj: dict[str, Any]) -> bool:
    return not await _admitted(apiserver, obj)


async def test_invalid_spec_stalls_with_one_event_and_touches_nothing(
        apiserver: ApiServer, namespace: str, kubeconfig: Path, tmp_path: Path) -> None:
    """Admission refuses this spec today; a Registry stored before the rule existed must still not
    be acted on. It is made as it happens to users: created under the CRD without the rule, which
    is then tightened again (validation ratcheting keeps the stored object writable)."""
    bad = registry("bad", {"storage": BOTH_STORAGES}, namespace)
    with pytest.raises(ApiError, match=r"exactly one of storage\.pvc, storage\.emptyDir or storage\.s3"):
        await create(apiserver, bad)
    probe = registry("probe", {"storage": BOTH_STORAGES}, namespace)
    async with registry_crd_before_the_storage_rule(apiserver, probe):
        await create(apiserver, bad)
    assert await _refused(apiserver, probe), "the installed CRD refuses the spec again"

    async with running_operator(kubeconfig, tmp_path / "operator.log") as op:
        cond = await wait_condition(apiserver, op, namespace, "bad", "Stalled", "True", "InvalidSpec")
        assert "spec.storage" in cond["message"]
        assert apiserver.live(DEPLOYMENTS, namespace, "bad") is None
        assert apiserver.live(PVCS, namespace, "bad-data") is None
        assert len(await wait_for(lambda: _events_with(apiserver, namespace, "bad", "InvalidSpec"), DEADLINE)) == 1
        assert await quiet(apiserver, op, namespace, 2.0) == []


async def test_no_writes_once_converged(apiserver: ApiServer, namespace: str, operator: Operator) -> None:
    await create(apiserver, registry("main", {"storage": RWO}, namespace))
    await create(apiserver, registry("ha", {"storage": RWX, "replicas": 2}, namespace))
    await ready(apiserver, operator, namespace, "main")
    await ready(apiserver, operator, namespace, "ha")
    for name in ("main", "ha"):  # the last thing convergence writes: the Ready event
        async def ready_events(name: str = name) -> list[dict[str, Any]]:
            return await _events_with(apiserver, namespace, name, "Ready")
        await wait_for(ready_events, DEADLINE)
    assert await quiet(apiserver, operator, namespace) == []


async def _restart_and_resume(apiserver: ApiServer, namespace: str, kubeconfig: Path, log: Path) -> None:
    async with running_operator(kubeconfig, log) as op:
        # The restarted operator has resumed once its handler for the Registry succeeded: Kopf logs it.
        def resumed() -> bool:
            op.check()
            return "Handler 'registry_changed' succeeded" in op.output()
        await wait_for(resumed, DEADLINE, message="operator resumed the Registry")
        assert await quiet(apiserver, op, namespace) == []


async def test_restart_rewrites_nothing(apiserver: ApiServer, namespace: str, kubeconfig: Path,
                                        tmp_path: Path) -> None:
    async with running_operator(kubeconfig, tmp_path / "first.log") as op:
        await create(apiserver, registry("main", {"storage": RWO}, namespace))
        await ready(apiserver, op, namespace, "main")
        await wait_for(lambda: _events_with(apiserver, namespace, "main", "Ready"), DEADLINE)
    mark = time.time()
    await _restart_and_resume(apiserver, namespace, kubeconfig, tmp_path / "second.log")
    assert writes_to(apiserver, namespace, mark) == [], "a restart must not rewrite children or status"


async def test_a_size_the_server_canonicalises_is_not_rewritten(
        apiserver: ApiServer, namespace: str, kubeconfig: Path, tmp_path: Path) -> None:
    """The API server stores a claim's `1.5Gi` as `1536Mi`: the same size, which a reconcile with
    nothing to change must not write again (a write per reconcile, or a claim the operator keeps
    "expanding" to the size it already has)."""
    start = time.time()

    def claim_writes(since: float) -> list[Write]:
        return [w for w in apiserver.writes(since) if w.resource.startswith("persistentvolumeclaims")
                and w.namespace == namespace]

    async with running_operator(kubeconfig, tmp_path / "first.log") as op:
        await create(apiserver, registry("main", {"storage": {"pvc": {"size": "1.5Gi"}}}, namespace))
        await ready(apiserver, op, namespace, "main")
        await wait_for(lambda: _events_with(apiserver, namespace, "main", "Ready"), DEADLINE)
        assert claim_size(apiserver, namespace, "main-data") == "1536Mi", "the server canonicalises the size"
        created = claim_writes(start)  # several reconciles ran meanwhile: one per child event
        assert [w.code for w in created] == [201], f"the claim is written once, when created: {created}"
        mark = time.time()
        # Touching a child is an event the operator reconciles on: nothing is to change.
        await patch(apiserver, SERVICES, "main", {"metadata": {"annotations": {"example.com/touched": "yes"}}},
                    namespace)
        assert await quiet(apiserver, op, namespace) == []
    await _restart_and_resume(apiserver, namespace, kubeconfig, tmp_path / "second.log")
    assert claim_writes(mark) == [], "an unchanged 1.5Gi claim must not be written again"
    assert claim_size(apiserver, namespace, "main-data") == "1536Mi"


async def test_deleting_keeps_the_retained_volume_and_recreating_reattaches_it(
        apiserver: ApiServer, namespace: str, operator: Operator) -> None:
    await create(apiserver, registry("main", {"storage": RWO}, namespace))
    await ready(apiserver, operator, namespace, "main")
    pvc = apiserver.live(PVCS, namespace, "main-data")
    assert pvc is not None

    await delete(apiserver, REGISTRIES, "main", namespace)
    await wait_for(lambda: apiserver.live(REGISTRIES, namespace, "main") is None, DEADLINE,
                   message="Registry deleted")
    owned = [(DEPLOYMENTS, "main"), (SERVICES, "main"), (CONFIGMAPS, "main-config"), (SERVICEACCOUNTS, "main")]
    await wait_for(lambda: all(apiserver.live(r, namespace, n) is None for r, n in owned), DEADLINE,
                   message="children collected")
    kept = apiserver.live(PVCS, namespace, "main-data")
    assert kept is not None
    assert kept["metadata"]["uid"] == pvc["metadata"]["uid"]
    assert "deletionTimestamp" not in kept["metadata"]

    await create(apiserver, registry("main", {"storage": RWO}, namespace))
    dep = await wait_live(apiserver, operator, DEPLOYMENTS, namespace, "main")
    claim = dep["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "main-data"}} in claim
    assert apiserver.live(PVCS, namespace, "main-data")["metadata"]["uid"] == pvc["metadata"]["uid"]  # type: ignore[index]


async def test_unretained_volume_goes_with_the_registry(
        apiserver: ApiServer, namespace: str, operator: Operator) -> None:
    await create(apiserver, registry("scratch", {"storage": {"pvc": {"size": "1Gi", "retain": False}}}, namespace))
    await wait_live(apiserver, operator, PVCS, namespace, "scratch-data")
    await delete(apiserver, REGISTRIES, "scratch", namespace)

    def collected() -> dict[str, Any] | bool:
        pvc = apiserver.live(PVCS, namespace, "scratch-data")
        return pvc is None or (pvc if "deletionTimestamp" in pvc["metadata"] else False)
    terminating = await wait_for(collected, DEADLINE, message="PVC collected")
    if isinstance(terminating, dict):  # the pvc-protection controller's part: no pod uses the claim
        finalizers = [f for f in terminating["metadata"].get("finalizers") or [] if f != PVC_PROTECTION]
        with contextlib.suppress(ApiError):  # gone meanwhile
            await patch(apiserver, PVCS, "scratch-data", {"metadata": {"finalizers": finalizers or None}}, namespace)
        await wait_for(lambda: apiserver.live(PVCS, namespace, "scratch-data") is None, DEADLINE,
                       message="PVC gone")


@contextlib.asynccontextmanager
async def storage_class(apiserver: ApiServer, name: str, *, expandable: bool) -> AsyncIterator[str]:
    """A StorageClass (cluster-wide: deleted afterwards) whose claims can or cannot be expanded."""
    await create(apiserver, {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
                             "provisioner": "example.com/volumes", "allowVolumeExpansion": expandable})
    try:
        yield name
    finally:
        await delete(apiserver, STORAGECLASSES, name)


@pytest.mark.parametrize("size", ["5Gi"])
async def test_growing_the_volume_expands_the_claim(
        apiserver: ApiServer, namespace: str, operator: Operator, size: str) -> None:
    async with storage_class(apiserver, f"{namespace}-expandable", expandable=True) as cls:
        await create(apiserver, registry("main", {"storage": {"pvc": {"size": "1Gi", "storageClassName": cls}}},
                                         namespace))
        await wait_live(apiserver, operator, PVCS, namespace, "main-data")
        await bind(apiserver, namespace, "main-data", "1Gi")  # only a bound claim can be expanded
        await patch(apiserver, REGISTRIES, "main", {"spec": {"storage": {"pvc": {"size": size}}}}, namespace)
        await wait_for(lambda: claim_size(apiserver, namespace, "main-data") == size, DEADLINE,
                       message="PVC expanded")


async def bind(apiserver: ApiServer, namespace: str, claim: str, capacity: str) -> None:
    """What the volume binder (not run in this tier) writes when it binds CLAIM to a volume."""
    await patch(apiserver, PVCS, claim, {"spec": {"volumeName": f"pv-{namespace}-{claim}"}}, namespace)
    access = spec_of(apiserver, PVCS, namespace, claim)["accessModes"]
    await patch(apiserver, PVCS, claim, {"status": {"phase": "Bound", "accessModes": access,
                                                    "capacity": {"storage": capacity}}},
                namespace, subresource="status")


async def test_a_namespaced_operator_leaves_other_namespaces_alone(
        apiserver: ApiServer, namespace: str, kubeconfig: Path, tmp_path: Path) -> None:
    other_ns = f"{namespace}-other"
    await create(apiserver, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other_ns}})
    try:
        async with running_operator(kubeconfig, tmp_path / "operator.log", scope=("-n", namespace)) as op:
            await create(apiserver, registry("elsewhere", {"storage": RWO}, other_ns))
            await create(apiserver, registry("main", {"storage": RWO}, namespace))
            await wait_live(apiserver, op, DEPLOYMENTS, namespace, "main")
            await wait_condition(apiserver, op, namespace, "main", "Reconciling", "True")
            assert apiserver.live(DEPLOYMENTS, other_ns, "elsewhere") is None
            assert not (apiserver.live(REGISTRIES, other_ns, "elsewhere") or {}).get("status")
            assert [w for w in apiserver.writes() if w.namespace == other_ns] == []
    finally:
        await delete(apiserver, NAMESPACES, other_ns)


async def test_a_refused_child_stalls_the_registry_but_never_holds_back_the_others(
        apiserver: ApiServer, namespace: str, operator: Operator) -> None:
    # A StorageClass without volume expansion: the API server forbids growing a claim of it.
    async with storage_class(apiserver, f"{namespace}-fixed", expandable=False) as cls:
        await create(apiserver, registry("main", {"storage": {"pvc": {"size": "1Gi", "storageClassName": cls}}},
                                         namespace))
        await ready(apiserver, operator, namespace, "main")
        await bind(apiserver, namespace, "main-data", "1Gi")
        await wait_for(lambda: ((apiserver.live(REGISTRIES, namespace, "main") or {}).get("status") or {})
                       .get("storage", {}).get("capacity") == "1Gi", DEADLINE, message="status reports the capacity")
        before = pod_annotations(apiserver, namespace, "main")
        await patch(apiserver, REGISTRIES, "main", {"spec": {"readOnly": True,
                                                             "storage": {"pvc": {"size": "5Gi"}}}}, namespace)
        cond = await wait_condition(apiserver, operator, namespace, "main", "Stalled", "True", "ApplyFailed")
        assert "PersistentVolumeClaim 'main-data'" in cond["message"], cond
        assert "resize" in cond["message"], cond
        config = apiserver.live(CONFIGMAPS, namespace, "main-config")
        assert config is not None
        assert "readOnly: true" in config["data"]["config.yaml"]
        after = pod_annotations(apiserver, namespace, "main")
        assert after[CHECKSUM] != before[CHECKSUM], "the pods must still roll to the new configuration"
        assert claim_size(apiserver, namespace, "main-data") == "1Gi"


def _point_kubeconfig(kubeconfig: Path, copy_to: Path, server: str) -> None:
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"] = {"server": server}
    copy_to.write_text(yaml.safe_dump(config))


@contextlib.asynccontextmanager
async def recording_proxy(apiserver: ApiServer, kubeconfig: Path, proxied: Path,
                          recorded: list[tuple[str, dict[str, str]]]) -> AsyncIterator[Path]:
    """A plain-HTTP proxy to the API server that records each request's path and query (the
    audit log leaves out reads and watches); yields PROXIED, a copy of KUBECONFIG pointing at it."""
    context = ssl.create_default_context(cafile=str(apiserver.ca))
    hop = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding", "content-encoding"}

    async def forward(request: web.Request) -> web.StreamResponse:
        recorded.append((request.path, dict(request.query)))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop}
        body = await request.read()
        async with upstream.request(request.method, apiserver.url + request.path_qs, data=body or None,
                                    headers=headers, ssl=context) as answer:
            response = web.StreamResponse(status=answer.status, headers={
                k: v for k, v in answer.headers.items() if k.lower() not in hop})
            await response.prepare(request)
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):  # the operator hung up
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", forward)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    port = free_port()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as upstream:
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
            _point_kubeconfig(kubeconfig, proxied, f"http://127.0.0.1:{port}")
            yield proxied
        finally:
            await runner.cleanup()


async def test_the_operator_streams_only_what_it_manages(
        apiserver: ApiServer, namespace: str, kubeconfig: Path, tmp_path: Path) -> None:
    """On a real cluster every Deployment, ConfigMap and Helm release Secret would flow through
    the operator otherwise: the API server filters them out before they are sent."""
    recorded: list[tuple[str, dict[str, str]]] = []
    async with recording_proxy(apiserver, kubeconfig, tmp_path / "proxied.kubeconfig", recorded) as proxied, \
            running_operator(proxied, tmp_path / "operator.log") as op:
        await create(apiserver, registry("main", {"storage": RWO}, namespace))
        await wait_live(apiserver, op, DEPLOYMENTS, namespace, "main")

        def watches() -> dict[str, dict[str, str]] | None:
            found = {path.rsplit("/", 1)[-1]: query for path, query in list(recorded)
                     if query.get("watch", "").lower() in ("true", "1")}
            return found if {"deployments", "secrets", "configmaps"} <= set(found) else None

        seen = await wait_for(watches, DEADLINE, message="the operator watches its children and Secrets")
    for plural in ("deployments", "configmaps", "services", "persistentvolumeclaims", "serviceaccounts"):
        assert seen[plural].get("labelSelector") == "app.kubernetes.io/managed-by=dockyard", plural
    assert "type!=helm.sh/release.v1" in seen["secrets"].get("fieldSelector", "")
    assert "registries" in seen
    assert "labelSelector" not in seen["registries"]


async def test_a_registry_deleted_during_a_reconcile_leaves_no_error(apiserver: ApiServer, namespace: str) -> None:
    """The pass read the Registry, then it was deleted: writing its status is skipped, not an error."""
    import ssl

    from dockyard.controller.kube import Credentials, Kube
    from dockyard.controller.reconcile import Pass, Reconciler

    await create(apiserver, registry("gone", {"storage": {"emptyDir": {}}}, namespace))
    body = await get(apiserver, REGISTRIES, "gone", namespace)
    assert body is not None
    await delete(apiserver, REGISTRIES, "gone", namespace)
    kube = Kube(Credentials(apiserver.url, apiserver.token, ssl.create_default_context(cafile=str(apiserver.ca))))
    try:
        posted: list[str] = []
        reconciler = Reconciler(kube, lambda _body, _type, reason, _message: posted.append(reason))
        changed = await Pass(reconciler, body).write_status({"observedGeneration": 1}, [])
    finally:
        await kube.close()
    assert changed == []
    assert posted == []
