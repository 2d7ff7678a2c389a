"""The cron reader behind `status.nextRun`: it must fire when the CronJob controller fires."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.cron import CronError, Schedule, next_time, parse

UTC = datetime.UTC


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


# 2026-11-27 is a Friday.
@pytest.mark.parametrize(("schedule", "after", "expected"), [
    ("0 */6 * * *", "2026-11-27T06:10:00", "2026-11-27T12:00:00"),
    ("0 */6 * * *", "2026-11-27T05:59:59", "2026-11-27T06:00:00"),
    ("0 */6 * * *", "2026-11-27T06:00:00", "2026-11-27T12:00:00"),  # strictly after
    ("0 */6 * * *", "2026-11-27T18:00:30", "2026-11-28T00:00:00"),
    ("*/15 * * * *", "2026-11-27T06:14:59", "2026-11-27T06:15:00"),
    ("* * * * *", "2026-11-27T06:14:10", "2026-11-27T06:15:00"),
    ("5/20 * * * *", "2026-11-27T06:26:00", "2026-11-27T06:45:00"),
    ("10-20/5 3 * * *", "2026-11-27T03:16:00", "2026-11-27T03:20:00"),
    ("10-20/5 3 * * *", "2026-11-27T03:20:00", "2026-11-28T03:10:00"),
    ("0 0 1 * *", "2026-11-27T00:00:00", "2026-12-01T00:00:00"),
    ("30 2 * * MON", "2026-11-27T00:00:00", "2026-11-30T02:30:00"),
    ("30 2 * * 1-5", "2026-11-27T02:31:00", "2026-11-30T02:30:00"),  # Fri -> Mon
    ("0 9 * * sat,sun", "2026-11-27T10:00:00", "2026-11-28T09:00:00"),
    ("0 0 * dec *", "2026-11-27T00:00:00", "2026-12-01T00:00:00"),
    ("0 0 1 jan *", "2026-11-27T00:00:00", "2027-01-01T00:00:00"),
    # both day fields restricted: either matches (Sunday 29th before the 1st)
    ("0 0 1 * 0", "2026-11-27T00:00:00", "2026-11-29T00:00:00"),
    # day of week is `*`: the day of month alone decides
    ("0 0 15 * *", "2026-11-27T00:00:00", "2026-12-15T00:00:00"),
    # `*/2` in day of week restricts it (no star): OR with day of month 28
    ("0 0 28 * */2", "2026-11-27T00:00:00", "2026-11-28T00:00:00"),
    ("0 0 29 2 *", "2026-11-27T00:00:00", "2028-02-29T00:00:00"),
    ("@hourly", "2026-11-27T06:10:00", "2026-11-27T07:00:00"),
    ("@daily", "2026-11-27T06:10:00", "2026-11-28T00:00:00"),
    ("@midnight", "2026-11-27T06:10:00", "2026-11-28T00:00:00"),
    ("@weekly", "2026-11-27T06:10:00", "2026-11-29T00:00:00"),
    ("@monthly", "2026-11-27T06:10:00", "2026-12-01T00:00:00"),
    ("@yearly", "2026-11-27T06:10:00", "2027-01-01T00:00:00"),
    ("0 12 ? * *", "2026-11-27T06:10:00", "2026-11-27T12:00:00"),
    ("  0  12  *  *  *  ", "2026-11-27T12:00:00", "2026-11-28T12:00:00"),
    ("59 23 31 12 *", "2026-12-31T23:59:00", "2027-12-31T23:59:00"),
])
def test_next_time(schedule: str, after: str, expected: str) -> None:
    assert next_time(schedule, at(after)) == at(expected)


def test_a_schedule_that_never_fires_has_no_next_time() -> None:
    assert next_time("0 0 30 2 *", at("2026-11-27T00:00:00")) is None


def test_the_answer_is_utc_whatever_zone_the_caller_uses() -> None:
    berlin = datetime.timezone(datetime.timedelta(hours=1))
    after = datetime.datetime(2026, 11, 27, 7, 10, tzinfo=berlin)  # 06:10 UTC
    assert next_time("0 */6 * * *", after) == at("2026-11-27T12:00:00")


@pytest.mark.parametrize(("schedule", "complaint"), [
    ("0 */6 * *", "expected 5 fields"),
    ("0 */6 * * * *", "expected 5 fields"),
    ("60 * * * *", "minute: 60 is outside 0-59"),
    ("* 24 * * *", "hour: 24 is outside 0-23"),
    ("* * 0 * *", "day of month: 0 is outside 1-31"),
    ("* * * 13 *", "month: 13 is outside 1-12"),
    ("* * * * 7", "day of week: 7 is outside 0-6"),
    ("*/0 * * * *", "step '0'"),
    ("20-10 * * * *", "runs backwards"),
    ("a * * * *", "minute: 'a' is not a number"),
    ("1,,2 * * * *", "empty list element"),
    ("@every 5m", "unknown macro"),
    ("CRON_TZ=UTC 0 * * *", "is not a number"),
    # ASCII only, as the admission pattern states it
    ("\u0661 * * * *", "minute: '\u0661' is not a number"),
    ("* * * * \u00b2", "is not a number"),
    ("*/\u0661 * * * *", "step"),
    ("@wee\u212aly", "unknown macro"),
    ("0\u00a012 * * * *", "is not a number"),
])
def test_invalid_schedules_say_what_is_wrong(schedule: str, complaint: str) -> None:
    with pytest.raises(CronError, match=complaint.replace("*", r"\*")):
        parse(schedule)


def _fires(sched: Schedule, t: datetime.datetime) -> bool:
    """A second, naive reading of the same rules: does the schedule fire at minute `t`?"""
    return (t.minute in sched.minutes and t.hour in sched.hours and sched.day_matches(t.date()))


FIELD = st.one_of(
    st.just("*"),
    st.integers(0, 5).map(str),
    st.tuples(st.integers(0, 3), st.integers(4, 6)).map(lambda r: f"{r[0]}-{r[1]}"),
    st.integers(1, 4).map(lambda s: f"*/{s}"),
)


@settings(max_examples=60, deadline=None)
@given(minute=st.sampled_from(["*", "0", "*/7", "5,35", "50-59"]),
       hour=st.sampled_from(["*", "0", "*/5", "3-4", "23"]),
       dom=st.sampled_from(["*", "1", "13-15", "*/10", "31"]),
       month=st.sampled_from(["*", "2", "*/3", "jun-aug"]),
       dow=FIELD,
       offset=st.integers(0, 60 * 24 * 400))
def test_next_time_is_the_first_firing_minute(minute: str, hour: str, dom: str, month: str, dow: str,
                                              offset: int) -> None:
    schedule = f"{minute} {hour} {dom} {month} {dow}"
    sched = parse(schedule)
    after = at("2026-01-01T00:00:00") + datetime.timedelta(minutes=offset, seconds=17)
    found = next_time(sched, after)
    if found is None:  # e.g. the 31st of February: no day in the horizon may match
        day = after.date()
        for _ in range(366 * 5):
            day += datetime.timedelta(days=1)
            assert not sched.day_matches(day), (schedule, day)
        return
    assert found > after
    assert _fires(sched, found), schedule
    t = after.replace(second=0) + datetime.timedelta(minutes=1)
    # every minute in between does not fire (checked by hours once the minute set cannot match)
    while t < found:
        assert not _fires(sched, t), (schedule, t)
        t += datetime.timedelta(minutes=1) if (t.hour in sched.hours and sched.day_matches(t.date())) \
            else datetime.timedelta(minutes=60 - t.minute)


def test_the_admission_grammar_restates_these_tables() -> None:
    from dockyard import cron
    from dockyard.api import cron_grammar
    assert cron_grammar.SPACES == cron.SPACES
    assert set(cron_grammar.MACROS) == set(cron.MACROS)
    assert [(f.low, f.high, f.names) for f in cron_grammar.FIELDS] == [(f.low, f.high, f.names) for f in cron._FIELDS]
