"""Encrypted, signed code packs (码包) for print lines: export at the brand, open on the line.

File layout (``.wpk``; integers big-endian)::

    magic     8 bytes  b"WUMAPK\\x00\\x01"
    u32 n     header length, then n bytes of msgpack header (see _header)
    wrapped   80 bytes: ephemeral X25519 public key (32) || AES-256-GCM(kek, key) (48)
    chunks    repeated: u32 ct_len | u64 first serial | u32 units | ciphertext (ct_len)
    signature 64 bytes Ed25519 by the brand over SHA-256(every byte before it)

Each chunk's plaintext is ``units`` rows of the rendered code matrix (every role's code
side by side, fixed widths from the header); serials are implicit (first serial + row).
The URL form of a code is the header's ``url_template`` with the code put in, so the
signed header carries what a printer needs beyond the codes.

APPSEC:
* A fresh 256-bit data key per pack. It is wrapped to the line's X25519 key: ephemeral
  X25519, HKDF-SHA256 (salt = both public keys, info binds the pack id), AES-256-GCM with
  the header digest as associated data.
* ``split_key``: the data key ``K`` is XOR-split; the file holds the wrapped ``K ^ S``
  and ``S`` travels separately as short text (:func:`share_text`). Either part alone is
  a uniformly random string.
* Chunk nonce = (index, final flag); the AAD binds header digest, index, final flag,
  first serial and unit count: reordering, splicing and truncation fail even before the
  signature is considered.
* Opening checks the signature over the whole file *before* unwrapping or decrypting
  anything, then decrypts in a second pass (and checks the file did not change between
  the passes). Output goes to a temporary file renamed only on full success.
* Export is all or nothing, and a pack that can be opened is a registered pack, even
  when the exporting process is killed at any moment (``kill -9``): every part is first
  written *unsigned* (no line opens it) to an unnamed temporary file, which vanishes with
  the process; all parts are then registered, not placed, in one durable transaction;
  only then is each signed and linked into place (never over an existing file; the name
  holds the pack id), and once all are, all are marked placed in one transaction. The
  pull server lists and serves only placed packs, so no line gets a pack of an export
  that then fails. A failure after the registration marks its packs export failed
  (withheld, never deleted: lines set aside a copy they got anyway) and removes their
  files. A process killed after it leaves registered packs never placed (not served;
  revoke them, export again), never a pack file the registry does not know.
* An open receipt (:func:`open_pack`) is signed by the line's Ed25519 key and carries a
  proof of decryption: HMAC-SHA256, keyed by HKDF-SHA256 of the pack's data key (info
  binds the pack id), over the SHA-256 of every chunk's plaintext in order (the codes as
  the pack holds them). What it shows: its maker holds *this pack's* data key (only the
  line's X25519 key unwraps it, with the share for a split key) *and every code of it*;
  a line key alone, a pack id and the listing do not make it. It does not show that this
  file's chunks were decrypted: the codes may come from elsewhere, and a range exported
  again after a revoke holds the same codes as the revoked pack, so a line that opened
  the old pack makes the new one's proof from its header and wrapped key alone. The
  brand does not keep the data key: at export it keeps the SHA-256 of the proof it
  expects (``open_proof_sha256``), which makes no proof, and
  :meth:`PackRegistry.record_open` checks a receipt's proof against it.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import json
import math
import os
import re
import struct
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass
from itertools import accumulate, pairwise
from pathlib import Path
from typing import BinaryIO

import msgpack
import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine import _kernels as K
from engine.aggregation import RelabelledLabels, VoidRuns
from engine.chinatime import china_time
from engine.data import DataFolder
from engine.errors import Conflict, NotFound, WumaError
from engine.files import NewFile, private_output, same_file, sync_folder
from engine.formats import fold_full_width
from engine.lines import BrandKey, Line, LineKeys, LineRegistry, _pub_raw
from engine.store import pack, u64, unpack

__all__ = [
    "CLOCK_SKEW",
    "IssuedPack",
    "ListedPack",
    "OpenedPack",
    "PackError",
    "PackRegistry",
    "RangeHeld",
    "export_unfinished",
    "open_pack",
    "open_pack_to_file",
    "pack_file_name",
    "parse_share",
    "read_header",
    "share_text",
    "withheld_causes",
]

MAGIC = b"WUMAPK\x00\x01"
#: PERF: 4 MiB of plaintext per chunk: AES-GCM and SHA-256 run at GB/s on blocks this
#: size, while memory stays a few chunks whatever the pack size.
CHUNK_BYTES = 4 << 20
_MAX_HEADER = 1 << 16
_WRAPPED = 80
_SIG = 64
_FRAME = struct.Struct(">IQI")
_READ = 8 << 20
_SHARE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
_SHARE_BYTES = 32
_SHARE_CHECK = 2
#: An export of at most this many parts writes them to unnamed files, each holding a file
#: descriptor until it is placed; more parts use hidden named ones (left behind, unsigned,
#: by a killed process; the one being placed is signed: `pack revoke` removes it).
_ANONYMOUS_PARTS = 64
#: A pack id as written everywhere: 32 lowercase hex digits (fullmatch).
_PACK_ID = re.compile(r"[0-9a-f]{32}")
#: Seconds a line's clock may be off the brand's: a pull request's timestamp
#: (:data:`engine.http_packs.REPLAY_WINDOW`), an open receipt's time.
CLOCK_SKEW = 300
#: The key of ``packs_by_line`` and ``packs_by_range`` whose value is the number of packs the
#: index holds (u64; no line name is empty, and no batch id starts with it).
_INDEXED = b"\x00indexed"
#: What an open receipt's signature is made over, before its body: receipts of the earlier
#: release (v1, no ``v`` in the body) carry no proof of decryption.
_RECEIPT_LABELS = {1: b"wuma/open-receipt/v1\x00", 2: b"wuma/open-receipt/v2\x00"}
_RECEIPT_VERSION = 2


def _line_key(line: str, pack_id: str) -> bytes:
    """A line's pack in ``packs_by_line``: line names hold no NUL (:func:`engine.ids.is_id`)."""
    return line.encode() + b"\x00" + bytes.fromhex(pack_id)


def _range_key(rec: dict) -> bytes:
    """A pack in ``packs_by_range``: batch, then the serial after its last, then its id (the
    value: its first serial). Sorted by where ranges end: the packs holding serials from
    ``start`` on are the keys from ``(batch, start + 1)``; :data:`_INDEXED` is shorter."""
    return u64(rec["batch"]) + u64(rec["stop"]) + bytes.fromhex(rec["id"])


def _live(rec: dict) -> bool:
    """Does the pack hold its serials, so that no other export may hand them out? Every pack
    but a revoked one and one of a failed export (withheld, its files removed: the brand
    exports its range again). NOTE: one not in place holds them too: its export may be
    running, or was killed after placing a part that opens without ``--server``; one
    withheld for voided codes or a revoked signer too: a line may have printed it."""
    return rec["revoked_at"] is None and rec.get("export_failed_at") is None


class PackError(WumaError):
    """A pack cannot be exported or opened; the message says why, in words for the operator."""


class RangeHeld(Conflict):
    """An export refused: live packs (:func:`_live`) hold serials of its range. ``pack_ids``:
    the packs the message names (the first 5), which one command revokes; the message names
    it ``wuma pack revoke ID...``, and :meth:`worded` puts another in its place (the CLI's,
    with the ``--data`` it was given)."""

    def __init__(self, before: str, pack_ids: list[str], after: str) -> None:
        self.pack_ids = pack_ids
        self._before, self._after = before, after
        super().__init__(self.worded("wuma pack revoke " + " ".join(pack_ids)))

    def worded(self, revoke: str) -> str:
        """The message, with ``revoke`` as the command that revokes :attr:`pack_ids`."""
        return f"{self._before}`{revoke}`{self._after}"


@dataclass(frozen=True)
class IssuedPack:
    id: str
    path: str
    batch: int
    line: str
    start: int
    stop: int
    count: int
    size: int
    share: str | None  # APPSEC: returned once for the separate channel; never stored

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _WrittenPart:
    """A pack written without its signature to a :class:`~engine.files.NewFile` (unnamed:
    it vanishes with the process; a hidden ``.part`` file where there is none), not yet
    registered nor in place."""

    file: NewFile
    record: dict
    share: str | None
    signature: bytes

    @property
    def path(self) -> Path:
        return self.file.path

    def sign_and_place(self) -> None:
        """Append the signature, put the file on disk, and give it its name (never over an
        existing file). NOTE: fsynced before it is named: after a power loss a registered
        pack's file is whole or absent, never short (one fsync a part)."""
        self.file.append(self.signature)
        self.file.sync()
        _place_new(self.file)
        if self.file.tmp is not None:
            # NOTE: the hidden name goes at once, and on disk: signed, it opens; left until
            # every part is placed, a kill left whole packs under names `pack list` and
            # `pack revoke` do not see (at most the pack being placed is left: revoke
            # removes it with the pack's file, see _remove_left)
            self.file.tmp.unlink(missing_ok=True)
            self.file.tmp = None
            sync_folder(self.path.parent)

    def discard(self) -> None:
        """Close and remove the temporary file (a placed pack keeps its own name)."""
        self.file.close()

    def issued(self) -> IssuedPack:
        r = self.record
        return IssuedPack(
            r["id"],
            str(self.path),
            r["batch"],
            r["line"],
            r["start"],
            r["stop"],
            r["count"],
            r["size"],
            self.share,
        )


