"""A scan answer's JSON (ScanResult.to_json) is byte for byte what the encoder makes of
ScanResult.to_dict, for every shape of answer."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.scan import JSON_ENCODER, VERDICTS, ScanResult
from engine.scanlog import ScanRecord

text = st.text(max_size=12)  # any unicode: quotes, backslashes, control characters, emoji
maybe_text = st.none() | text
number = st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
anything = st.recursive(st.none() | st.booleans() | number | text,
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                        max_leaves=6)
product = st.dictionaries(text, maybe_text, max_size=6) | st.dictionaries(text, anything, max_size=3) | st.none()
ancestor = st.fixed_dictionaries({"level": maybe_text, "batch": st.integers(0, 2**32) | st.booleans(),
                                  "serial": st.integers(0, 2**32)}) | st.dictionaries(text, anything, max_size=3)
record = st.builds(ScanRecord, count=st.integers(0, 10**9) | st.booleans(), first_at=number,
                   first_region=maybe_text, first_device=maybe_text, last_at=number,
                   last_region=maybe_text, seq=st.integers(0, 10**9))
result = st.builds(ScanResult, verdict=st.sampled_from(VERDICTS), code=maybe_text, role=maybe_text,
                   level=maybe_text, batch=st.none() | st.integers(0, 2**32), serial=st.none() | st.integers(),
                   product=product, ancestors=st.lists(ancestor, max_size=3) | st.tuples(ancestor),
                   distributor=maybe_text, scan=st.none() | record,
                   flags=st.tuples() | st.lists(text, max_size=3).map(tuple) | st.lists(anything, max_size=2).map(tuple),
                   diversion=st.none() | st.dictionaries(text, anything, max_size=3),
                   rewards=st.lists(st.dictionaries(text, anything, max_size=3), max_size=2).map(tuple))


@settings(max_examples=500, deadline=None)
@given(result)
def test_to_json_is_the_encoders_bytes(r):
    assert r.to_json() == JSON_ENCODER.encode(r.to_dict()).encode()


def test_a_real_answer_reads_back():
    r = ScanResult("genuine", "1248F0TQ7RSD5ZRC3QNT", "cap_inner", "cap", 1, 5,
                   {"sku": "SKU-1", "name": "绿茶 500ml", "gtin": None, "lot": "L1"},
                   [{"level": "case", "batch": 2, "serial": 0}], "gz-1",
                   ScanRecord(3, 1796013384.085345, "440106", "d", 1796013495.6905234, "440106", 9),
                   ("diverted",), {"distributor": "gz-1", "territory": ["4401"], "region": "310101"},
                   ({"campaign": 1, "outcome": "won", "amount_fen": 88},))
    assert json.loads(r.to_json()) == r.to_dict()
    assert "绿茶".encode() in r.to_json()  # UTF-8 text, not \\u escapes
