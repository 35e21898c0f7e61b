"""No unit sits below one that is with another distributor, whichever way it got there:
a ship, transfer or return of a unit packed in a parent that stays in other hands takes
it out of that parent (a case sent on has left its pallet), and a later transfer or
return of the parent never reassigns it. A pallet rebuilt from a distributor's cases
(拆垛组垛) ships to it and transfers with them. Each scenario also asks the scan path
(``scan_trace``), which decides diversion (窜货) and BbC rebates."""

from __future__ import annotations

import pytest
from test_shipping_logistics import _dist, _packed_by_an_older_release
from test_shipping_logistics import world  # noqa: F401 - the fixture

from engine import Conflict


def _scanned_by(r, code):
    dist = r.agg.scan_trace(r.agg.unit(code))["distributor"]
    return dist["id"] if dist else None


def test_a_case_transferred_off_its_pallet_stays_with_its_distributor(world):  # noqa: F811
    """Pallet shipped to A; one case transferred to B. The transfer of the pallet to a third
    and its return made the case (at B) trace to the third, then as returned."""
    r, agg = world, world.agg
    agg.add_distributor("C", "C", ["4407"])
    agg.ship([r.pallets[0]], "A")
    rec = agg.transfer([r.cases[1]], "B")
    assert rec["taken_out"] == [[agg.unit(r.cases[1]), agg.unit(r.pallets[0])]]
    assert agg.links()[agg.unit(r.cases[0])] == agg.unit(r.pallets[0])
    assert agg.unit(r.cases[1]) not in agg.links()
    agg.transfer([r.pallets[0]], "C")
    assert _dist(r, r.cases[1]) == ("B", False) and _scanned_by(r, r.caps[30]) == "B"
    assert _dist(r, r.cases[0]) == ("C", False) and _scanned_by(r, r.caps[3]) == "C"
    agg.return_goods([r.pallets[0]])
    assert _dist(r, r.cases[1]) == ("B", False) and _scanned_by(r, r.caps[30]) == "B"
    assert _dist(r, r.cases[0]) == (None, True)
    agg.check_consistency()


def test_a_returned_cap_shipped_elsewhere_leaves_its_case(world):  # noqa: F811
    """Pallet with A; one cap returned; shipping that cap to B was accepted with the cap
    still in its case, and a transfer of the pallet then moved it to the pallet's new
    distributor. A return takes the cap out of its case (it is back at the brand)."""
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    eid = agg.return_goods([r.caps[3]])  # back at the brand: out of the case it was in
    assert agg.event(eid)["taken_out"] == [[agg.unit(r.caps[3]), agg.unit(r.cases[0])]]
    assert _dist(r, r.caps[3]) == (None, True) and agg.unit(r.caps[3]) not in agg.links()
    assert "taken_out" not in agg.ship([r.caps[3]], "B")
    agg.add_distributor("C", "C", ["4407"])
    agg.transfer([r.pallets[0]], "C")
    assert _scanned_by(r, r.caps[3]) == "B" and _scanned_by(r, r.caps[4]) == "C"
    agg.check_consistency()


def test_a_unit_holding_goods_of_another_distributor_is_refused_naming_them(world):  # noqa: F811
    """A pallet rebuilt of A's two cases and B's one, and of A's case and the brand's (as an
    older release's moves left them: moves refuse it now, tests/test_shipping_moves.py):
    shipping or transferring it would carry goods of other hands along. Refused, naming
    the unit that differs from most of the pallet (not the first met) by its printed code,
    a case rather than its caps, with the command that takes it out; nothing is written."""
    r, agg = world, world.agg
    agg.add_distributor("C", "C", ["4407"])
    agg.ship([r.pallets[0]], "A")
    agg.ship([r.pallets[1]], "B")
    agg.move([r.cases[0], r.cases[1]], to=r.pallets[2])
    agg.unpack(r.pallets[1], [r.cases[2]])  # it stays B's
    _packed_by_an_older_release(r, r.pallets[2], r.cases[2])
    with pytest.raises(Conflict, match=rf"case 2:2 {r.cases[2]} inside pallet 3:2 {r.pallets[2]} is with "
                                       r"another distributor \(shipment 2 to B\) than the rest \(A\): a "
                                       rf"transfer would carry it along; take it out first \(wuma aggregate "
                                       rf"unpack {r.pallets[2]} --child {r.cases[2]}\)"):
        agg.transfer([r.pallets[2]], "C")
    with pytest.raises(Conflict, match=rf"case 2:0 {r.cases[0]} inside pallet 3:2 .* was already shipped "
                                       r"\(shipment 1 to A\): transfer it to C first"):
        agg.ship([r.pallets[2]], "C")
    agg.unpack(r.pallets[2], [r.cases[2]])
    agg.move([r.cases[3]], to=r.pallets[3])  # B's: pallet 3 holds B's case alone
    agg.return_goods([r.cases[3]])
    _packed_by_an_older_release(r, r.pallets[2], r.cases[3])  # the brand's onto A's
    with pytest.raises(Conflict, match=rf"case 2:3 {r.cases[3]} inside pallet 3:2 .* is not with a "
                                       rf"distributor .* while the rest is with A: ship it to A first"):
        agg.transfer([r.pallets[2]], "C")
    assert _dist(r, r.cases[0]) == ("A", False) and _dist(r, r.cases[2]) == ("B", False)
    assert [e["type"] for e in agg.events()].count("transfer") == 0
    agg.check_consistency()


