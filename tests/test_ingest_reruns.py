"""Line-collection ingest: what a user relies on when a file is loaded again, or is odd.

- A record reported loaded has every child it lists in its parent, however often the file
  lists a child (each listing is checked on its own line).
- A file loaded before is not loaded again by ``wuma aggregate load`` (it would undo the
  warehouse work done since), unless ``--again``.
- A genuine code is never reported forged: a form read one by one past the file's budget
  is "not read", and a code with dashes is read at any count.
- Line endings of every kind are line breaks; a line with none is refused, in bounded
  memory.
- Exit status, messages and the reject file tell the user what happened.
"""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from cli.main import cli
from engine import DataFolder, ingest
from engine.aggregation import Aggregation
from engine.ingest import load_links


def _line(*codes: str) -> str:
    return ",".join(codes)


def _text(*lines: str) -> bytes:
    return "".join(x + "\n" for x in lines).encode()


def _file(tmp_path, *lines: str, name: str = "line.csv"):
    p = tmp_path / name
    p.write_bytes(_text(*lines))
    return p


def _cli(run, *args: str):
    run.data.close()
    return CliRunner().invoke(cli, ["--data", str(run.data.path), *args])


def _parents(agg, codes: list[str]) -> list[int | None]:
    """The parent uid of each code's unit."""
    links = agg.links()
    return [links.get(agg.unit(c)) for c in codes]


def _bad(rep) -> list[tuple[int, str]]:
    return [(b.line, b.reason) for b in rep.bad]


# -- F1: a child listed on several lines is checked on each ------------------------------------
def test_a_child_listed_again_under_its_parent_is_linked_when_its_first_line_is_refused(run):
    """Line 1 is refused (C100 is in K9); line 2, reported loaded, lists C0 again: C0 is
    in K0. The first listing alone was kept, so C0 ended in no parent."""
    C, K, agg = run.caps, run.cases, run.agg
    agg.load(_text(_line(K[9], C[100])))
    rep = agg.load(_text(_line(K[0], C[0], C[100]), _line(K[0], C[0], C[1])), skip_bad=True)
    assert [b.line for b in rep.bad] == [1] and rep.links_added == 2
    assert _parents(agg, [C[0], C[1]]) == [agg.unit(K[0])] * 2
    agg.check_consistency()


def test_a_line_refused_for_listing_a_child_twice_does_not_hide_it_from_a_good_line(run):
    C, K, agg = run.caps, run.cases, run.agg
    rep = agg.load(_text(_line(K[1], C[7]), _line(K[0], C[0], C[7]), _line(K[0], C[0], C[1])),
                   skip_bad=True)
    assert _bad(rep) == [(2, f"field 3: unit {run.cap_batch}:7 ({C[7]}) is already listed under another "
                             "parent on line 1")]
    assert _parents(agg, [C[0], C[1], C[7]]) == [agg.unit(K[0]), agg.unit(K[0]), agg.unit(K[1])]


def test_every_listing_of_a_child_is_checked_against_the_store(run):
    """A child already in another parent, listed on two lines of its new parent: both
    lines are refused (only the first was, and the second reported loaded)."""
    C, K, agg = run.caps, run.cases, run.agg
    agg.load(_text(_line(K[9], C[100])))
    rep = agg.load(_text(_line(K[0], C[0], C[100]), _line(K[0], C[2], C[100])), skip_bad=True)
    assert [b.line for b in rep.bad] == [1, 2] and rep.links_added == 0
    assert _parents(agg, [C[0], C[2], C[100]]) == [None, None, agg.unit(K[9])]


def test_a_child_listed_twice_under_its_parent_counts_once_against_its_capacity(run):
    C, K, agg = run.caps, run.cases, run.agg
    rep = agg.load(_text(_line(K[0], *C[:24]), _line(K[0], C[23])))
    assert rep.loaded and not rep.bad and rep.links_added == 24
    again = agg.load(_text(_line(K[0], *C[:24]), _line(K[0], C[23])), chunk_bytes=7, again=True)
    assert again.links_added == 0 and again.links_existing == 24


