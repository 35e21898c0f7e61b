"""Shipping and the warehouse operations that touch it: a unit keeps the distributor it
was shipped to (through its own record or an ancestor's) until a ship, transfer or return
says otherwise; unpack, move and replace never change it silently."""

from __future__ import annotations

import pytest

from engine import Conflict, ingest
from engine.aggregation import unit_id

URL = "HTTPS://S.EXAMPLE.CN/Q/"


@pytest.fixture
def world(run):
    """Cases 0-3 of 24 caps; cases 0, 1 on pallet 0 and 2, 3 on pallet 1; all activated;
    distributors A (4401) and B (4406). Cases 4-9 and pallets 2-3 are loose labels."""
    agg = run.agg
    for c in range(4):
        agg.link(run.cases[c], run.caps[24 * c:24 * c + 24])
    agg.link(run.pallets[0], run.cases[0:2])
    agg.link(run.pallets[1], run.cases[2:4])
    for p in run.pallets[:2]:
        agg.activate(sku="S", name="N", lot="L", production_date="2026-11-01", pallets=[p])
    agg.add_distributor("A", "A", ["4401"])
    agg.add_distributor("B", "B", ["4406"])
    return run


def _dist(r, code):
    t = r.agg.trace(code)
    return (t["distributor"] or {}).get("id"), t["returned"]


def _case(r, i):
    return unit_id(r.case_batch, i)


def _packed_by_an_older_release(r, parent, child):
    """Pack ``child`` (packed nowhere) into ``parent`` whatever their hands, as a release
    before ``move`` and ``link`` refused other hands left goods (tests/test_shipping_moves.py):
    ship, transfer and return still meet such parents."""
    agg = r.agg
    with agg.store.write() as txn:
        agg._add_run(txn, agg.unit(parent), agg.unit(child), agg.unit(child))


# -- 1. unpack / move keep the distributor ----------------------------------------------------
def test_unpack_from_shipped_pallet_keeps_distributor(world):
    r, agg = world, world.agg
    sid = agg.ship([r.pallets[0]], "A")["id"]
    agg.unpack(r.pallets[0], [r.cases[0]])  # distributor A splits the pallet (拆垛)
    assert _dist(r, r.cases[0]) == ("A", False)
    assert _dist(r, r.caps[0]) == ("A", False)
    assert agg.scan_trace(agg.unit(r.caps[0]))["distributor"]["id"] == "A"
    assert agg.trace(r.cases[0])["shipment"]["via"] == _case(r, 0)
    ev = [e for e in agg.events() if e["type"] == "unpack"][-1]
    assert ev["kept_shipments"] == [[_case(r, 0), sid]]
    # a case with a record of its own needs no second one; the event says nothing then
    agg.unpack(r.cases[0], [r.caps[0]])
    assert _dist(r, r.caps[0]) == ("A", False)
    agg.check_consistency()


def test_unpack_from_returned_pallet_keeps_it_returned(world):
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.return_goods([r.pallets[0]])
    agg.unpack(r.pallets[0])
    assert _dist(r, r.cases[1]) == (None, True)
    assert _dist(r, r.caps[30]) == (None, True)
    agg.ship([r.cases[1]], "B")  # returned goods can go out again
    assert _dist(r, r.caps[30]) == ("B", False)
    agg.check_consistency()


def test_move_keeps_distributor(world):
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.move([r.cases[0]], to=r.pallets[2])  # a fresh pallet label: 组垛 at the distributor
    assert _dist(r, r.cases[0]) == ("A", False) and _dist(r, r.caps[5]) == ("A", False)
    assert _dist(r, r.pallets[2]) == (None, False)
    agg.ship([r.pallets[3]], "A")
    agg.move([r.cases[1]], to=r.pallets[3])  # onto another pallet of the same distributor
    assert _dist(r, r.cases[1]) == ("A", False)
    ev = [e for e in agg.events() if e["type"] == "move"]
    assert [k[0] for e in ev for k in e["kept_shipments"]] == [_case(r, 0), _case(r, 1)]
    agg.check_consistency()


