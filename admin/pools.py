"""Budget pools (费用池): a total, an optional daily cap and optional caps per region.

Every reward draws on one pool; several campaigns may share a pool. A pool is never
overspent: :meth:`PoolRegistry.charge` checks and moves the spend counters inside the
caller's LMDB write transaction, and LMDB admits one writer at a time across every
process, so two scans can never both take the last yuan.

Spend counters (``adm_pool_spend``) are keyed ``<pool>\\0<slot>``:

``spend``
    the pool's running state, read and written once per settlement: total spent, the
    current China day (day number) and the spend of that day (``>QIQ``);
``d:<YYYY-MM-DD>``
    the spend of any other day: written when the running state moves on to a new day,
    or by a scan dated to an earlier day (a late commit around midnight);
``r:<region prefix>``
    the spend in a capped region (the cap's code as typed: ``r:440100``);
``total``
    the total spent in the first layout (before ``spend``); read only when a pool has
    no ``spend`` state yet.

Top-ups sent with an idempotency key are kept in ``adm_pool_top_ups``, keyed
``<pool>\0<key>``: the amount and the answer, written in the top-up's own transaction.
"""

from __future__ import annotations

import struct
import time
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property

from admin._util import (
    MAX_AMOUNT,
    check_amount,
    check_id,
    check_idempotency_key,
    check_name,
    check_regions,
    china_day,
    china_day_number,
)
from admin.audit import AuditLog
from engine.errors import Conflict, NotFound
from engine.ids import is_id, region_prefix
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
    regions: dict = field(default_factory=dict)  # region code prefix (as typed) -> cap
    created_at: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @cached_property
    def region_caps(self) -> tuple[tuple[str, str], ...]:
        """The region caps as (the prefix their divisions share, the cap's code as typed),
        the most specific first: caps do not nest, a scan counts against the most specific
        cap its region is in. Codes are read as territories are (440100 is 4401,
        :func:`engine.ids.region_prefix`). Two caps of one prefix are refused on
        entry; in a pool stored before that, the first of them counts (a stable sort)."""
        return tuple(sorted(((region_prefix(r), r) for r in self.regions), key=lambda c: -len(c[0])))

    @cached_property
    def cap_by_prefix(self) -> dict[str, str]:
        """:attr:`region_caps` as prefix -> cap (the first of a prefix stored twice)."""
        out: dict[str, str] = {}
        for prefix, cap in self.region_caps:
            out.setdefault(prefix, cap)
        return out


_POOL_FIELDS = tuple(f.name for f in fields(Pool))


#: the ``spend`` state: total spent, current China day number, spent that day
_STATE = struct.Struct(">QIQ")


def _slot(pool: str, slot: str) -> bytes:
    return f"{pool}\0{slot}".encode()


def _day_slot(n: int) -> str:
    return "d:" + china_day(n * 86400 - 8 * 3600)


