"""Moving a bound of a time span (an evidence window, the hour of disorder a receiver allows) without
leaving the years 1-9999 Python's datetime holds."""

from __future__ import annotations

from datetime import datetime, timedelta


def shifted(when: datetime, by: timedelta) -> datetime | None:
    """``when`` moved by ``by``; None (no bound) when that leaves the years 1-9999: an administrator's
    open end (``--until 9999-12-31``), or a message dated there, has nothing stored beyond it."""
    try:
        return when + by
    except OverflowError:
        return None