def test_move_onto_pallet_of_another_distributor_is_refused(world):
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.ship([r.pallets[1]], "B")
    links = agg.links()
    with pytest.raises(Conflict, match="belongs to distributor A .* transfer .* first"):
        agg.move([r.cases[1]], to=r.pallets[1])
    with pytest.raises(Conflict, match="not with a distributor .* ship .* first"):
        agg.move([r.cases[4]], to=r.pallets[1])  # a case never shipped
    assert agg.links() == links and _dist(r, r.cases[1]) == ("A", False)
    assert [e["type"] for e in agg.events()][-1] == "ship"
    agg.transfer([r.cases[1]], "B")  # the way to do it: the change of hands is recorded
    agg.move([r.cases[1]], to=r.pallets[1])
    assert _dist(r, r.cases[1]) == ("B", False) and agg.links()[_case(r, 1)] == unit_id(
        r.pallet_batch, 1)
    agg.check_consistency()


# -- 1b. link and the line-collection load follow the rule of move -----------------------------
def _hands(world):
    """Pallet 0 (cases 0, 1) shipped to A, loose pallet 2 shipped to B, loose case 4 to A,
    loose case 5 to B; cap 0 taken out of case 0 (it keeps A); cases 6-9 never shipped."""
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.ship([r.pallets[2]], "B")
    agg.ship([r.cases[4]], "A")
    agg.ship([r.cases[5]], "B")
    agg.unpack(r.cases[0], [r.caps[0]])
    return r, agg


def test_link_onto_a_parent_of_another_distributor_is_refused(world):
    r, agg = _hands(world)
    links, events = agg.links(), len(agg.events())
    with pytest.raises(Conflict, match=rf"^case 2:4 {r.cases[4]} belongs to distributor A but "
                                       rf"pallet 3:2 {r.pallets[2]} was shipped to B: transfer it "
                                       rf"to B first \(wuma transfer {r.cases[4]} --to B\), "
                                       "then pack it$"):
        agg.link(r.pallets[2], [r.cases[4]])
    with pytest.raises(Conflict, match=rf"^case 2:6 {r.cases[6]} is not with a distributor "
                                       rf"\(never shipped, or returned\) but pallet 3:2 "
                                       rf"{r.pallets[2]} was shipped to B: ship it to B first "
                                       rf"\(wuma ship {r.cases[6]} --to B\), then pack it$"):
        agg.link(r.pallets[2], [r.cases[5], r.cases[6]])  # all or nothing: 5 is not packed
    # the parent's distributor may come through its ancestors (case 0 is on pallet 0, A)
    with pytest.raises(Conflict, match=rf"^cap 1:100 {r.caps[100]} is not with a distributor .* "
                                       rf"but case 2:0 {r.cases[0]} \(on pallet 3:0 "
                                       rf"{r.pallets[0]}\) was shipped to A"):
        agg.link(r.cases[0], [r.caps[100]])
    agg.return_goods([r.cases[4]])
    with pytest.raises(Conflict, match=rf"^case 2:4 {r.cases[4]} is not with a distributor"):
        agg.link(r.pallets[2], [r.cases[4]])  # returned: none
    assert agg.links() == links and len(agg.events()) == events + 1  # the return
    assert _dist(r, r.cases[5]) == ("B", False) and _dist(r, r.cases[6]) == (None, False)
    # allowed: the same distributor, or a parent with none (the unit keeps its own)
    assert agg.link(r.pallets[2], [r.cases[5]]) == 1
    assert agg.link(r.cases[0], [r.caps[0]]) == 1
    assert agg.link(r.pallets[3], [r.cases[6], r.cases[4]]) == 2
    assert _dist(r, r.cases[4]) == (None, True) and _dist(r, r.cases[6]) == (None, False)
    agg.check_consistency()


