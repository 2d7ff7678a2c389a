"""The grammar of `dockyard.cron` as regular expressions for admission (RE2 and Python `re`).

Built from the tables of `dockyard.cron` (restated here) (field ranges, month and weekday names, macros), so
the API server admits exactly the schedules the engine reads:

* `SCHEDULE_PATTERN` is the shape: five fields separated by ASCII whitespace, each a comma
  list of `*`, `?`, a value or a range `a-b`, optionally followed by a step `/n` (n >= 1),
  every value within its field's range (leading zeros allowed, names in any ASCII case);
  or one of the macros.
* `BACKWARDS_PATTERN` is found in a schedule matching `SCHEDULE_PATTERN` exactly when one
  of its ranges runs backwards (`20-10`, `fri-mon`): a pattern cannot compare the two ends
  of a range in the same field, so this one looks for a decreasing pair anywhere. Names of
  months and weekdays differ and the shape keeps each in its own field, so a pair's order
  does not depend on the field it is in.

ASCII only: no `\\s` (whose meaning differs between Go, RE2 and Python) and no `(?i)` (which
folds U+017F into `s` in RE2).
"""

from __future__ import annotations

from typing import NamedTuple

import re2  # type: ignore[import-untyped]


class _Field(NamedTuple):
    low: int
    high: int
    names: dict[str, int]


# dockyard.cron's tables (the api layer imports no other layer; tests/unit/test_cron.py checks they agree)
SPACES = " \t\n\v\f\r"
MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
WEEKDAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
FIELDS = (_Field(0, 59, {}), _Field(0, 23, {}), _Field(1, 31, {}), _Field(1, 12, MONTHS), _Field(0, 6, WEEKDAYS))
_FIELDS = FIELDS

_WS = "[" + SPACES.replace("\t", r"\t").replace("\n", r"\n").replace("\v", r"\v").replace(
    "\f", r"\f").replace("\r", r"\r") + "]"
_STEP = "/0*[1-9][0-9]*"
_BOUNDARY_BEFORE = "(?:^|[^0-9A-Za-z])"
_BOUNDARY_AFTER = "(?:[^0-9A-Za-z]|$)"
_MAX = max(f.high for f in _FIELDS)


def _caseless(name: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in name)


def _digits(low: int, high: int) -> str:
    return str(low) if low == high else f"[{low}-{high}]"


def _between(low: int, high: int) -> str:
    """The decimal numbers low..high (0 <= low <= high <= 99) without leading zeros."""
    parts = []
    if low <= 9:
        parts.append(_digits(low, min(high, 9)))
    full = []
    for tens in range(max(1, low // 10), high // 10 + 1):
        first, last = max(low, tens * 10) - tens * 10, min(high, tens * 10 + 9) - tens * 10
        if first > last:
            continue
        if (first, last) == (0, 9):
            full.append(tens)
        else:
            parts.append(f"{tens}{_digits(first, last)}")
    if full:
        parts.append(f"{_digits(full[0], full[-1])}[0-9]")
    return "|".join(parts)


def _number(low: int, high: int) -> str:
    return f"0*(?:{_between(low, high)})"


def _value(low: int, high: int, names: dict[str, int]) -> str:
    """A value of the field in low..high: a number or a name."""
    alternatives = [_number(low, high)] + [_caseless(n) for n, v in names.items() if low <= v <= high]
    return "(?:" + "|".join(alternatives) + ")"


def _field(low: int, high: int, names: dict[str, int]) -> str:
    value = _value(low, high, names)
    part = f"(?:[*?]|{value}(?:-{value})?)(?:{_STEP})?"
    return f"{part}(?:,{part})*"


_MACROS = "@(?:" + "|".join(_caseless(m[1:]) for m in MACROS) + ")"
_SCHEDULE = f"{_WS}+".join(_field(f.low, f.high, f.names) for f in _FIELDS)
SCHEDULE_PATTERN = f"^{_WS}*(?:{_MACROS}|{_SCHEDULE}){_WS}*$"


def _backwards() -> str:
    names = {n: v for f in _FIELDS for n, v in f.names.items()}
    pairs = []
    for low in range(_MAX):
        above = [_number(low + 1, _MAX)] + [_caseless(n) for n, v in names.items() if v > low]
        at = [f"0*{low}"] + [_caseless(n) for n, v in names.items() if v == low]
        pairs.append(f"(?:{'|'.join(above)})-(?:{'|'.join(at)})")
    return f"{_BOUNDARY_BEFORE}(?:{'|'.join(pairs)}){_BOUNDARY_AFTER}"


BACKWARDS_PATTERN = _backwards()


_NAMES = ("minute", "hour", "day of month", "month", "day of week")
_FIELD_PATTERNS = [re2.compile(f"^(?:{_field(f.low, f.high, f.names)})$") for f in FIELDS]
_BACKWARDS = re2.compile(BACKWARDS_PATTERN)
_SCHEDULE_RE = re2.compile(SCHEDULE_PATTERN)


def schedule_error(schedule: str) -> str | None:
    """Why `dockyard.cron` refuses a schedule, naming the cron field as it does; None if it reads it."""
    if _SCHEDULE_RE.search(schedule) is not None and _BACKWARDS.search(schedule) is None:
        return None
    text = schedule.strip(SPACES)
    if text.startswith("@"):
        return f"unknown macro {text!r}"
    fields = [f for f in text.translate({ord(c): " " for c in SPACES}).split(" ") if f]
    if len(fields) != len(FIELDS):
        return f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(fields)}"
    for name, value, field, pattern in zip(_NAMES, fields, FIELDS, _FIELD_PATTERNS, strict=True):
        if pattern.search(value) is None:
            return f"{name}: {value!r} is not a list of values {field.low}-{field.high}, ranges and steps"
        if _BACKWARDS.search(value) is not None:
            return f"{name}: a range in {value!r} runs backwards"
    return "not a cron schedule"
