"""Line-collection ingest: a file that starts with a UTF-8 byte-order mark (Excel's "CSV
UTF-8", Windows Notepad) loads as if it had none."""

from __future__ import annotations

import hashlib
import json

import pytest

from engine import ingest
from engine.aggregation import unit_id

BOM = b"\xef\xbb\xbf"


def _lines(run):
    """Two good records, then a record with a forged child (line 3)."""
    return [",".join([run.cases[0]] + run.caps[:12]), ",".join([run.cases[1]] + run.caps[24:30]),
            ",".join([run.cases[2], run.caps[48], "NOTACODE"])]


# -- a UTF-8 byte-order mark -------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 64, 1 << 20])
def test_a_bom_at_the_start_is_ignored(run, tmp_path, chunk):
    lines = _lines(run)[:2]
    raw = BOM + ("\r\n".join(lines) + "\r\n").encode()
    f = tmp_path / "bom.csv"
    f.write_bytes(raw)
    rep = run.agg.load(f, chunk_bytes=chunk)
    assert rep.loaded and not rep.bad and rep.links_added == 18
    assert run.agg.links()[unit_id(run.cap_batch, 0)] == unit_id(run.case_batch, 0)
    load = next(e for e in run.agg.events() if e["type"] == "load")
    assert load["sha256"] == hashlib.sha256(raw).hexdigest()  # the file as stored


def test_a_bom_before_a_header_and_in_json_lines(run, tmp_path):
    lines = _lines(run)[:2]
    rep = run.agg.load(BOM + ("parent,children\n" + "\n".join(lines)).encode(), chunk_bytes=2)
    assert rep.loaded and not rep.bad and rep.records == 2
    recs = [json.dumps({"parent": run.cases[3], "children": run.caps[72:74]})]
    rep = run.agg.load(BOM + "\n".join(recs).encode())  # format found after the BOM
    assert rep.loaded and not rep.bad and rep.links_added == 2
    parsed, bad = ingest.parse_records(run.agg, BOM + lines[0].encode())
    assert not bad and parsed.ok.all()


@pytest.mark.parametrize("blank", [10, 70_000])
def test_json_lines_after_many_blank_lines_are_read_as_json_lines(run, tmp_path, blank):
    """The format is told by the first character that is not white space, however far
    into the file (past the first 64 KiB read for the encoding check too)."""
    rec = json.dumps({"parent": run.cases[4], "children": run.caps[96:98]})
    f = tmp_path / "late.jsonl"
    f.write_bytes(BOM + b"\n" * blank + rec.encode() + b"\n")
    rep = run.agg.load(f)
    assert rep.loaded and not rep.bad and rep.links_added == 2


def test_a_bom_line_rejected_is_written_without_the_bom(run, tmp_path):
    bad = _lines(run)[2]
    f = tmp_path / "bom.csv"
    f.write_bytes(BOM + (bad + "\n" + _lines(run)[0] + "\n").encode())
    rej = tmp_path / "rej.csv"
    rep = run.agg.load(f, skip_bad=True, reject_file=rej, chunk_bytes=1)
    assert [b.line for b in rep.bad] == [1] and rep.links_added == 12
    assert rej.read_text().splitlines()[1] == bad


def test_only_a_bom_or_a_bom_prefix(run):
    assert run.agg.load(BOM).records == 0
    rep = run.agg.load(BOM[:2])
    assert not rep.loaded and rep.bad[0].line == 1
