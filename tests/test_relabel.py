"""Relabel (标签替换): one damaged label of a pair replaced, the unit kept, through the scan
pipeline, warehouse commands, line-collection files, trace, EPCIS and the CLI."""

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner
from conftest_world import Clock, build_world

from cli.main import cli
from engine import Conflict
from engine.aggregation import unit_id
from engine.epcis import export_epcis
from engine.scan import ScanPipeline, ScanRequest, code_verdict
from engine.scanlog import ScanLog

VECTORS = Path(__file__).parent / "vectors" / "gs1"


@pytest.fixture
def world(tmp_path):
    """build_world (2 cases of 24 caps on a pallet, activated, shipped to gz-1) plus a
    batch of 4 spare case labels and a scan pipeline."""
    w = build_world(tmp_path / "wuma-data")
    data = w["data"]
    w["spares"] = data.create_batch("case", 4)
    w["pipe"] = ScanPipeline(data.codes, w["agg"], ScanLog(data.store), data.abuse,
                             data.accounts, clock=Clock())
    yield w
    w["pipe"].scans.close()
    data.close()


def _code(w, batch, serial, role):
    return w["data"].codes.code(w[batch], serial, role)


def _scan(w, code, actor_role="consumer"):
    token = w["store_token"] if actor_role == "store" else None
    return w["pipe"].scan(ScanRequest(code, actor_role=actor_role, actor_id="u-1", token=token,
                                      region="440106"))


def _pallet(w):
    return w["data"].codes.code(w["data"].batches.get(w["cases"].id + 1), 0, "pallet")


def _verdict(w, code):
    return code_verdict(w["data"].codes, w["agg"], code)[0]


def test_relabel_a_case_outer_label_keeps_the_case(world):
    """The common case: a torn carton label. The store's open-case scan of the inner code
    is still genuine; the torn label answers voided; the new label is the case itself."""
    w, agg = world, world["agg"]
    case0 = unit_id(w["cases"].id, 0)
    old, inner = _code(w, "cases", 0, "case_outer"), _code(w, "cases", 0, "case_inner")
    new = _code(w, "spares", 0, "case_outer")
    before = agg.trace(old)
    eid = agg.relabel(old, new)
    store = _scan(w, inner, "store")
    assert store.verdict == "genuine" and (store.batch, store.serial) == (w["cases"].id, 0)
    assert _verdict(w, old) == "voided"
    got = w["pipe"].check(new)
    assert got.verdict == "genuine" and got.code == new and got.role == "case_outer"
    assert (got.batch, got.serial) == (w["cases"].id, 0)
    assert got.product["sku"] == "SKU-1" and got.distributor == "gz-1"
    assert [a["level"] for a in got.ancestors] == ["pallet"]
    # the caps inside still sit in the case, the case still on its pallet
    cap = _scan(w, _code(w, "caps", 3, "cap_inner"))
    assert cap.verdict == "genuine" and cap.ancestors[0]["serial"] == 0
    after = agg.trace(new)
    assert after["unit"]["batch"] == w["cases"].id and after["unit"]["serial"] == 0
    assert after["unit"]["code"] == new
    for k in ("ancestors", "children", "product", "distributor", "active", "voided"):
        assert after[k] == before[k], k
    assert [h for h in after["history"] if h["type"] == "relabel"] == [
        {"id": eid, "type": "relabel", "time": agg.event(eid)["time"]}]
    assert agg.event(eid)["unit"] == case0
    # the replacement label's spare inner code was never applied: dead too
    assert _verdict(w, _code(w, "spares", 0, "case_inner")) == "voided"
    assert agg.unit(new) == case0 and agg.unit(inner) == case0
    with pytest.raises(Conflict, match=f"replaced by label .*{new}"):
        agg.trace(old)


