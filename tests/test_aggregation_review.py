"""Aggregation, from a review: a unit taken out of its parent keeps the load that put it
there in its trace history; a spare label a replace activated is left out of its batch's
activation."""

from __future__ import annotations

import pytest

from engine import Conflict

PRODUCT = {"sku": "S", "name": "N", "production_date": "2026-01-01"}


def _types(agg, code):
    return [h["type"] for h in agg.trace(code)["history"]]


def _load(run, tmp_path, lines, name="line.csv"):
    f = tmp_path / name
    f.write_text("".join(",".join(line) + "\n" for line in lines))
    report = run.agg.load(f)
    assert not report.bad
    return report


@pytest.mark.parametrize("out", ["move", "unpack", "unpack_all"])
def test_a_unit_out_of_its_parent_keeps_its_load_in_its_history(run, tmp_path, out):
    agg = run.agg
    caps = _load(run, tmp_path, [[run.cases[0], *run.caps[:24]]]).event_id
    _load(run, tmp_path, [[run.pallets[0], run.cases[0]]], "pallet.csv")
    cap, other = run.caps[0], run.caps[1]
    assert _types(agg, cap) == ["load", "load"]  # the cap's case and the case's pallet
    if out == "move":
        agg.move([cap], run.cases[1])
    elif out == "unpack":
        agg.unpack(run.cases[0], [cap])
    else:
        agg.unpack(run.cases[0])
    # the load of its caps, not the case's own onto the pallet: the cap left the case
    assert [(h["type"], h["id"]) for h in agg.trace(cap)["history"]][0] == ("load", caps)
    assert _types(agg, cap) == ["load", out[:6]]
    if out != "unpack_all":
        assert _types(agg, other)[:2] == ["load", "load"]  # still in the case


def test_a_unit_moved_into_a_loaded_parent_does_not_take_its_load(run, tmp_path):
    agg = run.agg
    _load(run, tmp_path, [[run.cases[0], *run.caps[:23]]])
    cap = run.caps[30]
    agg.move([cap], run.cases[0])
    assert _types(agg, cap) == ["load", "move"]  # its parent's history, while in it
    agg.move([cap], run.cases[1])
    assert _types(agg, cap) == ["move", "move"]  # no load put it in case 0


def test_children_of_a_replaced_unit_keep_their_load(run, tmp_path):
    agg = run.agg
    _load(run, tmp_path, [[run.cases[0], *run.caps[:24]]])
    agg.replace(run.cases[0], run.cases[9])
    assert _types(agg, run.caps[3]) == ["load", "replace"]


def test_a_spare_a_replace_activated_is_left_out_of_its_batch(run):
    agg, data = run.agg, run.data
    agg.activate(lot="L", batch=run.cap_batch, **PRODUCT)
    spare = data.create_batch("cap", 10)
    new = data.codes.code(spare, 0, "cap_outer")
    agg.replace(run.caps[5], new)
    rec = agg.activate(lot="L2", batch=spare.id, **PRODUCT)
    assert (rec["units"], rec["replaced_skipped"], rec["already_active"]) == (9, 1, 0)
    assert agg.trace(new)["product"]["lot"] == "L"  # the replaced unit's, kept
    assert agg.trace(data.codes.code(spare, 1, "cap_outer"))["product"]["lot"] == "L2"
    with pytest.raises(Conflict, match="nothing to activate.*replaced"):
        agg.activate(lot="L3", serial_range=(spare.id, 0, 1), **PRODUCT)


def test_other_activations_still_conflict_with_a_batch(run):
    agg, data = run.agg, run.data
    spare = data.create_batch("cap", 10)
    agg.activate(lot="L", serial_range=(spare.id, 3, 4), **PRODUCT)  # one unit, no replace
    with pytest.raises(Conflict, match="already activated"):
        agg.activate(lot="L2", batch=spare.id, **PRODUCT)
    agg.activate(lot="L", batch=run.cap_batch, **PRODUCT)
    agg.replace(run.caps[5], data.codes.code(spare, 0, "cap_outer"))
    with pytest.raises(Conflict, match=r"units \d+:3\.\. are already activated"):
        agg.activate(lot="L2", batch=spare.id, **PRODUCT)