class PoolRegistry:
    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit
        self._db = store.db("adm_pools")
        self._decoded: dict[str, tuple[bytes, Pool]] = {}
        self._spend = store.db("adm_pool_spend")
        self._top_ups = store.db("adm_pool_top_ups")  # pool NUL idempotency key -> the top-up

    # -- admin -----------------------------------------------------------------------
    def create(self, pool_id: str, *, total: int, name: str = "", unit: str = "cash",
               daily: int | None = None, regions: dict | None = None, who: str,
               now: float | None = None) -> Pool:
        check_id(pool_id, "pool id")
        check_amount(total, "pool total", positive=True)
        check_name(name, "pool name", required=False)
        if unit not in UNITS:
            raise ValueError(f"pool unit must be one of {', '.join(UNITS)}")
        if daily is not None:
            check_amount(daily, "daily cap", positive=True)
            if daily > total:
                raise ValueError("the daily cap cannot exceed the pool total")
        regions = dict(regions or {})
        check_regions(list(regions), "region caps")
        same: dict[str, str] = {}
        for r, cap in regions.items():
            check_amount(cap, f"cap of region {r}", positive=True)
            other = same.setdefault(region_prefix(r), r)
            if other != r:  # NOTE: one region, two running spends: neither cap would hold
                raise ValueError(f"region caps {other} and {r} are the same region ({region_prefix(r)}: a level of "
                                 "zeros names the whole division); give it one cap")
        pool = Pool(pool_id, name or pool_id, unit, total, daily, regions,
                    time.time() if now is None else now)
        with self._store.write() as txn:
            if not txn.put(pool_id.encode(), pack(pool.to_dict()), db=self._db, overwrite=False):
                raise Conflict(f"pool {pool_id} already exists")
            self._audit.append(txn, who, "pool.create", pool_id, pool.to_dict(), now=now)
        return pool

    def top_up(self, pool_id: str, amount: int, *, who: str, now: float | None = None,
               idempotency_key: str | None = None) -> Pool:
        """Raise a pool's total (budgets grow; they never shrink below what is spent).
        Returns the pool as the top-up left it; ``idempotency_key``: see :meth:`top_up_status`."""
        status, _ = self.top_up_status(pool_id, amount, who=who, now=now, idempotency_key=idempotency_key)
        return Pool(**{f: status[f] for f in _POOL_FIELDS})

    def top_up_status(self, pool_id: str, amount: int, *, who: str, now: float | None = None,
                      idempotency_key: str | None = None) -> tuple[dict, bool]:
        """:meth:`top_up`, answered as (the pool's :meth:`status` right after the top-up,
        read in its transaction; whether this was a replay).

        With ``idempotency_key`` (the admin API's ``Idempotency-Key`` header), a top-up is
        done once per key and pool: a replay with the same amount changes nothing and
        answers the first top-up's status again (True); the same key with another amount
        is a Conflict. The key is kept with the top-up, in its transaction, for good, with
        the answer it gave: the pool's status then, whose spend by day and by region grows
        with the pool's age (a few hundred bytes for a new pool, some KB after a year; top-ups
        are rare)."""
        check_amount(amount, "top-up", positive=True)
        key = None if idempotency_key is None else check_idempotency_key(idempotency_key)
        now = time.time() if now is None else now
        with self._store.write() as txn:
            pool = self.get_in(txn, self._checked(pool_id))
            if key is not None:
                raw = txn.get(_slot(pool_id, key), db=self._top_ups)
                if raw is not None:
                    first = unpack(raw)
                    if first["amount"] != amount:
                        raise Conflict(f"Idempotency-Key {key} was sent with a top-up of pool {pool_id} by "
                                       f"{first['amount']}, not {amount}; a new top-up needs a new key")
                    return first["status"], True
            if pool.total + amount > MAX_AMOUNT:
                raise ValueError(f"top-up: pool {pool_id} would hold {pool.total + amount}, over the most a "
                                 f"pool holds ({MAX_AMOUNT}); top up at most {MAX_AMOUNT - pool.total}")
            pool = Pool(**{**pool.to_dict(), "total": pool.total + amount})
            txn.put(pool_id.encode(), pack(pool.to_dict()), db=self._db)
            details = {"amount": amount, "total": pool.total}
            if key is not None:
                details["idempotency_key"] = key
            self._audit.append(txn, who, "pool.top_up", pool_id, details, now=now)
            status = self._status_in(txn, pool, now)
            if key is not None:
                txn.put(_slot(pool_id, key), pack({"amount": amount, "at": now, "who": who, "status": status}),
                        db=self._top_ups)
        return status, False

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

    @staticmethod
    def _checked(pool_id: str) -> str:
        """``pool_id``, or NotFound for what cannot be a pool id (an empty or over-long
        string would be refused as a database key). NOTE: get_in, on every rewarded scan's
        path, reads ids the campaigns stored, checked then."""
        if not is_id(pool_id):
            raise NotFound(f"no pool {pool_id!r}; pool ids are 1-64 letters, digits, '_', '.', '-'")
        return pool_id

    def get(self, pool_id: str) -> Pool:
        with self._store.read() as txn:
            return self.get_in(txn, self._checked(pool_id))

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
            return self._status_in(txn, self.get_in(txn, self._checked(pool_id)), now)

    def statuses_in(self, txn, now: float) -> list[dict]:
        """:meth:`status` of every pool, read in ``txn`` (one snapshot for all)."""
        return [self._status_in(txn, Pool(**unpack(v)), now) for _, v in txn.cursor(db=self._db)]

    def _status_in(self, txn, pool: Pool, now: float) -> dict:
        pool_id = pool.id
        spent, day, spent_that_day = self._state(txn, pool_id)
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
        if day:
            by_day[_day_slot(day)[2:]] = spent_that_day
        return {**pool.to_dict(), "spent": spent, "left": pool.total - spent,
                "spent_today": by_day.get(china_day(now), 0), "by_day": dict(sorted(by_day.items())),
                "by_region": by_region,
                "use_rate": round(spent / pool.total, 6) if pool.total else 0.0}

    def _state(self, txn, pool_id: str) -> tuple[int, int, int]:
        """(total spent, current day number or 0, spent that day)."""
        raw = txn.get(_slot(pool_id, "spend"), db=self._spend)
        if raw is None:  # never charged, or charged only in the first layout
            return self._spent(txn, pool_id, "total"), 0, 0
        return _STATE.unpack(raw)

    # -- inside a scan's write transaction -------------------------------------------
    def _region_slot(self, pool: Pool, region: str | None) -> str | None:
        """The cap (its code as typed) a scan in ``region`` counts against, or None."""
        if not pool.regions or region is None:
            return None
        caps = pool.cap_by_prefix
        for k in range(len(region), 1, -1):  # PERF: the region's own prefixes, longest first
            cap = caps.get(region[:k])
            if cap is not None:
                return cap
        return None

    def charge(self, txn, pool_id: str, amount: int, region: str | None, at: float) -> bool:
        """Take ``amount`` from the pool if every cap allows it; False (nothing changed)
        otherwise. Must run inside a write transaction."""
        charges = self.charges(txn)
        ok = charges.charge(pool_id, amount, region, at)
        charges.flush()
        return ok

    def charges(self, txn, memo: dict | None = None) -> "PoolCharges":
        """Several charges inside one write transaction, read once and written once.
        ``memo``: the write transaction's memo (:meth:`engine.scanlog.ScanLog.record`):
        pools and their state are then read once per transaction, and written once at its
        end (PERF: one write of a pool's state per group commit, not one per scan)."""
        if memo is None:
            return PoolCharges(self, txn)
        charges = memo.get("pool_charges")
        if charges is None:
            charges = memo["pool_charges"] = PoolCharges(self, txn, deferred=True)
            memo.before_commit(charges.write)
        return charges

    def refund(self, txn, pool_id: str, amount: int, region: str | None, at: float) -> None:
        """Give back a charge made at time ``at`` in ``region`` (reversal, expiry)."""
        charges = self.charges(txn)
        charges.refund(pool_id, amount, region, at)
        charges.flush()


