"""Registered scanning accounts (stores, distributors, sales reps, shop assistants).

Consumers scan anonymously; every other role scans as an account with an API token.

APPSEC: a token is 32 random bytes shown once at creation (``wm_<id>_<64 hex>``); only
its SHA-256 is stored, and it is compared in constant time (:mod:`engine.tokens`).
Revoked accounts and unknown tokens get the same answer.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from engine.errors import Conflict, NotFound, TakenByRevoked
from engine.ids import check_name, is_id, is_region_code
from engine.store import Store, pack, unpack
from engine.tokens import new_token, parse_token, secret_matches

__all__ = ["Account", "AccountRegistry", "ACCOUNT_ROLES", "ACTOR_ROLES"]

#: Roles that scan with an account and a bearer token.
ACCOUNT_ROLES = ("store", "distributor", "sales_rep", "shop_assistant")
#: Every actor role a scan can carry.
ACTOR_ROLES = ("consumer",) + ACCOUNT_ROLES


def _key(account_id) -> bytes:
    """The store key of an account id that can exist; NotFound naming the id otherwise (an
    empty id, or one over LMDB's key limit, would be an lmdb error)."""
    if not is_id(account_id):
        raise NotFound(f"no account {account_id!r}")
    return account_id.encode()


@dataclass(frozen=True)
class Account:
    id: str
    role: str
    name: str
    region: str | None
    distributor: str | None  # for a store: the distributor it buys from
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict:
        return asdict(self)


_PREFIX = "wm"


class AccountRegistry:
    """Accounts and their hashed tokens in the ``accounts`` database."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._db = store.db("accounts")

    def add(self, account_id: str, role: str, *, name: str = "", region: str | None = None,
            distributor: str | None = None, now: float | None = None) -> tuple[Account, str]:
        """Create an account; returns it with its token (shown once, stored hashed).
        Conflict if the id is taken: :class:`TakenByRevoked` if by a revoked account."""
        if not is_id(account_id):
            raise ValueError("account id: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit")
        if role not in ACCOUNT_ROLES:
            raise ValueError(f"role must be one of {', '.join(ACCOUNT_ROLES)}")
        if region is not None and not is_region_code(region):
            raise ValueError("region must be an administrative division code such as 4401 or 440106")
        if distributor is not None and role != "store":
            raise ValueError("only a store has a distributor it buys from")
        check_name(name, "account name", required=False)
        token, token_hash = new_token(_PREFIX, account_id)
        account = Account(account_id, role, name, region, distributor,
                          time.time() if now is None else now)
        with self._store.write() as txn:
            if distributor is not None:
                raw = txn.get(distributor.encode(), db=self._db)
                if raw is None or unpack(raw)["account"]["role"] != "distributor":
                    raise NotFound(f"no distributor account {distributor}")
            if not txn.put(account_id.encode(), pack({"account": account.to_dict(), "token": token_hash}),
                           db=self._db, overwrite=False):
                if unpack(txn.get(account_id.encode(), db=self._db))["account"]["revoked_at"] is not None:
                    raise TakenByRevoked(f"account {account_id} exists and is revoked (ids are never reused): "
                                         "add the account with another id")
                raise Conflict(f"account {account_id} already exists")
        return account, token

    def reissue(self, account_id: str) -> tuple[Account, str]:
        """A new token for an active account (shown once, stored hashed): the old one stops
        working at once. For a token lost, leaked, or never seen (an ``add`` whose output
        was lost: the account exists, so adding it again is refused). A revoked account
        stays revoked: add a new one."""
        key = _key(account_id)
        token, token_hash = new_token(_PREFIX, account_id)
        with self._store.write() as txn:
            rec = self._record(txn, key, account_id)
            account = Account(**rec["account"])
            if not account.active:
                raise Conflict(f"account {account_id} is revoked; it gets no new token (add a new account)")
            rec["token"] = token_hash
            txn.put(key, pack(rec), db=self._db)
        self._store.sync()  # NOTE: relaxed: a power loss must not bring the old token back
        return account, token

    def get(self, account_id: str) -> Account:
        key = _key(account_id)
        with self._store.read() as txn:
            return Account(**self._record(txn, key, account_id)["account"])

    def list(self, role: str | None = None) -> list[Account]:
        with self._store.read() as txn:
            accounts = [Account(**unpack(v)["account"]) for _, v in txn.cursor(db=self._db)]
        return [a for a in accounts if role is None or a.role == role]

    def _account_in(self, txn, account_id: str) -> dict | None:
        """The account record of ``account_id`` in the caller's transaction, or None (an id
        that cannot be an account, :func:`engine.ids.is_id`, included: never an error)."""
        raw = txn.get(account_id.encode(), None, self._db) if is_id(account_id) else None
        return None if raw is None else unpack(raw)["account"]

    def active_in(self, txn, account_id: str) -> bool:
        """Whether ``account_id`` is an account on record and not revoked, read in the
        caller's transaction (so a revocation committed before it counts)."""
        account = self._account_in(txn, account_id)
        return account is not None and account["revoked_at"] is None

    def revoked_in(self, txn, account_id: str, role: str) -> bool:
        """Whether ``account_id`` is an account of ``role`` on record and revoked, read in
        the caller's transaction. An id with no account, or another role's, is not: a
        distributor in the registry need not have a scanning account (see the README)."""
        account = self._account_in(txn, account_id)
        return account is not None and account["role"] == role and account["revoked_at"] is not None

    def revoke(self, account_id: str, now: float | None = None) -> Account:
        key = _key(account_id)
        with self._store.write() as txn:
            rec = self._record(txn, key, account_id)
            if rec["account"]["revoked_at"] is None:
                rec["account"]["revoked_at"] = time.time() if now is None else now
                txn.put(key, pack(rec), db=self._db)
        self._store.sync()  # NOTE: relaxed: a power loss must not bring a revoked token back
        return Account(**rec["account"])

    def _record(self, txn, key: bytes, account_id: str) -> dict:
        raw = txn.get(key, db=self._db)
        if raw is None:
            raise NotFound(f"no account {account_id}")
        return unpack(raw)

    def authenticate(self, token: object) -> Account | None:
        """The active account a bearer token belongs to, or None (never says why)."""
        parsed = parse_token(token, _PREFIX)
        if parsed is None:
            return None
        account_id, secret = parsed
        with self._store.read() as txn:
            raw = txn.get(account_id.encode(), db=self._db)
        if raw is None:
            return None
        rec = unpack(raw)
        if not secret_matches(rec["token"], secret):
            return None
        account = Account(**rec["account"])
        return account if account.active else None