def test_a_replacement_label_has_a_scan_record_of_its_own(world):
    """Scans are recorded by the label as printed: the new label starts its own record,
    the old (dead) one keeps its own; the event and campaigns still see the unit."""
    w = world
    old, new = _code(w, "cases", 1, "case_outer"), _code(w, "spares", 1, "case_outer")
    assert _scan(w, old, "store").scan.count == 1
    w["agg"].relabel(old, new)
    assert _scan(w, new, "store").scan.count == 1
    role = w["data"].spec.role("case_outer").index
    assert w["pipe"].scans.get(unit_id(w["cases"].id, 1), role).count == 1
    assert w["pipe"].scans.get(unit_id(w["spares"].id, 1), role).count == 1
    event = w["pipe"].scans.events()[-1]
    assert (event["unit"], event["role"]) == (unit_id(w["cases"].id, 1), role)
    # the old label's scan after the relabel: voided, recorded under its own identity
    assert _scan(w, old, "store").verdict == "voided"
    assert w["pipe"].scans.get(unit_id(w["cases"].id, 1), role).count == 2
    assert w["pipe"].check(new).scan.count == 1


def test_a_torn_label_scanned_elsewhere_never_makes_its_replacement_copied(world):
    """The hunt's t1: the old cap label (or copies of it) scanned in other cities after the
    relabel; the new label's scan is not copied, and each label's check shows its own."""
    w, agg = world, world["agg"]
    spare_caps = w["data"].create_batch("cap", 2)
    old, new = _code(w, "caps", 5, "cap_outer"), w["data"].codes.code(spare_caps, 0, "cap_outer")
    assert _scan(w, old, "store").flags == ()
    agg.relabel(old, new)
    for region, device in (("110105", "d1"), ("310101", "d2"), ("500103", "d3")):
        got = w["pipe"].scan(ScanRequest(old, actor_role="consumer", actor_id="u-2",
                                         region=region, device=device))
        assert got.verdict == "voided"
    scanned = _scan(w, new, "store")
    assert scanned.verdict == "genuine" and "copied" not in scanned.flags
    assert scanned.scan.count == 1 and not scanned.scan.ever_copied
    assert (scanned.batch, scanned.serial) == (w["caps"].id, 5)  # the unit it stands for
    check = w["pipe"].check(new)
    assert check.verdict == "genuine" and check.flags == () and check.scan.count == 1
    dead = w["pipe"].check(old)
    assert dead.verdict == "voided" and dead.scan.count == 4  # its own scans only
    assert dead.scan.first_region == "440106"


def test_relabel_again_kills_the_first_replacement(world):
    w, agg = world, world["agg"]
    old = _code(w, "cases", 0, "case_outer")
    first, second = _code(w, "spares", 0, "case_outer"), _code(w, "spares", 1, "case_outer")
    agg.relabel(old, first)
    agg.relabel(first, second)  # the replacement damaged in turn
    assert _verdict(w, first) == "voided" and _verdict(w, old) == "voided"
    assert _verdict(w, second) == "genuine"
    assert _verdict(w, _code(w, "cases", 0, "case_inner")) == "genuine"
    assert agg.unit(second) == unit_id(w["cases"].id, 0)
    # both dead labels name the label in use now
    for dead in (old, first):
        with pytest.raises(Conflict, match=f"replaced by label .*{second}"):
            agg.move([dead], to=_code(w, "cases", 1, "case_outer"))
    assert [h["type"] for h in agg.trace(second)["history"]].count("relabel") == 2


def test_a_cap_outer_relabel_keeps_the_consumers_inner_code(world):
    w, agg = world, world["agg"]
    spare_caps = w["data"].create_batch("cap", 2)
    new = w["data"].codes.code(spare_caps, 0, "cap_outer")
    agg.relabel(_code(w, "caps", 5, "cap_outer"), new)
    assert _scan(w, _code(w, "caps", 5, "cap_inner")).verdict == "genuine"
    assert _scan(w, new, "store").verdict == "genuine"
    assert _verdict(w, _code(w, "caps", 5, "cap_outer")) == "voided"
    assert _verdict(w, w["data"].codes.code(spare_caps, 0, "cap_inner")) == "voided"