def pack_file_name(line: str, batch: int, start: int, stop: int, pack_id: str) -> str:
    """``<line>-b<batch>-<start>-<stop>-<pack id>.wpk``: the pack id makes every issued
    pack's file name unique, so exporting a range again never replaces an issued pack."""
    return f"{line}-b{batch}-{start}-{stop}-{pack_id}.wpk"


def _exists(path: Path) -> PackError:
    return PackError(
        f"{path} already exists: not replacing it (it may be an issued pack); "
        "move it away or export to another folder"
    )


def _refuse_revoked_line(line: Line) -> None:
    if line.revoked:
        raise Conflict(f"line {line.name} is revoked; it gets no packs")


def _remove_left(path: Path) -> None:
    """Remove the file of a pack never put in place, and the hidden ``.<file>.*.part``
    copy (:func:`engine.files.temp_beside`) an export killed while placing it may have left
    beside it, signed: either would open without ``--server``."""
    path.unlink(missing_ok=True)
    for left in path.parent.glob(f".{glob.escape(path.name)}.*.part"):
        left.unlink(missing_ok=True)


def _place_new(file: NewFile) -> None:
    """Give the pack's file its name, refusing if that name is taken (see
    :meth:`engine.files.NewFile.link`)."""
    try:
        file.link()
    except FileExistsError:
        raise _exists(file.path) from None


@dataclass(frozen=True)
class OpenedPack:
    id: str
    batch: int
    line: str
    start: int
    stop: int
    count: int
    header: dict
    receipt: bytes  # signed by the line: give it to the brand as the open report


@dataclass(frozen=True)
class ListedPack:
    """A pack as the brand's pack server lists it for a line
    (:func:`engine.http_packs.check_pack`): its id, the SHA-256 of every byte before its
    signature, its size in bytes, and the SHA-256 of the whole file (None for packs
    exported before the listing carried it). Given to :func:`open_pack` as ``expect_id``,
    the bytes opened must be these.

    APPSEC: ``check_pack`` compares the file's size with the listed one, not its bytes (a
    pack forged with a leaked brand key under a listed id may have the same size): they
    are checked as the pack is opened, in the signature check's one pass. Open with
    ``open_pack(..., server=URL)``, which asks the server and checks the bytes in one call;
    ``check_pack`` alone vouches for nothing printable."""

    id: str
    signed_sha256: str
    size: int
    file_sha256: str | None = None


# -- key share text -----------------------------------------------------------------------
def share_text(share: bytes) -> str:
    """32 bytes -> 55 Crockford base32 characters (16-bit checksum), dashed in fives."""
    if len(share) != _SHARE_BYTES:
        raise ValueError("a key share is 32 bytes")
    raw = share + hashlib.sha256(b"wuma/share" + share).digest()[:_SHARE_CHECK]
    n = int.from_bytes(raw, "big")
    chars = []
    for _ in range(55):
        n, d = divmod(n, 32)
        chars.append(_SHARE_ALPHABET[d])
    s = "".join(reversed(chars))
    return "-".join(s[i : i + 5] for i in range(0, len(s), 5))


def parse_share(text: str) -> bytes:
    """The 32 share bytes of :func:`share_text` output; tolerant of case, dashes, spaces,
    I/L for 1 and O for 0, and full-width forms (as codes are read). Raises
    :class:`PackError` if mistyped.

    NOTE: NFKC maps only look-alikes onto the alphabet, and the 16-bit checksum (then the
    pack's share check) still has to match: a share read wrongly opens nothing."""
    if not isinstance(text, str):
        raise TypeError("share must be text")
    s = "".join(fold_full_width(text).split()).replace("-", "").upper()
    s = s.translate(str.maketrans("ILO", "110"))
    if len(s) != 55 or any(c not in _SHARE_ALPHABET for c in s):
        raise PackError("the key share is mistyped: expected 55 letters/digits (11 groups of 5)")
    n = 0
    for c in s:
        n = n * 32 + _SHARE_ALPHABET.index(c)
    if n >> ((_SHARE_BYTES + _SHARE_CHECK) * 8):
        raise PackError("the key share is mistyped (checksum does not match)")
    raw = n.to_bytes(_SHARE_BYTES + _SHARE_CHECK, "big")
    share, check = raw[:_SHARE_BYTES], raw[_SHARE_BYTES:]
    if hashlib.sha256(b"wuma/share" + share).digest()[:_SHARE_CHECK] != check:
        raise PackError("the key share is mistyped (checksum does not match)")
    return share


def _share_check(pack_id: bytes, share: bytes) -> bytes:
    return hashlib.sha256(b"wuma/share-check\x00" + pack_id + share).digest()[:16]


# -- crypto plumbing ----------------------------------------------------------------------
def _kek(shared: bytes, eph_pub: bytes, line_pub: bytes, pack_id: bytes) -> bytes:
    return HKDF(
        hashes.SHA256(), 32, salt=eph_pub + line_pub, info=b"wuma/pack-wrap/v1\x00" + pack_id
    ).derive(shared)


def _wrap(key: bytes, line_pub: bytes, pack_id: bytes, header_digest: bytes) -> bytes:
    eph = X25519PrivateKey.generate()
    eph_pub = _pub_raw(eph.public_key())
    kek = _kek(
        eph.exchange(X25519PublicKey.from_public_bytes(line_pub)), eph_pub, line_pub, pack_id
    )
    # NOTE: a zero nonce is safe: the kek is single-use (fresh ephemeral key per pack).
    return eph_pub + AESGCM(kek).encrypt(b"\x00" * 12, key, header_digest)


def _unwrap(wrapped: bytes, keys: LineKeys, pack_id: bytes, header_digest: bytes) -> bytes:
    eph_pub = wrapped[:32]
    line_pub = keys.x25519_public
    try:
        kek = _kek(
            keys.x25519.exchange(X25519PublicKey.from_public_bytes(eph_pub)),
            eph_pub,
            line_pub,
            pack_id,
        )
        return AESGCM(kek).decrypt(b"\x00" * 12, wrapped[32:], header_digest)
    except (InvalidTag, ValueError):
        raise PackError(
            f"the line key in {keys.folder} cannot open this pack (wrong line key)"
        ) from None


def _chunk_nonce(index: int, final: bool) -> bytes:
    return struct.pack(">QI", index, 1 if final else 0)


def _chunk_aad(header_digest: bytes, index: int, final: bool, first: int, units: int) -> bytes:
    return (
        b"wuma/pack-chunk/v1\x00" + header_digest + struct.pack(">QBQI", index, final, first, units)
    )


def _signed_message(digest: bytes) -> bytes:
    return b"wuma/pack-signature/v1\x00" + digest


def _open_proof(data_key: bytes, pack_id: bytes, plain_sha256: bytes) -> bytes:
    """The proof of decryption an open receipt carries: HMAC-SHA256 keyed by HKDF-SHA256 of
    the pack's data key (info binds the pack id) over the SHA-256 of the pack's plaintext
    (every chunk's, in order). APPSEC: it shows that its maker holds this pack's data key
    (the line that unwrapped it) and every code of the pack, not that it decrypted these
    chunks: the same codes from elsewhere (a revoked pack of the same serials, exported
    again) make it too. A key of its own for this purpose, so the proof tells nothing of
    the data key."""
    mac_key = HKDF(hashes.SHA256(), 32, salt=None,
                   info=b"wuma/open-proof/v2\x00" + pack_id).derive(data_key)
    return hmac.new(mac_key, b"wuma/open-proof/v2\x00" + plain_sha256, hashlib.sha256).digest()


def _proof_commitment(proof: bytes) -> str:
    """What the brand keeps of a pack's expected proof of decryption: its SHA-256, which
    checks a receipt's proof and makes none (the proof is 256 bits from a secret key: no
    one finds it from this)."""
    return hashlib.sha256(b"wuma/open-proof-commitment/v2\x00" + proof).hexdigest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


