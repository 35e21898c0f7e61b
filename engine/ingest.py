"""Line-collection ingest: link units from a line scanner's output, checked, in chunks.

Formats (one record per line; a parent code, then the codes packed into it)::

    # CSV (codes bare or as URLs, or quoted: "1X4K...","1ABC..."; blank lines and lines
    # starting with '#' are skipped; a UTF-8 byte-order mark at the start of the file is
    # ignored; a UTF-16 file is refused as such; lines end in LF, CRLF or CR, and a line
    # over 16 MiB is refused: a file with no line breaks)
    HTTPS://S.EXAMPLE.CN/Q/1X4K...,1ABC...,1DEF...
    # JSON lines
    {"parent": "1X4K...", "children": ["1ABC...", "1DEF..."]}

Every record is checked: each code genuine; the child one packaging level below the
parent; the child not already packed in another parent (in the store or earlier in the
file); the child in the same hands as the parent, a distributor's or the brand's, or the
parent empty (the rule of ``Aggregation.move``); no more children than the parent's level
allows; nothing voided.
A label a relabel (标签替换) put on a unit links that unit; a label a relabel made dead is
refused, naming the one in its place.
Cycles cannot arise because a link always goes exactly one level down the spec. By
default a file with any bad record changes nothing; ``skip_bad`` loads the good records
and writes the bad ones (with their reasons as ``#`` comments) to a reject file. Loading
the same file again does nothing: a file whose content (sha256) a load took before, an
earlier release's too, is not loaded at all, so warehouse work done since on its units
(``unpack``, ``move``) is never undone; with ``again=True`` (``wuma aggregate load
--again``) it is checked and loaded anew, adding nothing that is there.

How, in bounded memory (``load_links``):

1. *Check pass.* The file is read in chunks of whole lines (``chunk_bytes``, 8 MiB by
   default). A chunk is parsed with numpy (field boundaries from separator positions,
   code fields gathered into an (N, length) matrix), decoded with
   :meth:`CodeEngine.decode_many`, and its per-record checks run (genuine, level,
   voided, shape). What is kept of it is small: the links of its good records as *runs*
   (consecutive children in consecutive fields of one line: first child, line, field,
   count; 20 bytes a run) and the parent of each line (10 bytes a line). A production
   day in line order (100M caps, 4.17M cases) is ~4.3M runs, ~130 MB; in random order
   every link is a run (~2 GB for 100M).
2. *Cross-record checks*, on the runs sorted by first child: children listed twice in
   the file under two parents (only overlapping runs are expanded to single children),
   then, inside the one write transaction, children already packed in the store,
   children going into a parent in other hands (read only when the store holds a
   shipment, by key ranges; unit by unit only for children with a shipment record and
   parents shipped or already in the store), each listing of a child on its own line;
   then, each child once, each parent's capacity against the store's counts.
3. *Write*, in that same transaction: links in child order, appended after the existing
   keys where they sort after them (full LMDB pages). A bad record (without
   ``skip_bad``) aborts the transaction: nothing changes.

The transaction is a :func:`engine.scanlog.bulk_write`: scan servers' commits wait for it
(LMDB has one writer at a time) without stalling the workers, which keep answering
checks and invalid codes while it runs.

A chunk boundary never changes a result: lines are never split, and every check that
spans lines runs on the whole file's runs.

PERF (measured here, 2 cores, a fresh process, ``benchmarks/bench_aggregation.py``): the
100M-cap day (104M links, a 2.3 GB file) loads in 22 s (4.7M links/s) with a peak RSS of
1.1 GB; 10M caps: 2.6 s, 336 MiB. Random packing order, 10M caps: 1.2M links/s, 1.1 GB.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import time
import zlib
from dataclasses import dataclass
from functools import cache, cached_property, partial
from pathlib import Path

import numpy as np

from engine.aggregation import (
    _LOW,
    _Q,
    BadRecord,
    LoadReport,
    RelabelledLabels,
    _c2p_decode,
    _children_count,
    _decode_children,
    _encode_children,
    _Place,
)
from engine.errors import Conflict
from engine.files import UTF8_BOM, NewFile, OutputRefused, open_output, refuse_utf16, same_file
from engine.scanlog import bulk_write
from engine.store import pack, u64, unpack

__all__ = ["IngestReport", "load_links", "parse_records"]

#: Bytes of whole lines checked per chunk. PERF: the check pass holds ~12x this at once;
#: measured on 10M links, 4-16 MiB chunks load at the same speed (32 MiB: ~15% slower).
CHUNK_BYTES = 8 << 20
_CHUNK = 1 << 22  # fields decoded per numpy chunk (bounded memory)
_PART = 1 << 20  # runs per written slice and per stored part of a load's runs
_SCAN = 1 << 18  # store records read per vectorised block
_ODD_BUDGET = 100_000  # fields in odd forms verified one by one, per file
_MAX_LINE = 16 << 20  # bytes a line may hold (a record: a parent and its children)
_FEW = 50_000  # up to this many runs / parents: store look-ups one by one, not range reads
_DENSE = 2  # records a unit beyond which a key range is not read (``_at_or_after``)
_U64 = np.uint64
_U32 = np.uint32


class _Source:
    """A path or bytes, read in blocks; hashed as read."""

    def __init__(self, source) -> None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            self.path, self.mem, self.name = None, memoryview(source).cast("B"), "<bytes>"
        else:
            self.path, self.mem, self.name = Path(source), None, Path(source).name

    def blocks(self, size: int):
        if self.mem is not None:
            for i in range(0, len(self.mem), size):
                yield bytes(self.mem[i:i + size])
            return
        with open(self.path, "rb") as fh:
            while block := fh.read(size):
                yield block

    def chunks(self, size: int, hasher=None):
        """Whole lines, about ``size`` bytes at a time (a longer line is one chunk). A UTF-8
        byte-order mark at the start is dropped (the hash is of the bytes as stored)."""
        pieces = self._pieces(size, hasher)
        # NOTE: the first piece starts at offset 0 and runs to a newline (or to the end of
        # the file), whatever the block size: as no BOM byte is a newline, it holds the
        # whole BOM if the file starts with one.
        first = next(pieces, b"").removeprefix(UTF8_BOM)
        if first:
            yield first
        yield from pieces

    def _pieces(self, size: int, hasher):
        """:meth:`chunks`, the BOM left in; line breaks as LF (:func:`_lf`). :class:`_LongLine`
        for a line longer than ``_MAX_LINE`` (bounded memory: it is held whole)."""
        carry = b""
        for block in self.blocks(max(size, 1)):
            if hasher is not None:
                hasher.update(block)
            data = carry + block if carry else block
            held = data.endswith(b"\r")  # NOTE: maybe the CR of a CRLF cut by the block
            data = _lf(data[:-1] if held else data)
            # NOTE: the first line is the one that may have grown across blocks: over the
            # limit, it has no line break within its first _MAX_LINE + 1 bytes
            if len(data) > _MAX_LINE and data.find(b"\n", 0, _MAX_LINE + 1) < 0:
                raise _LongLine
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
            elif cut == len(data) - 1:
                carry = b""
                yield data
            else:
                carry = data[cut + 1:]
                yield data[:cut + 1]
            if held:
                carry += b"\r"
        if carry:
            yield _lf(carry)

    def check_utf8(self) -> None:
        """ValueError for a file that cannot be UTF-8 text: it starts with a UTF-16
        byte-order mark, or holds a NUL byte in its first 64 KiB. NOTE: read as UTF-8,
        every line of such a file was refused as "field 1 is not a genuine code"."""
        refuse_utf16(self._head, self.name, "UTF-8 (CSV UTF-8)")

    @cached_property
    def _head(self) -> bytes:
        """The first 64 KiB, read once for both checks above and below."""
        return next(self.blocks(1 << 16), b"")

    def first_byte(self) -> bytes:
        """The first byte that is not white space (b"" for none)."""
        s = self._head.removeprefix(UTF8_BOM).lstrip()
        if s or len(self._head) < 1 << 16:
            return s[:1]
        for block in itertools.islice(self.blocks(1 << 16), 1, None):  # NOTE: 64 KiB of spaces
            s = block.lstrip()
            if s:
                return s[:1]
        return b""


class _LongLine(ValueError):
    """A line over ``_MAX_LINE`` bytes (worded by :func:`_check_pass`, which knows its
    number)."""

    def __init__(self) -> None:
        super().__init__(f"a line is over {_MAX_LINE >> 20} MiB with no line break; nothing loaded")


@dataclass
class IngestReport(LoadReport):
    """:class:`LoadReport`, and what the load found of earlier runs."""

    #: the earlier load of a file with the same content (``again=False``): nothing done
    already_loaded: dict | None = None
    #: the reject file an earlier run left, removed by a run with no bad record
    rejects_removed: str | None = None

    def to_dict(self) -> dict:
        return super().to_dict() | {"already_loaded": self.already_loaded,
                                    "rejects_removed": self.rejects_removed}


def _lf(data: bytes) -> bytes:
    """Line breaks as LF: CRLF (Windows) and a lone CR (classic Mac OS; Excel's "CSV
    (Macintosh)") too. NOTE: read as one line, a CR-only file was held whole."""
    if b"\r" not in data:  # PERF: one memchr; the common file is copied by none of these
        return data
    data = data.replace(b"\r\n", b"\n")
    return data.replace(b"\r", b"\n") if b"\r" in data else data


def _jsonl_to_csv(raw: bytes) -> tuple[bytes, dict[int, str]]:
    """JSON lines -> the CSV layout, line for line; bad JSON lines become reasons."""
    out, bad = [], {}
    for i, line in enumerate(raw.split(b"\n")):
        s = line.strip()
        if not s or s.startswith(b"#"):
            out.append(b"")
            continue
        try:
            rec = json.loads(s)
            parent, children = rec["parent"], rec["children"]
            if not isinstance(parent, str) or not isinstance(children, list) or not all(
                    isinstance(c, str) for c in children):
                raise TypeError
            text = ",".join([parent, *children])
            if "\n" in text:
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):  # NOTE: deep nesting
            bad[i] = 'not a JSON record {"parent": "...", "children": ["...", ...]}'
            out.append(b"")
            continue
        if text.lstrip(" \t").startswith("#"):  # NOTE: read as the CSV layout, a comment
            bad[i] = "field 1 is not a genuine code"
            out.append(b"")
            continue
        if text.count(",") != len(children):  # NOTE: read as the CSV layout, two codes
            bad[i] = ('a code holds a comma: give each code as a string of its own '
                      '{"parent": "...", "children": ["...", "...", ...]}')
            out.append(b"")
            continue
        out.append(text.encode("utf-8", "replace"))
    return b"\n".join(out), bad


