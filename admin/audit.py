"""The audit log: who changed what, when. Append-only, in the same LMDB environment.

Every mutating admin call takes ``who`` (``cli:<os user>`` from the command line,
``token:<name>`` from the admin API, ``account:<id>`` for a store's own voucher
redemption) and appends its audit entry *in the same write
transaction* as the change, so a change without its audit entry cannot exist.
"""

from __future__ import annotations

import time

from admin._util import check_after
from engine.store import Store, pack, u64, unpack

__all__ = ["AuditLog"]


class AuditLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.db("adm_audit")

    def append(self, txn, who: str, action: str, target: str, details: dict | None = None,
               now: float | None = None) -> int:
        """Record one change inside the caller's write transaction; returns its number."""
        if not isinstance(who, str) or not who:
            raise ValueError("an admin change needs to say who made it")
        seq = self._store.next_id(txn, "audit")
        entry = {"seq": seq, "at": time.time() if now is None else now, "who": who,
                 "action": action, "target": target, "details": details or {}}
        txn.put(u64(seq), pack(entry), db=self._db)
        return seq

    def entries(self, after: int = 0, limit: int = 100, *, newest_first: bool = False,
                before: int | None = None) -> list[dict]:
        """Entries with ``after`` < seq < ``before`` (no upper bound without it), at most
        ``limit``, oldest or newest first. Newest first, ``before`` the last seq shown is
        the next page back (``after`` was once ignored there: every page repeated the
        newest)."""
        after = check_after(after)
        if before is not None:
            before = check_after(before)
        out: list[dict] = []
        with self._store.read() as txn:
            cur = txn.cursor(db=self._db)
            if newest_first:
                found = (cur.prev() if cur.set_range(u64(before)) else cur.last()) if before is not None \
                    else cur.last()
                while found and len(out) < limit:
                    e = unpack(cur.value())
                    if e["seq"] <= after:
                        break
                    out.append(e)
                    found = cur.prev()
                return out
            if not cur.set_range(u64(after + 1)):
                return out
            for _, raw in cur:
                e = unpack(raw)
                if before is not None and e["seq"] >= before:
                    break
                out.append(e)
                if len(out) >= limit:
                    break
        return out
