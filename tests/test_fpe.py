"""FF1 behaviour: inverse, batch == scalar, agreement with an independent implementation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.fpe import FF1, NUMERAL_ALPHABET

keys = st.sampled_from([16, 24, 32]).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@st.composite
def texts(draw):
    radix = draw(st.integers(2, 62))
    f_min = FF1(bytes(16), radix).min_length
    n = draw(st.integers(f_min, f_min + 40))
    text = "".join(draw(st.lists(st.sampled_from(NUMERAL_ALPHABET[:radix]), min_size=n, max_size=n)))
    return radix, text


@settings(max_examples=200, deadline=None)
@given(key=keys, rt=texts(), tweak=st.binary(max_size=40))
def test_decrypt_inverts_encrypt(key, rt, tweak):
    radix, text = rt
    f = FF1(key, radix)
    ct = f.encrypt(text, tweak)
    assert len(ct) == len(text)
    assert set(ct) <= set(NUMERAL_ALPHABET[:radix])
    assert f.decrypt(ct, tweak) == text


@settings(max_examples=150, deadline=None)
@given(key=keys, rt=texts(), tweak=st.binary(max_size=24))
def test_agrees_with_fastfpe(key, rt, tweak):
    """fastfpe (Rust, independent code base) must give the same ciphertext."""
    fastfpe = pytest.importorskip("fastfpe.ff1")
    radix, text = rt
    expected = fastfpe.encrypt(key.hex(), tweak.hex(), NUMERAL_ALPHABET[:radix], text)
    assert FF1(key, radix).encrypt(text, tweak) == expected


@settings(max_examples=300, deadline=None)
@given(key=keys, rt=texts(), tweak=st.binary(max_size=40))
def test_compiled_rounds_equal_python_rounds(key, rt, tweak):
    """The scan path's compiled rounds (OpenSSL AES called from numba) give the Python
    rounds' answer both ways, wherever a layout admits them (halves below 2^56)."""
    radix, text = rt
    py, native = FF1(key, radix), FF1(key, radix)
    assert native.use_native_rounds()
    ct = py.encrypt(text, tweak)
    assert native.encrypt(text, tweak) == ct
    assert native.decrypt(ct, tweak) == text


@settings(max_examples=150, deadline=None)
@given(key=keys, rt=texts(), tweak=st.binary(max_size=24), native=st.booleans())
def test_int_decrypter_is_decrypt_int(key, rt, tweak, native):
    """The verifier's bound decrypt (compiled rounds or not) inverts encrypt_int."""
    radix, text = rt
    f = FF1(key, radix)
    if native:
        assert f.use_native_rounds()
    n, u = len(text), len(text) // 2

    def num(digits: str) -> int:
        out = 0
        for ch in digits:
            out = out * radix + NUMERAL_ALPHABET.index(ch)
        return out

    a, b = num(text[:u]), num(text[u:])
    ca, cb = FF1(key, radix).encrypt_int(a, b, n, tweak)
    assert f.int_decrypter(n, tweak)(ca, cb) == f.decrypt_int(ca, cb, n, tweak) == (a, b)


def test_compiled_rounds_cover_every_code_format():
    """Every printed code format's layout runs compiled (no silent fallback on the scan path)."""
    from engine.formats import FORMATS

    for fmt in FORMATS.values():
        f = FF1(bytes(16), fmt.radix)
        assert f._layout(fmt.body_length, b"").native is not None, fmt.name


@settings(max_examples=40, deadline=None)
@given(key=keys, radix=st.integers(2, 62), extra=st.integers(0, 12), tweak=st.binary(max_size=20),
       seed=st.integers(0, 2**32 - 1))
def test_batch_path_equals_scalar_path(key, radix, extra, tweak, seed):
    f = FF1(key, radix)
    n = f.min_length + extra
    rng = np.random.default_rng(seed)
    x = rng.integers(0, radix, size=(300, n), dtype=np.uint8)
    ct = f.encrypt_many(x, tweak)
    for row_in, row_out in zip(x[:20], ct[:20]):
        txt = "".join(NUMERAL_ALPHABET[v] for v in row_in)
        assert "".join(NUMERAL_ALPHABET[v] for v in row_out) == f.encrypt(txt, tweak)
    assert (f.decrypt_many(ct, tweak) == x).all()


def test_batch_over_many_chunks_and_threads():
    f = FF1(bytes(range(16)), 32)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 32, size=(200_000, 19), dtype=np.uint8)
    ct = f.encrypt_many(x)
    assert (f.decrypt_many(ct) == x).all()
    for k in (0, 65_535, 65_536, 199_999):
        txt = "".join(NUMERAL_ALPHABET[v] for v in x[k])
        assert "".join(NUMERAL_ALPHABET[v] for v in ct[k]) == f.encrypt(txt)


@pytest.mark.parametrize(
    "key, radix, exc",
    [("00" * 16, 10, TypeError), (bytes(15), 10, ValueError), (bytes(16), 1, ValueError),
     (bytes(16), 63, ValueError), (bytes(16), 10.0, TypeError)],
)
def test_bad_construction(key, radix, exc):
    with pytest.raises(exc):
        FF1(key, radix)


def test_enforces_minimum_domain():
    f = FF1(bytes(16), 10)
    assert f.min_length == 6  # 10^6 >= 1,000,000
    with pytest.raises(ValueError, match="at least 6"):
        f.encrypt("12345")
    assert FF1(bytes(16), 2).min_length == 20
    assert FF1(bytes(16), 36).min_length == 4


def test_rejects_characters_outside_radix():
    f = FF1(bytes(16), 10)
    with pytest.raises(ValueError, match="alphabet"):
        f.encrypt("01234a")
    with pytest.raises(TypeError):
        f.encrypt(b"012345")
    with pytest.raises(TypeError):
        f.encrypt("012345", tweak="x")
    with pytest.raises(ValueError):
        f.encrypt_many(np.full((2, 8), 10, np.uint8))
