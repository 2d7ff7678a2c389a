"""A three-replica Registry on S3 object storage, on a real cluster, behind one plain Service.

The S3 server (SeaweedFS, built by `hack/s3.sh build`) runs on the node and the pods reach it at
the node's address. A chunked upload through the Service's cluster IP lands its requests on
different pods (kube-proxy balances each new connection; the pods' access logs show which pod
served which request) and the blob comes back whole through any of them. Rotating the keys'
Secret rolls the pods: wrong keys stall the Registry with `StorageUnavailable` and an Event,
the right ones bring it back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Install, service_url, wait_until
from tests.e2e.test_teams import _node_ip
from tests.registry.conftest import Client, digest_of, image_manifest
from tests.s3.server import S3Server, require_weed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]
READY_TIMEOUT = 420.0
MIB = 1024 * 1024
NAME = "objects"


@pytest.fixture
def node_s3(tmp_path: Path) -> Iterator[S3Server]:
    with S3Server(tmp_path / "s3", require_weed(), bind="0.0.0.0").start() as server:
        yield server


def _registry(namespace: str, endpoint: str, bucket: str, replicas: int) -> list[dict[str, Any]]:
    return [{"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
             "metadata": {"name": NAME, "namespace": namespace},
             "spec": {"replicas": replicas, "storage": {"s3": {
                 "bucket": bucket, "endpoint": endpoint, "forcePathStyle": True, "secretRef": {"name": "s3-keys"}}}}}]


def _keys(namespace: str, access_key: str, secret_key: str) -> list[dict[str, Any]]:
    return [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys", "namespace": namespace},
             "stringData": {"accessKeyId": access_key, "secretAccessKey": secret_key}}]


def test_three_replicas_on_s3_serve_one_chunked_upload_through_a_service(
        installed: Install, namespace: str, node_s3: S3Server) -> None:
    kube = installed.kube
    bucket = node_s3.make_bucket()
    endpoint = f"http://{_node_ip(installed)}:{node_s3.port}"
    kube.apply(_keys(namespace, node_s3.access_key, node_s3.secret_key) + _registry(namespace, endpoint, bucket, 3))

    def conditions() -> dict[str, dict[str, Any]]:
        obj = kube.get("-n", namespace, "registry", NAME) or {}
        return {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}

    def ready() -> dict[str, Any] | None:
        obj = kube.get("-n", namespace, "registry", NAME)
        ok = obj and conditions().get("Ready", {}).get("status") == "True" and obj["status"].get("readyReplicas") == 3
        return obj if ok else None
    wait_until("three replicas Ready", ready, timeout=READY_TIMEOUT, interval=2,
               diagnose=lambda: kube.describe_namespace(namespace))
    deployment = kube.get("-n", namespace, "deployment", NAME) or {}
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    service = kube.get("-n", namespace, "service", NAME) or {}
    assert "sessionAffinity" not in service["spec"] or service["spec"]["sessionAffinity"] == "None"
    client = Client(service_url(kube, namespace, NAME))  # kube-proxy picks a pod per connection

    chunks = [os.urandom(MIB + i * 4096) for i in range(12)]
    blob = b"".join(chunks)
    digest = digest_of(blob)
    location = client.start_upload("spread/app")
    offset = 0
    for chunk in chunks:
        r = client.request("PATCH", location, body=chunk, headers={
            "Content-Type": "application/octet-stream", "Content-Range": f"{offset}-{offset + len(chunk) - 1}"})
        assert r.status == 202, (r.status, r.body)
        offset += len(chunk)
        location = r.header("Location") or location
    done = client.request("PUT", f"{location}{'&' if '?' in location else '?'}digest={digest}", body=b"")
    assert done.status == 201, done.body

    upload_id = location.split("/")[-1].split("?")[0]
    served_by = set()
    for pod in kube.items("-n", namespace, "pods", "-l", f"app.kubernetes.io/instance={NAME}"):
        log = kube.run("-n", namespace, "logs", pod["metadata"]["name"], check=False).stdout
        if any(upload_id in line and '"PATCH"' in line for line in log.splitlines()):
            served_by.add(pod["metadata"]["name"])
    assert len(served_by) >= 2, f"twelve PATCHes over three pods all landed on {served_by}"

    for _ in range(3):
        got = client.request("GET", f"/v2/spread/app/blobs/{digest}")
        assert got.status == 200
        assert got.body == blob, "the blob written by several pods came back changed"
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    manifest = image_manifest(client.push_blob("spread/app", config), len(config), [(digest, len(blob))])
    assert client.push_manifest("spread/app", "v1", manifest).status == 201
    assert client.request("GET", "/v2/spread/app/manifests/v1").body == manifest

    # Rotating the Secret to keys the store refuses rolls the pods, which then say so.
    kube.apply(_keys(namespace, node_s3.access_key, "not-the-secret-key"))

    def stalled() -> dict[str, Any] | None:
        stall = conditions().get("Stalled", {})
        return stall if stall.get("status") == "True" and stall.get("reason") == "StorageUnavailable" else None
    stall = wait_until("Stalled with StorageUnavailable after the wrong keys", stalled, timeout=READY_TIMEOUT,
                       interval=2, diagnose=lambda: kube.describe_namespace(namespace))
    assert "SignatureDoesNotMatch" in stall["message"], stall
    events = kube.items("-n", namespace, "events", "--field-selector", "reason=StorageUnavailable")
    assert events, "a StorageUnavailable Event"

    kube.apply(_keys(namespace, node_s3.access_key, node_s3.secret_key))
    wait_until("Ready again with the right keys", ready, timeout=READY_TIMEOUT, interval=2,
               diagnose=lambda: kube.describe_namespace(namespace))
    assert Client(service_url(kube, namespace, NAME)).request("GET", "/v2/spread/app/manifests/v1").body == manifest