class _Parsed:
    """Fields of a CSV-layout buffer, decoded: arrays indexed by field.

    ``budget`` is a one-element list: fields in odd forms still to verify one by one
    (shared by the chunks of a file)."""

    def __init__(self, agg, data: bytes, budget: list[int] | None = None) -> None:
        # NOTE: '"' too: CSV quoting ("CODE","CODE") read as the bare fields. A code, its
        # short URL and its Digital Link hold no '"', ',' or line break, which is all
        # quoting is for. PERF: one more memchr a chunk, ~19 GB/s: ~0.12 s of the 2.3 GB
        # day's 22 s (timeit, a scratch script); unquoted files are not copied.
        # NOTE: '-' too, as the codes' readers ignore it (``1DGC-...``): a code written with
        # dashes is read as a bare one here, at any count (it was one of the odd forms,
        # verified one by one up to ``_ODD_BUDGET``). A URL's host may hold one: only the
        # code after its last '/' is read. (Line breaks are LF already: :func:`_lf`.)
        for junk in (b" ", b"\t", b'"', b"-"):
            if junk in data:  # PERF: a copy of the whole chunk only when needed
                data = data.replace(junk, b"")
        if not data.endswith(b"\n"):
            data += b"\n"
        self.data = data
        buf = np.frombuffer(data, np.uint8)
        fmts = sorted({r.format.name: r.format for r in agg.spec.roles.values()}.values(),
                      key=lambda f: f.length)
        slot = self._regular(data, buf, fmts)
        if slot:
            # PERF: every field is a bare code of one length: fields sit in fixed slots, so
            # boundaries are arithmetic and the code matrix is a view of the file.
            end = np.arange(slot, len(buf), slot + 1, dtype=np.int64)
            start = end - slot
            at_nl = buf[slot::slot + 1] == 10
            nl_fields = np.flatnonzero(at_nl)
            self.nlines = len(nl_fields)
            sep = end
            # line index of each field: a repeat over line lengths (cheaper than a cumsum)
            per_line = np.diff(nl_fields, prepend=-1)
            self.line = np.repeat(np.arange(self.nlines, dtype=np.int64), per_line)
        else:
            is_nl = buf == 10
            sep = np.flatnonzero(is_nl | (buf == 44))
            start = np.empty(len(sep), np.int64)
            start[0] = 0
            start[1:] = sep[:-1] + 1
            end = sep
            at_nl = is_nl[sep]
            self.nlines = int(np.count_nonzero(at_nl))
            self.line = np.cumsum(at_nl) - at_nl  # line index of each field
        self.first = np.empty(len(sep), np.bool_)
        self.first[0] = True
        self.first[1:] = at_nl[:-1]
        length = end - start
        n = len(sep)
        self.ok = np.zeros(n, np.bool_)
        self.uid = np.zeros(n, _U64)
        self.role = np.zeros(n, np.uint8)  # NOTE: for relabels (a label is a unit and a role)
        self.depth = np.full(n, -1, np.int8)
        role_depth = np.full(256, -1, np.int8)
        for r in agg.spec.roles.values():
            role_depth[r.index] = agg.spec.level(r.level).depth
        tried = np.zeros(n, np.bool_)  # fields read as a bare code or URL (judged)
        for fmt in fmts:
            L = fmt.length
            back = np.maximum(end - L - 1, 0)
            cand = ~self.ok & ((length == L) | ((length > L) & (buf[back] == 47)))  # '/'
            rows = np.flatnonzero(cand)
            if not len(rows):  # NOTE: also a chunk shorter than a code (a blank line)
                continue
            tried[rows] = True
            windows = np.lib.stride_tricks.sliding_window_view(buf, L)
            for c in range(0, len(rows), _CHUNK):
                part = rows[c:c + _CHUNK]
                if slot == L and len(rows) == n:
                    mat = buf.reshape(n, L + 1)[c:c + _CHUNK, :L]  # a view
                else:
                    mat = windows[end[part] - L]  # PERF: row gather, no (N, L) index matrix
                got = agg.data.codes.decode_many(mat, fmt)
                good = part[got.ok]
                self.ok[good] = True
                self.uid[good] = (got.batch[got.ok].astype(_U64) << _U64(32)) | got.serial[got.ok]
                self.role[good] = got.role_index[got.ok]
                self.depth[good] = role_depth[got.role_index[got.ok]]
        self.length = length
        self.start = start
        self.end = end
        self.first_idx = fi = np.flatnonzero(self.first)  # one per line, in line order
        #: lines that are ``#`` comments (their fields are no codes: none is read one by one)
        self.comment = np.zeros(self.nlines, np.bool_)
        has = length[fi] > 0
        self.comment[has] = buf[start[fi[has]]] == 35  # '#'
        odd = np.flatnonzero(~self.ok & (length > 0) & ~tried & ~self.comment[self.line])
        if budget is None:
            budget = [_ODD_BUDGET]
        take = max(min(budget[0], len(odd)), 0)
        budget[0] -= take
        self._verify_odd(agg, odd[:take])
        #: fields in odd forms past the file's budget: not read (not judged either)
        self.unread = odd[take:]

    def _verify_odd(self, agg, fields: np.ndarray) -> None:
        """Odd but possibly valid forms (full-width characters, percent-encoding, a URL
        with a query...), verified one by one as a scan is. NOTE: ~10 µs a field, so at
        most ``_ODD_BUDGET`` a file (~1 s); a bare code or a URL of the right length was
        judged by ``decode_many``, which reads it as ``verify`` does."""
        for i in fields.tolist():
            text = self.data[self.start[i]:self.end[i]].decode("utf-8", "replace")
            v = agg.data.codes.verify(text)
            if v.genuine:
                self.ok[i] = True
                self.uid[i] = (v.batch << 32) | v.serial
                self.role[i] = agg.spec.role(v.role).index
                self.depth[i] = agg.spec.level(v.level).depth

    @staticmethod
    def _regular(data: bytes, buf: np.ndarray, fmts) -> int:
        """The code length if the buffer is only bare codes of that length, each followed
        by ',' or a newline; else 0."""
        for fmt in fmts:
            L = fmt.length
            if len(buf) % (L + 1):
                continue
            ends = buf[L::L + 1]
            if not np.all((ends == 10) | (ends == 44)):
                continue
            # PERF: bytes.count is memchr-fast; a numpy compare would allocate file-sized temps
            if data.count(b"\n") + data.count(b",") == len(ends):
                return L
        return 0


def parse_records(agg, raw: bytes, fmt: str | None = None) -> tuple[_Parsed, dict[int, str]]:
    """Parse and decode a whole buffer (CSV or JSON lines)."""
    pre_bad: dict[int, str] = {}
    raw = _lf(raw.removeprefix(UTF8_BOM))
    if fmt is None:
        fmt = "jsonl" if raw.lstrip()[:1] == b"{" else "csv"
    if fmt not in ("csv", "jsonl"):
        raise ValueError("format must be csv or jsonl")
    if fmt == "jsonl":
        raw, pre_bad = _jsonl_to_csv(raw)
    return _Parsed(agg, raw), pre_bad


