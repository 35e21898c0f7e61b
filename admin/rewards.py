"""Campaign rewards at scan time: the scan pipeline's campaign hook.

Two steps, split so that the slow part never holds the write lock:

1. :meth:`RewardEngine.__call__` (outside any transaction, ~µs): find the campaigns of
   the scanned unit's batch and product in the in-process index, keep those whose
   trigger, window and regions match, and draw each prize (``secrets``-grade random,
   injectable for tests). Returns a *settle* function, or None when nothing applies.
2. The settle function runs **inside the scan's durable write transaction** (the scan
   log's group commit; a failure undoes only this scan's rewards): it re-reads the
   campaign's status, enforces one reward per code per campaign ever, the per-actor,
   per-device and per-address limits, the pool's total/daily/region caps, writes the ledger entries, issues
   vouchers, applies locks, and pays linked rebates — or
   withholds them when the scan is diverted (窜货不返利). LMDB admits one writer at a
   time across all gunicorn workers, so none of this can race: a pool is never
   overspent and a code never pays twice.

Store registration (bC): a store's genuine scan of a code it scans above the consumer's
(:func:`registration_roles`: cap outer, case inner, case or box code, as the packaging spec
has them) records that store as the unit's store (first store wins), and whether that scan
was diverted. A consumer's later scan that counts in a campaign (win or lose: it
proves the sale) pays a ``store`` rebate to the store registered on the cap or any unit
above it, and a ``distributor`` rebate to the distributor the unit was shipped to (BbC).
Both are withheld when the consumer's scan or the registering store's scan was diverted
(窜货不返利), and the store's when its account has been revoked since.

A distributor's own reward (a campaign triggered by distributors' scans, e.g. on receipt)
is paid only for goods shipped to that distributor (``not_your_goods`` otherwise).
"""

from __future__ import annotations

import secrets
import struct
import time
from typing import Callable

from admin._util import china_day_number, in_regions
from admin.audit import AuditLog
from admin.campaigns import Campaign, CampaignIndex, CampaignRegistry
from admin.ledger import Ledger
from admin.pools import PoolRegistry
from engine.accounts import AccountRegistry
from engine.errors import Conflict, NotFound
from engine.scan import DEFAULT_ROLE_RULES, ScanContext
from engine.scanlog import WriteMemo
from engine.spec import PackagingSpec
from engine.store import Store, pack, u32, u64, unpack

__all__ = ["RewardEngine", "registration_roles", "OUTCOMES"]

#: What a campaign did for a scan (``rewards[].outcome`` of the scan answer and event).
OUTCOMES = ("granted", "locked", "unlocked", "voucher", "no_win", "already_rewarded",
            "limit_reached", "budget_exhausted", "outside_pool_regions", "no_payee", "not_your_goods", "copied",
            "no_beneficiary", "withheld_diverted", "beneficiary_revoked", "campaign_inactive", "expired")
_DAY = 86400.0
#: A count of draws (per actor, device or client address): China day number, draws that day, draws in
#: all, draws the day before it (for a scan committed after midnight but stamped before).
_COUNTS = struct.Struct(">IIII")
_COUNTS_V1 = struct.Struct(">III")  # the layout before: no day before (read as 0)
# NOTE: _DIVERTED and _DEVICE are both a NUL byte, with unrelated meanings in different
# databases (one ends a value, the other starts part of a key): neither is read for the
# other. A NUL is safe as a marker in both because no id around it can hold one: account
# ids are engine.ids.is_id (letters, digits, "_", ".", "-"), and the scan API's actor and
# device ids are printable text (no control characters).
#: Ends a store registration (``adm_store_units``: the store's account id) made by a
#: diverted scan. Account ids never hold a NUL, so a value from before reads as not diverted.
_DIVERTED = b"\0"
#: Starts a device's count key in ``adm_actor_counts`` (after the campaign): actor ids
#: never start with a NUL, so a device's key never meets an actor's ...
_DEVICE = b"\0"
#: ... and a client address's two NULs: device ids never start with one either.
_IP = b"\0\0"
_VOUCHER_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def registration_roles(spec: PackagingSpec, role_rules: dict = DEFAULT_ROLE_RULES) -> frozenset[str]:
    """The code roles whose scan by a store registers the unit to that store (bC): the
    roles of ``spec`` a store scans (``role_rules``), but those a consumer scans (the inner
    code whose scan proves the sale): cap outer and case inner codes in the beverage preset,
    cap outer, box and case codes in the baijiu one."""
    consumer = role_rules.get("consumer", frozenset())
    return frozenset(r for r in role_rules.get("store", ()) if r in spec.roles and r not in consumer)


