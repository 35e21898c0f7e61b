"""Abuse control for the scan API: rate limits and enumeration bans, shared by all workers.

A *subject* is one client identity: ``ip:203.0.113.9``, ``device:abc``, ``account:s-17``.
Every gunicorn worker opens the same LMDB files, so a ban written by one worker holds in
all of them at once.

* Rate limits: a fixed one-minute window per subject. Counters live in a separate,
  non-synced LMDB environment (``<data>/db-counters``): they are cheap to write and
  losing them in a crash only forgets some counts.
* Enumeration bans: more than ``invalid_threshold`` invalid codes from one subject within
  ``invalid_window_s`` bans it for ``ban_s``. The ban, with its evidence (the codes tried
  and when), goes to the durable store and is listed and lifted by ``wuma bans``. A subject
  banned again keeps its earlier bans (the latest :data:`EARLIER_BANS_MAX`) as history,
  listed with ``wuma bans list --all``: a repeat offender's record is evidence. Every
  invalid code is counted in a write committed before the scan is answered, so the ban is
  exact across workers (the threshold+1-th invalid code from any mix of workers bans), and
  a count over the threshold stays until its ban is written, so a ban held up by a long
  write lets each connection's next invalid code wait for it rather than count again.
"""

from __future__ import annotations

import errno
import logging
import math
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import lmdb
import msgpack

from engine.addresses import UNIX_PEER, client_address
from engine.errors import NotFound
from engine.every import Every, repeat, yield_to_others
from engine.ids import check_limit
from engine.scanlog import DISTINCT_MAX
from engine.store import Store, pack, u64, unpack

log = logging.getLogger("wuma.abuse")

__all__ = ["AbuseLimits", "Ban", "AbuseGuard", "subject", "client_address", "UNIX_PEER", "BANS_PAGE", "MAX_SUBJECT",
           "SUBJECT_ID_CHARS", "SUBJECT_ID_BYTES", "sweep_every"]

#: The counters' map: 4 GiB, a sparse file (writemap), 40-75M clients' counts.
COUNTERS_MAP_SIZE = 1 << 32
#: What a full counters store raises: its file system (Store.write's ENOSPC: an OSError,
#: others are raised again) or its map.
_MAYBE_FULL = (OSError, lmdb.MapFullError)
_EVIDENCE_CODE_CHARS = 64
#: How often a process merges its rate counts into the shared store.
_FLUSH_S = 0.1
#: Head of a subject's invalid-code record: window start (float seconds), count.
_INVALID_HEAD = struct.Struct(">dI")
#: Databases of the layout before one record per subject; emptied by :meth:`AbuseGuard.sweep`.
_LEGACY_INVALID_DBS = ("invalid", "invalid_evidence")


#: Earlier bans kept per subject when it is banned again; beyond this the oldest goes (one
#: client banned every hour cannot grow the store without bound).
EARLIER_BANS_MAX = 50
#: Key of an earlier ban: the subject's length, the subject, when the ban was made (µs).
_EARLIER_HEAD = struct.Struct(">H")


def _earlier_prefix(key: bytes) -> bytes:
    """The prefix of a subject's earlier bans: its length first, so that no other
    subject's keys start with it."""
    return _EARLIER_HEAD.pack(len(key)) + key


#: Subjects a page of :meth:`AbuseGuard.list_bans` holds unless told otherwise.
BANS_PAGE = 1000

#: A subject's id is cut to this many bytes in UTF-8: subjects are database keys (LMDB
#: takes at most 511 bytes).
SUBJECT_ID_BYTES = 384
#: ... and to this many characters.
SUBJECT_ID_CHARS = 128
#: The longest subject: the longest kind ("account"), ":", the id.
MAX_SUBJECT = len("account:") + SUBJECT_ID_CHARS


