"""Code batches: metadata only, never a row per code.

A batch is ``count`` units of one packaging level; unit ``serial`` (0-based) carries one
code per role of the level, all regenerated on demand from the key.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from engine.errors import Conflict, NotFound
from engine.spec import PackagingSpec
from engine.store import Store, pack, u32, unpack

__all__ = ["Batch", "BatchRegistry", "BATCH_STATES"]

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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["roles"] = list(self.roles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Batch":
        d = dict(d)
        d["roles"] = tuple(d["roles"])
        return cls(**d)


class BatchRegistry:
    """Create, read and list batches in the ``batches`` database."""

    def __init__(self, store: Store, spec: PackagingSpec) -> None:
        self._store = store
        self._spec = spec
        self._db = store.db("batches")

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
            txn.put(u32(batch_id), pack(batch.to_dict()), db=self._db)
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
            raw = txn.get(u32(batch_id), db=self._db)
        if raw is None:
            return None
        return Batch.from_dict(unpack(raw))

    def list(self) -> list[Batch]:
        with self._store.read() as txn:
            return [Batch.from_dict(unpack(v)) for _, v in txn.cursor(db=self._db)]

    def set_state(self, batch_id: int, state: str) -> Batch:
        if state not in BATCH_STATES:
            raise ValueError(f"state must be one of {', '.join(BATCH_STATES)}")
        with self._store.write() as txn:
            raw = txn.get(u32(batch_id), db=self._db)
            if raw is None:
                raise NotFound(f"no batch {batch_id}")
            d = unpack(raw)
            d["state"] = state
            txn.put(u32(batch_id), pack(d), db=self._db)
        return Batch.from_dict(d)
