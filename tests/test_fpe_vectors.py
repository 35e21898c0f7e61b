"""NIST SP 800-38G FF1 known-answer samples (tests/vectors/ff1-nist-samples.csv)."""

import csv
from pathlib import Path

import numpy as np
import pytest

from engine.fpe import FF1, NUMERAL_ALPHABET

_FILE = Path(__file__).parent / "vectors" / "ff1-nist-samples.csv"


def _samples():
    lines = [ln for ln in _FILE.read_text().splitlines() if ln and not ln.startswith("#")]
    for row in csv.DictReader(lines):
        yield pytest.param(row, id=f"nist-ff1-sample-{row['sample']}")


SAMPLES = list(_samples())


def test_all_nine_samples_present():
    assert len(SAMPLES) == 9


@pytest.mark.parametrize("row", SAMPLES)
def test_scalar_encrypt_decrypt(row):
    f = FF1(bytes.fromhex(row["key"]), int(row["radix"]))
    tweak = bytes.fromhex(row["tweak"])
    assert f.encrypt(row["plaintext"], tweak) == row["ciphertext"]
    assert f.decrypt(row["ciphertext"], tweak) == row["plaintext"]


@pytest.mark.parametrize("row", SAMPLES)
def test_compiled_rounds_match_sample(row):
    f = FF1(bytes.fromhex(row["key"]), int(row["radix"]))
    assert f.use_native_rounds()
    tweak = bytes.fromhex(row["tweak"])
    assert f._layout(len(row["plaintext"]), tweak).native is not None
    assert f.encrypt(row["plaintext"], tweak) == row["ciphertext"]
    assert f.decrypt(row["ciphertext"], tweak) == row["plaintext"]


@pytest.mark.parametrize("row", SAMPLES)
def test_batch_path_matches_sample(row):
    f = FF1(bytes.fromhex(row["key"]), int(row["radix"]))
    tweak = bytes.fromhex(row["tweak"])
    pt = np.array([[NUMERAL_ALPHABET.index(c) for c in row["plaintext"]]] * 5, np.uint8)
    ct = f.encrypt_many(pt, tweak)
    assert ["".join(NUMERAL_ALPHABET[x] for x in r) for r in ct] == [row["ciphertext"]] * 5
    assert (f.decrypt_many(ct, tweak) == pt).all()
