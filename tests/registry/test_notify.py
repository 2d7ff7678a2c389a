"""Push notifications of the real `dockyard registry serve`, posted to a small receiver on 127.0.0.1.

The operator runs `trigger.onPush` policies from these events, so what matters to a user is:
a tag push posts exactly one CloudEvent naming the registry (its source), repository, tag and
digest, signed with the HMAC of the registry's events token (re-read when the mounted Secret
changes); a push by digest posts nothing; an operator that is down or failing gets the event
again later; and an operator that is down, slow or refusing never fails or slows a push
(events beyond the bounded queue are dropped with a log line and counted in /metrics). Bad
`notify` config is a one-line error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.registry.conftest import Client, digest_of, image_manifest
from tests.registry.processes import (
    RegistryProcess,
    free_port,
    require_dockyard,
    serve_refuses,
    start_dockyard,
)
from tests.registry.receiver import Delivery, Receiver, wait_until

NS, NAME = "registries", "main"
PATH = "/v1/push"


def metric(client: Client, result: str) -> float:
    for line in client.request("GET", "/metrics").body.decode().splitlines():
        key, _, value = line.rpartition(" ")
        if key == f'dockyard_registry_notifications_total{{result="{result}"}}':
            return float(value)
    raise AssertionError(f"/metrics has no notifications counter for {result}")


def write_token(path: Path, token: str) -> None:
    """Replace the file by rename, as the kubelet swaps a mounted Secret's files."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(token)
    os.replace(tmp, path)


def notify_config(tmp_path: Path, url: str, token_file: Path, **extra: Any) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"notify": {"url": url, "tokenFile": str(token_file),
                                             "registry": {"namespace": NS, "name": NAME}, **extra}}))
    return config


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., tuple[RegistryProcess, Client]]]:
    started: list[RegistryProcess] = []

    def start(url: str, token_file: Path, **extra: Any) -> tuple[RegistryProcess, Client]:
        require_dockyard()
        config = notify_config(tmp_path, url, token_file, **extra)
        server = start_dockyard(tmp_path / f"root-{len(started)}", "--config", str(config))
        started.append(server)
        return server, Client(server.url)

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def push_image(client: Client, repo: str, reference: str | None, query: str = "") -> str:
    """Push a small image; the manifest by `reference` (its digest when None). Returns the digest."""
    if not query:
        return client.push_image(repo, reference)[0]
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    layer = os.urandom(256)
    manifest = image_manifest(client.push_blob(repo, config), len(config),
                              [(client.push_blob(repo, layer), len(layer))])
    digest = digest_of(manifest)
    r = client.push_manifest(repo, f"{reference or digest}{query}", manifest)
    assert r.status == 201, r.body
    return digest


def tags(received: list[Delivery]) -> list[str]:
    return [d.event["data"]["tag"] for d in received]


def test_a_tag_push_posts_one_cloud_event_signed_with_the_registrys_token(tmp_path: Path, receiver: Receiver,
                                                                         serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "token-of-main\n")
    _, client = serve(receiver.url(PATH), token_file)
    by_digest = push_image(client, "team/app", None)
    digest = push_image(client, "team/app", "v1")
    # Events are posted in order by one task: once the tag's event is in, a digest push's would be too.
    [delivery] = wait_until(lambda: receiver.at(PATH), "the event of the tag push")
    assert delivery.signed_with("token-of-main")
    assert "Authorization" not in delivery.headers
    assert delivery.headers["Content-Type"] == "application/cloudevents+json"
    event = delivery.event
    assert (event["specversion"], event["type"], event["source"], event["subject"]) == (
        "1.0", "dev.dockyard.registry.push", f"/registries/{NS}/{NAME}", "team/app:v1")
    assert event["data"]["repository"] == "team/app"
    assert event["data"]["tag"] == "v1"
    assert event["data"]["digest"] == digest
    assert by_digest != digest
    wait_until(lambda: metric(client, "sent") == 1, "the sent counter")
    assert metric(client, "retried") == metric(client, "dropped") == 0


def test_a_digest_push_with_tag_parameters_posts_one_event_per_tag(tmp_path: Path, receiver: Receiver,
                                                                   serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "t")
    _, client = serve(receiver.url(PATH), token_file)
    digest = push_image(client, "lib/x", None, "?tag=a&tag=b")
    push_image(client, "lib/x", "c")
    received = wait_until(lambda: len(got := receiver.at(PATH)) >= 3 and got, "three events")
    assert tags(received) == ["a", "b", "c"]
    assert [d.event["data"]["digest"] for d in received[:2]] == [digest, digest]
    assert all(d.signed_with("t") for d in received)


