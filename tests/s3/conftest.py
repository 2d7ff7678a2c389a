"""Fixtures of the S3 tier: one real SeaweedFS S3 server per test session.

`s3_server` is the running `S3Server`: `endpoint`, `access_key`, `secret_key`, `make_bucket()`
(a fresh bucket's name), `client()` (an aiobotocore S3 client) and the `outsider` identity,
whose keys are valid but hold no rights on the buckets `make_bucket()` creates.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3.server import S3Server, require_weed


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    weed = require_weed()
    with S3Server(tmp_path_factory.mktemp("s3"), weed).start() as server:
        yield server
