"""One batch's serials go to the lines once: an export overlapping a live one is refused,
across processes too; `pack list` stops advising to export a range again once it was; and a
withheld pack's reasons read the same wherever they are given."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_packs
import test_packs_placing
from click.testing import CliRunner
from test_packs import _call, _export

from cli.main import cli
from engine import Conflict
from engine.aggregation import Aggregation
from engine.http_packs import sign_request
from engine.lines import generate_line_keys

world = test_packs.world
server = test_packs.server
ROOT = Path(__file__).resolve().parent.parent


def _live(reg) -> list[tuple[int, int]]:
    return sorted((p["start"], p["stop"]) for p in reg.list(events=False)
                  if p["revoked_at"] is None and p["export_failed_at"] is None)


def _cli(data_path: Path, *args):
    return CliRunner().invoke(cli, ["--data", str(data_path), *map(str, args)])


# -- 3. an export overlapping a live one is refused -------------------------------------------------
def test_an_export_overlapping_a_live_pack_is_refused_naming_it(world):
    """Before, a second export of serials already exported made a second pack of the same
    codes: two lines (or one, twice) printed the same labels."""
    reg, _keys, _brand, batch, tmp = world
    first, second = _export(world, stop=1000, parts=2)
    generate_line_keys(tmp / "line2")
    reg.lines.add("L2", (tmp / "line2" / "line.pub").read_bytes())
    for start, stop, line in ((500, 1500, "L1"), (999, 1000, "L1"), (0, 3000, "L2"), (400, 600, "L2")):
        with pytest.raises(Conflict) as refused:
            reg.export(batch.id, line, tmp / "again", start=start, stop=stop, chunk_bytes=test_packs.CHUNK)
        text = str(refused.value)
        assert text.startswith(f"serials {start}:{stop} of batch {batch.id} are already in ")
        hit = [p for p in (first, second) if p.start < stop and p.stop > start]
        for p in hit:
            assert f"pack {p.id} (serials {p.start}:{p.stop}, line L1)" in text
            assert f"`wuma pack revoke {p.id}`" in text
        assert "printed twice" in text
    assert not (tmp / "again").exists() or os.listdir(tmp / "again") == []
    assert _live(reg) == [(0, 500), (500, 1000)] and len(reg.list()) == 2
    # next to it is fine, and so is the range of a revoked pack
    _export(world, start=1000, stop=1200)
    reg.revoke(second.id)
    again = reg.export(batch.id, "L2", tmp / "again", start=500, stop=1000, chunk_bytes=test_packs.CHUNK)
    assert [(p.start, p.stop, p.line) for p in again] == [(500, 1000, "L2")]
    assert _live(reg) == [(0, 500), (500, 1000), (1000, 1200)]


def test_a_pack_not_in_place_holds_its_range_and_a_failed_exports_does_not(world, monkeypatch):
    """A pack never placed (its export killed, or still running) may be in a line's hands
    (a part placed before the kill opens without --server): revoke it first. A failed
    export's packs are withheld and their files removed: their range is exported again."""
    reg, _keys, _brand, batch, tmp = world
    test_packs_placing._failing_export(world, monkeypatch, lambda _path: None)  # 0:1000, failed
    (killed,) = _export(world, start=1000, stop=2000)
    with reg._store.write() as txn:  # NOTE: as an export killed while placing leaves it
        rec = reg._get_raw(txn, killed.id)
        rec["placed_at"] = None
        reg._put(txn, rec)
    with pytest.raises(Conflict, match=rf"pack {killed.id} \(serials 1000:2000, line L1; not in place: "
                                       r"its export is still running, or was cut off"):
        _export(world, start=1500, stop=2500)
    assert [(p.start, p.stop) for p in _export(world, start=0, stop=1000)] == [(0, 1000)]


def test_a_second_export_while_the_first_runs_is_refused_when_it_registers(world):
    """Both start while neither is registered: the check in the write transaction that
    registers the packs refuses the one that comes second."""
    reg, _keys, _brand, batch, tmp = world
    seen = []

    def meanwhile(_n) -> None:  # the first export's parts are written, not yet registered
        if not seen:
            seen.append(reg.export(batch.id, "L1", tmp / "second", start=200, stop=800))
    with pytest.raises(Conflict, match=f"serials 0:1000 of batch {batch.id} are already in .*pack "
                                       "[0-9a-f]+ \\(serials 200:800, line L1\\)"):
        reg.export(batch.id, "L1", tmp / "first", stop=1000, parts=2, chunk_bytes=test_packs.CHUNK,
                   progress=meanwhile)
    assert _live(reg) == [(200, 800)] and len(reg.list()) == 1
    assert os.listdir(tmp / "first") == []  # nothing of the refused export is left


