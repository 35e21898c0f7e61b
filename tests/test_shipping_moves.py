"""Putting a unit into a parent (``aggregate move``, ``link``) keeps every parent in one
pair of hands: a unit goes into a parent that is with the same distributor as the unit, or
with none when the unit is with none (never shipped, or returned to the brand), or into
an empty parent with no distributor (a fresh pallet label, 拆垛组垛). A parent with no
distributor of its own is with the one its goods are with (a rebuilt pallet), or with
none (a pallet at the factory). Refused otherwise, naming the unit by its printed code,
both hands and what to do first, with nothing written: the ship, transfer or return of
the parent would otherwise be refused later (or carry the unit along). A parent an older
release left holding goods of several hands (the brand's counting as one) is in the hands
most of its goods are in, and takes no unit until the others are out."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from test_shipping_logistics import _dist, _packed_by_an_older_release
from test_shipping_logistics import world  # noqa: F401 - the fixture

from engine import Conflict


def _scanned_by(r, code):
    dist = r.agg.scan_trace(r.agg.unit(code))["distributor"]
    return dist["id"] if dist else None


def _refusal(call, *args, **kwargs) -> str:
    """The message of the Conflict ``call(*args, **kwargs)`` raises."""
    with pytest.raises(Conflict) as e:
        call(*args, **kwargs)
    return str(e.value)


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
    assert _refusal(agg.move, [r.cases[2]], to=r.pallets[2]) == (
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
    assert _refusal(agg.move, [r.cases[2]], to=r.pallets[0]) == told + "move it"
    assert _refusal(agg.link, r.pallets[0], [r.cases[2]]) == told + "pack it"
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
    # the brand's case onto A's goods
    assert _refusal(agg.move, [r.cases[4]], to=r.pallets[3]) == (
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
    assert _refusal(agg.move, [r.caps[96]], to=r.cases[0]) == (
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


# -- a parent in several hands (left by an older release) ---------------------------------------
NONE = "not with a distributor (never shipped, or returned)"


def _stray_on_the_brands_pallet(r):
    """Case 4 shipped to B, then put onto the brand's pallet 0 (cases 0 and 1, 48 caps,
    never shipped) as an older release's move or load left it."""
    r.agg.ship([r.cases[4]], "B")
    _packed_by_an_older_release(r, r.pallets[0], r.cases[4])


def test_a_pallet_holding_a_stray_case_takes_nothing_until_it_is_taken_out(world):  # noqa: F811
    """A brand case moved onto the brand's pallet holding B's stray case (a factory
    rebuild) was refused saying to ship the brand's case to B: B's one shipment record
    outweighed the brand's goods, which have none. Any unit is refused now, naming the
    stray case by its printed code and the command that takes it out; nothing is written.
    Once it is out, the brand's case goes on and the pallet ships without B's case."""
    r, agg = world, world.agg
    agg.ship([r.cases[6]], "B")
    _stray_on_the_brands_pallet(r)
    agg.unpack(r.cases[0], [r.caps[0]])
    before = _unchanged(agg)
    which = (f"pallet 3:0 {r.pallets[0]}, which holds case 2:4 {r.cases[4]} of B among goods "
             f"{NONE}: take that out first (wuma aggregate unpack {r.pallets[0]} --child "
             f"{r.cases[4]}), then ")
    for i in (5, 6):  # the brand's case, and B's
        assert _refusal(agg.move, [r.cases[i]], to=r.pallets[0]) == f"case 2:{i} {r.cases[i]} cannot go into {which}move it"
    assert _refusal(agg.link, r.pallets[0], [r.cases[5]]) == f"case 2:5 {r.cases[5]} cannot go into {which}pack it"
    # into a case on that pallet
    assert _refusal(agg.move, [r.caps[0]], to=r.cases[0]) == (
        f"cap 1:0 {r.caps[0]} cannot go into case 2:0 {r.cases[0]}: it is on {which}move it")
    assert _unchanged(agg) == before
    agg.unpack(r.pallets[0], [r.cases[4]])  # what the message says
    agg.move([r.cases[5]], to=r.pallets[0])
    agg.move([r.caps[0]], to=r.cases[0])
    agg.ship([r.pallets[0]], "A")
    assert _dist(r, r.cases[5]) == ("A", False) and _dist(r, r.cases[4]) == ("B", False)
    assert _scanned_by(r, r.caps[0]) == "A"
    agg.check_consistency()


