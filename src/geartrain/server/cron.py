"""Cron fields (minute, hour, day of month, month, day of week) and the next time they match, in UTC.

Each field is `*` or empty (any), a number, a range `A-B`, a step `*/S` or `A-B/S`, or a comma-separated list of
those; months and weekdays may also be written as three-letter English names (jan, mon). Day of week runs 0-7,
where 0 and 7 are Sunday. As in cron, when both day of month and day of week are restricted, a day matching
either one matches.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass

__all__ = ["FIELDS", "CronError", "CronSpec"]

#: (name, lowest, highest) of the five fields, in order.
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
_NAMES = {
    "month": {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name},
    "day of week": {name.lower(): (i + 1) % 7 for i, name in enumerate(calendar.day_abbr)},
}
#: How far ahead to look for a matching time (leap days on a given weekday repeat within 28 years).
_HORIZON_YEARS = 29


class CronError(ValueError):
    """A cron field that cannot be read; `field` names it (e.g. "day of month")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _number(text: str, field: str, low: int, high: int) -> int:
    value = _NAMES.get(field, {}).get(text.lower())
    if value is None:
        if not text.isdigit():
            raise CronError(field, f"{text!r} is not a number")
        value = int(text)
    if not low <= value <= high:
        raise CronError(field, f"{value} is out of range {low}-{high}")
    return value


def parse_field(text: str, field: str, low: int, high: int) -> frozenset[int] | None:
    """The values a field allows, or None for any value (`*` or empty)."""
    text = text.strip()
    if text in ("", "*"):
        return None
    values: set[int] = set()
    for part in text.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(field, f"step {step_text!r} in {part!r} is not a positive number")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = _number(start, field, low, high), _number(end, field, low, high)
            if first > last:
                raise CronError(field, f"range {base!r} runs backwards")
        elif base:
            first = _number(base, field, low, high)
            last = high if slash else first
        else:
            raise CronError(field, f"empty item in {text!r}")
        values.update(range(first, last + 1, step))
    if field == "day of week" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class CronSpec:
    """Five parsed cron fields; `text` is how they were written."""

    text: str
    minutes: frozenset[int] | None
    hours: frozenset[int] | None
    days: frozenset[int] | None
    months: frozenset[int] | None
    weekdays: frozenset[int] | None

    @classmethod
    def parse(cls, fields: list[str] | tuple[str, ...]) -> CronSpec:
        """From the five fields; a field that cannot match any date is refused too (CronError names it)."""
        if len(fields) != 5:
            raise CronError("schedule", f"needs 5 fields (minute hour day-of-month month day-of-week), got "
                                        f"{len(fields)}")
        parsed = [parse_field(text, name, low, high) for text, (name, low, high) in zip(fields, FIELDS, strict=True)]
        spec = cls(" ".join(f.strip() or "*" for f in fields), *parsed)
        if spec.next_after(0.0) is None:
            raise CronError("day of month", f"no day of months {sorted(spec.months or ())} matches "
                                            f"{sorted(spec.days or ())}")
        return spec

    @classmethod
    def from_text(cls, text: str) -> CronSpec:
        return cls.parse(text.split())

    def _day_matches(self, year: int, month: int, day: int) -> bool:
        if self.days is None and self.weekdays is None:
            return True
        weekday = (calendar.weekday(year, month, day) + 1) % 7  # cron: 0 is Sunday
        if self.days is None:
            return weekday in self.weekdays  # type: ignore[operator]
        if self.weekdays is None:
            return day in self.days
        return day in self.days or weekday in self.weekdays

    def next_after(self, when: float) -> float | None:
        """The first whole minute strictly after `when` (seconds since the epoch) that matches, or None."""
        start = int(when // 60 + 1) * 60
        tm = time.gmtime(start)
        year, month, day, hour, minute = tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min
        last_year = year + _HORIZON_YEARS
        while year <= last_year:
            if self.months is not None and month not in self.months:
                month, day, hour, minute = month + 1, 1, 0, 0
                if month > 12:
                    year, month = year + 1, 1
                continue
            if day > calendar.monthrange(year, month)[1]:
                month, day, hour, minute = month + 1, 1, 0, 0
                if month > 12:
                    year, month = year + 1, 1
                continue
            if not self._day_matches(year, month, day):
                day, hour, minute = day + 1, 0, 0
                continue
            if hour > 23 or (self.hours is not None and hour not in self.hours):
                day, hour, minute = (day + 1, 0, 0) if hour >= 23 else (day, hour + 1, 0)
                continue
            if minute > 59 or (self.minutes is not None and minute not in self.minutes):
                if minute >= 59:
                    day, hour, minute = (day + 1, 0, 0) if hour >= 23 else (day, hour + 1, 0)
                else:
                    minute += 1
                continue
            return float(calendar.timegm((year, month, day, hour, minute, 0)))
        return None
