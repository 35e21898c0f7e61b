"""A Wuma data folder: configuration, keys and the LMDB store, opened together.

Layout::

    <data>/wuma.json      packaging spec, URL base, settings (no secrets)
    <data>/keys/          master-v<N>.key, mode 0600 (see engine.keys)
    <data>/db/            LMDB environment (data.mdb, lock.mdb); scan-commit.lock and
                          bulk-write.lock, whose flocks give scan committers and long
                          writes their turns (engine.scanlog)
    <data>/db-counters/   LMDB environment for rate counters (not synced: losable)

wuma.json, keys/ and db/ belong together and are backed up together: new batches take the
next batch id from db/ and derive their codes from the master key, so a folder with its
keys but an empty or lost store would print codes again that are already on products.
``init`` creates the store first and writes wuma.json last, and the two share a random
``store_id`` (in wuma.json and in the store's meta database): a folder whose store is
missing, empty, re-created or another folder's is refused, never silently given a new one.
"""

from __future__ import annotations

import errno
import glob
import ipaddress
import json
import os
import re
import shutil
import struct
import time
from dataclasses import fields
from functools import cached_property
from pathlib import Path

import lmdb

from engine.abuse import AbuseGuard, AbuseLimits
from engine.accounts import AccountRegistry
from engine.batches import Batch, BatchRegistry
from engine.chinatime import china_time
from engine.codes import CodeEngine
from engine.errors import DataFolderError
from engine.files import (NewFile, decode_text, fsync_path, protect, protect_owned, refuse_protected, sync_folder,
                          unprotect, write_new_file)
from engine.formats import FORMATS, validate_url_base
from engine.ids import is_digits
from engine.keys import KeyRing
from engine.regions import RegionTable
from engine.spec import PackagingSpec, load_preset
from engine.store import Store, pack, unpack

__all__ = ["DataFolder", "DEFAULT_URL_BASE", "DURABILITY", "default_data_path", "check_serving"]

DEFAULT_URL_BASE = "HTTPS://S.EXAMPLE.CN/Q/"
_CONFIG = "wuma.json"
#: Key of the store id in the store's "meta" database (the same id is in wuma.json).
_STORE_ID = b"store_id"
#: Key of the master key versions ever issued, with their fingerprints, in "meta".
_KEY_VERSIONS = b"key_versions"
#: The meta key of the packaging spec as its codes carry it (see _code_spec).
_CODE_SPEC = b"code_spec"
#: The meta key of the master key version new batches use: the one the last ``key rotate``
#: (or ``init``) made current, recorded in the write transaction that records the version
#: as issued. A version only in keys/ is never taken for it (see DataFolder.batch_key).
_BATCH_KEY = b"batch_key"
#: The meta key a backup copy's store carries: when it was taken, and the newest master key
#: version it holds (see DataFolder.backup and DataFolder.batch_key).
_BACKUP_COPY = b"backup_copy"


#: Settings sections a brand may change after init.
_SETTINGS = {"abuse", "serve", "store"}
#: ``"store": {"durability": ...}``: when a write (a scan, a reward, an admin change) is
#: acknowledged. ``strict``: committed and on disk (data and meta pages fsynced).
#: ``relaxed``: committed and its data pages fsynced; a power loss or kernel crash may undo
#: the last commit (never corrupt the store); a crash of any process loses nothing.
DURABILITY = ("strict", "relaxed")


def _durability(config: dict) -> str:
    store = config.get("store", {})
    value = store.get("durability", "strict") if isinstance(store, dict) else None
    if value not in DURABILITY:
        raise DataFolderError(f'store durability must be one of {", ".join(DURABILITY)} '
                              f"(wuma.json, \"store\": {{\"durability\": ...}}); got {value!r}")
    return value


def _write_config(path: Path, config: dict) -> None:
    """Write wuma.json whole or not at all, and on disk when this returns, as the master
    keys are: a temporary file beside it, fsynced, renamed over it, then the folder
    fsynced. Unsynced, a power loss after ``init`` or a settings change could leave it
    empty or missing beside keys/ and a store, and the folder never opened again.

    Mode 0600 whatever the umask, as ``wuma backup`` copies it: only the folder's owner
    runs Wuma on it (master keys readable by others are refused), and its settings (trusted
    proxies, abuse thresholds) are nobody else's to read."""
    text = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    target = path / _CONFIG
    try:
        with NewFile(target, 0o600, unnamed=False) as f:
            f.write(text)
            f.sync()
            # NOTE: os.replace, not NewFile.replace: an open folder protects its own
            # wuma.json from every output (engine.files.protect), this one included
            os.replace(f.tmp, target)
        sync_folder(path)
    except OSError as e:
        if e.filename is None:  # NOTE: a full disk says "No space left on device", no more
            raise OSError(e.errno, e.strerror, str(target)) from None
        raise


