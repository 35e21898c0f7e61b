"""GS1 keys (GTIN, company prefix, SSCC) are ASCII digits 0-9, whatever else
``str.isdigit()`` takes; typed text in full-width forms reads as its ASCII form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.epcis import check_company_prefix, sscc
from engine.formats import check_gtin, fold_full_width, gs1_check_digit
from engine.ids import is_digits

ASCII = "0123456789"
#: What ``str.isdigit()`` takes besides 0-9: other scripts' digits (٤, ४, full-width ４: Nd)
#: and superscripts, circled digits... (², ①: No), which int() refuses.
OTHER_DIGIT = st.characters(categories=["Nd", "No"]).filter(
    lambda c: c.isdigit() and c not in ASCII)


@st.composite
def _one_other_digit(draw, lengths):
    """ASCII digits of one of ``lengths``, one of them replaced by another digit."""
    n = draw(st.sampled_from(lengths))
    text = draw(st.text(ASCII, min_size=n - 1, max_size=n - 1))
    i = draw(st.integers(0, n - 1))
    return text[:i] + draw(OTHER_DIGIT) + text[i:]


@given(_one_other_digit([8, 12, 13, 14]))
def test_a_gtin_with_any_other_digit_is_refused_in_so_many_words(gtin):
    assert gtin.isdigit() and not is_digits(gtin)
    with pytest.raises(ValueError, match=r"GTIN must be 8, 12, 13 or 14 ASCII digits \(0-9\)"):
        check_gtin(gtin)
    with pytest.raises(ValueError, match="GS1 keys are ASCII digits 0-9 only"):
        gs1_check_digit(gtin)


@given(st.sampled_from([7, 11, 12, 13]).flatmap(lambda n: st.text(ASCII, min_size=n, max_size=n)),
       st.integers(1, 9))
def test_every_ascii_gtin_with_its_check_digit_is_taken_and_no_other(body, off):
    check = gs1_check_digit(body)
    assert check_gtin(body + str(check)) == body + str(check)
    with pytest.raises(ValueError, match="wrong check digit"):
        check_gtin(body + str((check + off) % 10))


@given(_one_other_digit(range(6, 13)), st.integers(0, 999))
def test_a_company_prefix_with_any_other_digit_is_refused(prefix, ref):
    for call in (lambda: check_company_prefix(prefix), lambda: sscc(prefix, ref)):
        with pytest.raises(ValueError, match=r"company prefix must be 6 to 12 ASCII digits"):
            call()


@given(st.integers(6, 12).flatmap(lambda n: st.text(ASCII, min_size=n, max_size=n)),
       st.data())
def test_an_sscc_is_18_ascii_digits_with_its_prefix_and_check_digit(prefix, data):
    ref = data.draw(st.integers(0, 10 ** (16 - len(prefix)) - 1))
    ext = data.draw(st.integers(0, 9))
    s = sscc(prefix, ref, ext)
    assert len(s) == 18 and is_digits(s)
    assert s[0] == str(ext) and s[1:1 + len(prefix)] == prefix and int(s[1 + len(prefix):17]) == ref
    assert gs1_check_digit(s[:-1]) == int(s[-1])


@pytest.mark.parametrize("gtin", ["٠٦٩٠١٢٣٤٥٦٧٨٩٢", "6901²34567892", "０６９０１２３４５６７８９２"])
def test_the_reported_gtins_are_refused(gtin):
    with pytest.raises(ValueError, match="ASCII digits"):
        check_gtin(gtin)


@pytest.mark.parametrize("prefix", ["٦٩٠١٢٣٤", "6901²34", "", "12345", "1234567890123", " 0614141"])
def test_the_reported_company_prefixes_are_refused(prefix):
    with pytest.raises(ValueError, match="company prefix must be 6 to 12 ASCII digits"):
        sscc(prefix, 1)


def _full_width(text: str) -> str:
    """What a Chinese input method types for ASCII ``text``: U+FF01-FF5E, U+3000."""
    return "".join("\u3000" if c == " " else chr(ord(c) + 0xFEE0) for c in text)


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_full_width_text_folds_to_its_ascii_form(text):
    assert fold_full_width(_full_width(text)) == text
    assert fold_full_width(text) is text  # ASCII: as it is
