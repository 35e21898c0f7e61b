"""The scan service's counters for ``/metrics`` (Prometheus text), shared by all workers.

Each worker counts into a small file of its own, memory-mapped
(``<data>/db-counters/metrics/<pid>-<ns>.cells``): a count is a store into shared memory,
which the kernel's page cache keeps when the worker is killed (``kill -9``, the OOM
killer, a worker past gunicorn's timeout). Counts kept in a worker's memory and written
once a second lost up to a second of a killed worker's scans (5,633 of 6,325 answers
counted in one run). ``/metrics`` sums every worker's file and the totals of workers
gone.

A worker holds an ``flock`` on its file for as long as it lives; the lock is free once
the process is gone, however it ended. A new worker folds each file whose lock is free
into the counters store (``metrics`` database, key ``retired``), marks the file folded
in the same transaction (``metrics_retired``: file name -> when) and removes it, so a
worker's counts are added once, whatever crashes in between. A file is named only once
its lock is held and its cells are written (a worker starting is never taken for one
gone). The totals written by an older release's workers (one key per worker in
``metrics``) are added as they are.
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
import zlib
from bisect import bisect_left
from pathlib import Path

from .scan import VERDICTS
from .store import Store, pack, unpack

__all__ = ["Metrics", "LATENCY_BUCKETS", "BUCKET_KEYS", "VERDICT_KEYS", "REFUSED_KEYS", "flush_metrics"]

log = logging.getLogger("wuma.metrics")

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.3, 1.0)
BUCKET_KEYS = tuple(f'wuma_scan_latency_seconds_bucket{{le="{b}"}}' for b in LATENCY_BUCKETS) + (
    'wuma_scan_latency_seconds_bucket{le="+Inf"}',)
VERDICT_KEYS = {v: f'wuma_scans_total{{verdict="{v}"}}' for v in VERDICTS}
REFUSED_KEYS = {r: f'wuma_scans_refused_total{{reason="{r}"}}'
                for r in ("unauthorized", "banned", "rate_limited", "storage_unavailable")}
SUM_KEY, COUNT_KEY = "wuma_scan_latency_seconds_sum", "wuma_scan_latency_seconds_count"

#: A worker's cells: one count per verdict, per refusal reason and per latency bucket (each
#: bucket's own, not cumulative), then the latencies' sum (a float).
_COUNTED = (*VERDICT_KEYS.values(), *REFUSED_KEYS.values())
_SLOT = {name: i for i, name in enumerate(_COUNTED)}
_VERDICT_SLOT = {v: _SLOT[k] for v, k in VERDICT_KEYS.items()}
_BUCKET0 = len(_COUNTED)
_SLOTS = _BUCKET0 + len(BUCKET_KEYS)
_MAGIC = b"WUMAMTR1"
#: The file's layout, named in its header: a file of another layout (another release's
#: names) is neither read as this one nor folded.
_LAYOUT = zlib.crc32("\n".join((*_COUNTED, *BUCKET_KEYS, SUM_KEY)).encode())
_HEADER = struct.Struct("<8sI4x")
_CELLS_AT = _HEADER.size
_SUM_AT = _CELLS_AT + 8 * _SLOTS
_SIZE = _SUM_AT + 8
_SUFFIX = ".cells"
#: A folded file's mark is dropped a day after (no read of the file can still be running).
_MARK_KEPT_S = 86_400.0


def _real_lock():
    """A lock of the OS thread, under gevent too (counting never yields, so no greenlet
    waits on it; gevent's own lock cost ~0.7 µs a scan)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        return monkey.get_original("_thread", "allocate_lock")()
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
        self._lock = _real_lock()
        self._name, self._map = self._own_file()
        view = memoryview(self._map)
        self._cells = view[_CELLS_AT:_SUM_AT].cast("q")
        self._sum = view[_SUM_AT:_SIZE].cast("d")
        _LIVE_METRICS.add(self)
        try:
            self.fold_gone()
        except Exception:  # pragma: no cover - housekeeping must never keep a worker from serving
            log.exception("folding the metrics of workers gone failed")

    def _own_file(self) -> tuple[str | None, mmap.mmap]:
        """``(name, map)`` of this worker's cells: a new file, locked, written whole, then
        named. Where none can be made (a full disk), counts stay in this process
        (``name`` None) and are said so once."""
        try:
            self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            name = f"{os.getpid()}-{time.time_ns()}{_SUFFIX}"
            part = self._folder / f".{name}.new"
            fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # NOTE: held for the process's life
                blank = bytearray(_SIZE)
                _HEADER.pack_into(blank, 0, _MAGIC, _LAYOUT)
                if os.write(fd, blank) != _SIZE:  # NOTE: real blocks: no SIGBUS on a full disk later
                    raise OSError("short write")
                os.rename(part, self._folder / name)
                weakref.finalize(self, os.close, fd)  # NOTE: open while counting: closing frees the lock
                return name, mmap.mmap(fd, _SIZE)
            except BaseException:
                os.close(fd)
                part.unlink(missing_ok=True)
                raise
        except OSError as e:
            log.warning("this worker's scan metrics are kept in its memory only, not shared with "
                        "the other workers' /metrics: %s", e)
            memory = mmap.mmap(-1, _SIZE)
            _HEADER.pack_into(memory, 0, _MAGIC, _LAYOUT)
            return None, memory

    def inc(self, name: str) -> None:
        """Count one of :data:`REFUSED_KEYS`."""
        slot = _SLOT[name]
        with self._lock:
            self._cells[slot] += 1

    def observe_scan(self, verdict: str, seconds: float) -> None:
        """Count one answered scan by verdict, and its latency (~0.4 µs)."""
        slot, bucket = _VERDICT_SLOT[verdict], _BUCKET0 + bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            cells = self._cells
            cells[slot] += 1
            cells[bucket] += 1
            self._sum[0] += seconds

    def flush(self) -> None:
        """Put this worker's counts on disk (they survive its crash without: this is for a
        crash of the machine)."""
        self._map.flush()

    def totals(self) -> dict[str, float]:
        """Every worker's totals, by series name (buckets cumulative, as Prometheus reads
        them).

        NOTE: the files are read before the store: a file folded in between is then
        marked folded in what the store says, and counted there only."""
        files = dict(_read_files(self._folder))
        if self._name is None:
            files[None] = _parse(bytes(self._map))
        out: dict[str, float] = {}
        with self._counters.read() as txn:
            for _, raw in txn.cursor(db=self._db):
                _add(out, unpack(raw))
            folded = {k.decode() for k in txn.cursor(db=self._folded).iternext(values=False)}
        for name, cells in files.items():
            if name not in folded:
                _add(out, _as_totals(cells))
        return out

    def fold_gone(self) -> int:
        """Fold the files of workers gone into the store, each once; returns how many."""
        n = 0
        for path in sorted(self._folder.glob(f"*{_SUFFIX}")):
            if path.name == self._name:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # folded by another worker just now
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # its worker lives (or another worker folds it now)
                    continue
                cells = _parse(os.pread(fd, _SIZE + 1, 0))
                if cells is None:
                    continue  # NOTE: another release's layout: left for it
                self._fold(path, cells)
                n += 1
            finally:
                os.close(fd)
        return n

    def _fold(self, path: Path, cells: tuple) -> None:
        now, key = time.time(), path.name.encode()
        with self._counters.write() as txn:
            if txn.get(key, db=self._folded) is None:
                retired = txn.get(b"retired", db=self._db)
                total = unpack(retired) if retired is not None else {}
                _add(total, _as_totals(cells))
                txn.put(b"retired", pack(total), db=self._db)
                txn.put(key, pack(now), db=self._folded)
            stale = [k for k, v in txn.cursor(db=self._folded)
                     if unpack(v) < now - _MARK_KEPT_S and not (self._folder / k.decode()).exists()]
            for k in stale:
                txn.delete(k, db=self._folded)
        path.unlink(missing_ok=True)


def _parse(raw: bytes) -> tuple | None:
    """``(counts, sum)`` of a cells file, or None if it is not one of this layout."""
    if len(raw) != _SIZE or _HEADER.unpack_from(raw) != (_MAGIC, _LAYOUT):
        return None
    return struct.unpack_from(f"<{_SLOTS}q", raw, _CELLS_AT), struct.unpack_from("<d", raw, _SUM_AT)[0]


def _read_files(folder: Path):
    """``(name, cells)`` of every cells file in ``folder`` of this layout."""
    try:
        paths = list(folder.glob(f"*{_SUFFIX}"))
    except OSError:  # pragma: no cover - the folder unreadable: the store's totals only
        return
    for path in paths:
        try:
            with open(path, "rb") as f:
                cells = _parse(f.read(_SIZE + 1))
        except FileNotFoundError:  # folded just now: the store has it
            continue
        if cells is not None:
            yield path.name, cells


def _as_totals(cells: tuple) -> dict[str, float]:
    """Series of one worker's cells: counts by name, buckets cumulative, sum and count."""
    counts, total = cells
    out = {name: float(counts[i]) for i, name in enumerate(_COUNTED) if counts[i]}
    if any(counts[_BUCKET0:]):
        n = 0
        for key, count in zip(BUCKET_KEYS, counts[_BUCKET0:]):
            n += count
            out[key] = float(n)
        out[COUNT_KEY] = float(n)
        out[SUM_KEY] = total
    return out


def _add(into: dict[str, float], values: dict[str, float]) -> None:
    for k, v in values.items():
        into[k] = into.get(k, 0.0) + v


#: This process's metrics, for :func:`flush_metrics` (a worker has one).
_LIVE_METRICS: weakref.WeakSet = weakref.WeakSet()


def flush_metrics() -> None:
    """Put this process's counts on disk: a worker about to exit."""
    for m in list(_LIVE_METRICS):
        try:
            m.flush()
        except Exception:  # pragma: no cover - an exiting worker must exit
            log.exception("metrics flush at exit failed")
