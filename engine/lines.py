"""Print lines as principals: their key pairs, the brand's registry of them, brand keys.

A print line's controller makes its own key pair with :func:`generate_line_keys`:

* X25519, to receive packs (the brand wraps each pack's data key to it);
* Ed25519, to authenticate the line's own requests (pull, open reports).

The private keys stay in the line's key folder (files mode 0600, folder 0700); only
``line.pub`` (JSON, public keys) travels to the brand, where ``LineRegistry.add``
records it. The brand's Ed25519 signing keys (one per master key version, see
:meth:`engine.keys.KeyRing.signing_key`) go the other way as ``brand-keys.json``
(:meth:`LineRegistry.brand_keys`), which the line keeps next to its keys and checks
every pack against before decrypting anything.

APPSEC: a key id names a public key by its SHA-256 fingerprint, so a pack's header can
say who signed it and for which line without carrying a secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from engine.keys import write_private_file
from engine.errors import Conflict, NotFound, WumaError
from engine.ids import is_id
from engine.keys import KeyRing
from engine.store import Store, pack, unpack

__all__ = [
    "BRAND_KEYS_FILE",
    "LINE_PUBLIC_FILE",
    "BrandKey",
    "Line",
    "LineKeyError",
    "LineKeys",
    "LineRegistry",
    "generate_line_keys",
    "load_brand_keys",
    "read_line_public",
]

LINE_PUBLIC_FILE = "line.pub"
BRAND_KEYS_FILE = "brand-keys.json"
_X25519_FILE = "x25519.key"
_ED25519_FILE = "ed25519.key"
_RAW = serialization.Encoding.Raw


class LineKeyError(WumaError):
    """A line key folder, public key file or brand key file is missing or damaged."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(text: object, what: str, length: int) -> bytes:
    try:
        raw = base64.b64decode(str(text), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != length:
        raise LineKeyError(f"{what} is not a {length}-byte base64 key")
    return raw


def line_fingerprint(x25519_pub: bytes, ed25519_pub: bytes) -> str:
    """Short public id of a line key pair (hex of SHA-256 over both public keys)."""
    return hashlib.sha256(b"wuma/line\x00" + x25519_pub + ed25519_pub).hexdigest()[:16]


def brand_key_id(version: int, public: bytes) -> str:
    """``v<version>:<fingerprint>`` of a brand signing key."""
    return f"v{version}:{hashlib.sha256(b'wuma/brand' + public).hexdigest()[:16]}"


def _pub_raw(key) -> bytes:
    return key.public_bytes(_RAW, serialization.PublicFormat.Raw)


def _priv_raw(key) -> bytes:
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    # NOTE: packs may already be wrapped to this key: never overwrite it.
    write_private_file(path, data, _key_exists(path))


def _key_exists(path: Path) -> Conflict:
    return Conflict(f"{path} already exists; refusing to overwrite a line key")


@dataclass(frozen=True)
class LineKeys:
    """A line controller's key folder, loaded (private keys included)."""

    folder: Path
    x25519: X25519PrivateKey
    ed25519: Ed25519PrivateKey

    def __repr__(self) -> str:  # APPSEC: never the key bytes
        return f"LineKeys({str(self.folder)!r}, fingerprint={self.fingerprint})"

    @property
    def x25519_public(self) -> bytes:
        return _pub_raw(self.x25519.public_key())

    @property
    def ed25519_public(self) -> bytes:
        return _pub_raw(self.ed25519.public_key())

    @property
    def fingerprint(self) -> str:
        return line_fingerprint(self.x25519_public, self.ed25519_public)

    @classmethod
    def load(cls, folder: Path) -> LineKeys:
        folder = Path(folder)
        keys = []
        for name in (_X25519_FILE, _ED25519_FILE):
            p = folder / name
            if not p.is_file():
                raise LineKeyError(f"no line key {p}; make one with `wuma line keygen -o {folder}`")
            mode = stat.S_IMODE(p.stat().st_mode)
            if mode & 0o077:
                raise LineKeyError(
                    f"{p} is readable by other users (mode {mode:o}); run: chmod 600 {p}"
                )
            raw = p.read_bytes() if p.stat().st_size == 32 else b""  # NOTE: never read a wrong file whole
            if len(raw) != 32:
                raise LineKeyError(f"{p} is damaged: a line key file holds 32 bytes")
            keys.append(raw)
        return cls(
            folder,
            X25519PrivateKey.from_private_bytes(keys[0]),
            Ed25519PrivateKey.from_private_bytes(keys[1]),
        )


def generate_line_keys(folder: Path, *, brand_keys: bytes | None = None) -> LineKeys:
    """Make a line's key pair in ``folder`` (created 0700 if it is not there; an existing
    folder keeps its mode): private keys 0600, ``line.pub`` for the brand. ``brand_keys``
    (the brand's ``brand-keys.json``), if given, is validated and stored in the folder for
    :func:`engine.packs.open_pack`. Conflict, before anything is touched, if the folder
    holds line keys already."""
    folder = Path(folder)
    if brand_keys is not None:
        _parse_brand_keys(brand_keys, "the brand key file")
    for name in (_X25519_FILE, _ED25519_FILE):
        if os.path.lexists(folder / name):
            raise _key_exists(folder / name)
    try:
        folder.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass  # NOTE: not ours (a shared folder, `-o .`): its mode is left as it is
    else:
        os.chmod(folder, 0o700)  # NOTE: the umask may have narrowed what mkdir gave
    x = X25519PrivateKey.generate()
    e = Ed25519PrivateKey.generate()
    _write_private(folder / _X25519_FILE, _priv_raw(x))
    _write_private(folder / _ED25519_FILE, _priv_raw(e))
    keys = LineKeys(folder, x, e)
    public = {
        "wuma_line_key": 1,
        "x25519": _b64(keys.x25519_public),
        "ed25519": _b64(keys.ed25519_public),
        "fingerprint": keys.fingerprint,
    }
    (folder / LINE_PUBLIC_FILE).write_text(json.dumps(public, indent=2) + "\n", "utf-8")
    if brand_keys is not None:
        (folder / BRAND_KEYS_FILE).write_bytes(brand_keys)
    return keys


def read_line_public(data: bytes) -> tuple[bytes, bytes]:
    """``(x25519, ed25519)`` public keys from a ``line.pub`` file's bytes."""
    try:
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("wuma_line_key") != 1:
            raise ValueError
    except (ValueError, RecursionError):  # NOTE: RecursionError: JSON nested too deeply
        raise LineKeyError(
            "not a Wuma line public key file (line.pub from `wuma line keygen`)"
        ) from None
    x = _unb64(d.get("x25519"), "line.pub x25519", 32)
    e = _unb64(d.get("ed25519"), "line.pub ed25519", 32)
    X25519PublicKey.from_public_bytes(x)
    Ed25519PublicKey.from_public_bytes(e)
    return x, e


@dataclass(frozen=True)
class BrandKey:
    """One brand signing key as the line sees it."""

    id: str
    version: int
    public: Ed25519PublicKey
    revoked: bool


def _parse_brand_keys(data: bytes, what: str) -> dict[str, BrandKey]:
    try:
        d = json.loads(data)
        if not isinstance(d, dict) or d.get("wuma_brand_keys") != 1:
            raise ValueError
        entries = d["keys"]
        out = {}
        for k in entries:
            raw = _unb64(k["ed25519"], "brand key", 32)
            version = int(k["version"])
            if brand_key_id(version, raw) != k["id"]:
                raise ValueError
            out[k["id"]] = BrandKey(
                k["id"], version, Ed25519PublicKey.from_public_bytes(raw), bool(k.get("revoked"))
            )
    except (ValueError, KeyError, TypeError, LineKeyError, RecursionError):
        raise LineKeyError(
            f"{what} is not a Wuma brand key file (from `wuma line brand-keys`)"
        ) from None
    return out


def load_brand_keys(path: Path) -> dict[str, BrandKey]:
    """The brand keys a line trusts, by key id, from a ``brand-keys.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise LineKeyError(
            f"no brand key file {path}; get brand-keys.json from the brand "
            "(`wuma line brand-keys`) and pass it with --brand-key"
        )
    if path.stat().st_size > _MAX_BRAND_KEYS_FILE:  # NOTE: a wrong file is not read whole
        raise LineKeyError(f"{path} is over {_MAX_BRAND_KEYS_FILE >> 10} KiB: it is no brand-keys.json "
                           "(get it from the brand: `wuma line brand-keys`)")
    return _parse_brand_keys(path.read_bytes(), str(path))


#: A brand-keys.json holds a few hundred bytes per key version (31 at most).
_MAX_BRAND_KEYS_FILE = 64 << 10


@dataclass(frozen=True)
class Line:
    name: str
    x25519: bytes
    ed25519: bytes
    fingerprint: str
    added_at: float
    revoked_at: float | None = None
    note: str = ""

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["x25519"] = _b64(self.x25519)
        d["ed25519"] = _b64(self.ed25519)
        d["revoked"] = self.revoked
        return d


class LineRegistry:
    """The brand's print lines (``lines`` database) and revoked signing keys."""

    def __init__(self, store: Store, keys: KeyRing) -> None:
        self._store = store
        self._keys = keys
        self._db = store.db("lines")
        self._signers = store.db("revoked_signers")

    def add(
        self, name: str, public_file: bytes, *, note: str = "", now: float | None = None
    ) -> Line:
        if not isinstance(name, str):
            raise TypeError("line name must be a str")
        if not is_id(name):
            raise ValueError("line name: 1-64 letters, digits, '.', '_' or '-'")
        x, e = read_line_public(public_file)
        line = Line(
            name, x, e, line_fingerprint(x, e), time.time() if now is None else now, note=note
        )
        with self._store.write() as txn:
            if txn.get(name.encode(), db=self._db) is not None:
                raise Conflict(f"line {name} already exists")
            # APPSEC: either key alone, of any line (revoked ones too): a revoked line's
            # X25519 key under a new name would unwrap new packs with a stolen key
            for _, v in txn.cursor(db=self._db):
                old = unpack(v)
                same = [kind for kind, mine, theirs in (("X25519", x, old["x25519"]),
                                                       ("Ed25519", e, old["ed25519"]))
                        if mine == bytes(theirs)]
                if same:
                    state = " (revoked)" if old["revoked_at"] is not None else ""
                    raise Conflict(
                        f"this line.pub's {' and '.join(same)} key is already registered as line "
                        f"{old['name']}{state}: a line's keys are never used again; generate new "
                        "keys on the line (`wuma line keygen`) and add its new line.pub")
            txn.put(name.encode(), pack(asdict(line)), db=self._db)
        return line

    def find(self, name: str, txn=None) -> Line | None:
        """The line ``name`` (in ``txn``, a transaction of this store, if given), or None."""
        if not isinstance(name, str):
            return None
        if txn is None:
            with self._store.read() as own:
                return self.find(name, own)
        raw = txn.get(name.encode(), db=self._db)
        return None if raw is None else Line(**unpack(raw))

    def get(self, name: str) -> Line:
        got = self.find(name)
        if got is None:
            raise NotFound(f"no line {name}")
        return got

    def by_fingerprint(self, fingerprint: str) -> Line | None:
        return next((ln for ln in self.list() if ln.fingerprint == fingerprint), None)

    def list(self) -> list[Line]:
        with self._store.read() as txn:
            return [Line(**unpack(v)) for _, v in txn.cursor(db=self._db)]

    def revoke(self, name: str, *, now: float | None = None) -> Line:
        """A revoked line gets no new packs (and nothing over HTTP)."""
        with self._store.write() as txn:
            raw = txn.get(str(name).encode(), db=self._db)
            if raw is None:
                raise NotFound(f"no line {name}")
            d = unpack(raw)
            if d["revoked_at"] is None:
                d["revoked_at"] = time.time() if now is None else now
                txn.put(name.encode(), pack(d), db=self._db)
        return Line(**d)

    # -- brand signing keys ----------------------------------------------------------------
    def signer(self, version: int | None = None) -> tuple[str, Ed25519PrivateKey]:
        """``(key id, private key)`` of the brand signing key of a version (default current)."""
        v = self._keys.current if version is None else version
        key = self._keys.signing_key(v)
        kid = brand_key_id(v, _pub_raw(key.public_key()))
        if self.signer_revoked(v):
            raise Conflict(f"brand signing key {kid} is revoked; run `wuma key rotate` first")
        return kid, key

    def signer_revoked(self, version: int) -> bool:
        with self._store.read() as txn:
            return txn.get(str(version).encode(), db=self._signers) is not None

    def revoked_signers(self, txn=None) -> dict[int, float]:
        """``{key version: when its signing key was revoked}`` (in ``txn``, a transaction
        of this store, if given): the pack server withholds every pack such a key signed
        (:meth:`engine.packs.PackRegistry.list`)."""
        if txn is None:
            with self._store.read() as own:
                return self.revoked_signers(own)
        return {int(k): float(unpack(v)) for k, v in txn.cursor(db=self._signers)}

    def revoke_signer(self, version: int, *, now: float | None = None) -> None:
        """Mark a version's signing key revoked (in the store: the pack server withholds
        the packs it signed, and ``brand-keys.json`` marks it). NOTE: revoking again keeps
        the first time."""
        if version not in self._keys.versions:
            raise NotFound(f"no key version {version}")
        with self._store.write() as txn:
            txn.put(
                str(version).encode(),
                pack(time.time() if now is None else now),
                db=self._signers,
                overwrite=False,
            )

    def brand_keys(self) -> bytes:
        """``brand-keys.json``: every version's public signing key, revoked ones marked."""
        keys = []
        for v in self._keys.versions:
            pub = _pub_raw(self._keys.signing_key(v).public_key())
            keys.append(
                {
                    "id": brand_key_id(v, pub),
                    "version": v,
                    "ed25519": _b64(pub),
                    "revoked": self.signer_revoked(v),
                }
            )
        return (json.dumps({"wuma_brand_keys": 1, "keys": keys}, indent=2) + "\n").encode()
