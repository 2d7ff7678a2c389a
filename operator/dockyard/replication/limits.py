"""Politeness and resilience rules of the copy engine: rate limits, backoff, stall detection.

The arithmetic (token buckets, retry delays, Retry-After parsing) is pure and takes the
clock as an argument, so it is tested exactly; the thin async wrappers only sleep for
what the arithmetic says.
"""

from __future__ import annotations

import asyncio
import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction

from dockyard.api.registry import quantity_value

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_DELAY = 300.0

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")


def parse_spec_duration(text: str) -> float:
    """`2s`, `500ms`, `1m30s` -> seconds."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 2s, 500ms, 1m)")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_bytes(text: str) -> int:
    """A quantity such as `50Mi`, `10M` or `1e6` -> whole bytes, as the API server reads it (no blanks around it,
    which the CRD's pattern refuses too)."""
    try:
        value: Fraction | None = quantity_value(text)
    except ValueError:
        value = None
    if value is None or value < 0:
        raise ValueError(f"not a byte quantity: {text!r} (use e.g. 50Mi)")
    return int(value)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """`max` retries after the first attempt; delays double from `backoff`."""

    max: int = 5
    backoff: float = 2.0
    cap: float = 60.0

    def retryable(self, status: int | None) -> bool:
        """None stands for a connection error or a stalled transfer: always worth another try."""
        return status is None or status in RETRYABLE_STATUSES

    def delay(self, attempt: int, status: int | None = None, retry_after: float | None = None) -> float | None:
        """Seconds before retry number `attempt` (1-based), or None when it should give up.

        A Retry-After from the server wins over the exponential schedule (it knows
        better), bounded by MAX_DELAY so a hostile header cannot park a run for days.
        """
        if attempt > self.max or not self.retryable(status):
            return None
        if retry_after is not None and status in (429, 503):
            return min(retry_after, MAX_DELAY)
        return float(min(self.backoff * 2.0 ** (attempt - 1), self.cap))


@dataclass
class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; `reserve` says how long to wait.

    Reservations may drive the balance negative: later callers then wait their turn, so
    the long-run rate holds even for requests larger than the burst.
    """

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    stamp: float | None = None

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst <= 0:
            raise ValueError("rate and burst must be positive")
        if self.tokens < 0:
            self.tokens = self.burst

    def reserve(self, amount: float, now: float) -> float:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Limiter:
    """An async front for a TokenBucket (None: unlimited)."""

    def __init__(self, rate: float | None, burst: float | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.bucket = TokenBucket(rate, burst or max(rate, 1.0)) if rate else None
        self._clock = clock

    async def take(self, amount: float = 1.0) -> None:
        if self.bucket is None:
            return
        now = self._clock() if self._clock else asyncio.get_running_loop().time()
        wait = self.bucket.reserve(amount, now)
        if wait > 0:
            await asyncio.sleep(wait)


class Stalled(Exception):
    """No byte moved for the stall timeout."""


class ProgressGuard:
    """Abort a transfer only when it stops moving, never because it is long.

    `async with ProgressGuard(30) as guard:` raises `Stalled` when `guard.tick()` was not
    called for 30 seconds; a 20 GB blob that keeps moving is never cut off.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._cm: asyncio.Timeout | None = None

    async def __aenter__(self) -> ProgressGuard:
        self._cm = asyncio.timeout_at(asyncio.get_running_loop().time() + self.timeout)
        await self._cm.__aenter__()
        return self

    def tick(self) -> None:
        if self._cm is not None:
            self._cm.reschedule(asyncio.get_running_loop().time() + self.timeout)

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: object) -> bool:
        assert self._cm is not None
        try:
            await self._cm.__aexit__(et, e, tb)  # type: ignore[arg-type]
        except TimeoutError as err:
            raise Stalled(f"no progress for {self.timeout:g}s") from err
        return False
