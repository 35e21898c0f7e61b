"""Putting a unit into a parent (``aggregate move``, ``link``) keeps every parent in one
pair of hands: a unit goes into a parent that is with the same distributor as the unit, or
with none when the unit is with none (never shipped, or returned to the brand), or into
an empty parent with no distributor (a fresh pallet label, 拆垛组垛). A parent with no
distributor of its own is with the one its goods are with (a rebuilt pallet), or with
none (a pallet at the factory). Refused otherwise, naming the unit by its printed code,
both hands and what to do first, with nothing written: the ship, transfer or return of
the parent would otherwise be refused later (or carry the unit along)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_shipping_logistics import _dist
from test_shipping_logistics import world  # noqa: F401 - the fixture

from engine import Conflict


def _scanned_by(r, code):
    dist = r.agg.scan_trace(r.agg.unit(code))["distributor"]
    return dist["id"] if dist else None


def _unchanged(agg):
    """What a refused move or link must leave as it was: links, events, shipment records."""
    return agg.links(), len(agg.events()), {u: agg.trace_unit(u, history=False)["shipment"]
                                           for u in agg.links()}


def test_a_rebuilt_pallet_refuses_a_case_of_another_distributor(world):  # noqa: F811
    """A's cases moved onto a fresh pallet (拆垛组垛); B's case moved onto it was taken,
    and shipping or transferring the pallet was refused afterwards. Refused at the move;
    transferred to A first (what the message says), the case goes on, and the pallet
    passes with all it holds."""
    r, agg = world, world.agg
    agg.add_distributor("C", "C", ["4407"])
    agg.ship([r.pallets[0]], "A")
    agg.ship([r.pallets[1]], "B")
    agg.move(r.cases[0:2], to=r.pallets[2])
    before = _unchanged(agg)
    with pytest.raises(Conflict) as e:
        agg.move([r.cases[2]], to=r.pallets[2])
    assert str(e.value) == (
        f"case 2:2 {r.cases[2]} belongs to distributor B but pallet 3:2 {r.pallets[2]} holds "
        f"goods of A (case 2:0 {r.cases[0]}): transfer it to A first (wuma transfer "
        f"{r.cases[2]} --to A), then move it")
    assert _unchanged(agg) == before
    agg.transfer([r.cases[2]], "A")
    agg.move([r.cases[2]], to=r.pallets[2])
    rec = agg.transfer([r.pallets[2]], "C")
    assert "taken_out" not in rec
    assert [_dist(r, c)[0] for c in r.cases[0:3]] == ["C", "C", "C"]
    assert _scanned_by(r, r.caps[50]) == "C" and _dist(r, r.cases[3]) == ("B", False)
    agg.check_consistency()


def test_a_pallet_at_the_factory_refuses_a_case_of_a_distributor(world):  # noqa: F811
    """A case shipped alone to B (it left its pallet) was moved onto the brand's own
    pallet; shipping that pallet to A was then refused naming the case. Refused at the
    move and at a link; the pallet ships to A without it."""
    r, agg = world, world.agg
    agg.ship([r.cases[2]], "B")
    before = _unchanged(agg)
    told = (f"case 2:2 {r.cases[2]} belongs to distributor B but pallet 3:0 {r.pallets[0]} is "
            "not with a distributor (never shipped, or returned): return it to the brand first "
            f"if it came back (wuma return {r.cases[2]}), then ")
    with pytest.raises(Conflict) as e:
        agg.move([r.cases[2]], to=r.pallets[0])
    assert str(e.value) == told + "move it"
    with pytest.raises(Conflict) as e:
        agg.link(r.pallets[0], [r.cases[2]])
    assert str(e.value) == told + "pack it"
    assert _unchanged(agg) == before
    agg.ship([r.pallets[0]], "A")
    assert _scanned_by(r, r.caps[3]) == "A" and _scanned_by(r, r.caps[50]) == "B"
    agg.check_consistency()


def test_a_case_returned_to_the_brand_goes_onto_a_factory_pallet(world):  # noqa: F811
    """Back at the brand, a case is in the same hands as the factory's pallets: it goes on,
    and ships with the pallet."""
    r, agg = world, world.agg
    agg.ship([r.cases[2]], "B")
    agg.return_goods([r.cases[2]])
    assert agg.move([r.cases[2]], to=r.pallets[0]) == [agg.unit(r.cases[2])]
    agg.ship([r.pallets[0]], "A")
    assert _scanned_by(r, r.caps[50]) == "A" and _dist(r, r.cases[2]) == ("A", False)
    agg.check_consistency()


def test_an_empty_pallet_takes_the_hands_of_the_first_unit_moved_onto_it(world):  # noqa: F811
    """A fresh pallet label takes a case of any hands; the cases moved onto it after, in the
    same move or later, must be in the same ones. A refused move moves nothing."""
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.ship([r.pallets[1]], "B")
    before = _unchanged(agg)
    with pytest.raises(Conflict, match=rf"^case 2:2 {r.cases[2]} belongs to distributor B but "
                                       rf"pallet 3:3 {r.pallets[3]} holds goods of A \(case 2:0 "
                                       rf"{r.cases[0]}\): transfer it to A first"):
        agg.move([r.cases[0], r.cases[2]], to=r.pallets[3])
    assert _unchanged(agg) == before
    agg.move(r.cases[0:2], to=r.pallets[3])
    with pytest.raises(Conflict) as e:
        agg.move([r.cases[4]], to=r.pallets[3])  # the brand's case onto A's goods
    assert str(e.value) == (
        f"case 2:4 {r.cases[4]} is not with a distributor (never shipped, or returned) but "
        f"pallet 3:3 {r.pallets[3]} holds goods of A (case 2:0 {r.cases[0]}): ship it to A "
        f"first (wuma ship {r.cases[4]} --to A), then move it")
    agg.move([r.cases[4]], to=r.pallets[2])  # an empty pallet takes the brand's case too
    agg.ship([r.pallets[2]], "B")
    assert _dist(r, r.cases[4]) == ("B", False) and _dist(r, r.cases[0]) == ("A", False)
    agg.check_consistency()


def test_an_emptied_case_on_a_factory_pallet_refuses_a_cap_of_a_distributor(world):  # noqa: F811
    """An emptied case holds nothing, but it is on the brand's pallet: a cap of B's put in it
    would go to A with the pallet."""
    r, agg = world, world.agg
    agg.unpack(r.cases[0])
    agg.ship([r.caps[96]], "B")  # a loose cap
    with pytest.raises(Conflict) as e:
        agg.move([r.caps[96]], to=r.cases[0])
    assert str(e.value) == (
        f"cap 1:96 {r.caps[96]} belongs to distributor B but case 2:0 {r.cases[0]} (on pallet "
        f"3:0 {r.pallets[0]}) is not with a distributor (never shipped, or returned): return "
        f"it to the brand first if it came back (wuma return {r.caps[96]}), then move it")
    agg.move([r.caps[97]], to=r.cases[0])  # the brand's own cap
    agg.ship([r.pallets[0]], "A")
    assert _scanned_by(r, r.caps[97]) == "A" and _scanned_by(r, r.caps[96]) == "B"


def test_cli_move_refused_says_what_to_do(world):  # noqa: F811
    """``wuma aggregate move`` prints the refusal and exits 1, with no traceback."""
    from cli.main import cli

    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.ship([r.pallets[1]], "B")
    agg.move(r.cases[0:2], to=r.pallets[2])
    path = str(r.data.path)
    r.data.close()
    runner = CliRunner()
    res = runner.invoke(cli, ["--data", path, "aggregate", "move", r.cases[2], "--to",
                              r.pallets[2]])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output == (
        f"Error: case 2:2 {r.cases[2]} belongs to distributor B but pallet 3:2 {r.pallets[2]} "
        f"holds goods of A (case 2:0 {r.cases[0]}): transfer it to A first (wuma transfer "
        f"{r.cases[2]} --to A), then move it\n")
    res = runner.invoke(cli, ["--data", path, "transfer", r.cases[2], "--to", "A"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["--data", path, "aggregate", "move", r.cases[2], "--to",
                              r.pallets[2], "--json"])
    assert res.exit_code == 0 and len(json.loads(res.output)["moved"]) == 1