@pytest.mark.parametrize("seed", range(12))
def test_every_record_reported_loaded_has_all_its_children_in_its_parent(run, seed):
    """Random files (children listed again, under the same parent or another; children
    already packed; parents filled past their capacity), loaded with ``skip_bad`` after
    random earlier loads: each line either is reported bad or has every child it lists
    in its parent."""
    rnd = random.Random(seed)
    C, K, P, agg = run.caps, run.cases, run.pallets, run.agg
    for _ in range(6):
        lines = []
        for _ in range(rnd.randint(1, 6)):
            if rnd.random() < 0.75:
                parent, kids = rnd.choice(K[:4]), rnd.sample(C[:40], rnd.randint(1, 14))
            else:
                parent, kids = rnd.choice(P), rnd.sample(K, rnd.randint(1, 3))
            if rnd.random() < 0.3:
                kids.append(rnd.choice(kids))
            lines.append((parent, kids))
        rep = agg.load(_text(*(_line(p, *k) for p, k in lines)), skip_bad=True,
                       chunk_bytes=rnd.choice([1, 200, 1 << 20]))
        bad = {b.line for b in rep.bad}
        links = agg.links()
        for n, (parent, kids) in enumerate(lines, 1):
            if n not in bad:
                assert {links.get(agg.unit(k)) for k in kids} == {agg.unit(parent)}, (n, lines)
        agg.check_consistency()


# -- F3: a file loaded before is not loaded again -----------------------------------------------
def _warehouse_file(run, tmp_path):
    C, K = run.caps, run.cases
    return _file(tmp_path, _line(K[0], *C[:24]), _line(K[1], *C[24:48]))


def test_a_rerun_after_an_unpack_and_a_move_does_nothing_and_names_the_earlier_load(run, tmp_path):
    C, K = run.caps, run.cases
    f = _warehouse_file(run, tmp_path)
    assert _cli(run, "aggregate", "load", str(f)).exit_code == 0
    assert _cli(run, "aggregate", "unpack", K[0], "--child", C[4]).exit_code == 0
    assert _cli(run, "aggregate", "move", C[30], "--to", K[2]).exit_code == 0
    res = _cli(run, "aggregate", "load", str(f))
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"already loaded: {f} holds what the load of event 1 took "
                                 "(line.csv, ")
    assert "2 records, 48 links added); nothing done" in res.output and "--again" in res.output
    with DataFolder(run.data.path) as data:
        agg = Aggregation(data)
        assert _parents(agg, [C[4], C[30]]) == [None, agg.unit(K[2])]
        assert [e["type"] for e in agg.events()] == ["load", "unpack", "move"]


def test_again_loads_a_file_loaded_before(run, tmp_path):
    C, K = run.caps, run.cases
    f = _warehouse_file(run, tmp_path)
    _cli(run, "aggregate", "load", str(f))
    _cli(run, "aggregate", "unpack", K[0], "--child", C[4])
    res = _cli(run, "aggregate", "load", str(f), "--again")
    assert res.exit_code == 0
    assert res.output == "loaded 2 records: 1 links added, 47 already present\n"
    res = _cli(run, "aggregate", "load", str(f), "--json")  # the latest load is named
    assert res.exit_code == 0 and json.loads(res.output)["already_loaded"]["event_id"] == 3
    assert "--again" in _cli(run, "aggregate", "load", "--help").output


def test_a_rerun_is_recognised_by_content_before_anything_is_written(run, tmp_path):
    C, K, agg = run.caps, run.cases, run.agg
    raw = _text(_line(K[0], *C[:3]))
    first = load_links(agg, raw, now=1_800_000_000.0)
    agg.unpack(K[0], [C[1]])
    copy = tmp_path / "copy.csv"  # another name, the same bytes
    copy.write_bytes(raw)
    rep = load_links(agg, copy, again=False)
    assert rep.loaded and rep.links_added == 0 and rep.event_id is None
    assert rep.already_loaded == {"event_id": first.event_id, "time": 1_800_000_000.0,
                                  "source": "<bytes>", "records": 1, "links": 3, "rejected": 0}
    assert agg.unit(C[1]) not in agg.links() and len(agg.events()) == 2
    other = load_links(agg, _text(_line(K[0], C[1])), again=False)  # other content: loaded
    assert other.already_loaded is None and other.links_added == 1


