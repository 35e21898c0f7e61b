"""Exports appear whole or not at all, readable by their owner only."""

import os
import stat

import pytest

from engine.files import private_output


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
