"""Aggregation: which unit is packed in which, plus activation, voids, shipping and trace.

Units are ``uid = batch << 32 | serial`` (linked outer/inner codes share one uid, so they
need no link). Every database is keyed by 8-byte big-endian uids, never by code strings.

PERF: links are stored as *runs*: children of one parent with consecutive serials of one
batch (line collection packs caps in print order, so a case of 24 caps is usually one
run). A run is one record child -> parent, and a few bytes in its parent's record:

* ``agg_c2p``  (child -> parent): key = last child uid of the run,
  value = first serial (u32) + parent uid (u64), or the parent uid alone for a run of
  one child. Looking up the parent of any child is one ``set_range`` on its uid.
* ``agg_children``  (parent -> children): key = parent uid, value = the parent's runs
  (see :func:`_encode_children`): the child count, then the runs in child order as
  varint gaps and lengths.

A day of 100M caps in 4.2M cases then costs ~4.3M records per direction instead of
~104M (measured: 2.3 bytes a link both ways). Out-of-order packing degrades to runs of
one: measured 25.3 bytes a link child -> parent (an LMDB node: 8 header + 8 key + 8
value + 2 index, full pages) and 3.3-3.9 parent -> children (240k-10M caps; a varint
gap grows with the batch; not measured at 100M). The same run layout (key = last
uid, value starts with the first serial) holds activations, voids, and nothing else;
shipments bind the shipped unit only and resolve through ancestors (``agg_ship``,
value 0 = returned to the brand); a unit leaving its parent (unpack, move) first gets
the shipment it resolved to recorded on itself, so no distributor changes silently. No
unit sits below one in other hands (a distributor's, or the brand's): move, link and the
load refuse to put it there (:meth:`Aggregation._place`, :meth:`Aggregation._hands_text`);
ship, transfer and return take a unit out of a parent that is not with the same hands
(:meth:`Aggregation._take_out`) and refuse a unit holding goods of other hands
(:meth:`Aggregation._check_passing`). A unit with no distributor through its records is in
the hands most of what it holds is in, the brand's counting as a hand (:class:`_Goods`); one
an older release left holding goods of other hands too takes nothing in a move or link
until they are out.

Relabels (标签替换, :meth:`Aggregation.relabel`: one label of a pair replaced, the unit
kept) live in ``agg_relabel``: key = uid + role index (the scan records' layout), value
= a kind byte, then for ``_ALIAS`` the uid of the unit the label stands for, for
``_DEAD`` a label (uid + role): for a replaced label the one that took its place, for a
spare code of a replacement label's unit (never applied to anything) that replacement
label, its sibling. A code with no record there stands for its own unit, so one ``get``
resolves any scanned code (:meth:`_resolve`, :meth:`scan_label`). Only this module reads
the layout (:func:`_relabel_target`, :func:`_relabel_unit`); others go through
:class:`RelabelledLabels`.
"""

from __future__ import annotations

import datetime as _dt
import struct
from collections import Counter
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from engine.errors import Conflict, InvalidCode, NotFound
from engine.formats import check_gtin
from engine.ids import check_text, is_region_code, region_prefix
from engine.chinatime import china_time
from engine.scanlog import record_in
from engine.store import pack, u32, u64, unpack

__all__ = ["Aggregation", "unit_id", "split_unit", "LoadReport", "BadRecord",
           "VoidRuns", "RelabelledLabels", "activated_per_batch"]

_LOW = 0xFFFFFFFF
_RUN = struct.Struct(">QI")  # old agg_p2c value: first child uid, count (migrated on open)
_C2P = struct.Struct(">IQ")  # c2p value: first serial, parent uid
_II = struct.Struct(">II")
_Q = struct.Struct(">Q")
_I = struct.Struct(">I")
_LABEL = struct.Struct(">QB")  # agg_relabel key (and dead value's target): uid, role index
_ALIAS, _DEAD = 1, 2  # agg_relabel value kinds: stands for a unit / replaced
_DONE = {"ship": "shipped", "transfer": "transferred", "return": "returned"}  # refusals' words


def _relabel_target(raw: bytes) -> int | None:
    """The unit an ``agg_relabel`` value puts its label on (``_ALIAS``: a replacement
    label), or None for a dead label (``_DEAD``: replaced, or a spare code of a
    replacement label's unit)."""
    return _Q.unpack_from(raw, 1)[0] if raw[0] == _ALIAS else None


def _relabel_seen(raw: bytes) -> bool:
    """Whether an ``_ALIAS`` value's unit had a scan recorded in the label's role before
    the label was put on: its last byte (values written before it was kept, without it,
    say so: a replacement label's first scan was never counted as its unit's first)."""
    return len(raw) < 10 or raw[9] != 0


def _replaced_by(raw: bytes) -> tuple[int, int]:
    """The label (uid, role index) a ``_DEAD`` value names: the one that took its place,
    or for a spare code the replacement label of its own unit."""
    return _LABEL.unpack_from(raw, 1)


def _relabel_unit(voids: _RangeMap, txn, uid: int, raw: bytes) -> int | None:
    """The unit a label of unit ``uid`` with ``agg_relabel`` value ``raw`` stands for now,
    or None when it answers voided: a dead label, or a replacement label whose own batch
    or range was voided since (the unit it stood for is relabelled again, this label as
    OLD). The rule of :meth:`Aggregation._resolve`, :meth:`Aggregation.scan_label` and
    :meth:`RelabelledLabels.all` (line-collection files)."""
    unit = _relabel_target(raw)
    return None if unit is None or voids.find(txn, uid) is not None else unit


def _split_around(first: int, last: int, units) -> list[tuple[int, int]]:
    """``first..last`` without ``units`` (sorted or not), as runs."""
    out = []
    for u in sorted(u for u in set(units) if first <= u <= last):
        if u > first:
            out.append((first, u - 1))
        first = u + 1
    if first <= last:
        out.append((first, last))
    return out


def _most(values) -> object | None:
    """The value met most often (the first met of those tied), or None for none."""
    counts = Counter(values)
    return counts.most_common(1)[0][0] if counts else None


def _most_hands(held) -> tuple[str | None, int]:
    """``(hands, witness)``: the hands most of ``held`` (``(unit, hands, witness, strays)``
    of each unit a unit holds directly, :meth:`Aggregation._below`; not empty) are in, the
    first met of those tied, and the witness of the first of them."""
    hands = _most(h for _, h, _, _ in held)
    return hands, next(w for _, h, w, _ in held if h == hands)


def _strays_in(held, hands: str | None) -> tuple[tuple[int, str | None], ...]:
    """The strays (:class:`_Goods`) of a unit in ``hands`` holding ``held`` (as
    :func:`_most_hands`): each unit it holds in other hands, else the strays in that unit."""
    return tuple(s for k, h, _, strays in held for s in (((k, h),) if h != hands else strays))


def _record_stays(kind: str, sid: int) -> bool:
    """Does the shipment record ``sid`` of a unit below one that passes (a ``kind`` of
    ``ship``, ``transfer``, ``return``) stay? In a ship one naming a distributor (the one
    shipped to: :meth:`Aggregation._check_passing` lets no other through); in a transfer
    one returned to the brand (0: not in the distributor's hands); in a return none."""
    return sid != 0 if kind == "ship" else kind == "transfer" and sid == 0


@dataclass(frozen=True)
class _Place:
    """Whose hands a parent is in, for a unit going into it (:meth:`Aggregation._place`).

    ``want``: the distributor (None: none, the brand's). ``witness``: for a parent with no
    distributor of its own, a unit of ``top`` with ``want`` that says so (None when a record
    on the parent or above does, or for the brand's). ``top``: the unit that decides, the
    parent itself, the ancestor holding the record, or (by goods) its topmost unit.
    ``strays``: what ``top`` holds in other hands than ``want`` (:class:`_Goods`): a parent
    in several hands takes no unit until they are out."""

    want: str | None
    witness: int | None
    top: int
    strays: tuple[tuple[int, str | None], ...] = ()

    @classmethod
    def of_first(cls, have: str | None, uid: int, parent: int) -> _Place:
        """The hands an empty ``parent`` with no distributor takes from the first unit put
        into it, ``uid``, with distributor ``have`` (None: none)."""
        return cls(have, uid if have is not None else None, parent)


@dataclass(frozen=True)
class _Goods:
    """What a unit holds, by hands (:meth:`Aggregation._below`), its own record aside.

    ``hands``: the hands most of it is in, a distributor's or None (the brand's: never
    shipped, or returned). Each unit it holds directly counts once, in the hands of its own
    shipment record, else of most of what it holds in turn, else (holding nothing) the
    brand's: a pallet is where most of its cases are, ties going to the first in child
    order. ``witness``: a unit below in ``hands`` that says so (the one with the record, or
    the topmost of the brand's: a case, not its caps); None when it holds nothing.
    ``strays``: the units below in other hands than the unit they are in, ``(unit, its
    hands)``, the topmost of each (what to take out), in child order."""

    hands: str | None = None
    witness: int | None = None
    strays: tuple[tuple[int, str | None], ...] = ()


#: The most units in other hands a refusal names (the next refusal names the others).
_STRAYS_NAMED = 5
_NONE = "not with a distributor (never shipped, or returned)"


#: The most records a cache of records that never change keeps (a server worker runs for
#: months: a brand shipping 10k orders a day kept ~2.4 GB of shipments a year a worker).
_CACHE_MAX = 100_000


def _remember(cache: dict, key, value):
    """``cache[key] = value``, the cache emptied first when full; returns ``value``."""
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value
    return value


def _c2p_value(first: int, last: int, parent: int) -> bytes:
    """The ``agg_c2p`` value of a run: the parent alone for a run of one child."""
    return _Q.pack(parent) if first == last else _C2P.pack(first & _LOW, parent)


def _c2p_decode(last: int, value: bytes) -> tuple[int, int]:
    """(first child, parent) of the ``agg_c2p`` record of a run ending at ``last``."""
    if len(value) == 8:
        return last, _Q.unpack(value)[0]
    fs, parent = _C2P.unpack(value)
    return (last & ~_LOW) | fs, parent


def _put_varint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _get_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, i
        shift += 7


def _encode_children(runs) -> bytes:
    """The ``agg_children`` value of a parent from its runs ``(first child, count)``
    (disjoint): varints, the total count, then the runs in child order, the first as
    (uid, count - 1), each next one as (gap << 1 | count > 1) [, count - 2], where gap is
    the serials skipped since the previous run. ``engine.ingest`` writes the same
    bytes vectorised."""
    runs = sorted(runs)
    out = bytearray()
    _put_varint(out, sum(n for _, n in runs))
    prev = -1
    for f, n in runs:
        if prev < 0:
            _put_varint(out, f)
            _put_varint(out, n - 1)
        else:
            _put_varint(out, ((f - prev - 1) << 1) | (n > 1))
            if n > 1:
                _put_varint(out, n - 2)
        prev = f + n - 1
    return bytes(out)


def _decode_children(value: bytes) -> list[tuple[int, int]]:
    """The runs ``(first child, count)`` of an ``agg_children`` value, in child order."""
    out: list[tuple[int, int]] = []
    _, i = _get_varint(value, 0)  # the total
    end = len(value)
    prev = -1
    while i < end:
        if prev < 0:
            f, i = _get_varint(value, i)
            n, i = _get_varint(value, i)
            n += 1
        else:
            t, i = _get_varint(value, i)
            f = prev + 1 + (t >> 1)
            n = 1
            if t & 1:
                n, i = _get_varint(value, i)
                n += 2
        out.append((f, n))
        prev = f + n - 1
    return out


def _children_count(value: bytes) -> int:
    """The number of children an ``agg_children`` value holds (its first varint)."""
    return value[0] if value[0] < 0x80 else _get_varint(value, 0)[0]


def unit_id(batch: int, serial: int) -> int:
    return (batch << 32) | serial


def split_unit(uid: int) -> tuple[int, int]:
    return uid >> 32, uid & _LOW


@dataclass(frozen=True)
class BadRecord:
    line: int
    reason: str


