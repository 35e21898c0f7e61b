"""A line-collection load keeps every parent in one pair of hands, as ``aggregate move``
and ``link`` do (tests/test_shipping_moves.py): a unit goes into a parent with the same
distributor as the unit, or with none when the unit is with none (never shipped, or
returned to the brand), or into an empty parent with no distributor, which takes the hands
of the first unit the file lists in it. A parent with no distributor of its own is with
the one its goods are with (a rebuilt pallet), or with none (the brand's pallet at the
factory); a unit is with the distributor of its own shipment record, else of its goods.

A record breaking the rule is refused like any bad record (all or nothing, or into the
reject file with ``--skip-bad``), naming both units by their printed codes, both hands and
what to do first: loaded, it left a pallet that shipping refused later."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from test_shipping_logistics import _dist
from test_shipping_logistics import world  # noqa: F401 - the fixture

from cli.main import cli
from conftest_world import unit_codes
from engine import ingest
from engine.aggregation import Aggregation

THEN = ", then load this record again"
NONE = "is not with a distributor (never shipped, or returned)"


def _text(*lines: list[str]) -> bytes:
    return "".join(",".join(x) + "\n" for x in lines).encode()


def _bad(rep) -> list[tuple[int, str]]:
    return [(b.line, b.reason) for b in rep.bad]


@pytest.fixture(params=["range_reads", "lookups"])
def reads(request, monkeypatch):
    """Both ways a load reads the store: key ranges, or unit by unit (as for units
    scattered over a batch packed long ago)."""
    if request.param == "lookups":
        monkeypatch.setattr(ingest, "_DENSE", 0)
    return request.param


def test_a_case_of_a_distributor_is_refused_on_the_brands_pallet(
        world, reads, tmp_path):  # noqa: F811
    """Case 4, shipped alone to B, listed under pallet 0 (the brand's, holding cases 0 and 1,
    never shipped): loaded, shipping the pallet to A was refused later. Refused at the load,
    with move's words; the pallet ships to A without it."""
    r, agg = world, world.agg
    agg.ship([r.cases[4]], "B")
    links = agg.links()
    f = tmp_path / "line.csv"
    f.write_bytes(_text([r.pallets[0], r.cases[4]]))
    rep = agg.load(f)
    assert not rep.loaded and agg.links() == links
    assert _bad(rep) == [(1, (
        f"field 2: case 2:4 {r.cases[4]} belongs to distributor B but pallet 3:0 {r.pallets[0]} "
        f"{NONE}: return it to the brand first if it came back (wuma return {r.cases[4]}){THEN}"))]
    agg.ship([r.pallets[0]], "A")
    assert _dist(r, r.cases[0]) == ("A", False) and _dist(r, r.cases[4]) == ("B", False)
    agg.check_consistency()