class _Marks:
    """Why lines are bad: a dense reason per line (0 = good) and, for marked lines, the
    field or line the reason names and a unit or number. A line's first reason stands
    (checks run in the order of the reason codes), and within one check its first
    mark."""

    def __init__(self, reason: np.ndarray) -> None:
        self.reason = reason
        self.lines: list[np.ndarray] = []
        self.at: list[np.ndarray] = []
        self.unit: list[np.ndarray] = []

    def mark(self, lines, code: int, at=None, unit=None) -> None:
        lines = np.asarray(lines, np.int64)
        if not len(lines):
            return
        fresh = self.reason[lines] == 0
        if not fresh.any():
            return
        lines, first = np.unique(lines[fresh], return_index=True)
        self.reason[lines] = code
        self.lines.append(lines)
        self.at.append(np.zeros(len(lines), np.int64) if at is None
                       else np.asarray(at, np.int64)[fresh][first])
        self.unit.append(np.zeros(len(lines), _U64) if unit is None
                         else np.asarray(unit).astype(_U64)[fresh][first])

    def extend(self, other: _Marks, offset: int) -> None:
        self.lines += [x + offset for x in other.lines]
        self.at += other.at
        self.unit += other.unit

    def details(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lines, at, unit) of every mark, sorted by line (one mark a line)."""
        if not self.lines:
            e = np.empty(0, np.int64)
            return e, e, np.empty(0, _U64)
        lines, at, unit = (np.concatenate(x) for x in (self.lines, self.at, self.unit))
        o = np.argsort(lines, kind="stable")
        return lines[o], at[o], unit[o]


class _Runs:
    """Links as runs: children ``first .. first+count-1`` in fields ``pos ..`` of ``line``."""

    __slots__ = ("first", "line", "pos", "count")

    def __init__(self, first, line, pos, count) -> None:
        self.first, self.line, self.pos, self.count = first, line, pos, count

    @classmethod
    def of(cls, child: np.ndarray, line: np.ndarray, pos: np.ndarray) -> _Runs:
        """Runs of links listed in file order (or child order): a run continues while the
        child, and its field, go up by one within one line and batch."""
        n = len(child)
        if n == 0:
            return cls.empty()
        brk = np.empty(n, np.bool_)
        brk[0] = True
        brk[1:] = ((child[1:] != child[:-1] + _U64(1)) | (line[1:] != line[:-1])
                   | (pos[1:] != pos[:-1] + 1)
                   | ((child[1:] >> _U64(32)) != (child[:-1] >> _U64(32))))
        st = np.flatnonzero(brk)
        count = np.diff(st, append=n)
        return cls(child[st], line[st].astype(np.int64), pos[st].astype(np.int64),
                   count.astype(np.int64))

    @classmethod
    def empty(cls) -> _Runs:
        e = np.empty(0, np.int64)
        return cls(np.empty(0, _U64), e, e, e)

    @classmethod
    def concat(cls, parts: list[_Runs]) -> _Runs:
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in cls.__slots__))

    def compact(self) -> _Runs:
        """The same runs in small dtypes (20 bytes a run) for keeping across chunks."""
        if len(self.line) and (self.line.max() >= 2**32 or self.pos.max() >= 2**32):
            return self
        return _Runs(self.first, self.line.astype(_U32), self.pos.astype(_U32),
                     self.count.astype(_U32))

    def take(self, idx) -> _Runs:
        return _Runs(self.first[idx], self.line[idx], self.pos[idx], self.count[idx])

    def sort(self) -> _Runs:
        """Sorts in place by first child (equal firsts keep their file order); returns
        itself."""
        o = _stable_order(self.first)
        if o is not None:
            for k in self.__slots__:  # PERF: a column at a time: one extra copy alive
                setattr(self, k, getattr(self, k)[o])
        return self

    def expand(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(child, line, field) of every link."""
        cnt = self.count.astype(np.int64)
        off = np.arange(int(cnt.sum()), dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        return (np.repeat(self.first, cnt) + off.astype(_U64),
                np.repeat(self.line.astype(np.int64), cnt),
                np.repeat(self.pos.astype(np.int64), cnt) + off)

    def __len__(self) -> int:
        return len(self.first)


def _is_sorted(x: np.ndarray) -> bool:
    return bool(len(x) < 2 or (x[1:] >= x[:-1]).all())


def _stable_order(x: np.ndarray) -> np.ndarray | None:
    """A stable argsort of ``x``, or None when it is sorted already.
    PERF: line order is sorted (a check, no sort); otherwise numpy's SIMD quicksort is
    ~3x faster than its stable sort (timsort) on random uint64, and stability only matters
    for equal values, which are rare (a child listed twice): checked, then the slow one."""
    if _is_sorted(x):
        return None
    o = np.argsort(x)
    y = x[o]
    if (y[1:] == y[:-1]).any():
        return np.argsort(x, kind="stable")
    return o


def _unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_inverse=True)``, fast when ``x`` is sorted."""
    if not _is_sorted(x):
        return np.unique(x, return_inverse=True)
    head = np.ones(len(x), np.bool_)
    head[1:] = x[1:] != x[:-1]
    return x[head], np.cumsum(head) - 1


def _group_order(keys: np.ndarray) -> np.ndarray:
    """A stable argsort of ``keys`` (grouping equal keys, keeping their order)."""
    n = len(keys)
    if _is_sorted(keys):
        return np.arange(n)
    if n >= 2**32:
        return np.argsort(keys, kind="stable")
    # PERF: a quicksort, then the indices within each group put back in order by one plain
    # sort of (group << 32 | index): numpy's SIMD sorts, ~3x faster than a stable argsort
    o = np.argsort(keys)
    k = keys[o]
    head = np.empty(n, np.bool_)
    head[0] = False
    np.not_equal(k[1:], k[:-1], out=head[1:])
    del k
    packed = np.cumsum(head, dtype=_U64)  # the group of each sorted key
    del head
    packed <<= _U64(32)  # NOTE: in place, to keep the transient memory at ~25 B a run
    packed |= o.view(_U64)
    del o
    packed.sort()
    packed &= _U64(_LOW)
    return packed.view(np.int64)


class _Relabels:
    """The store's relabels (:meth:`engine.aggregation.RelabelledLabels.all`), read once
    per load: labels sorted by (uid, role), each standing for a unit, or answering voided
    (dead, or a replacement label voided since).

    PERF: relabels are rare (well under 1% of units); a chunk's fields are matched by one
    ``searchsorted`` on the uids, and only the few fields that hit are looked at one by
    one. A store without relabels skips all of it."""

    def __init__(self, agg, txn) -> None:
        self.uid, role, unit = agg.relabels.all(txn)
        self.role, self.unit = role.tolist(), unit.tolist()

    def match(self, p: _Parsed) -> tuple[list[int], list[int], list[int]]:
        """Fields of ``p`` that are relabelled labels: (fields standing for another unit,
        the units they stand for, fields answering voided), fields in order."""
        i = np.searchsorted(self.uid, p.uid)
        i[i == len(self.uid)] = 0
        hit = np.flatnonzero(p.ok & (self.uid[i] == p.uid))
        alias, units, dead = [], [], []
        for f, j in zip(hit.tolist(), i[hit].tolist()):
            uid, role = int(p.uid[f]), int(p.role[f])
            while j < len(self.role) and int(self.uid[j]) == uid:
                if self.role[j] == role:
                    if self.unit[j] == RelabelledLabels.VOIDED:
                        dead.append(f)
                    else:
                        alias.append(f)
                        units.append(self.unit[j])
                    break
                j += 1
        return alias, units, dead


class _Check:
    """The per-file state of the check pass."""

    def __init__(self, agg, fmt: str) -> None:
        self.agg = agg
        self.fmt = fmt
        self.budget = [_ODD_BUDGET]
        spec = agg.spec
        self.cap = np.array([lv.capacity for lv in spec.levels], np.int64)
        with agg.store.read() as txn:
            vf, vl = agg.voids.all_runs(txn)
            #: relabels seen (a relabel only adds records: a count tells if one came since)
            self.relabelled = agg.relabels.count(txn)
            self.relabels = _Relabels(agg, txn) if self.relabelled else None
        o = np.argsort(vl)
        self.void_first, self.void_last = vf[o], vl[o]
        self.nlines = 0
        self.records = 0
        self.reasons: list[np.ndarray] = []
        self.marks = _Marks(np.zeros(0, np.int8))
        #: line -> its reason, worded where found (reasons 1, 9 and 10)
        self.told: dict[int, str] = {}
        self.runs: list[_Runs] = []
        self.good_lines: list[np.ndarray] = []
        self.good_parent: list[np.ndarray] = []
        self.good_depth: list[np.ndarray] = []

    def voided(self, uids: np.ndarray) -> np.ndarray:
        if not len(self.void_last):
            return np.zeros(len(uids), np.bool_)
        idx = np.searchsorted(self.void_last, uids)
        inside = idx < len(self.void_last)
        idx[~inside] = 0
        return inside & (self.void_first[idx] <= uids)

    def chunk(self, data: bytes) -> None:
        """Per-record checks of one chunk of whole lines; keeps its runs and parents."""
        agg = self.agg
        line0 = self.nlines
        raw, pre_bad = data, {}
        if self.fmt == "jsonl":
            data, pre_bad = _jsonl_to_csv(data)
        p = _Parsed(agg, data, self.budget)
        alias, dead = [], []
        if self.relabels is not None:  # replacement labels stand for their units from here on
            alias, units, dead = self.relabels.match(p)
            p.uid[alias] = units
        nlines = p.nlines
        m = _Marks(np.zeros(nlines, np.int8))
        nonempty_per_line = np.bincount(p.line, weights=(p.length > 0), minlength=nlines)
        first_idx = p.first_idx
        record = self._records(p, first_idx, nonempty_per_line == 0, line0)
        if pre_bad:
            ln = np.array(sorted(pre_bad), np.int64)
            record[ln] = True
            m.mark(ln, 9)
            self.told.update({line0 + k: v for k, v in pre_bad.items()})
        # field position within its line (1-based)
        pos = np.arange(len(p.line)) - first_idx[p.line] + 1
        child = ~p.first & (p.length > 0) & record[p.line]
        m.mark(np.flatnonzero(record & (nonempty_per_line < 2)), 1)
        if self.fmt == "csv":
            self._other_separators(raw, line0, np.flatnonzero(m.reason == 1))
        unread = np.zeros(len(p.line), np.bool_)
        unread[p.unread] = True
        bad_code = (p.length > 0) & ~p.ok & ~unread & record[p.line]
        bad_code |= p.first & (p.length == 0) & record[p.line]
        m.mark(p.line[bad_code], 2, pos[bad_code])
        unread &= record[p.line]
        m.mark(p.line[unread], 11, pos[unread])
        pdepth = p.depth[first_idx]
        wrong = child & p.ok & p.ok[first_idx[p.line]] & (p.depth != pdepth[p.line] + 1)
        m.mark(p.line[wrong], 3, pos[wrong])
        if len(self.void_last):  # voided codes (parent or child)
            used = (p.length > 0) & p.ok & record[p.line]
            voided = np.zeros(len(p.line), np.bool_)
            # NOTE: a replacement label whose own batch or range was voided since kept its
            # own uid (it answers voided: see RelabelledLabels.all), so is marked here
            voided[used] = self.voided(p.uid[used])
            m.mark(p.line[voided], 4, pos[voided])
        if dead:
            self._dead_labels(p, m, [f for f in dead if record[p.line[f]]], pos, line0)
        # what is kept: the links of the good records, as runs, and their parents
        good = record & (m.reason == 0)
        sel = np.flatnonzero(child & good[p.line])
        runs = _Runs.of(p.uid[sel], p.line[sel], pos[sel])
        runs.line += line0
        self.runs.append(runs.compact())
        gl = np.flatnonzero(good)
        self.good_lines.append(gl + line0)
        self.good_parent.append(p.uid[first_idx[gl]])
        self.good_depth.append(pdepth[gl])
        self.reasons.append(m.reason)
        self.marks.extend(m, line0)
        self.records += int(record.sum())
        self.nlines += nlines

    @staticmethod
    def _records(p: _Parsed, first_idx: np.ndarray, blank: np.ndarray, line0: int) -> np.ndarray:
        """Which lines are records: not blank, not a ``#`` comment, not the file's header
        (a first line whose first field starts with "parent", in any case, and that holds
        no genuine code: ``PARENT...`` may be a code's URL)."""
        header = np.zeros(p.nlines, np.bool_)
        if line0 == 0 and p.nlines and p.data[:6].lower() == b"parent":
            header[0] = not p.ok[:first_idx[1] if p.nlines > 1 else len(p.ok)].any()
        return ~(blank | p.comment | header)

    def _other_separators(self, raw: bytes, line0: int, lines: np.ndarray) -> None:
        """Words reason 1 for a line of one field that holds another separator than a
        comma (a tab, a ';', spaces): a file saved by a program set for another separator.
        PERF: the chunk is split into lines only when it holds such a line."""
        if not len(lines):
            return
        text = raw.split(b"\n")
        for ln in lines.tolist():
            found = [name for sep, name in _NOT_COMMAS if sep in text[ln].strip()]
            if found:
                self.told[line0 + ln] = (
                    f"{_REASONS[1]}, separated by commas: this line has no comma, but "
                    f"{' and '.join(found)} (save the file with a comma between codes)")

    def _dead_labels(self, p: _Parsed, m: _Marks, fields: list[int], pos, line0: int) -> None:
        """Marks the fields that are labels a relabel made dead, each worded by its refusal."""
        m.mark(p.line[fields], 10, pos[fields])
        with self.agg.store.read() as txn:
            for f in fields:
                ln = int(p.line[f])
                if m.reason[ln] == 10 and line0 + ln not in self.told:
                    label = (int(p.uid[f]), int(p.role[f]))
                    self.told[line0 + ln] = f"field {pos[f]}: " + self.agg.label_refusal(txn, label)


def load_links(agg, source, *, skip_bad: bool = False, reject_file=None, fmt: str | None = None,
               name: str | None = None, now: float | None = None,
               chunk_bytes: int = CHUNK_BYTES, again: bool = False) -> IngestReport:
    """Check and load a line-collection file (path or bytes) in one write transaction.

    Returns an :class:`IngestReport`; ``loaded`` is False (and nothing changed) when a
    record is bad and ``skip_bad`` is not set. Bad records carry their 1-based line number.
    ``chunk_bytes`` bounds the part of the file parsed at once (results never depend
    on it).

    With ``skip_bad``, the bad records go to ``reject_file`` (if given), written whole or
    not at all, in the transaction that loads the good ones; a run with no bad record
    removes the reject file an earlier run left there (``rejects_removed``). ``ValueError``
    (nothing loaded) when the reject file is the input file, a folder, or cannot be
    written, or when a line is over 16 MiB (``_MAX_LINE``: a file with no line breaks).

    Unless ``again``, a file whose content (sha256) an earlier load took is not loaded
    again: nothing is written, and ``already_loaded`` names that load (the latest, if
    several). Loaded again, it would undo the warehouse work done since on its units (a
    unit taken out with ``unpack`` put back; one moved since refusing its record).
    """
    if fmt not in (None, "csv", "jsonl"):
        raise ValueError("format must be csv or jsonl")
    if not isinstance(chunk_bytes, int) or chunk_bytes < 1:
        raise ValueError("chunk_bytes must be a positive integer")
    src = _Source(source)
    # NOTE: the reject file is checked and created (a NewFile in its folder) before
    # anything is read or written: a target that is the input or cannot be written refuses
    # the load up front, and the rejects are renamed into place only once complete.
    rej = _RejectFile(reject_file, src) if skip_bad and reject_file is not None else None
    try:
        report = _load(agg, src, skip_bad, rej, fmt, name, now, chunk_bytes, again)
    except BaseException:
        if rej is not None:
            rej.discard()
        raise
    if rej is not None:
        report.rejected_to = rej.finish(report)
    return report


def _check_pass(agg, src: _Source, fmt: str | None, chunk_bytes: int) -> tuple[_Check, str]:
    """The per-record checks of every chunk, and the file's sha256."""
    src.check_utf8()
    if fmt is None:
        if src.path is not None and src.path.name.endswith((".jsonl", ".ndjson", ".json")):
            fmt = "jsonl"
        else:
            fmt = "jsonl" if src.first_byte() == b"{" else "csv"
    chk = _Check(agg, fmt)
    hasher = hashlib.sha256()
    try:
        for data in src.chunks(chunk_bytes, hasher):
            chk.chunk(data)
    except _LongLine:  # NOTE: every line before it was checked: it is the next one
        raise ValueError(
            f"line {chk.nlines + 1} is over {_MAX_LINE >> 20} MiB with no line break; nothing "
            "loaded. A record is one line (a parent code and its children): the file may have "
            "no line breaks at all, or breaks other than LF, CRLF or CR; save it with one "
            "record a line") from None
    return chk, hasher.hexdigest()


def _load(agg, src: _Source, skip_bad: bool, rej: _RejectFile | None, fmt: str | None,
          name: str | None, now: float | None, chunk_bytes: int, again: bool) -> IngestReport:
    """:func:`load_links` once the reject file is open."""
    # -- 1. check pass: per-record checks, chunk by chunk ---------------------------------
    chk, digest = _check_pass(agg, src, fmt, chunk_bytes)
    nlines = chk.nlines
    reason = np.concatenate(chk.reasons) if chk.reasons else np.zeros(0, np.int8)
    chk.reasons = []
    marks = chk.marks
    marks.reason = reason
    gl = np.concatenate(chk.good_lines) if chk.good_lines else np.empty(0, np.int64)
    line_parent = np.zeros(nlines, _U64)
    line_parent[gl] = np.concatenate(chk.good_parent) if chk.good_parent else 0
    line_depth = np.full(nlines, -1, np.int8)
    line_depth[gl] = np.concatenate(chk.good_depth) if chk.good_depth else 0
    runs = _Runs.concat(chk.runs)
    chk.runs = []
    del gl

    # -- 2. children listed twice in the file ----------------------------------------------
    runs = _dedup(runs.sort(), line_parent, marks)

    report = IngestReport(records=chk.records)
    if not again:
        _index_older_loads(agg)
    try:
        with bulk_write(agg.store) as txn:
            if not again and _already_loaded(agg, txn, digest, report):
                raise _Rollback
            # -- 3. against the store, in the transaction that writes ----------------------
            vf, vl = agg.voids.all_runs(txn)
            o = np.argsort(vl)
            if not (np.array_equal(vl[o], chk.void_last)
                    and np.array_equal(vf[o], chk.void_first)):
                raise Conflict("codes were voided during the load; run it again")
            if agg.relabels.count(txn) != chk.relabelled:
                raise Conflict("labels were replaced (relabel) during the load; run it again")
            new, existing = _against_store(agg, txn, runs, line_parent, marks)
            del runs
            told = _other_hands(agg, txn, new, line_parent, marks)
            new = _once(new, reason)  # NOTE: after every check that is per listing
            has_kids = _capacity(agg, txn, new, line_parent, line_depth, chk.cap, marks)
            told.update(chk.told)
            report.bad = _bad_records(agg, marks, told)
            good_line = reason == 0
            report.links_existing = int(_once(existing, reason).count.sum())
            if report.bad and not skip_bad:
                raise _Rollback
            if report.bad and rej is not None:
                # NOTE: written in the transaction, so a failure (disk full...) leaves the
                # store unchanged: good records are never loaded with their rejects lost
                rej.write(src, chunk_bytes, report.bad)
            report.loaded = True
            new = new.take(good_line[new.line])
            report.links_added = int(new.count.sum())
            if not report.links_added:
                raise _Rollback
            rf, rn, rp = _merge(new, line_parent)
            del new
            report.event_id = _write(agg, txn, rf, rn, rp, has_kids,
                                     src.name if name is None else name, digest, report, now)
    except _Rollback:
        pass
    return report


def _already_loaded(agg, txn, digest: str, report: IngestReport) -> bool:
    """Whether a load took a file with this sha256 before; if so ``report`` names it (the
    latest). NOTE: read in the writing transaction: two runs of one file at once load it
    once. PERF: one ``get`` (``agg_loaded_files``), however many loads there were (reading
    every load event took 1.1 s at 400k loads, with the store's writer lock held); the
    loads of older releases are indexed once (:func:`_index_older_loads`)."""
    raw = txn.get(bytes.fromhex(digest), db=agg._loaded_files_db)
    found = None if raw is None else txn.get(raw, db=agg._events_db)
    if found is None:
        return False
    rec = unpack(found)
    report.loaded = True
    report.already_loaded = {"event_id": rec["id"], "time": rec["time"],
                             "source": rec.get("source"), "records": rec.get("records"),
                             "links": rec.get("links"), "rejected": rec.get("rejected")}
    return True


#: The key of ``agg_loaded_files`` saying that the loads of releases before it are in it
#: (every other key is a file's sha256: 32 bytes).
_OLDER_LOADS_IN = b"\x00older loads indexed"


def _index_older_loads(agg) -> None:
    """Index the files taken by loads made before ``agg_loaded_files`` existed, once per
    data folder, at the first load (not ``again``) that finds the mark missing: their load
    events (``agg_events``) recorded each file's sha256, the hash of its bytes as stored,
    as this release computes it; the latest load of a file is the one named. NOTE: a re-run
    of such a file loaded it again, putting back the units unpacked since.

    In a write transaction of its own, not the load's (a refused load, or a re-run
    recognised, leaves its transaction unwritten, which would drop the index), that reads
    the mark again: two first loads at once index once. PERF: one ``get`` a load once
    indexed (~2 µs); indexing took 0.7-1.0 s for 100k loads of 100k files, 1.5-1.8 s with
    900k other events (3 runs each, a scratch script), with the writer lock held."""
    db = agg._loaded_files_db
    with agg.store.read() as txn:
        if txn.get(_OLDER_LOADS_IN, db=db) is not None:
            return
    with bulk_write(agg.store) as txn:
        if txn.get(_OLDER_LOADS_IN, db=db) is not None:
            return  # NOTE: another load indexed them meanwhile
        for digest, key in sorted(_older_loads(agg, txn).items()):
            txn.put(digest, key, db=db)
        txn.put(_OLDER_LOADS_IN, b"", db=db)


def _older_loads(agg, txn) -> dict[bytes, bytes]:
    """sha256 -> the key (event id) of the latest load event of a file with it."""
    latest: dict[bytes, bytes] = {}
    for key, raw in txn.cursor(db=agg._events_db):  # NOTE: in event order: the latest last
        if b"\xa4load" not in raw:  # PERF: msgpack's "load": other events are not unpacked
            continue
        rec = unpack(raw)
        digest = rec.get("sha256") if rec.get("type") == "load" else None
        if isinstance(digest, str) and len(digest) == 64:
            try:
                latest[bytes.fromhex(digest)] = key
            except ValueError:  # NOTE: not a hash: no file to recognise
                continue
    return latest


def _bad_records(agg, marks: _Marks, told: dict[int, str]) -> list[BadRecord]:
    lines, at, unit = marks.details()
    reason = marks.reason
    with agg.store.read() as txn:  # PERF: one read for every unit named by its code
        return [BadRecord(ln + 1, _reason_text(agg, txn, code, w, o, told.get(ln)))
                for ln, code, w, o in zip(lines.tolist(), reason[lines].tolist(), at.tolist(),
                                          unit.tolist())]


class _Rollback(Exception):
    """Leave the write transaction without writing."""


def _dedup(runs: _Runs, line_parent: np.ndarray, marks: _Marks) -> _Runs:
    """Children listed twice in the file (runs sorted by first child): a listing under
    another parent than the child's first listing in the file marks its line. Every
    listing is kept: each line is checked against the store, the distributors and the
    capacity on its own (:func:`_once` then keeps one listing of a child for the write).
    NOTE: keeping only the first listing lost the child when that listing's line was
    refused later (already packed elsewhere...), while a later line listing it under the
    same parent was reported loaded."""
    many = _overlapping(runs)
    if many is None:
        return runs
    child, line, pos, head = _listings(runs.take(many))
    gfirst = np.maximum.accumulate(np.where(head, np.arange(len(child)), 0))
    par = line_parent[line]
    conflict = par != par[gfirst]
    # NOTE: the field, and the line listing it first (high bits), named in the reason
    at = (line[gfirst].astype(np.int64) + 1) << 32 | pos.astype(np.int64)
    marks.mark(line[conflict], 5, at[conflict], child[conflict])
    return runs


def _once(runs: _Runs, reason: np.ndarray) -> _Runs:
    """The runs (sorted by first child) of the lines still good, each child once (its
    first listing: a child twice on good lines is under one parent, see :func:`_dedup`)."""
    keep = reason[runs.line] == 0
    if not keep.all():
        runs = runs.take(keep)
    many = _overlapping(runs)
    if many is None:
        return runs
    child, line, pos, head = _listings(runs.take(many))
    kept = _Runs.of(child[head], line[head], pos[head])
    return _Runs.concat([runs.take(~many), kept.compact()]).sort()


def _overlapping(runs: _Runs) -> np.ndarray | None:
    """Which runs (sorted by first child) overlap another; None for none. PERF: 9 bytes
    a run at once (line order overlaps nothing)."""
    n = len(runs)
    if n < 2:
        return None
    reach = runs.first + runs.count.astype(_U64)  # one past the last child
    np.maximum.accumulate(reach, out=reach)
    start = np.ones(n, np.bool_)
    np.greater_equal(runs.first[1:], reach[:-1], out=start[1:])
    del reach
    if start.all():
        return None
    gid = np.cumsum(start) - 1
    return np.bincount(gid)[gid] > 1


def _listings(runs: _Runs) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(child, line, field) of every link of these runs in child then file order, and
    whether each is its child's first listing."""
    child, line, pos = runs.expand()
    o = np.lexsort((pos, line, child))
    child, line, pos = child[o], line[o], pos[o]
    head = np.ones(len(child), np.bool_)
    head[1:] = child[1:] != child[:-1]
    return child, line, pos, head


def _against_store(agg, txn, runs: _Runs, line_parent, marks: _Marks):
    """Children already linked in the store: to the same parent they count as existing,
    to another they mark the line. Returns the new runs and the existing ones (each
    sorted by first child)."""
    last = runs.first + runs.count.astype(_U64) - _U64(1)
    sf, sl, sp = _stored_links(agg, txn, runs.first, last)
    if not len(sl):
        return runs, _Runs.empty()
    par = line_parent[runs.line]
    j = np.searchsorted(sl, runs.first)
    valid = j < len(sl)
    j[~valid] = 0
    touch = valid & (sf[j] <= last)
    inside = touch & (sf[j] <= runs.first) & (sl[j] >= last)
    same = inside & (sp[j] == par)
    other = inside & ~same
    partial = touch & ~inside
    bad_child, bad_line, bad_pos, bad_unit = ([runs.first[other]], [runs.line[other]],
                                              [runs.pos[other]], [sp[j][other]])
    existing = [runs.take(same)]
    new = [runs.take(~touch)]
    if partial.any():
        child, line, pos = runs.take(partial).expand()
        k = np.searchsorted(sl, child)
        found = k < len(sl)
        k[~found] = 0
        found &= sf[k] <= child
        elsewhere = found & (sp[k] != line_parent[line])
        again = found & ~elsewhere
        bad_child.append(child[elsewhere])
        bad_line.append(line[elsewhere])
        bad_pos.append(pos[elsewhere])
        bad_unit.append(sp[k][elsewhere])
        existing.append(_Runs.of(child[again], line[again], pos[again]).compact())
        new.append(_Runs.of(child[~found], line[~found], pos[~found]).compact())
    bc = np.concatenate(bad_child)
    o = np.argsort(bc, kind="stable")
    marks.mark(np.concatenate(bad_line)[o], 6, np.concatenate(bad_pos)[o],
               np.concatenate(bad_unit)[o])
    out, had = _Runs.concat(new), _Runs.concat(existing)
    if partial.any():
        out.sort()
        had.sort()
    return out, had


def _other_hands(agg, txn, new: _Runs, line_parent, marks: _Marks) -> dict[int, str]:
    """Mark the good lines that put a unit into a parent in other hands: the rule of
    ``Aggregation.move`` and ``link`` (``Aggregation._refuse_other_hands``; worded by
    ``Aggregation._hands_text``). Returns the reasons by line.

    The store's state before the load decides. A child (packed nowhere yet,
    ``_against_store``) with a shipment record of its own is with that record's
    distributor (``Aggregation._holding``); one with none is with none. A parent is with the
    distributor it resolves to through its own record or an ancestor's, else with the one
    the goods of its topmost unit are with, or with none (the brand's: ``_parent_hands``).
    A parent that is empty, packed nowhere and with no distributor takes the hands of the
    first unit the file lists in it on a line not refused, as moves of the lines in turn
    would.

    NOTE: unlike ``move``, a child with no shipment record of its own is not read for the
    goods it holds, as a case a distributor refilled with caps of its own would be (a
    rebuild is a ``move``, not a line's file): every case of a palletiser's file loaded
    after the caps' holds its caps, and reading them took 64 µs a case (10k cases, 2
    cores): ~4.5 minutes for a production day's 4.17M cases.

    PERF: nothing is read when the store holds no shipment record. Otherwise units are
    looked at one by one only where hands can differ: children with a shipment record
    (found by key ranges: one ``set_range`` a batch for a fresh day), parents resolving to
    a shipment, and parents already in the store under a top unit holding a shipment
    record somewhere below (``_holding_records``). A fresh day's parents are empty labels."""
    told: dict[int, str] = {}
    if not len(new) or not txn.stat(agg._ship_db)["entries"]:
        return told
    fine = marks.reason[new.line] == 0
    runs = new if fine.all() else new.take(np.flatnonzero(fine))
    if not len(runs):
        return told
    last = runs.first + runs.count.astype(_U64) - _U64(1)
    # PERF: each shipment read once, not once a child (a ship of many units is one large
    # record): 2,400 cases shipped in one, loaded onto 20 fresh pallets, 207 -> 19 ms a load
    distributor = cache(partial(agg._distributor_of, txn))
    have: dict[int, str] = {}  # child -> its distributor, for children with one
    kids, recs = _records_within(txn, agg._ship_db, runs.first, last)
    for c, s in zip(kids.tolist(), np.frombuffer(b"".join(recs), ">u4").tolist()):
        # NOTE: packed nowhere: its own record decides (returned: its goods, as _holding)
        h = distributor(s) or agg._holding(txn, c, s)[0]
        if h is not None:
            have[c] = h
    par = line_parent[runs.line]
    hands = _parent_hands(agg, txn, _unique_inverse(par)[0], distributor)
    # links that can be refused: into a parent with a distributor, or in several hands (as
    # move, it takes no unit until the strays are out); of a child with one; and every
    # link into an empty parent such a child goes into (its first unit decides)
    mixed = {p for p, pl in hands.places.items() if pl.strays}  # several hands: takes no unit
    with_dist = np.array(sorted(p for p, w in hands.want.items() if w is not None or p in mixed), _U64)
    check = np.isin(par, with_dist) if len(with_dist) else np.zeros(len(par), np.bool_)
    if have:
        hv = np.array(sorted(have), _U64)
        hot = np.searchsorted(hv, last, side="right") > np.searchsorted(hv, runs.first)
        hot_par = par[hot]
        empty = hot_par[[hands.empty(p) for p in hot_par.tolist()]]
        check |= hot | np.isin(par, empty)
    if not check.any():
        return told
    child, line, pos = runs.take(np.flatnonzero(check)).expand()
    o = np.lexsort((pos, line))  # file order: an empty parent takes its first unit's hands
    taken: dict[int, _Place] = {}  # empty parent -> the hands it took on a line not refused
    bad_line, bad_pos = [], []
    at_line, first = -1, None  # the line in hand, and (its parent, the hands it gives it)
    for c, ln, at in zip(child[o].tolist(), line[o].tolist(), pos[o].tolist()):
        if ln != at_line:
            if first is not None and at_line not in told:
                taken[first[0]] = first[1]
            at_line, first = ln, None
        if ln in told:  # NOTE: a line's first reason stands
            continue
        p, h = int(line_parent[ln]), have.get(c)
        if hands.empty(p):
            place = taken.get(p) or (first[1] if first is not None else None)
            if place is None:
                first = (p, _Place.of_first(h, c, p))
                continue
            if h == place.want:
                continue
        elif h == hands.want.get(p) and p not in mixed:  # NOTE: None for the brand's
            continue
        else:
            place = hands.place(agg, txn, p)
        why = agg._hands_text(txn, c, h, p, place)
        told[ln] = f"field {at}: {why}, then load this record again"
        bad_line.append(ln)
        bad_pos.append(at)
    marks.mark(bad_line, 7, bad_pos)
    return told


class _ParentHands:
    """Whose hands the parents of a load are in (``_parent_hands``): ``want`` (parent ->
    distributor) for parents with a distributor through their records and parents read
    whole (``places``); ``brand``, sorted, for parents in the store with none, under the
    top units ``brand_top`` (one each), whose goods hold no shipment record; every other
    parent is empty, packed nowhere, with no distributor: any unit may go in."""

    def __init__(self, want, places, brand, brand_top) -> None:
        self.want: dict[int, str | None] = want
        self.places: dict[int, _Place] = places
        self.brand, self.brand_top = brand, brand_top

    def _brand_at(self, p: int) -> int:
        i = int(np.searchsorted(self.brand, _U64(p)))
        return i if i < len(self.brand) and int(self.brand[i]) == p else -1

    def empty(self, p: int) -> bool:
        return p not in self.want and self._brand_at(p) < 0

    def place(self, agg, txn, p: int) -> _Place:
        """The place of a parent that is not empty (``Aggregation._place``); read here for
        a parent with a distributor through its records, where only a refusal asks."""
        if p not in self.places:
            i = self._brand_at(p)
            # NOTE: what Aggregation._place finds under a top whose goods hold no record
            self.places[p] = (agg._place(txn, p) if i < 0
                              else _Place(None, None, int(self.brand_top[i])))
        return self.places[p]


def _parent_hands(agg, txn, parents: np.ndarray, distributor) -> _ParentHands:
    """The hands of these (sorted, unique) parents (:class:`_ParentHands`); ``distributor``:
    ``Aggregation._distributor_of`` in ``txn``, each shipment read once.

    PERF: a parent in the store with no distributor through its records (packed, or
    holding goods) is with the distributor its top unit's goods are with: only top units
    holding a shipment record below them are read whole (``Aggregation._place``, once a
    top); the others are the brand's. One pass a level over what the tops hold."""
    want: dict[int, str | None] = {}
    places: dict[int, _Place] = {}
    sid, top = _resolved_shipments(agg, txn, parents)
    shipped = sid > 0
    for p, s in zip(parents[shipped].tolist(), sid[shipped].tolist()):
        want[p] = distributor(s)
    stored = ~shipped & ((top != parents) | _own_records(txn, agg._p2c_db, parents)[0])
    tops = _unique_inverse(np.sort(top[stored]))[0]
    mixed = tops[_holding_records(agg, txn, tops)]
    read = stored & np.isin(top, mixed) if len(mixed) else np.zeros(len(parents), np.bool_)
    goods: dict = {}  # top unit -> what it holds (Aggregation._below), once each
    for p in parents[read].tolist():
        place = agg._place(txn, p, goods)
        if place is not None:
            want[p], places[p] = place.want, place
    brand = stored & ~read
    return _ParentHands(want, places, parents[brand], top[brand])


def _resolved_shipments(agg, txn, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(shipment ids, tops)`` of these (sorted, unique) units: the shipment each resolves
    to, by its own ``agg_ship`` record or its nearest stored ancestor's (0 for none or
    returned), and its topmost stored ancestor (itself when packed nowhere). As
    ``Aggregation._resolved`` and ``_ancestors``, for many units at once: one level of
    ancestors a step."""
    sid = np.zeros(len(units), np.int64)
    top = units.copy()
    open_ = np.ones(len(units), np.bool_)  # no record met yet on the way up
    todo = np.arange(len(units))  # indices into ``units`` still climbing
    at = units
    for _ in range(len(agg.spec.levels)):
        up, inv = _unique_inverse(at)
        has, vs = _own_records(txn, agg._ship_db, up)
        if has.any():
            found = np.zeros(len(up), np.int64)
            found[has] = np.frombuffer(b"".join(vs), ">u4")
            hit = has[inv] & open_[todo]
            sid[todo[hit]] = found[inv][hit]
            open_[todo[hit]] = False
        packed, parent = _stored_parents(agg, txn, up)
        keep = packed[inv]
        if not keep.any():
            break
        todo, at = todo[keep], parent[inv][keep]
        top[todo] = at
        o = np.argsort(at, kind="stable")
        todo, at = todo[o], at[o]
    return sid, top


def _holding_records(agg, txn, units: np.ndarray) -> np.ndarray:
    """Which of these (sorted, unique) units hold, at any depth, a unit with a shipment
    record of its own. PERF: a level at a time, each unit holding goods decoded once, the
    records looked for by key ranges over what they hold (a fresh day's: none)."""
    out = np.zeros(len(units), np.bool_)
    has, vs = _own_records(txn, agg._p2c_db, units)  # what each unit holding goods holds
    owner = np.flatnonzero(has)  # the unit of ``units`` above each of ``vs``
    for _ in range(len(agg.spec.levels)):
        if not vs:
            break
        firsts, counts, owners = [], [], []
        for o, raw in zip(owner.tolist(), vs):
            for f, n in _decode_children(raw):
                firsts.append(f)
                counts.append(n)
                owners.append(o)
        first = np.array(firsts, _U64)
        i = np.argsort(first, kind="stable")
        first, last = first[i], first[i] + np.array(counts, _U64)[i] - _U64(1)
        run_owner = np.array(owners, np.int64)[i]
        rec = _records_within(txn, agg._ship_db, first, last)[0]
        out[run_owner[np.searchsorted(first, rec, side="right") - 1]] = True
        at, vs = _records_within(txn, agg._p2c_db, first, last)  # one level down
        owner = run_owner[np.searchsorted(first, at, side="right") - 1]
        keep = ~out[owner]  # NOTE: a unit found holding a record needs no deeper look
        owner, vs = owner[keep], [v for v, k in zip(vs, keep.tolist()) if k]
    return out


def _own_records(txn, db, units: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
    """Which of these sorted units have a record of their own in ``db`` (keyed by u64
    uids), and those records' values, in unit order."""
    ks, vs = _at_or_after(txn, db, units)
    if not ks:
        return np.zeros(len(units), np.bool_), []
    kk = np.frombuffer(b"".join(ks), ">u8").astype(_U64)
    i = np.minimum(np.searchsorted(kk, units), len(kk) - 1)
    has = kk[i] == units
    return has, [vs[j] for j in i[has].tolist()]


def _stored_parents(agg, txn, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of these sorted units are packed in the store, and the parent of each
    (meaningful where packed)."""
    ks, vs = _at_or_after(txn, agg._c2p_db, units)
    if not ks:
        return np.zeros(len(units), np.bool_), np.zeros(len(units), _U64)
    sf, sl, sp = _decode_c2p(ks, vs)
    j = np.minimum(np.searchsorted(sl, units), len(sl) - 1)
    return (sl[j] >= units) & (sf[j] <= units), sp[j]


def _records_within(txn, db, first: np.ndarray, last: np.ndarray
                    ) -> tuple[np.ndarray, list[bytes]]:
    """The records of ``db`` (keyed by u64 uids) inside these runs of units (``first``
    sorted, ``last`` each run's last unit; runs may overlap): ``(keys, values)``, sorted by
    key, each once.

    PERF: per batch, the key range from its runs' lowest unit to their highest is read
    while it holds at most ``_DENSE`` records a run (a fresh production day's units have
    none: one ``set_range``); a denser range (runs scattered over a batch with many
    records) is read run by run, only the records inside them."""
    if not len(first):
        return np.empty(0, _U64), []
    cur = txn.cursor(db=db)
    got: list[tuple[bytes, bytes]] = []
    for a, b in _batch_spans(first):
        hi_key = _Q.pack(int(last[a:b].max()))
        budget = _DENSE * (b - a)
        part: list[tuple[bytes, bytes]] = []
        whole = True
        if cur.set_range(_Q.pack(int(first[a]))):
            for k, v in cur.iternext():
                if k > hi_key:
                    break
                part.append((k, v))
                if len(part) > budget:
                    whole = False
                    break
        if not whole:
            part = []
            for f, l in zip(first[a:b].tolist(), last[a:b].tolist()):
                if cur.set_range(_Q.pack(f)):
                    last_key = _Q.pack(l)
                    for k, v in cur.iternext():
                        if k > last_key:
                            break
                        part.append((k, v))
        got += part
    if not got:
        return np.empty(0, _U64), []
    keys, at = np.unique(np.frombuffer(b"".join(k for k, _ in got), ">u8").astype(_U64),
                         return_index=True)
    reach = np.maximum.accumulate(last)  # NOTE: the key range also holds the gaps between runs
    i = np.searchsorted(first, keys, side="right") - 1
    inside = (i >= 0) & (reach[np.maximum(i, 0)] >= keys)
    return keys[inside], [got[j][1] for j in at[inside].tolist()]


def _at_or_after(txn, db, units: np.ndarray) -> tuple[list[bytes], list[bytes]]:
    """For each of these sorted units, the record of ``db`` (keyed by u64 uids) with the
    smallest key at or after it, if any: (keys, values), in key order, each once. Enough
    to find a unit's own record (``agg_ship``) or the run that holds it (``agg_c2p``).

    PERF: per batch, the key range from its lowest unit to the first key past its highest
    is read while it holds at most ``_DENSE`` records a unit (the parents of a load are
    mostly fresh labels: nothing, or their own records); a denser range (units scattered
    over a batch packed long ago) is looked up one ``set_range`` a unit instead."""
    got: dict[bytes, bytes] = {}
    if not len(units):
        return [], []
    cur = txn.cursor(db=db)
    for a, b in _batch_spans(units):
        seg = units[a:b]
        part: list[tuple[bytes, bytes]] = []
        whole = True
        if cur.set_range(_Q.pack(int(seg[0]))):
            hi_key = _Q.pack(int(seg[-1]))
            budget = _DENSE * len(seg)
            for k, v in cur.iternext():
                part.append((k, v))
                if k >= hi_key:
                    break
                if len(part) > budget:
                    whole = False
                    break
        if whole:
            got.update(part)
            continue
        for u in seg.tolist():
            if cur.set_range(_Q.pack(u)):
                got[cur.key()] = cur.value()
    ks = sorted(got)
    return ks, [got[k] for k in ks]


def _capacity(agg, txn, new: _Runs, line_parent, line_depth, cap, marks: _Marks) -> np.ndarray:
    """Mark the lines of parents that would hold more children than their level allows
    (existing + new links of good records). Returns the parents that already hold
    children and get new ones."""
    reason = marks.reason
    fine = (reason == 0)[new.line]
    new_per_line = np.bincount(new.line[fine], weights=new.count[fine],
                               minlength=len(reason))
    gl = np.flatnonzero((line_depth >= 0) & (reason == 0))
    up, inv = _unique_inverse(line_parent[gl])
    total = np.bincount(inv, weights=new_per_line[gl], minlength=len(up)).astype(np.int64)
    need = np.flatnonzero(total > 0)
    held = _stored_counts(agg, txn, up[need])
    total[need] += held
    limit = cap[line_depth[gl]]
    over = total[inv] > limit
    if over.any():
        marks.mark(gl[over], 8, total[inv][over], limit[over])
    return up[need][held > 0]


def _merge(new: _Runs, line_parent) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs to store: (first, count, parent), adjacent runs of one parent joined."""
    f = new.first
    c = new.count.astype(_U64)
    p = line_parent[new.line]
    n = len(f)
    brk = np.ones(n, np.bool_)
    brk[1:] = ((f[1:] != f[:-1] + c[:-1]) | (p[1:] != p[:-1])
               | ((f[1:] >> _U64(32)) != (f[:-1] >> _U64(32))))
    st = np.flatnonzero(brk)
    return f[st], np.add.reduceat(c, st), p[st]


# -- store reads ------------------------------------------------------------------------------
def _batch_spans(units: np.ndarray):
    """``(start, stop)`` index spans of sorted uids (or runs' first uids), one per batch."""
    hb = units >> _U64(32)
    return itertools.pairwise([0, *(np.flatnonzero(hb[1:] != hb[:-1]) + 1).tolist(), len(units)])


def _segments(first: np.ndarray, last: np.ndarray):
    """(lowest first, highest last) of sorted runs, per batch."""
    for a, b in _batch_spans(first):
        yield int(first[a]), int(last[a:b].max())


def _stored_links(agg, txn, first: np.ndarray, last: np.ndarray):
    """The store's c2p runs (first, last, parent; sorted) that may overlap these sorted
    runs: the key range of each batch they cover."""
    fs, ls, ps = [], [], []
    if 0 < len(first) <= _FEW:  # a few runs: look each up (a store may be large)
        cur = txn.cursor(db=agg._c2p_db)
        got: dict[bytes, bytes] = {}
        for f, l in zip(first.tolist(), last.tolist()):
            if not cur.set_range(_Q.pack(f)):
                continue
            for k, v in cur.iternext():
                if _c2p_decode(_Q.unpack(k)[0], v)[0] > l:
                    break
                got[k] = v
        if got:
            ks = sorted(got)
            for col, x in zip((fs, ls, ps), _decode_c2p(ks, [got[k] for k in ks])):
                col.append(x)
    elif len(first):  # many: read the key range of each batch
        cur = txn.cursor(db=agg._c2p_db)
        for lo, hi in _segments(first, last):
            if not cur.set_range(_Q.pack(lo)):
                continue
            hi_key = _Q.pack(hi)
            ks, vs = [], []
            for k, v in cur.iternext():
                ks.append(k)
                vs.append(v)
                if k > hi_key:  # NOTE: the first run past hi may still start inside
                    break
                if len(ks) >= _SCAN:
                    for col, x in zip((fs, ls, ps), _decode_c2p(ks, vs)):
                        col.append(x)
                    ks, vs = [], []
            if ks:
                for col, x in zip((fs, ls, ps), _decode_c2p(ks, vs)):
                    col.append(x)
    if not fs:
        e = np.empty(0, _U64)
        return e, e, e
    return tuple(np.concatenate(x) for x in (fs, ls, ps))


def _decode_c2p(ks: list[bytes], vs: list[bytes]):
    last = np.frombuffer(b"".join(ks), ">u8").astype(_U64)
    lens = np.fromiter(map(len, vs), np.int64, len(vs))
    raw = np.frombuffer(b"".join(vs), np.uint8)
    end = np.cumsum(lens)
    parent = raw[(end - 8)[:, None] + np.arange(8)].copy().view(">u8").ravel().astype(_U64)
    first = last.copy()
    run = lens == 12
    if run.any():
        fs = raw[(end[run] - 12)[:, None] + np.arange(4)].copy().view(">u4").ravel()
        first[run] = (last[run] & _U64(~_LOW & (2**64 - 1))) | fs.astype(_U64)
    return first, last, parent


def _stored_counts(agg, txn, parents: np.ndarray) -> np.ndarray:
    """Children the store holds for these (sorted, unique) parents."""
    out = np.zeros(len(parents), np.int64)
    if not len(parents):
        return out
    db = agg._p2c_db
    if len(parents) <= _FEW:  # a few: look each up
        for i, p in enumerate(parents.tolist()):
            raw = txn.get(_Q.pack(p), db=db)
            if raw is not None:
                out[i] = _children_count(raw)
        return out
    keys, counts = [], []  # many: scan the key range of each batch
    cur = txn.cursor(db=db)
    for lo, hi in _segments(parents, parents):
        if not cur.set_range(_Q.pack(lo)):
            continue
        hi_key = _Q.pack(hi)
        for k, v in cur.iternext():
            if k > hi_key:
                break
            keys.append(k)
            counts.append(_children_count(v))
    if keys:
        kk = np.frombuffer(b"".join(keys), ">u8").astype(_U64)
        i = np.searchsorted(parents, kk)
        hit = (i < len(parents))
        i[~hit] = 0
        hit &= parents[i] == kk
        out[i[hit]] = np.asarray(counts, np.int64)[hit]
    return out


def _last_key(txn, db) -> int | None:
    cur = txn.cursor(db=db)
    return _Q.unpack(cur.key()[:8])[0] if cur.last() else None


# -- writes -------------------------------------------------------------------------------------
def _put_sorted(txn, db, keys: np.ndarray, values: list[bytes], *, overwrite: bool = True,
                dupdata: bool = False) -> int:
    """Put items with ascending keys: those after the database's last key appended (full
    pages), the others inserted. Returns how many were added."""
    last = _last_key(txn, db)
    cut = 0 if last is None else int(np.searchsorted(keys, _U64(last), side="right"))
    kb = keys.astype(">u8").view("V8").tolist()
    cur = txn.cursor(db=db)
    added = 0
    if cut:
        added += cur.putmulti(zip(kb[:cut], values[:cut]), dupdata=dupdata,
                              overwrite=overwrite)[1]
    if cut < len(kb):
        added += cur.putmulti(zip(kb[cut:], values[cut:]), dupdata=dupdata, append=True)[1]
    return added


def _c2p_values(first: np.ndarray, count: np.ndarray, parent: np.ndarray) -> list[bytes]:
    """c2p values: the parent alone for a run of one, else first serial + parent."""
    one = count == 1
    if one.all():
        return parent.astype(">u8").view("V8").tolist()
    v = np.empty(len(first), np.dtype([("f", ">u4"), ("p", ">u8")]))
    v["f"] = (first & _U64(_LOW)).astype(np.uint32)
    v["p"] = parent
    if not one.any():
        return v.view("V12").tolist()
    out = np.empty(len(first), object)
    out[one] = parent[one].astype(">u8").view("V8").tolist()
    out[~one] = v[~one].view("V12").tolist()
    return out.tolist()


def _encode_children_many(parents, firsts, counts) -> list[bytes]:
    """:func:`engine.aggregation._encode_children` for many parents at once: runs grouped
    by parent (ascending), in child order within a parent; one value per parent."""
    n = len(firsts)
    head = np.ones(n, np.bool_)
    head[1:] = parents[1:] != parents[:-1]
    gs = np.flatnonzero(head)
    ng = len(gs)
    totals = np.add.reduceat(counts, gs).astype(_U64)
    multi = counts > 1
    gap = np.empty(n, _U64)
    gap[0] = 0
    gap[1:] = firsts[1:] - firsts[:-1] - counts[:-1]  # NOTE: wraps at a head; not used there
    tok1 = np.where(head, firsts, (gap << _U64(1)) | multi.astype(_U64))
    two = head | multi
    tok2 = np.where(head, counts - _U64(1), counts - _U64(2))
    per_run = 1 + two.astype(np.int64)
    run_at = np.cumsum(per_run) - per_run + np.cumsum(head)  # +1 token (total) per group
    total_at = run_at[gs] - 1
    tokens = np.empty(int(per_run.sum()) + ng, _U64)
    tokens[total_at] = totals
    tokens[run_at] = tok1
    tokens[run_at[two] + 1] = tok2[two]
    # LEB128 varints
    nb = np.ones(len(tokens), np.int64)
    for k in range(1, 10):
        big = tokens >= _U64(1 << (7 * k))
        if not big.any():
            break
        nb += big
    at = np.cumsum(nb) - nb
    out = np.empty(int(nb.sum()), np.uint8)
    for k in range(int(nb.max())):
        sel = slice(None) if k == 0 else nb > k
        t, a, b = tokens[sel], at[sel], nb[sel]
        out[a + k] = ((t >> _U64(7 * k)) & _U64(0x7F)).astype(np.uint8) | \
            np.where(b > k + 1, 0x80, 0).astype(np.uint8)
    blob = out.tobytes()
    starts = at[total_at].tolist()
    ends = starts[1:] + [len(blob)]
    return [blob[a:b] for a, b in zip(starts, ends)]


def _planes(a: np.ndarray) -> bytes:
    """Byte planes of little-endian ints (all low bytes, then the next...): zlib then
    squeezes the constant high bytes to nothing."""
    return a.view(np.uint8).reshape(len(a), a.itemsize).T.tobytes()


def _zigzag(d: np.ndarray) -> np.ndarray:
    """Wrapped uint64 differences -> small numbers for small steps either way."""
    return (d << _U64(1)) ^ (d.view(np.int64) >> 63).view(_U64)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> _U64(1)) ^ (_U64(0) - (z & _U64(1)))


def _pack_load_runs(parents: np.ndarray, firsts: np.ndarray, counts: np.ndarray) -> bytes:
    """One part of a load's runs (child order): parents as zigzag deltas, first children
    as deltas, byte-planed, zlib. PERF/size: ~0.02 byte a link in line order, ~2-3
    shuffled (the parents' entropy)."""
    n = len(firsts)
    body = b"".join((_planes(_zigzag(np.diff(parents, prepend=_U64(0))).astype("<u8")),
                     _planes(np.diff(firsts, prepend=_U64(0)).astype("<u8")),
                     _planes(counts.astype("<u4"))))
    return pack((n, zlib.compress(body, 1)))  # PERF: level 6: 3% smaller, 2.5x slower


def _unpack_load_runs(value: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, blob = unpack(value)
    body = zlib.decompress(blob)

    def col(offset: int, size: int) -> np.ndarray:
        planes = np.frombuffer(body, np.uint8, n * size, offset).reshape(size, n)
        return np.ascontiguousarray(planes.T).view(f"<u{size}").ravel().astype(_U64)

    return (np.cumsum(_unzigzag(col(0, 8)), dtype=_U64), np.cumsum(col(8 * n, 8), dtype=_U64),
            col(16 * n, 4))


def _write(agg, txn, rf, rn, rp, has_kids, name, digest, report, now) -> int:
    """Write the runs (first, count, parent; child order) both ways, the load event and
    its runs, in the caller's transaction."""
    n = len(rf)
    eid = agg.store.next_id(txn, "agg_event")
    rec = {"id": eid, "type": "load", "time": time.time() if now is None else now,
           "source": name, "sha256": digest, "records": report.records,
           "links": report.links_added, "runs": n, "rejected": len(report.bad)}
    txn.put(u64(eid), pack(rec), db=agg._events_db)
    txn.put(bytes.fromhex(digest), u64(eid), db=agg._loaded_files_db)  # NOTE: the latest load of it
    for part, s in enumerate(range(0, n, _PART)):
        e = s + _PART
        txn.put(u64(eid) + part.to_bytes(4, "big"), _pack_load_runs(rp[s:e], rf[s:e], rn[s:e]),
                db=agg._load_runs_db)
    # child -> parent, in child order
    for s in range(0, n, _PART):
        f, c, p = rf[s:s + _PART], rn[s:s + _PART], rp[s:s + _PART]
        last = f + c - _U64(1)
        if _put_sorted(txn, agg._c2p_db, last, _c2p_values(f, c, p), overwrite=False) != len(f):
            raise Conflict("link store changed during the load; run it again")
    # parent -> children: one value per parent, in parent order
    order = _group_order(rp)
    merge = np.isin(rp, has_kids) if len(has_kids) else None
    parents = []
    s = 0
    while s < n:
        e = min(s + _PART, n)
        while e < n and rp[order[e]] == rp[order[e - 1]]:  # whole parents per slice
            e += 1
        o = order[s:e]
        if merge is not None:
            mo = o[merge[o]]
            o = o[~merge[o]]
            _merge_children(agg, txn, rp[mo], rf[mo], rn[mo])
        if len(o):
            p, f, c = rp[o], rf[o], rn[o]
            keys = p[np.concatenate(([True], p[1:] != p[:-1]))]
            _put_sorted(txn, agg._p2c_db, keys, _encode_children_many(p, f, c))
        ps = rp[order[s:e]]
        parents.append(ps[np.concatenate(([True], ps[1:] != ps[:-1]))])
        s = e
    # history: the load event of each parent
    parents = np.concatenate(parents)
    _put_sorted(txn, agg._unit_events_db, parents, [u64(eid)] * len(parents), dupdata=True)
    return eid


def _merge_children(agg, txn, parents, firsts, counts) -> None:
    """Parents that already hold children: their value decoded, joined, re-encoded."""
    got: dict[int, list[tuple[int, int]]] = {}
    for p, f, c in zip(parents.tolist(), firsts.tolist(), counts.tolist()):
        got.setdefault(p, []).append((f, c))
    for p, runs in got.items():
        raw = txn.get(_Q.pack(p), db=agg._p2c_db)
        old = [] if raw is None else _decode_children(raw)
        txn.put(_Q.pack(p), _encode_children(old + runs), db=agg._p2c_db)


class _RejectFile:
    """Where ``skip_bad`` writes the bad records: checked and opened as a new file with no
    name yet in the target's folder (:class:`engine.files.NewFile`: a load killed half way
    leaves no copy of the lines behind) before the load; renamed onto the target only when
    complete."""

    def __init__(self, path, src: _Source) -> None:
        self.shown = str(path)
        self.target = os.path.realpath(os.fspath(path))  # NOTE: through a symlink, not over it
        if os.path.isdir(self.target):
            raise ValueError(f"the reject file {self.shown} is a folder; nothing loaded "
                             "(give the path of a file to write the bad records to)")
        if src.path is not None and same_file(src.path, self.target):
            raise ValueError(f"the reject file {self.shown} is the input file; nothing loaded "
                             f"(choose another reject file, such as {src.path}.rejects)")

        def cannot(e: OSError) -> ValueError:
            return ValueError(f"cannot write the reject file {self.shown} ({e.strerror or e}); nothing "
                              "loaded (choose a reject file in an existing folder you can write to)")

        try:  # NOTE: never one of the data folder's files; a FIFO or /dev/null written into
            out = open_output(path, error=cannot, new_at=self.target)
        except OutputRefused as e:
            raise ValueError(f"{e.strerror}; nothing loaded") from None
        self.file: NewFile | None
        if isinstance(out, NewFile):
            self.file, self.fh = out, open(out.fd, "wb", buffering=1 << 20, closefd=False)
        else:
            self.file, self.fh = None, open(out, "wb", buffering=1 << 20)
        self.written = False

    def write(self, src: _Source, chunk_bytes: int, bad: list[BadRecord]) -> None:
        try:
            _write_rejects(src, chunk_bytes, bad, self.fh)
            self.fh.close()
        except OSError as e:
            raise ValueError(f"cannot write the reject file {self.shown} "
                             f"({e.strerror or e}); nothing loaded (free some space or "
                             "choose another reject file)") from None
        self.written = True

    def finish(self, report: IngestReport) -> str | None:
        """Put the written rejects in place (or drop the unused temporary file, and after a
        load with no bad record, remove the reject file an earlier run left: it would pass
        for this run's)."""
        if not self.written:
            self.discard()
            if report.loaded and not report.bad and report.already_loaded is None:
                report.rejects_removed = self._remove_earlier(report)
            return None
        if self.file is None:  # NOTE: a stream: written as it went
            return self.shown
        try:
            self.file.replace()
        except OSError as e:
            what = (f"loaded {report.links_added:,} links (event {report.event_id})"
                    if report.event_id is not None else "nothing loaded")
            kept = Path(f"{self.target}.{os.getpid()}.rejects")
            try:  # NOTE: the written rejects under another name, rather than lost
                self.file.link(kept)
                where = f"they are in {kept}"
            except OSError:
                lines = ", ".join(f"line {b.line} ({b.reason})" for b in report.bad[:10])
                where = f"they are {lines}{' ...' if len(report.bad) > 10 else ''}"
            raise OSError(e.errno, f"{what}, but the {len(report.bad)} rejected records could "
                          f"not be written to {self.shown} ({e.strerror}); {where}", self.shown) from None
        finally:
            self.file.close()
        return self.shown

    def _remove_earlier(self, report: IngestReport) -> str | None:
        """Remove the reject file an earlier run left at the path given, and only that: a
        regular file (not a link: what it points to was deleted) that begins as a reject
        file does (a path mistyped as a line file's was deleted)."""
        if self.file is None or not _is_reject_file(self.shown):  # NOTE: a stream, or none
            return None
        try:
            os.unlink(self.shown)
        except OSError as e:
            raise OSError(e.errno, f"loaded {report.links_added:,} links with no bad record, but "
                          f"{self.shown}, the reject file of an earlier run, could not be removed "
                          f"({e.strerror}): it is not this run's", self.shown) from None
        return self.shown

    def discard(self) -> None:
        self.fh.close()
        if self.file is not None:
            self.file.close()


#: How a reject file begins: each bad record's line follows a comment with its reason.
_REJECT_HEAD = b"# line "


def _is_reject_file(path: str) -> bool:
    """A regular file, not a symbolic link, that begins as :func:`_write_rejects` writes."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as fh:
            return fh.read(len(_REJECT_HEAD)) == _REJECT_HEAD
    except OSError:
        return False


def _write_rejects(src: _Source, chunk_bytes: int, bad: list[BadRecord], fh) -> None:
    """The bad records' lines, as read, each after a ``#`` comment with its reason
    (a second pass over the source, up to the last bad line)."""
    todo = {b.line - 1: b for b in bad}
    wanted = sorted(todo)
    k = 0
    line0 = 0
    for data in src.chunks(chunk_bytes):
        if k == len(wanted):
            break
        n = data.count(b"\n") + (not data.endswith(b"\n"))
        if wanted[k] < line0 + n:  # PERF: only chunks holding a bad line are split
            lines = data.split(b"\n")
            while k < len(wanted) and wanted[k] < line0 + n:
                b = todo[wanted[k]]
                fh.write(_REJECT_HEAD + f"{b.line}: {b.reason}\n".encode())
                fh.write(lines[wanted[k] - line0] + b"\n")  # NOTE: line breaks are LF by now
                k += 1
        line0 += n


_REASONS = {
    1: "needs a parent code and at least one child code",
    2: "field {w} is not a genuine code",
    3: "field {w}: wrong packaging level for this parent (spec: {spec})",
    4: "field {w}: code is voided",
    5: "field {w}: {o} is already listed under another parent on line {first}",
    6: "field {w}: already packed in another parent ({o})",
    # 7: in other hands than its parent: worded by ``_other_hands``
    8: "parent would hold {w} children; its level allows {o}",
    # 9: not a record (JSON lines): worded where found
    # 10: a label a relabel made dead: worded where found (checked with 4)
    # 11: checked with 2 (a field not read is not known to be forged: never told so)
    11: (f"field {{w}} was not read: this file holds over {_ODD_BUDGET:,} fields written "
         "in forms read one at a time (not a bare code or its URL: full-width characters, "
         "percent-encoding, a URL with a query...); write the codes bare, or load these "
         "records on their own (--skip-bad writes them to the reject file: load that next)"),
}

#: separators a program set for another one writes: reason 1 names them
_NOT_COMMAS = ((b"\t", "tabs"), (b";", "semicolons"), (b"|", "bars"), (b" ", "spaces"))


def _reason_text(agg, txn, code: int, w: int, o: int, told: str | None) -> str:
    if told is not None:  # worded where found (always so for 7, 9 and 10)
        return told
    text = _REASONS[code]
    first = w >> 32
    if code == 5:  # the field, and the line listing the child first (see _dedup)
        w = w & _LOW
    # NOTE: a unit by its number and its printed code, as the warehouse commands name it
    o_text = f"unit {o >> 32}:{o & _LOW} ({agg.code_of(o, None, txn)})" if code in (5, 6) else str(o)
    return text.format(w=w, o=o_text, first=first, spec=" > ".join(lv.name for lv in agg.spec.levels))