@pytest.mark.parametrize("dense", [False, True], ids=["range_reads", "lookups"])
def test_load_onto_a_parent_of_another_distributor_is_refused(world, tmp_path, monkeypatch,
                                                               dense):
    r, agg = _hands(world)
    if dense:  # the store read unit by unit, as for parents scattered over a packed batch
        monkeypatch.setattr(ingest, "_DENSE", 0)
    lines = [",".join([r.pallets[3], r.cases[6]]),  # 1: a parent with no distributor
             ",".join([r.pallets[2], r.cases[5], r.cases[4]]),  # 2: field 3 is A's
             ",".join([r.cases[0], r.caps[0], r.caps[100]]),  # 3: A through pallet 0
             ",".join([r.cases[7], r.caps[101]]),  # 4: fresh goods
             ",".join([r.pallets[2], r.cases[8]])]  # 5: never shipped, onto B's
    f = tmp_path / "line.csv"
    f.write_text("\n".join(lines) + "\n")
    links = agg.links()
    rep = agg.load(f)
    assert not rep.loaded and agg.links() == links  # all or nothing
    then = ", then load this record again"
    none = "is not with a distributor (never shipped, or returned) but"
    assert [(b.line, b.reason) for b in rep.bad] == [
        (2, (f"field 3: case 2:4 {r.cases[4]} belongs to distributor A but pallet 3:2 "
             f"{r.pallets[2]} was shipped to B: transfer it to B first (wuma transfer "
             f"{r.cases[4]} --to B){then}")),
        (3, (f"field 3: cap 1:100 {r.caps[100]} {none} case 2:0 {r.cases[0]} (on pallet 3:0 "
             f"{r.pallets[0]}) was shipped to A: ship it to A first (wuma ship {r.caps[100]} "
             f"--to A){then}")),
        (5, (f"field 2: case 2:8 {r.cases[8]} {none} pallet 3:2 {r.pallets[2]} was shipped to "
             f"B: ship it to B first (wuma ship {r.cases[8]} --to B){then}"))]
    rej = tmp_path / "rejects.csv"
    rep = agg.load(f, skip_bad=True, reject_file=rej)
    assert rep.loaded and rep.links_added == 2 and [b.line for b in rep.bad] == [2, 3, 5]
    assert f"# line 2: field 3: case 2:4 {r.cases[4]} belongs to distributor A" in rej.read_text()
    assert _dist(r, r.cases[8]) == (None, False) and _dist(r, r.caps[100]) == (None, False)
    agg.ship([r.cases[8]], "B")  # what the reason says to do
    agg.transfer([r.cases[4]], "B")
    assert agg.load(f.read_bytes().replace(lines[2].encode() + b"\n", b"")).links_added == 3
    assert _dist(r, r.cases[4]) == ("B", False) and agg.links()[_case(r, 8)] == unit_id(
        r.pallet_batch, 2)
    agg.check_consistency()


def test_load_reads_no_shipment_when_nothing_was_shipped(world, tmp_path, monkeypatch):
    r, agg = world, world.agg

    def never(*a):
        raise AssertionError("shipments read with none in the store")

    monkeypatch.setattr(ingest, "_resolved_shipments", never)
    rep = agg.load(",".join([r.pallets[2], r.cases[4], r.cases[5]]).encode())
    assert rep.loaded and rep.links_added == 2


# -- 2. return takes everything below ----------------------------------------------------------
def test_return_of_a_pallet_returns_what_is_on_it(world):
    """A case transferred to another distributor has left the pallet (see
    tests/test_shipping_rules.py): the pallet's return leaves it with B."""
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.transfer([r.cases[1]], "B")
    agg.return_goods([r.pallets[0]])
    assert _dist(r, r.cases[0]) == (None, True) and _dist(r, r.caps[0]) == (None, True)
    assert agg.scan_trace(agg.unit(r.caps[0]))["distributor"] is None
    assert _dist(r, r.cases[1]) == ("B", False) and _dist(r, r.caps[24]) == ("B", False)
    with pytest.raises(Conflict, match="nothing to return"):
        agg.return_goods([r.cases[0]])
    agg.check_consistency()


def test_transfer_of_a_pallet_leaves_its_returned_case_returned(world):
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.return_goods([r.cases[0]])
    agg.transfer([r.pallets[0]], "B")
    assert _dist(r, r.cases[0]) == (None, True) and _dist(r, r.cases[1]) == ("B", False)


# -- 3. ship looks below ------------------------------------------------------------------------
def test_ship_refuses_a_pallet_holding_a_shipped_case(world):
    """A case shipped alone leaves its pallet (see tests/test_shipping_rules.py), and is not
    moved back onto it (tests/test_shipping_moves.py); put back on it by an older release,
    the pallet holds A's case and is refused to B; returned, it leaves it again, and once
    back on the pallet it ships with it."""
    r, agg = world, world.agg
    rec = agg.ship([r.cases[0]], "A")
    assert rec["taken_out"] == [[_case(r, 0), agg.unit(r.pallets[0])]]
    with pytest.raises(Conflict, match=r"^case 2:0 \S+ belongs to distributor A but pallet 3:0 "
                                       r"\S+ is not with a distributor"):
        agg.move([r.cases[0]], to=r.pallets[0])
    _packed_by_an_older_release(r, r.pallets[0], r.cases[0])
    with pytest.raises(Conflict, match=r"case 2:0 \S+ inside .* already shipped \(shipment 1 to A\).*"
                                       "transfer"):
        agg.ship([r.pallets[0]], "B")
    assert _dist(r, r.cases[0]) == ("A", False) and _dist(r, r.cases[1]) == (None, False)
    assert [e["type"] for e in agg.events()].count("ship") == 1
    agg.return_goods([r.cases[0]])
    agg.move([r.cases[0]], to=r.pallets[0])
    agg.ship([r.pallets[0]], "B")
    assert _dist(r, r.cases[0]) == ("B", False)


