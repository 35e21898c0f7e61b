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
