"""GS1 interchange: EPCIS 2.0 JSON-LD export of the aggregation history, and SSCC.

Event mapping (CBV 2.0 vocabulary):

* activation -> ObjectEvent ADD, bizStep ``commissioning``, disposition ``active``
* line-collection load / pack / move -> AggregationEvent ADD, bizStep ``packing``
* unpack / move (from the old parent) -> AggregationEvent DELETE, bizStep ``unpacking``
* replace -> AggregationEvent DELETE ``unpacking`` (the old label from its parent, its
  children from it) + ObjectEvent DELETE ``decommissioning`` (old) + AggregationEvent ADD
  ``replacing`` (the new label into the parent, the children into it): replaying the
  AggregationEvents in order gives the stored hierarchy
* void -> ObjectEvent DELETE, bizStep ``decommissioning``, disposition ``inactive``
* ship / transfer -> ObjectEvent OBSERVE ``shipping`` ``in_transit`` with the
  distributor as owning-party destination; receive -> ``receiving``; return ->
  ``receiving`` with disposition ``returned``.

An EPC appears once per list (``epcList`` and ``childEPCs`` are sets in the schema): the
stored unpack, receive and return events may list a unit twice (older data), so their
lists are de-duplicated; the others hold each unit once by construction (a load's links,
an activation's or a void's disjoint runs, a shipment's units). The eventID hashes the
exported event together with the stored event's id and its place among the events
exported for it, so two identical operations in one millisecond still get distinct
eventIDs.

Units are identified by their printed short URL (``url_base + code``); pallets by SSCC
(``urn:epc:id:sscc:...``) when a GS1 company prefix is given.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time

import numpy as np

from engine.formats import gs1_check_digit
from engine.ids import is_digits
from engine.store import unpack

__all__ = ["sscc", "pallet_sscc", "check_company_prefix", "export_epcis", "check_parent_ids",
           "EPCIS_CONTEXT"]

EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"


def check_company_prefix(company_prefix: str) -> str:
    """A GS1 company prefix (6 to 12 ASCII digits), returned as given; else ValueError."""
    if not (is_digits(company_prefix) and 6 <= len(company_prefix) <= 12):
        raise ValueError("GS1 company prefix must be 6 to 12 ASCII digits (0-9), "
                         "such as 0614141")
    return company_prefix


def sscc(company_prefix: str, serial_reference: int, extension: int = 0) -> str:
    """The 18-digit SSCC: extension digit + company prefix + serial reference + check."""
    check_company_prefix(company_prefix)
    if not 0 <= extension <= 9:
        raise ValueError("extension digit must be 0-9")
    width = 16 - len(company_prefix)
    if not 0 <= serial_reference < 10**width:
        raise ValueError(f"serial reference must fit {width} digits with this company prefix")
    body = f"{extension}{company_prefix}{serial_reference:0{width}d}"
    return body + str(gs1_check_digit(body))


def pallet_sscc(batch: int, serial: int, company_prefix: str, extension: int = 0) -> str:
    """SSCC of a pallet unit: serial reference = batch * 10^6 + serial.

    NOTE: needs serial < 10^6 and enough digits for the batch id (a 7-digit company
    prefix leaves 9 digits: batch ids up to 999); a ValueError says when it does not fit.
    """
    if not 0 <= serial < 10**6:
        raise ValueError("pallet serial must be below 1,000,000 for an SSCC")
    return sscc(company_prefix, batch * 10**6 + serial, extension)


def _sscc_urn(code18: str, company_prefix: str) -> str:
    ext, cp, ref = code18[0], code18[1:1 + len(company_prefix)], code18[1 + len(company_prefix):17]
    return f"urn:epc:id:sscc:{cp}.{ext}{ref}"


def _time(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


class _Namer:
    """uid -> EPC URI, rendering codes of a batch in bulk."""

    def __init__(self, agg, company_prefix: str | None) -> None:
        self.agg = agg
        self.data = agg.data
        self.prefix = company_prefix
        self.pallet_level = agg.spec.levels[0].name

    def many(self, uids) -> list[str]:
        uids = np.asarray(list(uids), np.uint64)
        out: list[str | None] = [None] * len(uids)
        if not len(uids):
            return []
        base = self.data.url_base
        for b in np.unique(uids >> np.uint64(32)).tolist():
            idx = np.flatnonzero((uids >> np.uint64(32)) == b)
            serials = (uids[idx] & np.uint64(0xFFFFFFFF)).astype(np.int64)
            batch = self.data.batches.get(b)
            if batch.level == self.pallet_level and self.prefix:
                for i, s in zip(idx.tolist(), serials.tolist()):
                    out[i] = _sscc_urn(pallet_sscc(b, s, self.prefix), self.prefix)
                continue
            lo, hi = int(serials.min()), int(serials.max()) + 1
            width = self.data.spec.role(batch.roles[0]).format.length
            mat = self.data.codes.render(batch, lo, hi)[:, :width]
            for i, s in zip(idx.tolist(), serials.tolist()):
                out[i] = base + mat[s - lo].tobytes().decode("ascii")
        return out  # type: ignore[return-value]

    def one(self, uid: int) -> str:
        return self.many([uid])[0]


def _event_id(ev: dict, source: tuple[int, int]) -> str:
    """``source`` = (stored event id, index among the events exported for it)."""
    digest = hashlib.sha256(json.dumps([ev, list(source)], sort_keys=True).encode()).hexdigest()
    return f"ni:///sha-256;{digest}?ver=CBV2.0"


def _expand(runs) -> list[int]:
    return [u for f, l in runs for u in range(int(f), int(l) + 1)]


def _once(uids) -> list[int]:
    """``uids`` each once, in order (the schema's uniqueItems)."""
    return list(dict.fromkeys(uids))


def export_epcis(agg, *, company_prefix: str | None = None, now: float | None = None,
                 brand_uri: str = "https://brand.example/party/") -> dict:
    """An EPCISDocument with one or more events per recorded aggregation event."""
    if company_prefix is not None:
        check_company_prefix(company_prefix)  # NOTE: up front, pallets or not
    name = _Namer(agg, company_prefix)
    out: list[dict] = []
    source = [0, 0]  # the stored event being exported, events exported for it so far

    def add(ev: dict, t: float) -> None:
        ev = {"type": ev.pop("type"), "eventTime": _time(t), "eventTimeZoneOffset": "+00:00", **ev}
        ev["eventID"] = _event_id(ev, (source[0], source[1]))
        source[1] += 1
        out.append(ev)

    def relink(ev: dict, action: str, label: int, step: str) -> None:
        """A replace event's ``label`` into (ADD) or out of (DELETE) its parent, and its
        children into or out of ``label``."""
        if ev.get("parent") is not None:
            add({"type": "AggregationEvent", "action": action, "parentID": name.one(ev["parent"]),
                 "childEPCs": [name.one(label)], "bizStep": step}, ev["time"])
        if ev.get("children"):
            add({"type": "AggregationEvent", "action": action, "parentID": name.one(label),
                 "childEPCs": name.many(ev["children"]), "bizStep": step}, ev["time"])

    with agg.store.read() as txn:
        activations = {}
        for ev in agg.events():
            t, kind = ev["time"], ev["type"]
            source[:] = [ev["id"], 0]
            if kind == "load":
                rp, rf, rn = agg.load_runs(ev["id"])
                order = np.argsort(rp, kind="stable")
                kids: dict[int, list[int]] = {}
                for p, f, n in zip(rp[order].tolist(), rf[order].tolist(), rn[order].tolist()):
                    kids.setdefault(p, []).extend(range(f, f + n))
                for p, ks in kids.items():
                    add({"type": "AggregationEvent", "action": "ADD", "parentID": name.one(p),
                         "childEPCs": name.many(ks), "bizStep": "packing",
                         "disposition": "in_progress"}, t)
            elif kind == "pack":
                add({"type": "AggregationEvent", "action": "ADD",
                     "parentID": name.one(ev["parent"]), "childEPCs": name.many(ev["children"]),
                     "bizStep": "packing"}, t)
            elif kind == "unpack":
                add({"type": "AggregationEvent", "action": "DELETE",
                     "parentID": name.one(ev["parent"]),
                     "childEPCs": name.many(_once(ev["children"])), "bizStep": "unpacking"}, t)
            elif kind == "move":
                olds: dict[int, list[int]] = {}
                for c, p in zip(ev["children"], ev["previous"]):
                    if p is not None:
                        olds.setdefault(p, []).append(c)
                for p, cs in olds.items():
                    add({"type": "AggregationEvent", "action": "DELETE", "parentID": name.one(p),
                         "childEPCs": name.many(cs), "bizStep": "unpacking"}, t)
                add({"type": "AggregationEvent", "action": "ADD",
                     "parentID": name.one(ev["parent"]), "childEPCs": name.many(ev["children"]),
                     "bizStep": "packing"}, t)
            elif kind == "replace":
                # the old label out of its parent and its children out of it; the new in
                relink(ev, "DELETE", ev["old"], "unpacking")
                add({"type": "ObjectEvent", "action": "DELETE", "epcList": [name.one(ev["old"])],
                     "bizStep": "decommissioning", "disposition": "damaged"}, t)
                relink(ev, "ADD", ev["new"], "replacing")
            elif kind == "void":
                add({"type": "ObjectEvent", "action": "DELETE", "epcList": name.many(
                    _expand(ev["runs"])), "bizStep": "decommissioning",
                     "disposition": "inactive"}, t)
            elif kind == "activate":
                aid = ev["activation"]
                if aid not in activations:
                    raw = txn.get(aid.to_bytes(4, "big"), db=agg._activations_db)
                    activations[aid] = unpack(raw)
                a = activations[aid]
                obj = {"type": "ObjectEvent", "action": "ADD",
                       "epcList": name.many(_expand(ev["runs"])), "bizStep": "commissioning",
                       "disposition": "active",
                       "ilmd": {"example:lot": a["lot"], "example:sku": a["sku"],
                                "example:productionDate": a["production_date"]}}
                add(obj, t)
            elif kind in ("ship", "transfer", "receive", "return"):
                units = _once(ev["units"]) if kind in ("receive", "return") else ev["units"]
                ob = {"type": "ObjectEvent", "action": "OBSERVE", "epcList": name.many(units)}
                if kind in ("ship", "transfer"):
                    ob.update(bizStep="shipping", disposition="in_transit",
                              destinationList=[{"type": "owning_party",
                                                "destination": brand_uri + ev["distributor"]}])
                elif kind == "receive":
                    ob.update(bizStep="receiving", disposition="in_progress")
                else:
                    ob.update(bizStep="receiving", disposition="returned")
                add(ob, t)
    doc = {
        "@context": [EPCIS_CONTEXT, {"example": "https://brand.example/epcis/"}],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": _time(time.time() if now is None else now),
        "epcisBody": {"eventList": out},
    }
    check_parent_ids(doc)
    return doc


def check_parent_ids(doc: dict) -> None:
    """The standard's rule the JSON schema leaves out: an AggregationEvent with action ADD
    or DELETE must carry a parentID."""
    for i, ev in enumerate(doc.get("epcisBody", {}).get("eventList", [])):
        if ev.get("type") == "AggregationEvent" and ev.get("action") in ("ADD", "DELETE") \
                and not ev.get("parentID"):
            raise ValueError(f"event {i}: AggregationEvent {ev['action']} without parentID")
