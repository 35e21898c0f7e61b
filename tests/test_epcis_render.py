"""EPCIS export renders only the codes its events name: memory follows the number of
units named, not the distance between their serials."""

from __future__ import annotations

import tracemalloc

import numpy as np

from engine import epcis
from engine.aggregation import unit_id
from engine.epcis import _Namer, export_epcis

T = 1_800_000_000.0


def _spy(monkeypatch, data) -> list[int]:
    """The size of every render; a render larger than a window is refused before it runs
    (rendering 0..19,999,999 took 950 MB)."""
    sizes: list[int] = []
    real = data.codes.render

    def render(batch, start, stop):
        sizes.append(stop - start)
        assert stop - start <= epcis._WINDOW, f"rendered {stop - start:,} codes"
        return real(batch, start, stop)

    monkeypatch.setattr(data.codes, "render", render)
    return sizes


def test_two_units_far_apart_are_two_small_renders(run, monkeypatch):
    data, agg = run.data, run.agg
    big = data.create_batch("cap", 20_000_000)  # codes are computed: nothing stored per code
    ends = [data.codes.code(big, s, "cap_outer") for s in (0, 19_999_999)]
    agg.void(ends, now=T)
    sizes = _spy(monkeypatch, data)
    tracemalloc.start()
    try:
        doc = export_epcis(agg, now=T)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    last = doc["epcisBody"]["eventList"][-1]
    assert last["epcList"] == [data.url_base + c for c in ends]
    assert sizes == [1, 1]
    assert peak < 8 << 20


def test_scattered_serials_are_named_as_one_by_one(run, monkeypatch):
    """Duplicates, any order, runs longer than a window, gaps just under and over _GAP."""
    data = run.data
    monkeypatch.setattr(epcis, "_WINDOW", 50)
    big = data.create_batch("cap", 5_000)
    g = epcis._GAP
    serials = [4_999, 0, 1, 1, 2, *range(100, 230), 230 + g, 230 + 2 * g + 1, 3_000, 3_000 + g]
    other = [run.cases[3], run.cases[0]]  # another batch in the same call
    uids = [unit_id(big.id, s) for s in serials] + [run.agg.unit(c) for c in other]
    sizes = _spy(monkeypatch, data)
    names = _Namer(run.agg, None).many(np.array(uids, np.uint64))
    want = [data.url_base + data.codes.code(big, s, "cap_outer") for s in serials] \
        + [data.url_base + c for c in other]
    assert names == want
    assert max(sizes) <= 50 and sum(sizes) < 4 * len(uids)