# -- 7. replace takes a fresh label ------------------------------------------------------------
def test_replace_refuses_a_label_with_a_shipment_of_its_own(world):
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.ship([r.cases[4]], "B")  # a loose label shipped on its own
    with pytest.raises(Conflict, match="shipment record of its own .*to B.* fresh"):
        agg.replace(r.cases[0], r.cases[4])
    assert _dist(r, r.caps[0]) == ("A", False)
    agg.return_goods([r.cases[4]])
    with pytest.raises(Conflict, match="returned to the brand"):
        agg.replace(r.cases[0], r.cases[4])
    agg.replace(r.cases[0], r.cases[5])  # a fresh label
    assert _dist(r, r.cases[5]) == ("A", False) and _dist(r, r.caps[0]) == ("A", False)
    assert agg.trace(r.caps[0])["ancestors"][0]["uid"] == _case(r, 5)
    agg.check_consistency()


def test_replace_keeps_shipment_of_children_and_own_record(world):
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.transfer([r.cases[1]], "B")
    agg.replace(r.cases[1], r.cases[6])  # the old label had its own record (to B)
    assert _dist(r, r.cases[6]) == ("B", False) and _dist(r, r.caps[24]) == ("B", False)
    assert agg.trace(r.cases[1])["shipment"] is None  # the old label's record moved
    agg.check_consistency()


# -- 8a. history of the parents ------------------------------------------------------------------
def test_move_and_replace_show_in_the_old_parents_history(world):
    r, agg = world, world.agg
    agg.move([r.cases[1]], to=r.pallets[2])
    assert "move" in [h["type"] for h in agg.trace(r.pallets[0])["history"]]
    agg.move([r.cases[4]], to=r.pallets[2])  # from no parent: nothing more to index
    agg.replace(r.cases[2], r.cases[7])
    assert "replace" in [h["type"] for h in agg.trace(r.pallets[1])["history"]]


# -- 8c. voided units ---------------------------------------------------------------------------
def test_voided_units_cannot_be_shipped_received_or_returned(world):
    r, agg = world, world.agg
    agg.void([r.cases[4]])
    with pytest.raises(Conflict, match="is voided"):
        agg.ship([r.cases[4]], "A")
    agg.ship([r.pallets[0]], "A")
    agg.void([r.cases[0]])
    for op in (lambda: agg.receive([r.cases[0]]), lambda: agg.return_goods([r.cases[0]]),
               lambda: agg.transfer([r.cases[0]], "B")):
        with pytest.raises(Conflict, match="is voided: a voided label cannot be"):
            op()
    # a void marks the unit, not what is packed in it: the caps of the voided case and the
    # units of a pallet never activated still go about their business
    agg.receive([r.caps[0]])
    agg.ship([r.pallets[2]], "B")
    assert _dist(r, r.pallets[2]) == ("B", False)


# -- 5. each unit once -----------------------------------------------------------------------------
def test_receive_and_return_count_each_unit_once(world):
    r, agg = world, world.agg
    w = r.data.spec.role(r.data.batches.get(r.case_batch).roles[0]).format.length
    inner0 = r.data.codes.render(r.data.batches.get(r.case_batch), 0, 1)[0][w:].tobytes().decode()
    agg.ship([r.pallets[0]], "A")
    eid = agg.receive([r.pallets[0], URL + r.pallets[0], r.pallets[0].lower()])
    assert agg.event(eid)["units"] == [unit_id(r.pallet_batch, 0)]
    eid = agg.return_goods([r.cases[0], r.cases[0].lower(), inner0, r.cases[1]])
    assert agg.event(eid)["units"] == [_case(r, 0), _case(r, 1)]
    with pytest.raises(ValueError, match="no units"):
        agg.receive([])