def test_relabel_refusals(world):
    w, agg, data = world, world["agg"], world["data"]
    old = _code(w, "cases", 0, "case_outer")
    spare = [_code(w, "spares", i, "case_outer") for i in range(4)]
    with pytest.raises(ValueError, match="case_inner code cannot replace a case_outer label"):
        agg.relabel(old, _code(w, "spares", 0, "case_inner"))
    with pytest.raises(ValueError, match="cap_outer code cannot replace a case_outer"):
        agg.relabel(old, _code(w, "inactive", 0, "cap_outer"))
    with pytest.raises(ValueError, match="same label"):
        agg.relabel(old, old.lower())
    # not fresh: aggregated, activated, voided, shipped
    agg.link(spare[0], [_code(w, "inactive", 0, "cap_outer")])
    with pytest.raises(Conflict, match="already aggregated; use a fresh label"):
        agg.relabel(old, spare[0])
    agg.activate(sku="S", name="N", lot="L", production_date="2026-11-21",
                 serial_range=(w["spares"].id, 1, 2))
    with pytest.raises(Conflict, match="is activated .* use a fresh label"):
        agg.relabel(old, spare[1])
    agg.void([spare[2]])
    with pytest.raises(Conflict, match="is voided; use a fresh label"):
        agg.relabel(old, spare[2])
    agg.ship([spare[3]], "gz-1")
    with pytest.raises(Conflict, match="shipment record of its own"):
        agg.relabel(old, spare[3])
    # already used as a replacement, on either side; a dead old label
    more = data.create_batch("case", 4)
    fresh = [data.codes.code(more, i, "case_outer") for i in range(4)]
    agg.relabel(old, fresh[0])
    with pytest.raises(Conflict, match="part of a relabel already"):
        agg.relabel(_code(w, "cases", 1, "case_outer"), fresh[0])
    with pytest.raises(Conflict, match=f"replaced by label .*{fresh[0]}"):
        agg.relabel(old, fresh[1])
    agg.relabel(fresh[1], fresh[2])  # a loose unit's label replaced: fresh[1] is the old side
    with pytest.raises(Conflict, match="part of a relabel already"):
        agg.relabel(_code(w, "cases", 1, "case_outer"), fresh[1])
    with pytest.raises(Conflict, match="its other codes were voided"):
        agg.relabel(data.codes.code(more, 0, "case_inner"), data.codes.code(more, 3, "case_inner"))
    with pytest.raises(Conflict, match="part of a relabel"):  # replace takes no such label
        agg.replace(_code(w, "cases", 1, "case_outer"), data.codes.code(more, 0, "case_inner"))
    # a voided unit is not relabelled
    agg.void([_code(w, "cases", 1, "case_inner")])
    with pytest.raises(Conflict, match="voided unit"):
        agg.relabel(_code(w, "cases", 1, "case_outer"), fresh[3])
    assert _verdict(w, fresh[3]) == "inactive"  # nothing written by the refusals


def test_a_label_scanned_before_use_is_refused_as_a_replacement(world):
    """A spare label scanned while unused (answered inactive, kept as evidence) is a stray
    or leaked one: taken as a replacement, its first scan on the case answered "scanned
    before" (count 2, a first time and place from before it was applied). Refused, by
    relabel and by replace (there for the spare carton's inner code), with nothing written."""
    w, agg = world, world["agg"]
    old = _code(w, "cases", 0, "case_outer")
    stray, stray_inner = _code(w, "spares", 0, "case_outer"), _code(w, "spares", 1, "case_inner")
    assert _scan(w, stray).verdict == "inactive" and _scan(w, stray_inner).verdict == "inactive"
    with pytest.raises(Conflict, match=rf"{stray} \(case_outer of \d+:0\) was scanned 1 time before it "
                                       r"was put on anything \(first at 20\d\d-.*\+08:00 in region "
                                       r"440106\).*use another fresh label"):
        agg.relabel(old, stray)
    with pytest.raises(Conflict, match=rf"{stray_inner} \(case_inner of \d+:1\) was scanned 1 time before"):
        agg.replace(_code(w, "cases", 1, "case_outer"), _code(w, "spares", 1, "case_outer"))
    # a relabel uses the spare's outer label alone (its inner code dies): that scan is no bar
    agg.relabel(_code(w, "cases", 1, "case_outer"), _code(w, "spares", 1, "case_outer"))
    assert _verdict(w, stray) == "inactive" and _verdict(w, old) == "genuine"
    fresh = _code(w, "spares", 2, "case_outer")
    agg.relabel(old, fresh)
    got = _scan(w, fresh, "store")
    assert got.verdict == "genuine" and got.scan.count == 1