def test_a_partial_load_rerun_says_how_many_were_rejected_then_and_keeps_its_rejects(run, tmp_path):
    """A ``--skip-bad`` load run again does nothing either: its rejected records are to be
    fixed and loaded from the reject file (or the file loaded ``--again``)."""
    C, K = run.caps, run.cases
    f = _file(tmp_path, _line(K[0], *C[:4]), _line(K[1], "1ZZZZZZZZZZZZZZZZZZZ"))
    assert _cli(run, "aggregate", "load", str(f), "--skip-bad").exit_code == 0
    rejects = (tmp_path / "line.csv.rejects").read_text()
    res = _cli(run, "aggregate", "load", str(f), "--skip-bad")
    assert res.exit_code == 0
    assert "2 records, 1 rejected, 4 links added); nothing done" in res.output
    assert (tmp_path / "line.csv.rejects").read_text() == rejects


# -- F3b: files loaded by an older release ------------------------------------------------------
def _as_an_older_release_left_it(data) -> None:
    """No index of loaded files (``agg_loaded_files``), as a data folder written before it
    looks; its load events hold each file's sha256 all the same."""
    with data.store.write() as txn:
        txn.drop(data.store.db("agg_loaded_files"), delete=False)


def test_a_file_loaded_by_an_older_release_is_recognised(run, tmp_path):
    """A re-run of a file an older release loaded put back the units unpacked since; it is
    recognised by the sha256 its load event recorded (the latest load of it is named), and
    ``--again`` still loads it."""
    C, K, agg = run.caps, run.cases, run.agg
    f = _warehouse_file(run, tmp_path)
    agg.load(f, now=1_800_000_000.0)
    agg.unpack(K[0], [C[4]])
    g = _file(tmp_path, _line(K[2], C[50]), name="g.csv")
    agg.load(g)
    agg.unpack(K[2])
    agg.load(g, again=True, now=1_800_000_100.0)
    _as_an_older_release_left_it(run.data)
    res = _cli(run, "aggregate", "load", str(f))
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"already loaded: {f} holds what the load of event 1 took "
                                 "(line.csv, ")
    with DataFolder(run.data.path) as data:
        agg = Aggregation(data)
        assert _parents(agg, [C[4]]) == [None]
        assert [e["type"] for e in agg.events()] == ["load", "unpack", "load", "unpack", "load"]
        rep = agg.load(g)
        assert rep.already_loaded["event_id"] == 5 and rep.already_loaded["time"] == 1_800_000_100.0
        rep = agg.load(f, again=True)
        assert rep.links_added == 1 and rep.links_existing == 47
        assert _parents(agg, [C[4]]) == [agg.unit(K[0])]


def test_the_loads_of_an_older_release_are_read_once(run, monkeypatch):
    """PERF: the load events are read by the first load after the upgrade, not by later
    ones, whether they find their file loaded before or not."""
    C, K, agg = run.caps, run.cases, run.agg
    raw = _text(_line(K[0], *C[:3]))
    agg.load(raw)
    _as_an_older_release_left_it(run.data)
    assert agg.load(_text(_line(K[1], C[30]))).links_added == 1  # reads them
    monkeypatch.setattr(ingest, "_older_loads", lambda *a: pytest.fail("read again"))
    assert agg.load(raw).already_loaded["event_id"] == 1
    assert agg.load(_text(_line(K[1], C[31]))).links_added == 1


# -- F4: codes in forms other than bare ----------------------------------------------------------
def _dashed(code: str) -> str:
    return "-".join(code[i:i + 5] for i in range(0, len(code), 5))


def test_codes_with_dashes_are_read_past_the_odd_forms_budget(run, monkeypatch):
    monkeypatch.setattr(ingest, "_ODD_BUDGET", 10)
    C, K = run.caps, run.cases
    rep = run.agg.load(_text(*(_line(_dashed(K[i]), *map(_dashed, C[24 * i:24 * i + 24]))
                               for i in range(3))))
    assert rep.loaded and not rep.bad and rep.links_added == 72


