"""The reward ledger: append-only. Nothing in it is ever changed or deleted.

Every entry has a sequence number, a time, a kind, an amount in its pool's unit and a
beneficiary (``{"role": "consumer" | "store" | "distributor" | ..., "id": ...}``), and
references the scan (event sequence number), campaign and pool it came from.

Kinds::

    grant          a reward paid out (payable)
    locked         a reward held until its unlock condition (not payable; budget reserved)
    unlock         a locked reward released (payable; ``ref`` = the locked entry)
    expire         a locked reward or voucher that ran out (budget returned; ``ref``)
    voucher        a voucher issued to a consumer (not payable; face value reserved)
    redeem         a voucher redeemed by a store (payable to the store; ``settle_with``
                   names the store's distributor; ``ref`` = the voucher entry)
    reversal       an admin's cancellation of an unpaid payable entry (``ref``; budget
                   returned, the payout is cancelled)

Payable entries go to the payment system through :mod:`admin.payouts`; a reward is
"paid" only when the receiver acknowledges it there.

The first time a release with idempotency keys ``wuma-<seq>-<digest>`` opens a store, the
ledger records its last seq then (``adm_payouts_meta`` ``b"plain_keys_through"``, 0 in a
new folder; see "Idempotency keys" in :mod:`admin.payouts`): entries up to it were written
by an earlier release, which sends ``wuma-<seq>``. It is written by the constructor, in its
own write transaction, before this process can append anything (every appender opens a
:class:`Ledger` first), and only when missing.
"""

from __future__ import annotations

from admin._util import check_after
from engine.ids import check_limit
from engine.store import Store, pack, u64, unpack

__all__ = ["Ledger", "KINDS", "PAYABLE_KINDS"]

#: Where the last seq written before this release first opened the store is recorded.
_PLAIN_KEYS_DB = "adm_payouts_meta"
_PLAIN_KEYS = b"plain_keys_through"

KINDS = ("grant", "locked", "unlock", "expire", "voucher", "redeem", "reversal")
PAYABLE_KINDS = frozenset({"grant", "unlock", "redeem"})
_KIND_SET = frozenset(KINDS)


class Ledger:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.db("adm_ledger")
        # the entry (seq) a later entry refers to -> the referring seq (reversed, unlocked...)
        self._refs = store.db("adm_ledger_refs")
        plain = store.db(_PLAIN_KEYS_DB)
        with store.read() as txn:
            raw = txn.get(_PLAIN_KEYS, db=plain)
        if raw is None:
            # NOTE: read and write in one write transaction, so processes opening the store
            # at once record the same seq (the first one's; the others find it there).
            with store.write() as txn:
                raw = txn.get(_PLAIN_KEYS, db=plain)
                if raw is None:
                    raw = u64(self.last_seq_in(txn))
                    txn.put(_PLAIN_KEYS, raw, db=plain)
        #: The last seq an earlier release wrote: entries up to it are paid under
        #: ``wuma-<seq>``, later ones under ``wuma-<seq>-<digest>``. Recorded once, never
        #: changed after.
        self.plain_keys_through = int.from_bytes(raw, "big")

    def append(self, txn, entry: dict, memo: dict | None = None) -> int:
        """Append one entry inside the caller's write transaction; returns its seq.
        The entry dict is the caller's to give: ``seq`` and ``payable`` are added to it.
        ``memo``: the write transaction's memo (:meth:`engine.scanlog.ScanLog.record`),
        which keeps the last seq for the transaction's next entries."""
        kind = entry.get("kind")
        if kind not in _KIND_SET:
            raise ValueError(f"ledger entry kind must be one of {', '.join(KINDS)}")
        # PERF: the ledger is append-only with seq keys, so the next seq is the last key
        # + 1: one cursor step (~0.4 µs) instead of a counter's read and write (~1.2 µs).
        last = None if memo is None else memo.get("ledger_last")
        entry["payable"] = kind in PAYABLE_KINDS
        while True:
            if last is None:
                cur = txn.cursor(db=self._db)
                last = int.from_bytes(cur.key(), "big") if cur.last() else 0
            seq = entry["seq"] = last + 1
            # append-only: an entry is never overwritten (a stale memo falls back to the last key)
            # PERF: arguments by position (dupdata, overwrite=False, append, db): py-lmdb
            # parses keywords slowly (~0.1 µs a call)
            if txn.put(u64(seq), pack(entry), True, False, False, self._db):
                break
            last = None
        if memo is not None:
            memo["ledger_last"] = seq
        if entry.get("ref"):
            txn.put(u64(entry["ref"]), u64(seq), db=self._refs)
        return seq

    def get_in(self, txn, seq: int) -> dict | None:
        raw = txn.get(u64(seq), db=self._db)
        return None if raw is None else unpack(raw)

    def referred_by(self, txn, seq: int) -> int | None:
        """The entry that settled ``seq`` (its unlock, expiry, redemption or reversal)."""
        raw = txn.get(u64(seq), db=self._refs)
        return None if raw is None else int.from_bytes(raw, "big")

    def get(self, seq: int) -> dict | None:
        with self._store.read() as txn:
            return self.get_in(txn, seq)

    def entries(self, after: int = 0, limit: int = 1000, *, campaign: int | None = None,
                kind: str | None = None) -> list[dict]:
        """Entries with seq > ``after``, oldest first, optionally of one campaign/kind: at
        most ``limit`` (1 or more)."""
        check_limit(limit)
        out: list[dict] = []
        with self._store.read() as txn:
            cur = txn.cursor(db=self._db)
            if not cur.set_range(u64(check_after(after) + 1)):
                return out
            for _, raw in cur:
                e = unpack(raw)
                if (campaign is None or e.get("campaign") == campaign) and (kind is None or e["kind"] == kind):
                    out.append(e)
                    if len(out) >= limit:
                        break
        return out

    def last_seq(self) -> int:
        with self._store.read() as txn:
            return self.last_seq_in(txn)

    def last_seq_in(self, txn) -> int:
        """The last entry's seq (0: none) in ``txn``."""
        cur = txn.cursor(db=self._db)
        return int.from_bytes(cur.key(), "big") if cur.last() else 0