def test_cli_load_refused_for_other_hands_says_what_to_do(world, tmp_path):  # noqa: F811
    """``wuma aggregate load`` prints the reason by line and exits 1, no traceback; with
    ``--skip-bad`` the record is in the reject file with its reason, the others load."""
    r, agg = world, world.agg
    agg.ship([r.cases[4]], "B")
    f = tmp_path / "line.csv"
    f.write_bytes(_text([r.pallets[0], r.cases[4]], [r.cases[5], *r.caps[96:98]]))
    path = str(r.data.path)
    r.data.close()
    runner = CliRunner()
    res = runner.invoke(cli, ["--data", path, "aggregate", "load", str(f)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output == (
        f"line 1: field 2: case 2:4 {r.cases[4]} belongs to distributor B but pallet 3:0 "
        f"{r.pallets[0]} {NONE}: return it to the brand first if it came back (wuma return "
        f"{r.cases[4]}){THEN}\n"
        "Error: 1 bad records; nothing loaded (fix them, or use --skip-bad)\n")
    res = runner.invoke(cli, ["--data", path, "aggregate", "load", str(f), "--skip-bad"])
    assert res.exit_code == 0, res.output
    rejects = (tmp_path / "line.csv.rejects").read_text()
    assert rejects.startswith(f"# line 1: field 2: case 2:4 {r.cases[4]} belongs to distributor B")
    assert rejects.endswith(f"\n{r.pallets[0]},{r.cases[4]}\n")
    assert "2 links added" in res.output


def test_an_emptied_case_on_the_brands_pallet_refuses_a_cap_of_a_distributor(
        world, reads):  # noqa: F811
    """Case 0 holds nothing, but it is on the brand's pallet: a cap of B's listed in it
    would go to A with the pallet."""
    r, agg = world, world.agg
    agg.ship([r.pallets[1]], "A")  # a shipment elsewhere in the store
    agg.unpack(r.cases[0])
    agg.ship([r.caps[96]], "B")  # a loose cap
    rep = agg.load(_text([r.cases[0], r.caps[97]], [r.cases[0], r.caps[96]]), skip_bad=True)
    assert _bad(rep) == [(2, (
        f"field 2: cap 1:96 {r.caps[96]} belongs to distributor B but case 2:0 {r.cases[0]} (on "
        f"pallet 3:0 {r.pallets[0]}) {NONE}: return it to the brand first if it came back "
        f"(wuma return {r.caps[96]}){THEN}"))]
    assert rep.links_added == 1
    agg.ship([r.pallets[0]], "A")
    assert _dist(r, r.caps[97]) == ("A", False) and _dist(r, r.caps[96]) == ("B", False)


def test_a_pallet_holding_goods_of_a_distributor_deep_down_refuses_the_brands_goods(
        world, reads):  # noqa: F811
    """Pallet 2 and case 4 on it have no shipment record, but cap 96 in the case is B's
    (moved in): the pallet is B's goods, and so is what goes onto it or into its case."""
    r, agg = world, world.agg
    agg.ship([r.caps[96]], "B")
    agg.move([r.caps[96]], to=r.cases[4])
    agg.move([r.cases[4]], to=r.pallets[2])
    rep = agg.load(_text([r.pallets[2], r.cases[5]], [r.cases[4], r.caps[97]]), skip_bad=True)
    goods = f"goods of B (cap 1:96 {r.caps[96]})"
    assert _bad(rep) == [
        (1, (f"field 2: case 2:5 {r.cases[5]} {NONE} but pallet 3:2 {r.pallets[2]} holds "
             f"{goods}: ship it to B first (wuma ship {r.cases[5]} --to B){THEN}")),
        (2, (f"field 2: cap 1:97 {r.caps[97]} {NONE} but case 2:4 {r.cases[4]} is on pallet 3:2 "
             f"{r.pallets[2]}, which holds {goods}: ship it to B first (wuma ship {r.caps[97]} "
             f"--to B){THEN}"))]
    assert not rep.links_added


def test_a_rebuilt_pallet_refuses_a_case_of_other_hands(world, reads):  # noqa: F811
    """Pallet 2 holds case 0 of A's (拆垛组垛: no record of its own): a never-shipped case,
    or B's, listed under it is refused; another of A's cases goes on."""
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")
    agg.ship([r.cases[5]], "B")
    agg.unpack(r.pallets[0])
    agg.move([r.cases[0]], to=r.pallets[2])
    rep = agg.load(_text([r.pallets[2], r.cases[4]], [r.pallets[2], r.cases[1]],
                         [r.pallets[2], r.cases[5]]), skip_bad=True)
    goods = f"pallet 3:2 {r.pallets[2]} holds goods of A (case 2:0 {r.cases[0]})"
    assert _bad(rep) == [
        (1, (f"field 2: case 2:4 {r.cases[4]} {NONE} but {goods}: ship it to A first "
             f"(wuma ship {r.cases[4]} --to A){THEN}")),
        (3, (f"field 2: case 2:5 {r.cases[5]} belongs to distributor B but {goods}: transfer "
             f"it to A first (wuma transfer {r.cases[5]} --to A){THEN}"))]
    assert rep.links_added == 1 and agg.links()[agg.unit(r.cases[1])] == agg.unit(r.pallets[2])
    agg.transfer([r.pallets[2]], "B")
    assert _dist(r, r.cases[1]) == ("B", False) and _dist(r, r.cases[4]) == (None, False)
    agg.check_consistency()


def test_an_empty_pallet_takes_the_hands_of_the_first_case_the_file_lists_in_it(
        world, reads):  # noqa: F811
    """A fresh pallet label takes a case of any hands, and then only cases in the same ones,
    in file order, on one line or over several. A refused line gives it no hands."""
    r, agg = world, world.agg
    agg.ship([r.cases[4]], "B")
    agg.ship([r.cases[6]], "B")
    rep = agg.load(_text([r.pallets[2], r.cases[4], r.cases[5]],  # 1: B's, then the brand's
                         [r.pallets[3], r.cases[7]],  # 2: the brand's
                         [r.pallets[3], r.cases[6]],  # 3: B's onto the brand's
                         [r.pallets[2], r.cases[8]]),  # 4: line 1 refused: pallet 2 is empty
                   skip_bad=True)
    assert _bad(rep) == [
        (1, (f"field 3: case 2:5 {r.cases[5]} {NONE} but pallet 3:2 {r.pallets[2]} holds goods "
             f"of B (case 2:4 {r.cases[4]}): ship it to B first (wuma ship {r.cases[5]} --to B)"
             f"{THEN}")),
        (3, (f"field 2: case 2:6 {r.cases[6]} belongs to distributor B but pallet 3:3 "
             f"{r.pallets[3]} {NONE}: return it to the brand first if it came back (wuma return "
             f"{r.cases[6]}){THEN}"))]
    assert rep.links_added == 2
    agg.ship([r.pallets[3]], "A")
    assert _dist(r, r.cases[7]) == ("A", False) and _dist(r, r.cases[6]) == ("B", False)
    # B's cases alone go onto a fresh pallet, which then ships with them
    fresh = unit_codes(r.data, r.data.create_batch("pallet", 1))[0]
    rep = agg.load(_text([fresh, r.cases[4]], [fresh, r.cases[6]]))
    assert rep.loaded and not rep.bad and rep.links_added == 2
    agg.transfer([fresh], "A")
    assert _dist(r, r.cases[6]) == ("A", False)
    agg.check_consistency()


def test_units_in_the_same_hands_as_their_parent_load(world, reads):  # noqa: F811
    """What the rule lets through: a case of B's onto B's pallet, a case returned to the
    brand onto the brand's pallet, fresh caps into an emptied case on the brand's pallet."""
    r, agg = world, world.agg
    agg.ship([r.pallets[2]], "B")
    agg.ship([r.cases[4]], "B")
    agg.ship([r.cases[5]], "A")
    agg.return_goods([r.cases[5]])
    agg.unpack(r.cases[0], r.caps[:2])
    rep = agg.load(_text([r.pallets[2], r.cases[4]], [r.pallets[0], r.cases[5]],
                         [r.cases[0], r.caps[100]]))
    assert rep.loaded and not rep.bad and rep.links_added == 3
    agg.ship([r.pallets[0]], "A")
    assert _dist(r, r.cases[5]) == ("A", False) and _dist(r, r.caps[100]) == ("A", False)
    agg.check_consistency()


def test_a_fresh_day_reads_no_unit_by_unit_with_shipments_in_the_store(
        world, monkeypatch):  # noqa: F811
    """PERF: goods never shipped, on fresh labels, are not looked at one by one (the store
    holds shipments of earlier days): only units with a shipment record are, and parents
    already in the store under goods holding one."""
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A")

    def never(*a):
        raise AssertionError("a unit read one by one in a fresh day's load")

    for name in ("_holding", "_place", "_below", "_distributor_of"):
        monkeypatch.setattr(Aggregation, name, never)
    rep = agg.load(_text([r.cases[4], *r.caps[96:120]], [r.cases[5], *r.caps[120:144]],
                         [r.pallets[2], r.cases[4], r.cases[5]]))
    assert rep.loaded and not rep.bad and rep.links_added == 50