def _full_width(code: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) for ch in code)


def test_a_genuine_code_past_the_budget_is_not_read_never_forged(run, monkeypatch, tmp_path):
    """Past the budget a field read one by one is refused as "not read", saying what to do;
    the records refused so load from the reject file. A forged bare code still reads as
    not genuine (it was judged)."""
    monkeypatch.setattr(ingest, "_ODD_BUDGET", 3)
    C, K = run.caps, run.cases
    forged = "1ZZZZZZZZZZZZZZZZZZZ"
    f = _file(tmp_path, *(_line(K[i], _full_width(C[i])) for i in range(5)), _line(K[5], forged))
    rep = run.agg.load(f, skip_bad=True, reject_file=tmp_path / "r.csv")
    assert rep.links_added == 3 and [b.line for b in rep.bad] == [4, 5, 6]
    for b in rep.bad[:2]:
        assert b.reason.startswith("field 2 was not read: this file holds over ")
        assert "write the codes bare, or load these records on their own" in b.reason
    assert rep.bad[2].reason == "field 2 is not a genuine code"
    again = run.agg.load(tmp_path / "r.csv", skip_bad=True)
    assert again.links_added == 2 and _bad(again) == [(6, "field 2 is not a genuine code")]


# -- F5: line endings -------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 2, 3, 29, 1 << 20])
@pytest.mark.parametrize("end", ["\r", "\r\n", "mixed"])
def test_every_kind_of_line_break_ends_a_line(run, end, chunk):
    C, K = run.caps, run.cases
    lines = [_line(K[i], *C[3 * i:3 * i + 3]) for i in range(4)] + ["# a comment", ""]
    ends = ["\r", "\r\n", "\n", "\r", "\r\n", "\r"] if end == "mixed" else [end] * 6
    raw = "".join(x + e for x, e in zip(lines, ends)).encode()
    rep = run.agg.load(raw + _text(_line(K[4], "NOTACODE")), skip_bad=True, chunk_bytes=chunk)
    assert (rep.records, rep.links_added) == (5, 12)
    assert _bad(rep) == [(7, "field 2 is not a genuine code")]


def test_a_line_over_the_limit_is_refused_naming_the_likely_cause(run, monkeypatch, tmp_path):
    monkeypatch.setattr(ingest, "_MAX_LINE", 1 << 20)
    C, K = run.caps, run.cases
    f = tmp_path / "one-line.csv"
    f.write_bytes(_text(_line(K[0], C[0])) + (_line(K[1], *C[24:48]) + ",").encode() * 8000)
    with pytest.raises(ValueError, match=r"^line 2 is over 1 MiB with no line break; nothing "
                                         r"loaded\. .*no line breaks at all, or breaks other than"):
        run.agg.load(f, chunk_bytes=1 << 16)
    assert run.agg.links() == {}
    # a long line that ends in a later block than the one it began in: refused at the
    # limit, not at the limit plus a block (lines of up to 24 MiB went through)
    for size, over in ((1 << 20) + 1, True), (1 << 20, False):
        f.write_bytes(_text(_line(K[0], C[0])) + b"x" * size + b"\n" + _text(_line(K[2], C[50])))
        if over:
            with pytest.raises(ValueError, match="^line 2 is over 1 MiB"):
                run.agg.load(f, chunk_bytes=700_000)
        else:  # at the limit: read, and refused as a record
            rep = run.agg.load(f, chunk_bytes=700_000, skip_bad=True)
            assert [b.line for b in rep.bad] == [2] and rep.links_added == 2


# -- exit status and messages -------------------------------------------------------------------
def test_skip_bad_with_every_record_bad_exits_1(run, tmp_path):
    f = _file(tmp_path, "NOTACODE,ALSONOT", "XX,YY")
    res = _cli(run, "aggregate", "load", str(f), "--skip-bad")
    assert res.exit_code == 1
    assert (f"Error: all 2 records are bad; nothing loaded (they are written to {f}.rejects)"
            in res.output)
    assert "# line 2: field 1 is not a genuine code" in (tmp_path / "line.csv.rejects").read_text()


