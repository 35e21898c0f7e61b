"""Line-collection ingest: where ``skip_bad`` puts the bad records: never over the input,
never a half file, never lost after the good ones are loaded."""

from __future__ import annotations

import errno
import os

import pytest
from click.testing import CliRunner

from engine import ingest


def _lines(run):
    """Two good records, then a record with a forged child (line 3)."""
    return [",".join([run.cases[0]] + run.caps[:12]), ",".join([run.cases[1]] + run.caps[24:30]),
            ",".join([run.cases[2], run.caps[48], "NOTACODE"])]


def _file(tmp_path, lines, name="line.csv"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def _nothing_loaded(run):
    assert run.agg.links() == {} and run.agg.events() == []


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


# -- the reject file is the input --------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["same", "dotdot", "relative", "symlink", "hardlink"])
def test_reject_file_that_is_the_input_is_refused(run, tmp_path, monkeypatch, spelling):
    (tmp_path / "sub").mkdir()
    f = _file(tmp_path, _lines(run))
    before = f.read_bytes()
    if spelling == "same":
        rej = f
    elif spelling == "dotdot":
        rej = tmp_path / "sub" / ".." / "line.csv"
    elif spelling == "relative":
        monkeypatch.chdir(tmp_path / "sub")
        rej = os.path.join("..", "line.csv")
    elif spelling == "symlink":
        rej = tmp_path / "link.csv"
        rej.symlink_to(f)
    else:
        rej = tmp_path / "hard.csv"
        os.link(f, rej)
    with pytest.raises(ValueError, match="is the input file; nothing loaded .*choose another"):
        run.agg.load(f, skip_bad=True, reject_file=rej)
    assert f.read_bytes() == before
    _nothing_loaded(run)
    assert _leftovers(tmp_path) == []


def test_cli_refuses_a_reject_file_that_is_the_input(run, tmp_path):
    from cli.main import cli

    f = _file(tmp_path, _lines(run))
    before = f.read_bytes()
    run.data.close()
    res = CliRunner().invoke(cli, ["--data", str(run.data.path), "aggregate", "load", str(f),
                                   "--skip-bad", "--reject-file", str(f)])
    assert res.exit_code == 1 and "is the input file; nothing loaded" in res.output, res.output
    assert f.read_bytes() == before


# -- an unwritable reject file -----------------------------------------------------------------
def test_reject_file_in_a_missing_folder_refuses_the_load_up_front(run, tmp_path):
    f = _file(tmp_path, _lines(run))
    with pytest.raises(ValueError, match="cannot write the reject file .*nothing loaded"):
        run.agg.load(f, skip_bad=True, reject_file=tmp_path / "nodir" / "rejects.txt")
    _nothing_loaded(run)


def test_reject_file_that_is_a_folder_is_refused(run, tmp_path):
    f = _file(tmp_path, _lines(run))
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="is a folder; nothing loaded"):
        run.agg.load(f, skip_bad=True, reject_file=tmp_path / "d")
    _nothing_loaded(run)


def test_cli_reject_file_in_a_missing_folder_loads_nothing(run, tmp_path):
    from cli.main import cli

    f = _file(tmp_path, _lines(run))
    run.data.close()
    res = CliRunner().invoke(cli, ["--data", str(run.data.path), "aggregate", "load", str(f),
                                   "--skip-bad", "--reject-file", str(tmp_path / "no" / "r")])
    assert res.exit_code == 1, res.output
    assert "cannot write the reject file" in res.output and "nothing loaded" in res.output
    assert "loaded 3 records" not in res.output