def test_voiding_the_unit_voids_its_replacement_label(world):
    w, agg = world, world["agg"]
    new = _code(w, "spares", 0, "case_outer")
    agg.relabel(_code(w, "cases", 0, "case_outer"), new)
    assert agg.void([new]) == 1  # the unit it stands for
    assert unit_id(w["cases"].id, 0) in agg.voided_units()
    assert _verdict(w, new) == "voided"
    assert _verdict(w, _code(w, "cases", 0, "case_inner")) == "voided"
    # and by another of its codes
    new1 = _code(w, "spares", 1, "case_outer")
    agg.relabel(_code(w, "cases", 1, "case_outer"), new1)
    agg.void([_code(w, "cases", 1, "case_inner")])
    assert _verdict(w, new1) == "voided"


def test_a_replacement_label_voided_with_its_own_range_answers_voided(world):
    """A void of the replacement labels' range voids the labels, as every code in it: the
    unit keeps its other codes, and is relabelled again with the voided one as OLD."""
    w, agg = world, world["agg"]
    new = _code(w, "spares", 0, "case_outer")
    agg.relabel(_code(w, "cases", 0, "case_outer"), new)
    agg.void(serial_range=(w["spares"].id, 0, 4))
    assert _verdict(w, new) == "voided"
    assert _verdict(w, _code(w, "cases", 0, "case_inner")) == "genuine"
    with pytest.raises(Conflict, match="is voided: relabel 2:0 again"):
        agg.ship([new], "gz-1")
    more = w["data"].create_batch("case", 1)
    agg.relabel(new, w["data"].codes.code(more, 0, "case_outer"))
    assert _verdict(w, w["data"].codes.code(more, 0, "case_outer")) == "genuine"


def test_warehouse_commands_follow_a_replacement_label(world):
    w, agg = world, world["agg"]
    case1 = unit_id(w["cases"].id, 1)
    new = _code(w, "spares", 0, "case_outer")
    agg.relabel(_code(w, "cases", 1, "case_outer"), new)
    kids = agg.unpack(new, [_code(w, "caps", 24, "cap_outer")])
    assert kids == [unit_id(w["caps"].id, 24)]
    assert agg.move([_code(w, "caps", 24, "cap_outer")], to=new) == kids
    assert agg.links()[kids[0]] == case1
    assert agg.unpack(_pallet(w), [new]) == [case1]
    with pytest.raises(Conflict, match=f"replaced by label .*{new}"):
        agg.link(_pallet(w), [_code(w, "cases", 1, "case_outer")])
    assert agg.move([new], to=_pallet(w)) == [case1]
    agg.return_goods([new])
    assert agg.trace(new)["returned"]
    agg.check_consistency()


def _case_relabelled(run) -> tuple[str, object]:
    """Case 0's outer label replaced by a spare's: (the new label, the spares' batch)."""
    spares = run.data.create_batch("case", 3)
    new = run.data.codes.code(spares, 0, "case_outer")
    run.agg.relabel(run.cases[0], new)
    return new, spares


def test_a_line_file_with_a_replacement_label_links_the_unit(run, tmp_path):
    agg = run.agg
    new, spares = _case_relabelled(run)
    f = tmp_path / "line.csv"
    f.write_text(",".join([new] + run.caps[:24]) + "\n")
    rep = agg.load(f)
    assert rep.loaded and rep.links_added == 24
    assert agg.links()[unit_id(run.cap_batch, 0)] == unit_id(run.case_batch, 0)
    # a pallet line naming the case by its new label, as JSON lines and in small chunks
    g = tmp_path / "pallet.jsonl"
    g.write_text(json.dumps({"parent": run.pallets[0], "children": [run.cases[1], new]}) + "\n")
    assert agg.load(g, chunk_bytes=16).links_added == 2
    assert agg.links()[unit_id(run.case_batch, 0)] == unit_id(run.pallet_batch, 0)
    assert unit_id(spares.id, 0) not in agg.links()
    agg.check_consistency()


