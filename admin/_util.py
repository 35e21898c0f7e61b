"""Small helpers shared by the admin modules: days in China time, time parsing, ids, region
prefixes, free text."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

from engine.abuse import MAX_SUBJECT  # NOTE: the longest ban subject, kind:id
from engine.chinatime import CHINA  # NOTE: days, daily caps and per-day limits are China days
from engine.ids import check_name, check_text, is_id, is_region_code, region_prefix
from engine.store import MAX_SEQ  # NOTE: sequence numbers (ledger, audit, scan log) run 1..MAX_SEQ

__all__ = ["CHINA", "MAX_AMOUNT", "MAX_SEQ", "MAX_SUBJECT", "IDEMPOTENCY_KEY_PATTERN", "china_day", "china_day_number", "parse_time",
           "check_id", "check_amount", "check_regions", "regions_meet", "MAX_REGIONS", "region_prefixes", "in_regions",
           "check_name", "check_text", "check_idempotency_key", "is_seq", "check_after"]

#: The largest amount or count taken (10 billion yuan in fen): exact in JSON and in 8-byte counters.
MAX_AMOUNT = 10**12



_DAYS: dict[int, str] = {}


def china_day_number(ts: float) -> int:
    """Days since 1970-01-01 in China Standard Time (UTC+8, no DST) of a unix time."""
    return int((ts + 8 * 3600) // 86400)


def china_day(ts: float) -> str:
    """The calendar day (YYYY-MM-DD) of a unix time in China Standard Time."""
    # PERF: called several times per rewarded scan; strftime costs ~2 µs, a dict hit ~50 ns.
    n = china_day_number(ts)
    day = _DAYS.get(n)
    if day is None:
        if len(_DAYS) > 4096:
            _DAYS.clear()
        # NOTE: named from the day number, not the time: datetime rounds to the microsecond,
        # and a time under half a microsecond before midnight took the next day's name
        # (kept here for the process: the next day's spend and scans were filed under it)
        day = _DAYS[n] = (_EPOCH_DAY + timedelta(days=n)).isoformat()
    return day


_EPOCH_DAY = date(1970, 1, 1)


#: The latest time taken, 9999-12-31T23:59:59Z (a year Python's datetime can still write).
_MAX_TIME = 253402300799


def parse_time(value, what: str, *, day_end: bool = False) -> float:
    """A unix time from a number or an ISO 8601 string (no zone means China time).

    A date alone (``2027-01-31``) is the start of that day in China time, or with
    ``day_end`` its end (the next day's start): a window's end given as a date includes
    that day."""
    message = f"{what}: a unix time or an ISO 8601 date/time such as 2026-12-01T00:00+08:00"
    if isinstance(value, bool):
        raise ValueError(message)
    if isinstance(value, (int, float)):
        t = value  # NOTE: compared before float(): an int too large for a float never reaches it
    elif isinstance(value, str):
        try:
            if "T" not in value and " " not in value:  # a date alone: the day's start (or end)
                day = date.fromisoformat(value)
                dt = datetime(day.year, day.month, day.day, tzinfo=CHINA)
                dt += timedelta(days=1) if day_end else timedelta()
            else:
                dt = datetime.fromisoformat(value)
                dt = dt if dt.tzinfo else dt.replace(tzinfo=CHINA)
            t = dt.timestamp()
        except ValueError:
            raise ValueError(message) from None
        except OverflowError:  # 9999-12-31 as an end: its next day is past datetime's range
            t = datetime(9999, 12, 31, tzinfo=CHINA).timestamp() + 86400
    else:
        raise ValueError(message)
    # NOTE: one range for every form; NaN and the infinities fail it too
    if not 0 <= t <= _MAX_TIME:
        raise ValueError(f"{what}: a unix time from 0 to {_MAX_TIME} (the year 9999)")
    return float(t)


def is_seq(value) -> bool:
    return value.__class__ is int and 0 < value <= MAX_SEQ


def check_after(after) -> int:
    """A listing's ``after`` (entries with a higher seq): 0 to :data:`MAX_SEQ`."""
    if after.__class__ is not int or not 0 <= after <= MAX_SEQ:
        raise ValueError(f"after: a sequence number from 0 to {MAX_SEQ}")
    return after


def check_id(value, what: str) -> str:
    if not is_id(value):
        raise ValueError(f"{what}: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit")
    return value


def check_amount(value, what: str, *, positive: bool = False) -> int:
    """Amounts are integers in the pool's unit (fen for cash, points for points)."""
    if (isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0)
            or value > MAX_AMOUNT):
        raise ValueError(f"{what} must be a whole number {'above' if positive else 'of at least'} 0"
                         f" and at most {MAX_AMOUNT} (in fen for cash: 100 = 1 yuan)")
    return value


#: The most regions a campaign or a pool names: China has about 2,850 county-level
#: divisions (a campaign naming every county of the country is still one list).
MAX_REGIONS = 3_000


def check_regions(value, what: str) -> list[str]:
    """A list of administrative division code prefixes such as ["44", "4401"], at most
    :data:`MAX_REGIONS` (APPSEC: a rule is checked against others inside a write
    transaction, which every scan waits for)."""
    if not isinstance(value, list) or not all(is_region_code(r) for r in value):
        raise ValueError(f"{what}: a list of administrative division code prefixes such as [\"44\", \"4401\"]")
    if len(value) > MAX_REGIONS:
        raise ValueError(f"{what}: at most {MAX_REGIONS:,} regions (a province, 44, or a city, 4401, "
                         "names all its divisions)")
    return value


def regions_meet(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether two lists of region prefixes (:func:`region_prefixes`) share a division: one
    names a division the other names, or one inside it. PERF: each prefix's own prefixes
    looked up in a set, ~11 lookups a region (comparing every pair took 4.7 s for two
    lists of 6,000)."""
    sa, sb = set(a), set(b)
    return any(x[:k] in sb for x in a for k in range(2, len(x) + 1)) or \
        any(y[:k] in sa for y in b for k in range(2, len(y) + 1))


def region_prefixes(codes) -> tuple[str, ...]:
    """Region codes as stored (as the user typed them) read as the prefixes their divisions
    share, the way distributor territories are read (:func:`engine.ids.region_prefix`:
    440100, Guangzhou, is 4401; 440000 is 44), each once, in the order given. Match with
    :func:`in_regions`.

    NOTE: campaigns, pool region caps and vouchers keep the codes as typed and read them
    through this when they match, so a rule written before it counts as its writer meant."""
    return tuple(dict.fromkeys(region_prefix(c) for c in codes))


def in_regions(region: str | None, prefixes: tuple[str, ...]) -> bool:
    """Is a scan's (or a store's) ``region`` inside one of ``prefixes`` (from
    :func:`region_prefixes`)? A region coarser than all of them (the province, 44, for a
    Guangzhou campaign) is not: unlike a territory check, where a match only spares money
    from being withheld, a match here pays. PERF: one ``str.startswith`` on a tuple."""
    return region is not None and region.startswith(prefixes)


#: An ``Idempotency-Key`` request header: 1-255 visible ASCII characters (a UUID fits; no
#: spaces, no controls), as an OpenAPI pattern.
IDEMPOTENCY_KEY_PATTERN = "^[!-~]{1,255}$"
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN[1:-1])


def check_idempotency_key(value) -> str:
    if value.__class__ is not str or _IDEMPOTENCY_KEY.fullmatch(value) is None:
        raise ValueError("Idempotency-Key: 1-255 visible ASCII characters (no spaces), such as a UUID")
    return value