def test_a_pallet_holding_a_stray_case_is_the_brands_to_ship_transfer_and_return(
        world):  # noqa: F811
    """The same pallet is the brand's for shipping too: a transfer of it said to ship the
    brand's case 0 to B, its return took B's case back with it, and a case shipped off it
    to B stayed on it. Transfer and return are refused (it was never shipped), naming the
    stray case; a case shipped to B leaves it; B's case returned alone stays on it (the
    brand's now) and ships with it."""
    r, agg = world, world.agg
    _stray_on_the_brands_pallet(r)
    before = _unchanged(agg)
    pallet = f"pallet 3:0 {r.pallets[0]} is {NONE}"
    assert _refusal(agg.transfer, [r.pallets[0]], "A") == (
        f"{pallet}: ship it instead; it holds case 2:4 {r.cases[4]} of B: take that out first "
        f"(wuma aggregate unpack {r.pallets[0]} --child {r.cases[4]})")
    assert _refusal(agg.return_goods, [r.pallets[0]]) == (
        f"{pallet}: there is nothing to return; it holds case 2:4 {r.cases[4]} of B: return "
        f"that on its own if it came back (wuma return {r.cases[4]})")
    assert _unchanged(agg) == before
    assert agg.ship([r.cases[0]], "B")["taken_out"] == [[agg.unit(r.cases[0]),
                                                         agg.unit(r.pallets[0])]]
    eid = agg.return_goods([r.cases[4]])
    assert "taken_out" not in agg.event(eid)
    assert agg.links()[agg.unit(r.cases[4])] == agg.unit(r.pallets[0])
    agg.ship([r.pallets[0]], "A")
    assert _dist(r, r.cases[4]) == ("A", False) and _dist(r, r.cases[0]) == ("B", False)
    agg.check_consistency()


def test_a_case_holding_a_stray_cap_is_refused_naming_the_cap(world):  # noqa: F811
    """The brand's case 0 holding B's cap 96 (an older release's): moved onto the brand's
    pallet 1 it was refused as B's, saying to return the brand's case. Refused naming the
    cap and the command that takes it out; then it moves."""
    r, agg = world, world.agg
    agg.ship([r.caps[96]], "B")
    _packed_by_an_older_release(r, r.cases[0], r.caps[96])
    agg.unpack(r.pallets[0], [r.cases[0]])
    assert _refusal(agg.move, [r.cases[0]], to=r.pallets[1]) == (
        f"case 2:0 {r.cases[0]} holds cap 1:96 {r.caps[96]} of B among goods {NONE}: take "
        f"that out first (wuma aggregate unpack {r.cases[0]} --child {r.caps[96]}), then "
        "move it")
    agg.unpack(r.cases[0], [r.caps[96]])
    agg.move([r.cases[0]], to=r.pallets[1])
    agg.check_consistency()


@pytest.mark.parametrize("k, of", [(6, "B"), (5, None)])
def test_a_load_into_a_pallet_holding_a_stray_case_is_refused(world, k, of):  # noqa: F811
    """Another case of B's listed under the brand's pallet holding B's stray case was
    loaded (the pallet was taken as B's), and so was the brand's own case (as move: a parent
    in several hands takes no unit until the stray is out). Refused with move's words."""
    r, agg = world, world.agg
    if of:
        agg.ship([r.cases[k]], of)
    _stray_on_the_brands_pallet(r)
    links = agg.links()
    rep = agg.load(f"{r.pallets[0]},{r.cases[k]}\n".encode())
    assert not rep.loaded and agg.links() == links
    assert [(b.line, b.reason) for b in rep.bad] == [(1, (
        f"field 2: case 2:{k} {r.cases[k]} cannot go into pallet 3:0 {r.pallets[0]}, which holds "
        f"case 2:4 {r.cases[4]} of B among goods {NONE}: take that out first (wuma aggregate "
        f"unpack {r.pallets[0]} --child {r.cases[4]}), then load this record again"))]
    if of is None:
        agg.unpack(r.pallets[0], [r.cases[4]])  # what the message says
        assert agg.load(f"{r.pallets[0]},{r.cases[k]}\n".encode()).loaded


def test_strays_are_named_together_with_one_unpack_a_parent(world, monkeypatch):  # noqa: F811
    """Two stray cases of B's on the brand's pallet (3 cases of its own): the refusal names
    both, with one unpack; past the most a refusal names, it says how many more."""
    import engine.aggregation as aggregation

    r, agg = world, world.agg
    agg.move([r.cases[2]], to=r.pallets[0])
    _stray_on_the_brands_pallet(r)
    agg.ship([r.cases[6]], "B")
    _packed_by_an_older_release(r, r.pallets[0], r.cases[6])
    assert _refusal(agg.move, [r.cases[5]], to=r.pallets[0]) == (
        f"case 2:5 {r.cases[5]} cannot go into pallet 3:0 {r.pallets[0]}, which holds case 2:4 "
        f"{r.cases[4]} of B, case 2:6 {r.cases[6]} of B among goods {NONE}: take those out "
        f"first (wuma aggregate unpack {r.pallets[0]} --child {r.cases[4]} --child "
        f"{r.cases[6]}), then move it")
    monkeypatch.setattr(aggregation, "_STRAYS_NAMED", 1)
    with pytest.raises(Conflict, match=rf"which holds case 2:4 {r.cases[4]} of B, and 1 more "
                                       rf"among goods {re.escape(NONE)}: take those out first "
                                       rf"\(wuma aggregate unpack {r.pallets[0]} --child "
                                       rf"{r.cases[4]}\), then move it$"):
        agg.move([r.cases[5]], to=r.pallets[0])
