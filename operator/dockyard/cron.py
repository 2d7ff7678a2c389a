"""Five-field cron schedules as the Kubernetes CronJob controller reads them, and their next time.

`status.nextRun` of a ReplicationPolicy must agree with when its CronJob actually fires, so
this follows the CronJob controller's parser (robfig/cron `ParseStandard`): fields minute,
hour, day of month, month, day of week; `*`, `?`, lists, ranges, steps (`*/15`, `1-30/2`,
`5/10` meaning 5 to the end in steps of 10), month and weekday names, the `@hourly` ...
`@yearly` macros. Day of month and day of week combine with OR when both are restricted and
with AND when either is `*` (Vixie cron). Times are UTC: the rendered CronJob pins
`timeZone: Etc/UTC`. Pure: no clock is read, the caller passes the time.

Only ASCII is read: fields are separated by ASCII whitespace, numbers are ASCII digits and
names and macros match case-insensitively in ASCII, so the CRD's admission pattern
(`dockyard.api.schema.CRON_PATTERN`) can state exactly the same grammar.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
WEEKDAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
SPACES = " \t\n\v\f\r"
"""The whitespace that separates fields (ASCII only)."""
HORIZON_DAYS = 366 * 5
"""A schedule that matches no day in five years (`0 0 30 2 *`) never runs."""


class CronError(ValueError):
    """A schedule the CronJob controller would reject; the message names the field."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]


_FIELDS = (
    _Field("minute", 0, 59, {}),
    _Field("hour", 0, 23, {}),
    _Field("day of month", 1, 31, {}),
    _Field("month", 1, 12, MONTHS),
    _Field("day of week", 0, 6, WEEKDAYS),
)


@dataclass(frozen=True)
class Schedule:
    """The parsed sets of a schedule; `*_star` records a `*`/`?` day field (AND instead of OR)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_star: bool
    weekdays_star: bool

    def day_matches(self, day: datetime.date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.days_star or self.weekdays_star:
            return dom and dow
        return dom or dow


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _number(text: str, f: _Field) -> int:
    value = f.names.get(text.lower()) if text.isascii() else None
    if value is not None:
        return value
    if not _digits(text):
        raise CronError(f"{f.name}: {text!r} is not a number")
    n = int(text)
    if not f.low <= n <= f.high:
        raise CronError(f"{f.name}: {n} is outside {f.low}-{f.high}")
    return n


def _parse_part(part: str, f: _Field) -> tuple[set[int], bool]:
    """One comma-separated part -> (values, whether it was a plain star)."""
    range_text, slash, step_text = part.partition("/")
    star = False
    if range_text in ("*", "?"):
        low, high, star = f.low, f.high, True
    else:
        first, dash, last = range_text.partition("-")
        low = _number(first, f)
        high = _number(last, f) if dash else low
        if slash and not dash:
            high = f.high  # `5/10`: from 5 to the end of the range
    step = 1
    if slash:
        if not _digits(step_text) or int(step_text) == 0:
            raise CronError(f"{f.name}: step {step_text!r} must be a positive number")
        step = int(step_text)
        star = star and step == 1
    if low > high:
        raise CronError(f"{f.name}: range {range_text!r} runs backwards")
    return set(range(low, high + 1, step)), star


def _parse_field(text: str, f: _Field) -> tuple[frozenset[int], bool]:
    values: set[int] = set()
    star = False
    for part in text.split(","):
        if not part:
            raise CronError(f"{f.name}: empty list element in {text!r}")
        part_values, part_star = _parse_part(part, f)
        values |= part_values
        star = star or part_star
    return frozenset(values), star


def parse(schedule: str) -> Schedule:
    """The schedule, or CronError saying what is wrong with it."""
    text = schedule.strip(SPACES)
    if text.isascii():
        text = MACROS.get(text.lower(), text)
    if text.startswith("@"):
        raise CronError(f"unknown macro {text!r}")
    fields = [f for f in text.translate({ord(c): " " for c in SPACES}).split(" ") if f]
    if len(fields) != 5:
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}")
    parsed = [_parse_field(value, f) for value, f in zip(fields, _FIELDS, strict=True)]
    return Schedule(minutes=parsed[0][0], hours=parsed[1][0], days=parsed[2][0], months=parsed[3][0],
                    weekdays=parsed[4][0], days_star=parsed[2][1], weekdays_star=parsed[4][1])


def next_time(schedule: str | Schedule, after: datetime.datetime) -> datetime.datetime | None:
    """The first time strictly after `after` (UTC, whole minutes) the schedule fires; None if never."""
    sched = parse(schedule) if isinstance(schedule, str) else schedule
    if after.tzinfo is None:
        after = after.replace(tzinfo=datetime.UTC)
    start = after.astimezone(datetime.UTC).replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
    hours = sorted(sched.hours)
    minutes = sorted(sched.minutes)
    day = start.date()
    for offset in range(HORIZON_DAYS):
        if sched.day_matches(day):
            for hour in hours:
                for minute in minutes:
                    candidate = datetime.datetime(day.year, day.month, day.day, hour, minute,
                                                  tzinfo=datetime.UTC)
                    if candidate >= start:
                        return candidate
        day = start.date() + datetime.timedelta(days=offset + 1)
    return None
