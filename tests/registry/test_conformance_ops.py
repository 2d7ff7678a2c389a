"""Operating the registry: /healthz, /readyz, Prometheus /metrics, JSON access logs, TLS, the
config file contract with the operator, and one-line errors (exit 2) for bad flags or config."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.registry.conftest import Client
from tests.registry.processes import DOCKYARD, RegistryProcess, free_port, start_dockyard


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == (f"{name}{{{want}}}" if labels else name):
            return float(value)
    return 0.0


def test_healthz_and_readyz(client: Client) -> None:
    assert client.request("GET", "/healthz").status == 200
    assert client.request("GET", "/readyz").status == 200


def test_readyz_follows_whether_pulls_can_be_served(tmp_path: Path) -> None:
    """Unwritable storage still serves pulls, so the pod stays ready; unreadable storage does not."""
    root = tmp_path / "root"
    with start_dockyard(root) as server:
        c = Client(server.url)
        assert c.request("GET", "/readyz").status == 200
        shutil.rmtree(root / "tmp")
        (root / "tmp").write_text("not a directory any more")
        r = c.request("GET", "/readyz")
        assert r.status == 200
        assert b"not writable" in r.body
        root.rename(tmp_path / "moved")
        assert c.request("GET", "/readyz").status == 503
        assert c.request("GET", "/healthz").status == 200


def test_metrics_count_requests_bytes_and_upload_durations(client: Client, repo: str) -> None:
    before = client.request("GET", "/metrics").body.decode()
    data = b"m" * 100_000
    client.push_blob(repo, data)
    client.request("GET", f"/v2/{repo}/manifests/missing")
    after_response = client.request("GET", "/metrics")
    assert after_response.header("Content-Type", ).startswith("text/plain")  # type: ignore[union-attr]
    after = after_response.body.decode()
    name = "dockyard_registry_http_requests_total"
    assert _metric(after, name, method="PUT", code="201") == _metric(before, name, method="PUT", code="201") + 1
    assert _metric(after, name, method="GET", code="404") == _metric(before, name, method="GET", code="404") + 1
    received = "dockyard_registry_received_bytes_total"
    assert _metric(after, received) - _metric(before, received) >= len(data)
    count = "dockyard_registry_upload_duration_seconds_count"
    assert _metric(after, count) == _metric(before, count) + 1
    assert _metric(after, "dockyard_registry_upload_duration_seconds_bucket", le="+Inf") == _metric(after, count)
    assert _metric(after, "dockyard_registry_sent_bytes_total") > _metric(before, "dockyard_registry_sent_bytes_total")


def test_access_log_is_one_json_object_per_request(client: Client, server: RegistryProcess, repo: str) -> None:
    marker = f"/v2/{repo}/manifests/log-marker"
    client.request("GET", marker, headers={"User-Agent": "conformance-test"})
    deadline = time.monotonic() + 5
    entry = None
    while entry is None and time.monotonic() < deadline:
        for line in server.output().splitlines():
            if marker in line:
                entry = json.loads(line)
        time.sleep(0.05)
    assert entry is not None, "no access log line for the request"
    assert entry["method"] == "GET"
    assert entry["path"] == marker
    assert entry["status"] == 404
    assert entry["user_agent"] == "conformance-test"
    assert isinstance(entry["duration_ms"], float | int)


def _run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DOCKYARD, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(("config", "key"), [
    ("bogus: 1\n", "bogus"),
    ("addr: nonsense\n", "addr"),
    ("readOnly: maybe\n", "readOnly"),
    ("gc: {interval: soon}\n", "gc.interval"),
    ("gc: {gracePeriod: -1h}\n", "gc.gracePeriod"),
    ("gc: {everyday: true}\n", "gc.everyday"),
    ("gc: {schedule: '61 * * * *'}\n", "gc.schedule"),
    ("gc: {schedule: '0 3 * * *', interval: 1h}\n", "gc:"),
    ("tls: {cert: /nonexistent.crt}\n", "tls"),
    ("anonymousPull: true\n", "anonymousPull"),
    ("htpasswd: /nonexistent/htpasswd\n", "htpasswd"),
    ("root: [1, 2]\n", "root"),
    ("storage: {s3: {endpoint: 'http://minio:9000'}}\n", "storage.s3.bucket"),
    ("storage: {s3: {bucket: images, insecure: true, caFile: /ca.crt}}\n", "storage.s3.insecure"),
    (": : :\n", "config"),
])
def test_bad_config_is_one_line_naming_the_key_and_exit_2(tmp_path: Path, config: str, key: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    r = _run("registry", "serve", "--config", str(path), "--root", str(tmp_path / "root"),
             "--addr", f"127.0.0.1:{free_port()}")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert key in r.stderr or (key == "config" and str(path) in r.stderr)


@pytest.mark.parametrize("args", [
    ["--addr", "localhost"], ["--addr", "127.0.0.1:99999"], ["--bogus-flag"],
    ["--tls-cert", "/x.crt"], ["--config", "/nonexistent/config.yaml"],
])
def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    r = _run("registry", "serve", "--root", str(tmp_path / "root"), *args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_gc_command_bad_flags_exit_2(tmp_path: Path) -> None:
    r = _run("registry", "gc", "--root", str(tmp_path), "--grace-period", "whenever")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    r = _run("registry", "gc", "--root", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1


def test_config_file_is_used_and_flags_override_it(tmp_path: Path) -> None:
    port = free_port()
    root_from_file = tmp_path / "from-file"
    config = tmp_path / "config.yaml"
    config.write_text(f"addr: 127.0.0.1:{port}\nroot: {root_from_file}\nreadOnly: true\n"
                      "anonymousPull: false\ngc: {interval: 24h, deleteUntagged: false, gracePeriod: 1h}\n")
    log = tmp_path / "serve.log"
    proc = RegistryProcess([DOCKYARD, "registry", "serve", "--config", str(config)], port, root_from_file, log)
    with proc.start():
        c = Client(proc.url)
        r = c.request("POST", "/v2/app/blobs/uploads/", body=b"")
        assert r.status == 405
        assert "read-only" in r.body.decode()
        assert (root_from_file / "blobs").is_dir()
    override_root = tmp_path / "override"
    port2 = free_port()
    proc = RegistryProcess([DOCKYARD, "registry", "serve", "--config", str(config), "--root", str(override_root),
                            "--addr", f"127.0.0.1:{port2}"], port2, override_root, log)
    with proc.start():
        assert Client(proc.url).request("GET", "/v2/").status == 200
        assert (override_root / "blobs").is_dir()


def test_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("openssl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is not installed (CI must install it)")
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted by the readiness probe of the helper
    with start_dockyard(tmp_path / "root", "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        assert server.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"{server.url}/v2/", context=ctx, timeout=10) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{server.url}/v2/x/tags/list", context=ctx, timeout=10)
        assert e.value.code == 404
        plain = Client(server.url.replace("https://", "http://"))
        with pytest.raises(OSError):
            plain.request("GET", "/v2/", timeout=5)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("30m", 1800), ("1h30m", 5400), ("24h", 86400), ("7d", 604800), ("200ms", 0.2), (45, 45),
])
def test_durations(text: str | int, seconds: float) -> None:
    from dockyard.registry.config import parse_config_duration

    assert parse_config_duration(text, "gc.interval") == pytest.approx(seconds)


def test_config_document_maps_to_settings() -> None:
    from dockyard.registry.config import GCConfig, parse_config

    cfg = parse_config({"addr": "127.0.0.1:6000", "root": "/data", "htpasswd": "/auth/htpasswd",
                        "anonymousPull": True, "readOnly": True,
                        "tls": {"cert": "/tls/tls.crt", "key": "/tls/tls.key"},
                        "gc": {"interval": "12h", "deleteUntagged": True, "gracePeriod": "2h"}})
    assert (cfg.host, cfg.port, str(cfg.root)) == ("127.0.0.1", 6000, "/data")
    assert cfg.anonymous_pull
    assert cfg.read_only
    assert str(cfg.tls_cert) == "/tls/tls.crt"
    assert str(cfg.tls_key) == "/tls/tls.key"
    assert cfg.gc == GCConfig(interval=43200, delete_untagged=True, grace_period=7200)
    assert parse_config({}).gc is None
    assert parse_config(None).port == 5000


def test_gc_schedule_decides_when_the_next_collection_runs() -> None:
    import datetime

    from dockyard.registry.config import parse_config

    gc = parse_config({"gc": {"schedule": "30 3 * * *"}}).gc
    assert gc is not None
    assert gc.schedule == "30 3 * * *"
    before = datetime.datetime(2026, 11, 27, 3, 0, tzinfo=datetime.UTC)
    assert gc.next_delay(before) == 30 * 60
    after = datetime.datetime(2026, 11, 27, 3, 31, tzinfo=datetime.UTC)
    assert gc.next_delay(after) == (24 * 60 - 1) * 60
    never = parse_config({"gc": {"schedule": "0 0 30 2 *"}}).gc
    assert never is not None
    assert never.next_delay(before) is None
    assert parse_config({"gc": {"interval": "2h"}}).gc.next_delay(before) == 7200  # type: ignore[union-attr]
