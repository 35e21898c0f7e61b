"""The admin layer over one open data folder: every registry, wired once.

    data = DataFolder(path)
    admin = Admin(data)
    admin.pools.create("summer", total=100_000_00, who="cli:ops")
    admin.campaigns.create({...}, who="cli:ops")
    pipeline = admin.scan_pipeline()      # a ScanPipeline with the campaign hook installed

All of it lives in the data folder's LMDB environment, so a scan, its rewards, the pool
spend and the ledger entries commit in one transaction.
"""

from __future__ import annotations

import time
from functools import cached_property

from admin._util import is_seq
from admin.audit import AuditLog
from admin.campaigns import CampaignRegistry
from admin.ledger import Ledger
from admin.payouts import Payouts
from admin.pools import PoolRegistry
from admin.products import ProductCatalog
from admin.rewards import RewardEngine
from admin.tokens import AdminTokens
from engine.aggregation import Aggregation
from engine.ids import check_name
from engine.data import DataFolder
from engine.errors import Conflict, NotFound
from engine.scan import ScanPipeline
from engine.scanlog import ScanLog

__all__ = ["Admin"]


class Admin:
    def __init__(self, data: DataFolder, *, rng=None, clock=time.time) -> None:
        self.data = data
        self._rng = rng
        self._clock = clock
        store = data.store
        self.audit = AuditLog(store)
        self.products = ProductCatalog(store, self.audit)
        self.pools = PoolRegistry(store, self.audit)
        self.campaigns = CampaignRegistry(store, self.audit, self.pools, data.spec, data.batches)
        self.ledger = Ledger(store)
        self.tokens = AdminTokens(store, self.audit)

    @cached_property
    def aggregation(self) -> Aggregation:
        return Aggregation(self.data)

    @cached_property
    def scans(self) -> ScanLog:
        return ScanLog(self.data.store)

    @cached_property
    def rewards(self) -> RewardEngine:
        return RewardEngine(self.data.store, self.campaigns, self.pools, self.ledger, rng=self._rng,
                            audit=self.audit)

    @cached_property
    def payouts(self) -> Payouts:
        """The hand-off of payable entries to the payment system (export, webhook outbox)."""
        return Payouts(self.data.store, self.ledger, self.audit)

    def reverse(self, seq: int, *, reason: str, who: str, now: float | None = None) -> dict:
        """Cancel a payable ledger entry that the payment system never paid: a ``reversal``
        entry is appended, the payout is cancelled and the budget goes back — all in one
        transaction.

        The budget returns to the pool on the day and in the region it was charged: for a
        grant, its own; for an unlock, the locked reward's. A redemption's budget was
        charged when its voucher was issued: reversing the redemption puts the voucher back
        (``issued``: the consumer may redeem it again until it expires, when its budget
        returns), or expires it at once, budget returned, if its time is past.

        An entry never sent, or one the payment system refused (``rejected``: a 4xx
        answer) with no attempt that may have been delivered, can be reversed. Anything
        else sent cannot be reversed here (the payment system may have it; settle it there):
        also a rejected entry one of whose earlier attempts got no answer, a 3xx or 5xx
        (e.g. a copy paid whose answer was lost, then ``409 idempotency key already used``;
        see "Reversal" in admin/payouts.py). On disk when this returns, in a ``relaxed``
        data folder too."""
        check_name(reason, "reason", limit=500, hint=": say why the entry is reversed (--reason)")
        now = self._clock() if now is None else now
        store = self.data.store
        payouts = self.payouts
        rewards = self.rewards  # NOTE: built outside the write txn (it opens its databases)
        with store.write() as txn:
            e = self.ledger.get_in(txn, seq) if is_seq(seq) else None
            if e is None:
                raise NotFound(f"no ledger entry {seq}")
            if not e["payable"]:
                raise Conflict(f"ledger entry {seq} is a {e['kind']} entry; only payable entries are reversed")
            if self.ledger.referred_by(txn, seq) is not None:
                raise Conflict(f"ledger entry {seq} was already reversed")
            payouts.cancel_in(txn, seq, now=now)
            if e["kind"] == "redeem":
                rewards.unredeem_in(txn, e["voucher"], seq, now)
            else:
                charge = self.ledger.get_in(txn, e["ref"]) if e["kind"] == "unlock" else e
                self.pools.refund(txn, e["pool"], e["amount"], charge.get("region"), charge["at"])
            entry = {k: e.get(k) for k in ("campaign", "pool", "unit", "beneficiary", "amount", "region")}
            rseq = self.ledger.append(txn, {**entry, "kind": "reversal", "at": now, "ref": seq, "scan": None,
                                            "reason": reason.strip()})
            self.audit.append(txn, who, "ledger.reverse", str(seq), {"reversal": rseq, "reason": reason.strip()},
                              now=now)
        # NOTE: a cancelled payout must stay cancelled: on disk whatever the durability (with
        # "relaxed" a power loss could undo the reversal and a deliverer then send the payout)
        store.sync()
        return self.ledger.get(rseq)

    def lift_ban(self, subject: str, *, who: str, now: float | None = None):
        """Lift an enumeration ban; the audit entry is written in the same transaction."""
        abuse = self.data.abuse  # NOTE: opened outside the write txn (it opens its databases)
        now = self._clock() if now is None else now
        with self.data.store.write() as txn:
            ban = abuse.lift_in(txn, subject, now)
            self.audit.append(txn, who, "ban.lift", subject,
                              {"reason": ban.reason, "expires_at": ban.expires_at}, now=now)
        return ban

    def sweep(self, *, who: str, now: float | None = None) -> dict:
        """Expire vouchers and locked rewards past their time (budget returned), audited in
        the same transaction."""
        rewards = self.rewards  # NOTE: built outside the write txn (it opens its databases)
        now = self._clock() if now is None else now
        with self.data.store.write() as txn:
            result = rewards.sweep_in(txn, now)
            self.audit.append(txn, who, "voucher.sweep", "vouchers", result, now=now)
        return result

    def list_bans(self, **options) -> list:
        """:meth:`engine.abuse.AbuseGuard.list_bans` now by this admin's clock."""
        return self.data.abuse.list_bans(self._clock(), **options)

    def scan_pipeline(self, **options) -> ScanPipeline:
        """The scan pipeline with campaign rewards (what ``wuma serve`` runs)."""
        return ScanPipeline(self.data.codes, self.aggregation, self.scans, self.data.abuse,
                            self.data.accounts, hooks=[self.rewards], regions=self.data.regions,
                            clock=self._clock, **options)

    def close(self) -> None:
        if "scans" in self.__dict__:
            self.scans.close()
