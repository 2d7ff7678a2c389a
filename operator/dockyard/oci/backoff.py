"""Backoff and rate-limit arithmetic for talking to registries: retry delays, Retry-After, token buckets.

The arithmetic is pure and takes the clock as an argument, so it is tested exactly; the
thin async `Limiter` only sleeps for what the arithmetic says, and `retry` is the one retry
loop of the code base (the transport's requests and the copy engine's uploads both use it).
"""

from __future__ import annotations

import asyncio
import email.utils
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_DELAY = 300.0


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

    def delay_for(self, attempt: int, error: BaseException) -> float | None:
        """`delay` for a failure given as an exception with `status` (None: a connection error) and
        `retry_after` attributes, as a `RegistryError` carries them; any other exception is a bug, not retried."""
        if not hasattr(error, "status"):
            return None
        return self.delay(attempt, error.status, getattr(error, "retry_after", None))


class Attempts:
    """The failed attempts of one `retry` since the last progress."""

    def __init__(self) -> None:
        self.failed = 0

    def progressed(self) -> None:
        """The operation moved forward (a chunk went through): earlier failures no longer count."""
        self.failed = 0


async def retry(attempt: Callable[[Attempts], Awaitable[T]], delay: Callable[[int, Exception], float | None], *,
                recover: Callable[[Exception], Awaitable[None]] | None = None,
                sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> T:
    """Await `attempt` until it returns; after it raises, wait `delay(n, error)` seconds and try again.

    `n` counts the failures since the last `Attempts.progressed()` (1 for the first); a delay of None
    gives up and re-raises the error. `recover(error)` runs after the wait and before the next attempt
    (to learn how far an upload got, say); what it raises is not retried.
    """
    attempts = Attempts()
    while True:
        try:
            return await attempt(attempts)
        except Exception as error:
            attempts.failed += 1
            wait = delay(attempts.failed, error)
            if wait is None:
                raise
            failure = error
        await sleep(wait)
        if recover is not None:
            await recover(failure)


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
