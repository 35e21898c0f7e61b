"""China Standard Time (UTC+8, no DST): the days of pools, campaigns and limits, and every
time Wuma prints for people, whatever the machine's zone (UTC on most servers)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

__all__ = ["CHINA", "china_time"]

CHINA = timezone(timedelta(hours=8), "CST")


def china_time(t: float) -> str:
    """A unix time in China time with its offset: ``2027-01-15 16:00:00+08:00``."""
    return datetime.fromtimestamp(t, CHINA).isoformat(" ", "seconds")
