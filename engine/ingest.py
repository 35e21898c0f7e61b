"""Line-collection ingest: link units from a line scanner's output, checked, all at once.

Formats (one record per line; a parent code, then the codes packed into it)::

    # CSV (codes bare or as URLs; blank lines and lines starting with '#' are skipped)
    HTTPS://S.EXAMPLE.CN/Q/1X4K...,1ABC...,1DEF...
    # JSON lines
    {"parent": "1X4K...", "children": ["1ABC...", "1DEF..."]}

Every record is checked: each code genuine; the child one packaging level below the
parent; the child not already packed in another parent (in the store or earlier in the
file); no more children than the parent's level allows; nothing voided. Cycles cannot
arise because a link always goes exactly one level down the spec. By default a file
with any bad record changes nothing; ``skip_bad`` loads the good records and writes the
bad ones (with their reasons as ``#`` comments) to a reject file. Loading the same file
again adds nothing.

PERF: the file is parsed with numpy (field boundaries from separator positions, code
fields gathered into an (N, length) matrix) and decoded with
:meth:`CodeEngine.decode_many`; checks are sorts and searches over uid arrays; links go
into LMDB as runs with ``putmulti(append=True)`` when they sort after the existing keys.
"""

from __future__ import annotations

import hashlib
import json
import zlib
import os
import time
from pathlib import Path

import numpy as np

from engine.aggregation import _C2P, _LOW, _Q, _RUN, BadRecord, LoadReport, _covered, _runs
from engine.errors import Conflict
from engine.store import pack, u64

__all__ = ["load_links", "parse_records"]

_CHUNK = 1 << 22  # fields decoded per numpy chunk (bounded memory)
_U64 = np.uint64


def _read(source) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    p = Path(source)
    return p.read_bytes(), p.name


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
            out.append(text.encode("utf-8", "replace"))
        except (ValueError, KeyError, TypeError):
            bad[i] = 'not a JSON record {"parent": "...", "children": ["...", ...]}'
            out.append(b"")
    return b"\n".join(out), bad


class _Parsed:
    """Fields of a CSV-layout buffer, decoded: arrays indexed by field."""

    def __init__(self, agg, data: bytes) -> None:
        for junk in (b"\r", b" ", b"\t"):
            if junk in data:  # PERF: a copy of the whole file only when needed
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
            n = len(buf) // (slot + 1)
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
        self.depth = np.full(n, -1, np.int8)
        role_depth = np.full(256, -1, np.int8)
        for r in agg.spec.roles.values():
            role_depth[r.index] = agg.spec.level(r.level).depth
        nonempty = length > 0
        for fmt in fmts:
            L = fmt.length
            back = np.maximum(end - L - 1, 0)
            cand = ~self.ok & ((length == L) | ((length > L) & (buf[back] == 47)))  # '/'
            rows = np.flatnonzero(cand)
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
                self.depth[good] = role_depth[got.role_index[got.ok]]
        # Odd but possibly valid forms (a URL with a query, separators...): scalar verify.
        # NOTE: capped at 100k fields (~1 s); beyond that they are reported as not genuine.
        odd = np.flatnonzero(~self.ok & nonempty)
        for i in odd[:100_000].tolist():
            text = data[start[i]:end[i]].decode("utf-8", "replace")
            v = agg.data.codes.verify(text)
            if v.genuine:
                self.ok[i] = True
                self.uid[i] = (v.batch << 32) | v.serial
                self.depth[i] = agg.spec.level(v.level).depth
        self.length = length
        self.start = start
        self.end = end


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
    pre_bad: dict[int, str] = {}
    if fmt is None:
        fmt = "jsonl" if raw.lstrip()[:1] == b"{" else "csv"
    if fmt not in ("csv", "jsonl"):
        raise ValueError("format must be csv or jsonl")
    if fmt == "jsonl":
        raw, pre_bad = _jsonl_to_csv(raw)
    return _Parsed(agg, raw), pre_bad


