"""Webhooks of the real `dockyard registry serve`, delivered to a real receiver on 127.0.0.1.

What a user of `spec.webhooks` relies on: every tag push posts exactly one CloudEvent signed
with the HMAC of its Secret's key; the repository globs and the event kinds choose what each
webhook hears; a receiver that fails gets the event again with backoff, one that refuses does
not; a receiver that hangs never slows a push, and a flood is dropped and counted in /metrics,
never kept without bound. While a webhook fails, the operator hears of it (signed with the
events token) at most once a minute.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.registry import images
from tests.registry.conftest import Client
from tests.registry.images import write_layout
from tests.registry.processes import (
    RegistryProcess,
    require_dockyard,
    serve_refuses,
    skopeo,
    start_dockyard,
)
from tests.registry.receiver import Delivery, Receiver, wait_until

KEY = "webhook-key-1"
SOURCE = "/registries/registries/main"
Serve = Callable[..., tuple[RegistryProcess, Client]]


def write_key(path: Path, key: str) -> Path:
    """Replace the file by rename, as the kubelet swaps a mounted Secret's files."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(key)
    os.replace(tmp, path)
    return path


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    started: list[RegistryProcess] = []

    def start(webhooks: list[dict[str, Any]], **config: Any) -> tuple[RegistryProcess, Client]:
        require_dockyard()
        key = write_key(tmp_path / "key", KEY)
        hooks = [{"secretFile": str(key), "retryInitial": "100ms", "retryMax": "200ms", **w} for w in webhooks]
        path = tmp_path / f"config-{len(started)}.yaml"
        path.write_text(json.dumps({"webhooks": hooks, "source": SOURCE, **config}))
        server = start_dockyard(tmp_path / f"root-{len(started)}", "--config", str(path))
        started.append(server)
        return server, Client(server.url)

    yield start
    for server in started:
        server.stop()


