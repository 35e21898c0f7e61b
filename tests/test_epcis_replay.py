"""EPCIS export: replaying the exported AggregationEvents gives the stored hierarchy; each
EPC is listed once per event; eventIDs are distinct; every export passes GS1's schema."""

from __future__ import annotations

import collections
import json
import uuid
from pathlib import Path

import jsonschema
import pytest

from engine.epcis import _Namer, _time, export_epcis

SCHEMA = Path(__file__).parent / "vectors" / "gs1" / "EPCIS-JSON-Schema.json"
URL = "HTTPS://S.EXAMPLE.CN/Q/"
T = 1_800_000_000.0


@pytest.fixture(scope="module")
def schema():
    return json.loads(SCHEMA.read_text())


@pytest.fixture
def world(run):
    """Cases 0-3 of 24 caps; cases 0, 1 on pallet 0 and 2, 3 on pallet 1; activated;
    distributor A."""
    agg = run.agg
    for c in range(4):
        agg.link(run.cases[c], run.caps[24 * c:24 * c + 24], now=T)
    agg.link(run.pallets[0], run.cases[0:2], now=T)
    agg.link(run.pallets[1], run.cases[2:4], now=T)
    agg.activate(sku="S", name="N", lot="L", production_date="2026-11-01",
                 pallets=run.pallets[:2], now=T)
    agg.add_distributor("A", "A", ["4401"])
    return run


def _replay(doc) -> dict[str, str]:
    """child EPC -> parent EPC after applying the AggregationEvents in order."""
    parents: dict[str, set[str]] = {}
    for e in doc["epcisBody"]["eventList"]:
        if e["type"] != "AggregationEvent":
            continue
        for c in e["childEPCs"]:
            if e["action"] == "ADD":
                parents.setdefault(c, set()).add(e["parentID"])
            elif e["action"] == "DELETE":
                parents.get(c, set()).discard(e["parentID"])
    assert all(len(ps) <= 1 for ps in parents.values()), "a child in two parents"
    return {c: next(iter(ps)) for c, ps in parents.items() if ps}


@pytest.mark.parametrize("prefix", [None, "0614141"])
def test_replaying_the_export_gives_the_stored_hierarchy(world, schema, prefix):
    r, agg = world, world.agg
    agg.unpack(r.cases[0], [r.caps[0]], now=T + 1)
    agg.move([r.cases[1]], to=r.pallets[2], now=T + 2)
    agg.replace(r.cases[0], r.cases[4], now=T + 3)  # a case label: parent and children
    agg.replace(r.caps[30], r.caps[200], now=T + 4)  # a cap label: a parent only
    agg.replace(r.pallets[1], r.pallets[3], now=T + 5)  # a pallet label: children only
    doc = export_epcis(agg, company_prefix=prefix, now=T)
    jsonschema.validate(doc, schema)
    name = _Namer(agg, prefix)
    stored = {name.one(c): name.one(p) for c, p in agg.links().items()}
    assert _replay(doc) == stored
    # the old labels are out of the hierarchy, before they are decommissioned
    events = doc["epcisBody"]["eventList"]
    old = name.one(agg.unit(r.cases[0]))
    kinds = [(e["type"], e["action"], e.get("bizStep")) for e in events
             if old in e.get("childEPCs", []) + e.get("epcList", []) + [e.get("parentID")]]
    assert kinds[-3:] == [("AggregationEvent", "DELETE", "unpacking"),
                          ("AggregationEvent", "DELETE", "unpacking"),
                          ("ObjectEvent", "DELETE", "decommissioning")]
    agg.check_consistency()


def test_export_lists_each_epc_once(world, schema):
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A", now=T + 1)
    agg.receive([r.pallets[0], URL + r.pallets[0]], now=T + 2)
    agg.return_goods([r.cases[0], r.cases[0].lower()], now=T + 3)
    # NOTE: a stored event from before receive/return kept each unit once (older data)
    with agg.store.write() as txn:
        u = agg.unit(r.cases[1])
        agg._event(txn, "receive", T + 4, [u], units=[u, u])
    doc = export_epcis(agg, company_prefix="0614141", now=T)
    jsonschema.validate(doc, schema)
    last = doc["epcisBody"]["eventList"][-1]
    assert last["epcList"] == [URL + r.cases[1]]