def test_a_pallet_rebuilt_from_a_distributors_cases_ships_and_transfers(world):  # noqa: F811
    """Cases of a pallet shipped to A moved onto a fresh pallet (拆垛组垛): the new pallet
    could be neither shipped nor transferred, to A or anyone. It ships to A (its cases'
    distributor), and transfers, cases and all; shipping it elsewhere is refused."""
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.move(r.cases[0:2], to=r.pallets[2])
    with pytest.raises(Conflict, match=r"as is everything 3:2 holds: to pass it to B, transfer it"):
        agg.ship([r.pallets[2]], "B")
    rec = agg.transfer([r.pallets[2]], "B")
    assert "taken_out" not in rec
    assert _dist(r, r.pallets[2]) == ("B", False) and _scanned_by(r, r.caps[40]) == "B"
    agg.move([r.cases[2]], to=r.pallets[3])  # the brand's own pallet 1 cases onto another
    agg.ship([r.pallets[3]], "A")
    assert _dist(r, r.pallets[3]) == ("A", False) and _scanned_by(r, r.caps[50]) == "A"
    agg.check_consistency()


def test_a_case_sent_on_or_returned_from_a_rebuilt_pallet_leaves_it(world):  # noqa: F811
    """A rebuilt pallet has no distributor of its own: it is with the one its goods are
    with. A case transferred or returned from it stayed on it, and the pallet could then
    be neither transferred nor returned. A case shipped alone off the brand's own pallet
    leaves it too."""
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.move(r.cases[0:2], to=r.pallets[2])
    rec = agg.transfer([r.cases[0]], "B")
    assert rec["taken_out"] == [[agg.unit(r.cases[0]), agg.unit(r.pallets[2])]]
    eid = agg.return_goods([r.cases[1]])
    assert agg.event(eid)["taken_out"] == [[agg.unit(r.cases[1]), agg.unit(r.pallets[2])]]
    agg.move([r.cases[0]], to=r.pallets[3])
    agg.transfer([r.pallets[3]], "A")
    assert _dist(r, r.cases[0]) == ("A", False) and _dist(r, r.cases[1]) == (None, True)
    rec = agg.ship([r.cases[2]], "B")  # off pallet 1, the brand's
    assert rec["taken_out"] == [[agg.unit(r.cases[2]), agg.unit(r.pallets[1])]]
    agg.ship([r.pallets[1]], "A")
    assert _scanned_by(r, r.caps[50]) == "B" and _scanned_by(r, r.caps[75]) == "A"
    agg.check_consistency()


def test_activate_a_pallet_takes_a_pallets_code_only(world):  # noqa: F811
    """A case's code given as --pallet activated only that case."""
    r, agg = world, world.agg
    with pytest.raises(ValueError, match=rf"{r.cases[5]} is a case code, not a pallet's"):
        agg.activate(sku="S", name="N", lot="L", production_date="2026-11-01", pallets=[r.cases[5]])


def test_a_workers_record_caches_stay_bounded(world, monkeypatch):  # noqa: F811
    """Shipment, activation and distributor records are cached by every worker for good
    (they never change), and a worker runs for months: the caches are emptied when full."""
    import engine.aggregation as aggregation

    r, agg = world, world.agg
    monkeypatch.setattr(aggregation, "_CACHE_MAX", 3)
    for c in range(4):
        agg.ship([r.cases[4 + c]], "A")
    for c in range(4):
        assert agg.scan_trace(agg.unit(r.cases[4 + c]))["distributor"]["id"] == "A"
        assert len(agg._cache) <= 3
