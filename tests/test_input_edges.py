"""Input at the edges of what is accepted: the characters `verify` reads in a code, the
form of WUMA_MAP_SIZE, and the numerals FF1's bulk path takes."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cli.main import cli
from engine import DataFolder
from engine.formats import fold_full_width
from engine.fpe import FF1
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent


# -- what verify reads in a code --------------------------------------------------------------
@pytest.fixture(scope="module")
def code(shared_data):
    """A genuine code with a "1" in its body (to be typed as a look-alike of it)."""
    b = shared_data.batches.find(1)
    return next(c for c in (shared_data.codes.code(b, s, "cap_inner") for s in range(100)) if "1" in c[1:])


def test_a_look_alike_from_another_alphabet_is_invalid(shared_data, code):
    """Crockford's ASCII look-alikes are read (i/l for 1); a dotless "ı" or a mathematical
    "𝚤" (which str.upper() turns into "I") is not a character of a code."""
    at = code.index("1", 1)
    assert shared_data.codes.verify(code[:at] + "i" + code[at + 1:]).genuine
    for ch in ("\u0131", "\U0001d6a4"):
        assert not shared_data.codes.verify(code[:at] + ch + code[at + 1:]).genuine, f"U+{ord(ch):04X}"


@pytest.mark.parametrize("ch", ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\u2028", "\u2029"])
def test_control_characters_are_not_separators(shared_data, code, ch):
    for text in (code[:10] + ch + code[10:], code + ch, ch + code):
        assert not shared_data.codes.verify(text).genuine, repr(text)


#: What the README says a code may be broken up with, as typed or pasted.
_SEPARATORS = [" ", "\t", "\r", "\n", "-", "\r\n", "\u3000", "\u2014", "\u2013", "\u2212", "\u200b", "\ufeff"]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.tuples(st.integers(0, 20), st.sampled_from(_SEPARATORS)), min_size=1, max_size=6))
def test_separators_anywhere_keep_a_code_genuine(shared_data, code, cuts):
    text = code
    for at, sep in sorted(cuts, reverse=True):
        text = text[:at] + sep + text[at:]
    v = shared_data.codes.verify(text)
    assert v.genuine and v.code == code, repr(text)


_NOT_ASCII_AFTER_FOLDING = st.characters(min_codepoint=0x80, exclude_categories=("Cs",)).filter(
    lambda c: not fold_full_width(c).isascii())


@settings(max_examples=300, deadline=None)
@given(ch=_NOT_ASCII_AFTER_FOLDING, at=st.integers(0, 19), replace=st.booleans())
@example(ch="\u2028", at=10, replace=False).via("a line separator")
def test_a_character_outside_ascii_makes_a_code_invalid(shared_data, code, ch, at, replace):
    """Inserted or in place of one of the code's: after the folding the README lists, a code
    is ASCII."""
    text = code[:at] + ch + code[at + replace:]
    assert not shared_data.codes.verify(text).genuine, repr(text)


@settings(max_examples=200, deadline=None)
@given(ch=st.characters(max_codepoint=0x7F).filter(lambda c: c not in " \t\r\n-/"), at=st.integers(1, 19))
@example(ch="\x1f", at=10).via("a unit separator")
def test_an_ascii_character_other_than_a_separator_makes_a_code_invalid(shared_data, code, ch, at):
    assert not shared_data.codes.verify(code[:at] + ch + code[at:]).genuine


# -- WUMA_MAP_SIZE ---------------------------------------------------------------------------
def test_help_works_whatever_wuma_map_size_says():
    env = dict(os.environ, PYTHONPATH=str(ROOT), WUMA_MAP_SIZE="1e12")
    got = subprocess.run([sys.executable, "-m", "cli", "--help"], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == 0 and "Traceback" not in got.stderr, got.stderr


@pytest.mark.parametrize("value", ["1e12", "2TiB", "0x1000", "-1", "0", "1023K", "2 T", "99999999999999999999T"])
def test_a_map_size_of_another_form_is_an_error_line(tmp_path, value):
    data = str(tmp_path / "wuma-data")
    runner = CliRunner()
    assert runner.invoke(cli, ["--data", data, "init"]).exit_code == 0
    got = runner.invoke(cli, ["--data", data, "batch", "list"], env={"WUMA_MAP_SIZE": value})
    assert got.exit_code == 1, got.output
    assert got.output.startswith(f"Error: WUMA_MAP_SIZE is {value!r}: give a whole number of bytes"), got.output
    assert "such as 2T" in got.output


@pytest.mark.parametrize("value, size", [("64M", 64 << 20), ("64m", 64 << 20), ("3G", 3 << 30), ("2T", 2 << 40),
                                         ("1048576", 1 << 20), (" 512M\n", 512 << 20)])
def test_a_map_size_is_bytes_or_a_binary_suffix(tmp_path, monkeypatch, value, size):
    DataFolder.init(tmp_path / "wuma-data").close()
    monkeypatch.setenv("WUMA_MAP_SIZE", value)
    d = DataFolder(tmp_path / "wuma-data")
    try:
        assert d.store.env.info()["map_size"] == size
    finally:
        d.close()


def test_a_full_map_says_how_to_give_a_larger_one(tmp_path):
    store = Store(tmp_path / "db", map_size=1 << 20)
    with store.write() as txn:
        txn.put(b"filler", bytes(960 << 10), db=store.db("meta"))
    reason, text = store.problem()
    assert reason == "map_nearly_full"
    assert "raise WUMA_MAP_SIZE: a whole number of bytes" in text and "such as 2T" in text
    store.close()


# -- FF1's bulk path -------------------------------------------------------------------------
@pytest.mark.parametrize("bulk", ["encrypt_many", "decrypt_many"])
def test_bulk_numerals_out_of_range_are_refused_not_wrapped(bulk):
    f = FF1(bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C"), 10)
    crypt = getattr(f, bulk)
    for bad in (np.array([[256] + [0] * 9]), np.array([[0] * 9 + [-1]]), np.array([[10] * 10], np.int16)):
        with pytest.raises(ValueError, match="numerals must be from 0 to 9"):
            crypt(bad)
    for not_integers in (np.full((1, 10), 0.9), np.zeros((1, 10), bool)):
        with pytest.raises(TypeError, match="array of integers"):
            crypt(not_integers)
    x = np.random.default_rng(7).integers(0, 10, size=(50, 10))
    assert (crypt(x) == crypt(x.astype(np.uint8))).all()  # any integer type, the same numerals
