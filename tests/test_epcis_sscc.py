"""EPCIS export, pallets as SSCC: every pallet label gets a serial reference that fits the
digits its company prefix leaves, the same in every export, never another pallet's; the
SSCCs of earlier releases are kept where they fit; when the numbers run out the export
says so, for the pallets that do not fit only."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest

from engine.epcis import PalletNumbers, _Namer, _sscc_urn, export_epcis, pallet_sscc

SCHEMA = Path(__file__).parent / "vectors" / "gs1" / "EPCIS-JSON-Schema.json"
T = 1_800_000_000.0
PREFIX9 = "690123456"  # GS1 China prefixes are commonly 9 digits: 7-digit serial references


@pytest.fixture(scope="module")
def schema():
    return json.loads(SCHEMA.read_text())


def _pallet(run, batch, serial: int) -> str:
    return run.data.codes.code(batch, serial, "pallet")


def _ssccs(doc) -> set[str]:
    return {e["parentID"] for e in doc["epcisBody"]["eventList"]
            if e.get("parentID", "").startswith("urn:epc:id:sscc:")}


def test_pallets_of_batch_10_and_up_get_an_sscc_with_a_9_digit_prefix(run, schema):
    """batch * 10^6 + serial did not fit 7 digits from batch 10 on: the whole export failed."""
    r, agg = run, run.agg
    for _ in range(6):
        r.data.create_batch("cap", 1)  # batch ids are global: 4..9
    p10 = r.data.create_batch("pallet", 4)
    p11 = r.data.create_batch("pallet", 2)
    assert (p10.id, p11.id) == (10, 11)
    agg.link(r.pallets[0], [r.cases[0]], now=T)  # batch 3: its SSCC of earlier releases
    agg.link(_pallet(r, p10, 3), [r.cases[1]], now=T)
    agg.link(_pallet(r, p11, 0), [r.cases[2]], now=T)
    agg.link(_pallet(r, p11, 1), [r.cases[3]], now=T)
    doc = export_epcis(agg, company_prefix=PREFIX9, now=T)
    jsonschema.validate(doc, schema)
    ssccs = _ssccs(doc)
    assert len(ssccs) == 4
    assert all(re.fullmatch(r"urn:epc:id:sscc:690123456\.\d{8}", s) for s in ssccs)
    assert _sscc_urn(pallet_sscc(r.pallet_batch, 0, PREFIX9), PREFIX9) in ssccs  # kept

    # later batches (pallets or not) change no SSCC given: the earlier events are unchanged
    r.data.create_batch("cap", 3)
    p13 = r.data.create_batch("pallet", 5)
    agg.link(_pallet(r, p13, 4), [r.cases[4]], now=T + 1)
    again = export_epcis(agg, company_prefix=PREFIX9, now=T)
    jsonschema.validate(again, schema)
    events = doc["epcisBody"]["eventList"]
    assert again["epcisBody"]["eventList"][:len(events)] == events
    assert len(_ssccs(again) - ssccs) == 1


def test_the_numbering_keeps_the_old_ssccs_and_gives_each_pallet_its_own():
    B = SimpleNamespace
    batches = [B(id=1, level="cap", count=5), B(id=2, level="pallet", count=1_500_000),
               *[B(id=i, level="case", count=9) for i in range(3, 10)],
               B(id=10, level="pallet", count=5), B(id=11, level="pallet", count=3_000_000)]
    n = PalletNumbers(batches, "pallet", PREFIX9)
    assert n.width == 7
    assert n.reference(2, 17) == 2_000_017  # batch * 10^6 + serial where it fits
    # the overflow: batch 2 from serial 10^6, then batches 10, 11 ...
    # ... into block 0 (no batch 0), then the blocks of batches 1, 3-9 (block 2 is full)
    assert n.reference(2, 1_000_000) == 0
    assert n.reference(10, 0) == 500_000
    assert n.reference(11, 499_995) == 1_000_000
    assert n.reference(11, 1_499_995) == 3_000_000
    assert n.fit == n.labels == 4_500_005  # all fit: 10,000,000 numbers
    some = [(2, s) for s in (0, 999_999, 1_000_000, 1_499_999)] + [(10, s) for s in range(5)] \
        + [(11, s) for s in (0, 499_994, 499_995, 1_499_994, 1_499_995, 2_999_999)]
    refs = [n.reference(b, s) for b, s in some]
    assert len(set(refs)) == len(refs) and all(0 <= x < 10**7 for x in refs)
    # a new batch appends overflow labels and free numbers: the numbers given stay
    more = PalletNumbers([*batches, B(id=12, level="pallet", count=7)], "pallet", PREFIX9)
    assert [more.reference(b, s) for b, s in some] == refs
    with pytest.raises(ValueError, match="not a pallet batch"):
        n.reference(1, 0)


def test_when_the_numbers_run_out_only_the_pallets_beyond_are_refused(run, schema):
    """A 12-digit prefix leaves 4 digits: 10,000 SSCCs for every pallet label generated."""
    r, agg = run, run.agg
    prefix = "690123456789"
    big = r.data.create_batch("pallet", 10_000)  # + the run's 4 pallets: 10,004 labels
    agg.link(_pallet(r, big, 9_995), [r.cases[0]], now=T)  # the 10,000th number: fits
    doc = export_epcis(agg, company_prefix=prefix, now=T)
    jsonschema.validate(doc, schema)
    assert _ssccs(doc) == {_sscc_urn(PalletNumbers(r.data.batches.list(), "pallet", prefix)
                                     .sscc(big.id, 9_995), prefix)}
    assert _ssccs(doc) == {"urn:epc:id:sscc:690123456789.09999"}
    agg.link(_pallet(r, big, 9_996), [r.cases[1]], now=T)
    with pytest.raises(ValueError, match=r"no SSCC left for pallet 9996 of batch 4: a 12-digit "
                       r"company prefix leaves 4-digit serial references, room for 10,000 of "
                       r"the 10,004 pallet labels"):
        export_epcis(agg, company_prefix=prefix, now=T)
    assert len(_ssccs(export_epcis(agg, company_prefix="0614141", now=T))) == 2
    assert _Namer(agg, None).one(agg.unit(_pallet(r, big, 9_996))).startswith("HTTPS://")
