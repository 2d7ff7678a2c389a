"""`storage.s3` in the registry's config file: what the operator renders for `spec.storage.s3`.

The server reads it into `ServeConfig.s3`; a hand-written config with a wrong key or value is
refused in one line naming the key, as every other key of the file is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dockyard.registry.config import ConfigError, S3Config, parse_config

FULL = {"bucket": "images", "endpoint": "https://minio.example:9000", "region": "eu-central-1",
        "prefix": "registries/main", "forcePathStyle": True, "insecure": False,
        "caFile": "/etc/dockyard/s3-ca/ca.crt", "credentialsDir": "/etc/dockyard/s3-credentials",
        "redirect": True}


def test_every_key_reaches_the_settings() -> None:
    cfg = parse_config({"root": "/tmp/registry", "storage": {"s3": FULL}})
    assert cfg.s3 == S3Config(bucket="images", endpoint="https://minio.example:9000", region="eu-central-1",
                              prefix="registries/main", force_path_style=True, insecure=False,
                              ca_file=Path("/etc/dockyard/s3-ca/ca.crt"),
                              credentials_dir=Path("/etc/dockyard/s3-credentials"), redirect=True)
    assert cfg.root == Path("/tmp/registry")  # temp files, with s3


def test_a_bucket_alone_means_aws_with_the_default_credential_chain() -> None:
    assert parse_config({"storage": {"s3": {"bucket": "images"}}}).s3 == S3Config(
        bucket="images", endpoint=None, region="us-east-1", prefix="", force_path_style=False, insecure=False,
        ca_file=None, credentials_dir=None, redirect=False)


@pytest.mark.parametrize("doc", [{}, {"storage": None}, {"storage": {}}, {"storage": {"s3": None}}])
def test_without_s3_the_storage_is_the_filesystem(doc: dict[str, Any]) -> None:
    assert parse_config(doc).s3 is None


@pytest.mark.parametrize(("s3", "key"), [
    ({}, "storage.s3.bucket"),
    ({"bucket": ""}, "storage.s3.bucket"),
    ({"bucket": 7}, "storage.s3.bucket"),
    ({"bucket": "Images"}, "storage.s3.bucket"),
    ({"bucket": "ab"}, "storage.s3.bucket"),
    ({"bucket": "images-"}, "storage.s3.bucket"),
    ({"bucket": "images", "accessKey": "AKIA"}, "storage.s3.accessKey"),
    ({"bucket": "images", "endpoint": "minio:9000"}, "storage.s3.endpoint"),
    ({"bucket": "images", "endpoint": "ftp://minio:9000"}, "storage.s3.endpoint"),
    ({"bucket": "images", "endpoint": "http://minio:9000/images"}, "storage.s3.endpoint"),
    ({"bucket": "images", "endpoint": 9000}, "storage.s3.endpoint"),
    ({"bucket": "images", "region": ""}, "storage.s3.region"),
    ({"bucket": "images", "region": ["us-east-1"]}, "storage.s3.region"),
    ({"bucket": "images", "prefix": "/registry"}, "storage.s3.prefix"),
    ({"bucket": "images", "prefix": "registry/"}, "storage.s3.prefix"),
    ({"bucket": "images", "prefix": "a//b"}, "storage.s3.prefix"),
    ({"bucket": "images", "prefix": 1}, "storage.s3.prefix"),
    ({"bucket": "images", "forcePathStyle": "true"}, "storage.s3.forcePathStyle"),
    ({"bucket": "images", "insecure": 1}, "storage.s3.insecure"),
    ({"bucket": "images", "redirect": "no"}, "storage.s3.redirect"),
    ({"bucket": "images", "caFile": ""}, "storage.s3.caFile"),
    ({"bucket": "images", "credentialsDir": 3}, "storage.s3.credentialsDir"),
    ({"bucket": "images", "insecure": True, "caFile": "/ca.crt"}, "storage.s3.insecure"),
])
def test_a_bad_key_is_one_line_naming_it(s3: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"storage": {"s3": s3}})
    assert str(refused.value).startswith(f"{key}: "), refused.value
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("storage", "key"), [
    (["s3"], "storage"),
    ({"filesystem": {}}, "storage.filesystem"),
    ({"s3": "images"}, "storage.s3"),
])
def test_a_bad_storage_section_names_its_key(storage: Any, key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config({"storage": storage})
    assert str(refused.value).startswith(f"{key}: "), refused.value
