"""Durable scan records with group commit.

Every scan updates its code's scan record (count, first scan time and place, last scan;
per code as printed: uid and role) and appends a scan event. :meth:`ScanLog.record`
returns only after the write is committed and fsync'ed (the store is opened with
sync=True) — so an acknowledged scan survives ``kill -9`` of the process.

PERF: one fsync per scan caps a disk at ~1.5k scans/s. Callers on many threads hand
their writes to one committer thread, which commits everything waiting in one
transaction and one fsync (group commit), then wakes all of them. Counters are exact
across processes because LMDB has a single writer at a time and every update is a
read-modify-write inside the write transaction.

Under gunicorn's gevent worker (``wuma serve``'s default) the callers and the committer
are greenlets of one thread: requests are parsed and verified until each waits for its
commit, then the committer writes them all in one transaction and wakes them. PERF: the
transaction runs on the worker's own thread, blocking it for the commit (~0.35 ms).
Running it on a native thread of gevent's pool instead was measured slower (4.5-4.8k vs
5.7-7.1k scans/s at 16-32 connections): the transaction's Python code then fought the
request greenlets for the GIL (0.35 ms to apply 6 scans instead of 0.03 ms).

Committers of every process on one store take turns (:class:`_CommitTurn`, an ``flock``)
and take their group only once it is their turn, so a worker whose turn has not come
keeps serving, and its group grows, instead of blocking in LMDB's writer lock with a
group fixed before it waited.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import signal
import threading
import time
from contextlib import contextmanager
from typing import NamedTuple

from engine.addresses import UNIX_PEER, client_address
from engine.ids import check_limit, region_prefix
from engine.store import MAX_SEQ, Store, pack, u64, unpack

__all__ = ["ScanLog", "ScanRecord", "DISTINCT_MAX", "bulk_write", "gate_writes", "record_in"]

log = logging.getLogger("wuma.scanlog")

#: Distinct regions/devices remembered per code: enough to call a code copied.
DISTINCT_MAX = 16
#: Distinct clients remembered per code: the two seen last tell whether two were seen within
#: a window (see _copied), the most the rule asks; more would only grow a busy code's record.
CLIENTS_KEPT = 2


class WriteMemo(dict):
    """What the settlements of one write transaction share (see :meth:`ScanLog.record`):
    values read inside the transaction, kept by key, and writes deferred to its end
    (:meth:`before_commit`), such as a running total moved by every settlement.

    ``copied``: while a scan's settlement runs, whether its code has been flagged copied
    (by this scan or an earlier one: the record's ``ever_copied``), set by the scan log
    before each settlement; a campaign pays nothing for such a code."""

    __slots__ = ("_before_commit", "copied")

    def __init__(self) -> None:
        super().__init__()
        self._before_commit: list = []
        self.copied = False

    def before_commit(self, write) -> None:
        """Run ``write(txn)`` once the transaction's settlements are done."""
        self._before_commit.append(write)

    def finish(self, txn) -> None:
        """Run the deferred writes (the owner of the transaction calls it, then commits)."""
        for write in self._before_commit:
            write(txn)
        self._before_commit.clear()


#: Marks a settlement that raised: the group is written again without running it.
_FAILED = object()


class _SettlementFailed(Exception):
    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def _copied(rec: list, at: float, copy_at: tuple[int, int, float]) -> bool:
    """Has the code been seen in ``copy_at[0]`` distinct places or on ``copy_at[1]``
    devices within the last ``copy_at[2]`` seconds (``math.inf``: ever), by two clients
    or more?

    Places, not region codes: one place is reported at different precision (440106,
    440106001, 440100, 44), and nested division codes are one place. Two regions are
    distinct places only when neither holds the other, compared as division prefixes
    (440100 is 4401): the places counted are the most specific regions seen, those
    holding no other one seen (Tianhe and Liwan are two, Guangzhou with them adds none).

    Clients: APPSEC: device ids and regions are whatever a front end sends, and an outer
    code is printed where anyone can read it: one client sending five made-up devices (or
    three regions) branded a genuine code copied for good (the landing page's flag). So a
    window whose scans all came from one known client (see :func:`_client_of`) is not
    copied. Scans with no known client (library callers and in-process tests send no
    ``ip``; a unix socket without a proxy header is every client's, not one; a record's
    scans from before clients were kept) are one client of their own,
    :data:`_UNKNOWN_CLIENT`, that may be anyone: a window of them alone, or of them and one
    known client, is judged by places and devices alone, as before.
    """
    regions, devices, window = copy_at
    since = at - window
    if not (len(rec[7]) >= devices and sum(1 for t in rec[9] if t >= since) >= devices
            or _in_places(rec, since, regions)):
        return False
    if len(rec) < _RECORD_LEN:  # NOTE: a record of an earlier layout (judged by _upgraded)
        return True
    clients = [c for c, t in zip(rec[11], rec[12]) if t >= since]
    return len(clients) != 1 or clients[0] == _UNKNOWN_CLIENT


def _in_places(rec: list, since: float, regions: int) -> bool:
    """Has the code been seen in ``regions`` distinct places since ``since`` (see
    :func:`_copied`)?"""
    if len(rec[6]) < regions:
        return False
    seen = [r for r, t in zip(rec[6], rec[8]) if t >= since]
    if len(seen) < regions:
        return False
    places = sorted(map(region_prefix, seen))
    # NOTE: sorted, the regions inside a place (and its repeats) come right after it: a
    # place is held by the next one iff that one starts with it, and only those that hold
    # none count. PERF: ~1.5 µs for 3 places, ~4 for 16, in C calls (a code seen in fewer
    # than copy_regions regions never comes here); comparing every pair took 30 µs for 16
    return len(places) - sum(map(str.startswith, places[1:], places)) >= regions


#: The client of scans with no known address (see _copied): "", which no address is.
_UNKNOWN_CLIENT = ""


def _client_of(ip: object) -> str:
    """The client a scan came from (its event's ``ip``), as bans and rate limits count it
    (:func:`engine.addresses.client_address`: an IPv6 address by its /64), or
    :data:`_UNKNOWN_CLIENT`: no address (a library caller's, an in-process test's), the
    unix-socket peer (:data:`engine.addresses.UNIX_PEER`: every client behind it), an IPv6
    text that is no address.

    PERF: taken as the HTTP layer gives it (an IPv4 address as the connection or the proxy
    header wrote it, checked there; an IPv6 one already by its /64): checked again, an IPv4
    address took ~0.4-0.8 µs of the committer's time a scan, an IPv6 one ~12 µs. Other
    text a library caller sends without a colon counts as a client of its own."""
    if ip.__class__ is not str or not ip or ip == UNIX_PEER:
        return _UNKNOWN_CLIENT
    return ip if ":" not in ip or ip[-3:] == "/64" else client_address(ip) or _UNKNOWN_CLIENT


#: The fields of a scan record (a msgpack'd list): count, first at, first region, first
#: device, last at, last region, regions seen, devices seen, when each region and device
#: was last seen, whether a scan of the code has been flagged copied, clients seen and
#: when each was last seen (see :func:`_copied`).
_RECORD_LEN = 13


def _upgraded(rec: list, copy_at: tuple[int, int, float] | None) -> list:
    """A record of an earlier layout in this one (``rec``, changed in place).

    NOTE: a record from before the copied bit says copied if the latest scan in it was, by
    ``copy_at`` (the thresholds now): whether an earlier scan was is not in the record (its
    event says so). Without ``copy_at`` (a scan that is not genuine, a read without
    thresholds) nothing is judged, and nothing judged is written: the record says not
    copied, and a scan writes it pending (14 fields: the 13, then the record as it was
    before the bit), for the first read or scan with thresholds to judge as it would have
    been judged before that scan (scans that are not genuine are never flagged). Pending,
    its length is not 13, so the common path's one length check finds it (PERF: nothing
    more on that path). The release before kept no clients (11 fields; pending, 12): its
    scans are the unknown client's, last seen at the latest of them, so a window holding
    them and one new client is judged as before (see :func:`_copied`); that release reading
    a record of this layout keeps the bit and leaves the clients be."""
    n = len(rec)
    if n == 8:  # NOTE: a record from before the last-seen times: seen at first
        rec += [[rec[1]] * len(rec[6]), [rec[1]] * len(rec[7])]
        n = 10
    # NOTE: the scans so far came from no known client (see _copied): one of their own, last
    # seen at the latest of them
    clients = [[_UNKNOWN_CLIENT], [rec[4]]] if rec[0] else [[], []]
    if n == 10:
        if copy_at is None:
            before = [*rec[:6], *map(list, rec[6:])]
            rec += [False, *clients, before]
        else:
            rec += [_copied(rec, rec[4], copy_at), *clients]
        return rec
    if n in (11, 12):  # NOTE: before the clients (12: pending, the record before the bit last)
        rec[11:11] = clients
        n += 2
    if n == 14 and copy_at is not None:
        before = rec.pop()
        # NOTE: or: a worker of an earlier release sets the bit in place
        rec[10] = rec[10] or _copied(before, before[4], copy_at)
    return rec


class ScanRecord(NamedTuple):
    """Scan history of one code (its uid as printed + role) after the scan that returned it.

    PERF: a NamedTuple (immutable, ~0.6 µs to build): a frozen dataclass's __init__ sets
    each field through object.__setattr__ (~2.3 µs for these 11, on every scan)."""

    count: int
    first_at: float
    first_region: str | None
    first_device: str | None
    last_at: float
    last_region: str | None
    seq: int  # the event sequence number of this scan
    regions: tuple = ()  # distinct regions seen (at most DISTINCT_MAX)
    devices: int = 0  # distinct devices seen (capped at DISTINCT_MAX)
    rewards: tuple = ()  # what the settle function granted (campaign outcomes), stored in the event
    copied: bool = False  # this scan reached the copy thresholds (flag stored in the event too)
    # a scan of the code (this one or an earlier one) was flagged copied; for a record from
    # before this bit, see _upgraded
    ever_copied: bool = False

    def to_dict(self) -> dict:
        return self._asdict()


def _record_key(unit_id: int, role_index: int) -> bytes:
    return u64(unit_id) + bytes([role_index])


def record_in(txn, records, unit_id: int, role_index: int,
              copy_at: tuple[int, int, float] | None = None) -> ScanRecord | None:
    """The scan record of the code ``(unit_id, role_index)`` as printed, read in ``txn``
    (any transaction of the store; ``records`` its ``scan_records`` db): see
    :meth:`ScanLog.get`."""
    raw = txn.get(_record_key(unit_id, role_index), None, records)
    if raw is None:
        return None
    rec = unpack(raw)
    if len(rec) != _RECORD_LEN:
        rec = _upgraded(rec, copy_at)
    return ScanLog._to_record(rec, 0)


class _ThreadWaiter:
    """Where a caller thread waits for its scan's commit (the committer fills it in).

    PERF: a pre-acquired lock instead of a concurrent.futures.Future, whose Condition and
    RLock cost more than the scan's own writes. Same three methods as gevent's Waiter.
    """

    __slots__ = ("_lock", "_value", "_error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._value = self._error = None

    def switch(self, value) -> None:
        self._value = value
        self._lock.release()

    def throw(self, error: BaseException) -> None:
        self._error = error
        self._lock.release()

    def get(self):
        self._lock.acquire()
        if self._error is not None:
            raise self._error
        return self._value


def _deliver(waiters: list, results: list | None, error: BaseException | None) -> None:
    for i, waiter in enumerate(waiters):
        if error is None:
            waiter.switch(results[i])
        else:
            waiter.throw(error)


#: How long a gevent committer keeps serving its worker's other requests while another
#: scan committer has the commit turn, before it blocks until the turn is free (see
#: _CommitTurn).
TURN_SPIN_S = 150e-6
#: ... then how long it blocks at most (some 15 commits) before it waits on gevent's thread
#: pool instead: a commit whose fsync is slow then stalls its own worker only.
TURN_BLOCK_S = 0.005
#: In a store's folder: the commit turn's lock file, and the one a bulk writer holds.
TURN_FILE, BULK_FILE = "scan-commit.lock", "bulk-write.lock"


class _TurnSlow(Exception):
    """The turn was not free within TURN_BLOCK_S (raised by the SIGALRM handler)."""


_alarm_armed = False  # a committer is blocked on the turn under the timer


def _on_alarm(signum, frame) -> None:
    # NOTE: Python runs it in the main thread, where the gevent hub and its committer run;
    # raised there, it ends the committer's flock (EINTR) instead of letting it resume
    global _alarm_armed
    if _alarm_armed:
        _alarm_armed = False
        raise _TurnSlow


def _install_alarm() -> bool:
    """Take SIGALRM for the turn's timer, unless someone else has it or this is not the
    main thread; False if not taken."""
    try:
        current = signal.getsignal(signal.SIGALRM)
        if current is not _on_alarm:
            if current not in (signal.SIG_DFL, None):
                return False
            signal.signal(signal.SIGALRM, _on_alarm)
        return True
    except ValueError:  # not the main thread
        return False


def _lock_file(store: Store, name: str) -> int:
    return os.open(store.path / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try_lock(fd: int, op: int) -> bool:
    """``flock(fd, op)`` without waiting; False if another open file holds the lock."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class _CommitTurn:
    """Whose turn it is to commit scans, among the committers of every process on one
    store: an exclusive ``flock`` on ``<store>/scan-commit.lock``, held from taking a
    group until its transaction is committed. The kernel drops it with its holder, so a
    worker killed mid-commit never leaves it taken.

    Why: LMDB admits one writer at a time, and a worker waiting in ``begin(write=True)``
    for the other worker's commit blocks its whole thread (every greenlet) with a group
    taken before it waited. Here the committer takes the turn *first* and its group only
    then, and under gevent (``yield_`` given) it waits for the turn by yielding to the
    hub, so its worker keeps serving and the requests it reads meanwhile join the group,
    for up to :data:`TURN_SPIN_S`; then it blocks until the turn is free (about when the
    other commit's fsync ends), for :data:`TURN_BLOCK_S` at most (see below). The spin is
    bounded because a busy wait costs only itself and a blocked thread costs CPU when it
    wakes on this VM, but a spin cannot outlast an fsync cheaply. PERF: 16 connections,
    2 workers, old and new code alternated in three sets of 6, 6 and 4 pairs: groups ~6.3
    -> ~7.0 scans, p99 13.9 / 12.1 / 14.1 -> 9.8 / 8.7 / 10.6 ms (medians; the old code
    also had p99s of 331-339 ms in 2 runs), strict scans/s +5% / +8% / +1% (new ahead in
    12 pairs, behind in 3, one even: see the README).

    A long write (a line-collection ingest, seconds for millions of links) takes the turn
    through :func:`bulk_write`. A gevent committer that finds the turn held by one waits
    for it on gevent's thread pool (``wait_aside``) instead of blocking: its worker keeps
    answering everything but genuine scans (checks, invalid codes, health, metrics), and
    its hub, which sends gunicorn's heartbeat, is never blocked by the write. Other
    writers (the admin API, bans) need no turn: LMDB's own lock orders every write (see
    :func:`gate_writes` for how they wait for a bulk writer); the turn only keeps scan
    committers from queueing on it.

    A commit can also take long: now and then this VM's disk takes 30-250 ms for an fsync
    that usually takes ~0.3 ms, and the commit blocks its worker meanwhile. A committer
    blocked on the turn longer than :data:`TURN_BLOCK_S` (a one-shot SIGALRM ends the
    ``flock``) waits on the thread pool instead, so a slow fsync stalls its own worker
    only. PERF: not on the thread pool from the start: waiting there right after the spin
    cost 6% of strict scans/s over HTTP (6 alternated pairs) and once collapsed a run to
    3.9k/s with a p99 of 121 ms; the timer costs two ``setitimer`` calls per block.
    """

    def __init__(self, store: Store, yield_=None, wait_aside=None) -> None:
        self._fd = _lock_file(store, TURN_FILE)
        self._bulk = _lock_file(store, BULK_FILE) if yield_ is not None else None
        self._yield, self._wait_aside = yield_, wait_aside
        self._timer = yield_ is not None and _install_alarm()

    def take(self) -> bool:
        """Wait for the turn; False if the lock cannot be taken at all (an OSError,
        logged): the group is then committed without a turn, LMDB's lock still orders it."""
        try:
            self._take()
            return True
        except (OSError, _TurnSlow) as e:  # NOTE: _TurnSlow only from a stray alarm
            log.warning("scan commit turn unavailable (%r); committing without it", e)
            try:
                self.give()  # NOTE: never keep a turn that this group will not give back
            except OSError:
                pass
            return False

    def _take(self) -> None:
        fd = self._fd
        if _try_lock(fd, fcntl.LOCK_EX):
            return
        if self._yield is None:  # a committer thread: blocking it stalls nobody
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        end = time.perf_counter() + TURN_SPIN_S
        while time.perf_counter() < end:
            self._yield()
            if _try_lock(fd, fcntl.LOCK_EX):
                return
        # NOTE: a bulk writer takes BULK_FILE before the turn; holding it shared while
        # blocking means the turn's holder is another scan committer, done within a commit
        if not _try_lock(self._bulk, fcntl.LOCK_SH):
            self._wait_aside(fcntl.flock, fd, fcntl.LOCK_EX)
            return
        try:
            if not self._block(fd):
                self._wait_aside(fcntl.flock, fd, fcntl.LOCK_EX)
        finally:
            fcntl.flock(self._bulk, fcntl.LOCK_UN)

    def _block(self, fd: int) -> bool:
        """Block the worker on the turn, for TURN_BLOCK_S at most (a one-shot SIGALRM
        ends the wait); False if the turn was still taken then."""
        global _alarm_armed
        if not self._timer:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return True
        _alarm_armed = True
        try:
            signal.setitimer(signal.ITIMER_REAL, TURN_BLOCK_S)
            fcntl.flock(fd, fcntl.LOCK_EX)
            return True
        except _TurnSlow:
            pass
        finally:
            _alarm_armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        # NOTE: the alarm ended the wait, or came just after the lock was granted: ask
        # again (flock grants at once a lock this descriptor already holds)
        return _try_lock(fd, fcntl.LOCK_EX)

    def give(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in (self._fd, self._bulk):
            if fd is not None:
                os.close(fd)


@contextmanager
def _write_holding(store: Store, locks: tuple, take, what: str):
    """A write transaction begun once ``take(fd, op)`` has taken each ``(lock file, op)``
    of ``locks``, in order, and held to its end: closing the files drops their flocks. A
    lock refused (an OSError, logged as ``what``) does not stop the write: LMDB's own lock
    still orders it, as in :meth:`_CommitTurn.take`."""
    fds: list[int] = []
    try:
        for name, _ in locks:
            fds.append(_lock_file(store, name))
        try:
            for fd, (_, op) in zip(fds, locks):
                take(fd, op)
        except OSError as e:
            log.warning("%s unavailable (%s); writing without it", what, e)
        with store.env.begin(write=True) as txn:  # NOTE: not store.write(): never gated
            yield txn
    finally:
        for fd in fds:
            os.close(fd)


def bulk_write(store: Store):
    """``with bulk_write(store) as txn:`` a write transaction expected to run long (an
    ingest), with the scan commit turn held (see :class:`_CommitTurn`): scans wait for it
    (they cannot commit while it writes anyway), without stalling the workers that serve
    them. Waits for a scan commit in progress to end."""
    return _write_holding(store, ((BULK_FILE, fcntl.LOCK_EX), (TURN_FILE, fcntl.LOCK_EX)), fcntl.flock,
                          "scan commit turn")


def gate_writes(store: Store) -> bool:
    """Make a gevent worker's other writes to ``store`` (bans, the admin API, vouchers)
    wait for a bulk writer without blocking the worker; True if installed.

    Without it, such a write begun while :func:`bulk_write` runs in another process blocks
    in LMDB's writer lock, and with it the worker's hub (every request it serves, and
    gunicorn's heartbeat) until the bulk write ends: seconds for a big ingest. With it,
    :meth:`Store.write` first takes ``bulk-write.lock`` shared; if a bulk writer holds
    it, the wait runs on gevent's thread pool while the hub goes on, and the transaction
    then begins on the worker's own thread. Holding the lock shared to the end of the
    transaction keeps a bulk writer from starting under it. PERF: an open, two ``flock``
    calls and a close a write (a few µs against a commit's fsync); scan commits are not
    gated (they take the commit turn, see :class:`_CommitTurn`). Under plain threads
    blocking a thread stalls no one: nothing is installed."""
    wait_aside = _runtime()[3]
    if wait_aside is None:
        return False

    def take(fd: int, op: int) -> None:
        if not _try_lock(fd, op):
            wait_aside(fcntl.flock, fd, op)

    store.write_gate = lambda store: _write_holding(store, ((BULK_FILE, fcntl.LOCK_SH),), take,
                                                    "bulk-write lock")
    return True


def _runtime():
    """``(new_waiter, deliver, gather, wait_aside)`` for this process.

    Plain threads: the committer thread runs each group's transaction and releases each
    caller's :class:`_ThreadWaiter`; ``gather`` is None (callers on other threads queue
    their scans while the committer works). Under gevent's monkey-patching (gunicorn's
    gevent worker) the committer greenlet runs the transaction in place and callers wait
    on gevent's own Waiter, woken from the hub (one callback per group, a greenlet switch
    per caller, no lock). There ``gather`` is ``gevent.sleep(0)``: woken by the first scan
    of a group, the committer yields once, so every request the hub already has ready
    runs up to its own commit wait and joins the group. PERF: under HTTP load (16
    connections, 2 workers) groups grew from ~4.6 to ~6.0 scans per commit and strict
    scans/s by ~7% (medians of 4 alternated pairs, 5,110 -> 5,472/s; see the README).
    ``wait_aside(fn, *args)`` runs a blocking call on gevent's thread pool while the hub
    goes on (None under plain threads); see :class:`_CommitTurn`.
    """
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency, but not required here
        return _ThreadWaiter, _deliver, None, None
    if not monkey.is_module_patched("threading"):
        return _ThreadWaiter, _deliver, None, None
    import gevent
    from gevent.hub import Waiter

    hub = gevent.get_hub()
    return (Waiter, lambda waiters, results, error: hub.loop.run_callback(_deliver, waiters, results, error),
            lambda: gevent.sleep(0), lambda fn, *args: hub.threadpool.apply(fn, args))


def _prefixes(cur) -> list[bytes]:
    """The distributor prefixes (``id`` NUL) of the alerts db: one seek each."""
    out: list[bytes] = []
    found = cur.first()
    while found:
        key = cur.key()
        prefix = key[:key.index(b"\0") + 1]
        out.append(prefix)
        found = cur.set_range(prefix[:-1] + b"\x01")  # NOTE: past every key of that prefix
    return out


def _newest(cur, prefix: bytes, limit: int, before: int | None) -> list[dict]:
    """Up to ``limit`` alerts of one distributor, newest first, below ``before``."""
    out: list[dict] = []
    end = prefix + (u64(before) if before is not None else b"\xff" * 8)
    found = cur.prev() if cur.set_range(end) else cur.last()
    while found and len(out) < limit:
        key = cur.key()
        if not key.startswith(prefix):
            break
        out.append(unpack(cur.value()))
        found = cur.prev()
    return out


class ScanLog:
    """Per-code scan records and the append-only scan event log, group-committed."""

    def __init__(self, store: Store, *, max_group: int = 512) -> None:
        self._store = store
        self._records = store.db("scan_records")
        self._events = store.db("scan_events")
        self._alerts = store.db("scan_alerts")
        self._max_group = max_group
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    # -- writing ----------------------------------------------------------------------
    def record(self, unit_id: int, role_index: int, event: dict, settle=None,
               copy_at: tuple[int, int, float] | None = None,
               printed_uid: int | None = None) -> ScanRecord:
        """Apply one scan durably; returns the code's updated scan record.

        The record is the code's as printed, ``(printed_uid, role_index)``; ``printed_uid``
        is the uid the code itself carries, ``unit_id`` (the default) unless a relabel put
        the code on another unit (标签替换): a replacement label has a scan history of its
        own, and the label it replaced keeps its own (a torn label scanned elsewhere never
        counts for the new one). The event names the unit (``unit_id``), as everything else
        does, and its ``count`` is the record's (the scan pipeline adds ``label``, the
        printed uid, to the event of a replacement label's scan).

        ``event`` must hold ``at`` (unix time) and may hold ``region`` and ``device``;
        it is stored as the scan event with its sequence number. ``settle(txn, seq, memo)``,
        if given, runs inside the same write transaction (if it raises, the scan is written
        without its rewards) and returns the rewards stored with the event — so a reward and
        its scan are committed together or not at all.

        ``memo`` (a :class:`WriteMemo`, or None when a settlement runs alone) is shared by
        the settlements of one write transaction (a group of scans). LMDB admits one writer
        at a time across all processes, so a value read inside the transaction stays true
        until the transaction itself changes it: a settlement may keep what it read (and
        keep it in step with what it writes) for the next one, and leave a running total's
        write to the end of the transaction. When a settlement fails the group is written
        again in a new transaction with a new memo (see :meth:`_write_group`).

        ``copy_at = (regions, devices, window_s)``: when the code has now been seen in that
        many distinct places or on that many devices within the last ``window_s`` seconds
        (``math.inf``: ever), the event gets the flag ``copied`` and the record says
        ``copied``; the code's record keeps that it was (``ever_copied``, which :meth:`get`
        reads too). When ``event`` holds an ``ip`` (the client's address, as bans count
        it), that window's scans must also come from two clients or more: one client
        alone never makes a code copied, however many devices or regions it sends; a
        window with no address in it is judged as before (see :func:`_copied`). Without
        ``copy_at`` nothing is judged, not even for a record written before that bit was
        kept (see :func:`_upgraded`). Nested division codes (440100, 440106, 440106001) are
        one place (see :func:`_copied`). The first and last scan are the earliest and
        latest by ``at``, whatever order their groups commit in.
        """
        if self._thread is None:
            self._start()
        waiter = self._new_waiter()
        # PERF: the printed uid goes in the same tuple (no allocation of its own)
        self._queue.put((unit_id, role_index, event, settle, copy_at,
                         unit_id if printed_uid is None else printed_uid, waiter))
        return waiter.get()

    def _start(self) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("scan log is closed")
            if self._thread is None:
                self._new_waiter, self._deliver, self._gather, wait_aside = _runtime()
                self._turn = _CommitTurn(self._store, self._gather, wait_aside)
                self._thread = threading.Thread(target=self._run, name="wuma-scan-commit",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._gather is not None:
                self._gather()
            turn = self._turn.take()  # NOTE: the group is taken once it is this process's turn
            try:
                group = [item]
                while len(group) < self._max_group:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._queue.put(None)
                        break
                    group.append(nxt)
                self._commit(group)
            finally:
                if turn:
                    self._turn.give()

    def _commit(self, group: list) -> None:
        try:
            results = self._write_group(group)
        except Exception as e:  # the whole group failed: nobody is acknowledged
            self._deliver([item[-1] for item in group], None, e)
            return
        self._deliver([item[-1] for item in group], results, None)

    def _write_group(self, group: list) -> list[ScanRecord]:
        """One write transaction (and one fsync) for a whole group of scans.

        A settlement that raises (a campaign bug) must not lose its scan or its
        neighbours: the transaction is rolled back and the group written again without
        that settlement (its scan answers ``[{"outcome": "error"}]``). PERF: settlements
        run without a nested transaction each (~0.7 µs a scan); only a failure costs a
        redo, and a settlement never fails twice (it is not run again).
        """
        failed: set[int] = set()
        while True:
            try:
                # NOTE: not store.write(): the commit turn orders this against bulk writers,
                # and a gate (gate_writes) waiting for one that waits for the turn would deadlock
                with self._store.env.begin(write=True) as txn:
                    # PERF: the group's sequence numbers are taken at once (one counter update)
                    first = self._store.current_id(txn, "scan_event") + 1
                    memo = WriteMemo()
                    out = [self._apply(txn, first + i, unit_id, role_index, event,
                                       _FAILED if i in failed else settle, copy_at, memo, i,
                                       printed_uid)
                           for i, (unit_id, role_index, event, settle, copy_at, printed_uid, _)
                           in enumerate(group)]
                    memo.finish(txn)
                    self._store.set_id(txn, "scan_event", first + len(group) - 1)
                    return out
            except _SettlementFailed as e:
                failed.add(e.index)

    def _apply(self, txn, seq: int, unit_id: int, role_index: int, event: dict, settle,
               copy_at: tuple[int, int, float] | None, memo: WriteMemo | None, index: int,
               printed_uid: int) -> ScanRecord:
        """One scan of :meth:`_write_group`: the record of ``(printed_uid, role_index)``
        and the event of ``unit_id`` (see :meth:`record`)."""
        # PERF: LMDB arguments by position (py-lmdb parses keywords slowly, ~0.1 µs a call)
        key = _record_key(printed_uid, role_index)
        raw = txn.get(key, None, self._records)
        at = float(event["at"])
        region, device = event.get("region"), event.get("device")
        client = _client_of(event.get("ip"))
        if raw is None:
            rec = [0, at, region, device, at, region, [], [], [], [], False, [], []]
        else:
            rec = unpack(raw)
            if len(rec) != _RECORD_LEN:
                rec = _upgraded(rec, copy_at)
            if at < rec[1]:  # NOTE: an earlier scan committed later (the turn, a slow fsync)
                rec[1], rec[2], rec[3] = at, region, device
        rec[0] += 1
        if at >= rec[4]:
            rec[4], rec[5] = at, region
        # Distinct regions (6), devices (7) and clients (11), each with when it was last seen
        # (8, 9, 12); a full list gives up the one seen longest ago.
        for slot, times_slot, value, kept in ((6, 8, region, DISTINCT_MAX), (7, 9, device, DISTINCT_MAX),
                                              (11, 12, client, CLIENTS_KEPT)):
            if value is not None:
                seen, times = rec[slot], rec[times_slot]
                try:
                    i = seen.index(value)
                except ValueError:  # PERF: one search of the list, not `in` and index()
                    if len(seen) < kept:
                        seen.append(value)
                        times.append(at)
                    else:
                        i = times.index(min(times))
                        seen[i], times[i] = value, at
                else:
                    if at > times[i]:
                        times[i] = at
        # PERF: the rule is _copied()'s alone; this only skips the call when both lists are
        # shorter than their thresholds (then it cannot be copied): most codes, scanned once
        # or twice (73 vs 117 ns, timeit)
        copied = (copy_at is not None and (len(rec[6]) >= copy_at[0] or len(rec[7]) >= copy_at[1])
                  and _copied(rec, at, copy_at))
        if copied:
            rec[10] = True
        txn.put(key, pack(rec), True, True, False, self._records)
        stored = {**event, "unit": unit_id, "role": role_index, "seq": seq, "count": rec[0]}
        if copied:
            stored["flags"] = [*event.get("flags", ()), "copied"]
        if settle is None:
            rewards = ()
        elif settle is _FAILED:
            rewards = [{"outcome": "error"}]
        else:
            if memo is not None:
                memo.copied = rec[10]
            try:
                rewards = settle(txn, seq, memo)
            except Exception as e:
                log.exception("campaign settlement failed for scan %d; no reward written", seq)
                raise _SettlementFailed(index) from e
        if rewards:
            stored["rewards"] = rewards
        # PERF: append: sequence numbers only grow, so LMDB adds at the end without a search.
        # It refuses (False) a key not above the last one: never drop an event silently.
        if not txn.put(u64(seq), pack(stored), True, True, True, self._events):
            raise RuntimeError(f"scan event {seq} is not after the last one stored; the "
                               "scan_event counter is behind the event log")
        diverted = event.get("diverted")
        if diverted:
            # Alerts by distributor: key = distributor id, NUL, seq (listed per distributor).
            txn.put(diverted["distributor"].encode() + b"\0" + u64(seq), pack(stored), db=self._alerts)
        return self._to_record(rec, seq, tuple(rewards), copied)

    @staticmethod
    def _to_record(rec: list, seq: int, rewards: tuple = (), copied: bool = False) -> ScanRecord:
        # NOTE: regions and devices are those seen in any window, at most DISTINCT_MAX
        return ScanRecord(rec[0], rec[1], rec[2], rec[3], rec[4], rec[5], seq, tuple(rec[6]), len(rec[7]),
                          rewards, copied, rec[10])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None
                self._turn.close()

    # -- reading ----------------------------------------------------------------------
    def get(self, unit_id: int, role_index: int,
            copy_at: tuple[int, int, float] | None = None) -> ScanRecord | None:
        """The code's scan record without scanning it (read-only check): ``unit_id`` is the
        uid the code carries as printed (a replacement label's own, see :meth:`record`,
        not the unit it stands for). ``ever_copied`` says whether a scan of the code was
        flagged copied; ``copy_at`` (as for :meth:`record`) is only for a record written
        before that was kept, judged with it (nothing is written); without it such a record
        says not copied (see :func:`_upgraded`)."""
        with self._store.read() as txn:
            return record_in(txn, self._records, unit_id, role_index, copy_at)

    def events(self, after: int = 0, limit: int = 1000) -> list[dict]:
        """Scan events with sequence number > ``after``, oldest first."""
        out = []
        with self._store.read() as txn:
            cur = txn.cursor(db=self._events)
            if not cur.set_range(u64(after + 1)):
                return out
            for _, raw in cur:
                out.append(unpack(raw))
                if len(out) >= limit:
                    break
        return out

    def alerts(self, distributor: str | None = None, limit: int = 1000,
               before: int | None = None) -> list[dict]:
        """Diversion alerts (scan events marked ``diverted``), per distributor if given,
        newest first: ``limit`` of them, with a sequence number below ``before`` if given
        (the next page: the last one's ``seq``). Oldest first, a distributor's alerts past
        the limit could never be seen."""
        check_limit(limit)
        if before is not None and (not isinstance(before, int) or not 1 <= before <= MAX_SEQ):
            raise ValueError(f"before must be a scan sequence number (1 to {MAX_SEQ})")
        found: list[dict] = []
        with self._store.read() as txn:
            cur = txn.cursor(db=self._alerts)
            prefixes = [distributor.encode() + b"\0"] if distributor else _prefixes(cur)
            for prefix in prefixes:
                found.extend(_newest(cur, prefix, limit, before))
        found.sort(key=lambda a: a["seq"], reverse=True)
        return found[:limit]

    def alert_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._store.read() as txn:
            for key in txn.cursor(db=self._alerts).iternext(keys=True, values=False):
                d = key[:-9].decode()
                counts[d] = counts.get(d, 0) + 1
        return counts

    def count_events(self) -> int:
        with self._store.read() as txn:
            return txn.stat(self._events)["entries"]
