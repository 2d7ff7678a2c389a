"""Fixtures of the integration tier: a real kube-apiserver with Dockyard's CRDs and RBAC.

* ``apiserver`` (session) — etcd, kube-apiserver and the kube-controller-manager's garbage
  collector, namespace and ServiceAccount controllers, started by
  ``hack/cluster.sh --control-plane-only up`` on free ports of 127.0.0.1 and stopped at the
  end. The CRDs from ``crds/`` are applied to it (the real admission of the install) and so are
  the install's namespace and RBAC (``manifests/namespace.yaml``, ``rbac.yaml``,
  ``user-roles.yaml``); the operator's kubeconfig carries a token of its ServiceAccount (all of
  it ``control_plane()`` of ``cluster.py``, which the operator benchmark uses too). Outside CI, a
  machine that cannot start the server (no Go, no etcd) skips the tier with the reason; in CI
  that is a failure.
* ``namespace`` — a fresh namespace for one test. Afterwards Dockyard objects left in it lose
  their finalizers (the test's operator has stopped by then) and the namespace is deleted.
* ``kubeconfig`` — the operator's kubeconfig (its ServiceAccount's token).

The request helpers live in ``kube.py``; import them from there.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.integration.cluster import ClusterError, control_plane
from tests.integration.kube import ApiError, ApiServer, create, delete, list_objects, patch

DOCKYARD_KINDS = ("dockyard.dev/v1alpha1/registries", "dockyard.dev/v1alpha1/replicationpolicies")


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(control_plane(tmp_path_factory.mktemp("apiserver")))
        except ClusterError as exc:
            if os.environ.get("CI") == "true":
                pytest.fail(f"hack/cluster.sh could not start the API server:\n{exc.stderr[-4000:]}")
            pytest.skip(f"no API server for the integration tier: {exc}")
        yield server


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


@pytest.fixture
def kubeconfig(apiserver: ApiServer) -> Path:
    return apiserver.operator_kubeconfig