def _new_voucher_id() -> str:
    # APPSEC: 100 random bits: vouchers are bearer instruments, not guessable.
    return "V" + "".join(secrets.choice(_VOUCHER_ALPHABET) for _ in range(20))


def _count(raw: bytes | None, day: int, per_day: int | None, per_all: int | None, day_name: str,
           all_name: str):
    """Check and count one draw against a count (``_COUNTS``) read from the store, under
    the limits ``per_day`` (named ``day_name``) and ``per_all`` (``all_name``): returns
    ``(None, new value)`` when it counts, else ``(the name of the limit that refuses it,
    None)``.

    NOTE: a scan stamped before the stored day can commit after it (a group taken across
    midnight): it must not move the day back and reset the new day's count. A scan of the
    day before is checked against that day's count, kept for this; an older one (a commit
    more than a day late: not expected) counts in the total only, its day's count being no
    longer kept, so its daily cap is not checked."""
    if raw is None:
        last, today, total, before = 0, 0, 0, 0
    elif len(raw) == 16:
        last, today, total, before = _COUNTS.unpack(raw)
    else:  # a value from before the day before was kept
        last, today, total = _COUNTS_V1.unpack(raw)
        before = 0
    if day >= last:
        if day > last:
            before = today if day == last + 1 else 0
            last, today = day, 0
        if per_day is not None and today >= per_day:
            return day_name, None
        today += 1
    elif day == last - 1:
        if per_day is not None and before >= per_day:
            return day_name, None
        before += 1
    if per_all is not None and total >= per_all:
        return all_name, None
    return None, _COUNTS.pack(last, today, total + 1, before)


def _unpaid(charges, pool: str, region: str | None) -> str:
    """Why a charge was refused: the pool pays only in its capped regions, or it is spent."""
    return "budget_exhausted" if charges.covers(pool, region) else "outside_pool_regions"


