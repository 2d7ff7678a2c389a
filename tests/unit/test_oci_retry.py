"""`backoff.retry`, the one retry loop: which failures it retries, how long it waits, when it gives up."""

from __future__ import annotations

import pytest

from dockyard.controller.kube import ApiError
from dockyard.controller.runs import STATUS_ATTEMPTS, _report_delay
from dockyard.oci.backoff import MAX_DELAY, Attempts, RetryPolicy, retry


class Failure(Exception):
    def __init__(self, status: int | None, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class Script:
    """An operation that fails with the given errors in turn, then succeeds; the waits it was made to take."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.waits: list[float] = []

    async def attempt(self, _attempts: Attempts) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_retryable_errors_are_retried_with_doubling_delays() -> None:
    script = Script(Failure(503), Failure(None), Failure(500))
    assert await retry(script.attempt, RetryPolicy(max=5, backoff=2.0).delay_for, sleep=script.sleep) == "done"
    assert script.calls == 4
    assert script.waits == [2.0, 4.0, 8.0]


async def test_it_gives_up_after_the_limit_with_the_last_error() -> None:
    last = Failure(502)
    script = Script(Failure(503), Failure(503), last)
    with pytest.raises(Failure) as raised:
        await retry(script.attempt, RetryPolicy(max=2, backoff=1.0).delay_for, sleep=script.sleep)
    assert raised.value is last
    assert script.calls == 3  # the first attempt and `max` retries
    assert script.waits == [1.0, 2.0]


@pytest.mark.parametrize("error", [Failure(404), Failure(401), ValueError("a bug")])
async def test_non_retryable_errors_are_raised_at_once(error: Exception) -> None:
    script = Script(error)
    with pytest.raises(type(error)):
        await retry(script.attempt, RetryPolicy().delay_for, sleep=script.sleep)
    assert script.calls == 1
    assert script.waits == []


async def test_retry_after_is_honoured_on_429_and_503_and_bounded() -> None:
    script = Script(Failure(429, 7.0), Failure(503, 0.5), Failure(429, 10_000.0), Failure(502, 9.0))
    await retry(script.attempt, RetryPolicy(max=5, backoff=2.0).delay_for, sleep=script.sleep)
    # A 502's Retry-After does not count: the schedule's fourth delay.
    assert script.waits == [7.0, 0.5, MAX_DELAY, 16.0]


async def test_progress_forgives_earlier_failures() -> None:
    calls = 0

    async def attempt(attempts: Attempts) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:
            attempts.progressed()  # e.g. a chunk went through before the next failure
        if calls < 5:
            raise Failure(503)
        return calls

    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    assert await retry(attempt, RetryPolicy(max=3, backoff=1.0).delay_for, sleep=sleep) == 5
    assert waits == [1.0, 2.0, 1.0, 2.0]


async def test_recover_runs_after_each_wait_and_its_errors_are_not_retried() -> None:
    events: list[str] = []
    script = Script(Failure(503), Failure(503))

    async def sleep(seconds: float) -> None:
        events.append(f"wait {seconds:g}")

    async def recover(error: Exception) -> None:
        events.append(f"recover from {error}")
        if len(events) > 2:
            raise RuntimeError("the upload session is gone for good")

    with pytest.raises(RuntimeError, match="gone for good"):
        await retry(script.attempt, RetryPolicy(backoff=1.0).delay_for, recover=recover, sleep=sleep)
    assert events == ["wait 1", "recover from HTTP 503", "wait 2", "recover from HTTP 503"]
    assert script.calls == 2


@pytest.mark.parametrize(("error", "retried"), [
    (ApiError(503, "ServiceUnavailable", "busy"), True),
    (ApiError(429, "TooManyRequests", "slow down"), True),
    (ApiError(409, "Conflict", "changed"), False),
    (ApiError(404, "NotFound", "gone"), False),
    (TimeoutError(), True),
    (ConnectionResetError(), True),
    (ValueError("a bug"), False),
])
def test_status_reports_retry_transient_api_trouble_only(error: Exception, retried: bool) -> None:
    assert (_report_delay(1, error) is not None) == retried


def test_status_reports_give_up_after_their_attempts() -> None:
    error = ApiError(500, "InternalError", "oops")
    assert [_report_delay(n, error) for n in range(1, STATUS_ATTEMPTS + 1)] == [2.0, 4.0, 8.0, 16.0, None]