def test_failing_reject_write_loads_nothing_and_leaves_no_half_file(run, tmp_path,
                                                                    monkeypatch):
    f = _file(tmp_path, _lines(run))
    rej = tmp_path / "rejects.txt"
    rej.write_bytes(b"older rejects\n")

    def disk_full(src, chunk_bytes, bad, out, *a):
        out.write(b"# line 3: half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ingest, "_write_rejects", disk_full)
    with pytest.raises(ValueError, match="cannot write the reject file .*nothing loaded"):
        run.agg.load(f, skip_bad=True, reject_file=rej)
    _nothing_loaded(run)
    assert rej.read_bytes() == b"older rejects\n"
    assert _leftovers(tmp_path) == []


def test_rejects_written_whole_and_the_target_replaced(run, tmp_path):
    lines = _lines(run)
    f = _file(tmp_path, lines)
    rej = tmp_path / "rejects.txt"
    rej.write_bytes(b"older rejects\n" * 1000)
    rep = run.agg.load(f, skip_bad=True, reject_file=rej, chunk_bytes=7)
    assert rep.loaded and rep.links_added == 18 and rep.rejected_to == str(rej)
    assert rej.read_text().splitlines() == ["# line 3: field 3 is not a genuine code", lines[2]]
    assert _leftovers(tmp_path) == []
    # no bad records: the reject file is neither created nor touched
    ok = _file(tmp_path, lines[:2], "ok.csv")
    rep = run.agg.load(ok, skip_bad=True, reject_file=tmp_path / "none.txt")
    assert rep.rejected_to is None and not (tmp_path / "none.txt").exists()
    assert _leftovers(tmp_path) == []


def test_reject_file_through_a_symlink_writes_the_target(run, tmp_path):
    f = _file(tmp_path, _lines(run))
    (tmp_path / "out").mkdir()
    real = tmp_path / "out" / "rejects.txt"
    real.write_text("")
    link = tmp_path / "rejects-link.txt"
    link.symlink_to(real)
    assert run.agg.load(f, skip_bad=True, reject_file=link).loaded
    assert link.is_symlink() and real.read_text().startswith("# line 3:")


def test_rejects_that_cannot_be_put_in_place_are_kept_under_another_name(run, tmp_path, monkeypatch):
    """The good records are loaded; the rejects, written, cannot take their name (a full
    folder, say): they are kept beside it under another name, which the error gives, not
    lost with the unnamed file they were written to."""
    from engine.files import NewFile

    def no_room(self, path=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(NewFile, "replace", no_room)
    rej = tmp_path / "rej.csv"
    with pytest.raises(OSError, match=r"loaded 18 links .* 1 rejected records could not be written "
                                      r"to .*rej.csv \(No space left on device\); they are in (.*)") as e:
        run.agg.load(_file(tmp_path, _lines(run)), skip_bad=True, reject_file=rej)
    kept = tmp_path / f"rej.csv.{os.getpid()}.rejects"
    assert str(kept) in str(e.value) and not rej.exists()
    assert "NOTACODE" in kept.read_text() and len(run.agg.links()) == 18


# -- the reject file is a stream, or the data folder's own --------------------------------------
def test_rejects_to_a_fifo_or_dev_null_are_written_into_it(run, tmp_path):
    """`--rejects /dev/null` (through a link here) or a FIFO a tool reads: written into, as
    the shell's > does; they were given a new file's name beside them (in /dev, as root)."""
    import threading

    f = _file(tmp_path, _lines(run))
    null = tmp_path / "null"
    null.symlink_to(os.devnull)
    report = run.agg.load(f, skip_bad=True, reject_file=null)
    assert report.links_added == 18 and len(report.bad) == 1
    assert os.readlink(null) == os.devnull and not os.path.isfile(os.devnull)
    assert [p for p in os.listdir(os.path.dirname(os.devnull)) if p.startswith("null.")] == []
    fifo = tmp_path / "rejects.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    g = _file(tmp_path, [",".join([run.cases[3], run.caps[72], "NOTACODE"])], "more.csv")
    run.agg.load(g, skip_bad=True, reject_file=fifo)
    reader.join(10)
    assert b"NOTACODE" in got[0] and os.path.exists(fifo) and not os.path.isfile(fifo)


def test_rejects_onto_the_data_folders_files_are_refused_before_loading(run, tmp_path):
    f = _file(tmp_path, _lines(run))
    cfg = run.data.path / "wuma.json"
    before = cfg.read_bytes()
    with pytest.raises(ValueError, match="belongs to the data folder.*nothing loaded"):
        run.agg.load(f, skip_bad=True, reject_file=cfg)
    assert cfg.read_bytes() == before
    _nothing_loaded(run)
