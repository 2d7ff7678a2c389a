"""Rendering of `spec.webhooks`: the registry's config, the Secrets mounted for the keys, rotation.

Each webhook is in the config with its key file; its Secret is mounted read-only under
`/etc/dockyard/webhooks/<name>/`; and the Secret is a referenced Secret, so the reconcile waits
for it (with its key) and a rotated key rolls the pods. The config is one the server accepts.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from dockyard.registry.config import parse_config
from dockyard.render import RenderInput, render_registry
from dockyard.render.registry import CHECKSUM_ANNOTATION, referenced_secrets

HOOKS = [
    {"name": "ci", "url": "https://ci.example.com/hook", "events": ["push", "delete"],
     "repositories": ["team/**"], "secretRef": {"name": "ci-hook"}},
    {"name": "audit", "url": "http://audit.tools.svc:8080/events", "events": ["pull"],
     "secretRef": {"name": "shared", "key": "audit-key"}},
]


def body(webhooks: list[dict[str, Any]] | None = HOOKS, **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"storage": {"emptyDir": {}}, **spec}
    if webhooks is not None:
        s["webhooks"] = webhooks
    return {"apiVersion": "dockyard.dev/v1alpha1", "kind": "Registry",
            "metadata": {"name": "main", "namespace": "registries", "uid": "uid-1"}, "spec": s}


def inp_of(doc: dict[str, Any], **kwargs: Any) -> RenderInput:
    return RenderInput.from_body(doc, image="dockyard:test", **kwargs)


def render(doc: dict[str, Any], **kwargs: Any) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in render_registry(inp_of(doc, **kwargs))}


def config_of(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    return doc


def checksum(objs: dict[str, dict[str, Any]]) -> str:
    value: str = objs["Deployment"]["spec"]["template"]["metadata"]["annotations"][CHECKSUM_ANNOTATION]
    return value


def test_each_webhook_is_in_the_config_with_its_key_file() -> None:
    config = config_of(render(body()))
    assert config["source"] == "/registries/registries/main"
    assert config["webhooks"] == [
        {"name": "ci", "url": "https://ci.example.com/hook", "events": ["push", "delete"],
         "repositories": ["team/**"], "secretFile": "/etc/dockyard/webhooks/ci/secret"},
        {"name": "audit", "url": "http://audit.tools.svc:8080/events", "events": ["pull"],
         "repositories": ["**"], "secretFile": "/etc/dockyard/webhooks/audit/audit-key"},
    ]


def test_each_webhook_secret_is_mounted_read_only_where_its_key_file_is() -> None:
    objs = render(body())
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    for hook in config_of(objs)["webhooks"]:
        path = Path(hook["secretFile"])
        mount = mounts[str(path.parent)]
        assert mount["readOnly"] is True
        assert str(path.parent) == f"/etc/dockyard/webhooks/{hook['name']}"
        secret = volumes[mount["name"]]["secret"]
        [item] = secret["items"]
        assert item["path"] == path.name
        assert "optional" not in secret, "a webhook without its key would deliver nothing"
    assert volumes[mounts["/etc/dockyard/webhooks/ci"]["name"]]["secret"]["secretName"] == "ci-hook"
    assert volumes[mounts["/etc/dockyard/webhooks/ci"]["name"]]["secret"]["items"] == [
        {"key": "secret", "path": "secret"}]
    assert volumes[mounts["/etc/dockyard/webhooks/audit"]["name"]]["secret"] == {
        "secretName": "shared", "items": [{"key": "audit-key", "path": "audit-key"}]}
    assert len({v["name"] for v in pod["volumes"]}) == len(pod["volumes"])


def test_webhook_secrets_are_referenced_with_every_key_they_need() -> None:
    spec = inp_of(body(auth={"htpasswdSecretRef": {"name": "shared"}})).spec
    assert referenced_secrets(spec) == {"shared": ("htpasswd", "audit-key"), "ci-hook": ("secret",)}
    assert referenced_secrets(inp_of(body(None)).spec) == {}


def test_a_rotated_webhook_key_rolls_the_pods() -> None:
    def with_key(key: bytes) -> dict[str, dict[str, Any]]:
        data = {"ci-hook": {"secret": base64.b64encode(key).decode()},
                "shared": {"audit-key": base64.b64encode(b"a").decode()}}
        return render(body(), secrets=data)
    assert checksum(with_key(b"one")) == checksum(with_key(b"one"))
    assert checksum(with_key(b"one")) != checksum(with_key(b"two"))


def test_without_webhooks_nothing_about_them_is_rendered() -> None:
    objs = render(body(None))
    assert "webhooks" not in config_of(objs)
    assert "source" not in config_of(objs)
    assert "webhooks" not in yaml.safe_dump(list(objs.values()))


def test_the_rendered_config_is_one_the_registry_server_accepts() -> None:
    cfg = parse_config(config_of(render(body(), events_url="http://dockyard-events.dockyard-system.svc:8081")))
    assert [(w.name, w.url, sorted(w.events), w.repositories, str(w.secret_file)) for w in cfg.webhooks] == [
        ("ci", "https://ci.example.com/hook", ["delete", "push"], ("team/**",), "/etc/dockyard/webhooks/ci/secret"),
        ("audit", "http://audit.tools.svc:8080/events", ["pull"], ("**",), "/etc/dockyard/webhooks/audit/audit-key"),
    ]
    assert cfg.source == "/registries/registries/main"
    assert cfg.webhooks[0].delivery.retry_for >= 600
    assert cfg.notify is not None
