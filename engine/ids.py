"""Identifiers and region codes: one definition of each, for the checks and the OpenAPI
documents alike.

A value is checked whole (``re.fullmatch``): with ``^...$`` a trailing newline would pass
(``$`` matches before it), and ``\\d`` would admit any Unicode digit (``"٤٤٠١٠٦"``), which
the OpenAPI patterns (``[0-9]``) and every later comparison of region codes do not.
"""

from __future__ import annotations

import functools
import re

__all__ = ["CONTROL_CHARACTERS", "ID_PATTERN", "REGION_PATTERN", "TEXT_ID_PATTERN", "check_name", "check_text",
           "check_limit", "has_control", "is_digits",
           "is_id", "is_region_code", "region_prefix"]

#: Ids of accounts, products (SKUs), pools, print lines and admin tokens: 1-64 letters,
#: digits, '_', '.', '-', starting with a letter or digit (as an OpenAPI pattern).
ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: An administrative division code (行政区划代码) or a prefix of one: 2-12 ASCII digits.
REGION_PATTERN = "^[0-9]{2,12}$"
#: The characters :data:`TEXT_ID_PATTERN` refuses, as the inside of a regular expression's
#: class.
CONTROL_CHARACTERS = "\\u0000-\\u001f\\u007f-\\u009f\\u200e\\u200f\\u2028-\\u202e\\u2066-\\u2069"
#: Ids the front end makes up (a consumer's user id, a device id): any text but control
#: characters (C0, DEL, C1), the Unicode line and paragraph separators and the
#: bidirectional controls (U+200E/F, U+202A-E, U+2066-9). Those would reshape an
#: operator's terminal listing (or drive the terminal: escape sequences), rows of exports,
#: or the order in which an id reads.
TEXT_ID_PATTERN = f"^[^{CONTROL_CHARACTERS}]*$"
_ID = re.compile(ID_PATTERN[1:-1])
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")
_REGION = re.compile(REGION_PATTERN[1:-1])


def is_id(value: object) -> bool:
    return value.__class__ is str and _ID.fullmatch(value) is not None


def is_digits(text: object) -> bool:
    """Whether ``text`` is a non-empty string of ASCII digits 0-9 (a GS1 key, a prefix).

    NOTE: ``str.isdigit()`` alone also takes other scripts' digits (``"٠٦٩"``) and
    superscripts (``"²"``, which ``int()`` then refuses): the ``[0-9]`` of the patterns here."""
    return text.__class__ is str and text.isascii() and text.isdigit()


def is_region_code(value: object) -> bool:
    return value.__class__ is str and _REGION.fullmatch(value) is not None


def has_control(text: str) -> bool:
    """Whether ``text`` holds a character :data:`TEXT_ID_PATTERN` refuses. PERF: ASCII
    text (the usual id) by ``isprintable()``: every refused character is one it refuses,
    and for ASCII it refuses exactly those."""
    if text.isprintable():
        return False
    return text.isascii() or _CONTROL.search(text) is not None


@functools.lru_cache(maxsize=4096)  # NOTE: the region codes seen lately: some thousands of districts
def region_prefix(code: str) -> str:
    """A division code (行政区划代码: 2 digits province, 2 city, 2 county, 3 township, 3
    village) as the prefix its divisions share: a level of zeros names the division above
    (440100, Guangzhou -> 4401; 440000, Guangdong -> 44; 440183100000, a town -> 440183100;
    440106 stays). Only whole levels: "440183100" is a town of 440183, not a prefix of
    the towns 1001..1009; a code of another length is taken as the prefix it is."""
    n = len(code)
    if n == 12 and code.endswith("000"):
        code, n = code[:9], 9
    if n == 9 and code.endswith("000"):
        code, n = code[:6], 6
    if n == 6 and code.endswith("00"):
        code, n = code[:4], 4
    if n == 4 and code.endswith("00"):
        code = code[:2]
    return code


def check_text(value: str, what: str) -> str:
    """``value``, or ValueError naming ``what`` when it holds a character the scan API
    refuses in ids (:func:`has_control`: C0/C1 controls such as NUL, DEL, line and
    paragraph separators, bidirectional controls such as U+202E).

    APPSEC: names and other free text an operator types are printed in listings
    (``wuma product list``, the admin page, exports): a control character would reshape an
    operator's terminal (or drive it: escape sequences), split rows, or reverse how a
    name reads."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be text, not {type(value).__name__}")
    if has_control(value):
        raise ValueError(f"{what}: no control characters (such as NUL, a line break, an escape or U+202E, "
                         "a bidirectional override)")
    if not value.isascii():
        try:  # NOTE: JSON may carry a lone surrogate ("\ud800"): no text, and it cannot be stored
            value.encode()
        except UnicodeEncodeError as e:
            raise ValueError(f"{what}: must be Unicode text; it holds a lone surrogate "
                             f"(\\u{ord(value[e.start]):04x} at character {e.start + 1})") from None
    return value


def check_name(value: object, what: str, *, limit: int = 200, required: bool = True,
               hint: str = "") -> str:
    """``value``, free text a person types and listings print (a product's, a pool's or an
    account's name; a reversal's reason), or ValueError naming ``what``: text of at most
    ``limit`` characters, not blank when ``required``, and without the characters
    :func:`check_text` refuses. ``hint`` ends the message (where to give the text)."""
    if not isinstance(value, str) or len(value) > limit or (required and not value.strip()):
        size = f"1-{limit} characters, not only spaces" if required else f"at most {limit} characters"
        raise ValueError(f"{what}: {size}{hint}")
    return check_text(value, what)


def check_limit(limit: object) -> None:
    """ValueError unless ``limit`` (a page's size) is a whole number of at least 1; a bool
    is no number here (``True`` would read as 1)."""
    if limit.__class__ is not int or limit < 1:
        raise ValueError("limit must be a whole number of at least 1")
