"""Line-collection ingest: CSV quoting ("CODE","CODE") reads as the bare fields, and a
file that is not UTF-8 (UTF-16 from Notepad's or Excel's "Unicode") is refused as such.
Both used to be refused line by line as "field 1 is not a genuine code"."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.aggregation import unit_id

URL = "HTTPS://S.EXAMPLE.CN/Q/"


def _fields(run) -> list[list[str]]:
    """Two records: a case with 12 caps (one as a URL), a case with 6."""
    return [[run.cases[0], URL + run.caps[0], *run.caps[1:12]], [run.cases[1], *run.caps[24:30]]]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data(), st.booleans(), st.booleans(), st.sampled_from([1, 7, 100, 1 << 20]))
def test_quoted_fields_load_as_the_bare_ones(run, data, header, crlf, chunk):
    rows = _fields(run)
    quoted = [[f'"{f}"' if data.draw(st.booleans()) else f for f in row] for row in rows]
    lines = ([data.draw(st.sampled_from(['"parent","children"', "parent,children"]))]
             if header else []) + [",".join(row) for row in quoted]
    end = "\r\n" if crlf else "\n"
    rep = run.agg.load((end.join(lines) + end).encode(), chunk_bytes=chunk)
    assert rep.loaded and not rep.bad, rep.bad
    assert rep.records == 2 and rep.links_added + rep.links_existing == 18
    assert run.agg.links()[unit_id(run.cap_batch, 29)] == unit_id(run.case_batch, 1)


def test_a_quoted_bad_field_is_still_named(run):
    rep = run.agg.load(f'"{run.cases[0]}","{run.caps[0]}","NOTACODE"\n'.encode())
    assert not rep.loaded and [(b.line, b.reason) for b in rep.bad] == [
        (1, "field 3 is not a genuine code")]


@pytest.mark.parametrize("encoding, said", [
    ("utf-16", "the file is UTF-16; save it as UTF-8"),  # with a byte-order mark (Notepad)
    ("utf-16-be", "the file holds NUL bytes, so it is not UTF-8 text"),  # without one
])
def test_a_utf16_file_is_refused_as_such(run, tmp_path, encoding, said):
    f = tmp_path / "line.csv"
    f.write_text("\r\n".join(",".join(row) for row in _fields(run)) + "\r\n", encoding=encoding)
    rejects = tmp_path / "line.rejects"
    for kw in ({}, {"skip_bad": True, "reject_file": rejects}):
        with pytest.raises(ValueError, match=f"line.csv: {said}"):
            run.agg.load(f, **kw)
    with pytest.raises(ValueError, match=f"<bytes>: {said}"):
        run.agg.load(f.read_bytes(), fmt="jsonl")
    assert not rejects.exists() and run.agg.links() == {}