def load_links(agg, source, *, skip_bad: bool = False, reject_file=None, fmt: str | None = None,
               name: str | None = None, now: float | None = None) -> LoadReport:
    """Check and load a line-collection file (path or bytes) in one write transaction.

    Returns a :class:`LoadReport`; ``loaded`` is False (and nothing changed) when a record
    is bad and ``skip_bad`` is not set. Bad records carry their 1-based line number.
    """
    raw, src_name = _read(source)
    if fmt is None and isinstance(source, (str, os.PathLike)) and str(source).endswith(
            (".jsonl", ".ndjson", ".json")):
        fmt = "jsonl"
    digest = hashlib.sha256(raw).hexdigest()
    p, pre_bad = parse_records(agg, raw, fmt)
    spec = agg.spec
    nlines = p.nlines
    reason = np.zeros(nlines, np.int8)  # 0 = good
    where = np.zeros(nlines, np.int64)  # the field (1-based) or other line the reason names
    other = np.zeros(nlines, _U64)  # a unit the reason names

    def mark(lines, code, at=None, unit=None):
        lines = np.asarray(lines, np.int64)
        fresh = reason[lines] == 0
        lines = lines[fresh]
        reason[lines] = code
        if at is not None:
            where[lines] = np.asarray(at)[fresh]
        if unit is not None:
            other[lines] = np.asarray(unit)[fresh]

    # -- per-line checks ------------------------------------------------------------------
    nonempty_per_line = np.bincount(p.line, weights=(p.length > 0), minlength=nlines)
    first_idx = np.flatnonzero(p.first)  # one per line, in line order
    blank = nonempty_per_line == 0
    buf = np.frombuffer(p.data, np.uint8)
    comment = np.zeros(nlines, np.bool_)
    has = p.length[first_idx] > 0
    comment[has] = buf[p.start[first_idx][has]] == 35  # '#'
    header = np.zeros(nlines, np.bool_)
    if nlines and p.data[:6].lower() == b"parent":
        header[0] = True
    record = ~(blank | comment | header)
    for ln, why in pre_bad.items():
        record[ln] = True
        reason[ln] = 9
    # field position within its line (1-based)
    pos = np.arange(len(p.line)) - first_idx[p.line] + 1
    child = ~p.first & (p.length > 0) & record[p.line]
    mark(np.flatnonzero(record & (nonempty_per_line < 2)), 1)
    bad_code = (p.length > 0) & ~p.ok & record[p.line]
    bad_code |= p.first & (p.length == 0) & record[p.line]
    mark(p.line[bad_code], 2, pos[bad_code])
    pdepth = p.depth[first_idx]
    wrong = child & p.ok & p.ok[first_idx[p.line]] & (p.depth != pdepth[p.line] + 1)
    mark(p.line[wrong], 3, pos[wrong])
    # voided codes (parent or child)
    with agg.store.read() as txn:
        vf, vl = agg.voids.all_runs(txn)
    used = (p.length > 0) & p.ok & record[p.line]
    voided = np.zeros(len(p.line), np.bool_)
    voided[used] = _covered(p.uid[used], vf, vl)
    mark(p.line[voided], 4, pos[voided])

    # -- cross-record checks over the links of the remaining good records -----------------------
    sel = np.flatnonzero(child & (reason[p.line] == 0))
    c = p.uid[sel]
    par = p.uid[first_idx[p.line[sel]]]
    ln = p.line[sel]
    order = np.argsort(c, kind="stable")  # PERF: timsort, O(n) on the file's sorted runs
    c, par, ln, sel = c[order], par[order], ln[order], sel[order]
    grp_start = np.ones(len(c), np.bool_)
    grp_start[1:] = c[1:] != c[:-1]
    gfirst = np.maximum.accumulate(np.where(grp_start, np.arange(len(c)), 0))
    conflict = par != par[gfirst]
    mark(ln[conflict], 5, ln[gfirst][conflict] + 1)
    keep = grp_start  # one link per child (same-parent repeats collapse)
    c, par, ln, sel = c[keep], par[keep], ln[keep], sel[keep]

    # existing links of these children, and existing child counts of these parents
    with agg.store.read() as txn:
        ef, el, ep = _existing_runs(agg, txn, c)
        lp0 = np.unique(p.uid[first_idx[np.flatnonzero(record & (reason == 0))]])
        cnt_p, cnt_n = _existing_counts(agg, txn, lp0)
    exist_parent = np.zeros(len(c), _U64)
    found = np.zeros(len(c), np.bool_)
    if len(el):
        idx = np.searchsorted(el, c)
        inside = idx < len(el)
        idx[~inside] = 0
        found = inside & (ef[idx] <= c)
        exist_parent[found] = ep[idx[found]]
    elsewhere = found & (exist_parent != par)
    mark(ln[elsewhere], 6, pos[sel[elsewhere]], exist_parent[elsewhere])
    same = found & ~elsewhere
    fine = reason[ln] == 0
    new = fine & ~found
    # capacity per parent: existing + new links from good records. PERF: summed per line
    # first (a parent is normally on one line), then over the few lines per parent.
    new_per_line = np.bincount(ln, weights=new, minlength=nlines).astype(np.int64)
    rec_lines = np.flatnonzero(record & (reason == 0) & (nonempty_per_line >= 2))
    lp = p.uid[first_idx[rec_lines]]
    up, inv = np.unique(lp, return_inverse=True)
    total = np.bincount(inv, weights=new_per_line[rec_lines], minlength=len(up)).astype(np.int64)
    if len(cnt_p):
        j = np.searchsorted(cnt_p, up)
        j[j >= len(cnt_p)] = 0
        hit = cnt_p[j] == up
        total[hit] += cnt_n[j[hit]]
    cap = np.array([lv.capacity for lv in spec.levels], np.int64)
    over = total[inv] > cap[pdepth[rec_lines]]
    if over.any():
        mark(rec_lines[over], 7, total[inv][over], cap[pdepth[rec_lines]][over].astype(_U64))

    bad_lines = np.flatnonzero(record & (reason != 0))
    report = LoadReport(records=int(record.sum()))
    for l in bad_lines.tolist():
        report.bad.append(BadRecord(l + 1, _reason_text(agg, int(reason[l]), int(where[l]),
                                                        int(other[l]), pre_bad.get(l))))
    good = reason[ln] == 0
    report.links_existing = int((same & good).sum())
    if report.bad and not skip_bad:
        return report
    if report.bad and reject_file is not None:
        lines_src = raw.split(b"\n")
        with open(reject_file, "wb") as fh:
            for b in report.bad:
                fh.write(f"# line {b.line}: {b.reason}\n".encode())
                fh.write(lines_src[b.line - 1].rstrip(b"\r") + b"\n")
        report.rejected_to = str(reject_file)
    add = good & ~found
    nc, npar = c[add], par[add]
    report.links_added = int(len(nc))
    report.loaded = True
    if not len(nc):
        return report
    # runs, in child order, then written both ways in one transaction
    rf, rl, rp = _runs(nc, npar)
    report.event_id = _write_runs(agg, rf, rl, rp, src_name if name is None else name, digest,
                                  report, now)
    return report


