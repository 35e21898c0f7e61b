"""The LMDB environment of a data folder: one file, named databases, msgpack values.

Keys are compact big-endian integers wherever possible (they sort numerically and
LMDB compares them as bytes). Writes go through :meth:`Store.write`, one transaction
each: a write either lands whole or not at all.

The environments a data folder opens, and how (a process crash loses no commit of any of
them: committed pages are in the kernel's cache; these flags are about power loss):

* ``<data>/db`` (engine.data): everything that matters. Durability ``strict``: every
  commit fsynced, meta page included. ``relaxed``: ``metasync=False``, the last commit
  may be undone by a power loss; the writes that let something leave the store call
  :meth:`Store.sync` before they are acknowledged (pack registration, payout leases,
  voucher redemptions, reversals, new batches, key versions' record, campaign pause and
  close), so scans, their rewards and the other admin changes take that risk.
* ``<data>/db-counters`` (engine.abuse): rate and invalid-code counters, ``sync=False``
  with ``writemap``: losable by design (a ban itself is written to ``db``).
"""

from __future__ import annotations

import errno
import os
import re
import struct
import sys
import threading
import time
from pathlib import Path
import lmdb
import msgpack

from engine.every import repeat

__all__ = ["Store", "pack", "unpack", "u32", "u64", "free_bytes", "MIN_FREE_BYTES", "MAX_SEQ", "MAP_SIZE_FORM",
           "clear_dead_readers_every"]

#: The largest sequence number (scan events, ledger entries, audit entries) a caller may
#: name: a signed 64-bit integer's (JSON readers, spreadsheets and databases hold it).
MAX_SEQ = 2**63 - 1
#: Virtual size of the map when ``WUMA_MAP_SIZE`` is not set (1 TiB); LMDB files are
#: sparse, so this only caps growth.
DEFAULT_MAP_SIZE = 1 << 40
#: The smallest map ``WUMA_MAP_SIZE`` may give: LMDB's own default (a new data folder's
#: first writes took 64 KiB; below 1 MiB a size is a slip, such as 1024 meant as MiB).
_MIN_MAP_SIZE = 1 << 20
MAP_SIZE_FORM = ("a whole number of bytes, or of KiB, MiB, GiB or TiB with the suffix K, M, G "
                  "or T (binary: 1K = 1024), such as 2T")
_MAP_SIZE = re.compile(r"([0-9]{1,20})([KMGT]?)", re.IGNORECASE)
_MAP_SIZE_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def u32(n: int) -> bytes:
    return _U32.pack(n)


def u64(n: int) -> bytes:
    return _U64.pack(n)


_packers: list = []  # idle msgpack Packers


def pack(obj) -> bytes:
    # PERF: msgpack.packb builds a Packer per call (~0.9 µs of the 1.8 µs a ledger entry
    # took); a reused Packer packs it in ~0.8 µs. A Packer holds a buffer, so each caller
    # takes one from the idle list (list pop/append are atomic: safe under threads and
    # greenlets alike, and the list stays as short as the packing concurrency).
    # Packer.pack resets its buffer even when packing fails.
    packer = _packers.pop() if _packers else msgpack.Packer(use_bin_type=True)
    try:
        return packer.pack(obj)
    finally:
        _packers.append(packer)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


#: Writes through the map (``writemap``) stop below this much free space (see Store.write).
MIN_FREE_BYTES = 64 << 20


def _map_size_setting(environ=os.environ) -> int:
    """The map size ``WUMA_MAP_SIZE`` gives (:data:`DEFAULT_MAP_SIZE` if unset), read when
    a store opens; ValueError naming the variable and its form if it is not one."""
    text = environ.get("WUMA_MAP_SIZE")
    if text is None:
        return DEFAULT_MAP_SIZE
    m = _MAP_SIZE.fullmatch(text.strip())
    size = int(m[1]) << _MAP_SIZE_SHIFT[m[2].upper()] if m else 0
    if not _MIN_MAP_SIZE <= size <= sys.maxsize:
        raise ValueError(f"WUMA_MAP_SIZE is {text!r}: give {MAP_SIZE_FORM}, from 1M up")
    return size


