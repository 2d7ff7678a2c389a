"""Rendering of push events: what a Registry's pods get when the operator receives push events.

With the operator's events URL, the registry's config tells it where to post each tag push and
where its token is, and the pods mount the Registry's own token Secret; without the URL
(`make run` outside a cluster) nothing about events is rendered. The token is never in the pod
template's checksum, and the config the operator renders is one the server accepts.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.controller.reconcile import events_url_from_environment
from dockyard.registry.config import parse_config
from dockyard.render import RenderInput, render_registry
from dockyard.render.registry import CHECKSUM_ANNOTATION, events_secret

URL = "http://dockyard-events.dockyard-system.svc:8081"
TOKEN_FILE = "/etc/dockyard/events/token"


def body(spec: dict[str, Any] | None = None, name: str = "main") -> dict[str, Any]:
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": name, "namespace": "registries", "uid": "uid-1"},
            "spec": spec or {"storage": {"emptyDir": {}}}}


def render(events_url: str | None, **kwargs: Any) -> dict[str, dict[str, Any]]:
    inp = RenderInput.from_body(body(), image="dockyard:test", events_url=events_url, **kwargs)
    return {o["kind"]: o for o in render_registry(inp)}


def config_of(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    return doc


def pod(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = objs["Deployment"]["spec"]["template"]["spec"]
    return spec


def test_with_the_events_url_the_registry_posts_tag_pushes_with_its_own_token() -> None:
    objs = render(URL + "/")
    assert config_of(objs)["notify"] == {
        "url": f"{URL}/v1/push", "tokenFile": TOKEN_FILE,
        "registry": {"namespace": "registries", "name": "main"},
    }
    volumes = {v["name"]: v for v in pod(objs)["volumes"]}
    mounts = {m["mountPath"]: m for m in pod(objs)["containers"][0]["volumeMounts"]}
    mount = mounts["/etc/dockyard/events"]
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "main-events"
    assert {"key": "token", "path": "token"} in secret["items"]
    assert str(Path("/etc/dockyard/events") / secret["items"][0]["path"]) == TOKEN_FILE
    assert "Secret" not in objs, "the token Secret is created by the reconcile, never rendered or re-applied"


def test_without_the_events_url_nothing_about_events_is_rendered() -> None:
    objs = render(None)
    assert "notify" not in config_of(objs)
    text = yaml.safe_dump(list(objs.values()))
    assert "events" not in text
    assert render("") == objs


def test_the_rendered_config_is_one_the_registry_server_accepts() -> None:
    cfg = parse_config(config_of(render(URL)))
    assert cfg.notify is not None
    assert (cfg.notify.url, str(cfg.notify.token_file)) == (f"{URL}/v1/push", TOKEN_FILE)
    assert (cfg.notify.namespace, cfg.notify.name) == ("registries", "main")
    assert parse_config(config_of(render(None))).notify is None


def test_the_token_never_enters_the_pod_checksum() -> None:
    """The token Secret is not a referenced Secret: its data cannot roll the pods."""
    def checksum(**kwargs: Any) -> str:
        annotation: str = render(URL, **kwargs)["Deployment"]["spec"]["template"]["metadata"]["annotations"][
            CHECKSUM_ANNOTATION]
        return annotation

    base = checksum()
    assert checksum(secrets={"main-events": {"token": base64.b64encode(b"one").decode()}}) == base
    assert checksum(secrets={"main-events": {"token": base64.b64encode(b"two").decode()}}) == base
    # Turning events on or off changes the config, so the pods do roll then.
    assert checksum() != render(None)["Deployment"]["spec"]["template"]["metadata"]["annotations"][
        CHECKSUM_ANNOTATION]


def test_rendering_with_the_url_is_pure() -> None:
    assert render(URL) == render(URL)


def test_the_token_secret_is_owned_and_labelled_like_the_other_children() -> None:
    inp = RenderInput.from_body(body(), image="dockyard:test", events_url=URL)
    secret = events_secret(inp, "tok-en_1")
    deployment = render(URL)["Deployment"]
    assert secret["kind"] == "Secret"
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["name"] == "main-events"
    assert secret["metadata"]["namespace"] == "registries"
    assert secret["metadata"]["labels"] == deployment["metadata"]["labels"] == {
        "app.kubernetes.io/name": "dockyard-registry", "app.kubernetes.io/instance": "main",
        "app.kubernetes.io/managed-by": "dockyard"}
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "Registry"
    assert owner["uid"] == "uid-1"
    assert owner["controller"] is True
    assert base64.b64decode(secret["data"]["token"]) == b"tok-en_1"


@pytest.mark.parametrize(("value", "expected"), [
    (None, None), ("", None), ("  ", None),
    (URL, URL), (URL + "/", URL), ("https://events.example.com", "https://events.example.com"),
    ("dockyard-events:8081", None), ("ftp://x", None), ("http://", None),
])
def test_events_url_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                         expected: str | None) -> None:
    if value is None:
        monkeypatch.delenv("DOCKYARD_EVENTS_URL", raising=False)
    else:
        monkeypatch.setenv("DOCKYARD_EVENTS_URL", value)
    assert events_url_from_environment() == expected


def test_dockyard_render_configures_events_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(body()))
    base = {k: v for k, v in os.environ.items() if k != "DOCKYARD_EVENTS_URL"}

    def rendered(env: dict[str, str]) -> dict[str, dict[str, Any]]:
        done = subprocess.run([sys.executable, "-m", "dockyard.cli", "render", "-f", str(path)],
                              capture_output=True, text=True, timeout=60, check=False, env=env)
        assert done.returncode == 0, done.stderr
        return {o["kind"]: o for o in yaml.safe_load_all(done.stdout)}

    assert config_of(rendered({**base, "DOCKYARD_EVENTS_URL": URL}))["notify"]["url"] == f"{URL}/v1/push"
    assert "notify" not in config_of(rendered(base))