def _section(config: dict, name: str, known: list[str]) -> dict:
    """A settings section of wuma.json as keyword arguments, checked against ``known``."""
    value = config.get(name, {})
    unknown = sorted(set(value) - set(known)) if isinstance(value, dict) else None
    if unknown is None or unknown:
        what = f"unknown setting {', '.join(map(repr, unknown))}" if unknown else "it must be a JSON object"
        raise ValueError(f'"{name}" section: {what}; known settings: {", ".join(known)}')
    return value


#: ``"serve": {...}``: how the scan API finds a client's address behind a proxy (see
#: engine.http_scan.make_client_ip), with the defaults: no proxy trusted, no header read.
_SERVE = {"trusted_proxies": [], "proxy_header": None}
#: An HTTP header name (RFC 9110 token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _serve_settings(config: dict) -> dict:
    """The ``"serve"`` section, checked, with its defaults filled in. NOTE: each proxy is
    checked to be an IP address and written one way, as engine.http_scan.make_client_ip
    matches it: ``2001:DB8::1`` -> ``2001:db8::1``; an IPv4-mapped address as its IPv4
    address, ``::ffff:10.0.0.2`` -> ``10.0.0.2`` (Python 3.11 writes it ``::ffff:a00:2``)."""
    section = {**_SERVE, **_section(config, "serve", list(_SERVE))}
    proxies = section["trusted_proxies"]
    if not isinstance(proxies, list) or not all(isinstance(p, str) for p in proxies):
        raise ValueError('"serve" section: trusted_proxies must be a list of IP addresses, such as '
                         f'["10.0.0.2"]; got {proxies!r}')
    addresses = []
    for p in proxies:
        try:
            address = ipaddress.ip_address(p)
        except ValueError:
            raise ValueError(f'"serve" section: trusted_proxies: {p!r} is not an IP address '
                             "(each proxy is named by its exact address, not a network or a "
                             "host name)") from None
        addresses.append(str(getattr(address, "ipv4_mapped", None) or address))
    header = section["proxy_header"]
    if header is not None and not (isinstance(header, str) and _HEADER_NAME.fullmatch(header)):
        raise ValueError('"serve" section: proxy_header must be a header name, such as '
                         f'"X-Forwarded-For", or null; got {header!r}')
    return {"trusted_proxies": addresses, "proxy_header": header}


def _abuse_limits(config: dict) -> AbuseLimits:
    section = _section(config, "abuse", [f.name for f in fields(AbuseLimits)])
    try:
        return AbuseLimits(**section)
    except ValueError as e:
        raise ValueError(f'"abuse" section: {e}') from None


