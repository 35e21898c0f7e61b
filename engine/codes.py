"""Generate and verify codes: the payload ``[role | batch | serial | tag]`` under FF1.

See :mod:`engine.formats` for the layout and its strength. Nothing is stored per code:
a code is regenerated from (key version, batch, serial, role) and decrypts straight
back to them.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, NamedTuple

import numpy as np

from engine import _kernels as K
from engine.batches import Batch, BatchRegistry
from engine.errors import WumaError
from engine.formats import CodeFormat, extract_code
from engine.fpe import FF1, _pow2_bits, halves_to_text
from engine.keys import KeyRing
from engine.spec import PackagingSpec

log = logging.getLogger("wuma.codes")

__all__ = ["CodeEngine", "Verification", "INVALID", "DecodedCodes"]

#: Units per generation slice handed to one thread.
_SLICE = 1 << 16
#: Units per streamed export chunk (bounded memory for any batch size).
EXPORT_CHUNK = 1 << 20


class Verification(NamedTuple):
    """The answer for one scanned string. ``genuine=False`` carries nothing else.
    PERF: a NamedTuple (immutable; ~3x cheaper to build than a frozen dataclass)."""

    genuine: bool
    code: str | None = None
    batch: int | None = None
    serial: int | None = None
    role: str | None = None
    level: str | None = None
    key_version: int | None = None

    def to_dict(self) -> dict:
        if not self.genuine:
            return {"genuine": False, "verdict": "invalid"}
        d = self._asdict()
        d["verdict"] = "genuine"
        return d


INVALID = Verification(False)


@dataclass(frozen=True)
class DecodedCodes:
    """Vectorised decode result: one entry per input row; fields valid where ``ok``."""

    ok: np.ndarray
    role_index: np.ndarray
    batch: np.ndarray
    serial: np.ndarray


def _distinct(values: np.ndarray):
    """np.unique, with a fast path for the usual case of one value (a line-collection
    file is mostly one key version and few batches). PERF: np.unique sorts; this was
    ~20% of ingest time."""
    if values.size == 0:
        return ()
    first = values[0]
    if (values == first).all():
        return (first,)
    return np.unique(values)


@dataclass(frozen=True)
class _BatchFacts:
    """The immutable fields of a batch needed to verify its codes."""

    count: int
    level: str
    key_version: int
    formats: dict[str, str]


class CodeEngine:
    """Code generation and verification for one data folder."""

    def __init__(self, spec: PackagingSpec, keys: KeyRing, batches: BatchRegistry) -> None:
        self.spec = spec
        self.keys = keys
        self.batches = batches
        self._ff1: dict[tuple[int, str], FF1] = {}
        self._decrypters: dict[tuple[int, str], Callable] = {}  # FF1.int_decrypter, for verify
        self._facts: dict[int, _BatchFacts] = {}
        self._formats = list(spec.formats.values())
        self._verify_consts: dict[str, tuple] = {}
        self._decode_tables: dict[str, np.ndarray] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._workers = max(1, min(len(os.sched_getaffinity(0)), 8))
        self._native = False
        self._key_looks: dict[int, float] = {}  # version -> when its key file was last looked for

    # -- keys -------------------------------------------------------------------------
    def ff1(self, version: int, fmt: CodeFormat) -> FF1:
        key = (version, fmt.name)
        f = self._ff1.get(key)
        if f is None:
            # AES-128: 128-bit security for the permutation; 10 rounds of AES instead of 14.
            f = FF1(self.keys.derive(version, f"code-ff1/{fmt.name}", 16), fmt.radix)
            if self._native:
                f.use_native_rounds()
            self._ff1[key] = f
        return f

    def _key_added(self, version: int) -> bool:
        """Has another process added this key version since the ring was read (a ``key
        rotate`` while a server runs: its new batches' codes must not answer invalid)?
        Looked for at most once a second per version: a forged code names any version."""
        now = time.monotonic()
        if now - self._key_looks.get(version, -2.0) < 1.0:
            return False
        self._key_looks[version] = now
        try:
            return self.keys.load(version)
        except WumaError as e:  # NOTE: a verify answers; the operator reads why in the log
            log.error("%s", e)
            return False

    def use_native_ff1(self) -> bool:
        """Verify with FF1's rounds compiled (:meth:`engine.fpe.FF1.use_native_rounds`),
        now and for keys loaded later: for long-running verifiers such as the scan pipeline
        (compiles once per process, ~0.4 s). False if this machine cannot."""
        self._native = True
        self._decrypters.clear()  # built with the Python rounds until now
        for version in self.keys.versions:
            for fmt in self._formats:
                if not self.ff1(version, fmt).use_native_rounds():
                    return False
        return True

    # -- generation -------------------------------------------------------------------
    def widths(self, batch: Batch) -> list[int]:
        return [self.spec.role(r).format.length for r in batch.roles]

    def render(self, batch: Batch, start: int, stop: int) -> np.ndarray:
        """ASCII codes of units ``start..stop-1``: a (units, sum of widths) uint8 matrix,
        one column block per role of the batch's level (linked pairs side by side)."""
        if not 0 <= start <= stop <= batch.count:
            raise ValueError(f"serial range {start}:{stop} is outside batch {batch.id} (0:{batch.count})")
        n = stop - start
        out = np.empty((n, sum(self.widths(batch))), np.uint8)
        slices = [(s, min(s + _SLICE, n)) for s in range(0, n, _SLICE)]
        if len(slices) <= 1 or self._workers == 1:
            self._render_slices(batch, start, out, slices)
            return out
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="wuma-gen")
        parts = [slices[i :: self._workers] for i in range(self._workers)]
        for f in [self._pool.submit(self._render_slices, batch, start, out, p) for p in parts]:
            f.result()
        return out

    def _render_slices(self, batch: Batch, start: int, out: np.ndarray, slices) -> None:
        size = max(e - s for s, e in slices)
        a = np.empty(size, np.uint64)
        b = np.empty(size, np.uint64)
        roles = [self.spec.role(r) for r in batch.roles]
        alphabets = {r.format.name: np.frombuffer(r.format.alphabet.encode(), np.uint8) for r in roles}
        for s, e in slices:
            m = e - s
            col = 0
            for role in roles:
                fmt = role.format
                f = self.ff1(batch.key_version, fmt)
                u, v = fmt.body_length // 2, fmt.body_length - fmt.body_length // 2
                mod_v = fmt.radix**v
                pv = _pow2_bits(mod_v)
                K.payload_to_halves(role.index, batch.id, start + s, m, fmt.serial_bits,
                                    fmt.batch_bits, fmt.tag_bits, np.uint64(mod_v), pv, a, b)
                f._crypt_chunks(a, b, f._layout(fmt.body_length, b""), True, [(0, m)])
                K.render_codes(a[:m], b[:m], u, v, fmt.radix, _pow2_bits(fmt.radix),
                               alphabets[fmt.name], ord(fmt.version_char(batch.key_version)),
                               out[s:e], col)
                col += fmt.length

    def code(self, batch: Batch, serial: int, role: str) -> str:
        """One code (scalar path)."""
        if role not in batch.roles:
            raise ValueError(f"batch {batch.id} ({batch.level}) has no role {role}")
        if not 0 <= serial < batch.count:
            raise ValueError(f"serial {serial} is outside batch {batch.id} (0:{batch.count})")
        r = self.spec.role(role)
        fmt = r.format
        head = (((r.index << fmt.batch_bits) | batch.id) << fmt.serial_bits) | serial
        payload = head << fmt.tag_bits
        u = fmt.body_length // 2
        mod_v = fmt.radix ** (fmt.body_length - u)
        a, b = self.ff1(batch.key_version, fmt).encrypt_int(payload // mod_v, payload % mod_v, fmt.body_length)
        body = halves_to_text(a, b, fmt.body_length, fmt.radix, fmt.alphabet)
        return fmt.version_char(batch.key_version) + body

    def iter_chunks(self, batch: Batch, start: int = 0, stop: int | None = None,
                    chunk: int = EXPORT_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """Stream ``(first serial, rendered matrix)`` chunks: constant memory."""
        stop = batch.count if stop is None else stop
        for s in range(start, stop, chunk):
            yield s, self.render(batch, s, min(s + chunk, stop))

    def export_csv(self, batch: Batch, out: BinaryIO, *, start: int = 0, stop: int | None = None,
                   url_base: str | None = None, header: bool = True,
                   progress: Callable[[int], None] | None = None) -> int:
        """Write ``serial,<role>,<role>`` CSV for a serial range; returns units written."""
        if header:
            out.write(("serial," + ",".join(batch.roles) + "\n").encode())
        prefix = np.frombuffer((url_base or "").encode("ascii"), np.uint8)
        widths = np.array(self.widths(batch), np.int64)
        row_max = 11 + int(widths.sum()) + len(widths) * (1 + len(prefix))
        buf = np.empty(EXPORT_CHUNK * row_max, np.uint8)
        total = 0
        for s, matrix in self.iter_chunks(batch, start, stop):
            nbytes = K.write_csv_rows(s, matrix, widths, prefix, buf)
            out.write(memoryview(buf)[:nbytes])
            total += matrix.shape[0]
            if progress:
                progress(matrix.shape[0])
        return total

    # -- verification -----------------------------------------------------------------
    def _batch_facts(self, batch_id: int) -> _BatchFacts | None:
        facts = self._facts.get(batch_id)
        if facts is None:
            b = self.batches.find(batch_id)
            if b is None:
                return None
            facts = _BatchFacts(b.count, b.level, b.key_version, dict(b.formats))
            self._facts[batch_id] = facts
        return facts

    def _check_fields(self, fmt: CodeFormat, version: int, role_index: int, batch_id: int,
                      serial: int) -> tuple[str, str] | None:
        role = self.spec.role_by_index(role_index)
        if role is None or role.format is not fmt:
            return None
        facts = self._batch_facts(batch_id)
        if facts is None or facts.key_version != version or serial >= facts.count:
            return None
        if facts.formats.get(role.name) != fmt.name:
            return None
        return role.name, facts.level

    def verify(self, text: object) -> Verification:
        """Genuine or :data:`INVALID` for any input; never raises on bad input.

        Malformed and forged inputs get the same answer (APPSEC: no oracle).
        """
        code = extract_code(text) if isinstance(text, str) else None
        if not code:
            return INVALID
        for fmt in self._formats:
            s = fmt.normalise(code)
            if s is None:
                continue
            got = self._verify_canonical(s, fmt)
            if got.genuine:
                return got
        return INVALID

    def _verify_canonical(self, s: str, fmt: CodeFormat) -> Verification:
        # PERF: the format's numbers come precomputed (one tuple per format) instead of
        # attribute lookups and radix ** v on every verify (8.1 -> 7.6-8.0 µs here)
        c = self._verify_consts.get(fmt.name) or self._verify_constants(fmt)
        alphabet, name, n, u, radix, scale, tag_mask, tag_bits, serial_mask, serial_bits, \
            batch_mask, batch_bits, table = c
        version = alphabet.index(s[0])
        decrypt = self._decrypters.get((version, name))
        if decrypt is None:
            if version not in self.keys.versions and not self._key_added(version):
                return INVALID
            decrypt = self._decrypters[(version, name)] = self.ff1(version, fmt).int_decrypter(n)
        body = s[1:].translate(table)
        a, b = decrypt(int(body[:u], radix), int(body[u:], radix))
        payload = a * scale + b
        if payload & tag_mask:
            return INVALID
        head = payload >> tag_bits
        serial = head & serial_mask
        head >>= serial_bits
        batch_id = head & batch_mask
        got = self._check_fields(fmt, version, head >> batch_bits, batch_id, serial)
        if got is None:
            return INVALID
        return Verification(True, s, batch_id, serial, got[0], got[1], version)

    def _verify_constants(self, fmt: CodeFormat) -> tuple:
        """What :meth:`_verify_canonical` needs of a format, computed once; the last item is
        the str.translate table from the format's alphabet to int()'s digits (radix <= 36)."""
        n = fmt.body_length
        u = n // 2
        int_digits = str.maketrans(fmt.alphabet, "0123456789abcdefghijklmnopqrstuvwxyz"[: fmt.radix])
        c = (fmt.alphabet, fmt.name, n, u, fmt.radix, fmt.radix ** (n - u), (1 << fmt.tag_bits) - 1,
             fmt.tag_bits, (1 << fmt.serial_bits) - 1, fmt.serial_bits, (1 << fmt.batch_bits) - 1,
             fmt.batch_bits, int_digits)
        self._verify_consts[fmt.name] = c
        return c

    def _decode_table(self, fmt: CodeFormat) -> np.ndarray:
        """ASCII byte -> numeral (255 = not in the alphabet), read as :meth:`verify` reads."""
        table = self._decode_tables.get(fmt.name)
        if table is None:
            table = np.full(256, 255, np.uint8)
            for i, ch in enumerate(fmt.alphabet):
                table[ord(ch)] = i
                if fmt.case_insensitive:
                    table[ord(ch.lower())] = i
            if fmt.reads_crockford:
                for ch, to in (("I", "1"), ("L", "1"), ("O", "0")):
                    table[ord(ch)] = table[ord(ch.lower())] = fmt.alphabet.index(to)
            self._decode_tables[fmt.name] = table
        return table

    def decode_many(self, chars: np.ndarray, fmt: CodeFormat) -> DecodedCodes:
        """Vectorised verify of canonical ASCII codes of one format: a (N, length) uint8
        matrix. Lowercase and Crockford look-alikes are accepted as in :meth:`verify`."""
        if chars.ndim != 2 or chars.shape[1] != fmt.length:
            raise ValueError(f"expected a (N, {fmt.length}) matrix of {fmt.name} codes")
        chars = np.ascontiguousarray(chars, np.uint8)
        n = chars.shape[0]
        table = self._decode_table(fmt)
        ok = np.empty(n, np.bool_)
        versions = np.empty(n, np.uint8)
        numerals = np.empty((n, fmt.body_length), np.uint8)
        K.parse_codes(chars, table, ok, versions, numerals)
        u = fmt.body_length // 2
        a = np.zeros(n, np.uint64)
        b = np.zeros(n, np.uint64)
        K.numerals_to_halves(numerals, u, fmt.radix, a, b)
        for version in _distinct(versions[ok]):
            version = int(version)
            rows = np.flatnonzero(ok & (versions == version))
            if version not in self.keys.versions and not self._key_added(version):
                ok[rows] = False
                continue
            va, vb = a[rows], b[rows]
            self.ff1(version, fmt)._crypt_halves(va, vb, fmt.body_length, b"", False)
            a[rows], b[rows] = va, vb
        roles = np.zeros(n, np.uint64)
        batches = np.zeros(n, np.uint64)
        serials = np.zeros(n, np.uint64)
        mod_v = fmt.radix ** (fmt.body_length - u)
        K.halves_to_fields(a, b, np.uint64(mod_v), _pow2_bits(mod_v), fmt.tag_bits,
                           fmt.serial_bits, fmt.batch_bits, ok, roles, batches, serials)
        # Per-batch checks, only for the (normally all, or for forgeries almost no) rows
        # whose tag passed.
        for bid in _distinct(batches[ok]):
            rows = np.flatnonzero(ok & (batches == bid))
            facts = self._batch_facts(int(bid))
            if facts is None:
                ok[rows] = False
                continue
            good = (serials[rows] < facts.count) & (versions[rows] == facts.key_version)
            allowed = [self.spec.role(r).index for r, f in facts.formats.items() if f == fmt.name]
            good &= np.isin(roles[rows], np.array(allowed, np.uint64))
            ok[rows[~good]] = False
        return DecodedCodes(ok, roles.astype(np.uint8), batches.astype(np.uint32), serials)
