"""Fixtures of the integration tier: a served Kubernetes API emulator and a kubeconfig for it.

Why this module exists: every integration test, the operator's included, needs the same two
things a real cluster gives: an API server and a ``KUBECONFIG`` pointing at it.

* ``emulator`` — an ``emulator.Emulator`` served on a free port of 127.0.0.1 with every resource
  Dockyard touches registered (and the CRDs from ``crds/``); ``emulator.url`` is its base URL.
  Watch streams are closed when the test ends, so the server shuts down promptly. Custom
  resources are validated against their CRDs; a test that needs an invalid object to get past
  admission sets ``emulator.validate = False`` first.
* ``kubeconfig`` — writes a kubeconfig (plain HTTP, a bearer token the emulator ignores) into the
  test's temporary directory, points ``KUBECONFIG`` at it (also for an already imported
  ``kubernetes`` client, which reads the variable once at import), and returns its path. Kopf's
  login and the operator's own API adapter read it exactly as on a real cluster.

The request helpers (``create``, ``get``, ``patch``, ``apply``, ``delete``, ``wait_for``) live in
``emulator.py``; import them from there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import kubernetes
import pytest
import pytest_asyncio
import yaml

from tests.integration.emulator import Emulator


@pytest_asyncio.fixture()
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator().serving() as served:
        yield served


@pytest.fixture()
def kubeconfig(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    server = str(emulator.url).rstrip('/')
    config = {
        'apiVersion': 'v1',
        'kind': 'Config',
        'clusters': [{'name': 'emulator', 'cluster': {'server': server}}],
        'users': [{'name': 'tester', 'user': {'token': 'integration-tests'}}],
        'contexts': [{'name': 'emulator', 'context': {'cluster': 'emulator', 'user': 'tester',
                                                       'namespace': 'default'}}],
        'current-context': 'emulator',
        'preferences': {},
    }
    path = tmp_path / 'kubeconfig'
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv('KUBECONFIG', str(path))
    # The kubernetes client reads KUBECONFIG once, at import; a real process sets it before that.
    monkeypatch.setattr(kubernetes.config.kube_config, 'KUBE_CONFIG_DEFAULT_LOCATION', str(path))
    return path
