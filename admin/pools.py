"""Budget pools (费用池): a total, an optional daily cap and optional caps per region.

Every reward draws on one pool; several campaigns may share a pool. A pool is never
overspent: :meth:`PoolRegistry.charge` checks and moves the spend counters inside the
caller's LMDB write transaction, and LMDB admits one writer at a time across every
process, so two scans can never both take the last yuan.

Spend counters (``adm_pool_spend``) are keyed ``<pool>\\0<slot>`` with slots ``total``,
``d:<YYYY-MM-DD>`` (China time) and ``r:<region prefix>``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from admin._util import check_amount, check_id, check_regions, china_day
from admin.audit import AuditLog
from engine.errors import Conflict, NotFound
from engine.store import Store, pack, unpack

__all__ = ["Pool", "PoolRegistry", "PoolCharges", "UNITS"]

#: What a pool holds: cash in fen (100 = 1 yuan) or loyalty points.
UNITS = ("cash", "points")


@dataclass(frozen=True)
class Pool:
    id: str
    name: str
    unit: str
    total: int
    daily: int | None = None
    regions: dict = field(default_factory=dict)  # region prefix -> cap
    created_at: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _slot(pool: str, slot: str) -> bytes:
    return f"{pool}\0{slot}".encode()


class PoolRegistry:
    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit
        self._db = store.db("adm_pools")
        self._decoded: dict[str, tuple[bytes, Pool]] = {}
        self._spend = store.db("adm_pool_spend")

    # -- admin -----------------------------------------------------------------------
    def create(self, pool_id: str, *, total: int, name: str = "", unit: str = "cash",
               daily: int | None = None, regions: dict | None = None, who: str,
               now: float | None = None) -> Pool:
        check_id(pool_id, "pool id")
        check_amount(total, "pool total", positive=True)
        if not isinstance(name, str) or len(name) > 200:
            raise ValueError("pool name: at most 200 characters")
        if unit not in UNITS:
            raise ValueError(f"pool unit must be one of {', '.join(UNITS)}")
        if daily is not None:
            check_amount(daily, "daily cap", positive=True)
            if daily > total:
                raise ValueError("the daily cap cannot exceed the pool total")
        regions = dict(regions or {})
        check_regions(list(regions), "region caps")
        for r, cap in regions.items():
            check_amount(cap, f"cap of region {r}", positive=True)
        pool = Pool(pool_id, name or pool_id, unit, total, daily, regions,
                    time.time() if now is None else now)
        with self._store.write() as txn:
            if not txn.put(pool_id.encode(), pack(pool.to_dict()), db=self._db, overwrite=False):
                raise Conflict(f"pool {pool_id} already exists")
            self._audit.append(txn, who, "pool.create", pool_id, pool.to_dict(), now=now)
        return pool

    def top_up(self, pool_id: str, amount: int, *, who: str, now: float | None = None) -> Pool:
        """Raise a pool's total (budgets grow; they never shrink below what is spent)."""
        check_amount(amount, "top-up", positive=True)
        with self._store.write() as txn:
            pool = self.get_in(txn, pool_id)
            pool = Pool(**{**pool.to_dict(), "total": pool.total + amount})
            txn.put(pool_id.encode(), pack(pool.to_dict()), db=self._db)
            self._audit.append(txn, who, "pool.top_up", pool_id, {"amount": amount, "total": pool.total},
                               now=now)
        return pool

    # -- reading ---------------------------------------------------------------------
    def get_in(self, txn, pool_id: str) -> Pool:
        raw = txn.get(str(pool_id).encode(), db=self._db)
        if raw is None:
            raise NotFound(f"no pool {pool_id}; create it with `wuma pool create`")
        # PERF: decoded once per stored version (a top-up writes a new one): every rewarded
        # scan reads its pool inside the transaction, so any process's top-up counts.
        cached = self._decoded.get(pool_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        pool = Pool(**unpack(raw))
        self._decoded[pool_id] = (raw, pool)
        return pool

    def get(self, pool_id: str) -> Pool:
        with self._store.read() as txn:
            return self.get_in(txn, pool_id)

    def list(self) -> list[Pool]:
        with self._store.read() as txn:
            return [Pool(**unpack(v)) for _, v in txn.cursor(db=self._db)]

    def _spent(self, txn, pool_id: str, slot: str) -> int:
        raw = txn.get(_slot(pool_id, slot), db=self._spend)
        return 0 if raw is None else int.from_bytes(raw, "big")

    def status(self, pool_id: str, now: float | None = None) -> dict:
        """Total, spent, left, today's spend and the spend by day and region (burn-down)."""
        now = time.time() if now is None else now
        with self._store.read() as txn:
            pool = self.get_in(txn, pool_id)
            spent = self._spent(txn, pool_id, "total")
            by_day, by_region = {}, {}
            prefix = _slot(pool_id, "")
            cur = txn.cursor(db=self._spend)
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    slot = k[len(prefix):].decode()
                    if slot.startswith("d:"):
                        by_day[slot[2:]] = int.from_bytes(v, "big")
                    elif slot.startswith("r:"):
                        by_region[slot[2:]] = int.from_bytes(v, "big")
        return {**pool.to_dict(), "spent": spent, "left": pool.total - spent,
                "spent_today": by_day.get(china_day(now), 0), "by_day": by_day,
                "by_region": by_region,
                "use_rate": round(spent / pool.total, 6) if pool.total else 0.0}

    # -- inside a scan's write transaction -------------------------------------------
    def _region_slot(self, pool: Pool, region: str | None) -> str | None:
        if not pool.regions or region is None:
            return None
        best = None
        for prefix in pool.regions:
            if region.startswith(prefix) and (best is None or len(prefix) > len(best)):
                best = prefix
        return best

    def _caps(self, pool: Pool, region: str | None, at: float) -> list | None:
        """The spend slots a charge moves, with their caps; None when the pool cannot pay
        in ``region`` at all (a pool with region caps pays only inside those regions)."""
        slots = [("total", pool.total), ("d:" + china_day(at), pool.daily)]
        if pool.regions:
            prefix = self._region_slot(pool, region)
            if prefix is None:
                return None
            slots.append(("r:" + prefix, pool.regions[prefix]))
        return slots

    def charge(self, txn, pool_id: str, amount: int, region: str | None, at: float) -> bool:
        """Take ``amount`` from the pool if every cap allows it; False (nothing changed)
        otherwise. Must run inside a write transaction."""
        charges = self.charges(txn)
        ok = charges.charge(pool_id, amount, region, at)
        charges.flush()
        return ok

    def charges(self, txn) -> "PoolCharges":
        """Several charges inside one write transaction, read once and written once."""
        return PoolCharges(self, txn)

    def refund(self, txn, pool_id: str, amount: int, region: str | None, at: float) -> None:
        """Give back a charge made at time ``at`` in ``region`` (reversal, expiry)."""
        pool = self.get_in(txn, pool_id)
        slots = ["total", "d:" + china_day(at)]
        prefix = self._region_slot(pool, region)
        if prefix is not None:
            slots.append("r:" + prefix)
        for slot in slots:
            value = max(self._spent(txn, pool_id, slot) - amount, 0)
            txn.put(_slot(pool_id, slot), value.to_bytes(8, "big"), db=self._spend)


class PoolCharges:
    """The charges of one settlement (a scan's reward and its rebates) inside one write
    transaction: each pool and spend slot is read once, and written once by :meth:`flush`.

    PERF: a consumer draw with bC and BbC rebates charges the same pool three times; read
    and written per charge, that was 3 pool records, 6 slot reads and 6 slot writes.
    Exactness is unchanged: everything happens inside the caller's write transaction,
    and LMDB has one writer at a time across all processes.
    """

    def __init__(self, pools: PoolRegistry, txn) -> None:
        self._pools = pools
        self._txn = txn
        self._pool: dict[str, Pool] = {}
        self._spent: dict[tuple[str, str], int] = {}
        self._dirty: set[tuple[str, str]] = set()

    def charge(self, pool_id: str, amount: int, region: str | None, at: float) -> bool:
        """Take ``amount`` if every cap allows it; False (nothing taken) otherwise."""
        if amount == 0:
            return True
        pool = self._pool.get(pool_id)
        if pool is None:
            # NOTE: read inside the transaction, so a top-up by any process counts
            pool = self._pool[pool_id] = self._pools.get_in(self._txn, pool_id)
        caps = self._pools._caps(pool, region, at)
        if caps is None:
            return False
        moves = []
        for slot, cap in caps:
            key = (pool_id, slot)
            value = self._spent.get(key)
            if value is None:
                value = self._spent[key] = self._pools._spent(self._txn, pool_id, slot)
            value += amount
            if cap is not None and value > cap:
                return False
            moves.append((key, value))
        for key, value in moves:
            self._spent[key] = value
            self._dirty.add(key)
        return True

    def flush(self) -> None:
        """Write the moved slots (call before the settlement returns)."""
        db = self._pools._spend
        for key in self._dirty:
            self._txn.put(_slot(*key), self._spent[key].to_bytes(8, "big"), db=db)
        self._dirty.clear()