def subject(kind: str, ident: str) -> str:
    """``kind:ident``, e.g. ``ip:127.0.0.1``; the id is cut to :data:`SUBJECT_ID_CHARS`
    characters and to :data:`SUBJECT_ID_BYTES` bytes."""
    ident = str(ident)[:SUBJECT_ID_CHARS]
    if not ident.isascii():
        ident = ident.encode()[:SUBJECT_ID_BYTES].decode(errors="ignore")
    return f"{kind}:{ident}"


_DAY = 86400
#: Each limit's range, inclusive, and how the message reads its maximum. NOTE: a value
#: past these was accepted and then broke the guard: a ban's end is stored as an unsigned
#: 64-bit number (a huge ``ban_s`` made every ban a 500 and reset the count instead of
#: banning), the invalid count as 32 bits, a window is subtracted from a float time
#: (OverflowError past ~1.8e308), and the copied flag counts at most DISTINCT_MAX places
#: and devices per code (a threshold above it never flags). The thresholds go up to a
#: billion: "no limit in practice" (the benchmarks set 10**9).
_RANGES = {
    "rate_per_minute": (1, 10**9, "a billion"),
    "invalid_threshold": (1, 10**9, "a billion"),
    "invalid_window_s": (1, 30 * _DAY, "30 days"),
    "ban_s": (1, 3650 * _DAY, "10 years"),
    "evidence_max": (1, 1000, None),
    "copy_regions": (1, DISTINCT_MAX, None),
    "copy_devices": (1, DISTINCT_MAX, None),
    "copy_window_s": (1, 365 * _DAY, "365 days"),
}


@dataclass(frozen=True)
class AbuseLimits:
    """Configuration with sensible defaults (see the scan service docs). Each limit is an
    integer in its range (:data:`_RANGES`): ValueError naming the limit and its range
    otherwise (a bool is no number here, though Python counts it as an int)."""

    rate_per_minute: int = 600
    invalid_threshold: int = 20
    invalid_window_s: int = 600
    ban_s: int = 3600
    evidence_max: int = 50
    #: A genuine code seen in this many regions, or on this many devices, within
    #: ``copy_window_s`` is flagged ``copied`` (one code copied onto many packs).
    copy_regions: int = 3
    copy_devices: int = 5
    copy_window_s: int = 7 * 86400

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            lo, hi, spelled = _RANGES[name]
            if value.__class__ is not int or not lo <= value <= hi:
                shown = repr(value)
                if len(shown) > 40:
                    shown = shown[:37] + "..."
                raise ValueError(f"abuse limit {name} must be a positive integer of at most "
                                 f"{hi}{f' ({spelled})' if spelled else ''}; got {shown}")


@dataclass(frozen=True)
class Ban:
    subject: str
    reason: str
    created_at: float
    expires_at: float
    evidence: list = field(default_factory=list)  # [[time, code], ...]
    lifted_at: float | None = None

    def active(self, now: float) -> bool:
        return self.lifted_at is None and now < self.expires_at

    def to_dict(self) -> dict:
        return asdict(self)


