"""GS1 interchange: EPCIS 2.0 JSON-LD export of the aggregation history, and SSCC.

Event mapping (CBV 2.0 vocabulary):

* activation -> ObjectEvent ADD, bizStep ``commissioning``, disposition ``active``
* line-collection load / pack / move -> AggregationEvent ADD, bizStep ``packing``
* unpack / move (from the old parent) -> AggregationEvent DELETE, bizStep ``unpacking``
* replace -> AggregationEvent DELETE ``unpacking`` (the old label from its parent, its
  children from it) + ObjectEvent DELETE ``decommissioning`` (old) + AggregationEvent ADD
  ``replacing`` (the new label into the parent, the children into it): replaying the
  AggregationEvents in order gives the stored hierarchy; then, when the old label was
  activated, ObjectEvent ADD ``commissioning`` ``active`` of the new one with the old
  one's lot, SKU and production date (Wuma treats it as active with that product)
* relabel (标签替换) -> nothing. The unit is the same object with the same EPC (its first
  code's URL as generated, even when that label was relabelled): CBV 2.0 has no business
  step for a new label on the same object, and any event naming the new label would tell
  partners of a second object (a ``commissioning`` of it) or of one object leaving
  (``decommissioning`` the old EPC). Partners resolve a scanned label through Wuma.
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
eventIDs; it is a name-based UUID (``urn:uuid:``), the same in every export made with the
same company prefix and URL base (they name the event's EPCs and parties).

A replacement label's commissioning comes after the ``replacing`` AggregationEvents (same
eventTime) so that the events exported for a replace before it was added keep their
eventIDs.

Units are identified by their printed short URL (``url_base + code``); pallets by SSCC
(``urn:epc:id:sscc:...``) when a GS1 company prefix is given. SSCC = extension digit +
company prefix + serial reference + check digit (18 digits), so the serial reference has
``16 - len(prefix)`` digits (7 with a 9-digit prefix: 10,000,000 SSCCs in all). See
:class:`PalletNumbers` for how pallet labels get theirs.

Codes are rendered only for the serials an event names, in windows of nearby serials
(bounded memory: two units 20M serials apart are two small renders, not one of 20M).
"""

from __future__ import annotations

import bisect
import datetime as _dt
import itertools
import json
import time
import uuid
from urllib.parse import urlsplit

import numpy as np

from engine.formats import gs1_check_digit
from engine.ids import is_digits
from engine.store import unpack

__all__ = ["sscc", "pallet_sscc", "PalletNumbers", "check_company_prefix", "export_epcis",
           "check_parent_ids", "brand_base", "EPCIS_CONTEXT", "TIME_ZONE_OFFSET"]

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
    """The SSCC a pallet unit has always had where it fits: serial reference =
    batch * 10^6 + serial (ValueError where it does not). :class:`PalletNumbers` gives
    every pallet its SSCC: this one where it fits, another one otherwise."""
    if not 0 <= serial < _BLOCK:
        raise ValueError("pallet serial must be below 1,000,000 for an SSCC")
    return sscc(company_prefix, batch * _BLOCK + serial, extension)


_BLOCK = 10**6  # serial references batch * 10^6 + serial: the numbering of earlier releases


