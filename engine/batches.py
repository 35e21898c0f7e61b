"""Code batches: metadata only, never a row per code.

A batch is ``count`` units of one packaging level; unit ``serial`` (0-based) carries one
code per role of the level, all regenerated on demand from the key.

Its ``state`` and ``activated`` follow what :class:`engine.aggregation.Aggregation` does
to its units, written in the same transaction (see :data:`BATCH_STATES`).

NOTE: the batch record keeps the fields it always had (a release before the count reads
it as ``Batch(**record)`` and would fail on a new field: a worker of the old release still
serving during an upgrade, a CLI of the old release); the count has a database of its
own, ``batch_activated``. Records with fields this release does not know are read too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

from engine.errors import Conflict, NotFound
from engine.spec import PackagingSpec
from engine.store import Store, pack, u32, u64, unpack

__all__ = ["Batch", "BatchRegistry", "BATCH_STATES"]

#: ``generated``: no unit activated yet; ``activated``: at least one unit activated
#: (``Batch.activated`` says how many: a batch is often activated a pallet at a time);
#: ``voided``: the whole batch voided. Activation is recorded per unit range
#: (``Aggregation.activate``), and the batch follows it: nothing sets a state by hand.
BATCH_STATES = ("generated", "activated", "voided")


@dataclass(frozen=True)
class Batch:
    id: int
    level: str
    roles: tuple[str, ...]
    count: int
    formats: dict[str, str]
    key_version: int
    state: str = "generated"
    created_at: float = 0.0
    note: str = ""
    #: units activated (a void does not undo an activation; a replacement label
    #: activated in place of a damaged one counts in its own batch)
    activated: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["roles"] = list(self.roles)
        return d

    def record(self) -> dict:
        """What is stored of it: every field but ``activated`` (see the module's NOTE)."""
        d = self.to_dict()
        del d["activated"]
        return d

    @classmethod
    def from_dict(cls, d: dict, activated: int = 0) -> "Batch":
        """A batch from its stored record and its count of units activated."""
        d = {k: v for k, v in d.items() if k in _FIELDS}  # a later release's fields are skipped
        d["roles"] = tuple(d["roles"])
        d["activated"] = activated
        return cls(**d)


_FIELDS = frozenset(f.name for f in fields(Batch))
#: In the store's ``meta``: how many activation records and activated runs there were
#: when the batches' counts were last brought up to date (see _count_activations).
_COUNTED = b"batch_activated_counted"


class BatchRegistry:
    """Create, read and list batches in the ``batches`` database."""

    def __init__(self, store: Store, spec: PackagingSpec) -> None:
        self._store = store
        self._spec = spec
        self._db = store.db("batches")
        self._activated = store.db("batch_activated")  # u32 batch id -> u64 units activated
        self._meta = store.db("meta")
        # NOTE: Aggregation's; opened here too, before any write transaction (LMDB's rule)
        self._active, self._activations = store.db("agg_active"), store.db("agg_activations")
        self._count_activations()

    def _count_activations(self) -> None:
        """Bring the batches' counts (and the ``activated`` state) up to date with the
        activations on record, when something activated without counting: a folder from
        before the count, or a process of that release (a worker or CLI still running
        during an upgrade, a rollback). Every count this release makes also notes how many
        activation records and activated runs there are (:meth:`count_activated`); on
        opening, a different number means another release wrote: counted again, all."""
        with self._store.read() as txn:
            if txn.get(_COUNTED, db=self._meta) == self._marker(txn):
                return
        from engine.aggregation import activated_per_batch  # NOTE: its run layout

        with self._store.write() as txn:
            if txn.get(_COUNTED, db=self._meta) == self._marker(txn):  # another process did it
                return
            counts = activated_per_batch(txn, self._active)
            for key, raw in list(txn.cursor(db=self._db)):
                n = counts.get(int.from_bytes(key, "big"), 0)
                txn.put(key, u64(n), db=self._activated)
                d = unpack(raw)
                if n and d["state"] == "generated":
                    d["state"] = "activated"
                    txn.put(key, pack(d), db=self._db)
            txn.put(_COUNTED, self._marker(txn), db=self._meta)

    def _marker(self, txn) -> bytes:
        """How many activation records and activated runs the store holds."""
        return u64(txn.stat(self._activations)["entries"]) + u64(txn.stat(self._active)["entries"])

    def create(self, level: str, count: int, key_version: int, *, note: str = "",
               now: float | None = None) -> Batch:
        lv = self._spec.level(level)
        if not isinstance(count, int) or isinstance(count, bool):
            raise TypeError("count must be an int")
        roles = [self._spec.role(r) for r in lv.roles]
        max_count = min(1 << r.format.serial_bits for r in roles)
        if not 1 <= count <= max_count:
            raise ValueError(f"count must be between 1 and {max_count:,} codes per role")
        formats = {r.name: r.format.name for r in roles}
        for r in roles:
            r.format.version_char(key_version)  # raises if the version does not fit
        max_batch = min((1 << r.format.batch_bits) - 1 for r in roles)
        with self._store.write() as txn:
            batch_id = self._store.next_id(txn, "batch")
            if batch_id > max_batch:
                raise Conflict(f"batch ids are exhausted (max {max_batch:,}); start a new data folder")
            batch = Batch(
                id=batch_id, level=lv.name, roles=lv.roles, count=count, formats=formats,
                key_version=key_version, state="generated",
                created_at=time.time() if now is None else now, note=note,
            )
            txn.put(u32(batch_id), pack(batch.record()), db=self._db)
        # NOTE: on disk whatever the folder's durability: in a "relaxed" one a power loss
        # could undo this commit after the batch's codes were exported, and the next batch
        # would take the same id, so the same codes
        self._store.sync()
        return batch

    def get(self, batch_id: int) -> Batch:
        got = self.find(batch_id)
        if got is None:
            raise NotFound(f"no batch {batch_id}")
        return got

    def find(self, batch_id: int) -> Batch | None:
        """The batch, or None."""
        if not isinstance(batch_id, int) or not 0 < batch_id < (1 << 32):
            return None
        with self._store.read() as txn:
            return self.find_in(txn, batch_id)

    def find_in(self, txn, batch_id: int) -> Batch | None:
        """:meth:`find` in the caller's transaction (a write reads in its own: a read
        transaction begun inside it would be a second snapshot, the one before it)."""
        raw = txn.get(u32(batch_id), db=self._db)
        if raw is None:
            return None
        return Batch.from_dict(unpack(raw), self._count(txn, u32(batch_id)))

    def list(self) -> list[Batch]:
        with self._store.read() as txn:
            return [Batch.from_dict(unpack(v), self._count(txn, k)) for k, v in txn.cursor(db=self._db)]

    def _count(self, txn, key: bytes) -> int:
        raw = txn.get(key, db=self._activated)
        return 0 if raw is None else int.from_bytes(raw, "big")

    # -- written by Aggregation, in the transaction that activates or voids the units -----
    def count_activated(self, txn, units: dict[int, int]) -> None:
        """``units[batch id]`` more units of these batches were activated: add them to
        ``activated``; a ``generated`` batch becomes ``activated``."""
        for batch_id, n in units.items():
            d = self._record(txn, batch_id)
            key = u32(batch_id)
            txn.put(key, u64(self._count(txn, key) + n), db=self._activated)
            if d["state"] == "generated":
                d["state"] = "activated"
                txn.put(key, pack(d), db=self._db)
        txn.put(_COUNTED, self._marker(txn), db=self._meta)  # counted up to here

    def mark_voided(self, txn, batch_id: int) -> None:
        """Every unit of the batch is voided: its state becomes ``voided`` (for good)."""
        d = self._record(txn, batch_id)
        if d["state"] != "voided":
            d["state"] = "voided"
            txn.put(u32(batch_id), pack(d), db=self._db)

    def _record(self, txn, batch_id: int) -> dict:
        raw = txn.get(u32(batch_id), db=self._db)
        if raw is None:
            raise NotFound(f"no batch {batch_id}")
        return unpack(raw)
