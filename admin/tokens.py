"""Admin API tokens with roles: ``admin``, ``operator``, ``viewer``.

A token is shown once when it is made (``wma_<name>_<64 hex>``); only its hash is kept
and it is compared in constant time (:mod:`engine.tokens`, shared with scanning
accounts). Making, reissuing and revoking tokens is audited in the same write
transaction. In the audit log a change made with a token is by ``token:<name>``.

Who may do what (roles are cumulative: an operator may do all a viewer may)::

    permission      viewer  operator  admin   what it covers
    read              x        x        x     every GET under /admin/api (not tokens)
    product.add                x        x     add a product
    campaign.write             x        x     create, pause, resume, close a campaign
    pool.top_up                x        x     raise a pool's total
    voucher.sweep              x        x     expire vouchers and locked rewards now
    payout.retry               x        x     send a failed payout again
    pool.create                         x     create a budget pool
    token.manage                        x     list, make, reissue and revoke admin tokens
    ban.lift                            x     lift an enumeration ban
    ledger.reverse                      x     reverse an unpaid ledger entry

The first admin token is made from the command line (only a person with the data folder
can make one); after that admins can make more through the API.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from admin._util import check_id
from admin.audit import AuditLog
from engine.errors import Conflict, NotFound, TakenByRevoked
from engine.ids import is_id
from engine.store import Store, pack, unpack
from engine.tokens import new_token, parse_token, secret_matches

__all__ = ["AdminToken", "AdminTokens", "ROLES", "PERMISSIONS"]

#: Admin roles, least to most powerful.
ROLES = ("viewer", "operator", "admin")
#: The least role that holds each permission (see the matrix above).
PERMISSIONS = {
    "read": "viewer",
    "product.add": "operator",
    "campaign.write": "operator",
    "pool.top_up": "operator",
    "voucher.sweep": "operator",
    "payout.retry": "operator",
    "pool.create": "admin",
    "token.manage": "admin",
    "ban.lift": "admin",
    "ledger.reverse": "admin",
}
_PREFIX = "wma"


@dataclass(frozen=True)
class AdminToken:
    name: str
    role: str
    created_at: float
    created_by: str
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def who(self) -> str:
        """How the audit log names changes made with this token."""
        return f"token:{self.name}"

    def may(self, permission: str) -> bool:
        if permission not in PERMISSIONS:
            raise ValueError(f"unknown permission {permission!r}")
        return ROLES.index(self.role) >= ROLES.index(PERMISSIONS[permission])

    def to_dict(self) -> dict:
        return asdict(self)


class AdminTokens:
    """Admin tokens in the ``adm_tokens`` database (name -> record with the hash)."""

    def __init__(self, store: Store, audit: AuditLog) -> None:
        self._store = store
        self._audit = audit
        self._db = store.db("adm_tokens")

    def add(self, name: str, role: str, *, who: str, now: float | None = None) -> tuple[AdminToken, str]:
        """Make a token; returns it with the token string (shown once, stored hashed).
        Names are never reused, so the audit log's ``token:<name>`` stays unambiguous:
        Conflict for a name taken, :class:`~engine.errors.TakenByRevoked` if by a revoked token."""
        check_id(name, "token name")
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        now = time.time() if now is None else now
        token, token_hash = new_token(_PREFIX, name)
        record = AdminToken(name, role, now, who)
        with self._store.write() as txn:
            if not txn.put(name.encode(), pack({"token": record.to_dict(), "hash": token_hash}),
                           db=self._db, overwrite=False):
                if unpack(txn.get(name.encode(), db=self._db))["token"]["revoked_at"] is not None:
                    raise TakenByRevoked(f"admin token {name} exists and is revoked (names are never reused): "
                                         "add one with another name")
                raise Conflict(f"admin token {name} already exists (names are never reused)")
            self._audit.append(txn, who, "token.add", name, {"role": role}, now=now)
        return record, token

    def _key(self, name: str) -> bytes:
        if not is_id(name):  # what check_id admits
            raise NotFound(f"no admin token {name}")
        return name.encode()

    def get(self, name: str) -> AdminToken:
        key = self._key(name)
        with self._store.read() as txn:
            raw = txn.get(key, db=self._db)
        if raw is None:
            raise NotFound(f"no admin token {name}")
        return AdminToken(**unpack(raw)["token"])

    def list(self) -> list[AdminToken]:
        """Every token, revoked ones too (never the secrets)."""
        with self._store.read() as txn:
            return [AdminToken(**unpack(v)["token"]) for _, v in txn.cursor(db=self._db)]

    def revoke(self, name: str, *, who: str, now: float | None = None) -> AdminToken:
        """Revoke a token: it stops working at once (the record is kept)."""
        rec = self._change_active(name, who, now, "token.revoke", f"admin token {name} is already revoked",
                                  lambda rec, now: rec["token"].update(revoked_at=now))
        return AdminToken(**rec["token"])

    def reissue(self, name: str, *, who: str, now: float | None = None) -> tuple[AdminToken, str]:
        """A new token for an active admin token's name (shown once, stored hashed): the old
        one stops working at once. For a token lost, leaked, or never seen (an ``add`` whose
        output was lost: names are never reused, so adding it again is refused). A revoked
        token stays revoked: add one under a new name."""
        token, token_hash = new_token(_PREFIX, name)
        rec = self._change_active(
            name, who, now, "token.reissue",
            f"admin token {name} is revoked; it gets no new token (add one under a new name)",
            lambda rec, now: rec.update(hash=token_hash))
        return AdminToken(**rec["token"]), token

    def _change_active(self, name: str, who: str, now: float | None, action: str, if_revoked: str,
                       change) -> dict:
        """Change an active token's record with ``change(record, now)`` and audit it as
        ``action``, in one transaction; on disk when this returns (a relaxed store too: a
        power loss must not bring back a token taken away). Conflict ``if_revoked``."""
        now = time.time() if now is None else now
        key = self._key(name)
        with self._store.write() as txn:
            raw = txn.get(key, db=self._db)
            if raw is None:
                raise NotFound(f"no admin token {name}")
            rec = unpack(raw)
            if rec["token"]["revoked_at"] is not None:
                raise Conflict(if_revoked)
            change(rec, now)
            txn.put(key, pack(rec), db=self._db)
            self._audit.append(txn, who, action, name, {}, now=now)
        self._store.sync()
        return rec

    def authenticate(self, token: object) -> AdminToken | None:
        """The active admin token a bearer token string is, or None (never says why)."""
        parsed = parse_token(token, _PREFIX)
        if parsed is None:
            return None
        name, secret = parsed
        with self._store.read() as txn:
            raw = txn.get(name.encode(), db=self._db)
        if raw is None:
            return None
        rec = unpack(raw)
        if not secret_matches(rec["hash"], secret):
            return None
        record = AdminToken(**rec["token"])
        return record if record.active else None