def _existing_runs(agg, txn, c: np.ndarray):
    """c2p runs overlapping the children's key range, per batch (sorted by last)."""
    fs, ls, ps = [], [], []
    if len(c):
        hi_bits = c >> _U64(32)
        batches = hi_bits[np.concatenate(([0], np.flatnonzero(np.diff(hi_bits)) + 1))]
        for b in batches.tolist():
            lo = int(c[np.searchsorted(c, _U64(b << 32))])
            hi = int(c[np.searchsorted(c, _U64((b + 1) << 32)) - 1])
            cur = txn.cursor(db=agg._c2p_db)
            if not cur.set_range(_Q.pack(lo)):
                continue
            for k, v in cur:
                last = _Q.unpack(k)[0]
                fser, parent = _C2P.unpack(v)
                first = (last & ~_LOW) | fser
                if first > hi:
                    break
                fs.append(first)
                ls.append(last)
                ps.append(parent)
    return np.array(fs, _U64), np.array(ls, _U64), np.array(ps, _U64)


def _existing_counts(agg, txn, parents: np.ndarray):
    """Children already held by these (sorted, unique) parents."""
    keys, counts = [], []
    if len(parents):
        cur = txn.cursor(db=agg._p2c_db)
        lo, hi = int(parents[0]), int(parents[-1])
        if cur.set_range(_Q.pack(lo)):
            for k, v in cur.iternext(keys=True, values=True):
                key = _Q.unpack(k)[0]
                if key > hi:
                    break
                n = _RUN.unpack(v)[1]
                if keys and keys[-1] == key:
                    counts[-1] += n
                else:
                    keys.append(key)
                    counts.append(n)
    return np.array(keys, _U64), np.array(counts, np.int64)