class PoolCharges:
    """The charges of one settlement (a scan's reward and its rebates) inside one write
    transaction: each pool's state and spend slots are read once, and written once by
    :meth:`flush`.

    PERF: a consumer draw with bC and BbC rebates charges the same pool three times; read
    and written per charge, that was 3 pool records, 6 slot reads and 6 slot writes. The
    total and today's spend share one key (the ``spend`` state), so a settlement reads
    the pool record and one key, and writes one key (plus a region slot in a pool with
    region caps). Exactness is unchanged: everything happens inside the caller's write
    transaction, and LMDB has one writer at a time across all processes.
    """

    def __init__(self, pools: PoolRegistry, txn, *, deferred: bool = False) -> None:
        self._pools = pools
        self._txn = txn
        self._deferred = deferred  # written by write() at the transaction's end, not by flush()
        # what the transaction has read and written (kept for its next settlements when
        # this object lives in the transaction's memo):
        self._pool: dict[str, Pool] = {}
        self._state: dict[str, list] = {}  # pool -> [total, day number, spent that day]
        self._spent: dict[tuple[str, str], int] = {}  # (pool, slot) -> spent: other days, regions
        self._keys: dict[tuple[str, str], bytes] = {}  # (pool, slot) -> LMDB key
        self._dirty: set[tuple[str, str]] = set()

    def charge(self, pool_id: str, amount: int, region: str | None, at: float) -> bool:
        """Take ``amount`` if every cap allows it; False (nothing taken) otherwise."""
        if amount == 0:
            return True
        return self._move(pool_id, amount, region, at, check=True)

    def covers(self, pool_id: str, region: str | None) -> bool:
        """Does the pool pay in ``region`` at all? A pool with region caps pays only inside
        them (and not for a scan with no region)."""
        pool = self._load(pool_id)[0]
        return not pool.regions or self._pools._region_slot(pool, region) is not None

    def refund(self, pool_id: str, amount: int, region: str | None, at: float) -> None:
        """Give back ``amount`` charged at time ``at`` in ``region`` (never below zero)."""
        self._move(pool_id, -amount, region, at, check=False)

    def _load(self, pool_id: str) -> tuple[Pool, list]:
        pool = self._pool.get(pool_id)
        if pool is None:
            # NOTE: read inside the transaction, so a top-up by any process counts
            pool = self._pool[pool_id] = self._pools.get_in(self._txn, pool_id)
            self._state[pool_id] = list(self._pools._state(self._txn, pool_id))
        return pool, self._state[pool_id]

    def _slot_value(self, pool_id: str, slot: str) -> int:
        key = (pool_id, slot)
        value = self._spent.get(key)
        if value is None:
            value = self._spent[key] = self._pools._spent(self._txn, pool_id, slot)
        return value

    def _move(self, pool_id: str, amount: int, region: str | None, at: float, *, check: bool) -> bool:
        pool, state = self._load(pool_id)
        total, current, today = state
        day = china_day_number(at)
        if day == current and not pool.regions:  # PERF: the common case, in one step
            if check and (total + amount > pool.total
                          or (pool.daily is not None and today + amount > pool.daily)):
                return False
            state[0], state[2] = max(total + amount, 0), max(today + amount, 0)
            self._dirty.add((pool_id, "spend"))
            return True
        finished = None
        if day > current:  # the first charge of a new day: the finished day gets its own key
            finished = (current, today) if current else None
            # (a day spent in the first layout keeps its spend in its d: key until now)
            current, today = day, self._slot_value(pool_id, _day_slot(day))
        # a scan dated to an earlier day (committed late around midnight) counts there
        that_day = today if day == current else self._slot_value(pool_id, _day_slot(day))
        region_slot = None
        if pool.regions:
            prefix = self._pools._region_slot(pool, region)
            if prefix is not None:
                region_slot = "r:" + prefix
            elif check:  # a pool with region caps pays only inside those regions
                return False
        in_region = self._slot_value(pool_id, region_slot) + amount if region_slot else 0
        if check and (total + amount > pool.total
                      or (pool.daily is not None and that_day + amount > pool.daily)
                      or (region_slot is not None and in_region > pool.regions[region_slot[2:]])):
            return False
        moved = [(pool_id, "spend")]
        if finished is not None:
            self._spent[(pool_id, _day_slot(finished[0]))] = finished[1]
            moved.append((pool_id, _day_slot(finished[0])))
        if day == current:
            today = max(today + amount, 0)
        else:
            self._spent[(pool_id, _day_slot(day))] = max(that_day + amount, 0)
            moved.append((pool_id, _day_slot(day)))
        state[:] = (max(total + amount, 0), current, today)
        if region_slot is not None:
            self._spent[(pool_id, region_slot)] = max(in_region, 0)
            moved.append((pool_id, region_slot))
        self._dirty.update(moved)
        return True

    def flush(self) -> None:
        """Write the moved state and slots (call before the settlement returns); when
        deferred, the transaction's memo has them written at its end instead."""
        if not self._deferred:
            self.write(self._txn)

    def write(self, txn) -> None:
        """Write the moved state and slots now."""
        db, keys = self._pools._spend, self._keys
        for key in self._dirty:
            pool_id, slot = key
            if slot == "spend":
                value = _STATE.pack(*self._state[pool_id])
            else:
                value = self._spent[key].to_bytes(8, "big")
            raw = keys.get(key)
            if raw is None:
                raw = keys[key] = _slot(pool_id, slot)
            txn.put(raw, value, db=db)
        self._dirty.clear()
