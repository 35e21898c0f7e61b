"""Printed code formats, and the URL forms a code is printed as.

A printed code is ``[key version character][FF1 ciphertext]``. The ciphertext is the
FF1 encryption of the payload integer::

    P = role | batch | serial | tag      (bit fields, most significant first)

with ``tag = 0``. A code that was not made with the key decrypts to a random payload,
whose tag is zero with probability ``2^-tag_bits``: that is the forgery bound. The key
version character is not secret; it selects which master key version decrypts.

Default ``base32``: Crockford base32, 20 characters (1 + 19), 95 payload bits:
3 role + 20 batch + 32 serial + **40 tag bits** (a random guess passes with
probability 2^-40, about 1 in 10^12; EU FMD asks for < 1/10,000).

``decimal`` (for codes typed by hand): 24 digits (1 + 23), 76 payload bits:
3 + 20 + 32 + **21 tag bits**, so a random guess passes the tag with probability
2^-21 (about 1 in 2.1 million). It must also name a batch that exists and a serial
below its count, and the scan service rate-limits and bans guessers; still, prefer
``base32`` for anything that pays out.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import unquote

from engine.ids import is_digits

__all__ = [
    "check_gtin",
    "CROCKFORD_ALPHABET",
    "CodeFormat",
    "FORMATS",
    "QR_V3M_ALPHANUMERIC_CAPACITY",
    "extract_code",
    "fold_full_width",
    "short_url",
    "digital_link",
    "gs1_check_digit",
    "is_host_name",
    "validate_url_base",
]

CROCKFORD_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: QR code version 3, error correction M, alphanumeric mode (ISO/IEC 18004 table 7).
QR_V3M_ALPHANUMERIC_CAPACITY = 61
_QR_ALNUM = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")
#: Longest input worth looking at: a long URL. Anything longer is invalid outright.
MAX_INPUT = 512
_CROCKFORD_READ = str.maketrans({"I": "1", "L": "1", "O": "0"})
#: What a code may be broken up with: spaces, tabs, line breaks and dashes (after
#: fold_full_width: an ideographic space and an input method's dashes are among them).
#: NOTE: not ``\s``, which also takes control characters (U+001C to U+001F, U+000B, U+000C,
#: U+0085) and Unicode line separators that nobody types into a code.
_SPACES = " \t\r\n"
_SEPARATORS = re.compile("[" + _SPACES + "-]+")


@dataclass(frozen=True)
class CodeFormat:
    """How one code role is printed: alphabet, total length and payload layout."""

    name: str
    alphabet: str
    length: int
    role_bits: int = 3
    batch_bits: int = 20
    serial_bits: int = 32
    case_insensitive: bool = True

    def __post_init__(self) -> None:
        if len(set(self.alphabet)) != len(self.alphabet) or len(self.alphabet) < 2:
            raise ValueError(f"format {self.name}: alphabet must have distinct characters")
        if self.tag_bits < 16:
            raise ValueError(f"format {self.name}: only {self.tag_bits} tag bits; need >= 16")
        if self.tag_bits >= 64:
            raise ValueError(f"format {self.name}: tag over 63 bits is not supported")

    @cached_property
    def radix(self) -> int:
        return len(self.alphabet)

    @cached_property
    def body_length(self) -> int:
        """Numerals under FF1 (the length minus the key version character)."""
        return self.length - 1

    @cached_property
    def payload_bits(self) -> int:
        return int(math.floor(self.body_length * math.log2(self.radix) + 1e-9))

    @cached_property
    def tag_bits(self) -> int:
        return self.payload_bits - self.role_bits - self.batch_bits - self.serial_bits

    @cached_property
    def max_key_version(self) -> int:
        return self.radix - 1

    @cached_property
    def guess_probability(self) -> float:
        return 2.0 ** -self.tag_bits

    def version_char(self, version: int) -> str:
        if not 1 <= version <= self.max_key_version:
            raise ValueError(f"key version {version} does not fit format {self.name}")
        return self.alphabet[version]

    @cached_property
    def reads_crockford(self) -> bool:
        """Read I/L as 1 and O as 0 (Crockford base32, case-insensitive)."""
        return self.case_insensitive and self.alphabet == CROCKFORD_ALPHABET

    @cached_property
    def _canonical(self) -> re.Pattern:
        return re.compile("[" + re.escape(self.alphabet) + "]{%d}" % self.length)

    def normalise(self, text: str) -> str | None:
        """The canonical printed form of ``text``, or None if it cannot be this format.

        ``text`` is as :func:`extract_code` gives it (full-width forms already folded).
        Separators (spaces, tabs, line breaks, dashes) are ignored; base32 is read
        case-insensitively with Crockford's I/L -> 1 and O -> 0. Any other character
        outside ASCII makes it None.
        """
        canonical = self._canonical
        if len(text) == self.length and canonical.fullmatch(text):
            return text  # PERF: the common case, a scanned code as printed
        # APPSEC: str.upper() reads some letters of other alphabets as ASCII ones (dotless
        # "\u0131" and "\U0001d6a4" as "I", so as "1"): a code is ASCII (PERF: a flag test)
        if not text.isascii():
            return None
        s = _SEPARATORS.sub("", text)
        if len(s) != self.length:
            return None
        if self.case_insensitive:
            s = s.upper()
            if self.reads_crockford:
                s = s.translate(_CROCKFORD_READ)
        return s if canonical.fullmatch(s) else None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "alphabet": self.alphabet,
            "length": self.length,
            "radix": self.radix,
            "role_bits": self.role_bits,
            "batch_bits": self.batch_bits,
            "serial_bits": self.serial_bits,
            "tag_bits": self.tag_bits,
            "guess_probability": self.guess_probability,
        }


FORMATS: dict[str, CodeFormat] = {
    "base32": CodeFormat("base32", CROCKFORD_ALPHABET, 20),
    "decimal": CodeFormat("decimal", "0123456789", 24, case_insensitive=False),
}


def fold_full_width(text: str) -> str:
    """``text`` with the full-width forms and ideographic spaces of a Chinese input method
    (``１ＤＧＣ－…``) read as their ASCII forms (Unicode NFKC), the dashes an input method
    types for "-" (``—``, ``–``, ``−``) read as "-", and the invisible characters a copy and
    paste brings along (a zero-width space, a byte-order mark, a soft hyphen) dropped;
    ASCII text as it is (PERF: the usual scan pays one ``isascii``)."""
    return text if text.isascii() else unicodedata.normalize("NFKC", text).translate(_PASTED)


#: Characters of typed or pasted text that are not what they look like: dropped (zero-width
#: space, joiners, word joiner, byte-order mark, soft hyphen) or read as "-" (the dashes).
_PASTED = str.maketrans({**dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad"),
                         **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-")})


def extract_code(text: str) -> str | None:
    """The code part of a scanned string: a bare code, a short URL or a Digital Link.

    Returns None for input that is too long or not text. The result is not yet
    validated against any format.
    """
    if not isinstance(text, str) or len(text) > MAX_INPUT:
        return None
    s = fold_full_width(text).strip(_SPACES)
    if "/" not in s:
        return s
    s = s.split("#", 1)[0].split("?", 1)[0]
    parts = [p for p in s.split("/") if p]
    # GS1 Digital Link: .../01/{GTIN}/21/{serial}
    for i in range(len(parts) - 1):
        if parts[i] == "21" and i >= 2 and parts[i - 2] == "01":
            return _unquoted(parts[i + 1])
    return _unquoted(parts[-1]) if parts else ""


def _unquoted(segment: str) -> str:
    """A URL path segment with its percent-encoding read (``%31F5`` is ``1F5``: the same
    URI, RFC 3986 6.2.2.2); a ``%`` not followed by two hex digits is left as it is."""
    return unquote(segment, errors="replace") if "%" in segment else segment


_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")


def is_host_name(text, *, port: bool = False) -> bool:
    """Whether ``text`` is a host name or an IPv4 address: dot-separated labels of 1 to 63
    ASCII letters, digits and inner hyphens, 253 characters at most; with ``port``, a
    ``:PORT`` (1 to 5 digits) may follow. No trailing dot: a caller that takes a fully
    qualified ``name.`` drops it first."""
    if not isinstance(text, str):
        return False
    name = text
    if port:
        name, colon, number = text.partition(":")
        if colon and not _PORT.fullmatch(number):
            return False
    return len(name) <= 253 and _HOST_NAME.fullmatch(name) is not None


#: A serial number, GS1 AI (21): 1 to 20 characters. Wuma's codes use letters and digits
#: only (a subset of the AI's character set 82, none needing percent-encoding in a URI).
_AI21 = re.compile(r"[A-Za-z0-9]{1,20}")


def validate_url_base(url_base: str, code_length: int) -> str:
    """``url_base`` in capitals (its scheme and host are read in any case), checked to fit
    QR version 3-M in alphanumeric mode with a ``code_length`` code after it; a path in
    small letters is refused (printed in capitals it would be another path)."""
    if not isinstance(url_base, str) or not url_base:
        raise ValueError("url base must be a non-empty string such as HTTPS://S.EXAMPLE.CN/Q/")
    scheme, sep, rest = url_base.partition("://")
    host, slash, path = rest.partition("/")
    # NOTE: a phone's camera opens a printed label only if it reads as a web address
    if not sep or scheme.upper() not in ("HTTP", "HTTPS") or not slash or not is_host_name(host, port=True) \
            or " " in path:
        raise ValueError(f"url base {url_base!r} is not a web address such as HTTPS://S.EXAMPLE.CN/Q/ "
                         "(HTTP or HTTPS, a host name, a path ending in '/', no spaces)")
    # NOTE: QR alphanumeric mode has capitals only, and only a URL's scheme and host are
    # read in any case (RFC 3986 6.2.2.1): a path printed in capitals where the landing
    # page answers in small letters would be a 404 on every label
    if path != path.upper():
        raise ValueError(
            f"url base {url_base!r}: its path /{path} would be printed as /{path.upper()} (QR "
            f"alphanumeric mode has capitals only) and a web server's paths are case-sensitive: "
            f"give the path in capitals, as the landing page answers it (e.g. {url_base.upper()!r})")
    base = url_base.upper()
    bad = sorted(set(base) - _QR_ALNUM)
    if bad:
        raise ValueError(
            f"url base {url_base!r} has characters outside QR alphanumeric mode: {''.join(bad)!r}"
        )
    if not base.endswith("/"):
        raise ValueError("url base must end with '/'")
    if len(base) + code_length > QR_V3M_ALPHANUMERIC_CAPACITY:
        raise ValueError(
            f"url base is {len(base)} characters; with a {code_length}-character code the URL "
            f"exceeds the {QR_V3M_ALPHANUMERIC_CAPACITY} that fit QR version 3-M"
        )
    return base


def short_url(code: str, url_base: str) -> str:
    """``HTTPS://S.EXAMPLE.CN/Q/<code>``: uppercase, QR alphanumeric mode."""
    return url_base + code


