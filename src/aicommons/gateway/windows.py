"""Budget windows, computed from the clock (no cron resets anything): UTC day, ISO week, month."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def window_start(period: str, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise ValueError(f"period {period!r}: use day, week or month")


def window_end(period: str, now: datetime) -> datetime:
    """When the window holding `now` resets."""
    start = window_start(period, now)
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start + timedelta(days=32)).replace(day=1)


def hour_of(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
