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
from engine import Conflict, NotFound
from engine import packs as P
from engine.aggregation import Aggregation
from engine.http_packs import PackWithheld, sign_request
from engine.lines import generate_line_keys, load_brand_keys
from engine.packs import PackError, open_pack_to_file

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
        assert f"`wuma pack revoke {' '.join(p.id for p in hit)}`" in text  # one command for all
        assert "printed twice" in text
    assert not (tmp / "again").exists() or os.listdir(tmp / "again") == []
    assert _live(reg) == [(0, 500), (500, 1000)] and len(reg.list()) == 2
    # next to it is fine, and so is the range of a revoked pack
    _export(world, start=1000, stop=1200)
    reg.revoke(second.id)
    again = reg.export(batch.id, "L2", tmp / "again", start=500, stop=1000, chunk_bytes=test_packs.CHUNK)
    assert [(p.start, p.stop, p.line) for p in again] == [(500, 1000, "L2")]
    assert _live(reg) == [(0, 500), (500, 1000), (1000, 1200)]


def test_an_overlapping_export_names_the_revoke_command_with_the_data_given(world, data):
    """Before, the command named lacked the --data of the command refused: run as shown, it
    revoked nothing in the folder the operator was working on."""
    _reg, _keys, _brand, batch, tmp = world
    held = test_packs._export(world, stop=1000, parts=2)
    data.close()  # NOTE: the CLI opens the folder itself (once a process)
    got = _cli(data.path, "pack", "export", batch.id, "--line", "L1", "--range", "0:1500", "-o", tmp / "again")
    assert got.exit_code == 1 and "already in 2 pack(s) not revoked" in got.output, got.output
    revoke = f"`wuma --data {data.path} pack revoke {held[0].id} {held[1].id}`"
    assert f"revoke them first ({revoke}), then export" in got.output, got.output


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
    assert "are already in" in refused and "Traceback" not in refused
    assert f"wuma --data {data.path} pack revoke " in refused  # the folder the refused command was given
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


# -- 6. packs an earlier release registered after the indexes were built --------------------------
def _by_an_earlier_release(world, *indexes, **kw):
    """Export as an earlier release does (an export of it still running during the upgrade,
    or after a downgrade): the packs registered, the ``indexes`` it does not keep
    (``packs_by_range``; before that ``packs_by_line`` too) left as they were, and the
    marker of each index too (it counts no pack)."""
    reg = world[0]
    every = (reg._by_line, reg._by_range)
    with reg._store.read() as txn:
        kept = {db: list(txn.cursor(db=db)) for db in indexes}
        marks = {db: txn.get(P._INDEXED, db=db) for db in every}
    packs = _export(world, **kw)
    with reg._store.write() as txn:
        for db, items in kept.items():
            txn.drop(db, delete=False)
            for key, value in items:
                txn.put(key, value, db=db)
        for db, mark in marks.items():
            if mark is None:
                txn.delete(P._INDEXED, db=db)
            else:
                txn.put(P._INDEXED, mark, db=db)
    return packs


def _as_the_first_index_release_left_it(reg):
    """The markers as the release that brought the indexes left them: no count of the packs
    they hold."""
    with reg._store.write() as txn:
        for db in (reg._by_line, reg._by_range):
            if txn.get(P._INDEXED, db=db) is not None:
                txn.put(P._INDEXED, b"", db=db)


@pytest.mark.parametrize("marker", ["this release's", "the first index release's"])
def test_a_pack_an_earlier_release_registered_after_the_range_index_holds_its_serials(world, marker):
    """Before, packs_by_range was built once: a pack an earlier release registered afterwards
    was in no entry of it, so an export overlapping it passed (its codes printed twice) and
    a revoked pack whose serials it holds was said to be exported again."""
    reg, _keys, _brand, batch, tmp = world
    (first,) = _export(world, stop=1000)  # builds the range index
    reg.revoke(first.id)
    if marker != "this release's":
        _as_the_first_index_release_left_it(reg)
    (old,) = _by_an_earlier_release(world, reg._by_range, stop=1500)
    with pytest.raises(Conflict, match=f"pack {old.id} \\(serials 0:1500"):
        _export(world, start=1400, stop=1600)
    assert {p["id"]: p["to_export_again"] for p in reg.list()} == {first.id: [], old.id: None}
    # and in the transaction that registers, against an earlier release's export that ran
    # meanwhile (the check before writing saw nothing)
    seen = []

    def meanwhile(_n) -> None:
        if not seen:
            seen.extend(_by_an_earlier_release(world, reg._by_range, start=1800, stop=1900))
    with pytest.raises(Conflict, match=f"serials 1600:2000 of batch {batch.id} are already in 1 pack") as refused:
        reg.export(batch.id, "L1", tmp / "first", start=1600, stop=2000, chunk_bytes=test_packs.CHUNK,
                   progress=meanwhile)
    assert f"pack {seen[0].id} (serials 1800:1900, line L1)" in str(refused.value)
    assert os.listdir(tmp / "first") == []
    # an export of this release indexes them all: still refused, through the index
    _export(world, start=1500, stop=1800)
    for start, stop, pack_id in ((1400, 1501, old.id), (1850, 1860, seen[0].id)):
        with pytest.raises(Conflict, match=f"pack {pack_id}"):
            _export(world, start=start, stop=stop)
    assert _live(reg) == [(0, 1500), (1500, 1800), (1800, 1900)]