def _last_key(txn, db) -> bytes | None:
    cur = txn.cursor(db=db)
    return cur.key() if cur.last() else None


def _pack_runs(parents: np.ndarray, firsts: np.ndarray, counts: np.ndarray) -> bytes:
    """Runs of a load, compact: first children (sorted) delta-encoded, then zlib.
    PERF/size: ~1 byte per run for in-order packing, a few for shuffled packing."""
    deltas = np.diff(firsts.astype(np.int64), prepend=np.int64(0))
    body = b"".join((parents.astype("<u8").tobytes(), deltas.astype("<i8").tobytes(),
                     counts.astype("<u4").tobytes()))
    return pack((len(parents), zlib.compress(body, 1)))


def _write_runs(agg, rf, rl, rp, name, digest, report, now) -> int:
    n = len(rf)
    keys = rl.astype(">u8").view("V8").tolist()
    c2p = np.empty(n, np.dtype([("f", ">u4"), ("p", ">u8")]))
    c2p["f"] = (rf & _U64(_LOW)).astype(np.uint32)
    c2p["p"] = rp
    order = np.lexsort((rf, rp))
    pkeys = rp[order].astype(">u8").view("V8").tolist()
    p2c = np.empty(n, np.dtype([("f", ">u8"), ("n", ">u4")]))
    p2c["f"] = rf[order]
    p2c["n"] = (rl - rf + _U64(1))[order].astype(np.uint32)
    parents = np.unique(rp)
    with agg.store.write() as txn:
        eid = agg.store.next_id(txn, "agg_event")
        rec = {"id": eid, "type": "load", "time": time.time() if now is None else now,
               "source": name, "sha256": digest, "records": report.records,
               "links": report.links_added, "runs": n}
        txn.put(u64(eid), pack(rec), db=agg._events_db)
        txn.put(u64(eid), _pack_runs(rp, rf, rl - rf + _U64(1)), db=agg._load_runs_db)
        for db, k, v in ((agg._c2p_db, keys, c2p.view("V12").tolist()),
                         (agg._p2c_db, pkeys, p2c.view("V12").tolist()),
                         (agg._unit_events_db, parents.astype(">u8").view("V8").tolist(),
                          [u64(eid)] * len(parents))):
            last = _last_key(txn, db)
            append = last is None or k[0] > last
            cur = txn.cursor(db=db)
            added, _ = cur.putmulti(zip(k, v), dupdata=True, append=append)
            if db is agg._c2p_db and added != len(k):
                raise Conflict("link store changed during the load; run it again")
    return eid


_REASONS = {
    1: "needs a parent code and at least one child code",
    2: "field {w} is not a genuine code",
    3: "field {w}: wrong packaging level for this parent (spec: {spec})",
    4: "field {w}: code is voided",
    5: "a child is already listed under another parent on line {w}",
    6: "field {w}: already packed in another parent ({o})",
    7: "parent would hold {w} children; its level allows {o}",
}


def _reason_text(agg, code: int, w: int, o: int, pre: str | None) -> str:
    if code == 9:
        return pre or "unreadable record"
    text = _REASONS[code]
    ostr = f"unit {o >> 32}:{o & _LOW}" if code == 6 else str(o)
    return text.format(w=w, o=ostr, spec=" > ".join(lv.name for lv in agg.spec.levels))