# -- the store's files, checked before LMDB maps them ------------------------------------
#: MDB_meta of LMDB 0.9 on a 64-bit machine, after the 16-byte page header: magic,
#: version, address, mapsize, two MDB_db records (the first one's pad is the page size),
#: last page number used, transaction id. Native byte order, like the file.
_MDB_META = struct.Struct("=IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_MDB_MAGIC = 0xBEEFC0DE
_PAGE_HEADER = 16


def _read_meta(fh, offset: int) -> tuple[int, int, int, int] | None:
    """``(version, page size, last page, txnid)`` of the meta page at ``offset``, or None."""
    fh.seek(offset + _PAGE_HEADER)
    raw = fh.read(_MDB_META.size)
    if len(raw) < _MDB_META.size:
        return None
    f = _MDB_META.unpack(raw)
    if f[0] != _MDB_MAGIC:
        return None
    return f[1], f[4], f[20], f[21]


def _store_damage(db: Path) -> str | None:
    """Why ``db/data.mdb`` cannot be opened, or None: missing, empty, not LMDB, truncated.

    NOTE: LMDB maps the file and trusts its meta page: pages past the end of a truncated
    file kill the process with SIGBUS, not an error. A file shorter than the end of the
    last page its newest meta page uses is refused here (LMDB writes the data pages before
    the meta page that points to them, and never shrinks the file, so a sound store is
    never shorter).
    """
    if not db.is_dir():
        return f"{db} is missing" if not db.exists() else f"{db} is not a folder"
    mdb = db / "data.mdb"
    try:
        with open(mdb, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return f"{mdb} is empty"
            if struct.calcsize("P") != 8:  # another meta layout: leave the checks to LMDB
                return None
            first = _read_meta(fh, 0)
            if first is not None and first[0] != 1:  # not LMDB 0.9's data format: LMDB checks
                return None
            second = _read_meta(fh, first[1]) if first and 512 <= first[1] <= 1 << 16 else None
    except FileNotFoundError:
        return f"{mdb} is missing"
    except OSError as e:
        return f"{mdb} cannot be read ({e.strerror or e})"
    if first is None:
        if size < _PAGE_HEADER + _MDB_META.size:
            return f"{mdb} is truncated ({size:,} bytes)"
        return f"{mdb} is not an LMDB store"
    if second is None:
        return f"{mdb} is truncated or damaged (its second meta page is missing)"
    _, psize, last_page, _ = max(first, second, key=lambda m: m[3])
    if size < (last_page + 1) * psize:
        return f"{mdb} is truncated ({size:,} bytes; its pages end at {(last_page + 1) * psize:,})"
    return None


def _store_exists(db: Path) -> bool:
    """Whether ``db`` holds a store file with something in it (sound or not)."""
    try:
        return (db / "data.mdb").stat().st_size > 0
    except OSError:
        return False


def _open_store(db: Path, *, metasync: bool = True) -> Store:
    try:
        return Store(db, metasync=metasync)
    except lmdb.Error as e:
        raise DataFolderError(f"the store in {db} cannot be opened ({e})") from None
    except OSError as e:
        raise DataFolderError(f"the store in {db} cannot be opened ({e.strerror or e}: "
                              f"{e.filename or db})") from None


def _stored_id(txn, meta) -> str | None:
    """The store id in the store's meta database ``meta``, or None."""
    raw = txn.get(_STORE_ID, db=meta)
    return raw.decode("ascii", "replace") if raw is not None else None


def _key_record(raw: bytes | None) -> dict[int, str]:
    """The master key versions recorded as issued (the meta value ``raw``), with their
    fingerprints."""
    return {} if raw is None else {int(v): fp for v, fp in unpack(raw)}


def _code_spec(spec: PackagingSpec) -> list:
    """What of a packaging spec its codes carry: the levels' names in order, each with its
    roles' names and formats in order (a role's place among all the roles is the role
    field inside its codes; its format, how they are written). A level's ``capacity`` and
    the spec's ``name`` and ``description`` are not in it: they may change."""
    return [[lv.name, [[r, spec.roles[r].format.name] for r in lv.roles]] for lv in spec.levels]


def _spec_change(was: list, now: list) -> str | None:
    """The first difference between two :func:`_code_spec`, for a person; None if none."""
    def levels(spec):
        return ", ".join(name for name, _ in spec)

    def roles(level):
        return ", ".join(f"{r} ({f})" for r, f in level[1])

    if [name for name, _ in was] != [name for name, _ in now]:
        return f"its levels are {levels(now)}; the codes were made with {levels(was)}"
    for old, new in zip(was, now):
        if old != new:
            return f"level {new[0]}'s roles are {roles(new)}; the codes were made with {roles(old)}"
    return None


def _issued_keys(txn, meta) -> dict[int, str]:
    """The master key versions recorded as issued in ``meta``, with their fingerprints."""
    return _key_record(txn.get(_KEY_VERSIONS, db=meta))


def _prepare_store(path: Path) -> str:
    """Create the store of a new data folder, or take over the blank one an interrupted
    ``init`` left (nothing in it but its id); return its id. Refuses a store in use."""
    db = path / "db"
    if db.exists() and not db.is_dir():
        raise DataFolderError(f"{db} is not a folder: move it aside and run `wuma init` again")
    if _store_exists(db):
        damage = _store_damage(db)
        if damage:
            raise DataFolderError(f"{damage}; {path} has no {_CONFIG}: restore the data folder "
                                  "(wuma.json, keys/ and db/) from its backup")
    store = _open_store(db)
    try:
        meta = store.db("meta")
        with store.read() as txn:
            databases = {k for k, _ in txn.cursor()}
            entries = {k for k, _ in txn.cursor(db=meta)}
            store_id = _stored_id(txn, meta)
        # NOTE: key_versions and batch_key too: a folder's first open (DataFolder.__init__,
        # at the end of init) records its keys before it opens any other database
        if databases - {b"meta"} or entries - {_STORE_ID, _KEY_VERSIONS, _BATCH_KEY}:
            raise DataFolderError(
                f"{path} has no {_CONFIG} but {db} holds data: restore {_CONFIG} from the backup "
                "taken with db/ and keys/ (`wuma init` never takes over a store in use)")
        if store_id is None:
            store_id = os.urandom(16).hex()
            with store.write() as txn:
                txn.put(_STORE_ID, store_id.encode(), db=meta)
        return store_id
    finally:
        store.close()


#: What each server reads of wuma.json's settings when it starts, beyond the folder itself:
#: the scan server (`wuma serve`) the "serve", "abuse" and "regions" sections (each property
#: checks its section; abuse_limits, not abuse: the limits without opening the counters'
#: store); the pack server (`wuma pack serve`) none.
_SERVED_SETTINGS = {"scan": ("serve_settings", "abuse_limits", "regions"), "packs": ()}


def check_serving(path, server: str = "scan") -> None:
    """Open the data folder at ``path`` and check what ``server`` (``"scan"`` or
    ``"packs"``, see :func:`engine.launch.server_of`) reads when it starts;
    DataFolderError says what is wrong. ``wuma serve`` and ``wuma pack serve`` call it
    before starting gunicorn, and the master before a reload (engine/gunicorn_conf.py): a
    mistake is a message, not workers failing to boot.

    NOTE: only what that server reads: the pack server refused to start over a mistake in
    the "abuse" section, which only the scan server reads."""
    if server not in _SERVED_SETTINGS:
        raise ValueError(f"{server!r}: the servers are {', '.join(_SERVED_SETTINGS)}")
    with DataFolder(Path(path)) as data:
        for section in _SERVED_SETTINGS[server]:
            getattr(data, section)


def default_data_path() -> Path:
    """``$WUMA_DATA``, else ``./wuma-data``."""
    return Path(os.environ.get("WUMA_DATA") or "wuma-data")


def _url_base(spec: PackagingSpec, url_base: str, *, printed: bool = False) -> str:
    """``url_base`` checked (and upper-cased) so that it and the spec's longest code fit a
    QR code (:func:`engine.formats.validate_url_base`); ValueError otherwise. ``printed``:
    the folder's own, from wuma.json, which labels already carry in capitals: a path in
    small letters there (a hand edit, taken by earlier releases) is read in capitals, as it
    was printed, not refused (the folder would no longer open)."""
    if printed and isinstance(url_base, str):
        url_base = url_base.upper()
    return validate_url_base(url_base, max(f.length for f in FORMATS.values() if f.name in spec.formats))


#: What a data folder holds that no output may replace (see _owned_by_a_data_folder).
_OWN_FILES = (_CONFIG, "keys", "db", "db-counters")


def _owned_by_a_data_folder(real: str) -> str | None:
    """Where ``real`` (a resolved path) is, if it is a data folder's own file or inside one
    of its own folders (a folder holding wuma.json and keys/ or db/), else None: for
    :func:`engine.files.protect_owned`, so that every output refuses them, whether its
    process opened that folder or not."""
    path = Path(real)
    for folder in list(path.parents)[:3]:  # NOTE: its files lie at most 2 levels down
        inside = path.relative_to(folder).parts
        if inside and inside[0] in _OWN_FILES and (folder / _CONFIG).is_file() and \
                ((folder / "keys").is_dir() or (folder / "db").is_dir()):
            top = folder / inside[0]
            return f"it is {top}" if len(inside) == 1 else f"it is in {top}"
    return None


protect_owned(_owned_by_a_data_folder)


def _mark_backup_copy(db: Path, key_version: int) -> None:
    """Record in a backup copy's store that it is one (see DataFolder.batch_key),
    with the newest master key version copied with it (keys are copied after the store: a
    rotation meanwhile is in the copy's keys, not yet in its store's record)."""
    store = Store(db)
    try:
        with store.write() as txn:
            txn.put(_BACKUP_COPY, pack({"taken_at": time.time(), "key_version": key_version}),
                    db=store.db("meta"))
    finally:
        store.close()


def _remove_killed_backups(dest: Path) -> None:
    """Remove the hidden folders ``.DEST.partial-PID`` beside ``dest`` that backups killed
    before left: their process gone, or this process's own PID (a container gives each
    run the same small one; this process has made none yet). A live process's, or one
    whose PID is now another process's, is kept."""
    prefix = f".{dest.name}.partial-"
    for left in dest.parent.glob(glob.escape(prefix) + "*"):
        pid = left.name[len(prefix):]
        if not is_digits(pid) or not left.is_dir() or left.is_symlink():
            continue
        try:
            if int(pid) != os.getpid():
                os.kill(int(pid), 0)
                continue
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue  # NOTE: alive (another user's), or no PID at all
        shutil.rmtree(left, ignore_errors=True)


class DataFolder:
    """Everything one brand's Wuma installation keeps on disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        cfg = self.path / _CONFIG
        if not cfg.is_file():
            if (self.path / "keys").exists() or (self.path / "db").exists():
                raise DataFolderError(
                    f"{self.path} has keys/ or db/ but no {_CONFIG}: restore {_CONFIG} from the backup "
                    "taken with them, or, if `wuma init` failed here, run it again")
            raise DataFolderError(f"{self.path} is not a Wuma data folder (no {_CONFIG}); run `wuma init`")
        try:
            # NOTE: read as every text file a person may have edited: a UTF-8 byte-order
            # mark (Notepad's) dropped, UTF-16 and GBK named as such (saved wrong, not damaged)
            text = decode_text(cfg.read_bytes(), str(cfg))
        except ValueError as e:
            raise DataFolderError(str(e)) from None
        except OSError as e:
            raise DataFolderError(f"{cfg} cannot be read ({e.strerror or e})") from None
        try:
            self.config = json.loads(text)
            if not isinstance(self.config, dict):
                raise TypeError("it must hold a JSON object")
            if "spec" not in self.config:
                raise ValueError('it has no "spec" section')
            self.spec = PackagingSpec.from_dict(self.config["spec"])
        except RecursionError:
            raise DataFolderError(f"{cfg} is damaged (JSON nested too deeply): restore it from the "
                                  "backup taken with keys/ and db/") from None
        except (ValueError, TypeError) as e:
            raise DataFolderError(f"{cfg} is damaged ({e}): restore it from the backup taken "
                                  "with keys/ and db/") from None
        try:  # NOTE: as `wuma init` checks it: a URL that still fits the QR code
            self.url_base: str = _url_base(self.spec, self.config.get("url_base", DEFAULT_URL_BASE), printed=True)
        except ValueError as e:
            raise DataFolderError(f'{cfg}, "url_base": {e}: fix it there') from None
        self.keys = KeyRing(self.path / "keys")
        self.durability = _durability(self.config)
        self.store, issued, spec_record, batch_key = self._open_store()
        try:
            self._check_spec(cfg, spec_record)
            self._record_keys(issued, batch_key)
        except BaseException:
            self.store.close()
            raise
        self.batches = BatchRegistry(self.store, self.spec)
        self.codes = CodeEngine(self.spec, self.keys, self.batches)
        # NOTE: an export named over one of these (-o wuma.json run inside the folder, a
        # key file) broke the folder for good: every output of this process refuses them
        self._owned = protect([cfg, self.path / "keys", self.path / "db", self.path / "db-counters"])

    def _check_spec(self, cfg: Path, raw: bytes | None) -> None:
        """The packaging spec of wuma.json must be the one this folder's codes were made
        with, as the store records it (:func:`_code_spec`): a role's format or place changed
        by hand made codes print in another format and every code printed answer invalid
        (or an inner code read as the outer one). A folder from before the record gets it.
        ``raw``: the record, as read when the store was opened."""
        meta = self.store.db("meta")
        now = _code_spec(self.spec)
        if raw is None:
            with self.store.write() as txn:  # NOTE: put only if still missing (another process)
                txn.put(_CODE_SPEC, pack(now), db=meta, overwrite=False)
            self.store.sync()
            return
        change = _spec_change(unpack(raw), now)
        if change:
            raise DataFolderError(
                f'{cfg}, "spec": {change}, as the store records; codes already printed would no '
                f'longer read: restore "spec" from the backup of {_CONFIG} (a level\'s "capacity" '
                'may change, and the spec\'s "name" and "description"; nothing else)')

    def _record_keys(self, issued: dict[int, str], batch_key: bytes | None) -> None:
        """Every master key version this folder ever issued must be in keys/ and be the
        same key (its fingerprint is recorded in the store): a lost or replaced key file is
        refused here, not met later as genuine codes answering invalid, or as a new key
        taking a lost one's number. Versions here but not yet recorded (a folder from before
        the record, a rotate interrupted between key file and record, a store restored from
        a backup older than keys/) are recorded as issued, so their numbers are never given
        again; none of them becomes the version of new batches (see :meth:`batch_key`).
        ``issued`` and ``batch_key``: the records, as read when the store was opened."""
        self._check_keys(issued)
        if set(self.keys.versions) - set(issued) or batch_key is None:
            self._record_versions(self.keys.versions)

    def _check_keys(self, issued: dict[int, str]) -> None:
        """DataFolderError unless every version in ``issued`` (the store's record) is in
        the key ring and is the key recorded."""
        keys = self.path / "keys"
        missing = sorted(set(issued) - set(self.keys.versions))
        if missing:
            raise DataFolderError(
                f"master key version(s) {', '.join(map(str, missing))} missing from {keys}: restore "
                "keys/ from its backup (the codes made with them cannot be verified without them)")
        changed = [v for v, fp in issued.items() if self.keys.fingerprint(v) != fp]
        if changed:
            raise DataFolderError(
                f"{keys}/master-v{changed[0]}.key is not the key this data folder issued as version "
                f"{changed[0]}: restore keys/ from its backup")

    def _take_in_keys(self) -> None:
        """Read the key versions another process issued since this folder was opened (its
        ``key rotate``), checked against the store's record as on opening."""
        with self.store.read() as txn:
            issued = _issued_keys(txn, self.store.db("meta"))
        for version in sorted(set(issued) - set(self.keys.versions)):
            self.keys.load(version)
        self._check_keys(issued)

    def _record_versions(self, versions, *, current: int | None = None) -> None:
        """Record ``versions`` as issued and, with ``current``, make it the version of new
        batches, in one write transaction. A store without a record of that version (one
        from before the record) takes the newest version it records as issued, or, if it
        records none (a new folder, or one from before any record), the newest here."""
        # NOTE: read and written in one write transaction: a record made meanwhile by
        # another process (its rotate) is kept
        meta = self.store.db("meta")
        with self.store.write() as txn:
            issued = _issued_keys(txn, meta)
            raw = txn.get(_BATCH_KEY, db=meta)
            batch_key = unpack(raw) if raw is not None else max(issued or versions)
            issued.update({v: self.keys.fingerprint(v) for v in versions if v not in issued})
            txn.put(_KEY_VERSIONS, pack(sorted(issued.items())), db=meta)
            if raw is None or current is not None and current > batch_key:
                txn.put(_BATCH_KEY, pack(max(batch_key, current or 0)), db=meta)
        self.store.sync()  # NOTE: a key version's record outlives a power loss ("relaxed" too)

    def _open_store(self) -> tuple[Store, dict[int, str], bytes | None, bytes | None]:
        """The store, if it is this folder's: never a new empty one in place of a lost one
        (new batches would take ids again and repeat codes already printed); the master key
        versions it records as issued; its record of the packaging spec; and its record of
        the version of new batches (read with its id, in one read transaction)."""
        db = self.path / "db"
        restore = (f"restore {db} from the backup taken with {_CONFIG} and keys/ (do not create "
                   "batches without it: their codes would repeat codes already printed)")
        damage = _store_damage(db)
        if damage:
            raise DataFolderError(f"{damage}: {restore}")
        store = _open_store(db, metasync=self.durability == "strict")
        try:
            meta = store.db("meta")
            with store.read() as txn:
                found = _stored_id(txn, meta)
                raw_keys = txn.get(_KEY_VERSIONS, db=meta)
                raw_spec = txn.get(_CODE_SPEC, db=meta)
                raw_batch_key = txn.get(_BATCH_KEY, db=meta)
            expected = self.config.get("store_id")
            # NOTE: folders made before store ids: the file checks only
            if expected is not None and found != expected:
                why = ("holds a store without this folder's id (re-created empty, or another "
                       "folder's)" if found is None else "holds another data folder's store")
                raise DataFolderError(f"{db} {why}: {restore}")
            # NOTE: the record is unpacked only once the store is known to be this folder's
            return store, _key_record(raw_keys), raw_spec, raw_batch_key
        except BaseException:
            store.close()
            raise

    @classmethod
    def init(cls, path: Path, *, preset: str = "beverage", spec: PackagingSpec | None = None,
             url_base: str = DEFAULT_URL_BASE) -> "DataFolder":
        """Create a data folder with a fresh master key. Refuses an existing one.

        The store comes first, then the key, and wuma.json last: if init fails part way,
        running it again takes over the blank store and the key it left (never replacing
        a key). A key without a store is refused: it may be a used folder's key."""
        path = Path(path)
        if (path / _CONFIG).exists():
            raise DataFolderError(f"{path} already holds a Wuma data folder")
        spec = spec or load_preset(preset)
        url_base = _url_base(spec, url_base)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = path / "keys"
        has_key = KeyRing.holds_key(keys)
        if has_key and not _store_exists(path / "db"):
            raise DataFolderError(
                f"{keys} holds a master key but {path} has no {_CONFIG} and no store: if this folder "
                f"was in use, restore {_CONFIG} and db/ from the backup taken with keys/ (a new store "
                "would repeat codes already printed); if not, move keys/ aside and run `wuma init` again")
        store_id = _prepare_store(path)
        if has_key:
            KeyRing(keys)  # the key an interrupted init left: checked, never replaced
        else:
            KeyRing.create(keys)
        config = {"version": 1, "created_at": time.time(), "url_base": url_base, "spec": spec.to_dict(),
                  "store_id": store_id}
        _write_config(path, config)
        return cls(path)

    def update_config(self, **sections: dict) -> None:
        """Set settings sections (``abuse``, ``serve``, ``store``) in wuma.json; read by
        processes that open the folder afterwards (a running server keeps what it read)."""
        unknown = set(sections) - _SETTINGS
        if unknown:
            raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
        try:
            _durability(sections)
        except DataFolderError as e:
            raise ValueError(str(e)) from None
        if "abuse" in sections:
            _abuse_limits(sections)
        if "serve" in sections:
            _serve_settings(sections)
        self.config.update(sections)
        _write_config(self.path, self.config)

    @cached_property
    def accounts(self) -> AccountRegistry:
        """Scanning accounts (stores, distributors, sales reps, shop assistants)."""
        return AccountRegistry(self.store)

    @cached_property
    def abuse_limits(self) -> AbuseLimits:
        """The ``"abuse"`` section of wuma.json, checked (no store opened)."""
        try:
            return _abuse_limits(self.config)
        except ValueError as e:
            raise DataFolderError(f"{self.path / _CONFIG}, {e}: fix it there") from None

    @cached_property
    def abuse(self) -> AbuseGuard:
        """Rate limits and bans; counters in ``<data>/db-counters`` (not synced)."""
        return AbuseGuard(self.store, self.path / "db-counters", self.abuse_limits)

    @cached_property
    def serve_settings(self) -> dict:
        """The ``"serve"`` section of wuma.json, checked: ``trusted_proxies`` (a list of
        addresses) and ``proxy_header`` (a header name or None)."""
        try:
            return _serve_settings(self.config)
        except ValueError as e:
            raise DataFolderError(f"{self.path / _CONFIG}, {e}: fix it there") from None

    @cached_property
    def regions(self) -> RegionTable:
        """Division centres for lat/lng -> region (``wuma region import``)."""
        try:
            section = _section(self.config, "regions", ["max_km"])  # its errors name the section
        except ValueError as e:
            raise DataFolderError(f"{self.path / _CONFIG}, {e}: fix it there") from None
        try:
            return RegionTable(self.store, **section)
        except ValueError as e:
            raise DataFolderError(f'{self.path / _CONFIG}, "regions" section: {e}: fix it there') from None

    def create_batch(self, level: str, count: int, *, note: str = "") -> Batch:
        """Register a batch (metadata only) under the key version the store records for new
        batches (:meth:`batch_key`), read now, so that a process holding the folder open
        since before another one's ``key rotate`` makes its new batches with the new key
        too. DataFolderError if no batch may be made before a ``wuma key rotate``."""
        version, refused = self.batch_key()
        if refused:
            raise DataFolderError(refused)
        return self.batches.create(level, count, version, note=note)

    def batch_key(self) -> tuple[int, str | None]:
        """``(version, refused)``: the master key version new batches use, the one the last
        ``key rotate`` (or ``init``) made current as the store records it; and, if no batch
        may be made before ``wuma key rotate``, why (else None).

        NOTE: a code is a function of (key version, batch id, serial), and the next batch
        id comes from the store. A store behind the folder its keys come from hands out
        again ids that batches there took after it: its next batch under their key repeated,
        code for code, labels already printed (1000 of 1000 rows alike). Refused until a
        rotation gives a version above every one in keys/, which makes every later code new:
        - a backup copy (``wuma backup``) whose store records no version made since it was
          taken;
        - a store that never made current a version keys/ holds: ``db/`` restored from a
          backup while the folder's newer keys/ were kept (to keep codes printed under them
          verifying). Its next batch took the batch id and the key of a batch printed
          after the backup. A ``key rotate`` interrupted between its key file and its record
          looks the same, and is refused too: the rotate is run again (its version number is
          left unused)."""
        self._take_in_keys()
        meta = self.store.db("meta")
        with self.store.read() as txn:
            issued = _issued_keys(txn, meta)
            version = unpack(txn.get(_BATCH_KEY, db=meta))
            raw = txn.get(_BACKUP_COPY, db=meta)
        rotate = ("run `wuma key rotate` first (new batches then use a new master key; codes already "
                  "printed keep verifying)")
        if raw is not None:
            copy = unpack(raw)
            if version <= copy["key_version"]:
                return version, (
                    f"this data folder's store is a backup copy, taken at {china_time(copy['taken_at'])} with master "
                    f"key version {copy['key_version']}: batches made after that in the folder it was copied "
                    f"from are not in it, and a new batch would repeat their codes; {rotate}")
        newest = max(max(issued), self.keys.current)
        if newest > version:
            return version, (
                f"{self.path / 'keys'} holds master key version {newest}, which this folder's store never "
                f"made the version of new batches (it records {version}): the store is older than the "
                "keys (db/ restored from a backup, keys/ kept), or a `wuma key rotate` was interrupted; "
                f"batches made under version {newest} where the keys come from may not be in this store, "
                f"and a new batch would repeat their codes; {rotate}")
        return version, None

    def rotate_key(self) -> int:
        """New master key version for new batches; printed codes stay valid. Its number
        follows every version ever issued (the store's record), and must fit the version
        character of the folder's code formats."""
        with self.store.read() as txn:
            issued = _issued_keys(txn, self.store.db("meta"))
        highest = min(f.max_key_version for f in self.spec.formats.values())
        version = self.keys.rotate(after=max(issued, default=0), highest=highest)
        self._record_versions([version], current=version)
        self.codes = CodeEngine(self.spec, self.keys, self.batches)
        return version

    def backup(self, dest) -> dict:
        """A consistent copy of this data folder in the new folder ``dest``, taken while
        servers scan and write: the store as one snapshot (LMDB's own copy, in one read
        transaction, compacted: never a torn file as a plain ``cp`` of ``data.mdb`` under
        writes may be), then ``keys/`` and ``wuma.json``. ``dest`` is a data folder: open it
        with ``--data`` to restore. Rate and invalid-code counters (``db-counters``, losable
        by design) are not copied.

        The copy is made in a hidden folder beside ``dest``, fsynced, and renamed to
        ``dest`` once whole: a backup killed half way leaves no folder under its name. Such
        a hidden folder left by a backup killed before (``.DEST.partial-PID``, its process
        gone) is removed by the next backup to ``dest``: it holds a copy of the store.
        APPSEC: the keys stay 0600 in a 0700 folder. The store is copied before the keys, so
        a ``key rotate`` meanwhile cannot leave the copy recording a key it lacks.

        Returns ``{"path", "store_bytes", "keys", "last_txnid"}``."""
        dest = Path(dest)
        refuse_protected(dest)  # NOTE: not in keys/, db/ ...: a copy there breaks the folder
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "the backup folder exists already; name a new one", str(dest))
        if not dest.parent.is_dir():
            raise FileNotFoundError(errno.ENOENT, "no such folder", str(dest.parent))
        _remove_killed_backups(dest)
        tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
        os.mkdir(tmp, 0o700)
        try:
            os.mkdir(tmp / "db", 0o700)
            with self.store.read() as txn:  # NOTE: the snapshot copied, and its txn id
                last_txnid = txn.id()
                try:
                    self.store.env.copy(str(tmp / "db"), compact=True, txn=txn)
                except lmdb.Error as e:  # NOTE: the copy's disk (or reading the store) said no
                    raise OSError(errno.EIO, f"the backup copy of the store failed ({e}): is there "
                                  f"room for it beside {dest.name}?", str(dest)) from None
            fsync_path(tmp / "db" / "data.mdb")
            os.mkdir(tmp / "keys", 0o700)
            versions = sorted(p.name for p in (self.path / "keys").iterdir() if p.is_file())
            for name in versions:
                write_new_file(tmp / "keys" / name, (self.path / "keys" / name).read_bytes(), perms=0o600)
            write_new_file(tmp / _CONFIG, (self.path / _CONFIG).read_bytes(), perms=0o600)
            _mark_backup_copy(tmp / "db", max(KeyRing.version_of(n) or 0 for n in versions))
            sync_folder(tmp / "db")  # NOTE: write_new_file synced keys/ and the folder itself
            os.rename(tmp, dest)
            sync_folder(dest.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return {"path": str(dest), "store_bytes": (dest / "db" / "data.mdb").stat().st_size,
                "keys": versions, "last_txnid": last_txnid}

    def close(self) -> None:
        owned, self._owned = getattr(self, "_owned", ()), ()
        if owned:
            unprotect(owned)
        if "abuse" in self.__dict__:
            self.abuse.close()
        self.store.close()

    def __enter__(self) -> "DataFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