def test_two_export_processes_of_one_range_hand_it_out_once(world, data):
    reg, _keys, _brand, _batch, tmp = world
    big = data.create_batch("cap", 300_000)
    data.close()  # NOTE: each process opens the folder itself
    procs = [subprocess.Popen([sys.executable, "-m", "cli", "--data", str(data.path), "pack", "export",
                               str(big.id), "--line", "L1", "--range", rng, "-o", str(tmp / f"out{i}")],
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i, rng in enumerate(("0:300000", "100000:200000"))]
    done = [(p.wait(timeout=120), p.stderr.read().decode()) for p in procs]
    assert sorted(code for code, _ in done) == [0, 1], done
    refused = next(err for code, err in done if code == 1)
    assert "are already in" in refused and "wuma pack revoke" in refused and "Traceback" not in refused
    res = _cli(data.path, "pack", "list", "--json")
    live = [json.loads(x) for x in res.output.splitlines()]
    assert len(live) == 1, res.output  # the loser registered nothing
    loser = next(i for i, (code, _) in enumerate(done) if code == 1)
    assert not (tmp / f"out{loser}").exists() or os.listdir(tmp / f"out{loser}") == []


def test_packs_exported_before_the_range_index_are_checked_too(world):
    reg, _keys, _brand, batch, tmp = world
    (old,) = _export(world, stop=1000)
    with reg._store.write() as txn:  # NOTE: as an earlier release left the folder: no range index
        txn.drop(reg._by_range, delete=False)
    with pytest.raises(Conflict, match=f"pack {old.id}"):
        _export(world, start=900, stop=1100)
    _export(world, start=1000, stop=1100)  # indexes every pack, in the transaction that registers
    with pytest.raises(Conflict, match=f"pack {old.id}"):
        _export(world, start=900, stop=950)


# -- 4. "export again" only while no later export holds the range -----------------------------------
def test_a_failed_packs_advice_to_export_again_ends_once_its_range_is_exported(world, monkeypatch):
    """Before, `pack list` said "export serials 0:500 of batch N again, unless done since"
    forever."""
    reg, _keys, _brand, batch, tmp = world
    test_packs_placing._failing_export(world, monkeypatch, lambda _path: None)  # 0:500, 500:1000
    assert [p["to_export_again"] for p in reg.list()] == [[[0, 500]], [[500, 1000]]]
    _export(world, start=0, stop=700)  # all of part 0, some of part 1
    failed = [p for p in reg.list() if p["export_failed_at"] is not None]
    assert [p["to_export_again"] for p in failed] == [[], [[700, 1000]]]
    reg._data.close()  # NOTE: the CLI opens the folder itself (once a process)
    listing = _cli(reg._data.path, "pack", "list").output
    assert f"export serials 0:500 of batch {batch.id} again" not in listing
    assert f"its serials are in pack(s) exported since" in listing
    assert f"export serials 700:1000 of batch {batch.id} again" in listing
    assert "unless done since" not in listing


# -- 5. one wording of a withheld pack's reasons ----------------------------------------------------
def test_a_withheld_packs_reason_reads_the_same_in_the_listing_the_refusal_and_pack_list(world, data, server):
    reg, keys, _brand, batch, _tmp = world
    revoked, voided = _export(world, stop=600, parts=2)
    reg.revoke(revoked.id, now=1_800_000_000.0)
    Aggregation(data).void(serial_range=(batch.id, 350, 360), reason="labels destroyed")
    body = json.loads(_call(server, "/packs", sign_request(keys, "GET", "/packs"))[1])
    reasons = {w["id"]: w["reason"] for w in body["withheld"]}
    assert reasons == {revoked.id: "revoked at 2027-01-15 16:00:00+08:00",
                       voided.id: f"codes voided: serial 350 of batch {batch.id} (maybe more in 300:600)"}
    for p in (revoked, voided):
        status, raw = _call(server, f"/packs/{p.id}", sign_request(keys, "GET", f"/packs/{p.id}"))
        assert status == 410 and json.loads(raw)["message"] == (f"pack {p.id} is withheld: {reasons[p.id]}: "
                                                                "it must not be printed")
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    listing = _cli(data.path, "pack", "list").output.splitlines()
    for p in (revoked, voided):
        (line,) = [x for x in listing if x.startswith(f"pack {p.id}")]
        assert f"withheld: {reasons[p.id]}" in line, line