def test_a_line_file_with_a_dead_label_is_refused_with_its_line(run, tmp_path):
    agg, data = run.agg, run.data
    new, spares = _case_relabelled(run)
    lines = [",".join([run.cases[1]] + run.caps[24:48]),
             "# the torn label",
             ",".join([run.cases[0]] + run.caps[:24]),
             ",".join([run.pallets[0], run.cases[2], data.codes.code(spares, 0, "case_inner")])]
    f = tmp_path / "line.csv"
    f.write_text("\n".join(lines) + "\n")
    rep = agg.load(f)
    assert not rep.loaded and [b.line for b in rep.bad] == [3, 4]
    assert rep.bad[0].reason.startswith("field 1: label ")
    assert f"was replaced by label {spares.id}:0 case_outer {new}" in rep.bad[0].reason
    assert rep.bad[1].reason.startswith(f"field 3: label {spares.id}:0 case_inner")
    assert "its other codes were voided" in rep.bad[1].reason
    assert agg.links() == {}
    rep = agg.load(f, skip_bad=True)
    assert rep.loaded and rep.links_added == 24 and len(rep.bad) == 2


def test_a_line_file_with_a_replacement_label_voided_since_is_refused(run, tmp_path):
    """A replacement label whose own range was voided answers voided: a line naming it
    is refused as voided, the unit's other code still links."""
    agg, data = run.agg, run.data
    new, spares = _case_relabelled(run)
    agg.void(serial_range=(spares.id, 0, 1))
    f = tmp_path / "line.csv"
    f.write_text(",".join([new] + run.caps[:24]) + "\n"
                 + ",".join([data.codes.code(data.batches.get(run.case_batch), 0, "case_inner")]
                            + run.caps[24:26]) + "\n")
    rep = agg.load(f)
    assert not rep.loaded and [(b.line, b.reason) for b in rep.bad] == [(1, "field 1: code is voided")]
    rep = agg.load(f, skip_bad=True)
    assert rep.loaded and rep.links_added == 2
    assert agg.links()[unit_id(run.cap_batch, 24)] == unit_id(run.case_batch, 0)


def test_a_relabel_during_a_load_makes_it_run_again(run, tmp_path, monkeypatch):
    """The load's relabels are read in its check pass; one committed before its write
    would let a label through as the wrong unit: the load refuses, nothing written."""
    from engine import ingest

    agg, data = run.agg, run.data
    spares = data.create_batch("case", 1)
    real = ingest._dedup

    def relabel_meanwhile(*a):
        agg.relabel(run.cases[5], data.codes.code(spares, 0, "case_outer"))
        return real(*a)

    monkeypatch.setattr(ingest, "_dedup", relabel_meanwhile)
    f = tmp_path / "line.csv"
    f.write_text(",".join([run.cases[0]] + run.caps[:24]) + "\n")
    with pytest.raises(Conflict, match="relabel.*run it again"):
        agg.load(f)
    assert agg.links() == {}


def test_epcis_export_keeps_the_units_identity_and_validates(world):
    """A relabel exports nothing: the unit's EPC does not change (see engine.epcis)."""
    w, agg = world, world["agg"]
    new = _code(w, "spares", 0, "case_outer")
    before = export_epcis(agg, now=0.0)["epcisBody"]["eventList"]
    agg.relabel(_code(w, "cases", 0, "case_outer"), new)
    doc = export_epcis(agg, now=0.0)
    jsonschema.validate(doc, json.loads((VECTORS / "EPCIS-JSON-Schema.json").read_text()))
    assert doc["epcisBody"]["eventList"] == before
    assert new not in json.dumps(doc)


def test_cli_relabel(world):
    w = world
    w["pipe"].scans.close()
    old, new = _code(w, "cases", 0, "case_outer"), _code(w, "spares", 0, "case_outer")
    path = str(w["data"].path)
    w["data"].close()
    runner = CliRunner()
    res = runner.invoke(cli, ["--data", path, "aggregate", "relabel", old, new, "--json"])
    assert res.exit_code == 0, res.output
    eid = json.loads(res.output)["event_id"]
    res = runner.invoke(cli, ["--data", path, "trace", new, "--json"])
    t = json.loads(res.output)
    assert (t["unit"]["batch"], t["unit"]["serial"], t["unit"]["role"]) == (w["cases"].id, 0,
                                                                            "case_outer")
    assert {"id": eid, "type": "relabel"}.items() <= t["history"][-1].items()
    res = runner.invoke(cli, ["--data", path, "aggregate", "relabel", old,
                              w["data"].codes.code(w["spares"], 1, "case_outer")])
    assert res.exit_code == 1
    assert (f"Error: label 2:0 case_outer {old} was replaced by label {w['spares'].id}:0 "
            f"case_outer {new}") in res.output
    res = runner.invoke(cli, ["--data", path, "aggregate", "relabel", new,
                              w["data"].codes.code(w["spares"], 1, "case_outer")])
    assert res.exit_code == 0 and res.output.startswith("relabelled (event ")
    res = runner.invoke(cli, ["--data", path, "code", "verify", new, "--json"])
    assert "voided" in res.output