@pytest.mark.parametrize("marker", ["this release's", "the first index release's"])
def test_a_pack_an_earlier_release_registered_after_the_line_index_is_in_the_lines_listing(
        world, server, marker):
    """Before, packs_by_line was built once: a pack a release before it registered
    afterwards (a downgrade, then an upgrade again) was missing from its line's listing, and
    the line never pulled it."""
    reg, keys, _brand, _batch, _tmp = world
    (first,) = _export(world, stop=1000)  # builds the line index
    if marker != "this release's":
        _as_the_first_index_release_left_it(reg)
    (old,) = _by_an_earlier_release(world, reg._by_line, reg._by_range, start=1000, stop=2000)
    assert [p["id"] for p in reg.list(line="L1")] == [first.id, old.id]
    body = json.loads(_call(server, "/packs", sign_request(keys, "GET", "/packs"))[1])
    assert sorted(p["id"] for p in body["packs"]) == sorted([first.id, old.id])
    (last,) = _export(world, start=2000, stop=2100)  # indexes it
    assert [p["id"] for p in reg.list(line="L1")] == [first.id, old.id, last.id]


def test_an_index_entry_of_a_pack_deleted_since_is_passed_over(world):
    """Releases before packs_by_line deleted the packs of their failed exports: one this release
    had indexed meanwhile left an entry naming no pack, and every export of its batch failed
    with "no pack ..."."""
    reg, _keys, _brand, _batch, _tmp = world
    (gone,) = _export(world, stop=100)
    with reg._store.write() as txn:  # NOTE: as that release's clean-up left it
        txn.delete(bytes.fromhex(gone.id), db=reg._packs)
    (p,) = _export(world, start=50, stop=150)
    assert [x["id"] for x in reg.list()] == [p.id]
    with pytest.raises(Conflict, match=f"pack {p.id}"):
        _export(world, start=0, stop=60)


# -- 7. `pack list` reads a batch's packs once, whatever their number -----------------------------
def test_to_export_again_of_failed_packs_among_many(world, monkeypatch):
    """Before, each failed or revoked pack walked its batch's later packs (2,000 packs: 1.3 s,
    6,000: 8 s): the records read grew with the square of the packs."""
    reg, _keys, _brand, batch, tmp = world
    failed = _export(world, stop=1200, parts=40)
    with reg._store.write() as txn:  # NOTE: as a failed export leaves them (_export_failed)
        for p in failed:
            rec = reg._get_raw(txn, p.id)
            rec["export_failed_at"] = rec["created"]
            reg._put(txn, rec)
    again = _export(world, start=0, stop=1200, parts=30)
    reg.revoke(again[3].id)
    reads, unpack = [], P.unpack

    def read(raw):
        got = unpack(raw)
        if "stop" in got:  # NOTE: a pack's record, not an event
            reads.append(got["id"])
        return got
    monkeypatch.setattr(P, "unpack", read)
    listed = {p["id"]: p["to_export_again"] for p in reg.list()}
    assert len(reads) <= 2 * (len(failed) + len(again)), len(reads)  # the listing's, the batch's
    a, b = again[3].start, again[3].stop
    for p in failed:
        hole = [[max(a, p.start), min(b, p.stop)]] if p.start < b and p.stop > a else []
        assert listed[p.id] == hole, (p.start, p.stop)
    assert listed[again[3].id] == [[a, b]] and listed[again[0].id] is None


def test_to_export_again_with_packs_that_overlap_each_other(world):
    """Live packs of one batch may overlap (exported before overlaps were refused): a
    withheld pack's serials are held by any of them, one inside another too."""
    reg, _keys, _brand, batch, tmp = world
    (gone,) = _export(world, stop=1000)
    reg.revoke(gone.id)
    _export(world, start=100, stop=200)
    _export(world, start=300, stop=600)
    moved = _export(world, start=2000, stop=2300, parts=3)
    with reg._store.write() as txn:  # NOTE: overlaps an earlier release let through, and no range index
        for p, (a, b) in zip(moved, ((350, 400), (550, 700), (410, 520))):
            rec = reg._get_raw(txn, p.id)
            rec.update(start=a, stop=b, count=b - a)
            reg._put(txn, rec)
        txn.drop(reg._by_range, delete=False)
    reg.revoke(moved[2].id)

    def again() -> dict:
        return {p["id"]: p["to_export_again"] for p in reg.list()}
    got = again()  # no range index: every pack is read
    assert got[gone.id] == [[0, 100], [200, 300], [700, 1000]]
    assert got[moved[2].id] == []  # in 300:600, past 350:400 inside it
    _export(world, start=900, stop=950)  # indexes every pack
    got = again()
    assert got[gone.id] == [[0, 100], [200, 300], [700, 900], [950, 1000]] and got[moved[2].id] == []


