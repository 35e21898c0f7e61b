"""Campaigns: rewards attached to batches, serial ranges or products — never to codes.

A campaign says *which scans* qualify (trigger: the code role scanned and the actor role
scanning it; target: batches, serial ranges or product SKUs; a time window; optionally
regions) and *what they earn* (a reward rule drawn from a budget pool, limits per actor,
per device and per client address, linked rebates, a lock). Rules are validated on entry; an invalid rule never reaches a
scan. Example (JSON, as ``wuma campaign create FILE`` and the admin API take it)::

    {"name": "Summer draw", "pool": "summer",
     "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
     "target": {"batches": [3]},                 # or {"serials": [[3, 0, 9999]]} or {"skus": ["BJ-500"]}
     "window": {"start": "2026-12-01", "end": "2027-01-31"},   # China time, both days included
     "regions": ["44"],                          # optional: scans outside earn nothing (440100 = 4401)
     "reward": {"kind": "draw", "payout": "cash",
                "tiers": [{"amount": 888, "odds": 0.01}, {"amount": 0, "odds": 0.99}]},
     "limits": {"per_actor_per_day": 3, "per_actor": 20},   # also per_device_*, per_ip_*
     "rebates": [{"to": "store", "amount": 50}, {"to": "distributor", "amount": 20}],
     "lock": {"kind": "repurchase", "days": 30}}  # or {"kind": "collect", "products": 3, "days": 60}

Reward kinds: ``fixed`` (``amount``), ``draw`` (prize ``tiers`` whose odds sum to 1; a
tier of amount 0 is "no win"), ``all_win`` (100% win: every tier pays at least
``min_amount``; when the pool cannot afford the drawn tier the minimum is paid if it
can). Payout: ``cash`` (fen), ``points``, or ``voucher`` (N元换购: a consumer's scan
issues a voucher of that face value, ``valid_days`` long, that a store redeems; only a
consumer trigger pays vouchers).

Amounts are whole numbers in the pool's unit: fen for cash (100 = 1 yuan), or points.

PERF: campaigns are indexed by (batch, code role) and (SKU, code role); a scan looks at
the handful of campaigns on its own batch and product, never at all of them.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property

from admin._util import (
    check_amount,
    check_name,
    check_regions,
    in_regions,
    parse_time,
    region_prefixes,
    regions_meet,
)
from admin.audit import AuditLog
from admin.pools import PoolRegistry
from engine.accounts import ACTOR_ROLES
from engine.batches import BatchRegistry
from engine.errors import Conflict, NotFound
from engine.ids import is_id
from engine.spec import PackagingSpec
from engine.store import Store, pack, u32, unpack

__all__ = ["Campaign", "CampaignRegistry", "CampaignIndex", "STATUSES", "REWARD_KINDS", "PAYOUTS", "LIMITS",
           "MAX_TARGETS"]

STATUSES = ("active", "paused", "closed")
REWARD_KINDS = ("fixed", "draw", "all_win")
PAYOUTS = ("cash", "points", "voucher")
REBATE_TO = ("store", "distributor")
LOCK_KINDS = ("repurchase", "collect")
#: Participation limits: per actor (the scanner's user or account id) and per device (the
#: scan's ``device`` id: one phone claiming under many user ids, 羊毛党), a day (China
#: time) and in all; and per client address (a farm behind one address). A scan without a
#: device (an address) is not counted against those limits.
LIMITS = ("per_actor_per_day", "per_actor", "per_device_per_day", "per_device", "per_ip_per_day", "per_ip")
_FIELDS = {"name", "pool", "trigger", "target", "window", "regions", "reward", "limits", "rebates", "lock"}
#: The most batches, serial ranges or SKUs a campaign's target names. APPSEC: a new rule is
#: checked against the open ones inside a write transaction that every scan waits for.
MAX_TARGETS = 1_000


@dataclass(frozen=True)
class Campaign:
    """A validated campaign. ``rule`` is the normalised JSON document."""

    id: int
    status: str
    rule: dict
    created_at: float

    # -- what the scan path reads (derived once: PERF, a cached_property is a plain
    # attribute after its first read; frozen dataclasses allow it) ---------------------
    @cached_property
    def name(self) -> str:
        return self.rule["name"]

    @cached_property
    def pool(self) -> str:
        return self.rule["pool"]

    @cached_property
    def region_prefixes(self) -> tuple[str, ...]:
        """``regions`` as the prefixes their divisions share (stored as typed: 440100, read
        as 4401, Guangzhou's districts)."""
        return region_prefixes(self.rule["regions"])

    @property
    def code_role(self) -> str:
        return self.rule["trigger"]["code_role"]

    @property
    def actor_role(self) -> str:
        return self.rule["trigger"]["actor_role"]

    def to_dict(self) -> dict:
        return {"id": self.id, "status": self.status, "created_at": self.created_at, **self.rule}

    def index_keys(self) -> list[tuple]:
        t = self.rule["target"]
        role = self.code_role
        if "skus" in t:
            return [("sku", s, role) for s in t["skus"]]
        batches = t["batches"] if "batches" in t else sorted({b for b, _, _ in t["serials"]})
        return [("batch", b, role) for b in batches]

    def matches(self, actor_role: str, at: float, region: str | None, batch: int, serial: int) -> bool:
        """Does a genuine scan qualify (status is checked again inside the write)?"""
        r = self.rule
        if self.status != "active" or actor_role != r["trigger"]["actor_role"]:
            return False
        w = r["window"]
        if not w["start"] <= at < w["end"]:
            return False
        if r["regions"] and not in_regions(region, self.region_prefixes):
            return False
        runs = self._serial_runs
        if runs is not None:
            return _in_runs(runs, batch, serial)
        return True

    @cached_property
    def _serial_runs(self) -> dict[int, tuple[list[int], list[int]]] | None:
        """A serial-range target as sorted, merged runs per batch (None for another
        target). PERF: a scan looks its serial up by bisection, not range by range."""
        serials = self.rule["target"].get("serials")
        return None if serials is None else _merged_runs(serials)


def _tiers(reward: dict, min_amount: int | None) -> list[dict]:
    tiers = reward.get("tiers")
    if not isinstance(tiers, list) or not tiers:
        raise ValueError("reward tiers: a list of {\"amount\": fen, \"odds\": probability}")
    out, total = [], 0.0
    for i, t in enumerate(tiers):
        if not isinstance(t, dict) or set(t) != {"amount", "odds"}:
            raise ValueError(f"reward tier {i + 1}: exactly \"amount\" and \"odds\"")
        check_amount(t["amount"], f"reward tier {i + 1} amount")
        odds = t["odds"]
        if isinstance(odds, bool) or not isinstance(odds, (int, float)) or not 0 < odds <= 1:
            raise ValueError(f"reward tier {i + 1}: odds must be a probability above 0 and at most 1")
        if min_amount is not None and t["amount"] < min_amount:
            raise ValueError(f"reward tier {i + 1} pays {t['amount']}, below the minimum {min_amount} "
                             "of a 100%-win campaign")
        total += odds
        out.append({"amount": t["amount"], "odds": float(odds)})
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ValueError(f"reward tier odds must sum to 1 (they sum to {total:g}); "
                         "add a tier with amount 0 for \"no win\"")
    return out


def normalise(rule: dict, *, spec: PackagingSpec, batches: BatchRegistry, pools: PoolRegistry) -> dict:
    """Check a campaign rule and return its normalised form; ValueError/NotFound says what
    is wrong in words a marketing operator can act on."""
    if not isinstance(rule, dict):
        raise ValueError("a campaign is a JSON object")
    unknown = set(rule) - _FIELDS
    if unknown:
        raise ValueError(f"unknown campaign fields: {', '.join(sorted(unknown))}")
    for f in ("name", "pool", "trigger", "target", "window", "reward"):
        if f not in rule:
            raise ValueError(f"a campaign needs \"{f}\"")
    name = rule["name"]
    check_name(name, "campaign name")
    if not is_id(rule["pool"]):
        raise ValueError("pool: the id of a budget pool")
    pool = pools.get(rule["pool"])

    trig = rule["trigger"]
    if not isinstance(trig, dict) or set(trig) != {"code_role", "actor_role"}:
        raise ValueError("trigger: {\"code_role\": ..., \"actor_role\": ...}")
    if not isinstance(trig["code_role"], str) or trig["code_role"] not in spec.roles:
        raise ValueError(f"trigger code_role must be one of {', '.join(spec.roles)}")
    if trig["actor_role"] not in ACTOR_ROLES:
        raise ValueError(f"trigger actor_role must be one of {', '.join(ACTOR_ROLES)}")
    level = spec.role(trig["code_role"]).level

    target = rule["target"]
    if not isinstance(target, dict) or len(target) != 1 or next(iter(target)) not in ("batches", "serials", "skus"):
        raise ValueError("target: exactly one of {\"batches\": [ids]}, {\"serials\": [[batch, first, last]]}, "
                         "{\"skus\": [sku]}")
    kind, items = next(iter(target.items()))
    if not isinstance(items, list) or not items:
        raise ValueError(f"target {kind}: a non-empty list")
    if len(items) > MAX_TARGETS:
        raise ValueError(f"target {kind}: at most {MAX_TARGETS:,} (name whole batches, or split the "
                         "campaign)")
    if kind == "skus":
        if not all(is_id(s) for s in items):
            raise ValueError("target skus: a list of product SKUs (each 1-64 letters, digits, '_', '.', '-')")
        target = {"skus": sorted(set(items))}
    else:
        ranges = []
        for it in items:
            if kind == "batches":
                it = [it, 0, None]
            if (not isinstance(it, list) or len(it) != 3 or isinstance(it[0], bool)
                    or not isinstance(it[0], int)):
                raise ValueError("target serials: a list of [batch, first serial, last serial]")
            b = batches.find(it[0])
            if b is None:
                raise NotFound(f"no batch {it[0]}")
            if b.level != level:
                raise ValueError(f"batch {b.id} holds {b.level} codes; code role {trig['code_role']} "
                                 f"is printed on {level} units")
            first, last = it[1], b.count - 1 if it[2] is None else it[2]
            for v in (first, last):
                if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < b.count:
                    raise ValueError(f"serials of batch {b.id} run from 0 to {b.count - 1}")
            if first > last:
                raise ValueError(f"serial range [{first}, {last}] is empty")
            ranges.append([b.id, first, last])
        target = ({"batches": sorted({r[0] for r in ranges})} if kind == "batches"
                  else {"serials": sorted(ranges)})

    window = rule["window"]
    if not isinstance(window, dict) or set(window) != {"start", "end"}:
        raise ValueError("window: {\"start\": time, \"end\": time}")
    start, end = parse_time(window["start"], "window start"), parse_time(window["end"], "window end", day_end=True)
    if start >= end:
        raise ValueError("window: the start must come before the end")

    regions = check_regions(rule.get("regions") or [], "regions")

    reward = rule["reward"]
    if not isinstance(reward, dict) or reward.get("kind") not in REWARD_KINDS:
        raise ValueError(f"reward kind must be one of {', '.join(REWARD_KINDS)}")
    payout = reward.get("payout", "cash")
    if payout not in PAYOUTS:
        raise ValueError(f"reward payout must be one of {', '.join(PAYOUTS)}")
    if (payout == "points") != (pool.unit == "points"):
        raise ValueError(f"pool {pool.id} holds {pool.unit}; a {payout} reward cannot draw on it")
    rk = reward["kind"]
    norm_reward: dict = {"kind": rk, "payout": payout}
    allowed = {"kind", "payout", "valid_days"}
    if rk == "fixed":
        norm_reward["amount"] = check_amount(reward.get("amount"), "reward amount", positive=True)
        allowed.add("amount")
        prizes = [norm_reward["amount"]]
    elif rk == "draw":
        norm_reward["tiers"] = _tiers(reward, None)
        allowed.add("tiers")
        prizes = [t["amount"] for t in norm_reward["tiers"] if t["amount"] > 0]
        if not prizes:
            raise ValueError("a draw needs at least one tier with an amount above 0")
    else:
        m = check_amount(reward.get("min_amount"), "reward min_amount", positive=True)
        norm_reward["min_amount"] = m
        norm_reward["tiers"] = _tiers(reward, m)
        allowed |= {"tiers", "min_amount"}
        prizes = [m]
    if payout == "voucher":
        # APPSEC: a voucher (N元换购) is a consumer's, redeemed (核销) by a store that hands
        # the goods over and is credited its value. An account's own voucher would be
        # redeemed by that same account (or a friendly store) for cash, no goods moving.
        if trig["actor_role"] != "consumer":
            raise ValueError(f"a voucher is issued to a consumer for a store to redeem; a "
                             f"{trig['actor_role']}'s scan cannot earn one (it would redeem its own "
                             "voucher for cash): pay it in cash or points instead")
        days = reward.get("valid_days")
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 366:
            raise ValueError("a voucher reward needs valid_days between 1 and 366")
        norm_reward["valid_days"] = days
    extra = set(reward) - allowed
    if extra:
        raise ValueError(f"unknown fields in a {rk} reward: {', '.join(sorted(extra))}")
    if pool.total < min(prizes):
        raise ValueError(f"pool {pool.id} ({pool.total}) is smaller than the smallest prize ({min(prizes)})")

    limits = rule.get("limits") or {}
    if not isinstance(limits, dict) or set(limits) - set(LIMITS):
        raise ValueError("limits: {\"per_actor_per_day\": n, \"per_actor\": n, "
                         "\"per_device_per_day\": n, \"per_device\": n, \"per_ip_per_day\": n, \"per_ip\": n}")
    for k, v in limits.items():
        check_amount(v, f"limit {k}", positive=True)

    rebates = rule.get("rebates") or []
    if not isinstance(rebates, list):
        raise ValueError("rebates: a list of {\"to\": \"store\" | \"distributor\", \"amount\": n}")
    seen = set()
    for r in rebates:
        if not isinstance(r, dict) or set(r) != {"to", "amount"} or r["to"] not in REBATE_TO:
            raise ValueError("rebates: a list of {\"to\": \"store\" | \"distributor\", \"amount\": n}")
        check_amount(r["amount"], f"{r['to']} rebate amount", positive=True)
        if r["to"] in seen:
            raise ValueError(f"one {r['to']} rebate per campaign")
        if r["to"] == trig["actor_role"]:
            raise ValueError(f"a {r['to']} rebate goes to the {r['to']} up the chain; here the {r['to']} "
                             "is the scanner itself — use the reward instead")
        seen.add(r["to"])
    if rebates and payout == "points":
        raise ValueError("rebates are cash; this campaign pays points")

    lock = rule.get("lock")
    if lock is not None:
        if not isinstance(lock, dict) or lock.get("kind") not in LOCK_KINDS:
            raise ValueError("lock: {\"kind\": \"repurchase\", \"days\": n} or "
                             "{\"kind\": \"collect\", \"products\": k, \"days\": n}")
        want = {"kind", "days"} | ({"products"} if lock["kind"] == "collect" else set())
        if set(lock) != want:
            raise ValueError(f"a {lock['kind']} lock takes exactly {', '.join(sorted(want))}")
        check_amount(lock["days"], "lock days", positive=True)
        if lock["kind"] == "collect":
            check_amount(lock["products"], "lock products", positive=True)
            if lock["products"] < 2:
                raise ValueError("collect-N needs at least 2 different products")
        if payout == "voucher":
            raise ValueError("a voucher cannot be locked")
    return {"name": name.strip(), "pool": pool.id, "trigger": dict(trig), "target": target,
            "window": {"start": start, "end": end}, "regions": regions, "reward": norm_reward,
            "limits": dict(limits), "rebates": [dict(r) for r in rebates], "lock": lock}


def _merged_runs(ranges) -> dict[int, tuple[list[int], list[int]]]:
    """``[[batch, first, last], ...]`` as, per batch, the sorted firsts and lasts of the
    runs they cover (touching or overlapping ranges merged into one run)."""
    runs: dict[int, tuple[list[int], list[int]]] = {}
    for batch, first, last in sorted(ranges):
        firsts, lasts = runs.setdefault(batch, ([], []))
        if lasts and first <= lasts[-1] + 1:
            lasts[-1] = max(lasts[-1], last)
        else:
            firsts.append(first)
            lasts.append(last)
    return runs


def _in_runs(runs: dict[int, tuple[list[int], list[int]]], batch: int, serial: int) -> bool:
    got = runs.get(batch)
    if got is None:
        return False
    i = bisect_right(got[0], serial) - 1
    return i >= 0 and serial <= got[1][i]


def _runs_meet(a: dict, b: dict) -> bool:
    """Whether two :func:`_merged_runs` share a serial: per batch both hold, one sweep."""
    for batch in a.keys() & b.keys():
        (fa, la), (fb, lb) = a[batch], b[batch]
        i = j = 0
        while i < len(fa) and j < len(fb):
            if fa[i] <= lb[j] and fb[j] <= la[i]:
                return True
            if la[i] < lb[j]:
                i += 1
            else:
                j += 1
    return False


def _overlap(a: dict, b: dict) -> bool:
    """Same trigger, overlapping window, regions and target (targets of different kinds —
    batches vs SKUs — are allowed to stack). PERF: it runs in the write transaction that
    creates a campaign, which scans wait for: no part of it compares every pair (two rules
    of 16,000 ranges took 14.6 s that way; rules hold at most MAX_TARGETS and MAX_REGIONS)."""
    if a["trigger"] != b["trigger"]:
        return False
    if a["window"]["end"] <= b["window"]["start"] or b["window"]["end"] <= a["window"]["start"]:
        return False
    ra, rb = region_prefixes(a["regions"]), region_prefixes(b["regions"])
    if ra and rb and not regions_meet(ra, rb):
        return False
    ta, tb = a["target"], b["target"]
    if "skus" in ta or "skus" in tb:
        return "skus" in ta and "skus" in tb and bool(set(ta["skus"]) & set(tb["skus"]))

    def runs(t):
        return _merged_runs([[x, 0, 1 << 40] for x in t["batches"]] if "batches" in t else t["serials"])

    return _runs_meet(runs(ta), runs(tb))


def _key_bytes(key: tuple) -> bytes:
    kind, value, role = key
    return f"{kind}\0{value}\0{role}".encode()


class CampaignIndex:
    """Campaigns by (``batch``, id, code role) and (``sku``, SKU, code role)."""

    def __init__(self, campaigns: list[Campaign]) -> None:
        self.by_key: dict[tuple, list[Campaign]] = {}
        for c in campaigns:
            if c.status == "closed":
                continue
            for k in c.index_keys():
                self.by_key.setdefault(k, []).append(c)

    def candidates(self, batch: int, sku: str | None, code_role: str) -> list[Campaign]:
        got = self.by_key.get(("batch", batch, code_role), [])
        if sku is not None:
            more = self.by_key.get(("sku", sku, code_role))
            if more:
                got = got + more
        return got


class CampaignRegistry:
    """Campaigns in LMDB (``adm_campaigns``); every change is audited and bumps a version
    counter that scan workers poll to refresh their index."""

    def __init__(self, store: Store, audit: AuditLog, pools: PoolRegistry, spec: PackagingSpec,
                 batches: BatchRegistry) -> None:
        self._store = store
        self._audit = audit
        self._pools = pools
        self._spec = spec
        self._batches = batches
        self._db = store.db("adm_campaigns")
        # PERF: the status alone (a scan re-checks it inside its transaction; the rule itself
        # never changes after creation, so scans read it from the in-process index)
        self._status = store.db("adm_campaign_status")
        # index key (kind NUL value NUL code role) -> ids of open campaigns (for overlap checks)
        self._keys = store.db("adm_campaign_keys", dupsort=True)

    @property
    def spec(self) -> PackagingSpec:
        """The data folder's packaging spec (the code roles campaigns are on)."""
        return self._spec

    def version(self) -> int:
        """Changes so far (any process). PERF: one LMDB get, ~1.0 µs: the read transaction
        is aborted, not committed by ``with`` (~1.1 µs), as it may be read on every scan."""
        txn = self._store.read()
        try:
            return self._store.current_id(txn, "campaigns_version")
        finally:
            txn.abort()

    def create(self, rule: dict, *, who: str, now: float | None = None) -> Campaign:
        rule = normalise(rule, spec=self._spec, batches=self._batches, pools=self._pools)
        now = time.time() if now is None else now
        keys = Campaign(0, "active", rule, now).index_keys()
        with self._store.write() as txn:
            for other in self._sharing_keys(txn, keys):
                if _overlap(rule, other.rule):
                    raise Conflict(f"campaign {other.id} ({other.name}) already rewards "
                                   f"{rule['trigger']['actor_role']} scans of {rule['trigger']['code_role']} "
                                   "codes on the same target, regions and time; close it (a paused "
                                   "campaign keeps its place), or narrow this one")
            cid = self._store.next_id(txn, "campaign")
            campaign = Campaign(cid, "active", rule, now)
            txn.put(u32(cid), pack(campaign.to_dict()), db=self._db)
            txn.put(u32(cid), b"active", db=self._status)
            for k in keys:
                txn.put(_key_bytes(k), u32(cid), db=self._keys)
            self._store.next_id(txn, "campaigns_version")
            self._audit.append(txn, who, "campaign.create", str(cid), campaign.to_dict(), now=now)
        return campaign

    def _sharing_keys(self, txn, keys: list[tuple]) -> list[Campaign]:
        """Open (active or paused) campaigns that share an index key with ``keys``."""
        ids: set[int] = set()
        cur = txn.cursor(db=self._keys)
        for k in keys:
            if cur.set_key(_key_bytes(k)):
                ids.update(int.from_bytes(v, "big") for v in cur.iternext_dup())
        return [self.get_in(txn, i) for i in sorted(ids)]

    @staticmethod
    def _from(raw: bytes) -> Campaign:
        d = unpack(raw)
        cid, status, created = d.pop("id"), d.pop("status"), d.pop("created_at")
        return Campaign(cid, status, d, created)

    def _all(self, txn) -> list[Campaign]:
        return [self._from(v) for _, v in txn.cursor(db=self._db)]

    def get_in(self, txn, cid: int) -> Campaign | None:
        raw = txn.get(u32(cid), db=self._db)
        return None if raw is None else self._from(raw)

    def status_in(self, txn, cid: int) -> str | None:
        raw = txn.get(u32(cid), db=self._status)
        return None if raw is None else raw.decode()

    def get(self, cid: int) -> Campaign:
        if isinstance(cid, bool) or not isinstance(cid, int) or not 0 < cid < (1 << 32):
            raise NotFound(f"no campaign {cid}")
        with self._store.read() as txn:
            got = self.get_in(txn, cid)
        if got is None:
            raise NotFound(f"no campaign {cid}")
        return got

    def list(self, status: str | None = None) -> list[Campaign]:
        with self._store.read() as txn:
            return [c for c in self._all(txn) if status is None or c.status == status]

    def index(self) -> tuple[int, CampaignIndex]:
        """(version, index) read in one transaction."""
        with self._store.read() as txn:
            return self._store.current_id(txn, "campaigns_version"), CampaignIndex(self._all(txn))

    _MOVES = {"pause": ("active",), "resume": ("paused",), "close": ("active", "paused")}
    _TO = {"pause": "paused", "resume": "active", "close": "closed"}

    def _set_status(self, cid: int, action: str, who: str, now: float | None) -> Campaign:
        self.get(cid)  # NotFound with a clear message
        with self._store.write() as txn:
            c = self.get_in(txn, cid)
            if c.status not in self._MOVES[action]:
                raise Conflict(f"campaign {cid} is {c.status}; cannot {action} it")
            # NOTE: a paused campaign keeps its place (new overlapping ones are refused), so
            # resuming can never create an overlap.
            c = Campaign(c.id, self._TO[action], c.rule, c.created_at)
            txn.put(u32(cid), pack(c.to_dict()), db=self._db)
            txn.put(u32(cid), c.status.encode(), db=self._status)
            if c.status == "closed":
                for k in c.index_keys():
                    txn.delete(_key_bytes(k), u32(cid), db=self._keys)
            self._store.next_id(txn, "campaigns_version")
            self._audit.append(txn, who, f"campaign.{action}", str(cid), {"status": c.status}, now=now)
        self._store.sync()  # NOTE: a pause or close outlives a power loss ("relaxed" too)
        return c

    def pause(self, cid: int, *, who: str, now: float | None = None) -> Campaign:
        return self._set_status(cid, "pause", who, now)

    def resume(self, cid: int, *, who: str, now: float | None = None) -> Campaign:
        return self._set_status(cid, "resume", who, now)

    def close(self, cid: int, *, who: str, now: float | None = None) -> Campaign:
        return self._set_status(cid, "close", who, now)