def test_a_one_code_level_is_relabelled_too(world):
    """A pallet has one code: relabelling it keeps the pallet, its cases and distributor."""
    w, agg = world, world["agg"]
    spare = w["data"].create_batch("pallet", 1)
    new = w["data"].codes.code(spare, 0, "pallet")
    agg.relabel(_pallet(w), new)
    assert _verdict(w, _pallet(w)) == "voided"
    got = w["pipe"].check(new)
    assert got.verdict == "genuine" and got.distributor == "gz-1"
    assert (got.batch, got.serial) == (w["cases"].id + 1, 0)
    assert _scan(w, _code(w, "caps", 0, "cap_inner")).ancestors[1]["batch"] == w["cases"].id + 1
    assert len(agg.trace(new)["children"]) == 2


def test_a_trace_renders_a_relabelled_unit_by_its_label_in_use(world):
    """The hunt's t4: a trace's ancestors and children carry the replacement label's code
    (the dead first code would be refused by the command the operator copies it into)."""
    w, agg = world, world["agg"]
    old, first = _code(w, "cases", 0, "case_outer"), _code(w, "spares", 0, "case_outer")
    agg.relabel(old, first)
    kids = [c["code"] for c in agg.trace(_pallet(w), render=True)["children"]]
    assert kids == [first, _code(w, "cases", 1, "case_outer")]
    (parent, pallet) = agg.trace(_code(w, "caps", 0, "cap_inner"), render=True)["ancestors"]
    assert parent["code"] == first and pallet["code"] == _pallet(w)
    assert (parent["batch"], parent["serial"]) == (w["cases"].id, 0)  # still the unit
    assert agg.move([_code(w, "caps", 0, "cap_outer")], to=parent["code"]) == []
    # replaced in turn: the label in use now
    second = _code(w, "spares", 1, "case_outer")
    agg.relabel(first, second)
    assert agg.trace(_pallet(w), render=True)["children"][0]["code"] == second
    assert agg.code_of(unit_id(w["cases"].id, 0)) == second
    assert agg.code_of(unit_id(w["cases"].id, 0), "case_inner") == _code(w, "cases", 0,
                                                                          "case_inner")
    # without render nothing is rendered (the scan path)
    assert "code" not in agg.trace(_pallet(w))["children"][0]


def test_relabel_refuses_a_new_label_packed_and_emptied_again(world, tmp_path):
    """The hunt's t9: a carton packed on the line and unpacked (拆补包装) is no longer
    linked, but it is not fresh: refused, nothing written."""
    w, agg, data = world, world["agg"], world["data"]
    loose = data.create_batch("cap", 24)
    spare = _code(w, "spares", 0, "case_outer")
    agg.link(spare, [data.codes.code(loose, i, "cap_outer") for i in range(24)])
    assert len(agg.unpack(spare)) == 24
    old = _code(w, "cases", 0, "case_outer")
    with pytest.raises(Conflict, match=r"has a history \(pack, unpack\).* use a fresh label"):
        agg.relabel(old, spare)
    assert _verdict(w, old) == "genuine"
    # a cap loaded in a case by a line file (which indexes the case only), then moved out
    # and taken out again: the same
    more = data.create_batch("cap", 2)
    cap = data.codes.code(more, 0, "cap_outer")
    f = tmp_path / "line.csv"
    f.write_text(f"{_code(w, 'spares', 1, 'case_outer')},{cap}\n")
    assert agg.load(f).links_added == 1
    agg.move([cap], to=_code(w, "spares", 2, "case_outer"))
    agg.unpack(_code(w, "spares", 2, "case_outer"))
    with pytest.raises(Conflict, match=r"has a history \(move, unpack\)"):
        agg.relabel(_code(w, "caps", 0, "cap_outer"), cap)
    # a fresh one is taken
    agg.relabel(old, _code(w, "spares", 3, "case_outer"))
    assert _verdict(w, old) == "voided"


