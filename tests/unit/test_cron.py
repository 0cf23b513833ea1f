"""Cron fields: each field's syntax, the next matching time, and errors that name the field."""

from __future__ import annotations

import calendar

import pytest

from geartrain.server.cron import CronError, CronSpec, parse_field


def at(text: str) -> float:
    """'YYYY-MM-DD HH:MM' in UTC as epoch seconds."""
    date, clock = text.split()
    y, m, d = (int(x) for x in date.split("-"))
    hh, mm = (int(x) for x in clock.split(":"))
    return float(calendar.timegm((y, m, d, hh, mm, 0)))


@pytest.mark.parametrize(("text", "low", "high", "expected"), [
    ("*", 0, 59, None),
    ("", 0, 59, None),
    ("5", 0, 59, {5}),
    ("1,2,10", 0, 59, {1, 2, 10}),
    ("10-13", 0, 59, {10, 11, 12, 13}),
    ("*/15", 0, 59, {0, 15, 30, 45}),
    ("10-30/10", 0, 59, {10, 20, 30}),
    ("50/5", 0, 59, {50, 55}),
    ("1-3,*/20", 0, 59, {0, 1, 2, 3, 20, 40}),
])
def test_minute_field_syntax(text, low, high, expected):
    values = parse_field(text, "minute", low, high)
    assert (None if values is None else set(values)) == expected


def test_month_and_weekday_names_and_sunday_as_seven():
    assert parse_field("jan,Mar-may", "month", 1, 12) == frozenset({1, 3, 4, 5})
    assert parse_field("sun,mon,fri-sat", "day of week", 0, 7) == frozenset({0, 1, 5, 6})
    assert parse_field("7", "day of week", 0, 7) == frozenset({0})


@pytest.mark.parametrize(("fields", "field"), [
    (["60", "*", "*", "*", "*"], "minute"),
    (["*", "24", "*", "*", "*"], "hour"),
    (["*", "*", "0", "*", "*"], "day of month"),
    (["*", "*", "32", "*", "*"], "day of month"),
    (["*", "*", "*", "13", "*"], "month"),
    (["*", "*", "*", "foo", "*"], "month"),
    (["*", "*", "*", "*", "8"], "day of week"),
    (["*/0", "*", "*", "*", "*"], "minute"),
    (["5-1", "*", "*", "*", "*"], "minute"),
    (["1,,2", "*", "*", "*", "*"], "minute"),
    (["x", "*", "*", "*", "*"], "minute"),
    (["*", "*", "31", "2", "*"], "day of month"),  # never matches
])
def test_bad_fields_name_the_field(fields, field):
    with pytest.raises(CronError) as caught:
        CronSpec.parse(fields)
    assert caught.value.field == field
    assert str(caught.value).startswith(field)


def test_wrong_number_of_fields():
    with pytest.raises(CronError):
        CronSpec.from_text("* * * *")


@pytest.mark.parametrize(("cron", "now", "expected"), [
    ("* * * * *", "2026-11-30 06:00", "2026-11-30 06:01"),
    ("30 * * * *", "2026-11-30 06:30", "2026-11-30 07:30"),
    ("0 3 * * *", "2026-11-30 06:00", "2026-12-01 03:00"),
    ("0 0 1 * *", "2026-12-15 00:00", "2027-01-01 00:00"),
    ("0 0 29 2 *", "2026-03-01 00:00", "2028-02-29 00:00"),
    ("15 10 * * 1", "2026-11-30 10:15", "2026-12-07 10:15"),  # 2026-11-30 is a Monday
    ("0 12 13 * 5", "2026-11-30 00:00", "2026-12-04 12:00"),  # day 13 OR Friday: Friday Dec 4 comes first
    ("59 23 31 12 *", "2026-12-31 23:59", "2027-12-31 23:59"),
    ("*/20 9-10 * * *", "2026-11-30 10:41", "2026-12-01 09:00"),
])
def test_next_matching_time(cron, now, expected):
    assert CronSpec.from_text(cron).next_after(at(now)) == at(expected)


def test_next_is_strictly_later_even_within_the_minute():
    spec = CronSpec.from_text("* * * * *")
    assert spec.next_after(at("2026-11-30 06:00") + 59.9) == at("2026-11-30 06:01")