class PalletNumbers:
    """The SSCC serial references of a store's pallet units, for one company prefix.

    Every pallet label generated (used or not) gets one number, computed from the batch
    list alone, so each export numbers a pallet the same way and no two pallets share one:

    * where the numbering of earlier releases fits (serial < 10^6 and
      ``batch * 10^6 + serial`` has at most ``16 - len(prefix)`` digits) it is kept, so
      an SSCC already exported never changes;
    * the other pallet labels ("overflow": batches with a high id, serials from 10^6 on),
      in batch id order then serial order, take the numbers that numbering leaves free,
      in order: the block of batch id 0 (there is none), then, per batch in id order, the
      block of a batch that is not a pallet batch and the part of a pallet batch's block
      beyond its count.

    Batch ids only grow and a batch's level and count never change, so a new batch only
    appends overflow labels and free numbers: the numbers already given stay.
    When the numbers run out, :meth:`reference` refuses (ValueError) for the pallets that
    do not fit, naming the prefix length and how many pallet labels fit.
    """

    def __init__(self, batches, pallet_level: str, company_prefix: str) -> None:
        check_company_prefix(company_prefix)
        self.prefix = company_prefix
        self.width = 16 - len(company_prefix)
        space = 10**self.width
        blocks = -(-space // _BLOCK)  # block b: numbers b*10^6 .. min((b+1)*10^6, space)-1
        free: list[tuple[int, int]] = [(0, min(_BLOCK, space))]  # (first number, how many)
        self._legacy: dict[int, int] = {}  # pallet batch -> serials below it keep b*10^6+s
        self._overflow: dict[int, int] = {}  # pallet batch -> overflow index of that serial
        self._count: dict[int, int] = {}
        overflow = legacy_total = labels = 0
        for b in sorted(batches, key=lambda x: x.id):
            pallet = b.level == pallet_level
            keep = 0
            if b.id < blocks:
                size = min(_BLOCK, space - b.id * _BLOCK)
                keep = min(b.count, size) if pallet else 0
                if size > keep:
                    free.append((b.id * _BLOCK + keep, size - keep))
            if pallet:
                labels += b.count
                legacy_total += keep
                self._legacy[b.id] = keep
                self._count[b.id] = b.count
                self._overflow[b.id] = overflow
                overflow += b.count - keep
        self._free_first = [f for f, _ in free]
        self._free_at: list[int] = []  # overflow index of each free run's first number
        n = 0
        for _, k in free:
            self._free_at.append(n)
            n += k
        self._free = n
        #: pallet labels that fit with this prefix, of ``labels`` generated
        self.fit = legacy_total + min(n, overflow)
        self.labels = labels

    def reference(self, batch: int, serial: int) -> int:
        """The serial reference of pallet unit ``(batch, serial)``; ValueError when the
        numbers ran out before it."""
        keep = self._legacy.get(batch)
        if keep is None:
            raise ValueError(f"batch {batch} is not a pallet batch")
        if not 0 <= serial < self._count[batch]:
            raise ValueError(f"serial {serial} is outside batch {batch} (0:{self._count[batch]})")
        if serial < keep:
            return batch * _BLOCK + serial
        k = self._overflow[batch] + serial - keep
        if k >= self._free:
            raise ValueError(
                f"no SSCC left for pallet {serial} of batch {batch}: a {len(self.prefix)}-digit "
                f"company prefix leaves {self.width}-digit serial references, room for "
                f"{self.fit:,} of the {self.labels:,} pallet labels generated (every pallet "
                "label takes one, in batch order, used or not); export with a shorter company "
                "prefix, or without one (pallets by their printed URL)")
        i = bisect.bisect_right(self._free_at, k) - 1
        return self._free_first[i] + k - self._free_at[i]

    def sscc(self, batch: int, serial: int, extension: int = 0) -> str:
        return sscc(self.prefix, self.reference(batch, serial), extension)


def _sscc_urn(code18: str, company_prefix: str) -> str:
    ext, cp, ref = code18[0], code18[1:1 + len(company_prefix)], code18[1 + len(company_prefix):17]
    return f"urn:epc:id:sscc:{cp}.{ext}{ref}"


def _time(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


#: Codes are rendered in windows: serials more than _GAP apart are rendered apart, and a
#: window spans at most _WINDOW serials (bounded memory whatever the serials' spread).
#: PERF: a render call costs ~65 µs and ~0.13 µs a code (a cap's two roles; scratch
#: measurement on this VM): a gap of 512 codes costs about one call, so serials closer
#: than that share a window and a spread of isolated serials costs no more than rendering
#: min..max did. A window of 16,384 cap codes is ~0.5 MB.
_GAP = 512
_WINDOW = 1 << 14


def _windows(serials: np.ndarray):
    """``(lo, hi, a, z)`` over sorted ``serials``: ``serials[a:z]`` lie in ``lo..hi-1``,
    ``hi - lo <= _WINDOW``, and no two serials more than ``_GAP`` apart share a window
    unless the serials between them do."""
    cuts = [0, *(np.flatnonzero(np.diff(serials) > _GAP) + 1).tolist(), len(serials)]
    for a0, z0 in itertools.pairwise(cuts):
        a = a0
        while a < z0:
            lo = int(serials[a])
            z = a + int(np.searchsorted(serials[a:z0], lo + _WINDOW, "left"))
            yield lo, int(serials[z - 1]) + 1, a, z
            a = z


class _Namer:
    """uid -> EPC URI, rendering codes of a batch in bulk."""

    def __init__(self, agg, company_prefix: str | None) -> None:
        self.agg = agg
        self.data = agg.data
        self.prefix = company_prefix
        self.pallet_level = agg.spec.levels[0].name
        self._numbers: PalletNumbers | None = None

    def _pallet(self, batch: int, serial: int) -> str:
        if self._numbers is None:
            # NOTE: the batch list read after the events: every batch they name is in it
            self._numbers = PalletNumbers(self.data.batches.list(), self.pallet_level, self.prefix)
        return _sscc_urn(self._numbers.sscc(batch, serial), self.prefix)

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
                    out[i] = self._pallet(b, s)
                continue
            width = self.data.spec.role(batch.roles[0]).format.length
            order = np.argsort(serials, kind="stable")
            idx, serials = idx[order].tolist(), serials[order]
            # PERF: only the serials named, in windows of nearby ones: rendering min..max
            # took 950 MB for two units 20M serials apart
            for lo, hi, a, z in _windows(serials):
                mat = self.data.codes.render(batch, lo, hi)[:, :width]
                for i, s in zip(idx[a:z], serials[a:z].tolist()):
                    out[i] = base + mat[s - lo].tobytes().decode("ascii")
        return out  # type: ignore[return-value]

    def one(self, uid: int) -> str:
        return self.many([uid])[0]


#: The namespace of the eventIDs' name-based UUIDs (RFC 9562 version 5).
_EVENT_ID_NAMESPACE = uuid.UUID("5b0f6d1e-3c52-5a8e-9d1c-7a2f4e6b8c90")


def _event_id(ev: dict, source: tuple[int, int]) -> str:
    """``urn:uuid:`` of a name-based UUID of the exported event and ``source`` = (stored
    event id, index among the events exported for it): the same in every export with the
    same company prefix and URL base (they are part of the event).

    NOTE: not ``ni:///sha-256;...?ver=CBV2.0``: that names CBV 2.0's Event Hash ID, a hash
    of a canonical pre-hash string a partner may recompute to check or de-duplicate
    events; a hash of other bytes under that name would fail every such check."""
    return f"urn:uuid:{uuid.uuid5(_EVENT_ID_NAMESPACE, json.dumps([ev, list(source)], sort_keys=True))}"


def brand_base(url_base: str) -> str:
    """``https://{host}/`` of the data folder's URL base (``HTTPS://S.EXAMPLE.CN/Q/`` ->
    ``https://s.example.cn/``): the brand's own domain, under which the export names its
    parties and its ILMD terms (else two brands' distributor ``gz-1`` were one IRI)."""
    host = urlsplit(url_base.lower()).netloc
    if not host:
        raise ValueError(f"the URL base {url_base!r} names no host (such as HTTPS://S.EXAMPLE.CN/Q/): "
                         "the EPCIS export names its parties under it")
    return f"https://{host}/"


def _expand(runs) -> list[int]:
    return [u for f, l in runs for u in range(int(f), int(l) + 1)]


def _once(uids) -> list[int]:
    """``uids`` each once, in order (the schema's uniqueItems)."""
    return list(dict.fromkeys(uids))


#: eventTimeZoneOffset: "the time zone offset in effect at the time and place the event
#: occurred" (EPCIS 2.0); Wuma's lines and distributors are in China (UTC+8, no summer time).
TIME_ZONE_OFFSET = "+08:00"


def export_epcis(agg, *, company_prefix: str | None = None, now: float | None = None,
                 brand_uri: str | None = None) -> dict:
    """An EPCISDocument with one or more events per recorded aggregation event.

    ``brand_uri``: the brand's base IRI, default :func:`brand_base` of the data folder's
    URL base; distributors are ``{brand_uri}party/{id}`` and the ILMD terms ``wuma:lot``,
    ``wuma:sku`` and ``wuma:productionDate`` are ``{brand_uri}epcis/...``."""
    if company_prefix is not None:
        check_company_prefix(company_prefix)  # NOTE: up front, pallets or not
    if brand_uri is None:
        brand_uri = brand_base(agg.data.url_base)
    party = brand_uri + "party/"
    name = _Namer(agg, company_prefix)
    out: list[dict] = []
    source = [0, 0]  # the stored event being exported, events exported for it so far

    def add(ev: dict, t: float) -> None:
        ev = {"type": ev.pop("type"), "eventTime": _time(t), "eventTimeZoneOffset": TIME_ZONE_OFFSET, **ev}
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

    history = agg.events()
    # NOTE: read after the events' own snapshot: every activation they name is in this one
    with agg.store.read() as txn:
        activations: dict[int, dict] = {}

        def commissioning(uids, aid: int) -> dict:
            if aid not in activations:
                activations[aid] = unpack(txn.get(aid.to_bytes(4, "big"), db=agg._activations_db))
            a = activations[aid]
            return {"type": "ObjectEvent", "action": "ADD", "epcList": name.many(uids),
                    "bizStep": "commissioning", "disposition": "active",
                    "ilmd": {"wuma:lot": a["lot"], "wuma:sku": a["sku"],
                             "wuma:productionDate": a["production_date"]}}

        for ev in history:
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
                # the new label took over the old one's activation (a voided label is never
                # activated later, so the old one's activation now is the one it took over)
                took = agg.activation_of(txn, ev["old"])
                if took is not None:
                    activations.setdefault(took["id"], took)  # NOTE: read once
                    add(commissioning([ev["new"]], took["id"]), t)
            elif kind == "void":
                add({"type": "ObjectEvent", "action": "DELETE", "epcList": name.many(
                    _expand(ev["runs"])), "bizStep": "decommissioning",
                     "disposition": "inactive"}, t)
            elif kind == "activate":
                add(commissioning(_expand(ev["runs"]), ev["activation"]), t)
            elif kind in ("ship", "transfer", "receive", "return"):
                units = _once(ev["units"]) if kind in ("receive", "return") else ev["units"]
                ob = {"type": "ObjectEvent", "action": "OBSERVE", "epcList": name.many(units)}
                if kind in ("ship", "transfer"):
                    ob.update(bizStep="shipping", disposition="in_transit",
                              destinationList=[{"type": "owning_party",
                                                "destination": party + ev["distributor"]}])
                elif kind == "receive":
                    ob.update(bizStep="receiving", disposition="in_progress")
                else:
                    ob.update(bizStep="receiving", disposition="returned")
                add(ob, t)
    doc = {
        "@context": [EPCIS_CONTEXT, {"wuma": brand_uri + "epcis/"}],
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