def test_identical_operations_get_distinct_event_ids(world, schema):
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A", now=T + 1)
    agg.receive([r.pallets[0]], now=T + 2)  # e.g. two gate scanners, or a retry
    agg.receive([r.pallets[0]], now=T + 2)
    doc = export_epcis(agg, now=T)
    jsonschema.validate(doc, schema)
    ids = collections.Counter(e["eventID"] for e in doc["epcisBody"]["eventList"])
    assert max(ids.values()) == 1
    assert export_epcis(agg, now=T) == doc  # still deterministic


def test_events_name_the_brand_china_time_and_no_hash_they_are_not(world, schema):
    """Parties and ILMD terms under the brand's own domain (the data folder's URL base),
    not a reserved example domain; the offset in effect where events happen (China,
    +08:00); eventIDs as name-based UUIDs, not ``ni:///...?ver=CBV2.0``, which names CBV's
    Event Hash ID (a hash of a canonical string that partners recompute)."""
    r, agg = world, world.agg
    agg.ship([r.pallets[0]], "A", now=T + 1)
    doc = export_epcis(agg, now=T)
    jsonschema.validate(doc, schema)
    events = doc["epcisBody"]["eventList"]
    assert doc["@context"][1] == {"wuma": "https://s.example.cn/epcis/"}
    assert {e["eventTimeZoneOffset"] for e in events} == {"+08:00"}
    assert all(str(uuid.UUID(e["eventID"].removeprefix("urn:uuid:"))) == e["eventID"][9:]
               and e["eventID"].startswith("urn:uuid:") for e in events)
    (shipped,) = [e for e in events if e.get("bizStep") == "shipping"]
    assert shipped["destinationList"] == [{"type": "owning_party",
                                           "destination": "https://s.example.cn/party/A"}]
    (commissioned,) = [e for e in events if e.get("bizStep") == "commissioning"]
    assert commissioned["ilmd"] == {"wuma:lot": "L", "wuma:sku": "S", "wuma:productionDate": "2026-11-01"}
    assert "brand.example" not in json.dumps(doc)


@pytest.mark.parametrize("prefix", ["٦٩٠١٢٣٤", "6901²34", "06141４1"])
def test_a_company_prefix_of_other_digits_is_refused(world, prefix):
    """Arabic-Indic digits were written into the SSCC URNs; '²' failed with int()'s
    "invalid literal"."""
    with pytest.raises(ValueError, match=r"company prefix must be 6 to 12 ASCII digits \(0-9\)"):
        export_epcis(world.agg, company_prefix=prefix, now=T)
    pallets = [e["parentID"] for e in export_epcis(world.agg, company_prefix="0614141", now=T)
               ["epcisBody"]["eventList"] if e.get("parentID", "").startswith("urn:epc:id:sscc:")]
    assert pallets and all(p.isascii() for p in pallets)


@pytest.mark.parametrize("prefix", [None, "0614141"])
def test_a_replacement_label_is_commissioned_with_the_product_it_took_over(world, schema, prefix):
    """Wuma treats a replacement label as active with the old one's product; the export
    only put it into its parent (AggregationEvent ADD) and never commissioned it."""
    r, agg = world, world.agg
    agg.replace(r.caps[30], r.caps[200], now=T + 1)  # activated (under pallet 0)
    agg.replace(r.caps[200], r.caps[201], now=T + 2)  # the replacement replaced in turn
    agg.replace(r.pallets[1], r.pallets[3], now=T + 3)  # an activated pallet: SSCC or URL
    agg.replace(r.caps[100], r.caps[202], now=T + 4)  # never activated: nothing to take over
    assert agg.is_active(agg.unit(r.caps[201])) and not agg.is_active(agg.unit(r.caps[202]))
    doc = export_epcis(agg, company_prefix=prefix, now=T)
    jsonschema.validate(doc, schema)
    name = _Namer(agg, prefix)
    events = doc["epcisBody"]["eventList"]
    commissioned = {}
    for e in events:
        if (e["type"], e["action"], e.get("bizStep")) == ("ObjectEvent", "ADD", "commissioning"):
            for epc in e["epcList"]:
                commissioned[epc] = (e["disposition"], e["ilmd"]["wuma:lot"],
                                     e["ilmd"]["wuma:sku"], e["eventTime"])
    for code, t in ((r.caps[200], T + 1), (r.caps[201], T + 2), (r.pallets[3], T + 3)):
        assert commissioned[name.one(agg.unit(code))] == ("active", "L", "S", _time(t))
    assert name.one(agg.unit(r.caps[202])) not in commissioned
    ids = collections.Counter(e["eventID"] for e in events)
    assert max(ids.values()) == 1
