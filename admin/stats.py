"""Statistics for marketing operations, as one JSON-ready report.

    stats = Stats(data, admin)
    stats.report(days=30)     # folds in what is new, then reads the counters

What the report holds (``days`` = the last N calendar days in China time, UTC+8, today
included; "all time" = since the first scan event):

``scans``
    Recorded scans per day and over the window, by ``actor_role``, ``verdict``,
    ``province`` (first 2 digits of the scan's region code), ``city`` (first 4 digits,
    the code read by whole levels: 440000 is Guangdong, a province with no city),
    ``product`` (SKU of the unit's activation) and ``batch``. Every recorded scan counts
    once in every dimension, so each dimension sums to the day's ``total``. Recorded
    scans are the scan log's events: verdicts ``genuine``, ``inactive`` and ``voided``;
    forged codes (``invalid``) are not in the scan log (the abuse guard keeps those).
    ``-`` stands for "unknown": no region, a region code that names no city (city),
    no activation (product; an ``inactive`` scan has no product by definition).
``scan_rate``
    Per actor role and code role: ``codes`` = codes (unit + code role) whose *first
    recorded scan* was a genuine scan by that actor role (the event's ``count == 1``; a
    replacement label (标签替换) keeps a scan count of its own, and its first scan counts
    as its unit's first when no label of the unit had a scan recorded in that role before
    it, ``unit_first``: a carton relabelled in the warehouse, before any scan, is counted;
    labels replaced before this was kept never are);
    ``activated`` = activated units of the level that code role is printed on
    (:meth:`engine.aggregation.Aggregation.activated_counts`; voided units included);
    ``rate`` = codes / activated. All time. A code scanned first while inactive, or
    first by another role, does not count — at the market's scale (stores scan cases,
    consumers scan inner codes) this is the "scan rate per role" of seed 001 without
    keeping a set of every code ever scanned.
``pools``
    Per budget pool (:meth:`admin.pools.PoolRegistry.status`): total, spent, left,
    use rate (spent / total), today's spend, spend per day of the window, per region; read
    in the counters' snapshot, once it is folded to its end (``as_of``), so the pools'
    spend and the campaigns' grants agree while scans commit, unless a backlog is
    ``pending`` (a request folds a bounded amount): the pools are then ahead by it.
``campaigns``
    Per campaign, all time: ledger entries by kind (count and amount in the pool's unit,
    kinds as in :data:`admin.ledger.KINDS`), the linked rebates among the grants (to the
    store, to the distributor), and what the campaign answered to scans (``outcomes``
    and ``rebate_outcomes``, as stored in the scan events).
``diversion``
    Scans flagged ``diverted`` (窜货: a genuine scan outside the territory of the
    distributor the unit was shipped to), per distributor: in the window, per day, all
    time.
``top_stores``
    All time, ``top`` stores each: ``by_scans`` ranks genuine scans made by the store's
    account; ``by_earned`` ranks net cash earned (fen). Earnings are ledger entries to
    the store: ``rebates`` (bC rebate grants), ``rewards`` (the store's own grants and
    unlocks), ``redemptions`` (vouchers redeemed, 核销), less ``reversed``.

PERF: nothing here rescans the scan log. Counters live in LMDB (``adm_stats``) with two
cursors (the last scan event and ledger entry folded in); a report folds in only what is
new, in bounded chunks, then reads a few hundred counters. Each chunk is computed from
a read snapshot and committed in one write transaction that first checks the cursors
are unchanged and then moves cursors and counters together: two processes reporting at
once never fold an event twice (the loser of the race re-reads), and the scan path's
write lock is held only for the counter updates. Scan events and ledger entries get
their sequence numbers inside their write transaction and LMDB has one writer at a
time, so they become visible in sequence order and a cursor never skips one.

Counters (``adm_stats``; values are msgpack ``[count, amount]`` unless said)::

    cursor NUL scan | ledger                 u64: last event / entry folded in
    d NUL day NUL dimension NUL value        scans of a day (and ``diverted`` per distributor;
                                             a city "4400", folded by an earlier release
                                             for 440000, is read as no city)
    t NUL verdict NUL v                      all-time scans per verdict
    t NUL first NUL actor role NUL code role first scans (the scan rate's numerator)
    t NUL diverted NUL distributor           all-time diverted scans
    c NUL campaign NUL ledger NUL kind       ledger entries (count, amount); also
                    rebate NUL to | outcome NUL o | rebate_outcome NUL to NUL o
    s NUL store                              msgpack {scans, cash: {...}, points: {...}}
    i NUL scans | cash NUL u64(~score) store b"" (rank index: a cursor reads the top)
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from datetime import date, timedelta
from typing import Callable

from admin._util import china_day
from admin.ledger import KINDS
from engine.accounts import ACTOR_ROLES
from engine.every import repeat, yield_to_others
from engine.ids import region_prefix
from engine.scan import DEFAULT_ROLE_RULES
from engine.store import pack, u64, unpack

__all__ = ["Stats", "DIMENSIONS", "UNKNOWN"]

#: The breakdowns of scans per day.
DIMENSIONS = ("actor_role", "verdict", "province", "city", "product", "batch")
#: The value of a dimension that a scan does not have (no region, no product...).
UNKNOWN = "-"

_DAY = 86400
_CST = 8 * 3600
_MAX = (1 << 64) - 1
_SCAN_CURSOR = b"cursor\0scan"
_LEDGER_CURSOR = b"cursor\0ledger"
#: How many times a report folds again when scans committed since its fold (see report).
_READ_TRIES = 3
#: Events (or ledger entries) folded between two pauses of a chunk (~0.8 ms at the
#: 118k-147k events/s of benchmarks/bench_stats.py).
_PAUSE_EVERY = 100
_UNITS = ("cash", "points")
_EARNINGS = ("rebates", "rewards", "redemptions", "reversed")


def _key(*parts) -> bytes:
    return "\0".join(str(p) for p in parts).encode()


def _store_record() -> dict:
    return {"scans": 0, **{u: dict.fromkeys(_EARNINGS, 0) for u in _UNITS}}


def _city(place: str) -> str:
    """The city of ``place`` (a region read by whole levels, :func:`engine.ids.region_prefix`,
    or a city counted already): its first 4 digits, or :data:`UNKNOWN` when it names no
    city: shorter than a city, or a city level of zeros (the province itself: 4400 is the
    city an earlier release filed 440000 under; a made-up 440012 is no city either)."""
    return place[:4] if len(place) >= 4 and place[2:4] != "00" else UNKNOWN


def _earned(part: dict) -> int:
    return part["rebates"] + part["rewards"] + part["redemptions"] - part["reversed"]


class _ProductRuns:
    """The SKU of a unit's activation, cached per activation run.

    PERF: units of one run share their activation, and runs are never changed or
    removed once written (activation refuses overlaps; a replaced label gets a new run
    of its own), so a cached run never goes stale. One LMDB lookup per run, then a
    bisect per scan."""

    def __init__(self, aggregation, limit: int = 100_000) -> None:
        self._agg = aggregation
        self._by_batch: dict[int, tuple[list, list, list]] = {}
        self._size = 0
        self._limit = limit

    def sku(self, txn, uid: int) -> str | None:
        runs = self._by_batch.get(uid >> 32)
        if runs is not None:
            firsts, lasts, skus = runs
            i = bisect_right(firsts, uid) - 1
            if i >= 0 and uid <= lasts[i]:
                return skus[i]
        hit = self._agg.active.find(txn, uid)
        if hit is None:
            return None  # NOTE: not cached: the unit may be activated later
        rec = self._agg.activation_of(txn, uid)
        sku = rec["sku"] if rec else None
        if self._size >= self._limit:
            self._by_batch.clear()
            self._size = 0
        firsts, lasts, skus = self._by_batch.setdefault(uid >> 32, ([], [], []))
        i = bisect_right(firsts, hit[0])
        firsts.insert(i, hit[0])
        lasts.insert(i, hit[1])
        skus.insert(i, sku)
        self._size += 1
        return sku


class _Chunk:
    """Counter deltas of one chunk, applied in one write transaction."""

    def __init__(self) -> None:
        self.counters: dict[bytes, list[int]] = {}
        self.stores: dict[str, dict] = {}

    def add(self, key: bytes, count: int = 1, amount: int = 0) -> None:
        got = self.counters.get(key)
        if got is None:
            self.counters[key] = [count, amount]
        else:
            got[0] += count
            got[1] += amount

    def store(self, ident: str) -> dict:
        got = self.stores.get(ident)
        if got is None:
            got = self.stores[ident] = _store_record()
        return got

    def apply(self, txn, db) -> None:
        for key, (count, amount) in self.counters.items():
            raw = txn.get(key, db=db)
            old = (0, 0) if raw is None else unpack(raw)
            txn.put(key, pack([old[0] + count, old[1] + amount]), db=db)
        for ident, delta in self.stores.items():
            key = _key("s", ident)
            raw = txn.get(key, db=db)
            rec = _store_record() if raw is None else unpack(raw)
            before = rec["scans"], _earned(rec["cash"])
            rec["scans"] += delta["scans"]
            for u in _UNITS:
                for k in _EARNINGS:
                    rec[u][k] += delta[u][k]
            txn.put(key, pack(rec), db=db)
            # Rank indexes: key = prefix + (MAX - score) + store, so a cursor reads the top.
            for prefix, old, new in ((b"i\0scans\0", before[0], rec["scans"]),
                                     (b"i\0cash\0", before[1], _earned(rec["cash"]))):
                if old != new:
                    if old > 0:
                        txn.delete(prefix + u64(_MAX - old) + ident.encode(), db=db)
                    if new > 0:
                        txn.put(prefix + u64(_MAX - new) + ident.encode(), b"", db=db)


class Stats:
    """Statistics over one data folder. One per process is enough; any number of
    processes may report at once."""

    def __init__(self, data, admin, *, chunk: int = 2000) -> None:
        if isinstance(chunk, bool) or not isinstance(chunk, int):
            raise TypeError("chunk must be an int")
        if chunk < 1:
            raise ValueError("chunk must be at least 1")
        self._store = data.store
        self._spec = data.spec
        self._admin = admin
        self._scans = admin.scans
        self._ledger = admin.ledger
        self._agg = admin.aggregation
        self._db = data.store.db("adm_stats")
        self._chunk = chunk
        self._lock = threading.Lock()  # one fold at a time per instance (its caches)
        self._products = _ProductRuns(self._agg)
        self._days: dict[int, str] = {}
        self._activated: tuple = (None, {})

    # -- folding ------------------------------------------------------------------------
    def fold(self, limit: int | None = None, *, pause: Callable[[], None] | None = None) -> int:
        """Fold in every scan event and ledger entry committed so far (or stop after about
        ``limit`` of them: a backfill of a long log in steps); returns how many this call
        folded (those folded by a concurrent caller are not counted here). ``pause()``
        runs between chunks (a serving worker's other requests run)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise TypeError("limit must be an int or None")
        done = 0
        with self._lock:
            while limit is None or done < limit:
                n, caught_up = self._fold_chunk(pause)
                done += n
                if caught_up:
                    break
                if pause is not None:
                    pause()
        return done

    def fold_every(self, seconds: float = 10.0):
        """Start a daemon thread (a greenlet under gevent) that folds every ``seconds``,
        pausing between chunks, in one process at a time (two workers folding at once each
        threw away the other's chunks): a server keeps the counters near the logs' ends,
        so a report has little to fold. (The first report after a quiet spell folded
        every event since in the request: 690k events held the worker 4.3 s, its other
        requests too, and 4.8M got it killed by gunicorn's timeout.)"""
        return repeat(seconds, lambda: self.fold(pause=yield_to_others), "wuma-stats-fold",
                      one_of=self._store.path / "stats-fold.lock")

    def _cursor(self, txn, key: bytes) -> int:
        raw = txn.get(key, db=self._db)
        return 0 if raw is None else int.from_bytes(raw, "big")

    def _fold_chunk(self, pause: Callable[[], None] | None = None) -> tuple[int, bool]:
        """Fold one chunk, ``pause()`` after every :data:`_PAUSE_EVERY` events and entries
        (PERF: a serving worker's requests run between; the chunk is still written in one
        transaction, as each one holds LMDB's writer lock against the scans' commits)."""
        with self._store.read() as txn:
            scan_at, ledger_at = self._cursor(txn, _SCAN_CURSOR), self._cursor(txn, _LEDGER_CURSOR)
        events = self._scans.events(scan_at, self._chunk)
        entries = self._ledger.entries(ledger_at, self._chunk)
        if not events and not entries:
            return 0, True
        chunk = _Chunk()
        with self._store.read() as txn:
            for i, ev in enumerate(events, 1):
                self._fold_event(txn, ev, chunk)
                if pause is not None and i % _PAUSE_EVERY == 0:
                    pause()
            for i, e in enumerate(entries, 1):
                self._fold_entry(txn, e, chunk)
                if pause is not None and i % _PAUSE_EVERY == 0:
                    pause()
        with self._store.write() as txn:
            now_at = self._cursor(txn, _SCAN_CURSOR), self._cursor(txn, _LEDGER_CURSOR)
            if now_at != (scan_at, ledger_at):
                return 0, False  # another caller folded these meanwhile: read again
            chunk.apply(txn, self._db)
            if events:
                txn.put(_SCAN_CURSOR, u64(events[-1]["seq"]), db=self._db)
            if entries:
                txn.put(_LEDGER_CURSOR, u64(entries[-1]["seq"]), db=self._db)
        return len(events) + len(entries), len(events) < self._chunk and len(entries) < self._chunk

    def _day(self, at: float) -> str:
        # PERF: China time has no DST: a day is (at + 8h) // 24h; format each day once.
        i = int((at + _CST) // _DAY)
        got = self._days.get(i)
        if got is None:
            if len(self._days) > 10_000:
                self._days.clear()
            got = self._days[i] = china_day(at)
        return got

    def _fold_event(self, txn, ev: dict, chunk: _Chunk) -> None:
        day = self._day(ev["at"])
        verdict, actor_role, unit = ev["verdict"], ev["actor_role"], ev["unit"]
        role = self._spec.role_by_index(ev["role"])
        code_role = role.name if role is not None else str(ev["role"])
        region = ev.get("region") or ""
        product = ev.get("sku")  # NOTE: used as is if the scan event ever carries it
        if product is None and verdict != "inactive":
            product = self._products.sku(txn, unit)
        add = chunk.add
        # PERF: keys spelled out (f-strings): this loop is most of the fold's time.
        add(f"d\0{day}\0actor_role\0{actor_role}".encode())
        add(f"d\0{day}\0verdict\0{verdict}".encode())
        # NOTE: read by whole levels, as territories and pools read a region: 440000 is
        # Guangdong (province 44, no city), not a city "4400"
        place = region_prefix(region)
        add(f"d\0{day}\0province\0{place[:2] or UNKNOWN}".encode())
        add(f"d\0{day}\0city\0{_city(place)}".encode())
        add(f"d\0{day}\0product\0{product or UNKNOWN}".encode())
        add(f"d\0{day}\0batch\0{unit >> 32}".encode())
        add(f"t\0verdict\0{verdict}".encode())
        if verdict == "genuine" and ev.get("count") == 1 and ("label" not in ev or ev.get("unit_first")):
            chunk.add(_key("t", "first", actor_role, code_role))
        diverted = ev.get("diverted")
        if diverted:
            chunk.add(_key("d", day, "diverted", diverted["distributor"]))
            chunk.add(_key("t", "diverted", diverted["distributor"]))
        if actor_role == "store" and verdict == "genuine" and ev.get("actor"):
            chunk.store(ev["actor"])["scans"] += 1
        for r in ev.get("rewards") or ():
            cid = r.get("campaign", UNKNOWN)
            if "rebate" in r:
                chunk.add(_key("c", cid, "rebate_outcome", r["rebate"], r.get("outcome")))
            else:
                chunk.add(_key("c", cid, "outcome", r.get("outcome")))

    def _fold_entry(self, txn, e: dict, chunk: _Chunk) -> None:
        kind = e["kind"]
        src = e
        if e.get("ref") and (e.get("beneficiary") is None or e.get("campaign") is None):
            # NOTE: a reversal may name only the entry it cancels; take the rest from it.
            ref = self._ledger.get_in(txn, e["ref"]) or {}
            src = {**ref, **{k: v for k, v in e.items() if v is not None}}
        amount = src.get("amount") or 0
        cid = src.get("campaign", UNKNOWN)
        chunk.add(_key("c", cid, "ledger", kind), 1, amount)
        rebate = src.get("rebate")
        if kind == "grant" and rebate:
            chunk.add(_key("c", cid, "rebate", rebate), 1, amount)
        b = src.get("beneficiary")
        if b and b.get("role") == "store" and src.get("unit", "cash") in _UNITS:
            bucket = {"grant": "rebates" if rebate else "rewards", "unlock": "rewards",
                      "redeem": "redemptions", "reversal": "reversed"}.get(kind)
            if bucket:
                chunk.store(b["id"])[src.get("unit", "cash")][bucket] += amount

    # -- reading ------------------------------------------------------------------------
    def report(self, days: int = 30, now: float | None = None, *, top: int = 10,
               fold_limit: int | None = None) -> dict:
        """Fold in what is new, then the whole report (see the module docstring).

        ``fold_limit``: fold that many events and entries at most, and a chunk more,
        pausing between chunks (a request's bound; :meth:`fold_every` folds the rest): the
        report is then as of what is folded, ``as_of``, and ``pending`` says how much is
        not yet (the pools, read live, are ahead of the rest by that much)."""
        for name, value, hi in (("days", days, 366), ("top", top, 1000)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int")
            if not 1 <= value <= hi:
                raise ValueError(f"{name} must be between 1 and {hi}")
        if now is not None and (isinstance(now, bool) or not isinstance(now, (int, float))):
            raise TypeError("now must be a unix time (a number)")
        now = time.time() if now is None else float(now)
        pause = None if fold_limit is None else yield_to_others
        folded = self.fold(fold_limit, pause=pause)
        # NOTE: the day as the counters name it (china_day): datetime rounds to the
        # microsecond, and a time under half a microsecond before midnight took the next day
        today = date.fromisoformat(china_day(now))
        window = [(today - timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]
        # NOTE: the pools are read in the counters' snapshot, and that snapshot is taken
        # once everything in it is folded (a scan committed between the fold and the read
        # would be in the pools' spend and not in the campaigns' grants); under a steady
        # stream of scans, after a few tries, or with the fold limit spent, the report says
        # how far it folded (as_of) and what is pending: the pools are then ahead by that
        for tries in range(_READ_TRIES, 0, -1):
            with self._store.read() as txn:
                as_of = {"scan_event": self._cursor(txn, _SCAN_CURSOR),
                         "ledger_entry": self._cursor(txn, _LEDGER_CURSOR)}
                pending = {"scan_event": self._store.current_id(txn, "scan_event") - as_of["scan_event"],
                           "ledger_entry": self._ledger.last_seq_in(txn) - as_of["ledger_entry"]}
                spent = fold_limit is not None and folded >= fold_limit
                if tries > 1 and not spent and any(pending.values()):
                    behind = True
                else:
                    behind = False
                    counters = self._read(txn, window)
                    top_stores = {"by_scans": self._top(txn, b"i\0scans\0", top),
                                  "by_earned": self._top(txn, b"i\0cash\0", top)}
                    pools = self._pools(self._admin.pools.statuses_in(txn, now), window)
            if not behind:
                break
            folded += self.fold(None if fold_limit is None else fold_limit - folded, pause=pause)
        by_day, diverted_days, totals = counters
        return {
            "generated_at": now,
            "window": {"days": days, "first": window[0], "last": window[-1], "timezone": "UTC+8"},
            "as_of": as_of,
            "pending": pending,
            "folded": folded,
            "scans": self._scans_section(window, by_day, totals),
            "scan_rate": self._scan_rate(totals),
            "pools": pools,
            "campaigns": self._campaigns(totals),
            "diversion": self._diversion(window, diverted_days, totals),
            "top_stores": top_stores,
        }

    def _read(self, txn, window: list[str]):
        """Counters of the window's days and the all-time ("t") and campaign ("c") ones."""
        by_day: dict[str, dict[str, dict[str, int]]] = {
            d: {dim: {} for dim in DIMENSIONS} for d in window}
        diverted: dict[str, dict[str, int]] = {d: {} for d in window}
        cur = txn.cursor(db=self._db)
        last = window[-1]
        if cur.set_range(_key("d", window[0])):
            for k, v in cur:
                if not k.startswith(b"d\0"):
                    break
                day, dim, value = k[2:].decode().split("\0", 2)
                if day > last:
                    break
                if dim == "city":
                    # NOTE: a release before this one filed a province-level code (440000)
                    # under a city "4400": such counters, left as they were, are no city
                    # (and add to it: two stored keys may name one city now)
                    value = _city(value)
                counts = diverted[day] if dim == "diverted" else by_day[day][dim]
                counts[value] = counts.get(value, 0) + unpack(v)[0]
        totals: dict[tuple, list[int]] = {}
        for prefix in (b"c\0", b"t\0"):
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    totals[tuple(k.decode().split("\0"))] = unpack(v)
        return by_day, diverted, totals

    def _scans_section(self, window: list[str], by_day: dict, totals: dict) -> dict:
        days_out = {}
        window_totals: dict[str, dict[str, int]] = {dim: {} for dim in DIMENSIONS}
        for day in window:
            d = by_day[day]
            days_out[day] = {"total": sum(d["verdict"].values()), **d}
            for dim in DIMENSIONS:
                acc = window_totals[dim]
                for value, n in d[dim].items():
                    acc[value] = acc.get(value, 0) + n
        all_time = {k[2]: v[0] for k, v in totals.items() if k[:2] == ("t", "verdict")}
        return {"total": sum(window_totals["verdict"].values()), "by_day": days_out,
                "totals": window_totals,
                "all_time": {"total": sum(all_time.values()), "verdict": all_time}}

    def activated(self) -> dict[str, int]:
        """Activated units per packaging level (cached until an activation changes)."""
        # PERF: activation runs change only in Aggregation.activate (which allocates an
        # activation id) and Aggregation.replace (which allocates an event id): while both
        # counters stand still, the last count holds. Read them before counting.
        with self._store.read() as txn:
            key = (self._store.current_id(txn, "agg_activation"),
                   self._store.current_id(txn, "agg_event"))
        if key != self._activated[0]:
            self._activated = (key, self._agg.activated_counts())
        return dict(self._activated[1])

    def _scan_rate(self, totals: dict) -> dict:
        activated = self.activated()
        firsts = {(k[2], k[3]): v[0] for k, v in totals.items() if k[:2] == ("t", "first")}
        pairs = {(a, r) for a in ACTOR_ROLES for r in DEFAULT_ROLE_RULES.get(a, ())
                 if r in self._spec.roles}
        out: dict[str, dict] = {}
        for actor_role, code_role in sorted(pairs | set(firsts)):
            role = self._spec.roles.get(code_role)
            level = role.level if role is not None else None
            units = activated.get(level, 0) if level else 0
            codes = firsts.get((actor_role, code_role), 0)
            out.setdefault(actor_role, {})[code_role] = {
                "codes": codes, "level": level, "activated": units,
                "rate": round(codes / units, 6) if units else None}
        return out

    def _pools(self, statuses: list[dict], window: list[str]) -> dict:
        out = {}
        for s in statuses:
            by_day = {d: s["by_day"].get(d, 0) for d in window}
            out[s["id"]] = {k: s[k] for k in ("name", "unit", "total", "daily", "spent", "left",
                                              "use_rate", "spent_today", "by_region")}
            out[s["id"]].update(by_day=by_day, spent_in_window=sum(by_day.values()))
        return out

    def _campaigns(self, totals: dict) -> dict:
        units = {p.id: p.unit for p in self._admin.pools.list()}
        out: dict[str, dict] = {}

        def entry(cid: str) -> dict:
            got = out.get(cid)
            if got is None:
                got = out[cid] = {
                    "name": None, "status": None, "pool": None, "unit": None, "trigger": None,
                    "ledger": {k: {"count": 0, "amount": 0} for k in KINDS},
                    "rebates": {to: {"count": 0, "amount": 0} for to in ("store", "distributor")},
                    "outcomes": {}, "rebate_outcomes": {}}
            return got

        for c in self._admin.campaigns.list():
            entry(str(c.id)).update(name=c.name, status=c.status, pool=c.pool,
                                    unit=units.get(c.pool), trigger=dict(c.rule["trigger"]))
        for k, (count, amount) in totals.items():
            if k[0] != "c":
                continue
            e, group = entry(k[1]), k[2]
            if group == "ledger":
                e["ledger"][k[3]] = {"count": count, "amount": amount}
            elif group == "rebate":
                e["rebates"][k[3]] = {"count": count, "amount": amount}
            elif group == "outcome":
                e["outcomes"][k[3]] = count
            elif group == "rebate_outcome":
                e["rebate_outcomes"].setdefault(k[3], {})[k[4]] = count
        return out

    def _diversion(self, window: list[str], days: dict, totals: dict) -> dict:
        out: dict[str, dict] = {}
        for k, v in totals.items():
            if k[:2] == ("t", "diverted"):
                out[k[2]] = {"all_time": v[0], "window": 0, "by_day": {}}
        for day in window:
            for dist, n in days[day].items():
                d = out.setdefault(dist, {"all_time": 0, "window": 0, "by_day": {}})
                d["window"] += n
                d["by_day"][day] = n
        return {"window": sum(d["window"] for d in out.values()),
                "all_time": sum(d["all_time"] for d in out.values()), "by_distributor": out}

    def _top(self, txn, prefix: bytes, n: int) -> list[dict]:
        out: list[dict] = []
        cur = txn.cursor(db=self._db)
        if not cur.set_range(prefix):
            return out
        for k in cur.iternext(keys=True, values=False):
            if not k.startswith(prefix) or len(out) >= n:
                break
            ident = k[len(prefix) + 8:].decode()
            rec = unpack(txn.get(_key("s", ident), db=self._db))
            out.append({"store": ident, "scans": rec["scans"],
                        **{u: {**rec[u], "earned": _earned(rec[u])} for u in _UNITS}})
        return out
