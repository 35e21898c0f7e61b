"""Bearer tokens shown once and stored hashed: the one helper scanning accounts
(:mod:`engine.accounts`) and admin tokens (:mod:`admin.tokens`) share.

A token reads ``<prefix>_<name>_<64 hex>``: the name says which record to look up, the
secret proves the holder. Hex has no ``_``, so splitting at the last ``_`` is exact even
when the name holds one.

APPSEC: the secret is 32 bytes from the OS's CSPRNG; only its SHA-256 is stored (a
secret this long needs no slow hash), and the comparison is constant-time. Parsing never
says *why* a token was refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from engine.ids import is_id

__all__ = ["new_token", "parse_token", "secret_matches", "MAX_TOKEN_LENGTH"]

#: Longer strings are refused before any work (a name is at most 64 characters).
MAX_TOKEN_LENGTH = 200


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_token(prefix: str, name: str) -> tuple[str, bytes]:
    """A fresh token for ``name`` and the hash to store (the token itself is never kept)."""
    secret = os.urandom(32).hex()
    return f"{prefix}_{name}_{secret}", _hash(secret)


def parse_token(token: object, prefix: str) -> tuple[str, str] | None:
    """``(name, secret)`` of a well-formed token with this prefix, else None."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or not token.startswith(prefix + "_"):
        return None
    name, sep, secret = token[len(prefix) + 1:].rpartition("_")
    if not sep or not is_id(name):  # account ids and admin token names
        return None
    return name, secret


def secret_matches(stored_hash: bytes, secret: str) -> bool:
    """Does ``secret`` hash to ``stored_hash``? Constant time."""
    return hmac.compare_digest(stored_hash, _hash(secret))