class RewardEngine:
    """One per process. ``rng`` (anything with ``random()``) and ``new_voucher_id`` are
    injectable so tests are deterministic; production uses ``secrets.SystemRandom``."""

    def __init__(self, store: Store, campaigns: CampaignRegistry, pools: PoolRegistry, ledger: Ledger,
                 *, rng=None, new_voucher_id: Callable[[], str] = _new_voucher_id,
                 refresh_interval: float = 0.5, accounts: AccountRegistry | None = None,
                 audit: AuditLog | None = None) -> None:
        self._store = store
        self.campaigns = campaigns
        self.pools = pools
        self.ledger = ledger
        self._rng = rng or secrets.SystemRandom()
        self._new_voucher_id = new_voucher_id
        self._refresh_interval = refresh_interval
        self._store_units = store.db("adm_store_units")  # u64 unit -> store account id [+ _DIVERTED]
        self._code_rewards = store.db("adm_code_rewards")  # u32 campaign u64 unit u8 role -> u64 scan
        self._actor_counts = store.db("adm_actor_counts")  # u32 campaign (actor | _DEVICE device) -> _COUNTS
        self._accounts = accounts or AccountRegistry(store)  # a store's revocation
        self._audit = audit or AuditLog(store)  # redemptions
        #: code roles a store's scan registers (bC), from the data folder's packaging spec
        self.registration_roles = registration_roles(campaigns.spec)
        self._progress = store.db("adm_lock_progress")  # u32 campaign actor -> [[at, sku, seq]...]
        self._vouchers = store.db("adm_vouchers")  # voucher id -> record
        self._version = -1
        self._units: dict[str, str] = {}
        self._index = CampaignIndex([])
        self._checked_at = 0.0

    # -- step 1: outside the transaction --------------------------------------------------
    def refresh(self) -> None:
        """Reload the campaign index if any process changed a campaign."""
        checked = time.monotonic()
        version = self.campaigns.version()
        if version != self._version:
            self._version, self._index = self.campaigns.index()
        # NOTE: only now, so a thread that skips the check meanwhile never sees a stale index
        self._checked_at = checked

    def __call__(self, ctx: ScanContext):
        if time.monotonic() - self._checked_at >= self._refresh_interval:
            self.refresh()
        req = ctx.request
        register = req.actor_role == "store" and ctx.code_role in self.registration_roles
        if "role_not_allowed" in ctx.flags:
            return None
        product = ctx.trace.get("product")
        sku = product["sku"] if product else None
        batch, serial = ctx.unit >> 32, ctx.unit & 0xFFFFFFFF
        matched = [c for c in self._index.candidates(batch, sku, ctx.code_role)
                   if c.matches(req.actor_role, ctx.at, req.region, batch, serial)]
        if not matched and not register:
            return None
        actor = ctx.account_id or req.actor_id
        if (matched and req.actor_role == "distributor"
                and (ctx.trace.get("distributor") or {}).get("id") != actor):
            # A distributor earns only on goods shipped to it: another's (flagged diverted
            # or not) earn it nothing, and the code keeps its chance for its own distributor
            # (nothing drawn). NOTE: decided here, outside the write, as the rebates'
            # distributor is: on the trace.
            refused = [{"campaign": c.id, "name": c.name, "outcome": "not_your_goods",
                        "message": "these goods were not shipped to this distributor"} for c in matched]
            return lambda txn, seq, memo=None: list(refused)
        draws = [(c, self._draw(c), self._new_voucher_id() if c.rule["reward"]["payout"] == "voucher" else None)
                 for c in matched]

        def settle(txn, seq: int, memo: WriteMemo | None = None) -> list[dict]:
            # PERF: the settlement reads the scan's context itself (no per-scan dict of it)
            if memo is not None:  # the scan log's group commit
                return self._settle(txn, seq, ctx, actor, sku, draws, register, memo)
            memo = WriteMemo()  # a settlement on its own
            out = self._settle(txn, seq, ctx, actor, sku, draws, register, memo)
            memo.finish(txn)
            return out

        return settle

    def _draw(self, c: Campaign) -> int:
        reward = c.rule["reward"]
        if reward["kind"] == "fixed":
            return reward["amount"]
        x = self._rng.random()
        acc = 0.0
        for t in reward["tiers"]:
            acc += t["odds"]
            if x < acc:
                return t["amount"]
        return reward["tiers"][-1]["amount"]

    # -- step 2: inside the durable write -----------------------------------------------
    def _settle(self, txn, seq: int, ctx: ScanContext, actor: str | None, sku: str | None, draws: list,
                register: bool, memo: WriteMemo) -> list[dict]:
        if memo.copied:
            # A copied label (its code seen from too many places or devices: the scan log's
            # record) pays nothing and registers no store: its scans are as likely of a
            # counterfeit as of the bottle it was copied from. Nothing is claimed or charged.
            return [{"campaign": c.id, "name": c.name, "outcome": "copied",
                     "message": "this code has been flagged copied: it earns nothing"} for c, _, _ in draws]
        if register and actor:
            # the registration keeps whether its scan was diverted: the goods went to a store
            # outside the distributor's territory, so no rebate is paid for them later
            txn.put(u64(ctx.unit), actor.encode() + _DIVERTED if "diverted" in ctx.flags else actor.encode(),
                    db=self._store_units, overwrite=False)
        out: list[dict] = []
        charges = self.pools.charges(txn, memo)
        # the unit's store registration (_registration), read by the first campaign of the
        # scan that pays rebates and kept for the others: the scan writes none after the one
        # above, so it is the same for all of them
        reg: list = []
        for c, amount, voucher_id in draws:
            out.extend(self._settle_campaign(txn, seq, ctx, actor, sku, c, amount, voucher_id, charges, memo,
                                             reg))
        charges.flush()
        return out

    def _settle_campaign(self, txn, seq: int, ctx: ScanContext, actor: str | None, sku: str | None,
                         c: Campaign, amount: int, voucher_id: str | None, charges, memo: dict,
                         reg: list) -> list[dict]:
        # PERF: results and ledger entries are built as whole dicts, never merged from
        # partial ones (~0.3 µs a merge; a rewarded scan used to make eight).
        cid = c.id
        status = memo.get(("campaign_status", cid))
        if status is None:  # read once per write transaction (see ScanLog.record's memo)
            status = memo[("campaign_status", cid)] = self.campaigns.status_in(txn, cid)
        if status != "active":  # paused/closed since the index was read
            return [{"campaign": cid, "name": c.name, "outcome": "campaign_inactive"}]
        rule = c.rule  # rules never change after creation; only the status does
        if not actor:
            return [{"campaign": cid, "name": c.name, "outcome": "no_payee",
                     "message": "scan signed in (with a user id) to receive rewards"}]
        # The code has its one chance in this campaign, win or lose (a scan the pool cannot
        # afford gives it back, below). PERF: one put that
        # refuses to overwrite answers "already rewarded?" and claims the code at once.
        # (The hot LMDB calls here pass their arguments by position, put(key, value,
        # dupdata, overwrite, append, db) and get(key, default, db): py-lmdb parses
        # keywords slowly, ~0.1 µs a call.)
        campaign_key = u32(cid)
        code_key = campaign_key + u64(ctx.unit) + ctx.code_role.encode()
        if not txn.put(code_key, u64(seq), True, False, False, self._code_rewards):
            return [{"campaign": cid, "name": c.name, "outcome": "already_rewarded"}]
        limits = rule["limits"]
        counted = []  # [(key, value)]: the counts to write once the scan is not refused
        if limits:
            # Per-actor participation: one key per (campaign, actor) holding _COUNTS (day
            # number, draws that day, in all, the day before) — one read and one write;
            # per-device (羊毛党: one phone claiming under many user ids) the same, keyed by
            # the scan's device id, and per client address (a farm of phones behind one
            # address, device ids made up). A scan without one is not counted against it.
            # (PERF: the pairs are written out here: a module-level table zipped with the
            # ids cost ~0.3 µs more a scan.)
            day = china_day_number(ctx.at)
            for who, prefix, day_name, all_name in ((actor, b"", "per_actor_per_day", "per_actor"),
                                                    (ctx.request.device, _DEVICE, "per_device_per_day",
                                                     "per_device"),
                                                    (ctx.request.ip, _IP, "per_ip_per_day", "per_ip")):
                if not who:
                    continue
                per_day, per_all = limits.get(day_name), limits.get(all_name)
                if per_day is None and per_all is None:
                    continue
                count_key = campaign_key + prefix + who.encode()
                refused, value = _count(txn.get(count_key, None, self._actor_counts), day, per_day, per_all,
                                        day_name, all_name)
                if refused is not None:
                    txn.delete(code_key, db=self._code_rewards)  # the code keeps its chance
                    return [{"campaign": cid, "name": c.name, "outcome": "limit_reached", "limit": refused,
                             "max": per_day if refused == day_name else per_all}]
                counted.append((count_key, value))

        reward = rule["reward"]
        pool, at, region = c.pool, ctx.at, ctx.request.region
        unit = self._pool_unit(txn, pool)
        results = []
        if amount == 0:
            results.append({"campaign": cid, "name": c.name, "outcome": "no_win"})
        else:
            charged = charges.charge(pool, amount, region, at)
            if not charged and reward["kind"] == "all_win" and amount > reward["min_amount"]:
                amount = reward["min_amount"]
                charged = charges.charge(pool, amount, region, at)
            if not charged:
                # NOTE: nothing is paid for a scan the pool cannot afford, rebates neither: the
                # code keeps its chance and the actor the slot (as for limit_reached), so
                # after a top-up they can try again, and nothing is paid twice for the code.
                txn.delete(code_key, db=self._code_rewards)
                return [{"campaign": cid, "name": c.name, "outcome": _unpaid(charges, pool, region)}]
            else:
                payout, lock = reward["payout"], rule.get("lock")
                kind = "voucher" if payout == "voucher" else "locked" if lock else "grant"
                entry = {"at": at, "campaign": cid, "pool": pool, "scan": seq, "unit": unit,
                         "beneficiary": {"role": ctx.request.actor_role, "id": actor}, "region": region,
                         "kind": kind, "amount": amount}
                if kind == "voucher":
                    entry["voucher"] = voucher_id
                    entry["expires_at"] = expires = at + reward["valid_days"] * _DAY
                lseq = self.ledger.append(txn, entry, memo)
                if kind == "voucher":
                    txn.put(voucher_id.encode(), pack({
                        "id": voucher_id, "campaign": cid, "pool": pool, "value": amount,
                        "holder": actor, "issued_at": at, "expires_at": expires, "ledger": lseq,
                        "region": region, "state": "issued"}), db=self._vouchers)
                    results.append({"campaign": cid, "name": c.name, "outcome": "voucher", "amount": amount,
                                    "unit": unit, "voucher": voucher_id, "expires_at": expires,
                                    "ledger": lseq})
                elif kind == "locked":
                    results.append({"campaign": cid, "name": c.name, "outcome": "locked", "amount": amount,
                                    "unit": unit, "ledger": lseq, "lock": lock})
                    results.extend(self._progress_lock(txn, seq, c, lock, actor, at, sku, lseq, charges, memo))
                else:
                    results.append({"campaign": cid, "name": c.name, "outcome": "granted", "amount": amount,
                                    "unit": unit, "ledger": lseq})
        for count_key, value in counted:
            txn.put(count_key, value, True, True, False, self._actor_counts)
        # NOTE: rebates follow every scan that counts in the campaign, a losing draw too: in
        # the bC / BbC schemes the consumer's scan is the proof of sale that pays the store
        # and the distributor (not the consumer's luck). A scan refused above (limit,
        # already rewarded, budget) pays none.
        rebates = rule["rebates"]
        if rebates:
            if "diverted" in ctx.flags:
                for rebate in rebates:
                    results.append({"campaign": cid, "name": c.name, "rebate": rebate["to"],
                                    "outcome": "withheld_diverted"})
            else:
                if not reg:  # the scan's first campaign with rebates
                    reg.append(self._registration(txn, ctx))
                for rebate in rebates:
                    results.append(self._rebate(txn, seq, ctx, c, rebate, unit, reg[0], charges, memo))
        return results

    def _pool_unit(self, txn, pool_id: str) -> str:
        unit = self._units.get(pool_id)
        if unit is None:  # a pool's unit never changes
            unit = self._units[pool_id] = self.pools.get_in(txn, pool_id).unit
        return unit

    def _registration(self, txn, ctx: ScanContext) -> bytes | None:
        """The store registration (``adm_store_units`` value) on the unit or the nearest
        unit above it (bC), or None."""
        raw = txn.get(u64(ctx.unit), None, self._store_units)  # (positional: see above)
        if raw is None:
            for a in ctx.trace["ancestors"]:
                raw = txn.get(u64((a["batch"] << 32) | a["serial"]), None, self._store_units)
                if raw is not None:
                    break
        return raw

    def _payable(self, txn, to: str, who: str, memo: dict) -> bool:
        """Whether a rebate's beneficiary may be paid, read in the transaction (a
        revocation stops its rebates at once): a store's account must be on record and
        active; a distributor (a registry record, paid whether or not it has a scanning
        account) must not have its distributor account revoked. Read once per write
        transaction (see ScanLog.record's memo: accounts are not written in it)."""
        key = ("payable", to, who)
        payable = memo.get(key)
        if payable is None:
            accounts = self._accounts
            payable = memo[key] = (accounts.active_in(txn, who) if to == "store"
                                   else not accounts.revoked_in(txn, who, "distributor"))
        return payable

    def _rebate(self, txn, seq: int, ctx: ScanContext, c: Campaign, rebate: dict, unit: str,
                reg: bytes | None, charges, memo: dict) -> dict:
        """One linked rebate of a scan that is not diverted; ``reg`` is the unit's store
        registration (:meth:`_registration`). Nothing is charged for one withheld."""
        to = rebate["to"]
        if reg is not None and reg[-1:] == _DIVERTED:
            # 窜货不返利: the goods were registered by a store outside the territory
            return {"campaign": c.id, "name": c.name, "rebate": to, "outcome": "withheld_diverted"}
        if to == "distributor":
            who = (ctx.trace.get("distributor") or {}).get("id")
        else:
            who = None if reg is None else reg.decode()
        if who is None:
            return {"campaign": c.id, "name": c.name, "rebate": to, "outcome": "no_beneficiary"}
        if not self._payable(txn, to, who, memo):
            return {"campaign": c.id, "name": c.name, "rebate": to, "outcome": "beneficiary_revoked"}
        amount = rebate["amount"]
        region, at = ctx.request.region, ctx.at
        if not charges.charge(c.pool, amount, region, at):
            return {"campaign": c.id, "name": c.name, "rebate": to, "outcome": _unpaid(charges, c.pool, region)}
        b = {"role": to, "id": who}
        lseq = self.ledger.append(txn, {"at": at, "campaign": c.id, "pool": c.pool, "scan": seq,
                                        "unit": unit, "beneficiary": b, "region": region,
                                        "kind": "grant", "amount": amount, "rebate": to}, memo)
        return {"campaign": c.id, "name": c.name, "rebate": to, "outcome": "granted", "amount": amount,
                "unit": unit, "beneficiary": dict(b), "ledger": lseq}

    def _progress_lock(self, txn, seq: int, c: Campaign, lock: dict, actor: str, now: float, sku: str | None,
                       lseq: int, charges, memo: dict) -> list[dict]:
        """Repurchase / collect-N: keep the actor's locked rewards of this campaign; expire
        those older than the lock's days; unlock them all when the condition is met."""
        key = u32(c.id) + actor.encode()
        raw = txn.get(key, db=self._progress)
        held = [] if raw is None else unpack(raw)
        horizon = now - lock["days"] * _DAY
        keep, out = [], []
        for at, held_sku, s in held:
            if at < horizon:
                out.append(self._expire(txn, s, at, now, charges, memo))
            else:
                keep.append([at, held_sku, s])
        keep.append([now, sku, lseq])
        met = (len(keep) >= 2 if lock["kind"] == "repurchase"
               else len({k[1] for k in keep if k[1]}) >= lock["products"])
        if met:
            for _, _, s in keep:
                locked = self.ledger.get_in(txn, s)
                u = self.ledger.append(txn, {k: locked[k] for k in ("campaign", "pool", "unit", "beneficiary",
                                                                   "amount", "region")}
                                       | {"kind": "unlock", "at": now, "ref": s, "scan": seq}, memo)
                out.append({"campaign": c.id, "name": c.name, "outcome": "unlocked",
                            "amount": locked["amount"], "unit": locked["unit"], "ledger": u, "ref": s})
            txn.delete(key, db=self._progress)
        else:
            txn.put(key, pack(keep), db=self._progress)
        return out

    def _expire(self, txn, seq: int, charged_at: float, now: float, charges=None,
                memo: dict | None = None) -> dict:
        """Return a locked reward's or voucher's budget (charged at ``charged_at``), through
        the settlement's ``charges`` and ``memo`` when there are (they hold the current
        pool state and ledger seq)."""
        e = self.ledger.get_in(txn, seq)
        if charges is None:
            self.pools.refund(txn, e["pool"], e["amount"], e.get("region"), charged_at)
        else:
            charges.refund(e["pool"], e["amount"], e.get("region"), charged_at)
        x = self.ledger.append(txn, {k: e[k] for k in ("campaign", "pool", "unit", "beneficiary", "amount")}
                               | {"kind": "expire", "at": now, "ref": seq, "scan": None}, memo)
        return {"campaign": e["campaign"], "outcome": "expired", "amount": e["amount"], "ledger": x, "ref": seq}

    # -- vouchers (N元换购) ------------------------------------------------------------------
    def voucher(self, voucher_id: str) -> dict:
        vid = voucher_id.strip().upper() if isinstance(voucher_id, str) else ""
        if not 0 < len(vid) <= 64:
            raise NotFound("no such voucher")
        with self._store.read() as txn:
            raw = txn.get(vid.encode(), db=self._vouchers)
        if raw is None:
            raise NotFound("no such voucher")
        return unpack(raw)

    def redeem(self, voucher_id: str, store_account, *, who: str | None = None,
               now: float | None = None) -> dict:
        """A store redeems (核销) a consumer's voucher: the store is credited the face value
        (payable, settled with the store's distributor), and a ``voucher.redeem`` audit
        entry by ``who`` is written in the same transaction (``account:<store id>`` when
        not given: the store's own redemption; ``cli:<user>`` from the command line).
        Exactly once: when this returns the redemption is on disk, in a ``relaxed`` data
        folder too. Returns the voucher's record, with ``repeat``.

        Only a consumer's voucher is redeemed: one issued to an account's own scan (a
        store's, by a rule an earlier release accepted) is refused (Conflict), else a store
        would redeem its own voucher for cash, no goods handed over.

        The same store (account) again, once it is redeemed — a till retrying after a lost
        answer — is answered with its redemption as it stands (``repeat`` True: the same
        ``redeem_ledger`` entry; nothing is written, so nothing is credited or charged
        twice); any other store gets Conflict ``voucher already redeemed``. A redemption
        reversed since (:meth:`unredeem_in`) is no longer one: the voucher is ``issued``
        again, so the store's request redeems it anew (a new entry, ``repeat`` False), or
        ``expired`` (Conflict). A store account that is not active (revoked) is refused
        (Conflict), read inside the write: the HTTP route only takes an active
        account's token, but ``wuma voucher redeem --store`` names the account."""
        if store_account.role != "store":
            raise Conflict("only a store redeems vouchers")
        now = time.time() if now is None else now
        vid = voucher_id.strip().upper() if isinstance(voucher_id, str) else ""
        who = f"account:{store_account.id}" if who is None else who
        with self._store.write() as txn:
            # NOTE: read in the write, not from store_account: a revocation since the
            # account was read counts
            if not self._accounts.active_in(txn, store_account.id):
                raise Conflict(f"store account {store_account.id} is revoked: it redeems no vouchers")
            raw = txn.get(vid.encode(), db=self._vouchers) if 0 < len(vid) <= 64 else None
            if raw is None:
                raise NotFound("no such voucher")
            v = unpack(raw)
            # NOTE: checked before the voucher's time and regions: those held when it was
            # redeemed, and a repeat answers that redemption
            repeat = v["state"] == "redeemed" and v.get("redeemed_by") == store_account.id
            if not repeat:
                self._redeem_in(txn, vid, v, store_account, now)
                self._audit.append(txn, who, "voucher.redeem", vid,
                                   {"store": store_account.id, "amount": v["value"],
                                    "ledger": v["redeem_ledger"]}, now=now)
        # NOTE: the store hands the goods over on this answer: on disk whatever the folder's
        # durability (with "relaxed" a power loss could undo it, and the voucher be redeemed
        # again), at one fsync a redemption. A repeat too: the first answer may have been
        # lost to a crash between its commit and its sync.
        self._store.sync()
        return {**v, "repeat": repeat}

    def _redeem_in(self, txn, vid: str, v: dict, store_account, now: float) -> None:
        if v["state"] != "issued":
            raise Conflict(f"voucher already {v['state']}")
        if now >= v["expires_at"]:
            raise Conflict("voucher expired")
        # APPSEC: the voucher's holder, as its issuing entry names it (vouchers stored by an
        # earlier release do not keep the holder's role). The message names no holder: any
        # store that has the id may ask.
        holder = self.ledger.get_in(txn, v["ledger"])["beneficiary"]
        if holder["role"] != "consumer":
            raise Conflict(f"this voucher was issued to a {holder['role']}'s own scan, not to a consumer's: "
                           "a store redeems only a consumer's voucher")
        c = self.campaigns.get_in(txn, v["campaign"])
        if c is not None and c.rule["regions"] and not in_regions(store_account.region, c.region_prefixes):
            raise Conflict("this voucher is redeemable only in the campaign's regions")
        unit = self.pools.get_in(txn, v["pool"]).unit
        lseq = self.ledger.append(txn, {
            "kind": "redeem", "at": now, "campaign": v["campaign"], "pool": v["pool"], "scan": None,
            "unit": unit, "amount": v["value"], "beneficiary": {"role": "store", "id": store_account.id},
            "settle_with": store_account.distributor, "ref": v["ledger"], "voucher": vid})
        v.update(state="redeemed", redeemed_by=store_account.id, redeemed_at=now, redeem_ledger=lseq)
        txn.put(vid.encode(), pack(v), db=self._vouchers)

    def unredeem_in(self, txn, voucher_id: str, redeem_seq: int, now: float) -> dict:
        """Undo a redemption (its ledger entry ``redeem_seq`` is being reversed) inside the
        caller's write transaction: the voucher is ``issued`` again, or, past its time,
        expired with its budget returned as a sweep would."""
        raw = txn.get(voucher_id.encode(), db=self._vouchers)
        v = None if raw is None else unpack(raw)
        if v is None or v["state"] != "redeemed" or v.get("redeem_ledger") != redeem_seq:
            raise Conflict(f"voucher {voucher_id} is not redeemed by ledger entry {redeem_seq}")
        for k in ("redeemed_by", "redeemed_at", "redeem_ledger"):
            v.pop(k, None)
        v["state"] = "issued"
        if now >= v["expires_at"]:
            self._expire(txn, v["ledger"], v["issued_at"], now)
            v["state"] = "expired"
        txn.put(voucher_id.encode(), pack(v), db=self._vouchers)
        return v

    def sweep(self, now: float | None = None) -> dict:
        """Expire vouchers and locked rewards past their time, returning their budget."""
        with self._store.write() as txn:
            return self.sweep_in(txn, now)

    def sweep_in(self, txn, now: float | None = None) -> dict:
        """:meth:`sweep` inside the caller's write transaction."""
        now = time.time() if now is None else now
        n_v = n_l = 0
        for k, raw in list(txn.cursor(db=self._vouchers)):
            v = unpack(raw)
            if v["state"] == "issued" and now >= v["expires_at"]:
                self._expire(txn, v["ledger"], v["issued_at"], now)
                v["state"] = "expired"
                txn.put(k, pack(v), db=self._vouchers)
                n_v += 1
        for k, raw in list(txn.cursor(db=self._progress)):
            cid = int.from_bytes(k[:4], "big")
            c = self.campaigns.get_in(txn, cid)
            horizon = now - c.rule["lock"]["days"] * _DAY
            held = unpack(raw)
            keep = [h for h in held if h[0] >= horizon]
            for at, _, s in held:
                if at < horizon:
                    self._expire(txn, s, at, now)
                    n_l += 1
            if keep:
                txn.put(k, pack(keep), db=self._progress)
            else:
                txn.delete(k, db=self._progress)
        return {"vouchers_expired": n_v, "locks_expired": n_l}