# -- brand side ---------------------------------------------------------------------------
class PackRegistry:
    """Export packs and keep their audit trail (``packs``, ``pack_events`` and
    ``pack_receipts`` databases)."""

    def __init__(self, data: DataFolder) -> None:
        self._data = data
        self._store = data.store
        self.lines = LineRegistry(data.store, data.keys)
        self._packs = data.store.db("packs")
        self._events = data.store.db("pack_events")
        #: SHA-256 of an open receipt's signed body -> its ``opened`` event: each once
        self._receipts = data.store.db("pack_receipts")
        #: ``<line> NUL <pack id, 16 bytes>`` -> b"": one line's packs without reading every line's
        self._by_line = data.store.db("packs_by_line")
        #: ``<batch u64><stop u64><pack id>`` -> ``<start u64>`` (:func:`_range_key`): the packs
        #: holding a batch's serials, without reading every pack
        self._by_range = data.store.db("packs_by_range")
        self._voids = VoidRuns(data.store)
        self._relabels = RelabelledLabels(data.store)

    def export(
        self,
        batch_id: int,
        line_name: str,
        out_dir: Path,
        *,
        start: int | None = None,
        stop: int | None = None,
        parts: int = 1,
        split_key: bool = False,
        chunk_bytes: int = CHUNK_BYTES,
        now: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[IssuedPack]:
        """Write ``parts`` packs covering serials ``start..stop-1`` of a batch for a line.

        :class:`RangeHeld` (a Conflict) if packs not revoked hold serials of the range
        (:func:`_live`: of any line, an export still running included; checked again as the
        packs are registered): a batch's serials go to the lines once, until their pack is
        revoked."""
        if not isinstance(parts, int) or isinstance(parts, bool):
            raise TypeError("parts must be an int")
        batch = self._data.batches.get(batch_id)
        line = self.lines.get(line_name)
        _refuse_revoked_line(line)
        if batch.state == "voided":
            raise Conflict(f"batch {batch.id} is voided")
        start = 0 if start is None else start
        stop = batch.count if stop is None else stop
        if not 0 <= start < stop <= batch.count:
            raise ValueError(
                f"serial range {start}:{stop} is outside batch {batch.id} (0:{batch.count})"
            )
        with self._store.read() as txn:  # NOTE: fail before any file is written
            self._refuse_voided(txn, batch, start, stop)
            self._refuse_overlap(txn, batch.id, start, stop)
        if not 1 <= parts <= stop - start:
            raise ValueError(f"parts must be between 1 and {stop - start}")
        if not 1024 <= chunk_bytes <= 64 << 20:
            raise ValueError("chunk_bytes must be between 1 KiB and 64 MiB")
        signer_id, signer = self.lines.signer()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        bounds = [start + (stop - start) * i // parts for i in range(parts + 1)]
        anonymous = parts <= _ANONYMOUS_PARTS
        # NOTE: all or nothing, and a pack that opens is registered, even under kill -9:
        # 1. every part is written unsigned (no line opens it) to an unnamed temporary
        #    file that vanishes with the process (a hidden .part file where there is none);
        # 2. all are registered, not placed (not served), in one transaction that is on
        #    disk before anything is placed;
        # 3. each is signed and linked into place, and the folder synced;
        # 4. all are marked placed in one transaction: only from then on does the pull
        #    server list and serve them, so no line gets a part of an export that fails.
        # A failure or Ctrl-C after 2 withholds the packs (export failed: never deleted, a
        # line may hold a copy from a shared folder; `pack pull` sets it aside) and removes
        # the files placed; a process killed in 3 leaves registered packs that were never
        # placed: not served (`pack list` says what to do), never an unregistered one.
        written: list[_WrittenPart] = []
        registered = False
        try:
            for a, b in pairwise(bounds):
                part = self._write_part(batch, line, out_dir, a, b, split_key, chunk_bytes,
                                        signer_id, signer, now, progress, anonymous)
                written.append(part)
            for part in written:  # fail before registering, where that can be known
                if os.path.lexists(part.path):
                    raise _exists(part.path)
            self._register(written, batch, start, stop)
            registered = True
            for part in written:
                part.sign_and_place()
            sync_folder(out_dir)  # NOTE: the names too
            self._settle(written, "placed_at", now)
        except BaseException as e:
            if registered:
                self._export_failed(written, e)
            raise
        finally:
            for part in written:
                part.discard()
        return [part.issued() for part in written]

    def _register(self, written: list[_WrittenPart], batch, start: int, stop: int) -> None:
        """Register the written packs, not yet placed, in one transaction on disk before any
        file is placed (a relaxed store is synced); Conflict if codes of the range were
        voided while they were written, or another export registered packs of it meanwhile.

        NOTE: race-free across processes: LMDB has one write transaction at a time, and the
        range is checked in the one that registers it. So is the line: revoked while the
        parts were written, it gets none (refused here, nothing is registered, and the
        unsigned parts are discarded as any export failing before registering)."""
        with self._store.write() as txn:
            line = self.lines.find(written[0].record["line"], txn)
            if line is not None:
                _refuse_revoked_line(line)
            self._refuse_voided(txn, batch, start, stop)
            self._index(txn)
            self._refuse_overlap(txn, batch.id, start, stop)
            for part in written:
                rec = part.record
                self._put(txn, rec)
                self._index_pack(txn, rec, (self._by_line, self._by_range))
                self._event(txn, rec["id"], "issued", rec["created"], who=rec["line"])
            self._count_indexed(txn)
        self._store.sync()  # NOTE: on disk before a file is placed, whatever the durability

    def _settle(self, written: list[_WrittenPart], field: str, now: float | None, **event) -> None:
        """Set ``field`` (``placed_at``, ``export_failed_at``) of the written packs to now, in
        one transaction; with ``event``, record an event of that kind for each too.

        NOTE: ``placed_at`` is not forced to disk in a relaxed store: a power loss that
        undoes it leaves the packs as a killed export does (withheld, not placed), the
        safe side."""
        at = time.time() if now is None else now
        with self._store.write() as txn:
            recs = [self._get_raw(txn, part.record["id"]) for part in written]
            line = self.lines.find(recs[0]["line"], txn) if field == "placed_at" else None
            if line is not None:  # NOTE: revoked while placing: the export fails (withheld)
                _refuse_revoked_line(line)
            gone = [r for r in recs if field == "placed_at" and r["revoked_at"] is not None]
            if gone:  # NOTE: served, the others would be part of an export, and nobody told
                r = gone[0]
                raise Conflict(f"pack {r['id']} was revoked while its export ran: the export is "
                               "withdrawn (its packs withheld, its files removed); export serials "
                               f"{recs[0]['start']}:{recs[-1]['stop']} of batch {r['batch']} again")
            for rec in recs:
                rec[field] = at
                self._put(txn, rec)
                if event:
                    self._event(txn, rec["id"], at=at, **event)

    def _export_failed(self, written: list[_WrittenPart], error: BaseException) -> None:
        """Withhold the registered packs of an export that failed (never delete them: a line
        may hold one), then remove the files it placed.

        NOTE: a store that cannot take the mark either (the full disk that failed the
        export) leaves the packs not placed, which is not served either: the export's own
        error is the one raised."""
        # NOTE: the files first, every part's (placed or being placed: its name was free
        # before, so a file there is this export's): a second Ctrl-C during the mark
        # below left all of them in place, marked removed
        for part in written:
            part.path.unlink(missing_ok=True)
        with suppress(Exception):
            self._settle(written, "export_failed_at", None, kind="export_failed",
                         why=f"{type(error).__name__}: {error}"[:300])
            self._store.sync()

    def _indexed(self, txn, index) -> bool:
        """Does ``index`` (``packs_by_line``, ``packs_by_range``) hold every pack? Its marker
        (:data:`_INDEXED`) keeps the number of packs it held when this release last wrote it,
        which must be the ``packs`` database's.

        NOTE: an earlier release registers packs without indexing them (one without the index;
        an export of it running during the upgrade, or after a downgrade): a pack missing from
        ``packs_by_range`` is overlapped by the next export, one missing from ``packs_by_line``
        never reaches its line. The marker of the release that brought the indexes holds no
        count: it may miss some too. PERF: constant time (an LMDB database's entry count)."""
        mark = txn.get(_INDEXED, db=index)
        return (mark is not None and len(mark) == 8
                and int.from_bytes(mark, "big") == txn.stat(self._packs)["entries"])

    def _index(self, txn) -> None:
        """Index anew every pack in ``packs_by_line`` and ``packs_by_range`` if they do not hold
        every one (:meth:`_indexed`), in the write transaction ``txn`` of an export, whose own
        packs are added then (:meth:`_count_indexed`).

        NOTE: not when the registry is opened: a read-only command, or a pull server, on a
        folder short of space would fail; until an export, reads go through every pack. An
        index is emptied first: releases before ``packs_by_line`` deleted a failed export's
        packs, maybe once this release had indexed them."""
        stale = tuple(db for db in (self._by_line, self._by_range) if not self._indexed(txn, db))
        if not stale:
            return
        for db in stale:
            txn.drop(db, delete=False)
        for _, raw in txn.cursor(db=self._packs):
            self._index_pack(txn, unpack(raw), stale)
        self._count_indexed(txn)

    def _index_pack(self, txn, rec: dict, indexes) -> None:
        """Put pack ``rec`` in each of ``indexes`` (``packs_by_line``, ``packs_by_range``)."""
        if self._by_line in indexes:
            txn.put(_line_key(rec["line"], rec["id"]), b"", db=self._by_line)
        if self._by_range in indexes:
            txn.put(_range_key(rec), u64(rec["start"]), db=self._by_range)

    def _count_indexed(self, txn) -> None:
        """Mark both indexes as holding every pack (:meth:`_indexed`), once they do."""
        n = u64(txn.stat(self._packs)["entries"])
        for db in (self._by_line, self._by_range):
            txn.put(_INDEXED, n, db=db)

    def _holding(self, txn, batch_id: int, start: int, stop: int) -> list[dict]:
        """The live packs (:func:`_live`) holding serials of ``start:stop`` of the batch, by
        their first serial, unannotated.

        PERF: through ``packs_by_range``: only the batch's packs whose ranges end after
        ``start`` are looked at (none, for an export after the last one); see
        :meth:`_live_in`."""
        return self._live_in(txn, {batch_id}, start, stop)[batch_id]

    def _live_in(self, txn, batches: set[int], start: int = 0,
                 stop: int = 1 << 64) -> dict[int, list[dict]]:
        """Each of ``batches``: its live packs (:func:`_live`) holding serials of
        ``start:stop``, by their first serial, unannotated.

        PERF: through ``packs_by_range`` (:meth:`_in_batches`); every pack is read where the
        index does not hold every one (:meth:`_indexed`)."""
        live: dict[int, list[dict]] = {b: [] for b in batches}
        recs = (self._in_batches(txn, batches, start, stop)
                if not batches or self._indexed(txn, self._by_range)
                else (unpack(v) for _, v in txn.cursor(db=self._packs)))
        for r in recs:
            if r["batch"] in live and _live(r) and r["start"] < stop and r["stop"] > start:
                live[r["batch"]].append(r)
        for held in live.values():
            held.sort(key=lambda r: (r["start"], r["id"]))
        return live

    def _in_batches(self, txn, batches, start: int = 0, stop: int = 1 << 64):
        """The records of the packs of ``batches`` holding serials of ``start:stop``, through
        ``packs_by_range`` (:meth:`_indexed` first), any order. NOTE: an entry whose pack is
        gone is passed over (see :meth:`_index`)."""
        cur = txn.cursor(db=self._by_range)
        for batch_id in batches:
            prefix = u64(batch_id)
            found = cur.set_range(prefix + u64(start + 1))
            while found and cur.key()[:8] == prefix:
                if int.from_bytes(cur.value(), "big") < stop:  # NOTE: its first serial
                    raw = txn.get(cur.key()[16:], db=self._packs)
                    if raw is not None:
                        yield unpack(raw)
                found = cur.next()

    def _holding_in(self, txn, batches: set[int]) -> Callable[[dict], list[dict]]:
        """``holding(rec)``: the live packs holding serials of pack ``rec``'s range (see
        :meth:`_holding`), for packs of ``batches``.

        PERF: each batch's live packs are read once (:meth:`_live_in`: every pack, without
        the range index), sorted by first serial; a pack's holders are a slice of them, found
        by bisection. Asking :meth:`_holding` once a pack read the batch's later packs again
        each time: `pack list` of 6,000 packs took 8 s (2,000: 1.3 s)."""
        found = {}
        for b, held in self._live_in(txn, batches).items():
            # NOTE: live packs may overlap (exported before overlaps were refused): where the
            # ranges so far reach, not where each ends, is what grows with the first serial
            reach = list(accumulate((r["stop"] for r in held), max))
            found[b] = (held, [r["start"] for r in held], reach)

        def holding(rec: dict) -> list[dict]:
            held, starts, reach = found[rec["batch"]]
            a, b = rec["start"], rec["stop"]
            return [r for r in held[bisect_right(reach, a):bisect_left(starts, b)] if r["stop"] > a]

        return holding

    def _refuse_overlap(self, txn, batch_id: int, start: int, stop: int) -> None:
        """:class:`RangeHeld` (a Conflict) if live packs (:func:`_live`) hold serials of
        ``start:stop`` of the batch: exported again, their codes would be printed twice. Names
        them (the first 5)."""
        held = self._holding(txn, batch_id, start, stop)
        if not held:
            return
        signers = self.lines.revoked_signers(txn)
        named = []
        for rec in held[:5]:
            why = self._annotate(txn, dict(rec), signers)["withheld_reason"]
            named.append(f"pack {rec['id']} (serials {rec['start']}:{rec['stop']}, line {rec['line']}"
                         f"{'; ' + why if why else ''})")
        more = f", and {len(held) - 5} more" if len(held) > 5 else ""
        raise RangeHeld(  # NOTE: one command revokes them all at once
            f"serials {start}:{stop} of batch {batch_id} are already in {len(held)} pack(s) not "
            f"revoked: {'; '.join(named)}{more}. Exported again, their codes would be printed twice: "
            "if those packs must not be printed, revoke them first (",
            [rec["id"] for rec in held[:5]],
            f"{more}), then export; or export the serials around them",
        )

    def _put(self, txn, rec: dict) -> None:
        txn.put(bytes.fromhex(rec["id"]), pack(rec), db=self._packs)

    def _refuse_voided(self, txn, batch, start: int, stop: int) -> None:
        """Conflict if codes of ``start:stop`` were voided (``agg_void`` holds every void,
        whole batches too): voided labels must not be printed; nor labels a relabel
        touched (标签替换): a dead one answers voided, and a replacement label in use is on
        an item already, so printing it again makes a second copy of a live label."""
        first = self._voids.first(txn, batch.id, start, stop)
        if first is not None:
            raise Conflict(f"serial {first} of batch {batch.id} (and maybe more in {start}:{stop}) "
                           "is voided: export the ranges around the voided codes")
        hit = self._relabels.first(txn, batch.id, start, stop)
        if hit is not None:
            serial, unit = hit
            if unit is None:
                why = ("has a code made dead by a relabel (it answers voided; the serial's "
                       "other code may still be in use)")
            else:
                why = (f"is a replacement label in use (a relabel put it on {unit >> 32}:"
                       f"{unit & 0xFFFFFFFF}): printed again it would be a second copy of a "
                       "live label")
            raise Conflict(f"serial {serial} of batch {batch.id} (and maybe more in "
                           f"{start}:{stop}) {why}: export the ranges around the relabelled codes")

    def _write_part(self, batch, line, out_dir, start, stop, split_key, chunk_bytes, signer_id,
                    signer, now, progress, anonymous) -> _WrittenPart:
        """Write one pack without its signature to a temporary file in ``out_dir`` (an
        unnamed one if ``anonymous``); register nothing."""
        codes = self._data.codes
        widths = codes.widths(batch)
        row = sum(widths)
        pack_id = os.urandom(16)
        created = time.time() if now is None else now
        header = {
            "v": 1,
            "pack": pack_id.hex(),
            "batch": batch.id,
            "level": batch.level,
            "roles": list(batch.roles),
            "widths": widths,
            "code_format": {r: batch.formats[r] for r in batch.roles},
            "range": [start, stop],
            "count": stop - start,
            "url_template": self._data.url_base + "{code}",
            "created": created,
            "issuer": signer_id,
            "line": line.name,
            "line_fp": line.fingerprint,
            "key_version": batch.key_version,
            "split": bool(split_key),
            "aead": "AES-256-GCM",
            "wrap": "X25519-HKDF-SHA256-AES-256-GCM",
        }
        data_key = os.urandom(32)
        share = os.urandom(_SHARE_BYTES) if split_key else None
        if share is not None:
            header["share_check"] = _share_check(pack_id, share)
        header_bytes = pack(header)
        hd = hashlib.sha256(header_bytes).digest()
        wrapped = _wrap(_xor(data_key, share) if share else data_key, line.x25519, pack_id, hd)
        del header  # NOTE: only the bytes are signed; nothing below may change them
        name = pack_file_name(line.name, batch.id, start, stop, pack_id.hex())
        path = out_dir / name
        aes = AESGCM(data_key)
        upc = max(1, chunk_bytes // row)
        digest = hashlib.sha256()
        # NOTE: what the line decrypts, the receipt's proof is made over (_open_proof). PERF: SHA-256
        # ran at 0.9-1.3 GB/s here: ~0.12 s of CPU per 4M caps (40 bytes each), at export and at open
        plain = hashlib.sha256()
        # NOTE: mode 0644: a pack is encrypted and signed. Made right before the try.
        file = NewFile(path, 0o644, unnamed=anonymous)
        try:
            with open(file.fd, "wb", closefd=False) as fh:

                def put(b) -> None:
                    digest.update(b)
                    fh.write(b)

                put(MAGIC + struct.pack(">I", len(header_bytes)) + header_bytes + wrapped)
                index = 0
                # PERF: render 1M units at a time (threaded), encrypt in chunk_bytes pieces;
                # the next block renders while this one is encrypted and written.
                for s, matrix in _prefetch(codes.iter_chunks(batch, start, stop)):
                    flat = memoryview(matrix).cast("B")
                    for k in range(0, matrix.shape[0], upc):
                        units = min(upc, matrix.shape[0] - k)
                        first = s + k
                        final = first + units == stop
                        rows = flat[k * row : (k + units) * row]
                        plain.update(rows)
                        ct = aes.encrypt(
                            _chunk_nonce(index, final), rows, _chunk_aad(hd, index, final, first, units)
                        )
                        put(_FRAME.pack(len(ct), first, units))
                        put(ct)
                        index += 1
                    if progress:
                        progress(matrix.shape[0])
                # NOTE: the signature is appended once the pack is registered (export)
                signature = signer.sign(_signed_message(digest.digest()))
                size = fh.tell() + len(signature)
                whole = digest.copy()
                whole.update(signature)
            file.park()  # NOTE: a named one is closed until it is signed (many parts)
        except BaseException:
            file.close()
            raise
        record = {
            "id": pack_id.hex(),
            "file": name,
            "path": str(path.resolve()),
            "batch": batch.id,
            "line": line.name,
            "start": start,
            "stop": stop,
            "count": stop - start,
            "size": size,
            "signed_sha256": digest.hexdigest(),
            "file_sha256": whole.hexdigest(),  # NOTE: the signature too: a pull checks it all
            # APPSEC: checks an open receipt's proof of decryption; the data key is not kept
            "open_proof_sha256": _proof_commitment(_open_proof(data_key, pack_id, plain.digest())),
            "issuer": signer_id,
            "split": bool(split_key),
            "created": created,
            "revoked_at": None,
            "placed_at": None,  # NOTE: served only once set (export)
            "export_failed_at": None,
            "downloaded_at": None,  # the first download whole by its line
            "opened_at": None,  # the time its open receipt reports (one open is recorded)
        }
        return _WrittenPart(file, record, share_text(share) if share else None, signature)

    def _event(self, txn, pack_id: str, kind: str, at: float, **extra) -> int:
        no = self._store.next_id(txn, "pack_event")
        txn.put(u64(no), pack({"pack": pack_id, "kind": kind, "at": at, **extra}), db=self._events)
        return no

    def _from_history(self, txn, rec: dict) -> None:
        """``downloaded_at`` and ``opened_at`` of a pack recorded before they were kept, from
        its events (its line's first whole download, its first open), put in its record in
        the write transaction ``txn``: a pack opened then was recorded open again, and an
        honest receipt dated before a later download was refused. Nothing to do for a pack
        exported by this release (it keeps both), or once its events were read.

        PERF: reads every pack event, once a pack: the record is marked ``history_read`` with
        what was found (one never downloaded whole keeps no ``downloaded_at``; a download
        or an open since is kept as it is recorded), unless ``txn`` is rolled back (an open
        report refused). Before, such a pack's events were read again at each cut download
        and each open report until it was downloaded whole."""
        if rec.get("history_read") or ("downloaded_at" in rec and "opened_at" in rec):
            return
        first = {}
        for _, raw in txn.cursor(db=self._events):
            ev = unpack(raw)
            if ev["pack"] == rec["id"] and ev["kind"] in ("download", "opened"):
                if ev["kind"] == "opened" or ev.get("who") in (None, rec["line"]):
                    first.setdefault(ev["kind"], ev.get("reported_at", ev["at"]))
        if "download" in first:  # NOTE: one never pulled keeps the old rule (see _check_report)
            rec.setdefault("downloaded_at", first["download"])
        rec.setdefault("opened_at", first.get("opened"))
        rec["history_read"] = True
        self._put(txn, rec)

    def _get_raw(self, txn, pack_id: str) -> dict:
        # NOTE: exactly the 32 digits a pack id is written with: bytes.fromhex skips
        # whitespace, so "<id>\n" was the same pack under another name (its events too)
        if not isinstance(pack_id, str) or not _PACK_ID.fullmatch(pack_id):
            raise NotFound(f"{str(pack_id)[:40]!r} is not a pack id (32 lowercase hex digits, as `wuma pack list` shows them)")
        raw = txn.get(bytes.fromhex(pack_id), db=self._packs)
        if raw is None:
            raise NotFound(f"no pack {pack_id}")
        return unpack(raw)

    def get(self, pack_id: str) -> dict:
        """The pack's record, with ``voided_serial``, ``signer_revoked_at``,
        ``withheld_causes`` and ``withheld_reason`` (see :meth:`list`)."""
        with self._store.read() as txn:
            rec = self._get_raw(txn, pack_id)
            return self._annotate(txn, rec, self.lines.revoked_signers(txn))

    def _annotate(self, txn, rec: dict, revoked_signers: dict[int, float]) -> dict:
        """Add to ``rec`` what changed since its export: ``voided_serial``,
        ``signer_revoked_at``, ``withheld_causes`` and ``withheld_reason`` (see :meth:`list`)."""
        # NOTE: exported before placing was recorded: served as it was then
        rec.setdefault("placed_at", rec["created"])
        rec.setdefault("export_failed_at", None)
        rec["voided_serial"] = self._first_voided(txn, rec)
        rec["signer_revoked_at"] = revoked_signers.get(_issuer_version(rec.get("issuer")))
        rec["withheld_causes"] = withheld_causes(rec)  # NOTE: once a record, for every reader
        rec["withheld_reason"] = "; ".join(why for _, why in rec["withheld_causes"]) or None
        return rec

    def _first_voided(self, txn, rec: dict) -> int | None:
        """The first serial of the pack's range voided since its export, or None. A serial a
        relabel touched since (标签替换: a dead label, or a replacement label in use, see
        :meth:`_refuse_voided`) counts as voided: it must not be printed (again) either.

        PERF: one range lookup in the voided runs (``agg_void``), which hold every void:
        codes, ranges and whole batches (a batch's ``voided`` state follows from them), and
        one in ``agg_relabel``."""
        b, start, stop = rec["batch"], rec["start"], rec["stop"]
        first = self._voids.first(txn, b, start, stop)
        hit = self._relabels.first(txn, b, start, stop if first is None else first)
        return first if hit is None else hit[0]

    def revoke(self, pack_id: str, *, now: float | None = None) -> dict:
        """Mark a pack revoked: :meth:`revoke_all` of one."""
        return self.revoke_all([pack_id], now=now)[0]

    def revoke_all(self, pack_ids: list[str], *, now: float | None = None) -> list[dict]:
        """Mark packs revoked (no longer served; the audit keeps them), all in one transaction
        or none: :class:`NotFound` naming every id that is no pack. Returns their records,
        each once, in the order given; a pack revoked before keeps its time. A pack never put
        in place (its export killed while placing) loses its file too: it would open without
        ``--server``, and with the range exported again, print its serials twice."""
        if isinstance(pack_ids, (str, bytes)) or not all(isinstance(i, str) for i in pack_ids):
            raise TypeError("pack_ids must be a list of pack ids")
        pack_ids = list(dict.fromkeys(pack_ids))
        at = time.time() if now is None else now
        with self._store.write() as txn:
            recs, missing = [], []
            for pack_id in pack_ids:
                try:
                    recs.append(self._get_raw(txn, pack_id))
                except NotFound as e:
                    missing.append(str(e))
            if missing:
                raise NotFound(f"nothing revoked: {'; '.join(missing)}")
            for rec in recs:
                if rec["revoked_at"] is None:
                    rec["revoked_at"] = at
                    self._put(txn, rec)
                    self._event(txn, rec["id"], "revoked", at)
        for rec in recs:
            if rec.get("placed_at", 0) is None:  # NOTE: records before placing was kept were placed
                _remove_left(Path(rec["path"]))
        return recs

    def record_download(
        self, pack_id: str, line: str, remote: str, *, sent: int | None = None,
        now: float | None = None,
    ) -> None:
        """Record a download of the pack by ``line`` from ``remote``: whole (``sent`` None or
        the pack's size: every byte handed to the connection), an event ``download``, the
        first one by its line kept as ``downloaded_at`` (an open receipt needs one); or cut
        off after ``sent`` bytes, an event ``download_cut``."""
        at = time.time() if now is None else now
        with self._store.write() as txn:
            rec = self._get_raw(txn, pack_id)
            self._from_history(txn, rec)  # NOTE: before this one: its first may be older
            if sent is not None and sent != rec["size"]:
                self._event(txn, pack_id, "download_cut", at, who=line, where=remote, sent=sent)
                return
            self._event(txn, pack_id, "download", at, who=line, where=remote)
            if rec.get("downloaded_at") is None and line == rec["line"]:
                rec["downloaded_at"] = at
                self._put(txn, rec)

    def record_open(self, receipt: bytes, *, now: float | None = None) -> dict:
        """Record a line's open report (a receipt signed by the line's Ed25519 key): one open
        a pack, its first receipt's.

        Returns the pack's record with ``already_recorded``: true if an open of it was
        recorded before (this receipt, or another: nothing is added). A pack revoked before
        it was opened is recorded all the same (the line did open it); its ``revoked_at``
        says so, as ``voided_serial`` says that codes of its range were voided since the
        export. ``open_proof``: "checked" (the receipt's proof shows the line holds the pack's
        data key and every code of it: :func:`_open_proof`), or
        "unchecked" for a pack exported by an earlier release, which kept nothing to check
        a proof against (its open is the line key's word, as it was then). Refused
        (:class:`PackError`, see :func:`_check_report`): a receipt without the proof of
        decryption, or with a wrong one, where the pack has one to check; a receipt for a
        pack its line never downloaded whole, or dated before that download or ahead of
        this clock by more than :data:`CLOCK_SKEW`."""
        report, body, sig, version = _read_receipt(receipt)
        line = self.lines.by_fingerprint(str(report.get("line_fp")))
        if line is None:
            raise PackError("the receipt is signed by no registered line")
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(line.ed25519).verify(
                sig, _RECEIPT_LABELS[version] + body.encode()
            )
        except InvalidSignature:
            raise PackError("the receipt's signature does not verify") from None
        # NOTE: a receipt handed in again, or re-encoded around the same body, answers as
        # before, even from a line revoked since; another body is checked first
        key = hashlib.sha256(body.encode()).digest()
        at = time.time() if now is None else now
        with self._store.write() as txn:
            rec = self._get_raw(txn, str(report.get("pack")))
            if rec["line"] != line.name:
                raise PackError(f"pack {rec['id']} was issued to {rec['line']}, not {line.name}")
            same = txn.get(key, db=self._receipts) is not None
            self._from_history(txn, rec)
            if not same:
                # NOTE: read the line again in this transaction: revoked meanwhile counts
                _check_report(report, rec, self.lines.find(line.name, txn) or line, at, version)
            # NOTE: a pack exported by this release has its opens checked, every one
            open_proof = "checked" if rec.get("open_proof_sha256") else "unchecked"
            already = same or rec.get("opened_at") is not None
            if not already:
                no = self._event(txn, rec["id"], "opened", at, who=line.name,
                                 reported_at=report["opened_at"], count=report["count"],
                                 open_proof=open_proof)
                txn.put(key, u64(no), db=self._receipts)
                rec["opened_at"] = report["opened_at"]
                self._put(txn, rec)
            self._annotate(txn, rec, self.lines.revoked_signers(txn))
        return {**rec, "already_recorded": already, "open_proof": open_proof}

    def list(self, *, batch: int | None = None, line: str | None = None, events: bool = True) -> list[dict]:
        """Issued packs (oldest first), each with ``placed_at``: when its export had put
        every file of it in place, or None (not served: the export is running, or was cut
        off); ``export_failed_at``: when its export failed after registering it, or None
        (withheld: its file removed, lines set their copies aside); ``voided_serial``: the
        first serial of its range voided after the export, or touched by a relabel (None
        if none is; see :meth:`_first_voided`): voided labels must not be printed;
        ``signer_revoked_at``: when the brand signing key that signed it (its ``issuer``)
        was revoked, or None (`wuma line brand-keys --revoke-version`): lines given the new
        brand-keys.json refuse it; ``withheld_causes``: why the pack server does not serve
        it, ``(code, sentence)`` for each cause (:func:`withheld_causes`: export failed, not
        placed, revoked, codes voided, signer revoked), empty if it does, and
        ``withheld_reason``: their sentences in one, or None; and, with ``events`` (what
        ``pack list`` shows; the pull server's listing needs none of them), its ``events``
        (issued, download, download_cut, opened, revoked, export_failed), ``file_present``:
        whether its file is where the export put it, and ``to_export_again``: None for a
        pack that holds its serials (:func:`_live`: no other export may hand them out), else
        the ranges ``[start, stop]`` of its serials that no such pack holds: what the brand
        exports again (none once a later export did).

        PERF: one line's packs are read through ``packs_by_line``, not every line's."""
        with self._store.read() as txn:
            packs = {}
            revoked_signers = self.lines.revoked_signers(txn)
            for rec in self._records(txn, line):
                if batch is None or rec["batch"] == batch:
                    packs[rec["id"]] = self._annotate(txn, rec, revoked_signers)
            if events:
                holding = self._holding_in(txn, {r["batch"] for r in packs.values() if not _live(r)})
                for rec in packs.values():
                    rec["to_export_again"] = None if _live(rec) else _not_held(rec, holding(rec))
                for rec in packs.values():
                    rec["events"] = []
                for _, v in txn.cursor(db=self._events):
                    ev = unpack(v)
                    if ev["pack"] in packs:
                        packs[ev["pack"]]["events"].append(ev)
        if events:
            for p in packs.values():
                p["file_present"] = os.path.isfile(p["path"])
        return sorted(packs.values(), key=lambda p: (p["created"], p["id"]))

    def _records(self, txn, line: str | None):
        """The records of ``line``'s packs (every pack's with None), unannotated."""
        if line is None or "\x00" in line or not self._indexed(txn, self._by_line):
            for _, v in txn.cursor(db=self._packs):
                rec = unpack(v)
                if line is None or rec["line"] == line:
                    yield rec
            return
        prefix = line.encode() + b"\x00"
        cur = txn.cursor(db=self._by_line)
        found = cur.set_range(prefix)
        while found and cur.key().startswith(prefix):
            raw = txn.get(cur.key()[len(prefix):], db=self._packs)
            if raw is not None:
                yield unpack(raw)
            found = cur.next()


def _read_receipt(receipt: bytes) -> tuple[dict, str, bytes, int]:
    """``(report, signed body, signature, format version)`` of an open receipt, unchecked;
    PackError if it is no receipt. Version 1 (the earlier release's) has no ``v``."""
    try:
        d = json.loads(receipt)
        body = d["receipt"]
        sig = base64.b64decode(d["signature"], validate=True)
        report = json.loads(body)
        if not (isinstance(body, str) and isinstance(report, dict)):
            raise TypeError
    except (ValueError, KeyError, TypeError, RecursionError):  # NOTE: RecursionError: nested too deeply
        raise PackError("not a Wuma open receipt") from None
    version = report.get("v", 1)
    if (not isinstance(version, int) or isinstance(version, bool) or version not in _RECEIPT_LABELS
            or (version == 1 and "v" in report)):
        raise PackError(f"an open receipt of format {repr(version)[:20]}, which this release does not "
                        "read: not a receipt written by `wuma pack open`")
    return report, body, sig, version


def _not_held(rec: dict, holding: list[dict]) -> list[list[int]]:
    """The ranges ``[start, stop]`` of pack ``rec``'s serials that none of ``holding`` (packs
    by their first serial) holds."""
    left, at = [], rec["start"]
    for other in holding:
        if other["start"] > at:
            left.append([at, min(other["start"], rec["stop"])])
        at = max(at, other["stop"])
    if at < rec["stop"]:
        left.append([at, rec["stop"]])
    return left


def _issuer_version(issuer: object) -> int | None:
    """The key version of a brand signing key id ``v<version>:<fingerprint>``
    (:func:`engine.lines.brand_key_id`), or None."""
    version = str(issuer).partition(":")[0]
    if version[:1] != "v" or not version[1:].isdigit():
        return None
    return int(version[1:])


def export_unfinished(rec: dict) -> bool:
    """Is pack ``rec`` (annotated, see :func:`withheld_causes`) registered and still to be
    placed by its export: not in place, its export not failed, not revoked? Its export is
    running, or was cut off: not issued yet (the pull server lists it nowhere)."""
    return rec["placed_at"] is None and rec["export_failed_at"] is None and rec["revoked_at"] is None


def withheld_causes(rec: dict) -> list[tuple[str, str]]:
    """Why the pack server does not serve pack ``rec`` (annotated by
    :meth:`PackRegistry._annotate`, which keeps them in the record as ``withheld_causes``;
    empty: it serves it): ``(code, sentence)`` for each cause, in the order the server
    answers them. The code is the pull server's error (``export_failed``,
    ``pack_not_placed``, ``pack_revoked``, ``codes_voided``, ``signer_revoked``); the
    sentence is the one wording of that cause, wherever it is given (the listing's
    ``withheld_reason``, the server's refusal, `wuma pack list`, `wuma pack report`), each
    adding what its reader is to do."""
    causes = []
    if rec["export_failed_at"] is not None:
        causes.append(("export_failed", f"its export failed at {china_time(rec['export_failed_at'])} "
                       "before every pack of it was in place"))
    elif export_unfinished(rec):
        causes.append(("pack_not_placed", "not in place: its export is still running, or was cut off "
                       "before it placed every file"))
    elif rec["placed_at"] is None:  # NOTE: revoked, so its export can place it no more
        causes.append(("pack_not_placed", "never in place: its export was cut off before it placed "
                       "every file"))
    if rec["revoked_at"] is not None:
        causes.append(("pack_revoked", f"revoked at {china_time(rec['revoked_at'])}"))
    if rec["voided_serial"] is not None:
        causes.append(("codes_voided", f"codes voided: serial {rec['voided_serial']} of batch "
                       f"{rec['batch']} (maybe more in {rec['start']}:{rec['stop']})"))
    if rec["signer_revoked_at"] is not None:
        causes.append(("signer_revoked", f"signed by brand key {rec['issuer']}, revoked at "
                       f"{china_time(rec['signer_revoked_at'])}"))
    return causes


def _real(x: object) -> bool:
    """Is ``x`` a finite JSON number (not a bool)?"""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # NOTE: an int too large for a float
        return False


def _check_report(report: dict, rec: dict, line: Line, now: float, version: int) -> None:
    """Refuse an open report that :func:`open_pack` never writes, before it is recorded.

    APPSEC: a receipt's body is the line's own word, signed by its key. A revoked line's
    key is trusted for nothing more, whatever time its receipt says (the time is the
    key holder's word too, so a stolen key would date its receipts before the revoke);
    the opens it reported before the revoke stay recorded. An open writes the whole pack,
    so its receipt reports the pack's count, no other number. A line opens what it pulled:
    a pack its line never downloaded whole from the pack server (``downloaded_at``) was
    not opened by it, and an open is dated between that download and now, give or take
    :data:`CLOCK_SKEW`. The key, a pack id and its count from the listing make all that:
    the receipt's proof of decryption (:func:`_open_proof`) is what no one makes without
    the pack's data key and every code of it (it does not show those codes came from
    this pack's chunks). A pack exported before this release
    has nothing to check it against (``open_proof_sha256``): its receipts, of either
    format, are the line key's word, as they were."""
    if line.revoked:
        raise PackError(
            f"line {line.name} was revoked at {china_time(line.revoked_at)}: receipts signed "
            "by its key are refused since (the time in a receipt is the line's own word); "
            "nothing recorded"
        )
    count = report.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count != rec["count"]:
        raise PackError(
            f"the receipt reports {repr(count)[:40]} codes opened, but pack {rec['id']} holds "
            f"{rec['count']:,} and an open reports them all: not a receipt written by "
            "`wuma pack open`; nothing recorded"
        )
    opened = report.get("opened_at")
    if not _real(opened) or opened < 0:
        raise PackError(
            f"the receipt's opening time {repr(opened)[:40]} is not a time: "
            "not a receipt written by `wuma pack open`; nothing recorded"
        )
    # NOTE: a pack exported before downloads were kept in its record has no such field
    downloaded = rec.get("downloaded_at", opened)
    if downloaded is None:
        raise PackError(
            f"line {line.name} never downloaded pack {rec['id']} whole from the pack server "
            "(`wuma pack pull`): a line reports the opens of packs it pulled; nothing recorded"
        )
    if opened < downloaded - CLOCK_SKEW or opened > now + CLOCK_SKEW:
        when = "before its first download" if opened < now else "ahead of this clock"
        raise PackError(
            f"the receipt dates the open of pack {rec['id']} {when} (downloaded "
            f"{china_time(downloaded)}, now {china_time(now)}, clocks may differ by "
            f"{CLOCK_SKEW} s): not the time of an open; nothing recorded"
        )
    _check_proof(report, rec, version)


def _check_proof(report: dict, rec: dict, version: int) -> None:
    """Refuse a receipt whose proof of decryption is missing or is not the pack's, unless
    the pack was exported before there was one to check (see :func:`_check_report`)."""
    expected = rec.get("open_proof_sha256")
    if not expected:
        return
    again = ("the line must open the pack with this release's `wuma pack open --receipt FILE` and "
             "send that receipt; nothing recorded")
    if version == 1:
        raise PackError(f"the receipt was written by an earlier release of `wuma pack open`, which "
                        f"proves no decryption of pack {rec['id']}: {again}")
    proof = report.get("proof")
    try:
        raw = bytes.fromhex(proof) if isinstance(proof, str) and len(proof) == 64 else None
    except ValueError:
        raw = None
    if raw is None:
        raise PackError(f"the receipt carries no proof of decryption of pack {rec['id']} (the "
                        f"line's key signs any report): {again}")
    if not hmac.compare_digest(_proof_commitment(raw), expected):
        raise PackError(f"the receipt's proof of decryption does not match pack {rec['id']} (made "
                        f"without its data key or its codes, or for another pack): {again}")


def _prefetch(it):
    """Yield from ``it`` while its next item is computed in a helper thread.

    At most one item is computed ahead: while the caller holds item i, only item i+1 is
    being made, so a producer may reuse item i's buffer for item i+2."""
    with ThreadPoolExecutor(1, thread_name_prefix="wuma-pack") as ex:
        fut = ex.submit(next, it, None)
        while True:
            item = fut.result()
            if item is None:
                return
            fut = ex.submit(next, it, None)
            yield item


# -- line side ----------------------------------------------------------------------------
def read_header(path: Path) -> tuple[dict, bytes, int]:
    """``(header, header bytes, offset after the header)``; unauthenticated until verified."""
    with open(path, "rb") as fh:
        return _read_header(fh, path)


def _read_header(fh, path: Path) -> tuple[dict, bytes, int]:
    """:func:`read_header` of the pack open as ``fh`` (read from its start)."""
    fh.seek(0)
    head = fh.read(len(MAGIC) + 4)
    if len(head) < len(MAGIC) + 4 or head[: len(MAGIC)] != MAGIC:
        raise PackError(f"{path} is not a Wuma pack")
    (n,) = struct.unpack(">I", head[len(MAGIC) :])
    if n > _MAX_HEADER:
        raise PackError(f"{path} is damaged (header)")
    hb = fh.read(n)
    try:
        header = msgpack.unpackb(
            hb,
            raw=False,
            strict_map_key=True,
            max_bin_len=64,
            max_str_len=4096,
            max_array_len=64,
            max_map_len=64,
        )
        if not isinstance(header, dict) or header.get("v") != 1:
            raise ValueError
        for k in ("pack", "issuer", "line", "line_fp", "url_template"):
            if not isinstance(header[k], str):
                raise TypeError
        for k in ("roles", "widths", "range", "count"):
            header[k]  # present; the rest is vouched for by the signature
    except (
        ValueError,
        KeyError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ):
        raise PackError(f"{path} is damaged (header)") from None
    return header, hb, len(MAGIC) + 4 + n


def _verify(
    fh, path: Path, brand_keys: dict[str, BrandKey], *, expect: ListedPack | None = None
) -> tuple[dict, bytes, int, bytes, bytes]:
    """Check the signature of the pack open as ``fh``: ``(header, header bytes, offset
    after the header, SHA-256 of what the signature covers, wrapped data key)``. With
    ``expect``, the file must also be that listed pack, byte for byte.

    APPSEC: the header and the wrapped key returned are the bytes that were hashed, read
    once in one pass from the start: a file rewritten after the check (by anyone who may
    write where the pack lies) cannot bring its own data key, wrapped to the line's public
    key, so its chunks fail to decrypt before any of them is written out."""
    header, hb, off = _read_header(fh, path)  # NOTE: leaves fh at the wrapped key
    signer = brand_keys.get(header["issuer"])
    if signer is None:
        raise PackError(
            f"pack signed by unknown key {header['issuer']!r}: not in the brand key file"
        )
    if signer.revoked:
        raise PackError(f"pack signed by revoked brand key {signer.id}")
    size = os.fstat(fh.fileno()).st_size
    if size < off + _WRAPPED + _SIG:
        raise PackError(f"{path} is truncated")
    wrapped = fh.read(_WRAPPED)
    h = hashlib.sha256(MAGIC + struct.pack(">I", len(hb)) + hb + wrapped)
    left = size - _SIG - off - _WRAPPED
    while left > 0:
        b = fh.read(min(_READ, left))
        if not b:
            break
        h.update(b)
        left -= len(b)
    sig = fh.read(_SIG)
    try:
        signer.public.verify(sig, _signed_message(h.digest()))
    except InvalidSignature:
        raise PackError(f"{path} fails its signature check: altered or truncated") from None
    if expect is not None:
        _check_listed(path, header, size, h, sig, expect)
    return header, hb, off, h.digest(), wrapped


def _check_listed(path: Path, header: dict, size: int, signed, sig: bytes, expect: ListedPack) -> None:
    """Refuse the checked pack unless it is ``expect``, the pack the server lists.

    APPSEC: the server vouched for a pack id *and* its bytes. A pack made with a brand key
    that leaked (revoked, but not yet in this line's brand-keys.json) may carry a listed
    pack's id: only its bytes tell it apart. ``signed`` is the hash of the bytes whose
    signature was checked, the bytes then decrypted (:func:`_plain_chunks` hashes them
    again)."""
    if header["pack"] != expect.id:
        raise _replaced(path, expect.id, header["pack"])
    whole = signed.copy()
    whole.update(sig)
    if (
        signed.hexdigest() != expect.signed_sha256
        or size != expect.size
        or (expect.file_sha256 is not None and whole.hexdigest() != expect.file_sha256)
    ):
        raise PackError(
            f"{path} is not the pack the server issued as {expect.id}: its bytes differ from "
            "the ones listed for that id (forged with the pack's id, or replaced since the "
            "server was asked): do not print it"
        )


def _replaced(path: Path, expected: str, found: str) -> PackError:
    return PackError(f"{path} is no longer pack {expected} (the one the server was asked "
                     f"about) but pack {found}: it was replaced meanwhile")


def open_pack(
    path: Path,
    keys: LineKeys,
    brand_keys: dict[str, BrandKey],
    out: BinaryIO,
    *,
    share: str | None = None,
    output_format: str = "csv",
    url: bool = False,
    now: float | None = None,
    server: str | None = None,
    expect_id: str | ListedPack | None = None,
) -> OpenedPack:
    """Verify a pack, then stream its codes to ``out``; raises :class:`PackError`.

    Nothing is written to ``out`` before the signature, the line and the key all check.
    ``server``: the brand's pack server is asked first whether this pack may be printed on
    this line (:class:`~engine.http_packs.PackWithheld` if not,
    :class:`~engine.http_packs.PullError` if it cannot say), and the bytes opened must be
    the ones it lists for the pack's id: *this* is the server check; asking the server
    apart does not check the file's bytes (see :class:`ListedPack`). ``expect_id`` (not
    with ``server``): the pack must be this one, whatever file is at ``path`` by now: a
    pack id, or a :class:`ListedPack`, whose bytes must then be the bytes opened.
    """
    if output_format not in ("csv", "jsonl"):
        raise ValueError("output format must be csv or jsonl")
    if expect_id is not None and not isinstance(expect_id, (str, ListedPack)):
        raise TypeError("expect_id must be a pack id or a ListedPack")
    if server is not None:
        if expect_id is not None:
            raise ValueError("give server or expect_id, not both: with server, the pack must be the "
                             "one the server lists")
        from engine.http_packs import check_pack  # NOTE: the line's client; it imports this module

        expect_id = check_pack(keys, server, path)
    expect = expect_id if isinstance(expect_id, ListedPack) else None
    path = Path(path)
    with open(path, "rb") as fh:  # NOTE: one open file from the signature to the last chunk
        header, hb, off, digest, wrapped = _verify(fh, path, brand_keys, expect=expect)
        # The header is authentic from here on.
        if isinstance(expect_id, str) and header["pack"] != expect_id:
            raise _replaced(path, expect_id, header["pack"])
        if header["line_fp"] != keys.fingerprint:
            raise PackError(
                f"this pack was issued to line {header['line']} (key {header['line_fp']}), "
                f"not to the line whose keys are in {keys.folder}"
            )
        pack_id = bytes.fromhex(header["pack"])
        s_bytes = None
        if header.get("split"):
            if share is None:
                raise PackError(
                    "this pack's key is split: give the key share that was sent separately "
                    "(wuma pack open --share-file FILE, or --share-file - to type or pipe it)"
                )
            s_bytes = parse_share(share)
            if _share_check(pack_id, s_bytes) != header.get("share_check"):
                raise PackError("wrong key share for this pack")
        elif share is not None:
            raise PackError("this pack has no split key; drop the share")
        key = _unwrap(wrapped, keys, pack_id, hashlib.sha256(hb).digest())
        if s_bytes is not None:
            key = _xor(key, s_bytes)
        fh.seek(off + _WRAPPED)
        plain = hashlib.sha256()
        _decrypt_stream(fh, path, header, hb, wrapped, digest, key, out, output_format, url, plain)
    report = {
        "v": _RECEIPT_VERSION,
        "pack": header["pack"],
        "line": header["line"],
        "line_fp": keys.fingerprint,
        "count": header["count"],
        "opened_at": time.time() if now is None else now,
        "proof": _open_proof(key, pack_id, plain.digest()).hex(),
    }
    receipt = _signed_receipt(keys, report)
    a, b = header["range"]
    return OpenedPack(
        header["pack"], header["batch"], header["line"], a, b, header["count"], header, receipt
    )


def _signed_receipt(keys: LineKeys, report: dict) -> bytes:
    """An open receipt: ``report`` as JSON, signed by the line's Ed25519 key."""
    body = json.dumps(report, sort_keys=True)
    sig = keys.ed25519.sign(_RECEIPT_LABELS[_RECEIPT_VERSION] + body.encode())
    return json.dumps({"receipt": body, "signature": base64.b64encode(sig).decode()}).encode()


def _decrypt_stream(fh, path, header, hb, wrapped, digest, key, out, output_format, url,
                    plain) -> None:
    widths = np.array(header["widths"], np.int64)
    row = int(widths.sum())
    roles = header["roles"]
    base = header["url_template"].split("{code}")[0]
    prefix = np.frombuffer((base if url else "").encode("ascii"), np.uint8)
    row_max = 21 + row + len(widths) * (1 + len(prefix))
    if output_format == "csv":
        out.write(("serial," + ",".join(roles) + "\n").encode())
    chunks = _prefetch(_plain_chunks(fh, path, header, hb, wrapped, digest, key, row, plain))
    if output_format == "jsonl":
        for first, matrix in chunks:
            _write_jsonl(out, first, matrix, widths, roles, base)
        return
    # PERF: a three-stage pipeline: chunk i+2 is read, hashed and decrypted, chunk i+1
    # formatted as CSV (numba, no GIL) and chunk i written, each in its own thread.
    for text in _prefetch(_csv_chunks(chunks, widths, prefix, row_max)):
        out.write(text)


def _csv_chunks(chunks, widths, prefix, row_max):
    bufs = [np.empty(0, np.uint8), np.empty(0, np.uint8)]  # NOTE: two suffice, see _prefetch
    for i, (first, matrix) in enumerate(chunks):
        need = matrix.shape[0] * row_max
        if bufs[i % 2].shape[0] < need:
            bufs[i % 2] = np.empty(need, np.uint8)
        nbytes = K.write_csv_rows(first, matrix, widths, prefix, bufs[i % 2])
        yield memoryview(bufs[i % 2])[:nbytes]


def _plain_chunks(fh, path, header, hb, wrapped, digest, key, row, plain):
    """Yield ``(first serial, matrix)`` per chunk; raises unless every chunk decrypts, in
    order, up to the final one, and the bytes are those whose signature was checked.
    ``plain`` (a SHA-256) is updated with every chunk's plaintext, for the receipt."""
    damaged = PackError(f"{path} is damaged: a chunk does not decrypt")
    hd = hashlib.sha256(hb).digest()
    aes = AESGCM(key)
    end = os.fstat(fh.fileno()).st_size - _SIG
    # APPSEC: hash again while decrypting, so a file swapped after the signature check
    # (a pack re-encrypted to the line's public key) is caught.
    again = hashlib.sha256(MAGIC + struct.pack(">I", len(hb)) + hb + wrapped)
    expect, stop = header["range"]
    index = 0
    final = False
    while fh.tell() < end:
        frame = fh.read(_FRAME.size)
        if len(frame) != _FRAME.size or final:
            raise damaged
        again.update(frame)
        n, first, units = _FRAME.unpack(frame)
        if n != units * row + 16 or first != expect or fh.tell() + n > end:
            raise damaged
        ct = fh.read(n)
        again.update(ct)
        final = first + units == stop
        try:
            pt = aes.decrypt(
                _chunk_nonce(index, final), ct, _chunk_aad(hd, index, final, first, units)
            )
        except InvalidTag:
            raise damaged from None
        plain.update(pt)
        expect = first + units
        index += 1
        if final and again.copy().digest() != digest:
            raise PackError(f"{path} changed while it was being opened")
        yield first, np.frombuffer(pt, np.uint8).reshape(units, row)
    if not final or expect != stop or again.digest() != digest:
        raise PackError(f"{path} changed or is incomplete")


def _write_jsonl(out, first, matrix, widths, roles, base) -> None:
    cols = []
    c = 0
    for w in widths:
        cols.append(matrix[:, c : c + int(w)].copy().view(f"S{int(w)}").ravel())
        c += int(w)
    lines = []
    for k in range(matrix.shape[0]):
        d: dict = {"serial": first + k}
        for r, col in zip(roles, cols):
            code = col[k].decode()
            d[r] = code
            d[r + "_url"] = base + code
        lines.append(json.dumps(d))
    out.write(("\n".join(lines) + "\n").encode())


def open_pack_to_file(
    path: Path,
    keys: LineKeys,
    brand_keys: dict[str, BrandKey],
    output: Path | BinaryIO,
    *,
    receipt: Path | None = None,
    **kw,
) -> OpenedPack:
    """:func:`open_pack` into ``output``: a path (written to a temporary file in the same
    folder and renamed only on full success, so a rejected pack leaves no output behind)
    or an open binary file such as stdout. With ``receipt``, the signed open report
    (:attr:`OpenedPack.receipt`) is written to that path as well.

    Both paths are checked before anything is read or written: neither may be the pack
    itself, nor a folder, nor the same file as the other, and both folders must accept a
    new file; so a bad receipt path is refused before any codes are written."""
    path = Path(path)
    to_file = isinstance(output, (str, os.PathLike))
    if to_file:
        output = Path(output)
        _check_target(path, output, "codes output")
    if receipt is not None:
        receipt = Path(receipt)
        _check_target(path, receipt, "receipt")
        if to_file and same_file(output, receipt):
            raise PackError(
                f"the receipt and the codes output are the same file ({receipt}): "
                "give each its own file name"
            )
    # NOTE: both temporary files are made (so both folders proved writable) before the
    # pack is read. The receipt's block is entered first so that it ends last: the receipt
    # appears only once the codes did. No fsync (private_output's default), as before.
    with ExitStack() as stack:
        rfh, out = None, output
        if receipt is not None:
            rfh = stack.enter_context(private_output(
                receipt, perms=0o644, error=_output_error("receipt", receipt), fsync=False))
        if to_file:
            out = stack.enter_context(private_output(
                output, buffering=1 << 20, error=_output_error("codes output", output),
                fsync=False))
        got = open_pack(path, keys, brand_keys, out, **kw)
        if rfh is not None:
            rfh.write(got.receipt)
    return got


def _output_error(what: str, target: Path):
    """The :func:`engine.files.temp_beside` error hook for an output of pack open."""
    return lambda e: PackError(
        f"cannot write the {what} {target}: {e.strerror or e}; "
        "choose a folder that exists and that you may write to"
    )


def _check_target(pack_path: Path, target: Path, what: str) -> None:
    if same_file(pack_path, target):
        raise PackError(
            f"the {what} {target} is the pack itself: writing there would destroy the pack; "
            "choose another file name"
        )
    if target.is_dir():
        raise PackError(f"the {what} {target} is a folder: give a file name")