def test_a_missing_token_holds_the_event_and_a_replaced_one_is_read_again(tmp_path: Path, receiver: Receiver,
                                                                          serve: Any) -> None:
    token_file = tmp_path / "missing-at-first"
    _, client = serve(receiver.url(PATH), token_file, retryInitial="100ms", retryMax="200ms")
    push_image(client, "team/app", "v1")  # no token yet: nothing is sent unsigned; retried
    wait_until(lambda: metric(client, "retried") >= 1, "the retried counter")
    assert receiver.at(PATH) == []
    write_token(token_file, "first")
    wait_until(lambda: len(receiver.at(PATH)) == 1, "the event with the first token")
    write_token(token_file, "second-and-longer")
    push_image(client, "team/app", "v2")
    received = wait_until(lambda: len(got := receiver.at(PATH)) == 2 and got, "the event with the second token")
    assert tags(received) == ["v1", "v2"]
    assert received[0].signed_with("first")
    assert received[1].signed_with("second-and-longer")


def test_an_unreachable_operator_never_fails_a_push_and_gets_the_event_when_back(tmp_path: Path,
                                                                                 serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "t")
    port = free_port()
    server, client = serve(f"http://127.0.0.1:{port}{PATH}", token_file, retryInitial="100ms", retryMax="200ms")
    for i in range(3):
        push_image(client, "team/app", f"v{i}")
    wait_until(lambda: metric(client, "retried") >= 2, "retries")
    assert metric(client, "sent") == 0
    wait_until(lambda: "event push of team/app:v0 not delivered" in server.output(), "the log line")
    assert server.alive()


def test_a_failing_operator_gets_the_event_again(tmp_path: Path, receiver: Receiver, serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "t")
    receiver.answer(PATH, 503, 500)
    _, client = serve(receiver.url(PATH), token_file, retryInitial="100ms")
    push_image(client, "team/app", "v1")
    received = wait_until(lambda: len(got := receiver.at(PATH)) == 3 and got, "the third try")
    assert len({d.body for d in received}) == 1
    wait_until(lambda: metric(client, "sent") == 1, "the sent counter")
    assert metric(client, "retried") == 2


def test_a_hanging_operator_never_holds_a_push_and_the_queue_stays_bounded(tmp_path: Path, receiver: Receiver,
                                                                          serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "t")
    receiver.hanging.add(PATH)
    server, client = serve(receiver.url(PATH), token_file, timeout="30s", queueSize=2)
    push_image(client, "team/app", "v0")
    wait_until(lambda: receiver.at(PATH), "the first event to be in flight")
    for i in range(1, 6):  # one in flight, two queued, the oldest waiting ones dropped: each push completes
        push_image(client, "team/app", f"v{i}")
    wait_until(lambda: metric(client, "dropped") == 3, "three dropped events")
    assert metric(client, "sent") == 0
    assert "event push of team/app:v1 dropped" in server.output()
    assert "event push of team/app:v5 dropped" not in server.output()


def test_a_refused_event_is_dropped_at_once_counted_and_logged(tmp_path: Path, receiver: Receiver,
                                                               serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "stale")
    receiver.answer(PATH, 401)
    server, client = serve(receiver.url(PATH), token_file)
    push_image(client, "team/app", "v1")
    wait_until(lambda: metric(client, "dropped") == 1, "the dropped counter")
    assert len(receiver.at(PATH)) == 1
    assert metric(client, "retried") == 0
    wait_until(lambda: "dropped" in server.output() and "401" in server.output(), "the log line of the refusal")


@pytest.mark.parametrize(("notify", "key"), [
    ({"url": "http://x/v1/push", "tokenFile": "/t", "registry": {"namespace": NS, "name": NAME}, "bogus": 1},
     "notify.bogus"),
    ({"url": "http://x/v1/push", "tokenFile": "/t", "registry": {"namespace": NS}}, "notify.registry.name"),
    ({"url": "http://x/v1/push", "tokenFile": "/t", "registry": {"namespace": NS, "name": NAME, "x": 1}},
     "notify.registry.x"),
    ({"url": "x:8081", "tokenFile": "/t", "registry": {"namespace": NS, "name": NAME}}, "notify.url"),
    ({"url": "http://x/v1/push", "registry": {"namespace": NS, "name": NAME}}, "notify.tokenFile"),
    ({"url": "http://x/v1/push", "tokenFile": "/t", "registry": {"namespace": NS, "name": NAME},
      "timeout": "soon"}, "notify.timeout"),
    ({"url": "http://x/v1/push", "tokenFile": "/t", "registry": {"namespace": NS, "name": NAME},
      "queueSize": 0}, "notify.queueSize"),
    ({"url": "http://x/v1/push", "tokenFile": "/t", "registry": {"namespace": NS, "name": NAME},
      "retryInitial": "1m", "retryMax": "1s"}, "notify.retryMax"),
    ("yes", "notify"),
])
def test_bad_notify_config_is_one_line_naming_the_key_and_exit_2(tmp_path: Path, notify: Any, key: str) -> None:
    assert key in serve_refuses({"notify": notify}, tmp_path)