def metrics(client: Client) -> dict[str, float]:
    values = {}
    for line in client.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith("dockyard_registry_webhook_") or line.startswith("dockyard_registry_notification"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def deliveries(name: str, outcome: str) -> str:
    return f'dockyard_registry_webhook_deliveries_total{{webhook="{name}",outcome="{outcome}"}}'


def subjects(received: list[Delivery]) -> list[str]:
    return [d.event["subject"] for d in received]


def test_every_tag_push_posts_one_signed_cloud_event(receiver: Receiver, serve: Serve) -> None:
    _, client = serve([{"name": "ci", "url": receiver.url("/ci"), "events": ["push"]}])
    d1, m1 = client.push_image("team/app", "v1")
    d2, m2 = client.push_image("team/app", None)  # by digest: one event, for the digest
    r = client.push_manifest("team/app", f"{d1}?tag=a&tag=b", m1)
    assert r.status == 201
    client.push_image("team/app", "last")
    received = wait_until(lambda: (got := receiver.at("/ci")) and got[-1].event["subject"] == "team/app:last"
                          and got, "the last push's event")
    assert subjects(received) == ["team/app:v1", f"team/app@{d2}", "team/app:a", "team/app:b", "team/app:last"]
    assert len({d.event["id"] for d in received}) == len(received)
    for delivery in received:
        assert delivery.signed_with(KEY), delivery.headers
        assert delivery.headers["Content-Type"] == "application/cloudevents+json"
        event = delivery.event
        assert event["specversion"] == "1.0"
        assert event["type"] == "dev.dockyard.registry.push"
        assert event["source"] == SOURCE
        assert event["time"].endswith("Z")
    first = received[0].event
    assert first["data"] == {"repository": "team/app", "tag": "v1", "digest": d1,
                             "mediaType": "application/vnd.oci.image.manifest.v1+json", "size": len(m1),
                             "actor": None}
    assert received[1].event["data"]["tag"] is None
    assert received[1].event["data"]["digest"] == d2
    assert received[1].event["data"]["size"] == len(m2)
    assert not received[0].signed_with(KEY + "x")
    values = wait_until(lambda: (m := metrics(client))[deliveries("ci", "delivered")] == 5 and m, "the counter")
    assert values[deliveries("ci", "retried")] == values[deliveries("ci", "dropped")] == 0


def test_skopeo_push_inspect_and_delete_post_signed_events(tmp_path: Path, receiver: Receiver, serve: Serve) -> None:
    img = images.image(seed=21, layers=2)
    layout = write_layout(tmp_path / "in", {"v1": img})
    server, _ = serve([{"name": "all", "url": receiver.url("/all"), "events": ["push", "pull", "delete"]}])
    skopeo("copy", "--insecure-policy", "--dest-tls-verify=false", f"oci:{layout}:v1",
           f"docker://{server.host}/team/app:v1", workdir=tmp_path)
    skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{server.host}/team/app:v1", workdir=tmp_path)
    skopeo("delete", "--tls-verify=false", f"docker://{server.host}/team/app:v1", workdir=tmp_path)
    received = wait_until(lambda: (got := receiver.at("/all")) and got[-1].event["type"].endswith(".delete")
                          and got, "the delete event")
    assert all(d.signed_with(KEY) for d in received)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for d in received:
        by_type.setdefault(d.event["type"].rpartition(".")[2], []).append(d.event)
    [push] = by_type["push"]
    assert push["subject"] == "team/app:v1"
    assert push["data"]["digest"] == img.digest
    assert push["data"]["size"] == len(img.manifest.data)
    assert by_type["pull"], "skopeo inspect GETs the manifest"
    assert {e["data"]["digest"] for e in by_type["pull"]} == {img.digest}
    [delete] = by_type["delete"]
    assert delete["subject"] == f"team/app@{img.digest}"


def test_globs_and_event_kinds_choose_what_each_webhook_hears(receiver: Receiver, serve: Serve) -> None:
    _, client = serve([
        {"name": "team", "url": receiver.url("/team"), "events": ["push"], "repositories": ["team/**"]},
        {"name": "deletes", "url": receiver.url("/deletes"), "events": ["delete"]},
        {"name": "pulls", "url": receiver.url("/pulls"), "events": ["pull"], "repositories": ["lib/*"]},
    ])
    client.push_image("team/app", "v1")
    client.push_image("team/sub/app", "v1")
    lib_digest, _ = client.push_image("lib/x", "v1")
    client.push_image("lib/deep/x", "v1")
    client.push_image("other", "v1")
    assert client.request("HEAD", "/v2/lib/x/manifests/v1").status == 200  # a HEAD is no pull
    assert client.request("GET", "/v2/lib/deep/x/manifests/v1").status == 200  # `*` stays in one segment
    assert client.request("GET", "/v2/lib/x/manifests/v1").status == 200
    assert client.request("GET", f"/v2/lib/x/manifests/{lib_digest}").status == 200
    assert client.request("GET", "/v2/lib/x/manifests/nope").status == 404
    assert client.request("DELETE", "/v2/team/app/manifests/v1").status == 202
    assert client.request("DELETE", f"/v2/lib/x/manifests/{lib_digest}").status == 202
    assert client.request("DELETE", "/v2/lib/x/manifests/v1").status == 404
    # The last event of each webhook: each delivers in order, so once it is in, every earlier one is.
    client.push_image("team/zz", "end")
    client.request("DELETE", "/v2/other/manifests/v1")
    assert client.request("GET", "/v2/lib/x/manifests/nope").status == 404
    client.push_image("lib/end", "v1")
    assert client.request("GET", "/v2/lib/end/manifests/v1").status == 200

    def ended(path: str, subject: str) -> list[Delivery]:
        found: list[Delivery] = wait_until(
            lambda: (got := receiver.at(path)) and got[-1].event["subject"] == subject and got, f"{subject} at {path}")
        return found
    assert subjects(ended("/team", "team/zz:end")) == ["team/app:v1", "team/sub/app:v1", "team/zz:end"]
    deletes = ended("/deletes", "other:v1")
    assert subjects(deletes) == ["team/app:v1", f"lib/x@{lib_digest}", "other:v1"]
    assert {d.event["type"] for d in deletes} == {"dev.dockyard.registry.delete"}
    assert deletes[0].event["data"]["tag"] == "v1"
    assert deletes[1].event["data"]["digest"] == lib_digest
    pulls = ended("/pulls", "lib/end:v1")
    assert subjects(pulls) == ["lib/x:v1", f"lib/x@{lib_digest}", "lib/end:v1"]
    assert {d.event["type"] for d in pulls} == {"dev.dockyard.registry.pull"}
    assert pulls[0].event["data"]["digest"] == lib_digest


def test_a_failing_receiver_gets_the_event_again_and_a_refusing_one_does_not(receiver: Receiver,
                                                                           serve: Serve) -> None:
    receiver.answer("/flaky", 500, (503, {"Retry-After": "0"}), 200)
    receiver.answer("/busy", (429, {"Retry-After": "1"}), 200)
    receiver.answer("/refusing", 400, 200)
    _, client = serve([{"name": "flaky", "url": receiver.url("/flaky"), "events": ["push"]},
                       {"name": "busy", "url": receiver.url("/busy"), "events": ["push"]},
                       {"name": "refusing", "url": receiver.url("/refusing"), "events": ["push"]}])
    client.push_image("team/app", "v1")
    tries = wait_until(lambda: len(got := receiver.at("/flaky")) >= 3 and got, "the third try")
    assert len({d.body for d in tries}) == 1, "a retry sends the same event"
    assert all(d.signed_with(KEY) for d in tries)
    wait_until(lambda: len(receiver.at("/busy")) >= 2, "the retry after 429")
    values = wait_until(lambda: (m := metrics(client))[deliveries("flaky", "delivered")] == 1
                        and m[deliveries("busy", "delivered")] == 1
                        and m[deliveries("refusing", "dropped")] == 1 and m, "the outcomes")
    assert values[deliveries("flaky", "retried")] == 2
    assert values[deliveries("busy", "retried")] == 1
    assert values[deliveries("refusing", "retried")] == 0
    client.push_image("team/app", "v2")  # delivered in order: once v2 is in, v1 was not tried again
    wait_until(lambda: len(receiver.at("/refusing")) == 2 and len(receiver.at("/flaky")) == 4, "the next event")
    assert subjects(receiver.at("/refusing")) == ["team/app:v1", "team/app:v2"]
    assert subjects(receiver.at("/flaky"))[2:] == ["team/app:v1", "team/app:v2"]


def test_a_hanging_receiver_never_holds_a_push_and_its_queue_stays_bounded(receiver: Receiver,
                                                                          serve: Serve) -> None:
    receiver.hanging.add("/hang")
    server, client = serve([{"name": "hang", "url": receiver.url("/hang"), "events": ["push", "pull"],
                             "timeout": "60s", "queueSize": 3}])
    client.push_image("team/app", "v0")
    wait_until(lambda: receiver.at("/hang"), "the first event in delivery")
    for i in range(1, 8):  # one in delivery, three waiting, four dropped: each push still completes
        client.push_image("team/app", f"v{i}")
    values = wait_until(lambda: (m := metrics(client))[deliveries("hang", "dropped")] == 4 and m, "four drops")
    assert values['dockyard_registry_webhook_queue_depth{webhook="hang"}'] == 4
    assert values[deliveries("hang", "delivered")] == 0
    assert client.request("GET", "/v2/team/app/manifests/v7").status == 200
    wait_until(lambda: metrics(client)[deliveries("hang", "dropped")] == 5, "the pull drops the oldest")
    assert "webhook hang: push of team/app:v1 dropped" in server.output()
    assert len(receiver.at("/hang")) == 1
    assert server.alive()


def test_a_rotated_key_signs_the_next_event(tmp_path: Path, receiver: Receiver, serve: Serve) -> None:
    _, client = serve([{"name": "ci", "url": receiver.url("/ci"), "events": ["push"]}])
    client.push_image("team/app", "v1")
    wait_until(lambda: receiver.at("/ci"), "the first event")
    write_key(tmp_path / "key", "rotated-and-longer")
    client.push_image("team/app", "v2")
    [first, second] = wait_until(lambda: len(got := receiver.at("/ci")) == 2 and got, "the second event")
    assert first.signed_with(KEY)
    assert second.signed_with("rotated-and-longer")


def test_a_failing_webhook_is_reported_to_the_operator_once_a_minute(tmp_path: Path, receiver: Receiver,
                                                                    serve: Serve) -> None:
    token = write_key(tmp_path / "events-token", "events-token-1")
    receiver.answer("/down", *([500] * 1000))
    _, client = serve([{"name": "down", "url": receiver.url("/down"), "events": ["push"]}],
                      notify={"url": receiver.url("/v1/push"), "tokenFile": str(token),
                              "registry": {"namespace": "registries", "name": "main"}})
    digest, _ = client.push_image("team/app", "v1")
    wait_until(lambda: len(receiver.at("/v1/push")) >= 2, "the push event and the failure report")
    seen = len(receiver.at("/down"))
    wait_until(lambda: len(receiver.at("/down")) >= seen + 3, "more failed attempts after the report")
    operator = receiver.at("/v1/push")
    assert all(d.signed_with("events-token-1") for d in operator)
    by_type = {d.event["type"]: d.event for d in operator}
    assert len(operator) == 2, [d.event for d in operator]
    push = by_type["dev.dockyard.registry.push"]
    assert push["subject"] == "team/app:v1"
    assert push["source"] == SOURCE
    assert push["data"]["digest"] == digest
    failed = by_type["dev.dockyard.registry.webhook.failed"]
    assert failed["subject"] == "down"
    assert failed["data"]["webhook"] == "down"
    assert failed["data"]["host"] == f"127.0.0.1:{receiver.port}"
    assert failed["data"]["status"] == 500
    assert failed["data"]["dropped"] == 0


@pytest.mark.parametrize(("hooks", "key"), [
    ([{"name": "a", "url": "http://x/", "events": ["push"], "secretFile": "/k", "bogus": 1}], "webhooks[0].bogus"),
    ([{"name": "a", "url": "http://x/", "events": ["push"]}], "webhooks[0].secretFile"),
    ([{"name": "A_b", "url": "http://x/", "events": ["push"], "secretFile": "/k"}], "webhooks[0].name"),
    ([{"name": "a", "url": "ftp://x/", "events": ["push"], "secretFile": "/k"}], "webhooks[0].url"),
    ([{"name": "a", "url": "http://x/", "events": ["poke"], "secretFile": "/k"}], "webhooks[0].events"),
    ([{"name": "a", "url": "http://x/", "events": [], "secretFile": "/k"}], "webhooks[0].events"),
    ([{"name": "a", "url": "http://x/", "events": ["push"], "secretFile": "/k", "repositories": ["a/[z-a]"]}],
     "webhooks[0].repositories"),
    ([{"name": "a", "url": "http://x/", "events": ["push"], "secretFile": "/k", "retryInitial": "soon"}],
     "webhooks[0].retryInitial"),
    ([{"name": "a", "url": "http://x/", "events": ["push"], "secretFile": "/k"},
      {"name": "a", "url": "http://y/", "events": ["pull"], "secretFile": "/k"}], "webhooks[1].name"),
    ({"name": "a"}, "webhooks"),
])
def test_bad_webhook_config_is_one_line_naming_the_key_and_exit_2(tmp_path: Path, hooks: Any, key: str) -> None:
    assert key in serve_refuses({"webhooks": hooks}, tmp_path)
