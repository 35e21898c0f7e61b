"""Master keys, their versions, and the purpose keys derived from them with HKDF.

APPSEC: a master key lives in ``<data>/keys/master-v<N>.key`` (32 random bytes, mode
0600, folder 0700). It is never printed, logged or put in an error message; ``repr`` of
a :class:`KeyRing` shows versions only. Every key used for anything is derived from a
master key with HKDF-SHA256 and a purpose label, so one master key per version is the
only secret to keep.

Rotation adds a version; old versions stay so that every printed code keeps verifying.
New batches use the newest version.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.errors import DataFolderError
from engine.files import write_new_file

__all__ = ["KeyRing", "MASTER_KEY_BYTES", "write_private_file"]

MASTER_KEY_BYTES = 32
#: NOTE: matched whole; ``\d`` would read "master-v١.key" (another script's digit) as version
#: 1, and a leading zero "master-v01.key" too: either could stand in for the real key file
_NAME = re.compile(r"master-v([1-9][0-9]*)\.key")


class KeyRing:
    """The versioned master keys of one data folder."""

    def __init__(self, folder: Path) -> None:
        self._folder = Path(folder)
        self._keys: dict[int, bytes] = {}
        self._derived: dict[tuple[int, str, int], bytes] = {}
        if not self._folder.is_dir():
            raise DataFolderError(f"no key folder at {self._folder}; run `wuma init` first")
        for p in self._folder.iterdir():
            m = _NAME.fullmatch(p.name)
            if m:
                self._keys[int(m.group(1))] = _read_key(p)
        if not self._keys:
            raise DataFolderError(f"no master key in {self._folder}: restore keys/ from its backup "
                                  "(or run `wuma init` to make a new data folder)")

    def __repr__(self) -> str:  # APPSEC: never the key bytes
        return f"KeyRing(versions={self.versions})"

    @classmethod
    def create(cls, folder: Path, random: bytes | None = None) -> "KeyRing":
        """Make the key folder with master key version 1."""
        folder = Path(folder)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        _write_key(folder / "master-v1.key", random or os.urandom(MASTER_KEY_BYTES))
        return cls(folder)

    @staticmethod
    def holds_key(folder: Path) -> bool:
        """Whether ``folder`` holds any master key file (readable or not)."""
        folder = Path(folder)
        return folder.is_dir() and any(_NAME.fullmatch(p.name) for p in folder.iterdir())

    @staticmethod
    def version_of(name: str) -> int | None:
        """The version a master key file's name says (``master-v3.key`` -> 3), or None."""
        m = _NAME.fullmatch(name)
        return int(m[1]) if m else None

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys)

    def load(self, version: int) -> bool:
        """Read ``master-v<version>.key`` if another process has added it since this ring
        was opened (a ``key rotate`` while a server runs); True if the version is here now."""
        if version not in self._keys:
            path = self._folder / f"master-v{version}.key"
            if not path.exists():
                return False
            self._keys[version] = _read_key(path)
        return True

    def fingerprint(self, version: int) -> str:
        """A public mark of a master key version (HKDF output: it tells nothing of the key),
        recorded in the store so that a key file replaced or lost is noticed."""
        return self.derive(version, "key-fingerprint", 8).hex()

    @property
    def current(self) -> int:
        return max(self._keys)

    def rotate(self, random: bytes | None = None, *, after: int = 0, highest: int | None = None) -> int:
        """Add a new master key version; returns it. Old versions keep working.

        The new version comes after the newest here and after ``after`` (the newest ever
        issued, as the caller's records say: a lost key's number is never given to a new
        key); ValueError above ``highest`` (what the code formats can carry)."""
        version = max(self.current, after) + 1
        if highest is not None and version > highest:
            raise ValueError(f"key version {version} does not fit this data folder's code formats "
                             f"(their version character carries at most {highest}); no key was made: "
                             "every key version is used, so no new batch key or brand signing key can "
                             "be made in this folder (see the README, Keys)")
        key = random or os.urandom(MASTER_KEY_BYTES)
        _write_key(self._folder / f"master-v{version}.key", key)
        self._keys[version] = key
        return version

    def derive(self, version: int, purpose: str, length: int = 32) -> bytes:
        """HKDF-SHA256(master[version], info="wuma/<purpose>")."""
        cache_key = (version, purpose, length)
        got = self._derived.get(cache_key)
        if got is not None:
            return got
        try:
            master = self._keys[version]
        except KeyError:
            raise DataFolderError(f"master key version {version} is not in this data folder") from None
        out = HKDF(hashes.SHA256(), length, salt=None, info=b"wuma/" + purpose.encode()).derive(master)
        self._derived[cache_key] = out
        return out

    def signing_key(self, version: int | None = None) -> Ed25519PrivateKey:
        """The brand's Ed25519 signing key of a version (derived, so versioned with it)."""
        v = self.current if version is None else version
        return Ed25519PrivateKey.from_private_bytes(self.derive(v, "brand-signing/ed25519"))


def _read_key(path: Path) -> bytes:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise DataFolderError(
                f"{path} is readable by other users (mode {mode:o}); run: chmod 600 {path}"
            )
        data = path.read_bytes()
    except OSError as e:  # a dangling symlink, a folder, no permission, an I/O error
        raise DataFolderError(
            f"master key file {path} cannot be read ({e.strerror or e}): restore it from the "
            "backup of keys/; codes made with that key version cannot be verified without it"
        ) from None
    if len(data) != MASTER_KEY_BYTES:
        raise DataFolderError(f"{path} is damaged: a master key file holds 32 bytes")
    return data


def write_private_file(path: Path, data: bytes, exists: Exception) -> None:
    """Create a secret file, mode 0600, synced, whole or not at all (a process killed while
    writing it leaves nothing under its name: see engine.files.write_new_file); raise
    ``exists`` if it is already there.

    APPSEC: never over an existing file, so a key that printed codes or wrapped packs
    depend on is never overwritten; and the file is never readable by others, not even for
    an instant.
    """
    try:
        write_new_file(path, data, perms=0o600)
    except FileExistsError:
        raise exists from None


def _write_key(path: Path, key: bytes) -> None:
    if len(key) != MASTER_KEY_BYTES:
        raise ValueError("a master key is 32 bytes")
    write_private_file(path, key, DataFolderError(
        f"{path} already exists; refusing to overwrite a master key"))