@pytest.mark.parametrize("content", [b"", b"\n  \n", b"# nothing yet\n", b"parent,children\n"])
def test_a_file_with_no_records_says_so_and_exits_1(run, tmp_path, content):
    f = tmp_path / "line.csv"
    f.write_bytes(content)
    res = _cli(run, "aggregate", "load", str(f))
    assert res.exit_code == 1 and f"Error: no records in {f}: " in res.output


@pytest.mark.parametrize("sep,name", [("\t", "tabs"), (";", "semicolons"), (" ", "spaces")])
def test_a_line_with_another_separator_says_fields_are_comma_separated(run, sep, name):
    C, K = run.caps, run.cases
    rep = run.agg.load(_text(sep.join([K[0], C[0], C[1]])))
    said = ("needs a parent code and at least one child code, separated by commas: this line "
            f"has no comma, but {name} (save the file with a comma between codes)")
    assert _bad(rep) == [(1, said)]


def test_a_first_line_starting_with_parent_is_a_header_only_if_it_holds_no_code(run):
    C, K = run.caps, run.cases
    url = "parent.example.cn/q/"  # a short URL without its scheme
    rep = run.agg.load(_text(_line(url + K[0], C[0], C[1])))
    assert rep.records == 1 and rep.links_added == 2
    rep = run.agg.load(_text("Parent Code,Children", _line(K[1], C[2])))
    assert rep.records == 1 and rep.links_added == 1 and not rep.bad


def test_a_json_code_holding_a_comma_is_refused(run):
    C, K = run.caps, run.cases
    rec = {"parent": K[5], "children": [f"{C[110]},{C[111]}"]}
    rep = run.agg.load((json.dumps(rec) + "\n").encode(), fmt="jsonl")
    assert not rep.loaded and rep.bad[0].reason.startswith("a code holds a comma")
    assert run.agg.links() == {}


def test_a_json_parent_starting_with_a_hash_is_a_bad_record_not_a_comment(run):
    C, K = run.caps, run.cases
    rec = {"parent": "#" + K[4], "children": [C[100]]}
    rep = run.agg.load((json.dumps(rec) + "\n").encode(), fmt="jsonl")
    assert rep.records == 1 and _bad(rep) == [(1, "field 1 is not a genuine code")]


def test_a_clean_run_removes_the_reject_file_of_an_earlier_run(run, tmp_path):
    C, K = run.caps, run.cases
    f = _file(tmp_path, _line(K[2], "BAD"))
    _cli(run, "aggregate", "load", str(f), "--skip-bad")
    assert (tmp_path / "line.csv.rejects").exists()
    f.write_bytes(_text(_line(K[2], C[10])))  # fixed
    res = _cli(run, "aggregate", "load", str(f), "--skip-bad")
    assert res.exit_code == 0 and res.output == (
        f"loaded 1 records: 1 links added, 0 already present; removed {f}.rejects, "
        "the reject file of an earlier run\n")
    assert not (tmp_path / "line.csv.rejects").exists()


def test_a_clean_run_removes_nothing_but_a_reject_file(run, tmp_path):
    """Any regular file at --reject-file was deleted by a clean run, through a symlink too:
    a path mistyped as a line file's lost that file. Only a file that begins as a reject
    file does is removed, and never through a link."""
    C, K = run.caps, run.cases
    other = tmp_path / "line-7.csv"
    other.write_bytes(_text(_line(K[3], C[20])))
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"# line 3: a note that looks like a reject file\n")
    (tmp_path / "x.rejects").symlink_to(notes)
    f = _file(tmp_path, _line(K[2], C[10]))
    for target in (other, tmp_path / "x.rejects"):
        res = _cli(run, "aggregate", "load", str(f), "--skip-bad", "--again", "--reject-file", str(target))
        assert res.exit_code == 0 and "removed" not in res.output
    assert other.read_bytes() == _text(_line(K[3], C[20])) and notes.exists()
