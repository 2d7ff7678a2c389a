"""Push notifications of the real `dockyard registry serve`, posted to a small receiver on 127.0.0.1.

The operator runs `trigger.onPush` policies from these events, so what matters to a user is:
a tag push posts exactly one event naming the registry, repository, tag and digest, with the
registry's bearer token (re-read when the mounted Secret changes); a push by digest posts
nothing; and an operator that is down, slow or refusing never fails or slows a push (events
are dropped with a log line and counted in /metrics). Bad `notify` config is a one-line error.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.registry.conftest import Client, digest_of
from tests.registry.processes import DOCKYARD, RegistryProcess, free_port, require_dockyard, start_dockyard

NS, NAME = "registries", "main"
DEADLINE = 15.0


class Receiver:
    """The operator's side, in a thread of its own: records every POST, answers as told."""

    def __init__(self, status: int = 202, hang: bool = False) -> None:
        self.status = status
        self.hang = hang
        self.events: list[tuple[str | None, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._release: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/push"

    async def _handle(self, request: web.Request) -> web.Response:
        self.events.append((request.headers.get("Authorization"), await request.json()))
        if self.hang:
            assert self._release is not None
            await self._release.wait()  # an operator that accepted the connection and never answers
        return web.json_response({"policies": []}, status=self.status)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/push", self._handle)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> Receiver:
        self._thread.start()
        assert self._ready.wait(10), "the receiver did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        def stop() -> None:
            assert self._release is not None
            self._release.set()
            self._loop.stop()
        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)


def wait_until(predicate: Callable[[], Any], message: str, timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


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


def push_image(client: Client, repo: str, reference: str | None, query: str = "") -> tuple[str, float]:
    """Push a small image; the manifest by `reference` (its digest when None). (digest, PUT seconds)."""
    layer = os.urandom(256)
    config = json.dumps({"architecture": "amd64", "os": "linux", "nonce": os.urandom(8).hex()}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": client.push_blob(repo, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": client.push_blob(repo, layer), "size": len(layer)}],
    }).encode()
    digest = digest_of(manifest)
    started = time.monotonic()
    r = client.push_manifest(repo, f"{reference or digest}{query}", manifest)
    elapsed = time.monotonic() - started
    assert r.status == 201, r.body
    return digest, elapsed


def test_a_tag_push_posts_one_event_with_the_registrys_token(tmp_path: Path, serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "token-of-main\n")
    with Receiver() as receiver:
        _, client = serve(receiver.url, token_file)
        by_digest, _ = push_image(client, "team/app", None)
        digest, _ = push_image(client, "team/app", "v1")
        # Events are posted in order by one task: once the tag's event is in, a digest push's would be too.
        wait_until(lambda: receiver.events, "the event of the tag push")
        assert receiver.events == [("Bearer token-of-main", {
            "registry": {"namespace": NS, "name": NAME}, "repository": "team/app", "tag": "v1", "digest": digest,
        })]
        assert by_digest != digest
        wait_until(lambda: metric(client, "sent") == 1, "the sent counter")
        assert metric(client, "failed") == metric(client, "dropped") == 0


def test_a_digest_push_with_tag_parameters_posts_one_event_per_tag(tmp_path: Path, serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "t")
    with Receiver() as receiver:
        _, client = serve(receiver.url, token_file)
        digest, _ = push_image(client, "lib/x", None, "?tag=a&tag=b")
        wait_until(lambda: len(receiver.events) >= 2, "two events")
        push_image(client, "lib/x", "c")
        wait_until(lambda: len(receiver.events) >= 3, "the third event")
        tags = [(e["repository"], e["tag"], e["digest"]) for _, e in receiver.events]
        assert tags[:2] == [("lib/x", "a", digest), ("lib/x", "b", digest)]
        assert [t for _, t, _ in tags] == ["a", "b", "c"]


def test_a_replaced_token_file_is_read_again(tmp_path: Path, serve: Any) -> None:
    token_file = tmp_path / "missing-at-first"
    with Receiver() as receiver:
        _, client = serve(receiver.url, token_file)
        push_image(client, "team/app", "v1")  # no token yet: not sent, counted as failed
        wait_until(lambda: metric(client, "failed") == 1, "the failed counter")
        assert receiver.events == []
        write_token(token_file, "first")
        push_image(client, "team/app", "v2")
        wait_until(lambda: len(receiver.events) == 1, "the event with the first token")
        write_token(token_file, "second-and-longer")
        push_image(client, "team/app", "v3")
        wait_until(lambda: len(receiver.events) == 2, "the event with the second token")
        assert [(auth, e["tag"]) for auth, e in receiver.events] == [
            ("Bearer first", "v2"), ("Bearer second-and-longer", "v3")]


def test_an_unreachable_operator_never_fails_or_slows_a_push(tmp_path: Path, serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "t")
    server, client = serve(f"http://127.0.0.1:{free_port()}/v1/push", token_file)  # nobody listens
    for i in range(5):
        _, elapsed = push_image(client, "team/app", f"v{i}")
        assert elapsed < 1.0, f"the push took {elapsed:.2f}s"
    wait_until(lambda: metric(client, "failed") == 5, "five failed notifications")
    assert metric(client, "sent") == 0
    assert "push event for team/app:v0 not sent" in server.output()
    assert server.alive()


def test_a_hanging_operator_never_slows_a_push_and_the_queue_stays_bounded(tmp_path: Path, serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "t")
    with Receiver(hang=True) as receiver:
        server, client = serve(receiver.url, token_file, timeout="30s", queueSize=2)
        _, first = push_image(client, "team/app", "v0")
        wait_until(lambda: receiver.events, "the first event to be in flight")
        slowest = first
        for i in range(1, 6):  # one in flight, two queued, the rest dropped
            _, elapsed = push_image(client, "team/app", f"v{i}")
            slowest = max(slowest, elapsed)
        assert slowest < 1.0, f"a push took {slowest:.2f}s while the operator hung"
        wait_until(lambda: metric(client, "dropped") == 3, "three dropped events")
        assert metric(client, "sent") == 0
        assert "push event for team/app:v5 dropped" in server.output()


def test_a_refused_event_is_counted_and_logged(tmp_path: Path, serve: Any) -> None:
    token_file = tmp_path / "token"
    write_token(token_file, "stale")
    with Receiver(status=401) as receiver:
        server, client = serve(receiver.url, token_file)
        push_image(client, "team/app", "v1")
        wait_until(lambda: metric(client, "failed") == 1, "the failed counter")
        assert len(receiver.events) == 1
        wait_until(lambda: "refused by" in server.output(), "the log line of the refusal")


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
    ("yes", "notify"),
])
def test_bad_notify_config_is_one_line_naming_the_key_and_exit_2(tmp_path: Path, notify: Any, key: str) -> None:
    require_dockyard()
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"notify": notify}))
    done = subprocess.run([DOCKYARD, "registry", "serve", "--config", str(config), "--root", str(tmp_path / "root"),
                           "--addr", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert key in done.stderr