@dataclass
class LoadReport:
    """What a line-collection load did (or would have done)."""

    records: int = 0
    links_added: int = 0
    links_existing: int = 0
    bad: list[BadRecord] = field(default_factory=list)
    loaded: bool = False
    event_id: int | None = None
    rejected_to: str | None = None

    def to_dict(self) -> dict:
        return {
            "records": self.records,
            "links_added": self.links_added,
            "links_existing": self.links_existing,
            "bad": [{"line": b.line, "reason": b.reason} for b in self.bad],
            "loaded": self.loaded,
            "event_id": self.event_id,
            "rejected_to": self.rejected_to,
        }


def _runs(uids: np.ndarray, parents: np.ndarray | None = None):
    """Split sorted uids into runs of consecutive serials (and equal parent):
    returns (first, last, parent-or-None) arrays."""
    if len(uids) == 0:
        e = np.empty(0, np.uint64)
        return e, e, (e if parents is not None else None)
    brk = np.diff(uids) != 1
    brk |= (uids[1:] >> np.uint64(32)) != (uids[:-1] >> np.uint64(32))
    if parents is not None:
        brk |= parents[1:] != parents[:-1]
    starts = np.concatenate(([0], np.flatnonzero(brk) + 1))
    ends = np.concatenate((starts[1:] - 1, [len(uids) - 1]))
    return uids[starts], uids[ends], (parents[starts] if parents is not None else None)


class _RangeMap:
    """Non-overlapping runs ``[first, last]`` (same batch) -> payload bytes.

    With ``short``, a value of exactly ``short`` bytes is a run of one unit holding the
    payload alone (no first serial): ``agg_c2p`` stores single-child runs so."""

    def __init__(self, db, short: int | None = None) -> None:
        self.db = db
        self.short = short

    def _split(self, last: int, v: bytes) -> tuple[int, bytes]:
        if len(v) == self.short:
            return last, v
        return (last & ~_LOW) | _I.unpack_from(v)[0], v[4:]

    def find(self, txn, uid: int):
        cur = txn.cursor(db=self.db)
        if not cur.set_range(_Q.pack(uid)):
            return None
        last = _Q.unpack(cur.key())[0]
        first, payload = self._split(last, cur.value())
        if first > uid:
            return None
        return first, last, payload

    def overlapping(self, txn, first: int, last: int) -> list[tuple[int, int, bytes]]:
        out = []
        cur = txn.cursor(db=self.db)
        if not cur.set_range(_Q.pack(first)):
            return out
        for k, v in cur:
            rl = _Q.unpack(k)[0]
            rf, payload = self._split(rl, v)
            if rf > last:
                break
            out.append((rf, rl, bytes(payload)))
        return out

    def put(self, txn, first: int, last: int, payload: bytes) -> None:
        txn.put(_Q.pack(last), _I.pack(first & _LOW) + payload, db=self.db)

    def delete(self, txn, last: int) -> None:
        txn.delete(_Q.pack(last), db=self.db)

    def covers(self, txn, first: int, last: int) -> bool:
        """Do the runs cover all of ``[first, last]``? (Stops at the first gap.)"""
        at = first
        cur = txn.cursor(db=self.db)
        if not cur.set_range(_Q.pack(first)):
            return False
        for k, v in cur:
            rl = _Q.unpack(k)[0]
            if self._split(rl, v)[0] > at:
                return False
            at = rl + 1
            if at > last:
                return True
        return False

    def gaps(self, txn, first: int, last: int) -> list[tuple[int, int]]:
        """Sub-ranges of ``[first, last]`` not covered by any run."""
        out, at = [], first
        for rf, rl, _ in self.overlapping(txn, first, last):
            if rf > at:
                out.append((at, rf - 1))
            at = max(at, rl + 1)
        if at <= last:
            out.append((at, last))
        return out

    def all_runs(self, txn) -> tuple[np.ndarray, np.ndarray]:
        firsts, lasts = [], []
        for k, v in txn.cursor(db=self.db):
            rl = _Q.unpack(k)[0]
            lasts.append(rl)
            firsts.append(self._split(rl, v)[0])
        return np.array(firsts, np.uint64), np.array(lasts, np.uint64)


def activated_per_batch(txn, db) -> dict[int, int]:
    """Activated units per batch id, from the ``agg_active`` runs in ``db`` (a void does
    not undo an activation): one pass over the runs, not over units."""
    firsts, lasts = _RangeMap(db).all_runs(txn)
    out: dict[int, int] = {}
    if len(firsts):
        batches, where = np.unique(firsts >> np.uint64(32), return_inverse=True)
        units = np.zeros(len(batches), np.uint64)
        np.add.at(units, where, lasts - firsts + np.uint64(1))
        out = dict(zip(batches.tolist(), units.tolist()))
    return out


class VoidRuns:
    """The voided ranges of a store, read without an :class:`Aggregation`.

    NOTE: make it outside any transaction: it opens the ``agg_void`` database (a database
    opened inside a transaction is not usable in it)."""

    def __init__(self, store) -> None:
        self._runs = _RangeMap(store.db("agg_void"))

    def first(self, txn, batch_id: int, start: int, stop: int) -> int | None:
        """The first voided serial of ``start:stop`` (stop exclusive) of a batch, or None."""
        hit = self._runs.overlapping(txn, unit_id(batch_id, start), unit_id(batch_id, stop - 1))
        return max(split_unit(hit[0][0])[1], start) if hit else None


