"""What the registry's S3 storage driver may rely on, checked against the real SeaweedFS server.

Plain objects, multipart uploads (including listing and aborting unfinished ones), and the error
codes for wrong keys and for keys without rights on the bucket. The last test runs Debian's
distribution 2.8 with its `s3` storage driver on the same server: the peer for S3 benchmarks.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.registry.conftest import Client, digest_of, image_manifest
from tests.registry.processes import require_tool, start_distribution_s3
from tests.s3.server import S3Server, run_sync

MIB = 1024 * 1024


async def read_object(s3: Any, bucket: str, key: str) -> bytes:
    resp = await s3.get_object(Bucket=bucket, Key=key)
    async with resp["Body"] as body:
        data: bytes = await body.read()
    return data


async def test_put_get_list_delete(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    data = os.urandom(1000)
    async with s3_server.client() as s3:
        put = await s3.put_object(Bucket=bucket, Key="dir/a", Body=data)
        assert put["ETag"].strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()
        await s3.put_object(Bucket=bucket, Key="dir/b", Body=b"")

        assert await read_object(s3, bucket, "dir/a") == data
        head = await s3.head_object(Bucket=bucket, Key="dir/a")
        assert head["ContentLength"] == len(data)

        listed = await s3.list_objects_v2(Bucket=bucket, Prefix="dir/")
        assert [(o["Key"], o["Size"]) for o in listed["Contents"]] == [("dir/a", len(data)), ("dir/b", 0)]
        delimited = await s3.list_objects_v2(Bucket=bucket, Delimiter="/")
        assert [p["Prefix"] for p in delimited["CommonPrefixes"]] == ["dir/"]

        await s3.delete_object(Bucket=bucket, Key="dir/a")
        with pytest.raises(ClientError) as err:
            await s3.get_object(Bucket=bucket, Key="dir/a")
        assert err.value.response["Error"]["Code"] == "NoSuchKey"
        listed = await s3.list_objects_v2(Bucket=bucket)
        assert [o["Key"] for o in listed["Contents"]] == ["dir/b"]


async def test_multipart_upload_of_three_parts_reads_back_byte_for_byte(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB + 123), os.urandom(1000)]  # only the last is short
    async with s3_server.client() as s3:
        upload = await s3.create_multipart_upload(Bucket=bucket, Key="blob")
        done = []
        for number, part in enumerate(parts, start=1):
            resp = await s3.upload_part(Bucket=bucket, Key="blob", UploadId=upload["UploadId"],
                                        PartNumber=number, Body=part)
            done.append({"PartNumber": number, "ETag": resp["ETag"]})
        await s3.complete_multipart_upload(Bucket=bucket, Key="blob", UploadId=upload["UploadId"],
                                           MultipartUpload={"Parts": done})

        whole = b"".join(parts)
        head = await s3.head_object(Bucket=bucket, Key="blob")
        assert head["ContentLength"] == len(whole)
        got = await read_object(s3, bucket, "blob")
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(whole).hexdigest()
        assert got == whole
        ranged = await s3.get_object(Bucket=bucket, Key="blob", Range=f"bytes={5 * MIB - 10}-{5 * MIB + 9}")
        async with ranged["Body"] as body:
            assert await body.read() == whole[5 * MIB - 10:5 * MIB + 10]


async def test_unfinished_multipart_upload_is_listed_until_aborted(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    async with s3_server.client() as s3:
        upload = await s3.create_multipart_upload(Bucket=bucket, Key="pending")
        await s3.upload_part(Bucket=bucket, Key="pending", UploadId=upload["UploadId"], PartNumber=1,
                             Body=os.urandom(1000))

        listed = await s3.list_multipart_uploads(Bucket=bucket)
        assert [(u["Key"], u["UploadId"]) for u in listed.get("Uploads", [])] == [("pending", upload["UploadId"])]
        parts = await s3.list_parts(Bucket=bucket, Key="pending", UploadId=upload["UploadId"])
        assert [(p["PartNumber"], p["Size"]) for p in parts["Parts"]] == [(1, 1000)]

        await s3.abort_multipart_upload(Bucket=bucket, Key="pending", UploadId=upload["UploadId"])
        listed = await s3.list_multipart_uploads(Bucket=bucket)
        assert listed.get("Uploads", []) == []
        with pytest.raises(ClientError) as err:
            await s3.list_parts(Bucket=bucket, Key="pending", UploadId=upload["UploadId"])
        assert err.value.response["Error"]["Code"] == "NoSuchUpload"
        with pytest.raises(ClientError) as err:
            await s3.head_object(Bucket=bucket, Key="pending")
        assert err.value.response["Error"]["Code"] == "404"


@pytest.mark.parametrize(("which", "code"), [("secret", "SignatureDoesNotMatch"),
                                             ("access", "InvalidAccessKeyId")])
async def test_wrong_keys_are_refused_with_their_error_code(s3_server: S3Server, which: str, code: str) -> None:
    bucket = s3_server.make_bucket()
    wrong = (s3_server.client(secret_key="not-the-secret") if which == "secret"
             else s3_server.client(access_key="no-such-key"))
    async with wrong as s3:
        with pytest.raises(ClientError) as err:
            await s3.put_object(Bucket=bucket, Key="x", Body=b"x")
        assert err.value.response["Error"]["Code"] == code
        with pytest.raises(ClientError) as err:
            await s3.list_objects_v2(Bucket=bucket)
        assert err.value.response["Error"]["Code"] == code


async def test_keys_without_rights_on_the_bucket_get_access_denied(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    async with s3_server.client() as s3:
        await s3.put_object(Bucket=bucket, Key="x", Body=b"x")
    async with s3_server.client(s3_server.outsider) as s3:
        calls: list[tuple[Any, dict[str, Any]]] = [
            (s3.put_object, {"Key": "y", "Body": b"y"}), (s3.get_object, {"Key": "x"}), (s3.list_objects_v2, {}),
            (s3.delete_object, {"Key": "x"}), (s3.create_multipart_upload, {"Key": "z"})]
        for call, kwargs in calls:
            with pytest.raises(ClientError) as err:
                await call(Bucket=bucket, **kwargs)
            assert err.value.response["Error"]["Code"] == "AccessDenied", call
    async with s3_server.client() as s3:  # nothing changed
        listed = await s3.list_objects_v2(Bucket=bucket)
        assert [o["Key"] for o in listed["Contents"]] == ["x"]


def test_distribution_stores_blobs_and_manifests_in_s3(s3_server: S3Server, tmp_path: Path) -> None:
    require_tool("docker-registry", "docker-registry")
    bucket = s3_server.make_bucket()
    with start_distribution_s3(tmp_path / "distribution", endpoint=s3_server.endpoint, bucket=bucket,
                               access_key=s3_server.access_key, secret_key=s3_server.secret_key) as registry:
        client = Client(registry.url)
        config = b'{"architecture": "amd64", "os": "linux"}'
        layer = os.urandom(12 * MIB)  # more than distribution's 10 MiB chunk: a multipart upload to S3
        config_digest = client.push_blob("s3/test", config)
        layer_digest = client.push_blob("s3/test", layer)
        manifest = image_manifest(config_digest, len(config), [(layer_digest, len(layer))])
        r = client.push_manifest("s3/test", "v1", manifest)
        assert r.status == 201, r.body

        got = client.request("GET", f"/v2/s3/test/blobs/{layer_digest}")
        assert got.status == 200, got.body[:500]
        assert digest_of(got.body) == layer_digest
        got = client.request("GET", "/v2/s3/test/manifests/v1",
                             headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert got.status == 200, got.body
        assert got.body == manifest
        assert got.header("Docker-Content-Digest") == digest_of(manifest)

    async def stored_keys() -> list[str]:
        async with s3_server.client() as s3:
            paginator = s3.get_paginator("list_objects_v2")
            return [o["Key"] async for page in paginator.paginate(Bucket=bucket) for o in page.get("Contents", [])]

    keys = run_sync(stored_keys())
    blob = layer_digest.removeprefix("sha256:")
    assert f"distribution/docker/registry/v2/blobs/sha256/{blob[:2]}/{blob}/data" in keys
    assert any(k.startswith("distribution/docker/registry/v2/repositories/s3/test/_manifests/tags/v1/")
               for k in keys), keys
