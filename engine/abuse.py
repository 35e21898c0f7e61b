"""Abuse control for the scan API: rate limits and enumeration bans, shared by all workers.

A *subject* is one client identity: ``ip:203.0.113.9``, ``device:abc``, ``account:s-17``.
Every gunicorn worker opens the same LMDB files, so a ban written by one worker holds in
all of them at once.

* Rate limits: a fixed one-minute window per subject. Counters live in a separate,
  non-synced LMDB environment (``<data>/db-counters``): they are cheap to write and
  losing them in a crash only forgets some counts.
* Enumeration bans: more than ``invalid_threshold`` invalid codes from one subject within
  ``invalid_window_s`` bans it for ``ban_s``. The ban, with its evidence (the codes tried
  and when), goes to the durable store and is listed and lifted by ``wuma bans``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import NotFound
from engine.store import Store, pack, unpack

__all__ = ["AbuseLimits", "Ban", "AbuseGuard", "subject"]

_EVIDENCE_CODE_CHARS = 64
#: How often a process merges its rate counts into the shared store.
_FLUSH_S = 0.1


def subject(kind: str, ident: str) -> str:
    """``kind:ident``, e.g. ``ip:127.0.0.1``; the id is cut to 128 characters."""
    return f"{kind}:{str(ident)[:128]}"


@dataclass(frozen=True)
class AbuseLimits:
    """Configuration with sensible defaults (see the scan service docs)."""

    rate_per_minute: int = 600
    invalid_threshold: int = 20
    invalid_window_s: int = 600
    ban_s: int = 3600
    evidence_max: int = 50

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"abuse limit {name} must be a positive integer")


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
        self._bans = store.db("bans")
        # NOTE: sync=False/metasync=False: counters may be lost in a crash; bans may not.
        self.counters = Store(counters_path, map_size=1 << 32, sync=False)
        self._rate = self.counters.db("rate")
        self._invalid = self.counters.db("invalid")
        self._evidence = self.counters.db("invalid_evidence")
        self._rate_lock = threading.Lock()
        self._pending: dict[str, int] = {}
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
                raw = txn.get(s.encode(), db=self._bans)
                if raw is not None:
                    ban = Ban(**unpack(raw))
                    if ban.active(now):
                        return ban
        return None

    def list_bans(self, now: float | None = None, *, include_inactive: bool = False) -> list[Ban]:
        now = time.time() if now is None else now
        with self._store.read() as txn:
            bans = [Ban(**unpack(v)) for _, v in txn.cursor(db=self._bans)]
        return [b for b in bans if include_inactive or b.active(now)]

    def lift(self, subject_: str, now: float | None = None) -> Ban:
        """Lift a ban now (kept, marked lifted, as a record)."""
        with self._store.write() as txn:
            return self.lift_in(txn, subject_, now)

    def lift_in(self, txn, subject_: str, now: float | None = None) -> Ban:
        """:meth:`lift` inside the caller's write transaction (so an audit entry can go
        with it). The subject's invalid-code count restarts too."""
        now = time.time() if now is None else now
        raw = txn.get(subject_.encode(), db=self._bans)
        if raw is None:
            raise NotFound(f"no ban for {subject_}")
        d = unpack(raw)
        d["lifted_at"] = now
        txn.put(subject_.encode(), pack(d), db=self._bans)
        # NOTE: the counters live in their own (unsynced) environment; restarting the count
        # early is harmless if the lift is then rolled back.
        with self.counters.write() as ctxn:
            ctxn.delete(subject_.encode(), db=self._invalid)
            self._take_evidence(ctxn, subject_.encode())
        return Ban(**d)

    # -- rate limits ------------------------------------------------------------------
    def over_rate(self, subjects: list[str], now: float | None = None) -> str | None:
        """Count one request for each subject; return the first one over its limit.

        PERF: a write transaction per request serialised every worker thread on LMDB's
        writer lock (a quarter of a worker's time under load). Counts are kept in memory
        and merged into the shared store every ``_FLUSH_S`` seconds in one transaction;
        a subject's count is the shared count plus this process's unflushed ones: at
        most ``_FLUSH_S`` stale across workers (rate limits need not be exact).
        """
        now = time.time() if now is None else now
        minute = int(now // 60)
        if (now >= self._next_flush or minute != self._pending_minute) and \
                self._rate_lock.acquire(blocking=False):
            # PERF: one flusher at a time and nobody waits for it: a lock on the hot path
            # made request threads convoy behind a holder that lost the GIL.
            try:
                self._flush_rate(now)
                self._pending_minute = minute
            finally:
                self._rate_lock.release()
        pending = self._pending
        over = None
        with self.counters.read() as txn:
            for s in subjects:
                raw = txn.get(s.encode(), db=self._rate)
                shared = 0
                if raw:
                    m, n = unpack(raw)
                    shared = n if m == minute else 0
                local = pending.get(s, 0) + 1  # NOTE: racing threads may lose a count; fine here
                pending[s] = local
                if shared + local > self.limits.rate_per_minute and over is None:
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
        with self.counters.write() as txn:
            for s, k in items:
                key = s.encode()
                raw = txn.get(key, db=self._rate)
                m, n = unpack(raw) if raw else (minute, 0)
                txn.put(key, pack((minute, (n if m == minute else 0) + k)), db=self._rate)

    # -- enumeration ------------------------------------------------------------------
    def _invalid_count(self, raw: bytes | None) -> tuple[float, int] | None:
        if raw is None:
            return None
        rec = unpack(raw)
        if isinstance(rec, dict):  # NOTE: the layout before evidence had its own keys
            return rec["start"], rec["n"]
        return rec[0], rec[1]

    def record_invalid(self, subjects: list[str], code: str, now: float | None = None) -> Ban | None:
        """Count an invalid code for each subject; ban those over the threshold.

        PERF: a subject's count is a small (window start, count) record and each piece of
        evidence its own key (``subject NUL index``), written once: re-packing a list of
        50 pieces of evidence on every invalid scan cost ~11 µs.
        """
        now = time.time() if now is None else now
        lim = self.limits
        to_ban: list[tuple[str, list]] = []
        evidence = pack([now, str(code)[:_EVIDENCE_CODE_CHARS]])
        with self.counters.write() as txn:
            for s in subjects:
                key = s.encode()
                got = self._invalid_count(txn.get(key, db=self._invalid))
                if got is None or now - got[0] > lim.invalid_window_s:
                    if got is not None:
                        self._take_evidence(txn, key)
                    start, n = now, 0
                else:
                    start, n = got
                if n < lim.evidence_max:
                    txn.put(key + b"\0" + n.to_bytes(2, "big"), evidence, db=self._evidence)
                n += 1
                if n > lim.invalid_threshold:
                    to_ban.append((s, self._take_evidence(txn, key)))
                    txn.delete(key, db=self._invalid)
                else:
                    txn.put(key, pack((start, n)), db=self._invalid)
        first = None
        if to_ban:
            with self._store.write() as txn:
                for s, ev in to_ban:
                    ban = Ban(s, f"more than {lim.invalid_threshold} invalid codes in "
                                 f"{lim.invalid_window_s} s", now, now + lim.ban_s, ev)
                    txn.put(s.encode(), pack(ban.to_dict()), db=self._bans)
                    first = first or ban
        return first

    def _take_evidence(self, txn, key: bytes) -> list:
        """Read and delete a subject's evidence entries, oldest first."""
        prefix = key + b"\0"
        out = []
        cur = txn.cursor(db=self._evidence)
        if cur.set_range(prefix):
            while cur.key().startswith(prefix):
                if len(cur.key()) == len(prefix) + 2:  # not a longer subject's entries
                    out.append(unpack(cur.value()))
                    if not cur.delete():
                        break
                elif not cur.next():
                    break
        return out

    def sweep(self, now: float | None = None) -> int:
        """Drop stale counters (old minutes, expired windows); returns entries removed."""
        now = time.time() if now is None else now
        minute = int(now // 60)
        removed = 0
        with self._rate_lock:
            self._flush_rate(now)
        with self.counters.write() as txn:
            for key, raw in list(txn.cursor(db=self._rate)):
                if unpack(raw)[0] < minute:
                    txn.delete(key, db=self._rate)
                    removed += 1
            for key, raw in list(txn.cursor(db=self._invalid)):
                if now - self._invalid_count(raw)[0] > self.limits.invalid_window_s:
                    txn.delete(key, db=self._invalid)
                    self._take_evidence(txn, key)
                    removed += 1
        return removed