class RelabelledLabels:
    """The labels a relabel touched (标签替换), read without an :class:`Aggregation`: those
    it made dead and those that now stand for another unit (``agg_relabel``).

    NOTE: make it outside any transaction, as :class:`VoidRuns`."""

    #: :meth:`all`'s unit of a label that answers voided
    VOIDED = 2**64 - 1

    def __init__(self, store) -> None:
        self._db = store.db("agg_relabel")
        self._voids = _RangeMap(store.db("agg_void"))

    def count(self, txn) -> int:
        """The number of labels a relabel touched (a relabel only adds records: a count
        tells whether one came since)."""
        return txn.stat(self._db)["entries"]

    def first(self, txn, batch_id: int, start: int, stop: int) -> tuple[int, int | None] | None:
        """``(serial, unit)`` of the first serial of ``start:stop`` (stop exclusive) of a
        batch with a code a relabel touched, or None: ``unit`` is the uid of the unit a
        code of that serial stands for now (a replacement label in use), None when none
        does: the touched codes are dead (replaced, or the spare codes of a replacement
        label's unit), and the serial's other code, if any, may still be live (a relabel
        replaces one label of a pair: the cap's inner code stays in use).

        PERF: one ``set_range`` (keys sort by uid, then role), and a step per other code
        of that serial."""
        cur = txn.cursor(self._db)
        if not cur.set_range(_Q.pack(unit_id(batch_id, start))):
            return None
        uid = _LABEL.unpack(cur.key())[0]
        if uid > unit_id(batch_id, stop - 1):
            return None
        unit = None
        for key, raw in cur:
            if _LABEL.unpack(key)[0] != uid:
                break
            target = _relabel_target(raw)
            if target is not None:
                unit = target
        return uid & _LOW, unit

    def all(self, txn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every label a relabel touched, sorted by (uid, role): ``(uid, role index, unit)``
        arrays (uint64, uint8, uint64), ``unit`` the unit the label stands for now, or
        :attr:`VOIDED` when it answers voided (see :func:`_relabel_unit`: dead, or a
        replacement label whose own batch or range was voided since).

        PERF: one pass over ``agg_relabel`` (relabels are rare: well under 1% of units)."""
        uids, roles, units = [], [], []
        voids, none = self._voids, self.VOIDED
        for key, raw in txn.cursor(self._db):
            uid, role = _LABEL.unpack(key)
            unit = _relabel_unit(voids, txn, uid, raw)
            uids.append(uid)
            roles.append(role)
            units.append(none if unit is None else unit)
        return (np.array(uids, np.uint64), np.array(roles, np.uint8),
                np.array(units, np.uint64))


class Aggregation:
    """Links, activation, voids, distributors, shipments and history of a data folder."""

    def __init__(self, data) -> None:
        self.data = data
        self.spec = data.spec
        store = data.store
        self.store = store
        self._c2p_db = store.db("agg_c2p")
        self._p2c_db = store.db("agg_children")
        self.c2p = _RangeMap(self._c2p_db, short=8)
        self.voids = _RangeMap(store.db("agg_void"))
        self.active = _RangeMap(store.db("agg_active"))
        self._ship_db = store.db("agg_ship")
        self._events_db = store.db("agg_events")
        #: load event id -> the runs it added (parent, first child, count), for EPCIS export;
        #: kept apart so that reading an event (trace history) stays small
        self._load_runs_db = store.db("agg_load_runs")
        #: sha256 of a file a load took -> that load's event id (a re-run is recognised)
        self._loaded_files_db = store.db("agg_loaded_files")
        self._unit_events_db = store.db("agg_unit_events", dupsort=True, dupfixed=True)
        self._activations_db = store.db("agg_activations")
        self._shipments_db = store.db("agg_shipments")
        self._distributors_db = store.db("agg_distributors")
        self._relabel_db = store.db("agg_relabel")
        self._records_db = store.db("scan_records")  # the scan log's (see _refuse_scanned)
        #: the relabels as others read them (line-collection files: :mod:`engine.ingest`)
        self.relabels = RelabelledLabels(store)
        self._levels: dict[int, str] = {}
        #: immutable records by id (activations, shipments, distributors): never stale
        self._cache: dict = {}
        self._events_cache: dict[int, dict] = {}
        self._depth = {lv.name: lv.depth for lv in self.spec.levels}
        self._capacity = {lv.name: lv.capacity for lv in self.spec.levels}
        self._migrate_p2c()

    def _migrate_p2c(self) -> None:
        """Data folders written before ``agg_children`` kept parent -> children as one
        dupsort record per run (``agg_p2c``); convert them once."""
        with self.store.read() as txn:
            if txn.get(b"agg_p2c") is None:
                return
        old = self.store.env.open_db(b"agg_p2c", dupsort=True, dupfixed=True)
        with self.store.write() as txn:
            runs: dict[int, list[tuple[int, int]]] = {}
            for k, v in txn.cursor(db=old):
                runs.setdefault(_Q.unpack(k)[0], []).append(_RUN.unpack(v))
            for parent, rs in runs.items():
                txn.put(_Q.pack(parent), _encode_children(rs), db=self._p2c_db)
            txn.drop(old, delete=True)

    # -- units ----------------------------------------------------------------------------
    def level_of(self, uid: int, txn=None) -> str | None:
        """The packaging level of a unit's batch (None: no such batch); in ``txn`` if given
        (a write transaction reads in itself), cached per batch."""
        b = uid >> 32
        lv = self._levels.get(b)
        if lv is None:
            batches = self.data.batches
            batch = batches.find(b) if txn is None else batches.find_in(txn, b)
            if batch is None:
                return None
            lv = self._levels[b] = batch.level
        return lv

    def unit(self, code: str) -> int:
        """The uid of the unit a genuine code stands for (its own, or the one a relabel put
        it on); :class:`InvalidCode` otherwise (opaque), :class:`Conflict` for a label a
        relabel made dead (see :meth:`_resolve`)."""
        return self._stands_for(self._label(code))

    # -- labels (标签替换) ----------------------------------------------------------------
    def _label(self, code: str) -> tuple[int, int]:
        """``(uid, role index)`` of a genuine code as printed, before any relabel is looked
        at; :class:`InvalidCode` otherwise (opaque). NOTE: verified outside any write
        transaction; :meth:`_resolve` it inside the one that acts on it."""
        v = self.data.codes.verify(code)
        if not v.genuine:
            raise InvalidCode()
        return unit_id(v.batch, v.serial), self.spec.role(v.role).index

    def _stands_for(self, label: tuple[int, int]) -> int:
        with self.store.read() as txn:
            return self._resolve(txn, label)

    def _resolve(self, txn, label: tuple[int, int]) -> int:
        """The unit a label stands for: its own, or the unit a relabel put it on.
        :class:`Conflict` for a dead label (replaced, or a spare code of a unit that gave
        its label away), naming the label in its place, and for a replacement label voided
        since (a void of its batch or range)."""
        raw = txn.get(_LABEL.pack(*label), None, self._relabel_db)
        if raw is None:
            return label[0]
        unit = _relabel_unit(self.voids, txn, label[0], raw)
        if unit is None:
            raise Conflict(self._refusal_text(txn, label, raw))
        return unit

    def label_refusal(self, txn, label: tuple[int, int]) -> str:
        """Why commands refuse a label ``(uid, role index)`` that a relabel left answering
        voided (see :meth:`_resolve`), naming the label to use instead (line-collection
        files word their refusals with it)."""
        return self._refusal_text(txn, label, txn.get(_LABEL.pack(*label), None,
                                                      self._relabel_db))

    def _refusal_text(self, txn, label: tuple[int, int], raw: bytes) -> str:
        unit = _relabel_target(raw)
        if unit is None:
            return self._dead_text(txn, label, raw)
        return (f"label {self._label_text(txn, label)} on {self._ref(unit)} is voided: "
                f"relabel {self._ref(unit)} again, this label as OLD")

    def _label_text(self, txn, label: tuple[int, int]) -> str:
        """``3:17 case_outer 1ABC...``: a label for a person (unit, role, printed code)."""
        uid, r = label
        role = self.spec.role_by_index(r).name
        batch = self.data.batches.find_in(txn, uid >> 32)
        return f"{self._ref(uid)} {role} {self.data.codes.code(batch, uid & _LOW, role)}"

    def _dead_text(self, txn, label: tuple[int, int], raw: bytes) -> str:
        """Why a dead label is refused, naming the label that stands in its place now."""
        by = _replaced_by(raw)
        if by[0] == label[0]:
            return (f"label {self._label_text(txn, label)} is void: the "
                    f"{self.spec.role_by_index(by[1]).name} label of its unit replaced "
                    "another unit's label (relabel), and its other codes were voided with it")
        live = self._live(txn, by)  # NOTE: a replacement label replaced in turn
        return (f"label {self._label_text(txn, label)} was replaced by label "
                f"{self._label_text(txn, live)} (relabel): use the new label")

    def _live(self, txn, label: tuple[int, int]) -> tuple[int, int]:
        """The label in use in place of ``label``: itself, unless a relabel made it dead,
        then the one that replaced it (followed while that was replaced in turn). A spare
        code of a replacement label's unit (dead, never applied to anything) is its own."""
        while (raw := txn.get(_LABEL.pack(*label), None, self._relabel_db)) is not None \
                and raw[0] == _DEAD:
            by = _replaced_by(raw)
            if by[0] == label[0]:
                break
            label = by
        return label

    def _own_events(self, txn, uid: int, kind: str | None = None):
        """``(event id, summary)`` of the events in unit ``uid``'s own history
        (``agg_unit_events``), oldest first; only those of ``kind`` if given."""
        cur = txn.cursor(db=self._unit_events_db)
        if not cur.set_key(_Q.pack(uid)):
            return
        for e in cur.iternext_dup():
            eid = _Q.unpack(e)[0]
            h = self._event_summary(txn, eid)
            if h is not None and (kind is None or h["type"] == kind):
                yield eid, h

    def _history_types(self, txn, uid: int) -> list[str]:
        """The kinds of the events in a unit's own history (``agg_unit_events``), oldest
        first, each once; but ``load``: a load joins it only with the move, unpack or
        replace that took the unit out (:meth:`_keep_loads`), which names it already."""
        return list(dict.fromkeys(h["type"] for _, h in self._own_events(txn, uid) if h["type"] != "load"))

    def _in_relabel(self, txn, uid: int) -> bool:
        """Has a code of this unit been either side of a relabel?"""
        cur = txn.cursor(db=self._relabel_db)
        return cur.set_range(_Q.pack(uid)) and cur.key()[:8] == _Q.pack(uid)

    def code_of(self, uid: int, role: str | None = None, txn=None) -> str:
        """The code of a unit's label in use (its first role unless ``role``): the code as
        generated, or the replacement label a relabel put on it (标签替换), so that the
        code an operator copies from a trace is one that commands take. Read in ``txn`` if
        given (a trace's own read transaction)."""
        if txn is None:
            with self.store.read() as read:
                return self.code_of(uid, role, read)
        batches = self.data.batches
        batch = batches.find_in(txn, uid >> 32)
        if batch is None:
            raise NotFound(f"no batch {uid >> 32}")
        role = role or batch.roles[0]
        live, r = self._live(txn, (uid, self.spec.role(role).index))
        if live != uid:
            batch = batches.find_in(txn, live >> 32)
            role = self.spec.role_by_index(r).name
        return self.data.codes.code(batch, live & _LOW, role)

    def describe(self, uid: int, render: bool = True, txn=None) -> dict:
        """A unit for a trace; with ``render`` its code (:meth:`code_of`, in ``txn``)."""
        b = uid >> 32
        lv = self._levels.get(b) or self.level_of(uid)
        d = {"uid": uid, "batch": b, "serial": uid & _LOW, "level": lv}
        if render:
            d["code"] = self.code_of(uid, None, txn)
        return d

    # -- low-level link helpers (inside a write txn) -----------------------------------------
    def _parent(self, txn, uid: int) -> int | None:
        got = self.c2p.find(txn, uid)
        return None if got is None else _Q.unpack(got[2])[0]

    def _children_runs(self, txn, parent: int) -> list[tuple[int, int]]:
        raw = txn.get(_Q.pack(parent), db=self._p2c_db)
        return [] if raw is None else _decode_children(raw)

    def children(self, txn, parent: int) -> list[int]:
        return [f + i for f, n in self._children_runs(txn, parent) for i in range(n)]

    def _child_count(self, txn, parent: int) -> int:
        raw = txn.get(_Q.pack(parent), db=self._p2c_db)
        return 0 if raw is None else _children_count(raw)

    def _set_children(self, txn, parent: int, runs: list[tuple[int, int]]) -> None:
        if runs:
            txn.put(_Q.pack(parent), _encode_children(runs), db=self._p2c_db)
        else:
            txn.delete(_Q.pack(parent), db=self._p2c_db)

    def _add_run(self, txn, parent: int, first: int, last: int) -> None:
        txn.put(_Q.pack(last), _c2p_value(first, last, parent), db=self._c2p_db)
        self._set_children(txn, parent,
                           self._children_runs(txn, parent) + [(first, last - first + 1)])

    def _unlink(self, txn, uid: int, loads: dict | None = None) -> int | None:
        """Remove the link of one child; returns its old parent. The loads that put it
        there join its own history (:meth:`_keep_loads`); ``loads`` is the caller's memo
        of them, for one operation."""
        got = self.c2p.find(txn, uid)
        if got is None:
            return None
        first, last, payload = got
        parent = _Q.unpack(payload)[0]
        self._keep_loads(txn, uid, parent, {} if loads is None else loads)
        self.c2p.delete(txn, last)
        self._set_children(txn, parent, [r for r in self._children_runs(txn, parent)
                                         if r[0] != first])
        if first < uid:
            self._add_run(txn, parent, first, uid - 1)
        if uid < last:
            self._add_run(txn, parent, uid + 1, last)
        return parent

    def _keep_loads(self, txn, uid: int, parent: int, loads: dict) -> None:
        """Index under ``uid`` the load events that put it into ``parent``, as it leaves
        it: a load indexes its event under parents only (a per-child write for millions of
        children would cost too much), and a trace reads the events of the unit and its
        ancestors now, so without this the unit's load would drop out of its history.

        PERF: the parent's load events (usually one) are read once per operation
        (``loads``: event id -> its runs, sorted by first child); a unit's run is found by
        bisection. Only units taken out of a parent pay this (move, unpack, replace)."""
        got = loads.get(("p", parent))
        if got is None:
            got = loads[("p", parent)] = [eid for eid, _ in self._own_events(txn, parent, "load")]
        for eid in got:
            runs = loads.get(eid)
            if runs is None:
                parents, firsts, counts = self._load_runs_in(txn, eid)
                order = np.argsort(firsts, kind="stable")
                runs = loads[eid] = (parents[order], firsts[order], counts[order])
            parents, firsts, counts = runs
            i = int(np.searchsorted(firsts, np.uint64(uid), side="right")) - 1
            # NOTE: runs of one load never overlap (a child goes into one parent)
            if i >= 0 and uid < int(firsts[i]) + int(counts[i]) and int(parents[i]) == parent:
                txn.put(_Q.pack(uid), u64(eid), db=self._unit_events_db)

    def _ancestors(self, txn, uid: int) -> list[int]:
        out = []
        cur = txn.cursor(db=self._c2p_db)
        while True:
            if not cur.set_range(_Q.pack(uid)):
                break
            first, parent = _c2p_decode(_Q.unpack(cur.key())[0], cur.value())
            if first > uid:
                break
            out.append(parent)
            uid = parent
            if len(out) > len(self.spec.levels):  # NOTE: cannot happen (levels strictly nest)
                break
        return out

    def _descendants(self, txn, uid: int) -> list[int]:
        out, todo = [], [uid]
        while todo:
            nxt = []
            for p in todo:
                kids = self.children(txn, p)
                out.extend(kids)
                if kids and self._has_child_level(kids[0]):
                    nxt.extend(kids)
            todo = nxt
        return out

    def _has_child_level(self, uid: int) -> bool:
        lv = self.level_of(uid)
        return lv is not None and self._depth[lv] + 1 < len(self.spec.levels)

    def _voided(self, txn, uid: int) -> bool:
        return self.voids.find(txn, uid) is not None

    def _event(self, txn, kind: str, now: float | None, index=(), **fields) -> int:
        eid = self.store.next_id(txn, "agg_event")
        rec = {"id": eid, "type": kind, "time": time.time() if now is None else now, **fields}
        txn.put(u64(eid), pack(rec), db=self._events_db)
        for uid in set(index):  # history of these units (bulk loads index parents only)
            if uid is not None:  # e.g. a moved unit's previous parent when it had none
                txn.put(_Q.pack(uid), u64(eid), db=self._unit_events_db)
        return eid

    def events(self) -> list[dict]:
        with self.store.read() as txn:
            return [unpack(v) for _, v in txn.cursor(db=self._events_db)]

    def load_runs(self, eid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(parents, first children, counts) of the runs a load event added, in child
        order. Stored in parts under ``eid`` (u64) + part (u32); see
        ``engine.ingest._pack_load_runs``. A key of the eid alone is the older
        single-part layout."""
        with self.store.read() as txn:
            return self._load_runs_in(txn, eid)

    def _load_runs_in(self, txn, eid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`load_runs` read in ``txn`` (a write transaction's own)."""
        from engine.ingest import _unpack_load_runs

        parts = []
        cur = txn.cursor(db=self._load_runs_db)
        prefix = u64(eid)
        if cur.set_range(prefix):
            for k, v in cur:
                if k[:8] != prefix:
                    break
                if len(k) == 8:  # the older layout: one part, not byte-planed
                    n, blob = unpack(v)
                    body = zlib.decompress(blob)
                    parts.append((np.frombuffer(body, "<u8", n).astype(np.uint64),
                                  np.cumsum(np.frombuffer(body, "<i8", n, 8 * n)
                                            ).astype(np.uint64),
                                  np.frombuffer(body, "<u4", n, 16 * n).astype(np.uint64)))
                else:
                    parts.append(_unpack_load_runs(v))
        if not parts:
            e = np.empty(0, np.uint64)
            return e, e, e
        return tuple(np.concatenate(col) for col in zip(*parts))  # type: ignore[return-value]

    def event(self, eid: int) -> dict:
        with self.store.read() as txn:
            raw = txn.get(u64(eid), db=self._events_db)
        if raw is None:
            raise NotFound(f"no event {eid}")
        return unpack(raw)

    def _check_place(self, txn, child: int, parent: int, adding: int = 1) -> None:
        cl, pl = self.level_of(child, txn), self.level_of(parent, txn)
        if cl is None or pl is None or self._depth[cl] != self._depth[pl] + 1:
            raise Conflict(f"a {cl} cannot go directly into a {pl} (packaging spec: "
                           + " > ".join(lv.name for lv in self.spec.levels) + ")")
        if self._voided(txn, parent):
            raise Conflict(f"{pl} {self._ref(parent)} is voided")
        if self._child_count(txn, parent) + adding > self._capacity[pl]:
            raise Conflict(f"{pl} {self._ref(parent)} would hold more than {self._capacity[pl]}")

    def _ref(self, uid: int) -> str:
        b, s = split_unit(uid)
        return f"{b}:{s}"

    # -- line collection ---------------------------------------------------------------------
    def load(self, source, *, skip_bad: bool = False, reject_file=None, fmt: str | None = None,
             name: str | None = None, now: float | None = None,
             chunk_bytes: int | None = None, again: bool = False) -> LoadReport:
        """Load a line-collection file (CSV or JSON lines; see :mod:`engine.ingest`). A file
        loaded before (the same content) is not loaded again unless ``again``: the report's
        ``already_loaded`` names that load (a re-run would undo unpacks and moves since)."""
        from engine.ingest import CHUNK_BYTES, load_links

        return load_links(self, source, skip_bad=skip_bad, reject_file=reject_file, fmt=fmt,
                          name=name, now=now, chunk_bytes=chunk_bytes or CHUNK_BYTES, again=again)

    def link(self, parent_code: str, child_codes: list[str], *, now: float | None = None) -> int:
        """Pack children into a parent (one record of a line collection); returns links added.

        A child in other hands than the parent's is refused (:class:`Conflict`), as in
        :meth:`move`."""
        parent_label = self._label(parent_code)
        labels = [self._label(c) for c in child_codes]
        with self.store.write() as txn:
            parent = self._resolve(txn, parent_label)
            kids = [self._resolve(txn, k) for k in labels]
            added = []
            place = self._place(txn, parent)
            for k in kids:
                cur = self._parent(txn, k)
                if cur == parent:
                    continue
                if cur is not None:
                    raise Conflict(f"{self._ref(k)} is already packed in {self._ref(cur)}")
                if self._voided(txn, k):
                    raise Conflict(f"{self._ref(k)} is voided")
                self._check_place(txn, k, parent)
                place = self._refuse_other_hands(txn, k, parent, place, "pack it")
                self._add_run(txn, parent, k, k)
                added.append(k)
            if added:
                self._event(txn, "pack", now, [parent, *added], parent=parent, children=added)
        return len(added)

    # -- warehouse operations ------------------------------------------------------------------
    def unpack(self, parent_code: str, child_codes: list[str] | None = None, *,
               now: float | None = None) -> list[int]:
        """Take children (all, or the given ones) out of a parent; returns their uids."""
        parent_label = self._label(parent_code)
        # NOTE: verified before the write transaction, not while it holds the writer lock
        labels = [self._label(c) for c in child_codes or ()]
        with self.store.write() as txn:
            parent = self._resolve(txn, parent_label)
            given = list(dict.fromkeys(self._resolve(txn, k) for k in labels))  # once each
            if given:
                kids = given
                for k in kids:
                    if self._parent(txn, k) != parent:
                        raise Conflict(f"{self._ref(k)} is not in {self._ref(parent)}")
            else:
                kids = self.children(txn, parent)
            self._unpack_in(txn, parent, kids, now)
        return kids

    def _unpack_in(self, txn, parent: int, kids: list[int], now: float | None) -> None:
        """Take ``kids`` out of ``parent``, each keeping the shipment it resolved to
        (:meth:`_keep_shipment`), and record an ``unpack`` event (none for no kids)."""
        above = self._resolved(txn, parent)  # what every child resolves to through it
        kept: list = []
        loads: dict = {}
        for k in kids:
            sid = self._keep_shipment(txn, k, above)
            if sid is not None:
                kept.append([k, sid])
            self._unlink(txn, k, loads)
        if kids:
            extra = {"kept_shipments": kept} if kept else {}
            self._event(txn, "unpack", now, [parent, *kids], parent=parent, children=kids,
                        **extra)

    def move(self, codes: list[str], to: str, *, now: float | None = None) -> list[int]:
        """Move units into another parent (from wherever they are); returns uids moved.

        A moved unit keeps the distributor it had: if its shipment came through its old
        parent, that shipment is first recorded on the unit itself (a distributor
        rebuilding pallets 拆垛组垛 still holds the cases; the event's ``kept_shipments``
        lists the ``[unit, shipment id]`` so recorded, 0 = returned to the brand).

        NOTE: a unit goes onto a parent in the same hands: with the unit's distributor, or
        with none when the unit is with none (never shipped, or returned to the brand), or
        onto an empty parent with no distributor (a fresh pallet label, which then takes
        the hands of the first unit moved onto it). A parent with no distributor of its
        own is in the hands most of its goods are in (a rebuilt pallet is its cases'
        distributor's, the brand's pallet the brand's). Elsewhere the unit is refused with
        a :class:`Conflict` naming it, both hands and what to do first (:meth:`_place`,
        :meth:`_hands_text`; :meth:`link` and the line-collection load apply the same
        rule): a ship, transfer or return records the change of hands, then the move. A
        parent, or a moved unit, holding goods of other hands too (left by an older
        release) is refused whatever the hands, naming those goods and the unpack that
        takes them out. Nothing is moved when one unit is refused.
        """
        target_label = self._label(to)
        labels = [self._label(c) for c in codes]
        with self.store.write() as txn:
            target = self._resolve(txn, target_label)
            units = [self._resolve(txn, u) for u in labels]
            moved, old, kept = [], [], []
            loads: dict = {}
            place = self._place(txn, target)
            for u in dict.fromkeys(units):
                cur = self._parent(txn, u)
                if cur == target:
                    continue
                self._refuse_voided(txn, u, "moved")
                self._check_place(txn, u, target)
                above = self._resolved(txn, u)  # PERF: its ancestors walked once
                place = self._refuse_other_hands(txn, u, target, place, "move it", above[1])
                if cur is not None:
                    sid = self._keep_shipment(txn, u, above)
                    if sid is not None:
                        kept.append([u, sid])
                    self._unlink(txn, u, loads)
                self._add_run(txn, target, u, u)
                moved.append(u)
                old.append(cur)
            if moved:
                extra = {"kept_shipments": kept} if kept else {}
                self._event(txn, "move", now, [target, *moved, *old], parent=target,
                            children=moved, previous=old, **extra)
        return moved

    def replace(self, old_code: str, new_code: str, *, now: float | None = None) -> int:
        """Replace a damaged label: the new unit takes the old one's parent, children,
        activation and shipment; the old code is voided (and its batch, when that was the
        batch's last unit not voided). Returns the event id.

        The new label must be fresh (:meth:`_refuse_unfresh`): not aggregated (one packed
        and emptied again may be), never relabelled, not voided nor activated, and with no
        shipment record of its own (a label shipped or returned on its own is refused). It then
        resolves to exactly the shipment the old label resolved to (the old one's own
        record, or through the same parent), so the children moved under it keep their
        distributor without a record of their own.
        """
        old_label, new_label = self._label(old_code), self._label(new_code)
        with self.store.write() as txn:
            old, new = self._resolve(txn, old_label), new_label[0]
            if old == new:
                raise ValueError("old and new code are the same unit")
            if self.level_of(old, txn) != self.level_of(new, txn):
                raise Conflict(f"a {self.level_of(new, txn)} label cannot replace a "
                               f"{self.level_of(old, txn)}")
            if self._voided(txn, old):
                raise Conflict(f"{self._ref(old)} is already voided")
            self._refuse_unfresh(txn, new, allow_emptied=True)
            loads: dict = {}
            parent = self._unlink(txn, old, loads)
            if parent is not None:
                self._add_run(txn, parent, new, new)
            kids = self.children(txn, old)
            for k in kids:
                self._unlink(txn, k, loads)
                self._add_run(txn, new, k, k)
            act = self.active.find(txn, old)
            if act is not None:
                self.active.put(txn, new, new, act[2])
                self.data.batches.count_activated(txn, {new >> 32: 1})
            ship = txn.get(_Q.pack(old), db=self._ship_db)
            if ship is not None:
                txn.put(_Q.pack(new), ship, db=self._ship_db)
                txn.delete(_Q.pack(old), db=self._ship_db)
            eid = self._event(txn, "replace", now, [old, new, parent], old=old, new=new,
                              parent=parent, children=kids)
            self.voids.put(txn, old, old, _I.pack(eid))
            self._follow_voids(txn, [old >> 32])
        return eid

    def _refuse_unfresh(self, txn, n: int, *, allow_emptied: bool = False,
                        role: str | None = None) -> None:
        """Conflict unless unit ``n`` is fresh, as :meth:`replace` and :meth:`relabel` take
        one: never either side of a relabel, not voided, not aggregated, no shipment record
        of its own, not activated; and, unless ``allow_emptied`` (a whole spare carton for
        :meth:`replace` may be one packed and emptied again, 拆补包装), never aggregated
        before either (a relabel puts only its outer label on another item, and the inner
        code would stay in a carton of its own history). Never scanned: its ``role`` code
        (a relabel's label), or any of its codes (:meth:`_refuse_scanned`)."""
        if self._in_relabel(txn, n):
            raise Conflict(f"{self._ref(n)} was part of a relabel already; use a fresh label")
        if self._voided(txn, n):
            raise Conflict(f"{self._ref(n)} is voided; use a fresh label")
        if self._parent(txn, n) is not None or self._children_runs(txn, n):
            raise Conflict(f"{self._ref(n)} is already aggregated; use a fresh label")
        own = txn.get(_Q.pack(n), db=self._ship_db)
        if own is not None:
            raise Conflict(f"{self._ref(n)} has a shipment record of its own "
                           f"({self._shipment_text(txn, _I.unpack(own)[0])}); use a fresh "
                           "label, one that was never shipped")
        if self.active.find(txn, n) is not None:
            raise Conflict(f"{self._ref(n)} is activated (it carries a product of its own); "
                           "use a fresh label, one never activated")
        self._refuse_scanned(txn, n, role)
        # NOTE: unpacked or moved out, a unit is no longer linked, but every pack, unpack
        # and move indexes it (a line-collection load indexes parents, and its children
        # stay linked until one of those): any history is refused
        past = () if allow_emptied else self._history_types(txn, n)
        if past:
            raise Conflict(f"{self._ref(n)} has a history ({', '.join(past)}): a label once "
                           "aggregated is not fresh; use a fresh label, one never aggregated")

    def _refuse_scanned(self, txn, n: int, role: str | None = None) -> None:
        """Conflict if unit ``n``'s ``role`` code (None: any of its codes) was ever scanned:
        a label scanned before it was put on anything (answered inactive, kept as evidence)
        is a stray or leaked one, and its scan record would become the unit's (a first scan
        answered "scanned before", with a time and place from before the label existed on
        it). A relabel uses one code of the spare (its others die): only that one counts."""
        level = self.level_of(n, txn)
        if level is None:
            return
        for name in (role,) if role else self.spec.level(level).roles:
            rec = record_in(txn, self._records_db, n, self.spec.role(name).index)
            if rec is not None:
                where = f" in region {rec.first_region}" if rec.first_region else ""
                raise Conflict(f"{self.code_of(n, name, txn)} ({name} of {self._ref(n)}) was "
                               f"scanned {rec.count} time"
                               f"{'s' if rec.count != 1 else ''} before it was put on anything "
                               f"(first at {china_time(rec.first_at)}{where}): a label scanned "
                               "before use is a stray or leaked one, kept as evidence; use "
                               "another fresh label")

    def relabel(self, old_code: str, new_code: str, *, now: float | None = None) -> int:
        """Replace one damaged label of a unit (标签替换), keeping the unit: ``new_code`` stands
        for it from now on, ``old_code`` is dead (scans answer ``voided``; commands given it
        refuse, naming the new label). The unit keeps its other codes (the inner code under
        a cap or inside a case still scans as before), its parent, children, activation,
        shipment and its other codes' scan records; ``new_code`` gets a scan record of its
        own, ``old_code`` keeps its own (see :meth:`engine.scanlog.ScanLog.record`).
        Returns the event id (a ``relabel`` in the unit's history).

        ``old_code`` is any code of the unit, or a label an earlier relabel put on it (the
        replacement damaged in turn). ``new_code`` is a code of the same role, fresh: of a
        unit never aggregated, voided, shipped or activated, none of whose codes was either
        side of a relabel, and with no history at all (a carton packed and emptied again,
        拆补包装, is refused). Its unit's other codes (never applied to anything) die with it.
        To swap the whole item, use :meth:`replace`.
        """
        old, new = self._label(old_code), self._label(new_code)
        role = self.spec.role_by_index(old[1]).name
        if old[1] != new[1]:
            raise ValueError(f"a {self.spec.role_by_index(new[1]).name} code cannot replace a "
                             f"{role} label: give a fresh {role} code as NEW (to swap the "
                             "whole unit, use replace)")
        if old[0] == new[0]:
            raise ValueError("old and new code are the same label")
        db = self._relabel_db
        with self.store.write() as txn:
            raw = txn.get(_LABEL.pack(*old), db=db)
            # NOTE: a replacement label voided since is taken as OLD (see _resolve)
            unit = old[0] if raw is None else _relabel_target(raw)
            if unit is None:
                raise Conflict(self._dead_text(txn, old, raw))
            n = new[0]
            if self._voided(txn, unit):
                raise Conflict(f"{self._ref(unit)} is voided: a voided unit is not relabelled")
            self._refuse_unfresh(txn, n, role=role)
            eid = self._event(txn, "relabel", now, [unit], unit=unit, role=role, old=old[0],
                              new=n)
            # NOTE: whether the unit was scanned in this role under a label before (the
            # scan rate's first scans: admin.stats), kept with the new label
            seen = record_in(txn, self._records_db, *old) is not None or (
                raw is not None and _relabel_seen(raw))
            txn.put(_LABEL.pack(*new), bytes((_ALIAS,)) + _Q.pack(unit) + bytes((seen,)), db=db)
            dead = bytes((_DEAD,)) + _LABEL.pack(*new)
            txn.put(_LABEL.pack(*old), dead, db=db)
            for r in self.spec.level(self.level_of(n, txn)).roles:
                if r != role:  # NOTE: the spare codes of the new label's unit
                    txn.put(_LABEL.pack(n, self.spec.role(r).index), dead, db=db)
        return eid

    def _unit_runs(self, batch: int | None, serial_range: tuple[int, int, int] | None
                   ) -> list[tuple[int, int]]:
        """Unit-id runs (first, last) for a whole batch and/or a serial range (stop exclusive)."""
        runs = []
        if batch is not None:
            b = self.data.batches.get(batch)
            runs.append((unit_id(b.id, 0), unit_id(b.id, b.count - 1)))
        if serial_range is not None:
            bid, a, z = serial_range
            b = self.data.batches.get(bid)
            if a >= z:
                raise ValueError(f"serial range {a}:{z} is empty: give START:STOP with START < STOP "
                                 "(STOP exclusive)")
            if not 0 <= a < z <= b.count:
                raise ValueError(f"serial range {a}:{z} is outside batch {bid} (0:{b.count})")
            runs.append((unit_id(bid, a), unit_id(bid, z - 1)))
        return runs

    def void(self, codes: list[str] = (), *, batch: int | None = None,
             serial_range: tuple[int, int, int] | None = None, reason: str = "",
             now: float | None = None) -> int:
        """Void codes, a serial range ``(batch, start, stop)`` (stop exclusive) or a batch.
        Returns the number of units newly voided. A batch all of whose units are then
        voided is marked ``voided`` (its packs are refused)."""
        labels = [self._label(c) for c in codes]
        ranges = self._unit_runs(batch, serial_range)
        if not labels and not ranges:
            raise ValueError("nothing to void: give codes, a batch or a serial range")
        with self.store.write() as txn:
            # NOTE: a replacement label voids the unit it stands for, with all its codes
            units = [self._resolve(txn, u) for u in labels]
            runs = [(u, u) for u in units] + ranges
            todo = []
            for f, l in runs:
                todo += self.voids.gaps(txn, f, l)
            todo = sorted(set(todo))
            merged: list[list[int]] = []
            for f, l in todo:  # NOTE: gaps of overlapping requests may overlap; merge them
                if merged and f <= merged[-1][1] + 1 and (f >> 32) == (merged[-1][0] >> 32):
                    merged[-1][1] = max(merged[-1][1], l)
                else:
                    merged.append([f, l])
            n = 0
            if merged:
                eid = self._event(txn, "void", now, units, runs=merged, reason=reason)
                for f, l in merged:
                    for gf, gl in self.voids.gaps(txn, f, l):
                        self.voids.put(txn, gf, gl, _I.pack(eid))
                        n += gl - gf + 1
            self._follow_voids(txn, {f >> 32 for f, _ in runs})
        return n

    def _follow_voids(self, txn, batch_ids) -> None:
        """Mark ``voided`` each of these batches whose units are all voided now (in the
        transaction that voided them: :meth:`void`, :meth:`replace`)."""
        for b in sorted(batch_ids):
            batch = self.data.batches.find_in(txn, b)
            if batch.state != "voided" and self.voids.covers(txn, unit_id(b, 0),
                                                             unit_id(b, batch.count - 1)):
                self.data.batches.mark_voided(txn, b)

    # -- activation ----------------------------------------------------------------------------
    def activate(self, *, sku: str, name: str, lot: str, production_date: str, line: str = "",
                 gtin: str | None = None, batch: int | None = None,
                 serial_range: tuple[int, int, int] | None = None, pallets: list[str] = (),
                 now: float | None = None) -> dict:
        """Bind a product, lot, production date and line to a batch, a serial range
        ``(batch, start, stop)`` or everything under the given pallets (and the pallets).

        A voided pallet is refused (Conflict): a destroyed or recalled label is no handle
        on goods. Voided units are left out (``voided_skipped`` in the record), and so are the units a
        relabel took a label from (``relabel_skipped``, see :meth:`_label_donors`): none
        of their codes stands for them. A batch or range that overlaps an activation is refused,
        but for the spares a :meth:`replace` gave a replaced unit's activation: they keep it
        and are left out (``replaced_skipped``). Pallets may be activated again: what was
        packed on them since is activated, units already active keep their activation
        (``already_active``); refused only when nothing is left to activate."""
        for label, value in (("sku", sku), ("name", name), ("lot", lot)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{label} is required")
            check_text(value, label)  # NOTE: shown in scan answers, trace and listings
        if line:
            check_text(line, "line")
        try:
            if not (isinstance(production_date, str) and len(production_date) == 10
                    and production_date[4] == production_date[7] == "-"):
                raise ValueError  # NOTE: fromisoformat also takes 20260101 and 2026W011
            production_date = _dt.date.fromisoformat(production_date).isoformat()
        except (TypeError, ValueError):
            raise ValueError(
                f"production date must be YYYY-MM-DD, got {production_date!r}") from None
        if gtin is not None:  # NOTE: kept as GTIN-14, as products keep theirs (one form)
            gtin = check_gtin(gtin).zfill(14)
        chosen = sum(x is not None and x != [] and x != () for x in (batch, serial_range, pallets))
        if chosen != 1:
            raise ValueError("activate exactly one of: a batch, a serial range, pallets")
        runs: list[tuple[int, int]] = []
        pallet_units: list[int] = []
        if batch is not None or serial_range is not None:
            runs += self._unit_runs(batch, serial_range)
        else:
            pallet_units = [self.unit(p) for p in pallets]
            self._refuse_not_pallets(pallets, pallet_units)
            with self.store.read() as txn:
                uids = set(pallet_units)
                for p in pallet_units:
                    uids.update(self._descendants(txn, p))
            f, l, _ = _runs(np.array(sorted(uids), np.uint64))
            runs = list(zip(f.tolist(), l.tolist()))
        record = {"sku": sku, "name": name, "gtin": gtin, "lot": lot,
                  "production_date": production_date, "line": line,
                  "time": time.time() if now is None else now}
        with self.store.write() as txn:
            asked = sum(l - f + 1 for f, l in runs)
            took: list[int] = []  # spares a replace gave an activation (batch or range)
            if pallet_units:
                for p in pallet_units:  # NOTE: as ship, move and return refuse it
                    self._refuse_voided(txn, p, "used to activate the goods under it")
                runs = [g for f, l in runs for g in self.active.gaps(txn, f, l)]
            else:
                for f, l in runs:
                    for hf, hl, act in self.active.overlapping(txn, f, l):
                        if hf != hl or not self._took_activation(txn, hf, act):
                            raise Conflict(f"units {self._ref(max(f, hf))}.. are already "
                                           f"activated (activation {_I.unpack(act)[0]})")
                        took.append(hf)
                runs = [g for f, l in runs for g in _split_around(f, l, took)]
                asked -= len(took)
            not_active = sum(l - f + 1 for f, l in runs)
            runs = [g for f, l in runs for g in self.voids.gaps(txn, f, l)]
            not_voided = sum(l - f + 1 for f, l in runs)
            runs = [g for f, l in runs for g in self._without_donors(txn, f, l)]
            units = sum(l - f + 1 for f, l in runs)
            if not units:
                raise Conflict("nothing to activate: every unit asked for is already activated, "
                               "voided, gave its label away in a relabel or took a replaced "
                               "unit's activation")
            aid = self.store.next_id(txn, "agg_activation")
            record["id"] = aid
            record["units"] = units
            record["already_active"] = asked - not_active
            record["voided_skipped"] = not_active - not_voided
            record["relabel_skipped"] = not_voided - units
            record["replaced_skipped"] = len(took)
            record["event_id"] = self._event(txn, "activate", now, pallet_units, activation=aid,
                                             runs=[[f, l] for f, l in runs])
            txn.put(u32(aid), pack(record), db=self._activations_db)
            per_batch: dict[int, int] = {}
            for f, l in runs:
                self.active.put(txn, f, l, _I.pack(aid))
                per_batch[f >> 32] = per_batch.get(f >> 32, 0) + l - f + 1
            self.data.batches.count_activated(txn, per_batch)
        return record

    def _refuse_not_pallets(self, codes: list[str], units: list[int]) -> None:
        """ValueError for a code given as a pallet's that is another level's (a case's):
        activating "a pallet" would activate only that case and what it holds."""
        top = self.spec.levels[0].name
        for code, u in zip(codes, units):
            level = self.level_of(u)
            if level != top:
                raise ValueError(f"{code} is a {level} code, not a {top}'s: give the {top} it is "
                                 f"on (everything on it is activated with it), or activate the "
                                 f"{level} as a serial range of batch {u >> 32}")

    def _took_activation(self, txn, uid: int, act: bytes) -> bool:
        """Whether unit ``uid``'s activation ``act`` (an ``agg_active`` payload) is one a
        :meth:`replace` gave it: a spare label taking a replaced unit's place (and
        activation). Such a unit is active on its own, one unit long; the replace event is
        in its history (``agg_unit_events``) naming it as ``new``, and the old unit has the
        same activation.

        PERF: called only for the units an activated run overlaps (a few per batch)."""
        for eid, _ in self._own_events(txn, uid, "replace"):
            rec = unpack(txn.get(u64(eid), db=self._events_db))
            if rec.get("new") == uid:
                old = self.active.find(txn, rec["old"])
                return old is not None and old[2] == act
        return False

    def _label_donors(self, txn, first: int, last: int) -> list[int]:
        """The units of ``first..last`` (one batch) that no code stands for: each the NEW
        of a relabel, whose label stands for another unit while its other codes are dead
        (a replacement label's spare codes). Such a unit is no item: activated, it would
        count a second time the unit it gave its label to. A unit every label of which
        was replaced in turn is not one: each of its labels leads, through the labels that
        replaced it, to a replacement label standing for it.

        PERF: one ``set_range`` on ``agg_relabel``, and a few reads per unit found there
        (relabels are rare)."""
        cur = txn.cursor(self._relabel_db)
        found = cur.set_range(_Q.pack(first))
        out: list[int] = []
        while found:
            uid = _LABEL.unpack(cur.key())[0]
            if uid > last:
                break
            labels = []
            while found and _LABEL.unpack(cur.key())[0] == uid:
                labels.append(_LABEL.unpack(cur.key()))
                found = cur.next()
            # NOTE: a role without a record is a code standing for its own unit
            if len(labels) == len(self.spec.level(self.level_of(uid, txn)).roles) and all(
                    _relabel_target(txn.get(_LABEL.pack(*self._live(txn, lb)), None,
                                            self._relabel_db)) != uid for lb in labels):
                out.append(uid)
        return out

    def _without_donors(self, txn, first: int, last: int) -> list[tuple[int, int]]:
        """``first..last`` (one batch) split around its :meth:`_label_donors`."""
        return _split_around(first, last, self._label_donors(txn, first, last))

    def activation_of(self, txn, uid: int) -> dict | None:
        got = self.active.find(txn, uid)
        return None if got is None else self._activation_rec(txn, got[2])

    def is_active(self, uid: int) -> bool:
        with self.store.read() as txn:
            return self.active.find(txn, uid) is not None and not self._voided(txn, uid)

    def activated_counts(self) -> dict[str, int]:
        """Activated units per packaging level (every level of the spec, 0 if none).

        A void does not undo an activation, so voided units still count (a replaced
        label counts twice: the old unit and the new one). One pass over the activation
        runs, not over units.
        """
        out = {lv.name: 0 for lv in self.spec.levels}
        with self.store.read() as txn:
            per_batch = activated_per_batch(txn, self.active.db)
        for b, n in per_batch.items():
            lv = self.level_of(b << 32)
            if lv is not None:
                out[lv] += n
        return out

    # -- distributors and shipping ---------------------------------------------------------------
    def add_distributor(self, ident: str, name: str, territory: list[str]) -> dict:
        """A distributor with a territory: region code prefixes such as ``4401``."""
        if not isinstance(ident, str) or not ident or not ident.replace("-", "_").isidentifier():
            raise ValueError("distributor id must be letters, digits, '-' or '_'")
        check_text(name or "", "distributor name")
        terr = [str(t).strip() for t in territory]
        if not terr or not all(is_region_code(t) for t in terr):
            raise ValueError("territory must be one or more region codes (digits), e.g. 4401")
        terr = sorted({region_prefix(t) for t in terr})  # 440100 -> 4401: Guangzhou's districts in it
        rec = {"id": ident, "name": name or ident, "territory": terr}
        with self.store.write() as txn:
            if txn.get(ident.encode(), db=self._distributors_db) is not None:
                raise Conflict(f"distributor {ident} exists")
            txn.put(ident.encode(), pack(rec), db=self._distributors_db)
        return rec

    def distributors(self) -> list[dict]:
        with self.store.read() as txn:
            return [unpack(v) for _, v in txn.cursor(db=self._distributors_db)]

    def distributor(self, ident: str) -> dict:
        with self.store.read() as txn:
            raw = txn.get(ident.encode(), db=self._distributors_db)
        if raw is None:
            raise NotFound(f"no distributor {ident!r}")
        return unpack(raw)

    @staticmethod
    def in_territory(distributor: dict, region: str) -> bool:
        """Is a scan in ``region`` inside the distributor's territory? Codes are read as
        division prefixes (440100 is Guangzhou, 4401). A region coarser than the territory
        (the province, 44 or 440000, for a Guangzhou territory) is not taken as outside
        it: it may be inside, and a diversion flag withholds money."""
        # PERF: str.startswith takes a tuple of prefixes (0.6 -> 0.2 µs a scan); the rest
        # runs only for a scan that is not plainly inside
        territory = tuple(distributor["territory"])
        if str(region).startswith(territory):
            return True
        r = region_prefix(str(region))
        return any(r.startswith(t) or t.startswith(r) for t in map(region_prefix, territory))

    def _shipment_of(self, txn, chain):
        for u in chain:
            raw = txn.get(_Q.pack(u), None, self._ship_db)  # PERF: positional (scan path)
            if raw is not None:
                sid = _I.unpack(raw)[0]
                return u, sid
        return None, 0

    def _shipment_text(self, txn, sid: int) -> str:
        """A shipment record for a person: ``shipment 3 to gz-01`` or ``returned to the
        brand`` (id 0)."""
        if not sid:
            return "returned to the brand"
        rec = unpack(txn.get(u32(sid), db=self._shipments_db))  # NOTE: not cached (write txn)
        return f"shipment {sid} to {rec['distributor']}"

    def _resolved(self, txn, uid: int) -> tuple[int | None, int]:
        """``(unit holding the record, shipment id)`` a unit resolves to: its own shipment
        record or its nearest ancestor's; ``(None, 0)`` for none (id 0 = returned)."""
        return self._shipment_of(txn, [uid, *self._ancestors(txn, uid)])

    def _distributor_of(self, txn, sid: int) -> str | None:
        """The distributor of shipment ``sid``; None for no shipment or returned (0)."""
        if not sid:
            return None
        return unpack(txn.get(u32(sid), db=self._shipments_db))["distributor"]

    def _place(self, txn, parent: int, goods: dict | None = None) -> _Place | None:
        """Whose hands a unit going into ``parent`` must be in (:class:`_Place`), or None
        when any unit may go in: nothing was ever shipped, or ``parent`` has no distributor
        through its own record or an ancestor's and neither it nor any unit above it holds
        anything (a fresh pallet label, 拆垛组垛). ``goods``: what :meth:`_below` found
        of top units, kept across calls in one transaction (a load asks of many parents).

        NOTE: a parent with no distributor of its own is in the hands most of the goods of
        its topmost unit are in (:class:`_Goods`: a pallet rebuilt from A's cases is A's, as
        :meth:`_holding` and :meth:`_take_out` read it), the brand's goods counting as a
        hand: the brand's pallet at the factory, or one returned, is the brand's even with
        a case of B's left on it by an older release. Such a case is a stray
        (``_Place.strays``): the parent takes no unit until it is out. An emptied case on
        the brand's pallet is the brand's: what goes into it ships with the pallet.

        PERF: once anything was shipped, a parent with no distributor through its records is
        read whole (:meth:`_below`, a read per unit): 7.5 ms for the brand's pallet of 100
        cases of 24 caps (measured, mean of 20 calls), once per move or link."""
        if not txn.stat(self._ship_db)["entries"]:
            return None  # PERF: a store with no shipment reads nothing more
        chain = self._ancestors(txn, parent)
        via, sid = self._shipment_of(txn, [parent, *chain])
        want = self._distributor_of(txn, sid)
        if want is not None:
            return _Place(want, None, via)
        top = chain[-1] if chain else parent
        goods = {} if goods is None else goods
        found = goods.get(top)
        if found is None:
            found = goods[top] = self._below(txn, top)[1]
        if found.witness is None:
            return None
        witness = found.witness if found.hands is not None else None
        return _Place(found.hands, witness, top, found.strays)

    def _refuse_other_hands(self, txn, uid: int, parent: int, place: _Place | None,
                            then: str, sid: int | None = None) -> _Place | None:
        """:class:`Conflict` when ``uid`` may not go into ``parent``, whose hands are
        ``place`` (:meth:`_place`): the rule of :meth:`move` and :meth:`link` (see
        :meth:`_hands_text`); ``then`` ends the message (what to do once the unit has
        changed hands, e.g. ``move it``). Returns the place once ``uid`` is in: an empty
        parent takes the hands of the first unit put into it. ``sid``: what ``uid``
        resolves to (:meth:`_resolved`), when read already.

        NOTE: a parent, or a unit with no distributor through its records, holding goods of
        several hands (strays, :class:`_Goods`) is refused whatever the hands, naming the
        strays: moved, they would pass with goods of other hands.

        PERF: nothing is read when nothing was ever shipped; otherwise the unit's record
        and ancestors, and what it holds when it has no distributor through them."""
        if not txn.stat(self._ship_db)["entries"]:
            return place
        have, goods = self._holding(txn, uid, sid)
        if place is not None and place.strays:
            raise Conflict(f"{self._hands_text(txn, uid, have, parent, place)}, then {then}")
        if goods is not None and goods.strays:
            raise Conflict(f"{self._named(txn, uid)} {self._strays_text(txn, goods)}, then "
                           f"{then}")
        if place is None:
            return _Place.of_first(have, uid, parent)
        if have != place.want:
            raise Conflict(f"{self._hands_text(txn, uid, have, parent, place)}, then {then}")
        return place

    def _hands_text(self, txn, uid: int, have: str | None, parent: int, place: _Place) -> str:
        """Why ``uid``, with distributor ``have`` (None: none), may not go into ``parent``,
        whose hands are ``place``, and what to do first; each unit by its printed code.

        NOTE: the rule of :meth:`move`, :meth:`link` and the line-collection load: a unit
        goes into a parent in the same hands, a distributor's or the brand's (never
        shipped, or returned), or into an empty one. Elsewhere it would sit on a pallet of
        B while its own record says A (or silently become B's), or at the factory with a
        record of A: the ship, transfer or return of the pallet would carry it along or be
        refused later (:meth:`_check_passing`). The change of hands is recorded first. A
        parent in several hands (``place.strays``) takes no unit: the strays come out
        first (a ship or transfer of the unit would send it to a stray's hands)."""
        unit, code = self._named(txn, uid), self.code_of(uid, None, txn)
        here = self._named(txn, parent)
        if place.strays:
            which = self._strays_text(txn, _Goods(place.want, place.witness, place.strays))
            if place.top == parent:
                return f"{unit} cannot go into {here}, which {which}"
            return (f"{unit} cannot go into {here}: it is on {self._named(txn, place.top)}, "
                    f"which {which}")
        on = "" if place.top == parent else f" (on {self._named(txn, place.top)})"
        if place.want is None:
            where = f"{here}{on} is {_NONE}"
        elif place.witness is None:
            where = f"{here}{on} was shipped to {place.want}"
        else:
            goods = f"goods of {place.want} ({self._named(txn, place.witness)})"
            where = (f"{here} holds {goods}" if not on else
                     f"{here} is on {self._named(txn, place.top)}, which holds {goods}")
        if have is None:
            return (f"{unit} is {_NONE} but {where}: ship it to {place.want} first (wuma ship "
                    f"{code} --to {place.want})")
        if place.want is None:
            return (f"{unit} belongs to distributor {have} but {where}: return it to the "
                    f"brand first if it came back (wuma return {code})")
        return (f"{unit} belongs to distributor {have} but {where}: transfer it to "
                f"{place.want} first (wuma transfer {code} --to {place.want})")

    def _strays_text(self, txn, goods: _Goods, *, among: bool = True,
                     back: bool = False) -> str:
        """``holds case 2:4 1ABC... of B among goods not with a distributor (...): take that
        out first (wuma aggregate unpack ...)``: what a unit holding goods of several hands
        (``goods``, with strays) holds in other hands than most of it, each by its printed
        code (``among``: and whose the rest is), and what to do: take them out, or
        (``back``) return them on their own if they came back."""
        shown = goods.strays[:_STRAYS_NAMED]
        named = ", ".join(f"{self._named(txn, u)} {_NONE if h is None else 'of ' + h}"
                          for u, h in shown)
        if len(goods.strays) > len(shown):
            named += f", and {len(goods.strays) - len(shown)} more"
        if among:
            named += " among goods " + (_NONE if goods.hands is None else
                                        f"of {goods.hands} ({self._named(txn, goods.witness)})")
        that, its, it = (("that", "its", "it") if len(goods.strays) == 1
                         else ("those", "their", "they"))
        units = [u for u, _ in shown]
        if back:
            codes = " ".join(self.code_of(u, None, txn) for u in units)
            return (f"holds {named}: return {that} on {its} own if {it} came back (wuma "
                    f"return {codes})")
        return f"holds {named}: take {that} out first ({self._unpack_hint(txn, *units)})"

    def _keep_shipment(self, txn, uid: int, above: tuple[int | None, int]) -> int | None:
        """Before ``uid`` leaves its parent: if it has no shipment record of its own but
        resolves to one through its ancestors, record that same one on it (0 = returned),
        so that leaving the parent changes no distributor. Returns the id so recorded.

        ``above`` is what ``uid`` resolves to through its ancestors: :meth:`_resolved` of
        its parent, or of ``uid`` itself (the same when it has no record of its own)."""
        if txn.get(_Q.pack(uid), db=self._ship_db) is not None:
            return None
        via, sid = above
        if via is None:
            return None
        txn.put(_Q.pack(uid), _I.pack(sid), db=self._ship_db)
        return sid

    def _labels(self, codes, what: str) -> list[tuple[int, int]]:
        """The labels of ``codes`` (:meth:`_label`); ValueError for none."""
        labels = [self._label(c) for c in codes]
        if not labels:
            raise ValueError(f"no units to {what}")
        return labels

    def _units_once(self, txn, labels) -> list[int]:
        """The units ``labels`` stand for, each once, in order."""
        return list(dict.fromkeys(self._resolve(txn, x) for x in labels))

    def _refuse_unshipped(self, txn, uid: int, sid: int, then: str) -> None:
        """Conflict unless ``sid`` (what ``uid`` resolves to) is a shipment to a distributor
        (:meth:`_unshipped`)."""
        if not sid:
            raise self._unshipped(txn, uid, then)

    def _unshipped(self, txn, uid: int, then: str) -> Conflict:
        """The refusal of ``uid`` for not being with a distributor; ``then`` ends the
        message: what to do instead."""
        return Conflict(f"{self._named(txn, uid)} is {_NONE}: {then}")

    def _refuse_voided(self, txn, uid: int, what: str) -> None:
        # NOTE: a void marks the unit itself (trace and scan read it so), not the units
        # packed in it: a case in a voided pallet can still be shipped on its own.
        if self._voided(txn, uid):
            raise Conflict(f"{self._ref(uid)} is voided: a voided label cannot be {what} "
                           "(if it was replaced, use its new label)")

    def _named(self, txn, uid: int) -> str:
        """A unit for a person, as ``wuma trace`` shows it: ``case 2:0 1ABC...`` (level, unit,
        and the printed code of its label in use, :meth:`code_of`)."""
        return f"{self.level_of(uid, txn)} {self._ref(uid)} {self.code_of(uid, None, txn)}"

    def _unpack_hint(self, txn, *uids: int) -> str:
        """The commands that take packed units ``uids`` out of their parents, by printed
        codes: one a parent, in the order first met."""
        kids: dict[int, list[str]] = {}
        for u in uids:
            kids.setdefault(self._parent(txn, u), []).append(self.code_of(u, None, txn))
        return "; ".join(f"wuma aggregate unpack {self.code_of(p, None, txn)} "
                         + " ".join(f"--child {c}" for c in codes) for p, codes in kids.items())

    def ship(self, codes: list[str], to: str, *, now: float | None = None) -> dict:
        """Ship units (and so every unit below them) to a distributor.

        Refused when a unit is already with a distributor, by its own record or an
        ancestor's (``transfer`` moves shipped units), or holds a unit with another
        distributor. A unit below it that is with ``to`` already keeps its record (a pallet
        rebuilt from ``to``'s cases, 拆垛组垛, is shipped to ``to`` so); one returned to the
        brand ships again with it. A unit shipped without its parent is first taken out of
        it (:meth:`_take_out`: it has left it). Units that were never activated can be
        shipped.
        """
        return self._shipment("ship", codes, to, now)

    def transfer(self, codes: list[str], to: str, *, now: float | None = None) -> dict:
        """Record units passing to another distributor, with every unit below them except
        those returned to the brand (they stay returned).

        A unit packed in a parent that is not with ``to`` is first taken out of it
        (:meth:`_take_out`: a case passed on has left its pallet). A unit with no
        distributor of its own, holding goods that are all with one (a pallet rebuilt from
        a distributor's cases, 拆垛组垛), passes with them. Refused, naming the unit, when a
        unit below is with another distributor, or (for a unit with none of its own) with
        none: a transfer never carries goods from other hands along."""
        return self._shipment("transfer", codes, to, now)

    def _shipment(self, kind: str, codes, to, now) -> dict:
        self.distributor(to)
        labels = self._labels(codes, "ship")
        with self.store.write() as txn:
            units, below, taken = self._passing(txn, kind, labels, to, now)
            sid = self.store.next_id(txn, "agg_shipment")
            rec = {"id": sid, "distributor": to, "units": units, "kind": kind,
                   "time": time.time() if now is None else now, **taken}
            rec["event_id"] = self._event(txn, kind, now, units, shipment=sid, distributor=to,
                                          units=units, **taken)
            txn.put(u32(sid), pack(rec), db=self._shipments_db)
            self._bind(txn, kind, below, sid)
        return rec

    def receive(self, codes: list[str], *, now: float | None = None) -> int:
        """The distributor confirms receipt (an event; the binding was made by ``ship``)."""
        labels = self._labels(codes, "receive")
        with self.store.write() as txn:
            units = self._units_once(txn, labels)
            for u in units:
                self._refuse_voided(txn, u, "received")
                self._refuse_unshipped(txn, u, self._resolved(txn, u)[1],
                                       "ship it before receiving it")
            return self._event(txn, "receive", now, units, units=units)

    def return_goods(self, codes: list[str], *, now: float | None = None) -> int:
        """Units come back to the brand: they, and every unit below them, no longer
        belong to a distributor. A unit with no distributor of its own holding goods that
        are all with one (a rebuilt pallet) comes back with them; a unit packed in a parent
        that is with a distributor is first taken out of it (:meth:`_take_out`).
        Refused, naming the unit, when a unit below is with another distributor."""
        labels = self._labels(codes, "return")
        with self.store.write() as txn:
            units, below, taken = self._passing(txn, "return", labels, None, now)
            eid = self._event(txn, "return", now, units, units=units, **taken)
            self._bind(txn, "return", below, 0)
        return eid

    def _passing(self, txn, kind: str, labels, to: str | None, now):
        """For ``ship``, ``transfer`` and ``return`` (``to`` None: the brand): the units of
        ``labels``, each checked (:meth:`_check_passing`), the records below each
        (:meth:`_below`) and what :meth:`_take_out` took out of its parent."""
        units = self._units_once(txn, labels)
        below = {u: self._check_passing(txn, kind, u, to) for u in units}
        return units, below, self._take_out(txn, units, to, now)

    def _check_passing(self, txn, kind: str, u: int, to: str | None) -> list[tuple[int, int]]:
        """The records below ``u`` (:meth:`_below`), once ``u`` may pass to ``to`` with all
        it holds; Conflict otherwise, naming the unit in the way and what to do.

        NOTE: the rule of :meth:`_refuse_other_hands` seen from above: nothing below a unit is
        with another distributor than the unit, so that a later transfer or return of it
        reassigns no one else's goods. The distributor a unit is with is the one it
        resolves to, or for a unit with none (a pallet rebuilt 拆垛组垛) the hands most of
        what it holds is in (:class:`_Goods`, the brand's counting as a hand)."""
        self._refuse_voided(txn, u, _DONE[kind])
        via, sid = self._resolved(txn, u)
        records, goods = self._below(txn, u)
        if kind == "ship":
            if sid:
                where = "" if via == u else f", with {self._named(txn, via)}"
                raise Conflict(f"{self._named(txn, u)} was already shipped ("
                               f"{self._shipment_text(txn, sid)}{where}): use transfer to pass "
                               "it to another distributor")
            holder = to
        else:
            holder = self._distributor_of(txn, sid) or self._holder_of_contents(
                txn, kind, u, goods)
        whole = goods.hands is not None and not goods.strays  # NOTE: all it holds is with one
        for k, s in records:
            if s and self._distributor_of(txn, s) != holder:
                raise Conflict(self._elsewhere_text(txn, kind, u, k, s, holder, whole))
        return records

    def _holder_of_contents(self, txn, kind: str, u: int, goods: _Goods) -> str:
        """The distributor most of what ``u`` holds is with (``goods``), for ``u`` with none
        of its own (the others are then named as the ones in the way); Conflict when most
        of it is with none (the brand's, even holding a stray of a distributor's), or (a
        transfer) something below is with none: it would pass without a ship."""
        if goods.hands is None:
            then = "ship it instead" if kind == "transfer" else "there is nothing to return"
            if goods.strays:  # NOTE: a stray of a distributor's, left by an older release
                then += "; it " + self._strays_text(txn, goods, among=False,
                                                    back=kind == "return")
            raise self._unshipped(txn, u, then)
        holder = goods.hands
        bare = next((k for k, h in goods.strays if h is None), None)
        if kind == "transfer" and bare is not None:
            code = self.code_of(bare, None, txn)
            raise Conflict(f"{self._named(txn, bare)} inside {self._named(txn, u)} is {_NONE} "
                           f"while the rest is with {holder}: ship it to {holder} first "
                           f"(wuma ship {code} --to {holder}) or take it out "
                           f"({self._unpack_hint(txn, bare)}), then transfer")
        return holder

    def _elsewhere_text(self, txn, kind: str, u: int, k: int, sid: int, holder: str,
                        whole: bool) -> str:
        """Why ``u`` may not pass (``kind``): ``k`` below it is with shipment ``sid``, of
        another distributor than ``holder`` (in a ship the one ``u`` goes to); ``whole``:
        all ``u`` holds is with that one (then a transfer of ``u`` is the way)."""
        where = f"{self._named(txn, k)} inside {self._named(txn, u)}"
        shipment = self._shipment_text(txn, sid)
        if kind != "ship":
            return (f"{where} is with another distributor ({shipment}) than the rest "
                    f"({holder}): a {kind} would carry it along; take it out first "
                    f"({self._unpack_hint(txn, k)})")
        if whole:
            return (f"{where} was already shipped ({shipment}), as is everything {self._ref(u)} "
                    f"holds: to pass it to {holder}, transfer it (wuma transfer "
                    f"{self.code_of(u, None, txn)} --to {holder})")
        return (f"{where} was already shipped ({shipment}): transfer it to {holder} first "
                f"(wuma transfer {self.code_of(k, None, txn)} --to {holder}) or take it out "
                f"({self._unpack_hint(txn, k)}), then ship")

    def _below(self, txn, uid: int) -> tuple[list[tuple[int, int]], _Goods]:
        """What ``uid`` holds, as shipping and moves read it: ``(records, goods)``.
        ``records``: the units below it with a shipment record of their own, ``(unit,
        shipment id)`` (0 = returned), a unit's children before theirs. ``goods``: what it
        holds by hands (:class:`_Goods`), its own record aside."""
        records: list[tuple[int, int]] = []
        dist: dict[int, str | None] = {}  # shipment id -> its distributor (None: returned)

        def held(unit: int, above: tuple[str | None] | None) -> list[tuple]:
            """``(unit, hands, witness, strays)`` of each unit ``unit`` holds directly;
            ``above``: the hands of the nearest record on the way down from ``uid`` to it
            (``(hands,)``), or None for none: a unit with no record of its own is in those."""
            kids = self.children(txn, unit) if self._has_child_level(unit) else []
            deeper = bool(kids) and self._has_child_level(kids[0])  # one level, all of them
            own: list[tuple[str | None] | None] = []  # hands by a kid's own record, if any
            for k in kids:
                raw = txn.get(_Q.pack(k), db=self._ship_db)
                if raw is None:
                    own.append(above)
                    continue
                sid = _I.unpack(raw)[0]
                records.append((k, sid))
                if sid not in dist:
                    dist[sid] = self._distributor_of(txn, sid)
                own.append((dist[sid],))
            if not deeper:  # PERF: units holding nothing by level (caps): no call each
                return [(k, None if rec is None else rec[0], k, ()) for k, rec in zip(kids, own)]
            out = []
            for k, rec in zip(kids, own):
                below = held(k, rec)
                if rec is not None:
                    hands, witness = rec[0], k
                elif below:
                    hands, witness = _most_hands(below)
                    witness = k if hands is None else witness  # NOTE: a case, not its caps
                else:
                    hands, witness = None, k  # holding nothing, with no record: the brand's
                out.append((k, hands, witness, _strays_in(below, hands)))
            return out

        top = held(uid, None)
        if not top:
            return records, _Goods()
        hands, witness = _most_hands(top)
        return records, _Goods(hands, witness, _strays_in(top, hands))

    def _take_out(self, txn, units: list[int], to: str | None, now) -> dict:
        """Take each of ``units`` out of its parent when that parent is not with ``to``
        (None: the brand, for a return), as the unit has left it, unless the parent or a
        unit above it passes along: one ``unpack`` event per
        parent (:meth:`_unpack_in`). Returns ``{"taken_out": [[unit, parent], ...]}``, or
        ``{}`` for none.

        A parent with no distributor of its own or above is in the hands most of its goods
        are in (:class:`_Goods`): a distributor's (a pallet rebuilt from its cases, 拆垛组垛),
        or the brand's (a unit returned to the brand stays on it, even on the brand's pallet
        holding a stray of another distributor's)."""
        going = set(units)
        out: dict[int, list[int]] = {}
        for u in units:
            chain = self._ancestors(txn, u)
            # PERF: the parent's shipment from the chain in hand (it resolves through chain)
            if chain and going.isdisjoint(chain) and self._holding(
                    txn, chain[0], self._shipment_of(txn, chain)[1])[0] != to:
                out.setdefault(chain[0], []).append(u)
        for parent, kids in out.items():
            self._unpack_in(txn, parent, kids, now)
        taken = [[k, p] for p, kids in out.items() for k in kids]
        return {"taken_out": taken} if taken else {}

    def _holding(self, txn, uid: int, sid: int | None = None) -> tuple[str | None, _Goods | None]:
        """``(hands, goods)`` of ``uid``: the distributor it is with through its own record
        or an ancestor's (``goods`` None: not read), else the hands most of its goods are in
        (a rebuilt pallet is where its cases are; ``goods``: :meth:`_below`; None: the
        brand's, holding nothing or mostly the brand's goods). ``sid``: the shipment ``uid``
        resolves to (:meth:`_resolved`), when read already."""
        have = self._distributor_of(txn, self._resolved(txn, uid)[1] if sid is None else sid)
        if have is not None:
            return have, None
        goods = self._below(txn, uid)[1]
        return goods.hands, goods

    def _bind(self, txn, kind: str, below: dict[int, list[tuple[int, int]]], sid: int) -> None:
        """Record shipment ``sid`` (0: returned) on each unit of ``below``; it governs the
        units below it, whose own records (``below[unit]``) go but those that stay
        (:func:`_record_stays`)."""
        for u, records in below.items():
            for k, s in records:
                if not _record_stays(kind, s):
                    txn.delete(_Q.pack(k), db=self._ship_db)
            txn.put(_Q.pack(u), _I.pack(sid), db=self._ship_db)

    # -- trace -----------------------------------------------------------------------------------
    def trace(self, code: str, *, history: bool = True, render: bool = False) -> dict:
        """Everything known about a code. Raises :class:`InvalidCode` for a non-genuine code.

        A replacement label (:meth:`relabel`) traces the unit it stands for; a dead label
        raises :class:`Conflict` naming the label in its place.

        With ``render`` ancestors and children carry the code of their label in use
        (:meth:`code_of`: a relabelled unit's replacement label, not its dead first code).

        PERF: on the scan path call with ``render=False`` (codes of ancestors are not
        re-generated); the ancestor walk is one LMDB ``set_range`` per level.
        """
        v = self.data.codes.verify(code)
        if not v.genuine:
            raise InvalidCode()
        uid = self._stands_for((unit_id(v.batch, v.serial), self.spec.role(v.role).index))
        out = self.trace_unit(uid, history=history, render=render)
        out["unit"]["code"] = v.code
        out["unit"]["role"] = v.role
        return out

    def trace_unit(self, uid: int, *, history: bool = True, render: bool = False) -> dict:
        # PERF: one read txn opened directly (no contextmanager), one cursor per database,
        # immutable records (activations, shipments, distributors) cached in process.
        txn = self.store.env.begin(buffers=False)
        try:
            chain, act, void, via, sid = self._unit_facts(txn, uid)
            shipment = distributor = None
            if sid:
                rec = self._shipment_rec(txn, sid)
                shipment = {"id": sid, "time": rec["time"], "via": via, "kind": rec["kind"],
                            "distributor": rec["distributor"]}
                distributor = self._distributor_rec(txn, rec["distributor"])
                distributor = None if distributor is None else dict(distributor)
            kids = self._children_runs(txn, uid) if self._has_child_level(uid) else ()
            describe = self.describe
            out = {
                "unit": describe(uid, False),
                "active": act is not None and void is None,
                "voided": void is not None,
                "product": None if act is None else dict(act["product"]),
                "activation": None if act is None else act["id"],
                "ancestors": [describe(a, render, txn) for a in chain],
                "children": [describe(f + i, render, txn) for f, n in kids for i in range(n)],
                "shipment": shipment,
                "distributor": distributor,
                "returned": via is not None and not sid,
            }
            if history:
                evs = []
                cur = txn.cursor(db=self._unit_events_db)
                for u in (uid, *chain):
                    if cur.set_key(_Q.pack(u)):
                        evs.extend(_Q.unpack(e)[0] for e in cur.iternext_dup())
                if void is not None:
                    evs.append(_I.unpack(void[2])[0])
                if act is not None:
                    evs.append(act.get("event_id") or 0)
                out_hist = []
                for e in sorted(set(x for x in evs if x)):
                    h = self._event_summary(txn, e)
                    if h is not None:
                        out_hist.append(dict(h))
                recs = out_hist
                out["history"] = recs
        finally:
            txn.abort()
        return out

    def scan_trace(self, uid: int) -> dict:
        """What a scan needs of :meth:`trace_unit`, and only that: ``active``, ``voided``,
        ``product``, ``ancestors`` (each ``{"level", "batch", "serial"}``, nearest first)
        and ``distributor`` (the record of the distributor the unit was shipped to).
        :meth:`scan_label` is the same for a scanned code (relabels looked at)."""
        return self.scan_label(uid, None)[1]

    def scan_label(self, uid: int, role_index: int | None) -> tuple[int, dict]:
        """``(unit, scan trace)`` of a scanned code of unit ``uid`` and role ``role_index``
        (see :meth:`scan_trace`): the unit is the one the code stands for, ``uid`` itself
        unless a relabel put the code on another (标签替换); a dead label, or a replacement
        label voided since, gets a voided trace of nothing (and its own ``uid``). A
        replacement label's trace also says whether its unit had a scan recorded in that
        role, under a label before it (``unit_seen``; the scan rate's first scans).

        PERF: every genuine scan calls this. One read transaction; relabels cost one more
        ``get`` (~0.3 µs). No unit description, children, shipment or history; the
        ancestors are built in the shape the scan answer carries (~8.9 -> ~6.6 µs against
        ``trace_unit(uid, history=False)``).
        """
        seen = None
        txn = self.store.env.begin(buffers=False)
        try:
            if role_index is not None:
                # PERF: positional LMDB arguments, as on the rest of the scan path
                raw = txn.get(_LABEL.pack(uid, role_index), None, self._relabel_db)
                if raw is not None:
                    unit = _relabel_unit(self.voids, txn, uid, raw)
                    if unit is None:
                        return uid, {"active": False, "voided": True, "product": None,
                                     "ancestors": [], "distributor": None}
                    uid, seen = unit, _relabel_seen(raw)
            chain, act, void, _, sid = self._unit_facts(txn, uid)
            dist = None
            if sid:
                dist = self._distributor_rec(txn, self._shipment_rec(txn, sid)["distributor"])
        finally:
            txn.abort()
        levels = self._levels
        trace = {
            "active": act is not None and void is None,
            "voided": void is not None,
            "product": None if act is None else dict(act["product"]),
            "ancestors": [{"level": levels.get(a >> 32) or self.level_of(a), "batch": a >> 32,
                           "serial": a & _LOW} for a in chain],
            "distributor": None if dist is None else dict(dist),
        }
        if seen is not None:  # a replacement label: was its unit scanned in its role before?
            trace["unit_seen"] = seen
        return uid, trace

    def _unit_facts(self, txn, uid: int):
        """``(ancestors, activation record, void run, shipped unit, shipment id)``."""
        chain = self._chain_of(txn, uid)
        act_ref = self.active.find(txn, uid)
        act = None if act_ref is None else self._activation_rec(txn, act_ref[2])
        via, sid = self._shipment_of(txn, (uid, *chain))
        return chain, act, self.voids.find(txn, uid), via, sid

    def _chain_of(self, txn, uid: int) -> list[int]:
        """The unit's ancestors, nearest first: one ``set_range`` per level."""
        c2p = txn.cursor(self._c2p_db)
        chain: list[int] = []
        depth = len(self._depth)
        u = uid
        while c2p.set_range(_Q.pack(u)):
            first, parent = _c2p_decode(_Q.unpack(c2p.key())[0], c2p.value())
            if first > u or len(chain) >= depth:
                break
            chain.append(parent)
            u = parent
        return chain

    def _activation_rec(self, txn, ref: bytes) -> dict | None:
        got = self._cache.get(("a", ref))
        if got is None:
            raw = txn.get(ref, db=self._activations_db)
            if raw is None:
                return None
            got = unpack(raw)
            got["product"] = {k: got[k] for k in ("sku", "name", "gtin", "lot", "production_date",
                                                  "line")}
            _remember(self._cache, ("a", ref), got)
        return got

    def _event_summary(self, txn, eid: int) -> dict | None:
        """Id, type, time (and parent / distributor) of an event; events never change,
        so summaries are cached (bounded)."""
        got = self._events_cache.get(eid)
        if got is None:
            raw = txn.get(u64(eid), db=self._events_db)
            if raw is None:
                return None
            r = unpack(raw)
            got = {"id": r["id"], "type": r["type"], "time": r["time"]}
            if r.get("parent") is not None:
                got["parent"] = r["parent"]
            if r.get("distributor"):
                got["distributor"] = r["distributor"]
            _remember(self._events_cache, eid, got)
        return got

    def _shipment_rec(self, txn, sid: int) -> dict:
        got = self._cache.get(("s", sid))
        if got is None:
            got = _remember(self._cache, ("s", sid), unpack(txn.get(u32(sid), db=self._shipments_db)))
        return got

    def _distributor_rec(self, txn, ident: str) -> dict | None:
        got = self._cache.get(("d", ident))
        if got is None:
            raw = txn.get(ident.encode(), db=self._distributors_db)
            if raw is None:
                return None
            got = _remember(self._cache, ("d", ident), unpack(raw))
        return got

    # -- whole-store views (tests, export) ------------------------------------------------------
    def links(self) -> dict[int, int]:
        """Every child -> parent link (expanded; for tests and small stores)."""
        out = {}
        with self.store.read() as txn:
            for k, v in txn.cursor(db=self._c2p_db):
                last = _Q.unpack(k)[0]
                first, parent = _c2p_decode(last, v)
                for u in range(first, last + 1):
                    out[u] = parent
        return out

    def voided_units(self) -> set[int]:
        with self.store.read() as txn:
            f, l = self.voids.all_runs(txn)
        return {u for a, b in zip(f.tolist(), l.tolist()) for u in range(a, b + 1)}

    def check_consistency(self) -> None:
        """Both directions hold the same runs (tests)."""
        with self.store.read() as txn:
            a = set()
            for k, v in txn.cursor(db=self._c2p_db):
                last = _Q.unpack(k)[0]
                first, parent = _c2p_decode(last, v)
                a.add((parent, first, last - first + 1))
            b = set()
            for k, v in txn.cursor(db=self._p2c_db):
                if not v or _encode_children(_decode_children(v)) != v:
                    raise AssertionError(f"agg_children value of {_Q.unpack(k)[0]} not canonical")
                for f, n in _decode_children(v):
                    b.add((_Q.unpack(k)[0], f, n))
        if a != b:
            raise AssertionError(f"link directions disagree: {sorted(a ^ b)[:5]}")
