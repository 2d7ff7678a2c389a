"""`dockyard replicate -f`: dry runs, summaries, exit codes, credentials and token auth."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import pty
import random
import re
import socket
import subprocess
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.registry.processes import DOCKYARD, Registries, write_htpasswd
from tests.replication.conftest import policy, replicate
from tests.replication.helpers import Pusher, RecordingProxy, fetch_manifest, list_tags

SUMMARY = re.compile(r"^(Succeeded|PartiallyFailed|Failed): copied (\d+), skipped (\d+), failed (\d+)"
                     r"(, deleted \d+)?, bytes [0-9.]+ (B|KiB|MiB|GiB), duration [0-9.]+s$", re.M)


def write_policy(path: Path, spec: dict[str, Any], name: str = "p") -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "dockyard.dev/v1alpha1", "kind": "ReplicationPolicy",
                                    "metadata": {"name": name, "namespace": "ns"}, "spec": spec}))
    return path


async def dockyard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [DOCKYARD, *args], capture_output=True, text=True,
                                   timeout=120, env={**os.environ, **(env or {})})


async def seed(url: str, repo: str = "app", tags: tuple[str, ...] = ("1.0", "1.1")) -> None:
    async with Pusher(url) as p:
        for tag in tags:
            await p.image(repo, tag, [random.randbytes(30_000)])


async def test_dry_run_lists_and_writes_nothing(registries: Registries, tmp_path: Path) -> None:
    src, dst = registries.distribution(), registries.distribution()
    await seed(src.url)
    file = write_policy(tmp_path / "p.yaml", {"source": {"url": src.url}, "destination": {"url": dst.url},
                                               "destinationPath": {"prefix": "mirror/"}})
    out = await dockyard("replicate", "-f", str(file), "--dry-run", "--state", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    assert "copy   app:1.0 -> mirror/app:1.0" in out.stdout
    assert "copy   app:1.1 -> mirror/app:1.1" in out.stdout
    assert "Succeeded (dry run, nothing changed): would copy 2, up to date 0, failed 0" in out.stdout
    assert not SUMMARY.search(out.stdout)
    assert await list_tags(dst.url, "mirror/app") == []
    # With the deletion mirror, tags the source lost are listed for deletion, and kept.
    await seed(dst.url, "mirror/app", ("0.9",))
    file = write_policy(tmp_path / "p.yaml", {"source": {"url": src.url}, "destination": {"url": dst.url},
                                               "destinationPath": {"prefix": "mirror/"}, "deletion": "mirror"})
    out = await dockyard("replicate", "-f", str(file), "--dry-run", "--state", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    assert "delete mirror/app:0.9" in out.stdout
    assert "would copy 2, would delete 1," in out.stdout
    assert await list_tags(dst.url, "mirror/app") == ["0.9"]


async def test_run_prints_a_summary_and_exit_codes_follow_the_result(registries: Registries,
                                                                     tmp_path: Path) -> None:
    src, dst = registries.distribution(), registries.distribution()
    await seed(src.url)
    state = tmp_path / "state.json"
    # The destination is a registryRef: outside the cluster, --dest-url says where it is.
    file = write_policy(tmp_path / "p.yaml", {"source": {"url": src.url},
                                               "destination": {"registryRef": {"name": "main"}}})
    out = await dockyard("replicate", "-f", str(file), "--dest-url", dst.url, "--state", str(state))
    assert out.returncode == 0, out.stderr
    m = SUMMARY.search(out.stdout)
    assert m, out.stdout
    assert m.group(1) == "Succeeded", out.stdout
    assert m.group(2) == "2", out.stdout
    assert await list_tags(dst.url, "app") == ["1.0", "1.1"]
    assert json.loads(state.read_text()) == {"failedItems": []}
    # A repository that does not exist at the source is a failed item: exit 1, remembered.
    file = write_policy(tmp_path / "p.yaml", {"source": {"url": src.url}, "destination": {"url": dst.url},
                                               "filters": {"repositories": {"include": ["app", "nope"]}}})
    out = await dockyard("replicate", "-f", str(file), "--state", str(state))
    assert out.returncode == 1
    assert SUMMARY.search(out.stdout).group(1) == "PartiallyFailed"  # type: ignore[union-attr]
    assert "failed nope:*" in out.stderr
    assert [i["repository"] for i in json.loads(state.read_text())["failedItems"]] == ["nope"]


async def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path) -> None:
    ok = write_policy(tmp_path / "ok.yaml", {"source": {"url": "http://127.0.0.1:9"},
                                              "destination": {"url": "http://127.0.0.1:10"}})
    bad = write_policy(tmp_path / "bad.yaml", {"source": {"url": "http://127.0.0.1:9"},
                                                "destination": {"url": "http://127.0.0.1:9"}})
    cases = [
        ["replicate"],
        ["replicate", "-f", str(tmp_path / "missing.yaml")],
        ["replicate", "-f", str(bad)],
        ["replicate", "-f", str(ok), "--source-creds", "no-colon"],
        ["replicate", "-f", str(ok), "--chunk-size", "huge"],
    ]
    for argv in cases:
        out = await dockyard(*argv)
        assert out.returncode == 2, (argv, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "Traceback" not in out.stderr
    assert "must be different" in (await dockyard("replicate", "-f", str(bad))).stderr


async def test_unreachable_source_fails_the_run_and_keeps_what_is_remembered(tmp_path: Path) -> None:
    file = write_policy(tmp_path / "p.yaml", {"source": {"url": "http://127.0.0.1:9"},
                                               "destination": {"url": "http://127.0.0.1:10"},
                                               "limits": {"retry": {"max": 0}}})
    state = tmp_path / "s.json"
    remembered = {"failedItems": [{"repository": "app", "tag": "1.0", "error": "HTTP 503"}]}
    state.write_text(json.dumps(remembered))
    out = await dockyard("replicate", "-f", str(file), "--state", str(state))
    assert out.returncode == 1
    assert SUMMARY.search(out.stdout).group(1) == "Failed"  # type: ignore[union-attr]
    assert "127.0.0.1:9" in out.stderr
    assert json.loads(state.read_text()) == remembered


async def test_progress_bar_on_a_terminal(registries: Registries, tmp_path: Path) -> None:
    src, dst = registries.distribution(), registries.distribution()
    await seed(src.url, tags=tuple(f"1.{i}" for i in range(6)))
    file = write_policy(tmp_path / "p.yaml", {"source": {"url": src.url}, "destination": {"url": dst.url}})
    controller, terminal = pty.openpty()
    try:
        proc = await asyncio.to_thread(
            subprocess.run, [DOCKYARD, "replicate", "-f", str(file), "--state", str(tmp_path / "s.json")],
            stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120)
        os.set_blocking(controller, False)
        shown = b""
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(controller, 65536):
                shown += chunk
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 0
    text = shown.decode(errors="replace")
    assert "\r[" in text
    assert "6/6" in text
    assert "copied 6" in text
    assert "[" not in proc.stdout.split("Succeeded")[0]  # the bar never pollutes stdout


async def test_basic_auth_from_flags_environment_and_docker_config(registries: Registries,
                                                                   tmp_path: Path) -> None:
    src = registries.distribution()
    dst = registries.distribution(htpasswd=write_htpasswd(tmp_path / "htpasswd", "robot", "s3cr:et"))
    await seed(src.url)
    file = write_policy(tmp_path / "p.yaml", {"source": {"url": src.url}, "destination": {"url": dst.url}})
    state = str(tmp_path / "s.json")
    denied = await dockyard("replicate", "-f", str(file), "--state", state)
    assert denied.returncode == 1
    assert "401" in denied.stderr
    by_flag = await dockyard("replicate", "-f", str(file), "--state", state, "--dest-creds", "robot:s3cr:et")
    assert by_flag.returncode == 0, by_flag.stderr
    by_env = await dockyard("replicate", "-f", str(file), "--state", state,
                            env={"DOCKYARD_DEST_CREDS": "robot:s3cr:et"})
    assert by_env.returncode == 0
    assert SUMMARY.search(by_env.stdout).group(3) == "2"  # type: ignore[union-attr]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {dst.host: {"auth": base64.b64encode(b"robot:s3cr:et").decode()}}}))
    by_config = await dockyard("replicate", "-f", str(file), "--state", state,
                               env={"DOCKYARD_DEST_DOCKERCONFIG": str(config)})
    assert by_config.returncode == 0, by_config.stderr


async def test_bearer_token_auth_is_fetched_once_per_scope(registries: Registries) -> None:
    src, dst = registries.distribution(), registries.distribution()
    await seed(src.url, "team/app", ("1", "2", "3"))
    token_requests: list[list[str]] = []

    async def token_server(request: web.Request, proxy: RecordingProxy) -> web.StreamResponse | None:
        if request.path == "/token":
            if request.headers.get("Authorization") != "Basic " + base64.b64encode(b"me:pw").decode():
                return web.Response(status=401)
            scopes = request.query.getall("scope", [])
            token_requests.append(scopes)
            return web.json_response({"token": "tok " + " ".join(scopes), "expires_in": 300})
        m = re.match(r"^/v2/(.+?)/(manifests|blobs|tags)/", request.path)
        scope = f"repository:{m.group(1)}:pull" if m else ""
        given = request.headers.get("Authorization", "")
        if request.path != "/v2/" and (not given.startswith("Bearer tok ") or scope not in given):
            challenge = f'Bearer realm="{proxy.url}/token",service="test"' + (f',scope="{scope}"' if scope else "")
            return web.json_response({"errors": [{"code": "UNAUTHORIZED", "message": "token needed"}]},
                                     status=401, headers={"WWW-Authenticate": challenge})
        return None

    async with RecordingProxy(src.url, token_server) as proxy:
        spec = policy(proxy.url, dst.url)
        from dockyard.oci.client import Credentials
        from dockyard.replication import Access, EngineOptions, RunAccess, run_policy
        from dockyard.replication.state import MemoryState

        result = await run_policy(spec, RunAccess(Access(proxy.url, Credentials("me", "pw")), Access(dst.url)),
                                  MemoryState(), EngineOptions())
        assert result.result == "Succeeded", (result.failed_items, result.fatal)
        assert result.copied == 3, (result.failed_items, result.fatal)
        # One token per scope for the whole run: the catalog, then the repository.
        assert sorted(map(tuple, token_requests)) == [("registry:catalog:*",), ("repository:team/app:pull",)]
        wrong = await replicate(policy(proxy.url, dst.url, filters={"repositories": {"include": ["team/app"]}}))
        assert wrong.failed == 1
        assert "401" in wrong.failed_items[0].error
    status, _, _ = await fetch_manifest(dst.url, "team/app", "3")
    assert status == 200


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_an_unreachable_registry_is_named_at_once_and_fails(registries: Registries, tmp_path: Path) -> None:
    dst = registries.distribution()
    for url, reason in ((f"http://127.0.0.1:{closed_port()}", "connection refused"),
                        ("http://nonexistent.invalid:5000", "the host name nonexistent.invalid does not resolve")):
        file = write_policy(tmp_path / "p.yaml", {"source": {"url": url}, "destination": {"url": dst.url}})
        out = await dockyard("replicate", "-f", str(file), "--state", str(tmp_path / "s.json"))
        assert out.returncode == 1, out.stderr
        lines = out.stderr.splitlines()
        # The first thing said is what the run waits for, then it gives up with the reason.
        assert lines[0].startswith(f"dockyard replicate: waiting for {url}: {reason}"), out.stderr
        assert "retrying in" in lines[0]
        assert lines[-1].startswith(f"dockyard replicate: cannot connect to {url}: {reason}"), out.stderr
        assert "gave up after" in lines[-1]
        assert out.stdout.startswith("Failed: copied 0")


async def test_a_registry_that_does_not_answer_is_named_while_waiting(registries: Registries,
                                                                      monkeypatch: Any,
                                                                      caplog: Any) -> None:
    from dockyard.replication import copy

    monkeypatch.setattr(copy, "PING_PATIENCE", 0.2)
    # Earlier tests in this process may have sent the logger to stderr only (log_to_stderr) or
    # disabled it (import-linter's dictConfig disables existing loggers).
    logger = logging.getLogger("dockyard.replicate")
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "disabled", False)
    silent: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # connected, and never a byte back

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    dst = registries.distribution()
    try:
        with caplog.at_level("WARNING", logger="dockyard.replicate"):
            result = await replicate(policy(url, dst.url, limits={"retry": {"max": 0}}), stall_timeout=1.0)
    finally:
        server.close()
        for writer in silent:
            writer.close()
    assert f"waiting for the source registry at {url} to answer" in caplog.text
    assert result.result == "Failed"
    assert result.fatal
