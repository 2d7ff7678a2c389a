"""The registry conformance suite (push, pull, discovery, management, errors) on the S3 driver.

The same test functions as `tests/registry/test_conformance_*.py`, collected here again with a
module's registry whose storage is a bucket of the real SeaweedFS server instead of a directory.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry.conftest import Client
from tests.registry.processes import RegistryProcess
from tests.registry.test_conformance_discovery import *  # noqa: F403
from tests.registry.test_conformance_errors import *  # noqa: F403
from tests.registry.test_conformance_management import *  # noqa: F403
from tests.registry.test_conformance_pull import *  # noqa: F403
from tests.registry.test_conformance_push import *  # noqa: F403
from tests.s3.server import S3Server, start_dockyard_s3

_counter = itertools.count()


@pytest.fixture
def repo() -> str:
    return f"conformance/s3-{next(_counter)}-{os.getpid()}"


@pytest.fixture(scope="module")
def server(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    root: Path = tmp_path_factory.mktemp("registry-s3")
    with start_dockyard_s3(s3_server, root, s3_server.make_bucket()) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: RegistryProcess) -> Client:
    return Client(server.url)
