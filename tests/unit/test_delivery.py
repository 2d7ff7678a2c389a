"""The delivery engine's pure parts: backoff, Retry-After, the bounded queue, the CloudEvent and its signature."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import uuid
from pathlib import Path

from dockyard.registry.config import DeliveryConfig
from dockyard.registry.delivery import Destination, KeyFile, backoff, cloud_event, retry_after, sign


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    config = DeliveryConfig(retry_initial=1.0, retry_max=60.0)
    assert [backoff(config, n, lambda: 1.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(config, 3, lambda: 0.5) == 2.0
    assert backoff(config, 3, lambda: 0.0) == 0.4  # never zero: a tenth of the step
    assert backoff(config, 10_000, lambda: 1.0) == 60.0


def test_retry_after_is_seconds_or_an_http_date() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(" 0 ") == 0.0
    assert retry_after(email.utils.formatdate(1_000_030.0, usegmt=True), now=1_000_000.0) == 30.0
    assert retry_after(email.utils.formatdate(999_000.0, usegmt=True), now=1_000_000.0) == 0.0
    assert retry_after(None) is None
    assert retry_after("soon") is None
    assert retry_after("-3") is None


def test_a_full_queue_drops_its_oldest_waiting_event_and_counts_it() -> None:
    counted: list[str] = []
    destination = Destination("ci", "http://ci.example.com:8080/hook", KeyFile(Path("/nonexistent")),
                              DeliveryConfig(queue_size=2), count=counted.append)
    for i in range(5):
        destination.submit(f"{i}".encode(), f"event {i}")
    assert [p.body for p in destination.queue] == [b"3", b"4"]
    assert counted == ["dropped"] * 3
    assert destination.dropped == 3
    assert destination.depth == 2
    assert destination.host == "ci.example.com:8080"


def test_a_cloud_event_is_structured_json_and_its_signature_is_the_hmac_of_the_body() -> None:
    body = cloud_event("push", "/registries/ns/main", "team/app:v1", {"repository": "team/app", "tag": "v1"})
    event = json.loads(body)
    assert event["specversion"] == "1.0"
    assert event["type"] == "dev.dockyard.registry.push"
    assert event["source"] == "/registries/ns/main"
    assert event["subject"] == "team/app:v1"
    assert event["datacontenttype"] == "application/json"
    assert event["data"] == {"repository": "team/app", "tag": "v1"}
    assert uuid.UUID(event["id"]).version == 4
    assert event["time"].endswith("Z")
    assert sign(b"key", body) == "sha256=" + hmac.new(b"key", body, hashlib.sha256).hexdigest()


def test_the_key_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "key"
    key = KeyFile(path)
    assert key.current() is None
    path.write_text("one\n")
    assert key.current() == "one"
    new = tmp_path / "key.new"
    new.write_text("second")
    new.replace(path)
    assert key.current() == "second"
    path.unlink()
    assert key.current() is None
