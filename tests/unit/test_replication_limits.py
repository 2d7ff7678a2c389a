"""Retry/backoff decisions, Retry-After parsing, rate limiter arithmetic, limit parsing."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from dockyard.api.schema import QUANTITY_PATTERN
from dockyard.oci.backoff import MAX_DELAY, RetryPolicy, TokenBucket, parse_retry_after
from dockyard.replication.limits import parse_bytes, parse_spec_duration


@pytest.mark.parametrize(("attempt", "status", "retry_after", "expected"), [
    (1, 503, None, 2.0),
    (2, 503, None, 4.0),
    (3, None, None, 8.0),          # connection error
    (5, 500, None, 32.0),
    (6, 500, None, None),          # retries exhausted
    (1, 429, 7.0, 7.0),            # Retry-After wins
    (1, 503, 0.5, 0.5),
    (1, 429, 10_000.0, MAX_DELAY),  # bounded
    (1, 502, 7.0, 2.0),            # Retry-After only counts on 429/503
    (1, 404, None, None),          # not retryable
    (1, 400, None, None),
    (1, 401, None, None),
])
def test_retry_decisions(attempt: int, status: int | None, retry_after: float | None,
                         expected: float | None) -> None:
    assert RetryPolicy(max=5, backoff=2.0).delay(attempt, status, retry_after) == expected


def test_backoff_is_capped() -> None:
    assert RetryPolicy(max=20, backoff=1.0, cap=60.0).delay(15, 503) == 60.0


def test_retry_after_forms() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after("Mon, 01 Jan 2024 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Mon, 01 Jan 2024 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None) is None


def test_token_bucket_paces_after_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    waits = [bucket.reserve(1, now=0.0) for _ in range(5)]
    assert waits == pytest.approx([0, 0, 0.1, 0.2, 0.3])


def test_token_bucket_refills_with_time_but_not_beyond_burst() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    bucket.reserve(2, now=0.0)
    assert bucket.reserve(1, now=0.1) == 0.0
    assert bucket.reserve(1, now=100.0) == 0.0
    assert bucket.reserve(2, now=100.0) == pytest.approx(0.1)


def test_bandwidth_bucket_holds_the_long_run_rate() -> None:
    rate = 1_000_000
    bucket = TokenBucket(rate=rate, burst=262_144)
    now, moved = 0.0, 0
    for _ in range(100):
        now += bucket.reserve(262_144, now)
        moved += 262_144
    # 26 MB at 1 MB/s: the last piece may start after ~25 s of waiting
    assert moved / (now + 262_144 / rate) == pytest.approx(rate, rel=0.02)


def test_limit_parsing() -> None:
    assert parse_spec_duration("2s") == 2.0
    assert parse_spec_duration("500ms") == 0.5
    assert parse_spec_duration("1m30s") == 90.0
    assert parse_bytes("50Mi") == 50 * 2**20
    assert parse_bytes("10M") == 10_000_000
    with pytest.raises(ValueError):
        parse_spec_duration("2 seconds")
    with pytest.raises(ValueError):
        parse_bytes("lots")


@pytest.mark.parametrize(("text", "value"), [
    ("1.5Gi", 3 * 2**29), ("1e6", 10**6), ("2E3", 2000), ("+50Mi", 50 * 2**20), (".5Ki", 512), ("1Pi", 2**50),
    ("2E", 2 * 10**18), ("1500m", 1),
])
def test_bandwidth_takes_every_quantity_the_crd_admits(text: str, value: int) -> None:
    assert re.fullmatch(QUANTITY_PATTERN.strip("^$"), text)
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["-1Mi", "50MB", "1 Gi", ""])
def test_bandwidth_refuses_what_is_not_a_byte_count(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)