def _activate(agg, **where):
    return agg.activate(sku="SKU-2", name="Spare", lot="L2", production_date="2026-11-21",
                        **where)


def test_activating_a_spare_batch_leaves_out_the_units_that_gave_their_label(world):
    """A relabel's NEW unit is no item: its label stands for another unit, its other codes
    are dead. Activating its batch later leaves it out (as voided units are), so the
    activated counts (the scan rate's denominator) hold real items only; a unit whose
    labels were all replaced is still one."""
    w, agg, data = world, world["agg"], world["data"]
    fresh = data.create_batch("case", 2)  # real cases, not yet activated
    inner_spares = data.create_batch("case", 1)
    spare = lambda s, role="case_outer": _code(w, "spares", s, role)
    agg.relabel(_code(w, "cases", 0, "case_outer"), spare(0))
    agg.relabel(spare(0), spare(1))  # the replacement damaged in turn: spare 0 is all dead
    # fresh case 0 gets both its labels replaced: it stays an item
    agg.relabel(data.codes.code(fresh, 0, "case_outer"), spare(2))
    agg.relabel(data.codes.code(fresh, 0, "case_inner"),
                data.codes.code(inner_spares, 0, "case_inner"))
    before = agg.activated_counts()["case"]
    rec = _activate(agg, batch=w["spares"].id)  # spares 0-2 gave their label, 3 is fresh
    assert (rec["units"], rec["relabel_skipped"], rec["voided_skipped"]) == (1, 3, 0)
    rec = _activate(agg, batch=fresh.id)
    assert (rec["units"], rec["relabel_skipped"]) == (2, 0)
    with pytest.raises(Conflict, match="nothing to activate.*relabel"):
        _activate(agg, batch=inner_spares.id)
    assert agg.activated_counts()["case"] == before + 3
    assert not agg.is_active(unit_id(w["spares"].id, 1))
    assert agg.is_active(unit_id(w["spares"].id, 3)) and agg.is_active(unit_id(fresh.id, 0))
    assert [_verdict(w, c) for c in (spare(1), spare(2), spare(3), spare(0, "case_inner"),
                                     data.codes.code(inner_spares, 0, "case_inner"))] == [
        "genuine", "genuine", "genuine", "voided", "genuine"]
    got = w["pipe"].check(spare(2))
    assert (got.batch, got.serial, got.product["sku"]) == (fresh.id, 0, "SKU-2")


def test_a_one_code_spare_unit_relabelled_again_is_left_out_of_activation(world):
    """A one-code level: the spare pallet's only label, replaced in turn, is dead like the
    original pallet's, yet only the original is an item."""
    w, agg, data = world, world["agg"], world["data"]
    spare = data.create_batch("pallet", 3)
    new, newer = data.codes.code(spare, 0, "pallet"), data.codes.code(spare, 1, "pallet")
    agg.relabel(_pallet(w), new)
    agg.relabel(new, newer)
    rec = _activate(agg, batch=spare.id)
    assert (rec["units"], rec["relabel_skipped"]) == (1, 2)
    assert agg.is_active(unit_id(spare.id, 2)) and not agg.is_active(unit_id(spare.id, 0))


def test_a_replacement_labels_scan_event_names_the_label(world):
    """The event of a replacement label's scan names the unit and carries the printed
    label (its count is the label's own: see test_stats); other events carry none."""
    w, agg = world, world["agg"]
    old, new = _code(w, "cases", 0, "case_outer"), _code(w, "spares", 0, "case_outer")
    _scan(w, old, "store")
    agg.relabel(old, new)
    _scan(w, new, "store")
    first, second = w["pipe"].scans.events()
    assert "label" not in first
    assert (second["unit"], second["label"], second["count"]) == (
        unit_id(w["cases"].id, 0), unit_id(w["spares"].id, 0), 1)
