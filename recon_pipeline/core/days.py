"""A reconciliation day is a UTC calendar day; its bounds are computed here and nowhere else."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta


def day_start(day: date) -> datetime:
    """UTC midnight at the start of `day`."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day."""
    start = day_start(day)
    return start, start + timedelta(days=1)