def free_bytes(path: Path) -> int:
    """Bytes free for an unprivileged writer on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Store:
    """An open LMDB environment with named databases."""

    def __init__(self, path: Path, *, map_size: int | None = None, readonly: bool = False,
                 sync: bool = True, writemap: bool = False, metasync: bool = True) -> None:
        """``writemap``: commits write through the memory map instead of ``pwrite``-ing
        each dirty page (faster small commits; only for stores whose loss is harmless,
        with ``sync=False``: every process must open an environment the same way). With
        it LMDB sizes ``data.mdb`` to ``map_size`` at once: a sparse file on Linux, so keep
        ``map_size`` modest and copy such a folder with ``cp --sparse=always``.

        ``metasync=False`` (with ``sync``): each commit fsyncs the data pages but not the
        meta page, which reaches the disk with the next commit; a power loss may undo the
        last committed transaction, never corrupt the store (LMDB's MDB_NOMETASYNC).

        ``map_size``: by default :func:`_map_size_setting` (``WUMA_MAP_SIZE``)."""
        if map_size is None:
            map_size = _map_size_setting()
        self.path = Path(path)
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.env = lmdb.open(
            str(self.path),
            map_size=map_size,
            max_dbs=64,
            readonly=readonly,
            max_readers=512,
            # NOTE: sync=True + metasync=True: a committed transaction is on disk. Only
            # stores whose loss is harmless (rate counters) pass sync=False; a data folder
            # set to durability "relaxed" passes metasync=False.
            sync=sync,
            metasync=sync and metasync,
            writemap=writemap,
            lock=True,
        )
        self._dbs: dict[str, object] = {}
        self._writemap = writemap
        self.clear_dead_readers()
        #: Each commit is on disk when it returns (sync and metasync); see :meth:`sync`.
        self.synced_commits = sync and metasync
        self._space_checked = -1.0  # when the file system's free space was last looked at
        #: If set, ``write_gate(store)`` is what :meth:`write` returns: a context manager
        #: that waits its turn before beginning the transaction (see
        #: :func:`engine.scanlog.gate_writes`).
        self.write_gate = None
        # NOTE: open_db(create=True) takes the write lock itself, so every database must be
        # opened before (never inside) a write transaction: owners open theirs in __init__.
        self._meta = self.db("meta")

    def db(self, name: str, *, dupsort: bool = False, dupfixed: bool = False, integerdup: bool = False):
        handle = self._dbs.get(name)
        if handle is None:
            handle = self.env.open_db(
                name.encode(), create=True, dupsort=dupsort, dupfixed=dupfixed, integerdup=integerdup
            )
            self._dbs[name] = handle
        return handle

    def problem(self) -> tuple[str, str] | None:
        """Why this store cannot take writes now, or None: ``(reason, text)``, the reason
        ``map_nearly_full`` (writes fail with MDB_MAP_FULL) or ``disk_nearly_full`` (its
        file system below :data:`MIN_FREE_BYTES` free), and the text for its operator
        (it names the store's path: not for clients)."""
        info, stat = self.env.info(), self.env.stat()
        used = (info["last_pgno"] + 1) * stat["psize"]
        if used > 0.95 * info["map_size"]:
            return "map_nearly_full", (
                f"the store at {self.path} has used {used / 2**20:,.1f} of its "
                f"{info['map_size'] / 2**20:,.1f} MiB map (raise WUMA_MAP_SIZE: {MAP_SIZE_FORM})")
        low = self._low_space()
        return None if low is None else ("disk_nearly_full", low)

    def _low_space(self) -> str | None:
        """Says so when the file system holding the store has under MIN_FREE_BYTES free."""
        free = free_bytes(self.path)
        if free < MIN_FREE_BYTES:
            return f"{free >> 20} MiB free on the file system of {self.path}"
        return None

    def clear_dead_readers(self) -> int:
        """Free the reader slots of processes that are gone; returns how many.

        NOTE: a process killed inside a read transaction (``kill -9``, the OOM killer, a
        worker hung past gunicorn's timeout) keeps its slot while any other process has
        the environment open: its snapshot stays pinned and no page freed by a later
        commit is used again (measured: ``data.mdb`` grew ~190 times faster a scan, from
        0.18 to 34.5 KiB, until every process had closed it). LMDB frees such slots only
        when asked (``mdb_reader_check``): every open asks, so a worker replacing a killed
        one clears its slot, and the scan service asks again from time to time
        (:func:`clear_dead_readers_every`)."""
        try:
            return self.env.reader_check()
        except lmdb.Error:  # pragma: no cover - a lock table it cannot read: LMDB's own error later
            return 0

    # PERF: the transactions are their own context managers (commit on success, abort on
    # an exception); a generator-based contextmanager around them cost ~1 µs per use, and
    # a scan opens several.
    def read(self) -> lmdb.Transaction:
        """``with store.read() as txn:`` a read-only snapshot."""
        return self.env.begin(write=False, buffers=False)

    def write(self) -> lmdb.Transaction:
        """``with store.write() as txn:`` committed at the end of the block, aborted (all of
        it) if the block raises.

        With ``writemap``: OSError(ENOSPC) instead of a transaction when the file system
        has less than :data:`MIN_FREE_BYTES` free. NOTE: a write through the map onto a
        page the file system cannot allocate kills the process with SIGBUS (the workers
        of a full disk crash-looped); looked at once a second at most."""
        if self._writemap:
            now = time.monotonic()
            if now - self._space_checked >= 1.0:
                low = self._low_space()
                if low:
                    raise OSError(errno.ENOSPC, f"{low} (writes stop below "
                                  f"{MIN_FREE_BYTES >> 20} MiB)", str(self.path))
                self._space_checked = now
        if self.write_gate is not None:
            return self.write_gate(self)
        return self.env.begin(write=True)

    def sync(self) -> None:
        """Put every committed transaction on disk now, meta page included, in a store whose
        commits are not (``metasync=False``: a data folder with durability ``relaxed``;
        ``sync=False``); nothing to do where every commit already is.

        For a write whose acknowledgement lets something leave the store that its loss
        would make wrong: a pack file put in place, a payout request sent, a voucher's
        goods handed over, a payout cancelled, a token revoked or replaced. In a relaxed store a power loss may undo the
        last commit; after ``sync()`` it no longer can. Call it after the transaction has
        committed, before acknowledging. PERF: one ``fdatasync`` (~0.3 ms on this VM);
        never on the scan path, whose commits ``relaxed`` is for."""
        if not self.synced_commits:
            self.env.sync(True)

    def next_id(self, txn: lmdb.Transaction, counter: str) -> int:
        """Allocate the next integer id of a counter, inside a write transaction."""
        value = self.current_id(txn, counter) + 1
        self.set_id(txn, counter, value)
        return value

    def set_id(self, txn: lmdb.Transaction, counter: str, value: int) -> None:
        """Record that a counter has allocated every id up to ``value`` (ids taken in bulk
        inside a write transaction: ``current_id() + 1 ... value``)."""
        txn.put(b"counter:" + counter.encode(), value.to_bytes(8, "big"), db=self._meta)

    def current_id(self, txn: lmdb.Transaction, counter: str) -> int:
        """The last id a counter allocated (0 if none), in any transaction."""
        raw = txn.get(b"counter:" + counter.encode(), db=self._meta)
        return int.from_bytes(raw, "big") if raw else 0

    def close(self) -> None:
        self.env.close()


def clear_dead_readers_every(stores: list[Store], seconds: float = 30.0) -> threading.Thread:
    """Start a daemon thread (a greenlet under gevent) that calls
    :meth:`Store.clear_dead_readers` on ``stores`` every ``seconds``: a long-running
    process (a server worker) frees the slots of other processes killed inside a read
    transaction, whoever they were (a worker, a ``wuma`` command), without waiting for
    another process to open the store."""
    import logging

    def clear() -> None:
        for store in stores:
            cleared = store.clear_dead_readers()
            if cleared:
                logging.getLogger("wuma.store").warning(
                    "freed %d reader slot(s) of processes killed inside a read of %s",
                    cleared, store.path)

    return repeat(seconds, clear, "wuma-dead-readers")