# -- 8. `pack open --server` checks the file's bytes in one call ----------------------------------
def test_open_pack_with_a_server_refuses_bytes_other_than_the_listed_ones(world, data, server):
    """check_pack checks a file's size only: its bytes are checked as the pack is opened.
    Opening with ``server`` does both, so no caller can ask the server and then open other
    bytes than the ones it listed."""
    from test_packs_signers import _forge

    reg, keys, _brand, _batch, tmp = world
    (p,) = _export(world, stop=300)
    data.rotate_key()
    stale = _stale_brand_keys(reg, tmp)
    reg.lines.revoke_signer(1, now=1_800_000_000.0)
    (new,) = _export(world, start=300, stop=600)
    forged = _forge(data, Path(new.path), tmp / "forged.wpk")
    out = tmp / "codes.csv"
    with pytest.raises(PackError, match=f"forged.wpk is not the pack the server issued as {new.id}: "
                                        "its bytes differ"):
        open_pack_to_file(forged, keys, stale, out, server=server)
    assert not out.exists()
    with pytest.raises(PackWithheld, match=f"pack {p.id} is withheld by .*signed by brand key v1"):
        open_pack_to_file(p.path, keys, stale, out, server=server)
    assert not out.exists()
    got = open_pack_to_file(new.path, keys, stale, out, server=server)
    assert got.id == new.id and out.read_text().count("\n") == 1 + new.count
    with pytest.raises(ValueError, match="server or expect_id"):
        open_pack_to_file(new.path, keys, stale, tmp / "x.csv", server=server, expect_id=new.id)


def _stale_brand_keys(reg, tmp):
    """The brand-keys.json a line keeps after a rotation, before the old key's revocation."""
    stale = tmp / "brand-keys-stale.json"
    stale.write_bytes(reg.lines.brand_keys())
    return load_brand_keys(stale)


# -- 9. several packs revoked at once -------------------------------------------------------------
def test_pack_revoke_takes_several_ids_all_or_nothing(world):
    """Before, freeing the range of a killed 1,000-part export took 1,000 commands."""
    reg, _keys, _brand, batch, tmp = world
    parts = _export(world, stop=1000, parts=5)
    with reg._store.write() as txn:  # NOTE: as an export killed while placing leaves them
        for p in parts:
            rec = reg._get_raw(txn, p.id)
            rec["placed_at"] = None
            reg._put(txn, rec)
    ids = [p.id for p in parts]
    data_path = reg._data.path
    reg._data.close()  # NOTE: the CLI opens the folder itself (once a process)
    unknown = "0" * 32
    res = _cli(data_path, "pack", "revoke", *ids[:2], unknown, "nonsense", ids[2])
    assert res.exit_code == 1, res.output
    assert (f"nothing revoked: no pack {unknown}; 'nonsense' is not a pack id (32 lowercase hex digits, as `wuma pack list` shows them)"
            in res.output), res.output
    assert "Traceback" not in res.output
    listed = [json.loads(x) for x in _cli(data_path, "pack", "list", "--json").output.splitlines()]
    assert [p["revoked_at"] for p in listed] == [None] * 5
    assert all(os.path.exists(p.path) for p in parts)
    res = _cli(data_path, "pack", "revoke", *ids, ids[0], "--json")
    assert res.exit_code == 0, res.output
    got = [json.loads(x) for x in res.output.splitlines()]
    assert [p["id"] for p in got] == ids and len({p["revoked_at"] for p in got}) == 1
    assert not any(os.path.exists(p.path) for p in parts)  # never placed: their files go too
    res = _cli(data_path, "pack", "revoke", ids[0])  # one, as before
    assert res.exit_code == 0 and res.output == f"pack {ids[0]} revoked\n", res.output
    res = _cli(data_path, "pack", "export", batch.id, "--line", "L1", "--range", "0:1000",
               "-o", tmp / "again")
    assert res.exit_code == 0, res.output


def test_revoke_all_is_one_transaction(world):
    reg, _keys, _brand, _batch, _tmp = world
    a, b = _export(world, stop=600, parts=2)
    with pytest.raises(NotFound, match=f"nothing revoked: no pack {'f' * 32}"):
        reg.revoke_all([a.id, "f" * 32, b.id], now=5.0)
    assert [p["revoked_at"] for p in reg.list()] == [None, None]
    got = reg.revoke_all([a.id, b.id, a.id], now=5.0)
    assert [p["id"] for p in got] == [a.id, b.id] and [p["revoked_at"] for p in reg.list()] == [5.0, 5.0]
    assert reg.revoke_all([a.id], now=9.0)[0]["revoked_at"] == 5.0  # revoked before: kept
    with pytest.raises(TypeError):
        reg.revoke_all(a.id)
