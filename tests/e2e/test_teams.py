"""examples/registry-teams.yaml on a real cluster: access rules, ServiceAccount tokens, a quota, a webhook.

The example is applied as a user would (its namespace, the ServiceAccount its rule names, its
webhook URL and quota size adapted to the test) and must become Ready. Then, through the
Registry's Service: alice pushes to team-a/ and is refused under ci/; the ServiceAccount
builder pushes under ci/ with a token from the TokenRequest API (audience dockyard), which the
registry pod checks with a TokenReview; a push over the quota is refused with the quota in the
message; and a receiver on the node gets a signed CloudEvent for the tag alice pushed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from tests.e2e.conftest import ROOT, Install, service_url, wait_until
from tests.registry.images import image, write_layout
from tests.registry.processes import skopeo

READY_TIMEOUT = 300
USERS = {"alice": "alice-" + uuid.uuid4().hex[:8], "bob": "bob-" + uuid.uuid4().hex[:8]}
HOOK_KEY = uuid.uuid4().hex


class Receiver:
    """A webhook receiver on the node, reachable from the pods at the node's address."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("0.0.0.0", 0), Handler)  # the pods reach it at the node's address
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def signed_pushes(self) -> list[dict[str, Any]]:
        out = []
        for headers, body in self.events:
            expected = "sha256=" + hmac.new(HOOK_KEY.encode(), body, hashlib.sha256).hexdigest()
            if hmac.compare_digest(headers.get("x-dockyard-signature", ""), expected):
                event = json.loads(body)
                if event.get("type") == "dev.dockyard.registry.push":
                    out.append(event)
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.server.shutdown()


def _node_ip(installed: Install) -> str:
    nodes = installed.kube.items("nodes")
    return str(next(a["address"] for a in nodes[0]["status"]["addresses"] if a["type"] == "InternalIP"))


def _teams(namespace: str, hook_url: str) -> dict[str, Any]:
    doc: dict[str, Any] = next(d for d in yaml.safe_load_all((ROOT / "examples" / "registry-teams.yaml").read_text())
                               if d)
    doc["metadata"]["namespace"] = namespace
    spec = doc["spec"]
    spec["storage"] = {"pvc": {"size": "1Gi", "accessModes": ["ReadWriteOnce"]}}
    for rule in spec["auth"]["access"]:
        rule["serviceAccounts"] = [f"{namespace}/{sa.split('/')[1]}" for sa in rule.get("serviceAccounts", [])]
        if not rule["serviceAccounts"]:
            del rule["serviceAccounts"]
    spec["quotas"] = [{"repositories": ["team-a/**"], "limit": "3Mi"}]
    spec["webhooks"][0]["url"] = hook_url
    return doc


def test_the_teams_example_on_a_real_cluster(installed: Install, namespace: str, receiver: Receiver,
                                             tmp_path: Path) -> None:
    kube = installed.kube
    if installed.cluster.resolv_conf is None:
        pytest.skip("needs the local cluster's DNS on the node (hack/cluster.sh)")
    htpasswd = "".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
                       for u, p in USERS.items())
    kube.apply([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "teams-users", "namespace": namespace},
         "stringData": {"htpasswd": htpasswd}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-a-hooks", "namespace": namespace},
         "stringData": {"secret": HOOK_KEY}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": namespace}},
        _teams(namespace, f"http://{_node_ip(installed)}:{receiver.port}/dockyard"),
    ])

    def ready() -> dict[str, Any] | None:
        obj = kube.get("-n", namespace, "registry", "teams")
        conditions = {c["type"]: c for c in (obj or {}).get("status", {}).get("conditions", [])}
        ok = conditions.get("Ready", {}).get("status") == "True" and obj and obj["status"].get("readyReplicas") == 1
        return obj if ok else None

    wait_until("the teams Registry is Ready", ready, timeout=READY_TIMEOUT, interval=2,
               diagnose=lambda: kube.describe_namespace(namespace))
    service_url(kube, namespace, "teams")
    host = f"teams.{namespace}.svc.cluster.local:5000"

    def push(repo: str, user: str, password: str, layer_kib: int = 64) -> tuple[int, str]:
        img = image(seed=uuid.uuid4().int % 10_000, layers=1, layer_size=layer_kib * 1024)
        layout = write_layout(tmp_path / f"layout-{uuid.uuid4().hex[:6]}", {"v1": img})
        done = skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", f"--dest-creds={user}:{password}",
                      f"oci:{layout}:v1", f"docker://{host}/{repo}:v1", workdir=tmp_path, check=False,
                      resolv_conf=installed.cluster.resolv_conf)
        return done.returncode, done.stderr.decode(errors="replace")

    rc, err = push("team-a/app", "alice", USERS["alice"])
    assert rc == 0, err
    rc, err = push("ci/app", "alice", USERS["alice"])
    assert rc != 0, "alice may not push under ci/"
    assert "denied" in err.lower() or "unauthorized" in err.lower(), err

    token = kube.run("-n", namespace, "create", "token", "builder", "--audience", "dockyard").stdout.strip()
    rc, err = push("ci/app", "ci", token)
    assert rc == 0, err
    rc, err = push("team-a/from-ci", "ci", token)
    assert rc != 0, "the builder ServiceAccount may not push under team-a/"

    rc, err = push("team-a/big", "bob", USERS["bob"], layer_kib=4096)
    assert rc != 0, "a push over the 3Mi quota must be refused"
    assert "quota" in err, err

    def pushed_event() -> dict[str, Any] | None:
        return next((e for e in receiver.signed_pushes()
                     if e.get("data", {}).get("repository") == "team-a/app"), None)

    event = wait_until("a signed push event for team-a/app:v1", pushed_event, timeout=120, interval=1)
    assert event["data"]["tag"] == "v1"
    assert not any(e["data"]["repository"].startswith("ci/") for e in receiver.signed_pushes()), \
        "the webhook only hears about team-a/"

    def quota_reported() -> list[dict[str, Any]] | None:
        obj = kube.get("-n", namespace, "registry", "teams")
        quotas: list[dict[str, Any]] = (obj or {}).get("status", {}).get("quotas", [])
        return quotas if quotas and quotas[0].get("used") not in (None, "0") else None

    quotas = wait_until("status.quotas reports the usage of team-a/**", quota_reported, timeout=180, interval=2)
    assert quotas[0]["limit"] == "3Mi"
    assert quotas[0]["repositories"] == ["team-a/**"]
