"""The scan service's counters for ``/metrics`` (Prometheus text), shared by all workers.

Each worker counts into a small file, memory-mapped (``<data>/db-counters/metrics/*.cells``):
a count is a store into shared memory, which the kernel's page cache keeps when the worker
is killed (``kill -9``, the OOM killer, a worker past gunicorn's timeout). Counts kept in a
worker's memory and written once a second lost up to a second of a killed worker's scans
(5,633 of 6,325 answers counted in one run). ``/metrics`` sums every file, and the totals
kept in the counters store.

A worker holds an ``flock`` on its file for as long as it lives; the lock is free once the
process is gone, however it ended. A worker starting takes over a file whose lock is free
and counts on in it (its counts are already there: nothing is moved, so nothing is counted
twice, and there are never more files than workers at once). A file is named only once its
lock is held and its cells written, so a worker starting is never taken for one gone.

A file names its cells (the series, in its header), so any release from this one on reads
any file. One of
another release's cells (a release with another verdict) is not taken over: a worker
folds its counts into the counters store (``metrics`` database, key ``retired``), marks it
folded in the same transaction (``metrics_retired``: file name -> when) and removes it, so
it is added once whatever crashes in between. The totals an earlier release's workers wrote
to the store (one key per worker in ``metrics``) are added as they are.

Counts are integers, the latencies' sum too (in nanoseconds): a sum of floats added in
another order after a fold could come out lower, and Prometheus reads any drop of a
counter as a reset.
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import sys
import threading
import time
import weakref
from bisect import bisect_left
from pathlib import Path

from .every import Every
from .scan import VERDICTS
from .store import Store, pack, unpack

__all__ = ["Metrics", "LATENCY_BUCKETS", "BUCKET_KEYS", "VERDICT_KEYS", "REFUSED_KEYS", "SUM_KEY", "COUNT_KEY",
           "flush_metrics"]

log = logging.getLogger("wuma.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0)
BUCKET_KEYS = tuple(f'wuma_scan_latency_seconds_bucket{{le="{b}"}}' for b in LATENCY_BUCKETS) + (
    'wuma_scan_latency_seconds_bucket{le="+Inf"}',)
VERDICT_KEYS = {v: f'wuma_scans_total{{verdict="{v}"}}' for v in VERDICTS}
REFUSED_KEYS = {r: f'wuma_scans_refused_total{{reason="{r}"}}'
                for r in ("unauthorized", "banned", "rate_limited", "storage_unavailable")}
SUM_KEY, COUNT_KEY = "wuma_scan_latency_seconds_sum", "wuma_scan_latency_seconds_count"

#: The cells, named in each file: a count per verdict and per refusal reason, a count per
#: latency bucket (each bucket's own: ``BUCKET_CELL`` + its bound), the latencies' sum in ns.
_BUCKET_CELL = "bucket le="
_SUM_NS_CELL = "latency_sum_ns"
_CELLS = (*VERDICT_KEYS.values(), *REFUSED_KEYS.values(),
          *(_BUCKET_CELL + k.rpartition('le="')[2].rstrip('"}') for k in BUCKET_KEYS), _SUM_NS_CELL)
_SLOT = {name: i for i, name in enumerate(_CELLS)}
_VERDICT_SLOT = {v: _SLOT[k] for v, k in VERDICT_KEYS.items()}
_BUCKET0 = len(VERDICT_KEYS) + len(REFUSED_KEYS)
_SUM_SLOT = _SLOT[_SUM_NS_CELL]
_MAGIC = b"WUMAMTR2"
_HEAD = struct.Struct("<8sII")  # magic, number of cells, bytes of their names


def _layout(names: tuple[str, ...]) -> tuple[bytes, int]:
    """``(header, offset of the cells)`` of a file of ``names``: the cells 8-byte aligned."""
    blob = "\n".join(names).encode()
    head = _HEAD.pack(_MAGIC, len(names), len(blob)) + blob
    at = -(-len(head) // 8) * 8
    return head.ljust(at, b"\0"), at


_HEADER, _CELLS_AT = _layout(_CELLS)
_SIZE = _CELLS_AT + 8 * len(_CELLS)
_SUFFIX = ".cells"
#: An unreadable file is logged once a minute.
_unreadable = Every(60)
#: A folded file's mark is dropped a day after (no read of the file can still be running).
_MARK_KEPT_S = 86_400.0


def _counting_lock():
    """The lock counting takes: None under gevent (greenlets switch only where one waits,
    never inside a count: the lock cost ~0.5 µs a scan), else a thread lock (gthread
    workers' threads are preempted anywhere)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return None
    return threading.Lock()


class Metrics:
    """This worker's counts, and the totals of every worker (:meth:`totals`).

    ``counters``: the data folder's counters store (``<data>/db-counters``); the files go
    in its ``metrics`` folder."""

    def __init__(self, counters: Store) -> None:
        self._counters = counters
        self._db = counters.db("metrics")
        self._folded = counters.db("metrics_retired")
        self._folder = counters.path / "metrics"
        self._lock = _counting_lock()
        self.shared = True  # see _count_here
        try:
            self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = self._take_over_or_fold() or self._new_file()
            try:
                self._map = mmap.mmap(fd, _SIZE)
            except BaseException:
                os.close(fd)
                raise
            weakref.finalize(self, os.close, fd)  # NOTE: open while counting: closing frees the lock
        except OSError as e:
            self._count_here(e)
        view = memoryview(self._map)
        self._cells = view[_CELLS_AT:_SIZE].cast("q")
        _LIVE_METRICS.add(self)

    def _count_here(self, error: OSError) -> None:
        """No file to count in (a full disk): counts stay in this process's memory, and are
        in no one's totals (shown, they would drop when it exits); said once."""
        log.warning("this worker's scan metrics are not in /metrics (no file for them in %s: %s)",
                    self._folder, error)
        self.shared = False
        self._map = mmap.mmap(-1, _SIZE)
        self._map[:_CELLS_AT] = _HEADER

    def _take_over_or_fold(self) -> int | None:
        """One pass over the files of workers gone: the first of this layout, opened and
        locked, to count on in (None if none); those of another layout (an earlier or later
        release's) folded into the store, each once."""
        taken = None
        for path in sorted(self._folder.glob(f"*{_SUFFIX}")):
            cells = _read(path)
            if cells is None or (taken is not None and cells[0] == _CELLS):
                continue
            fd = _locked(path)
            if fd is None:
                continue
            if cells[0] == _CELLS:
                taken = fd
                continue
            try:
                cells = _read(path)  # NOTE: its last counts, now that no one writes them
                if cells is not None:
                    self._fold(path, cells)
            finally:
                os.close(fd)
        return taken

    def _new_file(self) -> int:
        """A new file, locked, written whole, then named."""
        name = f"{os.getpid()}-{time.time_ns()}{_SUFFIX}"
        part = self._folder / f".{name}.new"
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # NOTE: held for the process's life
            if os.write(fd, _HEADER.ljust(_SIZE, b"\0")) != _SIZE:  # real blocks: no SIGBUS later
                raise OSError("short write")
            os.rename(part, self._folder / name)
            return fd
        except BaseException:
            os.close(fd)
            part.unlink(missing_ok=True)
            raise

    def inc(self, name: str) -> None:
        """Count one of :data:`REFUSED_KEYS`."""
        slot, lock = _SLOT[name], self._lock
        if lock is None:
            self._cells[slot] += 1
        else:
            with lock:
                self._cells[slot] += 1

    def observe_scan(self, verdict: str, seconds: float) -> None:
        """Count one answered scan by verdict, and its latency. PERF: ~1 µs (timeit, 0.9-1.8
        on a loaded machine): the counting the old deque deferred to a flusher thread
        (~1 µs a scan there, a review's timeit) now runs on the request path."""
        slot, bucket = _VERDICT_SLOT[verdict], _BUCKET0 + bisect_left(LATENCY_BUCKETS, seconds)
        lock = self._lock
        if lock is None:
            _count_scan(self._cells, slot, bucket, int(seconds * 1e9))
        else:
            with lock:
                _count_scan(self._cells, slot, bucket, int(seconds * 1e9))

    def flush(self) -> None:
        """Put this worker's counts on disk (they survive its crash without: this is for a
        crash of the machine)."""
        self._map.flush()

    def totals(self) -> dict[str, float]:
        """Every worker's totals, by series name (buckets cumulative, as Prometheus reads
        them; the sum in seconds).

        NOTE: the files are read before the store: a file folded in between is then
        marked folded in what the store says, and counted there only."""
        files = dict(_read_files(self._folder))
        out: dict[str, int] = {}
        with self._counters.read() as txn:
            for _, raw in txn.cursor(db=self._db):
                _add(out, _as_integers(unpack(raw)))
            folded = {k.decode() for k in txn.cursor(db=self._folded).iternext(values=False)}
        for name, cells in files.items():
            if name not in folded:
                _add(out, _series(*cells))
        return {k: v / 1e9 if k == SUM_KEY else float(v) for k, v in out.items()}

    def _fold(self, path: Path, cells: tuple) -> None:
        now, key = time.time(), path.name.encode()
        with self._counters.write() as txn:
            if txn.get(key, db=self._folded) is None:
                retired = txn.get(b"retired", db=self._db)
                total = _as_integers(unpack(retired)) if retired is not None else {}
                _add(total, _series(*cells))
                txn.put(b"retired", pack(total), db=self._db)
                txn.put(key, pack(now), db=self._folded)
            stale = [k for k, v in txn.cursor(db=self._folded)
                     if unpack(v) < now - _MARK_KEPT_S and not (self._folder / k.decode()).exists()]
            for k in stale:
                txn.delete(k, db=self._folded)
        path.unlink(missing_ok=True)


def _count_scan(cells, slot: int, bucket: int, ns: int) -> None:
    cells[slot] += 1
    cells[bucket] += 1
    cells[_SUM_SLOT] += ns


def _locked(path: Path) -> int | None:
    """``path`` opened for writing and locked, if its worker is gone; else None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # folded by another worker just now
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # its worker lives, or another one takes it over now
        os.close(fd)
        return None
    return fd


def _parse(raw: bytes) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """``(cell names, counts)`` of a cells file's bytes, or None if it is none."""
    if len(raw) < _HEAD.size:
        return None
    magic, n, length = _HEAD.unpack_from(raw)
    at = -(-(_HEAD.size + length) // 8) * 8
    if magic != _MAGIC or len(raw) != at + 8 * n:
        return None
    try:
        names = tuple(raw[_HEAD.size:_HEAD.size + length].decode().split("\n"))
    except UnicodeDecodeError:
        return None
    if len(names) != n:
        return None
    return names, struct.unpack_from(f"<{n}q", raw, at)


def _read(path: Path):
    """:func:`_parse` of the file at ``path``; None if it is none, gone or unreadable."""
    try:
        with open(path, "rb") as f:
            return _parse(f.read(1 << 20))
    except FileNotFoundError:  # folded just now: the store has it
        return None
    except OSError as e:  # NOTE: a folder of that name, no permission: /metrics answers without it
        if _unreadable.due():
            log.warning("%s is not a metrics file this worker can read, left out of /metrics: %s", path, e)
        return None


def _read_files(folder: Path):
    """``(name, (cell names, counts))`` of every cells file in ``folder``."""
    try:
        paths = list(folder.glob(f"*{_SUFFIX}"))
    except OSError:  # pragma: no cover - the folder unreadable: the store's totals only
        return
    for path in paths:
        cells = _read(path)
        if cells is not None:
            yield path.name, cells


def _series(names: tuple[str, ...], counts: tuple[int, ...]) -> dict[str, int]:
    """The series of one file's cells (any release's): counts by name, buckets cumulative
    in the order of their bounds, their count, and the sum in ns."""
    out: dict[str, int] = {}
    buckets = []
    for name, count in zip(names, counts):
        if name.startswith(_BUCKET_CELL):
            bound = name[len(_BUCKET_CELL):]
            buckets.append((float(bound), bound, count))
        elif name == _SUM_NS_CELL:
            if count:
                out[SUM_KEY] = count
        elif count:
            out[name] = count
    if any(count for *_, count in buckets):
        n = 0
        for _, bound, count in sorted(buckets):
            n += count
            out[f'wuma_scan_latency_seconds_bucket{{le="{bound}"}}'] = n
        out[COUNT_KEY] = n
    return out


def _as_integers(values: dict) -> dict[str, int]:
    """Series written to the store as floats (an earlier release's workers: the sum in
    seconds) as :func:`_series` gives them: integers, the sum in ns."""
    return {k: round(v * 1e9) if k == SUM_KEY and isinstance(v, float) else int(v) for k, v in values.items()}


def _add(into: dict, values: dict) -> None:
    for k, v in values.items():
        into[k] = into.get(k, 0) + v


#: This process's metrics, for :func:`flush_metrics` (a worker has one).
_LIVE_METRICS: weakref.WeakSet = weakref.WeakSet()


def flush_metrics() -> None:
    """Put this process's counts on disk: a worker about to exit."""
    for m in list(_LIVE_METRICS):
        try:
            m.flush()
        except Exception:  # pragma: no cover - an exiting worker must exit
            log.exception("metrics flush at exit failed")
