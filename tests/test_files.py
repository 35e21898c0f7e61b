"""Exports appear whole or not at all, readable by their owner only."""

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.files import UTF8_BOM, decode_text, private_output


def test_an_export_appears_whole_and_private(tmp_path):
    target = tmp_path / "codes.csv"
    target.write_text("the old export\n")
    with private_output(target, "w") as fh:
        fh.write("a,b\n")
        assert target.read_text() == "the old export\n"  # not yet
    assert target.read_text() == "a,b\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["codes.csv"]


def test_a_failed_export_leaves_the_old_file_and_no_part(tmp_path):
    target = tmp_path / "codes.csv"
    target.write_text("the old export\n")
    with pytest.raises(KeyboardInterrupt):
        with private_output(target, "w") as fh:
            fh.write("half")
            raise KeyboardInterrupt
    assert target.read_text() == "the old export\n" and os.listdir(tmp_path) == ["codes.csv"]


def test_an_export_killed_while_written_leaves_no_plaintext_behind(tmp_path):
    """kill -9 runs no cleanup: a plaintext export (codes from `pack open`, `batch export
    --plaintext`) killed half written must leave nothing, where the file system has
    unnamed files (no hidden .part copy of the codes at rest)."""
    import subprocess
    import sys

    from engine.files import open_unnamed

    fd = open_unnamed(tmp_path)
    if fd is None:
        pytest.skip("no unnamed files (O_TMPFILE) on this file system")
    os.close(fd)
    script = (
        "import os, signal, sys\n"
        "from engine.files import private_output\n"
        "with private_output(sys.argv[1], 'w') as fh:\n"
        "    fh.write('serial,cap_outer,cap_inner\\n0,1K0V9YYWQT5WXJE5J90C,1YM7TEA36WQZGB2XXKN7\\n' * 1000)\n"
        "    fh.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "codes.csv")],
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == -9
    assert os.listdir(tmp_path) == []


def test_a_folder_that_is_not_there_is_named(tmp_path):
    with pytest.raises(OSError, match="cannot write .*nowhere/x.csv"):
        with private_output(tmp_path / "nowhere" / "x.csv"):
            pass


@pytest.mark.parametrize("unnamed", [True, False])
def test_write_new_file_is_whole_private_and_never_replaces(tmp_path, monkeypatch, unnamed):
    """A secret (a master or line key) appears whole under its name, mode 0600, or not at
    all; an existing file is never replaced; no temporary file is left either way."""
    import stat as st

    import engine.files as files

    if not unnamed:  # a file system without O_TMPFILE: a hidden temporary name
        monkeypatch.setattr(files, "open_unnamed", lambda folder, perms: None)
    path = tmp_path / "master-v2.key"
    files.write_new_file(path, b"k" * 32)
    assert path.read_bytes() == b"k" * 32 and st.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        files.write_new_file(path, b"x" * 32)
    assert path.read_bytes() == b"k" * 32
    assert [p.name for p in tmp_path.iterdir()] == ["master-v2.key"]


def test_write_new_file_on_a_file_system_without_hard_links(tmp_path, monkeypatch):
    """vfat, exFAT and some network or FUSE mounts (a USB stick taking a line's keys) have
    neither O_TMPFILE nor hard links: the file is still written whole under a hidden name
    and then named, never over an existing file, and nothing else is left."""
    import errno

    import engine.files as files

    def no_links(src, dst, **kw):
        raise PermissionError(errno.EPERM, "Operation not permitted", str(dst))

    monkeypatch.setattr(files, "open_unnamed", lambda folder, perms: None)
    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "line.key"
    files.write_new_file(path, b"k" * 32)
    assert path.read_bytes() == b"k" * 32
    with pytest.raises(FileExistsError):
        files.write_new_file(path, b"x" * 32)
    assert path.read_bytes() == b"k" * 32 and os.listdir(tmp_path) == ["line.key"]


# -- text files people give: one way to read them -------------------------------------------
#: Text without NUL (refused: a sign of UTF-16 without a byte-order mark).
_TEXT = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)))


@settings(max_examples=200, deadline=None)
@given(_TEXT, st.booleans())
def test_utf8_text_reads_back_with_or_without_a_bom(text, bom):
    raw = (UTF8_BOM if bom else b"") + text.encode("utf-8")
    # NOTE: one BOM is dropped: text that starts with U+FEFF, written without one, loses it
    assert decode_text(raw, "f.txt") == (text if bom else text.removeprefix("\ufeff"))


@settings(max_examples=100, deadline=None)
@given(_TEXT, st.sampled_from(["utf-16", "utf-16-le", "utf-16-be"]))
def test_utf16_with_a_bom_is_refused_by_name(text, encoding):
    bom = {"utf-16-le": b"\xff\xfe", "utf-16-be": b"\xfe\xff"}.get(encoding, b"")
    raw = bom + text.encode(encoding)
    with pytest.raises(ValueError, match=r"^rule\.json: the file is UTF-16; save it as UTF-8$"):
        decode_text(raw, "rule.json")


def test_utf16_without_a_bom_and_invalid_utf8_are_refused_by_name_and_offset():
    with pytest.raises(ValueError, match=r"^c\.csv: the file holds NUL bytes, so it is not UTF-8 text "):
        decode_text("440106,23.1".encode("utf-16-le"), "c.csv")
    gbk = b"code,lat,lng\n" + "广州,23.1,113.3".encode("gbk")
    with pytest.raises(ValueError, match=r"^c\.csv: not UTF-8 text \(byte 0xB9 at offset 13: saved as GBK"):
        decode_text(gbk, "c.csv")
    with pytest.raises(ValueError, match=r"byte 0xFF at offset 4:"):  # the BOM counts
        decode_text(UTF8_BOM + b"a\xff", "c.csv")
    with pytest.raises(ValueError, match=r"^stdin: not UTF-8 text \(byte 0xE9 at offset 12:"):
        decode_text(b"caf\xe9\n", "stdin", offset=9)  # the second line of a pipe
    assert decode_text(UTF8_BOM + b"x", "stdin", offset=9) == "\ufeffx"  # a BOM only at the start
    with pytest.raises(TypeError, match="raw must be bytes"):
        decode_text("text", "f.txt")


def test_a_full_disk_while_an_export_is_written_names_the_file(tmp_path):
    """A disk full (or a quota, a file-size limit) while writing: the error names the
    export (it said only "No space left on device"), and nothing is left."""
    import errno

    target = tmp_path / "codes.csv"
    with pytest.raises(OSError, match="No space left on device") as e:
        with private_output(target, "w"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert e.value.filename == str(target) and os.listdir(tmp_path) == []
