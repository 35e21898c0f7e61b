"""Aggregation: line-collection ingest checks, warehouse operations, activation, shipping,
trace, EPCIS export and SSCC; plus a stateful property test against an in-memory model."""

from __future__ import annotations

import contextlib
import json
import tempfile
import traceback
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from conftest_world import unit_codes
from engine import Conflict, DataFolder, InvalidCode
from engine.aggregation import Aggregation, unit_id
from engine.batches import Batch
from engine.epcis import check_parent_ids, export_epcis, pallet_sscc, sscc
from engine.spec import PackagingSpec
from engine.store import pack, unpack

VECTORS = Path(__file__).parent / "vectors" / "gs1"
URL = "HTTPS://S.EXAMPLE.CN/Q/"


def _inner(data, batch):
    """The second (inner) code of each unit of a linked-pair level."""
    w = data.spec.role(batch.roles[0]).format.length
    return [r[w:].tobytes().decode() for r in data.codes.render(batch, 0, batch.count)]


def _file(tmp_path, lines, name="line.csv"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _production(r, n_cases=10):
    lines = [",".join([r.cases[i]] + r.caps[i * 24:(i + 1) * 24]) for i in range(n_cases)]
    lines += [",".join([r.pallets[0]] + r.cases[:5]), ",".join([r.pallets[1]] + r.cases[5:n_cases])]
    return lines


# -- ingest ---------------------------------------------------------------------------------------
def test_load_links_both_ways_and_rerun_is_harmless(run, tmp_path):
    f = _file(tmp_path, _production(run))
    rep = run.agg.load(f)
    assert rep.loaded and not rep.bad and rep.links_added == 250 and rep.records == 12
    links = run.agg.links()
    assert len(links) == 250
    assert links[unit_id(run.cap_batch, 30)] == unit_id(run.case_batch, 1)
    assert links[unit_id(run.case_batch, 7)] == unit_id(run.pallet_batch, 1)
    run.agg.check_consistency()
    again = run.agg.load(f, again=True)  # NOTE: checked again whole (a re-run alone does nothing)
    assert again.loaded and again.links_added == 0 and again.links_existing == 250
    assert run.agg.links() == links
    assert len([e for e in run.agg.events() if e["type"] == "load"]) == 1


def test_load_accepts_urls_lowercase_and_jsonl(run, tmp_path):
    lines = [",".join([URL + run.cases[0]] + [c.lower() for c in run.caps[:24]])]
    assert run.agg.load(_file(tmp_path, lines)).links_added == 24
    recs = [json.dumps({"parent": run.cases[1], "children": [URL + c for c in run.caps[24:48]]})]
    rep = run.agg.load(_file(tmp_path, recs, "line.jsonl"))
    assert rep.links_added == 24 and not rep.bad


def test_inner_code_of_a_linked_pair_names_the_same_unit(run, tmp_path):
    inner = _inner(run.data, run.data.batches.get(run.case_batch))
    rep = run.agg.load(_file(tmp_path, [",".join([inner[0]] + run.caps[:3])]))
    assert rep.links_added == 3
    assert run.agg.links()[unit_id(run.cap_batch, 0)] == unit_id(run.case_batch, 0)


@pytest.mark.parametrize("case", ["forged", "level", "elsewhere_in_file", "capacity", "voided",
                                  "no_children", "cycle", "bad_json"])
def test_each_check_reports_line_and_changes_nothing(run, tmp_path, case):
    good = ",".join([run.cases[0]] + run.caps[:24])
    forged = run.caps[30][:-1] + ("0" if run.caps[30][-1] != "0" else "1")
    bad = {
        "forged": ",".join([run.cases[1], run.caps[24], forged]),
        "level": ",".join([run.pallets[0], run.caps[24]]),
        "elsewhere_in_file": ",".join([run.cases[1], run.caps[3]]),
        "capacity": ",".join([run.cases[1]] + run.caps[24:49]),
        "voided": ",".join([run.cases[1], run.caps[24]]),
        "no_children": run.cases[1],
        "cycle": ",".join([run.caps[24], run.cases[1]]),
        "bad_json": "{not json",
    }[case]
    expect = {"forged": "not a genuine code", "level": "wrong packaging level",
              "elsewhere_in_file": "another parent on line 1", "capacity": "its level allows 24",
              "voided": "voided", "no_children": "needs a parent", "cycle": "wrong packaging level",
              "bad_json": "needs a parent"}[case]
    if case == "voided":
        run.agg.void([run.caps[24]])
    rep = run.agg.load(_file(tmp_path, [good, "", bad]))
    assert not rep.loaded
    assert [(b.line, expect in b.reason) for b in rep.bad] == [(3, True)], rep.bad
    assert run.agg.links() == {}  # all or nothing


def test_child_already_packed_in_store(run, tmp_path):
    run.agg.load(_file(tmp_path, [",".join([run.cases[0]] + run.caps[:2])]))
    rep = run.agg.load(_file(tmp_path, [",".join([run.cases[1], run.caps[1], run.caps[2]])]))
    assert not rep.loaded and "already packed in another parent" in rep.bad[0].reason
    assert len(run.agg.links()) == 2


def test_capacity_counts_existing_children(run, tmp_path):
    run.agg.load(_file(tmp_path, [",".join([run.cases[0]] + run.caps[:20])]))
    rep = run.agg.load(_file(tmp_path, [",".join([run.cases[0]] + run.caps[20:25])]))
    assert not rep.loaded and "would hold 25" in rep.bad[0].reason


def test_skip_bad_loads_good_records_and_writes_rejects(run, tmp_path):
    lines = _production(run, 3)[:3] + [",".join([run.pallets[0], run.caps[100]]), "junk,line"]
    rej = tmp_path / "rejects.csv"
    rep = run.agg.load(_file(tmp_path, lines), skip_bad=True, reject_file=rej)
    assert rep.loaded and rep.links_added == 72 and [b.line for b in rep.bad] == [4, 5]
    text = rej.read_text().splitlines()
    assert text[0].startswith("# line 4:") and text[1] == lines[3] and text[3] == "junk,line"
    # the reject file is loadable input again (comments skipped): still bad, still nothing
    assert not run.agg.load(rej).loaded


def test_jsonl_bad_records(run, tmp_path):
    good = json.dumps({"parent": run.cases[0], "children": run.caps[:2]})
    rep = run.agg.load(_file(tmp_path, [good, '{"parent": "%s", "children": []}' % run.cases[1],
                                        "{not json"], "l.jsonl"))
    assert not rep.loaded and [b.line for b in rep.bad] == [2, 3]
    assert "needs a parent" in rep.bad[0].reason and "not a JSON record" in rep.bad[1].reason


def test_jsonl_deeply_nested_record_is_a_bad_record_not_a_crash(run, tmp_path):
    """A JSON line nested deeper than the parser's recursion limit is reported like any
    other bad record; with ``skip_bad`` the good records still load."""
    good = json.dumps({"parent": run.cases[0], "children": run.caps[:2]})
    deep = '{"parent": "' + run.cases[1] + '", "children": ' + "[" * 100_000 + "]" * 100_000 + "}"
    f = _file(tmp_path, [good, deep], "deep.jsonl")
    rep = run.agg.load(f)
    assert not rep.loaded and [(b.line, "not a JSON record" in b.reason) for b in rep.bad] == [
        (2, True)]
    rep = run.agg.load(f, skip_bad=True)
    assert rep.loaded and rep.links_added == 2 and [b.line for b in rep.bad] == [2]
    run.agg.check_consistency()


# -- warehouse operations ----------------------------------------------------------------------
def test_unpack_move_replace_void(run, tmp_path):
    run.agg.load(_file(tmp_path, _production(run)))
    agg = run.agg
    cap5, case0 = unit_id(run.cap_batch, 5), unit_id(run.case_batch, 0)
    case1 = unit_id(run.case_batch, 1)
    assert agg.unpack(run.cases[0], [run.caps[5]]) == [cap5]
    assert cap5 not in agg.links() and agg.links()[cap5 + 1] == case0
    with pytest.raises(Conflict, match="is not in"):
        agg.unpack(run.cases[0], [run.caps[5]])
    with pytest.raises(Conflict, match="more than 24"):
        agg.move([run.caps[5]], to=run.cases[1])
    agg.unpack(run.cases[1], [run.caps[24]])
    assert agg.move([run.caps[5]], to=run.cases[1]) == [cap5]
    assert agg.links()[cap5] == case1
    with pytest.raises(Conflict, match="cannot go directly"):
        agg.move([run.caps[6]], to=run.pallets[0])
    # replace a damaged case label: new case takes parent and children; old voided
    spare = run.cases[9]
    agg.unpack(run.pallets[1], [spare])
    agg.unpack(spare)
    agg.replace(run.cases[0], spare)
    links = agg.links()
    assert links[unit_id(run.case_batch, 9)] == unit_id(run.pallet_batch, 0)
    assert links[cap5 + 1] == unit_id(run.case_batch, 9)
    assert case0 not in links and case0 in agg.voided_units()
    with pytest.raises(Conflict, match="voided"):
        agg.move([run.cases[0]], to=run.pallets[2])
    hist = agg.trace(spare)["history"]
    assert "replace" in [h["type"] for h in hist]
    # void a range and a batch
    assert agg.void(serial_range=(run.cap_batch, 200, 210)) == 10
    assert agg.void(serial_range=(run.cap_batch, 205, 215)) == 5
    assert agg.void(batch=run.pallet_batch) == 4
    assert unit_id(run.cap_batch, 214) in agg.voided_units()
    agg.check_consistency()


def test_unpack_the_same_child_twice_counts_it_once(run, tmp_path):
    run.agg.load(_file(tmp_path, _production(run, 1)[:1]))
    cap0, cap1 = unit_id(run.cap_batch, 0), unit_id(run.cap_batch, 1)
    got = run.agg.unpack(run.cases[0], [run.caps[1], run.caps[0], URL + run.caps[1].lower()])
    assert got == [cap1, cap0]  # first-seen order, each once
    ev = [e for e in run.agg.events() if e["type"] == "unpack"]
    assert len(ev) == 1 and ev[0]["children"] == [cap1, cap0]
    assert len(run.agg.links()) == 22
    run.agg.check_consistency()


def test_move_unpacks_whole_pallet_case_into_other_pallet(run, tmp_path):
    run.agg.load(_file(tmp_path, _production(run)))
    run.agg.move(run.cases[:2], to=run.pallets[2])
    t = run.agg.trace(run.caps[0])
    assert [a["uid"] for a in t["ancestors"]] == [unit_id(run.case_batch, 0),
                                                 unit_id(run.pallet_batch, 2)]


# -- activation, shipping, trace -------------------------------------------------------------------
def test_activation_validates_and_binds(run, tmp_path):
    run.agg.load(_file(tmp_path, _production(run)))
    kw = dict(sku="TEA-500", name="Green tea", lot="L1", production_date="2026-11-21", line="L7")
    with pytest.raises(ValueError, match="check digit"):
        run.agg.activate(gtin="4006381333932", pallets=[run.pallets[0]], **kw)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        run.agg.activate(**{**kw, "production_date": "21/11/2026"}, pallets=[run.pallets[0]])
    rec = run.agg.activate(gtin="4006381333931", pallets=[run.pallets[0]], **kw)
    assert rec["units"] == 1 + 5 + 120
    assert rec["gtin"] == "04006381333931"  # GTIN-14, the one form products keep too
    assert run.agg.is_active(unit_id(run.cap_batch, 119))
    assert not run.agg.is_active(unit_id(run.cap_batch, 120))
    with pytest.raises(Conflict, match="already activated"):
        run.agg.activate(serial_range=(run.cap_batch, 100, 130), **kw)
    assert run.agg.activate(serial_range=(run.cap_batch, 120, 240), **kw)["units"] == 120


def test_activating_pallets_again_takes_in_what_was_packed_since(run, tmp_path):
    """Activation reaches what is under the pallets *now*: a case packed on later is
    activated by activating the pallet again; what is active keeps its activation."""
    agg = run.agg
    agg.load(_file(tmp_path, _production(run)))
    kw = dict(sku="TEA-500", name="Green tea", lot="L1", production_date="2026-11-21")
    assert agg.activate(pallets=[run.pallets[0]], **kw)["units"] == 1 + 5 + 120
    agg.move([run.cases[5]], to=run.pallets[0])  # a case of pallet 1, with its 24 caps
    assert not agg.is_active(unit_id(run.cap_batch, 5 * 24))
    again = agg.activate(pallets=[run.pallets[0]], **kw)
    assert (again["units"], again["already_active"], again["voided_skipped"]) == (25, 126, 0)
    assert agg.is_active(unit_id(run.cap_batch, 5 * 24))
    with pytest.raises(Conflict, match="nothing to activate"):
        agg.activate(pallets=[run.pallets[0]], **kw)


def test_activation_leaves_voided_units_out_and_stores_the_date_as_written_by_iso(run, tmp_path):
    agg = run.agg
    agg.void([run.caps[2], run.caps[3]])
    kw = dict(sku="S", name="N", lot="L")
    for odd in ("20261121", "2026W011", "2026-1-21"):
        with pytest.raises(ValueError, match="YYYY-MM-DD"):
            agg.activate(serial_range=(run.cap_batch, 0, 10), production_date=odd, **kw)
    rec = agg.activate(serial_range=(run.cap_batch, 0, 10), production_date="2026-11-21", **kw)
    assert (rec["units"], rec["voided_skipped"], rec["production_date"]) == (8, 2, "2026-11-21")
    assert agg.activated_counts()["cap"] == 8


def test_a_voided_pallet_label_activates_nothing(run, tmp_path):
    """Before, ship and move refused a voided pallet but activate --pallet took it as the
    handle and activated the goods under it (skipping the pallet alone)."""
    agg = run.agg
    agg.load(_file(tmp_path, _production(run, 8)))
    agg.void([run.pallets[0]], reason="pallet label destroyed")
    kw = {"sku": "S", "name": "N", "lot": "L", "production_date": "2026-11-21"}
    with pytest.raises(Conflict, match=r"is voided: a voided label cannot be used to activate the goods under it"):
        agg.activate(pallets=[run.pallets[0]], **kw)
    assert agg.activated_counts().get("cap", 0) == 0  # nothing written
    assert agg.activate(pallets=[run.pallets[1]], **kw)["units"] > 0  # another pallet: as before


def _batch_states(data) -> dict[int, tuple[str, int]]:
    return {b.id: (b.state, b.activated) for b in data.batches.list()}


def test_batch_state_and_activated_count_follow_the_units(run, tmp_path):
    """What `wuma batch list` reads: a batch is activated once any of its units is, with
    how many; voided once all of them are. Written with the units, never by hand."""
    agg, data = run.agg, run.data
    cap, case, pallet = run.cap_batch, run.case_batch, run.pallet_batch
    assert _batch_states(data) == {cap: ("generated", 0), case: ("generated", 0),
                                   pallet: ("generated", 0)}
    agg.load(_file(tmp_path, _production(run, 8)))  # cases 8, 9 are loose labels
    agg.void([run.caps[2]])
    kw = {"sku": "S", "name": "N", "lot": "L", "production_date": "2026-11-21"}
    agg.activate(pallets=[run.pallets[0]], **kw)  # 1 pallet, 5 cases, 120 caps but one voided
    assert _batch_states(data) == {cap: ("activated", 119), case: ("activated", 5),
                                   pallet: ("activated", 1)}
    assert data.batches.get(cap) == data.batches.list()[0]
    agg.activate(serial_range=(cap, 200, 240), **kw)
    agg.void(serial_range=(cap, 230, 240))  # a void does not undo an activation
    agg.replace(run.cases[0], run.cases[9])  # the new label takes the old one's activation
    assert _batch_states(data) == {cap: ("activated", 159), case: ("activated", 6),
                                   pallet: ("activated", 1)}
    assert sum(n for _, n in _batch_states(data).values()) == sum(
        agg.activated_counts().values())
    with pytest.raises(Conflict, match="nothing to activate"):  # a refusal changes nothing
        agg.activate(pallets=[run.pallets[0]], **kw)
    assert _batch_states(data)[cap] == ("activated", 159)
    agg.void(batch=pallet)
    agg.void(serial_range=(case, 1, 10))  # with case 0 (replaced): all of them
    agg.void(serial_range=(cap, 0, 229))  # cap 229 is not voided
    assert _batch_states(data) == {cap: ("activated", 159), case: ("voided", 6),
                                   pallet: ("voided", 1)}


def test_batches_written_before_the_count_get_it_once(run, tmp_path):
    """A data folder from before batches counted their activated units: the count and
    the state come from the activations on record when it is opened."""
    agg, data = run.agg, run.data
    agg.activate(sku="S", name="N", lot="L", production_date="2026-11-21",
                 serial_range=(run.cap_batch, 0, 30))
    agg.void(batch=run.pallet_batch)
    with data.store.write() as txn:  # the folder as it was then: no counts, states as set
        db = data.store.db("batches")
        for k, v in list(txn.cursor(db=db)):
            d = unpack(v)
            d["state"] = "voided" if d["id"] == run.pallet_batch else "generated"
            txn.put(k, pack(d), db=db)
        txn.drop(data.store.db("batch_activated"), delete=False)
        txn.delete(b"batch_activated_counted", db=data.store.db("meta"))
    path = data.path
    data.close()
    for _ in range(2):  # taken in once: opening again counts nothing twice
        with DataFolder(path) as again:
            assert _batch_states(again) == {run.cap_batch: ("activated", 30),
                                            run.case_batch: ("generated", 0),
                                            run.pallet_batch: ("voided", 0)}


def test_batch_records_stay_readable_by_the_release_before(run):
    """A worker or CLI of the release before (which reads a batch as ``Batch(**record)``
    with the fields it knew) still reads every batch record this one writes, and this one
    reads records with fields of a later release."""
    known = {"id", "level", "roles", "count", "formats", "key_version", "state", "created_at", "note"}
    run.agg.activate(sku="S", name="N", lot="L", production_date="2026-11-21",
                     serial_range=(run.cap_batch, 0, 30))
    with run.data.store.read() as txn:
        records = [unpack(v) for _, v in txn.cursor(db=run.data.store.db("batches"))]
    assert records and all(set(r) == known for r in records)
    later = Batch.from_dict({**records[0], "a_later_field": 1}, 7)
    assert later.id == records[0]["id"] and later.activated == 7


def test_a_replacement_that_voids_the_last_unit_of_a_batch_voids_the_batch(run):
    """A batch is voided once all its units are, however the last one went: a damaged
    label replaced is voided as `wuma void` voids one."""
    agg, data = run.agg, run.data
    spare = data.create_batch("pallet", 2)
    agg.void(serial_range=(run.pallet_batch, 0, 3))
    assert data.batches.get(run.pallet_batch).state == "generated"
    agg.replace(run.pallets[3], unit_codes(data, spare)[0])
    assert data.batches.get(run.pallet_batch).state == "voided"
    assert data.batches.get(spare.id).state == "generated"


def test_warehouse_writes_begin_no_read_transaction_inside_their_write(run, monkeypatch):
    """A read begun inside a write transaction is a second snapshot (the one before the
    write) and a second reader slot: what these writes read, they read in their own
    transaction (the batches' sizes and levels too). And no code is verified (FF1 work)
    while the store's one writer lock is held: every process's writes, scans included,
    would wait for it."""
    store, inside, writing = run.data.store, [], []

    @contextlib.contextmanager
    def gate(s):
        with s.env.begin(write=True) as txn:
            writing.append(txn)
            try:
                yield txn
            finally:
                writing.pop()

    read = store.read

    def watched_read():
        if writing:
            inside.append("".join(traceback.format_stack(limit=4)[:-1]))
        return read()

    verify = run.data.codes.verify

    def watched_verify(code):
        if writing:
            inside.append("".join(traceback.format_stack(limit=4)[:-1]))
        return verify(code)

    monkeypatch.setattr(store, "write_gate", gate)
    monkeypatch.setattr(store, "read", watched_read)
    monkeypatch.setattr(run.data.codes, "verify", watched_verify)
    agg = Aggregation(run.data)  # NOTE: new, so that nothing is cached yet (batch levels)
    agg.link(run.cases[0], run.caps[0:24])
    agg.link(run.pallets[0], run.cases[0:1])
    agg.move([run.caps[0]], to=run.cases[1])
    agg.unpack(run.cases[0], [run.caps[1], run.caps[2]])
    agg.void([run.caps[5]])
    agg.void(serial_range=(run.cap_batch, 100, 110))
    agg.void(batch=run.pallet_batch)
    agg.replace(run.cases[2], run.cases[3])
    assert inside == []


def test_ship_trace_distributor_through_ancestors(run, tmp_path):
    agg = run.agg
    agg.load(_file(tmp_path, _production(run)))
    agg.activate(sku="S", name="N", lot="L", production_date="2026-11-21", pallets=[run.pallets[0]])
    agg.add_distributor("gz-01", "Guangzhou", ["4401"])
    agg.add_distributor("fs-02", "Foshan", ["4406"])
    with pytest.raises(ValueError, match="region codes"):
        agg.add_distributor("bad", "x", ["GZ"])
    # names and lots are printed in listings, trace and scan answers: no control characters
    with pytest.raises(ValueError, match="distributor name: no control characters"):
        agg.add_distributor("bad", "Guangzhou\x1b]0;x\x07", ["4401"])
    for field in ("name", "lot"):
        with pytest.raises(ValueError, match=f"{field}: no control characters"):
            agg.activate(**{"sku": "S", "name": "N", "lot": "L", field: "L\u202e1"}, production_date="2026-11-21",
                         pallets=[run.pallets[1]])
    agg.ship([run.pallets[0]], "gz-01", now=1000.0)
    t = agg.trace(run.caps[3], render=True)
    assert t["active"] and t["product"]["sku"] == "S"
    assert [a["level"] for a in t["ancestors"]] == ["case", "pallet"]
    assert t["ancestors"][1]["code"] == run.pallets[0]
    assert t["distributor"]["id"] == "gz-01"
    assert t["shipment"]["via"] == unit_id(run.pallet_batch, 0)
    assert Aggregation.in_territory(t["distributor"], "440106")
    assert not Aggregation.in_territory(t["distributor"], "440606")
    assert [h["type"] for h in t["history"]] == ["load", "activate", "ship"]
    with pytest.raises(Conflict, match="already shipped"):
        agg.ship([run.cases[0]], "fs-02")
    agg.receive([run.pallets[0]])
    agg.transfer([run.cases[1]], "fs-02")
    assert agg.trace(run.caps[24])["distributor"]["id"] == "fs-02"
    assert agg.trace(run.caps[0])["distributor"]["id"] == "gz-01"
    agg.return_goods([run.cases[0]])
    t = agg.trace(run.caps[0])
    assert t["distributor"] is None and t["returned"]
    case_trace = agg.trace(run.cases[2], render=True)
    assert len(case_trace["children"]) == 24 and case_trace["children"][0]["code"] == run.caps[48]
    with pytest.raises(InvalidCode):
        agg.trace("not a code")


def _scan_view(t: dict) -> dict:
    """What a scan reads of trace_unit: the keys and shape of scan_trace."""
    return {"active": t["active"], "voided": t["voided"], "product": t["product"],
            "ancestors": [{k: a[k] for k in ("level", "batch", "serial")} for a in t["ancestors"]],
            "distributor": t["distributor"]}


def test_scan_trace_agrees_with_trace_unit(run, tmp_path):
    """The scan path's lean trace says what the full trace says, for every unit: linked
    or loose, active or not, voided, shipped, transferred and returned."""
    agg = run.agg
    agg.load(_file(tmp_path, _production(run, n_cases=8)))
    agg.activate(sku="S", name="N", lot="L", production_date="2026-11-21", pallets=[run.pallets[0]])
    agg.add_distributor("gz-01", "Guangzhou", ["4401"])
    agg.add_distributor("fs-02", "Foshan", ["4406"])
    agg.ship([run.pallets[0]], "gz-01", now=1000.0)
    agg.receive([run.pallets[0]])
    agg.transfer([run.cases[1]], "fs-02")
    agg.return_goods([run.cases[2]])
    agg.void([run.caps[5], run.cases[3]])
    units = [agg.unit(c) for c in run.caps + run.cases + run.pallets]
    assert any(_scan_view(agg.trace_unit(u, history=False))["distributor"] for u in units)
    for u in units:
        assert agg.scan_trace(u) == _scan_view(agg.trace_unit(u, history=False)), u


# -- EPCIS and SSCC ------------------------------------------------------------------------
def test_sscc_check_digit():
    # GS1 General Specifications example SSCC (00) 106141411234567897
    assert sscc("0614141", 123456789, 1) == "106141411234567897"
    assert pallet_sscc(3, 17, "0614141") == "006141410030000174"  # batch 3, serial 17
    with pytest.raises(ValueError):
        sscc("0614141", 10**9)


@pytest.fixture(scope="module")
def epcis_schema():
    return json.loads((VECTORS / "EPCIS-JSON-Schema.json").read_text())


def test_gs1_example_validates(epcis_schema):
    jsonschema.validate(json.loads((VECTORS / "Example_9.6.3-AggregationEvent.jsonld").read_text()),
                        epcis_schema)


def test_epcis_export_validates_against_gs1_schema(run, tmp_path, epcis_schema):
    agg = run.agg
    pallet_line = ",".join([run.pallets[0]] + run.cases[:4])
    agg.load(_file(tmp_path, _production(run, 4)[:4] + [pallet_line]))
    agg.activate(sku="S", name="N", lot="L", production_date="2026-11-21", pallets=[run.pallets[0]])
    agg.add_distributor("gz-01", "Guangzhou", ["4401"])
    agg.unpack(run.cases[0], [run.caps[0]])
    agg.move([run.caps[0]], to=run.cases[5])
    agg.replace(run.caps[1], run.caps[200])
    agg.void([run.caps[2]])
    agg.ship([run.pallets[0]], "gz-01")
    agg.receive([run.pallets[0]])
    doc = export_epcis(agg, company_prefix="0614141", now=0.0)
    jsonschema.validate(doc, epcis_schema)
    events = doc["epcisBody"]["eventList"]
    kinds = {(e["type"], e["action"], e.get("bizStep")) for e in events}
    assert ("AggregationEvent", "ADD", "packing") in kinds
    assert ("AggregationEvent", "DELETE", "unpacking") in kinds
    assert ("ObjectEvent", "ADD", "commissioning") in kinds
    assert ("ObjectEvent", "OBSERVE", "shipping") in kinds
    sscc_urn = "urn:epc:id:sscc:0614141."
    pallet_events = [e for e in events if e.get("parentID", "").startswith(sscc_urn)]
    assert pallet_events and len(pallet_events[0]["childEPCs"]) == 4
    first = events[0]
    assert first["childEPCs"][0] == URL + run.caps[0]
    # the parentID rule the schema leaves out
    bad = {"epcisBody": {"eventList": [{"type": "AggregationEvent", "action": "DELETE",
                                        "childEPCs": ["urn:x"]}]}}
    with pytest.raises(ValueError, match="without parentID"):
        check_parent_ids(bad)


# -- CLI -----------------------------------------------------------------------------------
def test_cli_load_trace_and_help(run, tmp_path):
    from cli.main import cli

    runner = CliRunner()
    base = ["--data", str(run.data.path)]
    f = _file(tmp_path, _production(run))
    run.data.close()
    res = runner.invoke(cli, base + ["aggregate", "load", str(f), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["links_added"] == 250
    res = runner.invoke(cli, base + ["trace", run.caps[0], "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["ancestors"][0]["level"] == "case"
    bad = _file(tmp_path, [run.cases[0]], "bad.csv")
    res = runner.invoke(cli, base + ["aggregate", "load", str(bad)])
    assert res.exit_code != 0 and "line 1" in res.output
    for name in ("aggregate", "void", "activate", "distributor", "ship", "transfer", "receive",
                 "return", "trace", "epcis"):
        cmd = cli.commands[name]
        subs = getattr(cmd, "commands", {}).values() or [cmd]
        for c in [cmd, *subs]:
            assert "Example:" in (c.help or ""), c.name


# -- stateful property test: store vs an in-memory model ------------------------------------------
_SMALL = PackagingSpec("small", [
    {"name": "pallet", "capacity": 3, "roles": [{"name": "pallet"}]},
    {"name": "case", "capacity": 4, "roles": [{"name": "case"}, {"name": "case_inner"}]},
    {"name": "cap", "capacity": 0, "roles": [{"name": "cap"}, {"name": "cap_inner"}]},
])
_COUNTS = {"pallet": 3, "case": 6, "cap": 14}
_DEPTH = {"pallet": 0, "case": 1, "cap": 2}
_CAP = {"pallet": 3, "case": 4, "cap": 0}


class AggregationModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.data = DataFolder.init(Path(self.tmp.name) / "w", spec=_SMALL)
        self.agg = Aggregation(self.data)
        self.units = []  # (uid, code, level)
        self.labels = []  # per unit: its codes by role index ((uid, role index) -> code)
        for level, n in _COUNTS.items():
            b = self.data.create_batch(level, n)
            self.units += [(unit_id(b.id, s), c, level) for s, c in enumerate(unit_codes(self.data, b))]
            self.labels += [{(unit_id(b.id, s), self.data.spec.role(r).index):
                             self.data.codes.code(b, s, r) for r in b.roles} for s in range(n)]
        self.parent: dict[int, int] = {}
        self.voided: set[int] = set()
        # relabels (标签替换): label -> the unit it stands for; dead labels; units either side
        self.alias: dict[tuple[int, int], int] = {}
        self.dead: set[tuple[int, int]] = set()
        self.relabelled: set[int] = set()
        # units with a history of their own (agg_unit_events): never a relabel's new label
        self.history: set[int] = set()

    def teardown(self) -> None:
        self.data.close()
        self.tmp.cleanup()

    def _kids(self, p):
        return [c for c, q in self.parent.items() if q == p]

    def _stands_for(self, label):
        """The unit a label stands for, or None when commands refuse it (dead, or a
        replacement label voided since)."""
        if label in self.dead:
            return None
        if label in self.alias:
            return None if label[0] in self.voided else self.alias[label]
        return label[0]

    def _unit(self, i):
        """The unit unit ``i``'s first code stands for (None: refused)."""
        return self._stands_for(next(iter(self.labels[i])))

    def _fits(self, child, parent):
        lv = {u: lvl for u, _, lvl in self.units}
        return _DEPTH[lv[child]] == _DEPTH[lv[parent]] + 1

    # indices: pallets 0-2, cases 3-8, caps 9-22; the "fitting" rules draw parents and
    # children one level apart so that most operations succeed, the others draw anything.
    @rule(d=st.integers(0, 1), p=st.integers(0, 13), cs=st.lists(st.integers(0, 13), min_size=1,
                                                                  max_size=4))
    def load_fitting(self, d, p, cs):
        lo = (0, 3, 9)
        n = (3, 6, 14)
        self.load(lo[d] + p % n[d], [lo[d + 1] + c % n[d + 1] for c in cs])

    @rule(d=st.integers(0, 1), to=st.integers(0, 13), cs=st.lists(st.integers(0, 13), min_size=1,
                                                                   max_size=2))
    def move_fitting(self, d, to, cs):
        lo = (0, 3, 9)
        n = (3, 6, 14)
        self.move([lo[d + 1] + c % n[d + 1] for c in cs], lo[d] + to % n[d])

    @rule(d=st.integers(1, 2), a=st.integers(0, 13), b=st.integers(0, 13))
    def replace_fitting(self, d, a, b):
        lo = (0, 3, 9)
        n = (3, 6, 14)
        self.replace(lo[d] + a % n[d], lo[d] + b % n[d])

    @rule(p=st.integers(0, 22), cs=st.lists(st.integers(0, 22), min_size=1, max_size=5))
    def load(self, p, cs):
        P, kids = self.units[p], [self.units[i] for i in cs]
        line = ",".join([P[1]] + [k[1] for k in kids])
        rep = self.agg.load(line.encode(), again=True)  # NOTE: every load checked (a repeat is not skipped)
        units = [self._unit(i) for i in (p, *cs)]
        if None in units:
            assert not rep.loaded
            event("load of a dead label refused")
            return
        P = (units[0], P[1], P[2])
        new = set(units[1:])
        ok = (all(self._fits(k, P[0]) for k in new)
              and not ({P[0]} | new) & self.voided
              and all(self.parent.get(k, P[0]) == P[0] for k in new)
              and len(set(self._kids(P[0])) | new) <= _CAP[P[2]])
        assert rep.loaded == ok, (rep.bad, ok)
        event(f"load ok={ok}")
        if ok:
            if any(self.parent.get(k) != P[0] for k in new):  # a load indexes its parents
                self.history.add(P[0])
            for k in new:
                self.parent[k] = P[0]

    @rule(p=st.integers(0, 22), cs=st.lists(st.integers(0, 22), max_size=3))
    def unpack(self, p, cs):
        P = (self._unit(p), *self.units[p][1:])
        kids = list(dict.fromkeys(self._unit(i) for i in cs))
        ok = P[0] is not None and all(k is not None and self.parent.get(k) == P[0] for k in kids)
        try:
            self.agg.unpack(P[1], [self.units[i][1] for i in cs] or None)
        except Conflict:
            assert not ok
            return
        assert ok
        kids = kids or self._kids(P[0])
        if kids:
            self.history |= {P[0], *kids}
        for k in kids:
            del self.parent[k]

    @rule(cs=st.lists(st.integers(0, 22), min_size=1, max_size=3), to=st.integers(0, 22))
    def move(self, cs, to):
        T = self._unit(to)
        model = dict(self.parent)
        ok = T is not None and None not in [self._unit(i) for i in cs]
        for k in dict.fromkeys(self._unit(i) for i in cs) if ok else ():
            if model.get(k) == T:
                continue
            if (k in self.voided or not self._fits(k, T) or T in self.voided
                    or sum(1 for q in model.values() if q == T) + 1 > _CAP[self.units[to][2]]):
                ok = False
                break
            model[k] = T
        try:
            self.agg.move([self.units[i][1] for i in cs], to=self.units[to][1])
        except Conflict:
            assert not ok
            event("move refused")
            return
        assert ok
        event("move ok")
        moved = [k for k in model if model[k] != self.parent.get(k)]
        if moved:
            self.history |= {T, *moved, *(self.parent[k] for k in moved if k in self.parent)}
        self.parent = model

    @rule(a=st.integers(0, 22), b=st.integers(0, 22))
    def replace(self, a, b):
        (_, oc, ol), (new, nc, nl) = self.units[a], self.units[b]
        old = self._unit(a)
        ok = (old is not None and old != new and ol == nl and old not in self.voided
              and new not in self.voided and new not in self.parent and not self._kids(new)
              and new not in self.relabelled)
        try:
            self.agg.replace(oc, nc)
        except (Conflict, ValueError):
            assert not ok
            event("replace refused")
            return
        assert ok
        event("replace ok")
        self.history |= {old, new} | ({self.parent[old]} if old in self.parent else set())
        if old in self.parent:
            self.parent[new] = self.parent.pop(old)
        for k in self._kids(old):
            self.parent[k] = new
        self.voided.add(old)

    @rule(cs=st.lists(st.integers(0, 22), min_size=1, max_size=2))
    def void(self, cs):
        units = {self._unit(i) for i in cs}
        try:
            self.agg.void([self.units[i][1] for i in cs])
        except Conflict:
            assert None in units
            return
        assert None not in units
        self.voided |= units

    @rule(d=st.integers(1, 2), a=st.integers(0, 13), b=st.integers(0, 13), r=st.integers(0, 1),
          via=st.booleans())
    def relabel(self, d, a, b, r, via):
        """One label of a case or cap replaced: the old label given as the unit's own code
        or (``via``) as a replacement label already on it."""
        lo, n = (0, 3, 9)[d], (3, 6, 14)[d]
        a, b = lo + a % n, lo + b % n
        old = list(self.labels[a])[r]
        if via:  # a label a relabel put on unit a, if any
            old = next((x for x, u in self.alias.items() if u == old[0] and x[1] == old[1]), old)
            event(f"relabel of a replacement label: {old in self.alias}")
        new = list(self.labels[b])[r]
        code = {k: c for lb in self.labels for k, c in lb.items()}
        unit = None if old in self.dead else self.alias.get(old, old[0])
        ok = (unit is not None and old[0] != new[0] and unit not in self.voided
              and new[0] not in self.relabelled and new[0] not in self.voided
              and new[0] not in self.parent and not self._kids(new[0])
              and new[0] not in self.history)
        try:
            self.agg.relabel(code[old], code[new])
        except (Conflict, ValueError):
            assert not ok
            event("relabel refused")
            return
        assert ok
        event("relabel ok")
        self.alias.pop(old, None)
        self.dead.add(old)
        self.alias[new] = unit
        self.dead |= set(self.labels[b]) - {new}
        self.relabelled |= {old[0], new[0]}

    @invariant()
    def store_agrees(self):
        assert self.agg.links() == self.parent
        assert self.agg.voided_units() == self.voided
        self.agg.check_consistency()

    @invariant()
    def labels_agree(self):
        """Every code stands for the unit the model says (or is refused), and scans say
        voided exactly for dead labels and voided units."""
        for labels in self.labels:
            for label, code in labels.items():
                want = self._stands_for(label)
                try:
                    got = self.agg.unit(code)
                except Conflict:
                    got = None
                assert got == want, (label, got, want)
                unit, trace = self.agg.scan_label(*label)
                assert trace["voided"] == (want is None or want in self.voided), label
                assert unit == (label[0] if want is None else want)


TestAggregationModel = AggregationModel.TestCase
TestAggregationModel.settings = settings(max_examples=100, stateful_step_count=30, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("territory, region, inside", [
    (["4401"], "440106", True),
    (["4401"], "440000", True),  # the province: coarser than the territory, maybe inside
    (["4401"], "44", True),
    (["4401"], "440200", False),  # Shaoguan
    (["4401"], "310104", False),
    (["440100"], "440106", True),  # Guangzhou written with its zeros
    (["440100", "3101"], "310104", True),
    (["440106"], "4401", True),  # the city, coarser than a district territory
    (["440106"], "440103", False),
    (["440183100"], "440183100", True),  # a town, a 3-digit level: not a prefix of other towns
    (["440183100"], "440183101", False),
    (["440183100"], "440183100203", True),  # one of its villages
    (["440183000"], "440183101", True),  # the county, written as a town code of zeros
    (["440183100000"], "440183100203", True),
])
def test_territory_reads_division_codes_as_prefixes(tmp_path, territory, region, inside):
    from engine.aggregation import Aggregation

    data = DataFolder.init(tmp_path / "d")
    agg = Aggregation(data)
    d = agg.add_distributor("d-1", "D", territory)
    assert agg.in_territory(d, region) is inside
    assert agg.in_territory({"territory": territory}, region) is inside  # as stored before
    data.close()


@pytest.mark.parametrize("code, prefix", [
    ("44", "44"), ("4400", "44"), ("440000", "44"), ("440100", "4401"), ("440106", "440106"),
    ("440106000", "440106"), ("440106001", "440106001"), ("440183100", "440183100"),
    ("440183100000", "440183100"), ("440183100200", "440183100200"), ("440100000000", "4401"),
    ("4401061", "4401061"),  # no whole level: taken as the prefix it is
])
def test_a_division_code_is_read_by_whole_levels(code, prefix):
    """2 digits province, 2 city, 2 county, 3 township, 3 village: zeros name the level
    above only as a whole level (a town 440183100 is not the prefix 4401831)."""
    from engine.ids import region_prefix

    assert region_prefix(code) == prefix


def test_activations_by_another_release_are_counted_on_the_next_open(run):
    """A worker or CLI of the release before (during an upgrade, or after a rollback)
    activates without counting: the next open of the folder brings the batch's count and
    state up to date from the activations on record; an open with nothing new counts
    nothing."""
    agg, data = run.agg, run.data
    agg.activate(sku="S", name="N", lot="L", production_date="2026-11-21",
                 serial_range=(run.cap_batch, 0, 30))
    counted = data.batches.count_activated
    data.batches.count_activated = lambda txn, units: None  # the release before: no count
    agg.activate(sku="S", name="N", lot="L", production_date="2026-11-21",
                 serial_range=(run.cap_batch, 30, 40))
    data.batches.count_activated = counted
    assert data.batches.get(run.cap_batch).activated == 30
    path = data.path
    data.close()
    for _ in range(2):
        with DataFolder(path) as again:
            assert (again.batches.get(run.cap_batch).state, again.batches.get(run.cap_batch).activated) == (
                "activated", 40)