def gs1_check_digit(digits: str) -> int:
    """GS1 mod-10 check digit for the digits that precede it (GTIN, SSCC, ...)."""
    if not is_digits(digits):
        raise ValueError("GS1 keys are ASCII digits 0-9 only")
    total = 0
    for i, ch in enumerate(reversed(digits)):
        total += int(ch) * (3 if i % 2 == 0 else 1)
    return (10 - total % 10) % 10


def check_gtin(gtin) -> str:
    """A GTIN-8/12/13/14 with a correct GS1 check digit (returned as given), else ValueError."""
    if not is_digits(gtin) or len(gtin) not in (8, 12, 13, 14):
        raise ValueError("GTIN must be 8, 12, 13 or 14 ASCII digits (0-9)")
    if gs1_check_digit(gtin[:-1]) != int(gtin[-1]):
        raise ValueError(f"GTIN {gtin} has a wrong check digit "
                         f"(expected {gs1_check_digit(gtin[:-1])})")
    return gtin


def digital_link(code: str, gtin: str, domain: str) -> str:
    """GS1 Digital Link URI ``https://{domain}/01/{GTIN-14}/21/{code}``, or ValueError: a
    serial (AI 21) holds at most 20 characters, so a 20-character ``base32`` code fits and
    a 24-digit ``decimal`` one does not (print its short URL)."""
    check_gtin(gtin)
    host = domain.strip("/") if isinstance(domain, str) else ""
    if not is_host_name(host, port=True):
        raise ValueError(f"domain must be a host name such as brand.example, not {domain!r}")
    if not isinstance(code, str) or not _AI21.fullmatch(code):
        raise ValueError("a GS1 Digital Link serial (AI 21) is 1 to 20 letters and digits: a "
                         "decimal code (24 digits) has no Digital Link; print its short URL")
    return f"https://{host}/01/{gtin.zfill(14)}/21/{code}"