class AbuseGuard:
    """Rate limits and bans over the data folder's stores."""

    def __init__(self, store: Store, counters_path: Path, limits: AbuseLimits | None = None) -> None:
        self.limits = limits or AbuseLimits()
        self._store = store
        # subject -> its latest ban; the hot path (banned()) reads only this one record
        self._bans = store.db("bans")
        # _EARLIER_HEAD (subject's length) + subject + u64(made, µs) -> a ban the subject had
        # before its latest, as it was when the new one was made (see _keep_earlier)
        self._earlier = store.db("ban_history")
        # subject -> when its ban ends (u64 seconds), for bans not lifted: counting the
        # active bans reads these 8-byte values, not every ban record with its evidence
        self._ban_ends = store.db("ban_ends")
        self._ends_built = False  # see _build_ban_ends
        # NOTE: sync=False/metasync=False: counters may be lost in a crash; bans may not.
        # PERF: writemap=True: a commit updates the mapped pages in place instead of
        # pwrite-ing each dirty page; an invalid scan's counter write went from ~9.4 to
        # ~4.2 µs (median, 2 subjects, interleaved in one run). The counters are opened
        # only here, so every process opens them alike, as LMDB asks. (During a rolling
        # upgrade from a release without it, old workers open them without: that costs
        # only sync guarantees these counters never had.)
        self.counters = Store(counters_path, map_size=COUNTERS_MAP_SIZE, sync=False, writemap=True)
        self._full_logged = Every(60)
        self._rate = self.counters.db("rate")
        # One record per subject: _INVALID_HEAD, then up to evidence_max msgpack'd
        # [time, code] pieces of evidence, oldest first.
        self._invalid = self.counters.db("invalid_records")
        self._legacy = [self.counters.db(name) for name in _LEGACY_INVALID_DBS]
        self._rate_lock = threading.Lock()
        self._pending: dict[str, int] = {}
        # subject -> its shared count this minute, as merged by this process's last flush
        self._shared: dict[str, int] = {}
        self._pending_minute = -1
        self._next_flush = 0.0

    def close(self) -> None:
        with self._rate_lock:
            self._flush_rate(time.time())
        self.counters.close()

    # -- bans -------------------------------------------------------------------------
    def banned(self, subjects: list[str], now: float | None = None) -> Ban | None:
        """The first active ban among ``subjects``, or None."""
        now = time.time() if now is None else now
        with self._store.read() as txn:
            for s in subjects:
                # PERF: arguments by position, get(key, default, db): py-lmdb parses
                # keywords slowly (~0.1 µs a call); every scan checks its subjects here
                raw = txn.get(s.encode(), None, self._bans)
                if raw is not None:
                    ban = Ban(**unpack(raw))
                    if ban.active(now):
                        return ban
        return None

    def list_bans(self, now: float | None = None, *, include_inactive: bool = False,
                  limit: int = BANS_PAGE, after: str | None = None) -> list[Ban]:
        """A page of bans: those in force, by subject; with ``include_inactive``, every ban
        recorded (expired, lifted and earlier bans of subjects banned again), by subject and
        then oldest first. The page holds ``limit`` subjects at most (with
        ``include_inactive``, each subject's bans together: up to :data:`EARLIER_BANS_MAX`
        + 1 bans a subject), of subjects after ``after`` (the next page: the last subject
        shown).

        PERF: a page reads its own bans only. Active bans are found from their ends (8 bytes
        a ban) and only those are read whole; with ``include_inactive``, subjects are read
        from ``after`` on by their latest bans, and each one's earlier bans by its key
        prefix. Anyone can get banned from thousands of addresses (an IPv6 /48 holds 65,536
        /64s), every ban holds its evidence, and ended bans stay as evidence: every page of
        ``--all`` read and sorted every ban ever recorded."""
        check_limit(limit)
        now = time.time() if now is None else now
        start = b"" if after is None else after.encode() + b"\0"  # NOTE: the next key after it
        out: list[Ban] = []
        if not include_inactive:
            if not self._ends_built:
                self._build_ban_ends()
            with self._store.read() as txn:
                cur = txn.cursor(db=self._ban_ends)
                if not cur.set_range(start):
                    return out
                for key, end in cur:
                    if int.from_bytes(end, "big") <= now:
                        continue
                    raw = txn.get(key, None, self._bans)
                    ban = None if raw is None else Ban(**unpack(raw))
                    if ban is not None and ban.active(now):
                        out.append(ban)
                        if len(out) >= limit:
                            break
            return out
        with self._store.read() as txn:
            cur = txn.cursor(db=self._bans)
            found, subjects = cur.set_range(start), 0
            while found and subjects < limit:
                key, latest = cur.item()
                bans = [Ban(**unpack(latest)), *self._earlier_bans(txn, key)]
                bans.sort(key=lambda b: b.created_at)  # NOTE: stable: the latest first on a tie
                out += bans
                subjects += 1
                found = cur.next()
        return out

    def _earlier_bans(self, txn, key: bytes) -> list[Ban]:
        """The earlier bans kept for the subject of ``key`` (see :meth:`_keep_earlier`)."""
        return [Ban(**unpack(raw)) for _, raw in self._earlier_of(txn, _earlier_prefix(key))]

    def _earlier_of(self, txn, prefix: bytes):
        """``(key, ban record)`` of the earlier bans under ``prefix`` (a subject's: see
        :func:`_earlier_prefix`), oldest first (the time in the key is big-endian)."""
        cur = txn.cursor(db=self._earlier)
        found = cur.set_range(prefix)
        while found and cur.key().startswith(prefix):
            yield cur.item()
            found = cur.next()

    def count_active(self, now: float | None = None) -> int:
        """How many clients are banned now (for /metrics). PERF: from the ban ends, not
        the ban records: 100k expired bans with their evidence took ~3 s a scrape."""
        now = time.time() if now is None else now
        if not self._ends_built:
            self._build_ban_ends()
        count = 0
        with self._store.read() as txn:
            for key, v in txn.cursor(db=self._ban_ends):
                end = int.from_bytes(v, "big")  # NOTE: the end rounded up to the second
                if end - 1 >= now:
                    count += 1
                elif end > now:  # its last second: the record says exactly
                    raw = txn.get(key, None, self._bans)
                    count += raw is not None and Ban(**unpack(raw)).active(now)
        return count

    def _build_ban_ends(self) -> None:
        """Take in the ends of bans recorded before they were kept, once per store: the
        records are read in a read transaction, the write (8 bytes a ban) is short."""
        meta = self._store.db("meta")
        with self._store.read() as txn:
            built = txn.get(b"ban_ends_built", db=meta) is not None
            ends = [] if built else [
                (key, u64(math.ceil(d["expires_at"])))
                for key, d in ((k, unpack(v)) for k, v in txn.cursor(db=self._bans))
                if d.get("lifted_at") is None]
        if not built:
            with self._store.write() as txn:
                if txn.get(b"ban_ends_built", db=meta) is None:
                    # NOTE: a ban lifted between the two transactions counts until it ends
                    # (once, at the upgrade); one recorded meanwhile has its end already
                    for key, end in ends:
                        if txn.get(key, db=self._ban_ends) is None:
                            txn.put(key, end, db=self._ban_ends)
                    txn.put(b"ban_ends_built", b"1", db=meta)
        self._ends_built = True

    def lift(self, subject_: str, now: float | None = None) -> Ban:
        """Lift a ban now (kept, marked lifted, as a record)."""
        with self._store.write() as txn:
            return self.lift_in(txn, subject_, now)

    def lift_in(self, txn, subject_: str, now: float | None = None) -> Ban:
        """:meth:`lift` inside the caller's write transaction (so an audit entry can go
        with it). The subject's invalid-code count restarts too. A ban lifted already, or
        ended by itself, is NotFound: lifting it would write a lift into the record (the
        evidence) that did nothing."""
        now = time.time() if now is None else now
        raw = txn.get(subject_.encode(), db=self._bans)
        if raw is None:
            raise NotFound(f"no ban for {subject_}")
        d = unpack(raw)
        if not Ban(**d).active(now):
            how = "was lifted already" if d.get("lifted_at") is not None else "ended by itself"
            raise NotFound(f"no ban in force for {subject_}: its latest ban {how}")
        d["lifted_at"] = now
        txn.put(subject_.encode(), pack(d), db=self._bans)
        txn.delete(subject_.encode(), db=self._ban_ends)
        # NOTE: the counters live in their own (unsynced) environment; restarting the count
        # early is harmless if the lift is then rolled back.
        with self.counters.write() as ctxn:
            ctxn.delete(subject_.encode(), db=self._invalid)
        return Ban(**d)

    # -- rate limits ------------------------------------------------------------------
    def over_rate(self, subjects: list[str], now: float | None = None) -> str | None:
        """Count one request for each subject; return the first one over its limit.

        PERF: a write transaction per request serialised every worker thread on LMDB's
        writer lock (a quarter of a worker's time under load). Counts are kept in memory
        and merged into the shared store every ``_FLUSH_S`` seconds in one transaction;
        a subject's count is the shared count plus this process's unflushed ones.

        PERF: the shared count is the one this process merged at its last flush of the
        subject (kept in memory: no read transaction per request, ~1 µs), so other
        workers' requests count here after at most two flush intervals (0.2 s): rate
        limits need not be exact. A subject this process has not flushed yet counts only
        its local requests until its first flush, ``_FLUSH_S`` later.
        """
        now = time.time() if now is None else now
        minute = int(now // 60)
        if (now >= self._next_flush or minute != self._pending_minute) and \
                self._rate_lock.acquire(blocking=False):
            # PERF: one flusher at a time and nobody waits for it: a lock on the hot path
            # made request threads convoy behind a holder that lost the GIL.
            try:
                self._flush_rate(now)
                if minute != self._pending_minute:
                    self._shared = {}
                self._pending_minute = minute
            finally:
                self._rate_lock.release()
        pending, shared, limit = self._pending, self._shared, self.limits.rate_per_minute
        over = None
        for s in subjects:
            local = pending.get(s, 0) + 1  # NOTE: racing threads may lose a count; fine here
            pending[s] = local
            if shared.get(s, 0) + local > limit and over is None:
                over = s
        return over

    def _flush_rate(self, now: float) -> None:
        """Merge this process's pending counts into the shared store (lock held)."""
        self._next_flush = now + _FLUSH_S
        if not self._pending:
            return
        minute = self._pending_minute
        pending, self._pending = self._pending, {}
        # NOTE: threads that took the old dict a moment ago may still add to it: copy it
        # in one step (no Python code runs inside list(), so no thread switch) and let
        # such late counts go; rate limits need not be exact.
        items = list(pending.items())
        shared = self._shared
        try:
            with self.counters.write() as txn:
                for s, k in items:
                    key = s.encode()
                    raw = txn.get(key, db=self._rate)
                    m, n = unpack(raw) if raw else (minute, 0)
                    shared[s] = merged = (n if m == minute else 0) + k
                    txn.put(key, pack((minute, merged)), db=self._rate)
        except _MAYBE_FULL as e:  # the counts of this interval are let go (see record_invalid)
            if not self._counters_full(e):
                raise

    # -- enumeration ------------------------------------------------------------------
    def record_invalid(self, subjects: list[str], code: str, now: float | None = None) -> Ban | None:
        """Count an invalid code for each subject; ban those over the threshold.

        The count is committed before this returns, so a ban is exact across workers.

        PERF: one record per subject, ``_INVALID_HEAD`` (window start, count) followed by
        the evidence as msgpack'd ``[time, code]`` pieces appended as bytes (never
        re-packed), read and written once: one get and one put in one database per
        subject. Separate count and evidence keys in two databases dirtied twice the
        pages; with the writemap environment an invalid scan's write went from ~11.7 to
        ~3.3 µs (median, 2 subjects, evidence written), and this method from ~9.5 to
        ~4.2 µs in the case of ``benchmarks/bench_pipeline.py`` (invalid code).

        A file system too full for the counters (Store.write's ENOSPC), or their map full,
        stops the counting, logged, rather than the scan: invalid codes are still answered
        invalid. (:meth:`sweep`, run by serving workers every minute, keeps the map from
        filling.)
        """
        try:
            return self._record_invalid(subjects, code, now)
        except _MAYBE_FULL as e:
            if not self._counters_full(e):
                raise
            return None

    def _counters_full(self, e: Exception) -> bool:
        """Is ``e`` the counters' file system or map being full? Logged once a minute at
        most. (A full map answered invalid codes 503, an oracle that no ban stopped.)"""
        if not isinstance(e, lmdb.MapFullError) and getattr(e, "errno", None) != errno.ENOSPC:
            return False
        if self._full_logged.due():
            log.error("rate limits and enumeration counts are not kept: %s; free some space", e)
        return True

    def _record_invalid(self, subjects: list[str], code: str, now: float | None) -> Ban | None:
        now = time.time() if now is None else now
        lim = self.limits
        head = _INVALID_HEAD
        head_size = head.size
        to_ban: list[tuple[str, list]] = []
        evidence = None  # PERF: packed once, and only for a subject still collecting it
        with self.counters.write() as txn:
            for s in subjects:
                key = s.encode()
                raw = txn.get(key, None, self._invalid)  # (positional: see banned())
                if raw is not None:
                    start, n = head.unpack_from(raw)
                if raw is None or now - start > lim.invalid_window_s:
                    start, n, raw = now, 0, None
                n += 1
                if n <= lim.evidence_max:
                    if evidence is None:
                        evidence = pack([now, _evidence_text(code)])
                    kept = (b"" if raw is None else raw[head_size:]) + evidence
                elif n <= lim.invalid_threshold:
                    # PERF: the evidence is full: one copy of the record, its head rewritten
                    value = bytearray(raw)
                    head.pack_into(value, 0, start, n)
                    txn.put(key, value, True, True, False, self._invalid)
                    continue
                else:
                    kept = raw[head_size:]
                if n > lim.invalid_threshold:
                    to_ban.append((s, _evidence_list(kept)))
                # NOTE: a subject over the threshold keeps its count until its ban is written
                # (below, then the count is dropped). Dropped here, before the ban's write
                # (which waits for a long write such as an ingest), each of the subject's
                # connections started again from 0: measured, 16 connections during an
                # ingest got 16 x 21 answers before the ban instead of 21. Now every one of
                # its invalid codes meanwhile waits for that ban too.
                txn.put(key, head.pack(start, n) + kept, True, True, False, self._invalid)
        if not to_ban:
            return None
        first = None
        with self._store.write() as txn:
            for s, ev in to_ban:
                key = s.encode()
                earlier = txn.get(key, None, self._bans)
                if earlier is not None:
                    held = Ban(**unpack(earlier))
                    if held.active(now):  # NOTE: written meanwhile (another connection, a worker)
                        first = first or held
                        continue
                    self._keep_earlier(txn, key, earlier)
                ban = Ban(s, f"more than {lim.invalid_threshold} invalid codes in "
                             f"{lim.invalid_window_s} s", now, now + lim.ban_s, ev)
                txn.put(key, pack(ban.to_dict()), db=self._bans)
                txn.put(key, u64(math.ceil(ban.expires_at)), db=self._ban_ends)
                first = first or ban
        with self.counters.write() as txn:  # NOTE: banned now: its count starts again
            for s, _ in to_ban:
                txn.delete(s.encode(), db=self._invalid)
        return first

    def _keep_earlier(self, txn, key: bytes, raw: bytes) -> None:
        """Keep a subject's ban record ``raw`` as an earlier ban (a new ban replaces it under
        the subject's key), and only the latest :data:`EARLIER_BANS_MAX` of them.

        NOTE: a ban still in force when replaced (a new ban from scans that passed the ban
        check before it was made) is kept as it was: its end then overlaps the new ban's."""
        created = unpack(raw).get("created_at") or 0.0
        prefix = _earlier_prefix(key)
        at = max(0, int(created * 1_000_000))
        while txn.get(prefix + u64(at), None, self._earlier) is not None:  # same µs: next one
            at += 1
        txn.put(prefix + u64(at), raw, db=self._earlier)
        kept = [k for k, _ in self._earlier_of(txn, prefix)]
        for k in kept[:-EARLIER_BANS_MAX]:  # oldest first
            txn.delete(k, db=self._earlier)

    def sweep(self, now: float | None = None, *, pause: Callable[[], None] | None = None,
              step: int = 1_000) -> int:
        """Drop stale counters (old minutes, expired windows) and the ends of ended bans
        (their records stay: evidence); returns entries removed.

        Every client, device and account ever seen keeps a counter until swept: a server
        sweeps every minute (:func:`sweep_every`), or the counters' fixed map fills (75M
        subjects; a client choosing device ids adds one a request). Each write
        transaction looks at ``step`` entries at most (5,000 took ~3 ms in a review's run) and ``pause()`` runs
        between them: scans' counts wait for one step only, and a serving worker's requests
        run on. A full map takes smaller steps (a delete needs fresh pages too: 5,000
        deletes in a full map failed, every minute, and counting never came back)."""
        now = time.time() if now is None else now
        minute, window = int(now // 60), self.limits.invalid_window_s
        with self._rate_lock:
            self._flush_rate(now)
        removed = _sweep(self.counters, self._rate, lambda raw: unpack(raw)[0] < minute, step, pause)
        removed += _sweep(self.counters, self._invalid,
                          lambda raw: now - _INVALID_HEAD.unpack_from(raw)[0] > window, step, pause)
        with self.counters.write() as txn:
            for db in self._legacy:  # NOTE: counts in the old layout are simply forgotten
                removed += txn.stat(db)["entries"]
                txn.drop(db, delete=False)
        return removed + _sweep(self._store, self._ban_ends,
                                lambda raw: int.from_bytes(raw, "big") <= now, step, pause)


def _sweep(store: Store, db, stale: Callable[[bytes], bool], step: int,
           pause: Callable[[], None] | None) -> int:
    """Delete the entries of ``db`` whose value is ``stale``, ``step`` entries looked at a
    write transaction, ``pause()`` between transactions; returns how many."""
    removed, resume = 0, b""
    while True:
        try:
            n, resume = _sweep_step(store, db, stale, step, resume)
        except lmdb.MapFullError:
            if step == 1:
                raise
            step = max(1, step // 10)  # NOTE: fewer deletes need fewer fresh pages
            continue
        removed += n
        if resume is None:
            return removed
        if pause is not None:
            pause()


def _sweep_step(store: Store, db, stale: Callable[[bytes], bool], step: int,
                resume: bytes) -> tuple[int, bytes | None]:
    """One write transaction of :func:`_sweep` from key ``resume`` on: ``(removed, the key
    to resume at, or None at the end)``."""
    removed = 0
    with store.write() as txn:
        cur = txn.cursor(db=db)
        found = cur.set_range(resume) if resume else cur.first()
        for _ in range(step):
            if not found:
                return removed, None
            if stale(cur.value()):
                cur.delete()  # NOTE: onto the next entry, if there is one
                removed += 1
                found = bool(cur.key())
            else:
                found = cur.next()
        return removed, cur.key() if found else None


def sweep_every(guard: AbuseGuard, seconds: float = 60.0):
    """Start a daemon thread (a greenlet under gevent) that sweeps ``guard`` every
    ``seconds`` (see :meth:`AbuseGuard.sweep`), yielding between steps; one process at a
    time (both workers sweeping at one moment waited on each other's steps)."""
    return repeat(seconds, lambda: guard.sweep(pause=yield_to_others), "wuma-abuse-sweep",
                  one_of=guard.counters.path / "sweep.lock")


def _evidence_text(code) -> str:
    """What is kept of a tried code: its last characters (a code ends a scanned URL, so
    padding the path cannot push it out), as text that always stores (a lone surrogate
    from a JSON escape becomes "?": the count it belongs to must never fail)."""
    text = str(code)[-_EVIDENCE_CODE_CHARS:]
    return text if text.isascii() else text.encode("utf-8", "replace").decode()


def _evidence_list(raw: bytes) -> list:
    """The ``[time, code]`` pieces of evidence appended to a subject's record."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    return list(unpacker)
