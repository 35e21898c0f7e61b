"""Statistics: every figure of the report against hand-computed numbers and against a
plain-Python recount of the scan log and the ledger; folding is incremental, idempotent
and exact under concurrent reporters (threads and processes).

Scans run through ``Admin.scan_pipeline()`` — the pipeline ``wuma serve`` runs — with
campaigns active, on the small production run of ``build_world`` (48 caps in 2 cases on
1 pallet, activated as SKU-1 and shipped to gz-1, territory 4401).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin._util import CHINA, china_day
from admin.service import Admin
from admin.stats import DIMENSIONS, UNKNOWN, Stats
from conftest_world import Clock, build_world
from engine.scan import ScanRequest

T0 = 1_800_000_000.0  # 2027-01-15 16:00 China time (08:00 UTC)
DAY1, DAY2 = "2027-01-15", "2027-01-16"
ROOT = Path(__file__).resolve().parents[1]


def _world(path):
    w = build_world(path, rate_per_minute=100_000)
    clock = Clock()
    admin = Admin(w["data"], rng=random.Random(7), clock=clock)
    _, s2 = w["data"].accounts.add("s-2", "store", region="440106", distributor="gz-1")
    w.update(clock=clock, admin=admin, pipe=admin.scan_pipeline(), s2_token=s2,
             stats=Stats(w["data"], admin))
    return w


@pytest.fixture
def world(tmp_path):
    w = _world(tmp_path / "wuma-data")
    yield w
    w["admin"].close()
    w["data"].close()


def campaigns(w, *, vouchers: bool = True, lock: bool = True):
    """A consumer draw with bC/BbC rebates, a store open-case reward (repurchase lock) and
    an N元换购 voucher on the product."""
    a, window = w["admin"], {"start": T0 - 3600, "end": T0 + 90 * 86400}
    a.pools.create("p", total=10_000, who="test")
    a.campaigns.create({"name": "Cap draw", "pool": "p", "window": window,
                        "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
                        "target": {"batches": [w["caps"].id]}, "reward": {"kind": "fixed", "amount": 100},
                        "rebates": [{"to": "store", "amount": 10}, {"to": "distributor", "amount": 5}]},
                       who="test")
    a.campaigns.create({"name": "Open case", "pool": "p", "window": window,
                        "trigger": {"code_role": "case_inner", "actor_role": "store"},
                        "target": {"batches": [w["cases"].id]}, "reward": {"kind": "fixed", "amount": 50},
                        **({"lock": {"kind": "repurchase", "days": 30}} if lock else {})}, who="test")
    if vouchers:
        a.pools.create("v", total=1_000, who="test")
        a.campaigns.create({"name": "Swap for 3", "pool": "v", "window": window,
                            "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
                            "target": {"skus": ["SKU-1"]},
                            "reward": {"kind": "fixed", "amount": 300, "payout": "voucher", "valid_days": 30}},
                           who="test")


def code(w, serial, role="cap_inner", batch="caps"):
    return w["data"].codes.code(w[batch], serial, role)


def consumer(w, c, actor, region="440106"):
    return w["pipe"].scan(ScanRequest(c, actor_id=actor, region=region))


def store(w, c, token="store_token", region="440106"):
    return w["pipe"].scan(ScanRequest(c, actor_role="store", token=w[token], region=region))


# -- a plain-Python recount of the scan log and the ledger ------------------------------
def recount(w, window: list[str]) -> dict:
    """The report's figures, recomputed from every event and entry (no counters)."""
    a, spec = w["admin"], w["data"].spec
    events, entries = a.scans.events(0, 10**9), a.ledger.entries(0, 10**9)
    by_day = {d: {dim: {} for dim in DIMENSIONS} for d in window}
    firsts, diverted, stores, camp = {}, {}, {}, {}

    def bump(d, k, n=1):
        d[k] = d.get(k, 0) + n

    for ev in events:
        day, region = china_day(ev["at"]), ev.get("region") or ""
        product = None
        if ev["verdict"] != "inactive":
            product = (a.aggregation.trace_unit(ev["unit"], history=False)["product"] or {}).get("sku")
        vals = {"actor_role": ev["actor_role"], "verdict": ev["verdict"], "province": region[:2] or "-",
                "city": region[:4] if len(region) >= 4 else "-", "product": product or "-",
                "batch": str(ev["unit"] >> 32)}
        if day in by_day:
            for dim, v in vals.items():
                bump(by_day[day][dim], v)
        role = spec.role_by_index(ev["role"]).name
        if ev["verdict"] == "genuine" and ev["count"] == 1 and ("label" not in ev or ev.get("unit_first")):
            bump(firsts, (ev["actor_role"], role))
        if ev.get("diverted"):
            bump(diverted, ev["diverted"]["distributor"])
        if ev["actor_role"] == "store" and ev["verdict"] == "genuine":
            bump(stores.setdefault(ev["actor"], {}), "scans")
        for r in ev.get("rewards", ()):
            c = camp.setdefault(str(r["campaign"]), {})
            bump(c, ("rebate_outcome", r["rebate"], r["outcome"]) if "rebate" in r else ("outcome", r["outcome"]))
    by_seq = {e["seq"]: e for e in entries}
    for e in entries:
        src = {**by_seq[e["ref"]], **e} if e["kind"] == "reversal" else e
        c = camp.setdefault(str(src["campaign"]), {})
        bump(c, ("count", e["kind"]))
        bump(c, ("amount", e["kind"]), src["amount"])
        b = src["beneficiary"]
        if b["role"] == "store" and e["kind"] in ("grant", "unlock", "redeem", "reversal"):
            sign = -1 if e["kind"] == "reversal" else 1
            bump(stores.setdefault(b["id"], {}), "earned_" + src["unit"], sign * src["amount"])
    stores = {k: {kk: vv for kk, vv in v.items() if vv} for k, v in stores.items()}
    stores = {k: v for k, v in stores.items() if v}
    return {"by_day": by_day, "firsts": firsts, "diverted": diverted, "stores": stores, "campaigns": camp}


def project(report: dict) -> dict:
    """The same figures, taken from a report."""
    by_day = {d: {dim: v[dim] for dim in DIMENSIONS} for d, v in report["scans"]["by_day"].items()}
    firsts = {(a, r): v["codes"] for a, rs in report["scan_rate"].items() for r, v in rs.items() if v["codes"]}
    diverted = {d: v["all_time"] for d, v in report["diversion"]["by_distributor"].items()}
    stores = {}
    for s in report["top_stores"]["by_scans"] + report["top_stores"]["by_earned"]:
        rec = {"scans": s["scans"], "earned_cash": s["cash"]["earned"], "earned_points": s["points"]["earned"]}
        stores[s["store"]] = {k: v for k, v in rec.items() if v}
    camp = {}
    for cid, c in report["campaigns"].items():
        got = {}
        for kind, v in c["ledger"].items():
            if v["count"]:
                got[("count", kind)], got[("amount", kind)] = v["count"], v["amount"]
        for o, n in c["outcomes"].items():
            got[("outcome", o)] = n
        for to, os_ in c["rebate_outcomes"].items():
            for o, n in os_.items():
                got[("rebate_outcome", to, o)] = n
        if got:
            camp[cid] = got
    return {"by_day": by_day, "firsts": firsts, "diverted": diverted, "stores": stores, "campaigns": camp}


def same_figures(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("folded", "generated_at")}


# -- every figure by hand ---------------------------------------------------------------
def _scenario(w) -> dict:
    """13 scans over two China days, a voucher redeemed, a rebate reversed."""
    campaigns(w)
    a, data = w["admin"], w["data"]
    store(w, code(w, 0, "cap_outer"))                       # e1  s-1 registers cap 0
    store(w, code(w, 0, "case_inner", "cases"))             # e2  s-1 opens case 0: locked 50
    r3 = consumer(w, code(w, 0), "u1")                      # e3  100 + rebates 10/5 + voucher 300
    consumer(w, code(w, 0), "u2")                           # e4  already rewarded (count 2)
    consumer(w, code(w, 1), "u3", region="310106")          # e5  diverted: 100, rebates withheld, voucher
    consumer(w, code(w, 0, batch="inactive"), "u1")         # e6  inactive
    a.aggregation.void([code(w, 40)], reason="damaged")
    consumer(w, code(w, 40), "u5")                          # e7  voided
    w["clock"].t = T0 + 86400                               # the next China day
    w["pipe"].scan(ScanRequest(code(w, 2), actor_id="u4"))  # e8  no region: 100 + 10/5 + voucher
    store(w, code(w, 1, "case_inner", "cases"))             # e9  s-1 opens case 1: locked, both unlocked
    store(w, code(w, 30, "cap_outer"), "s2_token")          # e10
    store(w, code(w, 31, "cap_outer"), "s2_token")          # e11
    store(w, code(w, 32, "cap_outer"), "s2_token", "310106")  # e12 diverted store scan
    store(w, code(w, 0, "cap_outer"), "s2_token")           # e13 count 2
    voucher = next(r["voucher"] for r in r3.rewards if r["outcome"] == "voucher")
    a.rewards.redeem(voucher, data.accounts.get("s-2"), now=T0 + 86400 + 100)
    rebate = next(e for e in a.ledger.entries() if e.get("rebate") == "store")
    with data.store.write() as txn:  # NOTE: as an admin's reversal of an unpaid entry records it
        a.ledger.append(txn, {"kind": "reversal", "at": T0 + 86400 + 200, "ref": rebate["seq"],
                              "amount": rebate["amount"]})
    return {"now": T0 + 86400 + 500}


def test_every_figure_by_hand(world):
    now = _scenario(world)["now"]
    rep = world["stats"].report(days=2, now=now)
    caps, cases, inactive = (str(world[k].id) for k in ("caps", "cases", "inactive"))
    assert json.loads(json.dumps(rep)) == rep  # JSON-ready
    assert rep["window"] == {"days": 2, "first": DAY1, "last": DAY2, "timezone": "UTC+8"}
    assert rep["as_of"] == {"scan_event": 13, "ledger_entry": 16}
    assert rep["folded"] == 13 + 16

    s = rep["scans"]
    assert s["by_day"][DAY1] == {
        "total": 7, "actor_role": {"store": 2, "consumer": 5},
        "verdict": {"genuine": 5, "inactive": 1, "voided": 1},
        "province": {"44": 6, "31": 1}, "city": {"4401": 6, "3101": 1},
        "product": {"SKU-1": 6, UNKNOWN: 1}, "batch": {caps: 5, cases: 1, inactive: 1}}
    assert s["by_day"][DAY2] == {
        "total": 6, "actor_role": {"consumer": 1, "store": 5}, "verdict": {"genuine": 6},
        "province": {UNKNOWN: 1, "44": 4, "31": 1}, "city": {UNKNOWN: 1, "4401": 4, "3101": 1},
        "product": {"SKU-1": 6}, "batch": {caps: 5, cases: 1}}
    assert s["total"] == 13 and s["totals"]["actor_role"] == {"store": 7, "consumer": 6}
    assert s["totals"]["batch"] == {caps: 10, cases: 2, inactive: 1}
    assert s["all_time"] == {"total": 13, "verdict": {"genuine": 11, "inactive": 1, "voided": 1}}

    rate = rep["scan_rate"]
    assert rate["consumer"]["cap_inner"] == {"codes": 3, "level": "cap", "activated": 48, "rate": 0.0625}
    assert rate["store"]["cap_outer"] == {"codes": 4, "level": "cap", "activated": 48, "rate": 0.083333}
    assert rate["store"]["case_inner"] == {"codes": 2, "level": "case", "activated": 2, "rate": 1.0}
    assert rate["distributor"]["pallet"] == {"codes": 0, "level": "pallet", "activated": 1, "rate": 0.0}

    p, v = rep["pools"]["p"], rep["pools"]["v"]
    assert (p["total"], p["spent"], p["left"], p["use_rate"]) == (10_000, 430, 9_570, 0.043)
    assert p["by_day"] == {DAY1: 265, DAY2: 165} and p["spent_in_window"] == 430 and p["spent_today"] == 165
    assert (v["spent"], v["use_rate"], v["by_day"]) == (900, 0.9, {DAY1: 600, DAY2: 300})

    c1, c2, c3 = (rep["campaigns"][k] for k in ("1", "2", "3"))
    assert (c1["name"], c1["status"], c1["pool"], c1["unit"]) == ("Cap draw", "active", "p", "cash")
    assert c1["trigger"] == {"code_role": "cap_inner", "actor_role": "consumer"}
    assert {k: v for k, v in c1["ledger"].items() if v["count"]} == {
        "grant": {"count": 7, "amount": 330}, "reversal": {"count": 1, "amount": 10}}
    assert c1["rebates"] == {"store": {"count": 2, "amount": 20}, "distributor": {"count": 2, "amount": 10}}
    assert c1["outcomes"] == {"granted": 3, "already_rewarded": 1}
    assert c1["rebate_outcomes"] == {"store": {"granted": 2, "withheld_diverted": 1},
                                     "distributor": {"granted": 2, "withheld_diverted": 1}}
    assert {k: v for k, v in c2["ledger"].items() if v["count"]} == {
        "locked": {"count": 2, "amount": 100}, "unlock": {"count": 2, "amount": 100}}
    assert c2["outcomes"] == {"locked": 2, "unlocked": 2}
    assert {k: v for k, v in c3["ledger"].items() if v["count"]} == {
        "voucher": {"count": 3, "amount": 900}, "redeem": {"count": 1, "amount": 300}}
    assert c3["outcomes"] == {"voucher": 3, "already_rewarded": 1}

    assert rep["diversion"] == {"window": 2, "all_time": 2, "by_distributor": {
        "gz-1": {"all_time": 2, "window": 2, "by_day": {DAY1: 1, DAY2: 1}}}}

    zero = {"rebates": 0, "rewards": 0, "redemptions": 0, "reversed": 0, "earned": 0}
    s1 = {"store": "s-1", "scans": 3, "points": zero,
          "cash": {"rebates": 20, "rewards": 100, "redemptions": 0, "reversed": 10, "earned": 110}}
    s2 = {"store": "s-2", "scans": 4, "points": zero,
          "cash": {"rebates": 0, "rewards": 0, "redemptions": 300, "reversed": 0, "earned": 300}}
    assert rep["top_stores"] == {"by_scans": [s2, s1], "by_earned": [s2, s1]}
    assert world["stats"].report(days=2, now=now, top=1)["top_stores"] == {"by_scans": [s2], "by_earned": [s2]}

    # One day: only the second; all-time figures unchanged.
    one = world["stats"].report(days=1, now=now)
    assert list(one["scans"]["by_day"]) == [DAY2] and one["scans"]["total"] == 6
    assert one["diversion"]["window"] == 1 and one["diversion"]["all_time"] == 2
    assert one["pools"]["p"]["by_day"] == {DAY2: 165}
    assert project(rep) == recount(world, [DAY1, DAY2])


def test_days_follow_china_time(world):
    """23:59:59 and 00:00:00 China time fall on two days though UTC says one."""
    world["clock"].t = T0 + 8 * 3600 - 2  # 2027-01-15 23:59:59 CST = 15:59:59 UTC
    consumer(world, code(world, 0), "u1")
    consumer(world, code(world, 1), "u1")  # 2027-01-16 00:00:00 CST = 16:00:00 UTC
    rep = world["stats"].report(days=3, now=T0 + 86400)
    assert {d: v["total"] for d, v in rep["scans"]["by_day"].items()} == {"2027-01-14": 0, DAY1: 1, DAY2: 1}


@settings(max_examples=300, deadline=None)
@given(day=st.integers(0, 2_900_000), before=st.floats(0, 1e-3))
def test_a_day_is_named_as_its_number_even_a_hair_before_midnight(day, before):
    """A time under half a microsecond before China midnight was named as the next day
    (datetime rounds to the microsecond), and the name was then kept for that day."""
    import math
    from datetime import date, datetime, timedelta

    from admin._util import _DAYS, china_day_number

    midnight = day * 86400.0 - 8 * 3600  # 00:00 China time of day number `day`
    t = min(math.nextafter(midnight, 0), midnight - before)  # strictly before midnight
    _DAYS.clear()
    n = china_day_number(t)  # NOTE: t + 8 h may itself round up to midnight: then it is day `day`
    assert n in (day - 1, day)
    assert china_day(t) == (date(1970, 1, 1) + timedelta(days=n)).isoformat() \
        == datetime.fromtimestamp(n * 86400 - 8 * 3600 + 1, CHINA).strftime("%Y-%m-%d")


def test_a_report_made_a_hair_before_midnight_is_that_days(world):
    """The window's last day was taken with datetime, which rounds to the microsecond: a
    report made under half a microsecond before China midnight covered the next day only
    (its scans 0, the pool's spend in the window 0, though spent today said otherwise)."""
    import math

    world["clock"].t = T0
    consumer(world, code(world, 0), "u1")
    midnight = T0 + 8 * 3600  # 2027-01-16 00:00 China time
    rep = world["stats"].report(days=1, now=math.nextafter(midnight, 0))
    assert list(rep["scans"]["by_day"]) == [DAY1] and rep["scans"]["by_day"][DAY1]["total"] == 1


def test_region_codes_are_read_by_whole_levels(world):
    """440000 is Guangdong: province 44 and no city (it was filed under a city "4400");
    440100 is Guangzhou (4401); a 12-digit village code is its county's city."""
    world["clock"].t = T0
    for i, region in enumerate(("440000", "440100", "440106", "440183100001", "44", "3101")):
        consumer(world, code(world, i), f"u{i}", region=region)
    day = world["stats"].report(days=1, now=T0)["scans"]["by_day"][DAY1]
    assert day["province"] == {"31": 1, "44": 5}
    assert day["city"] == {UNKNOWN: 2, "3101": 1, "4401": 3}


def test_a_report_is_one_moment_though_scans_commit_between_its_fold_and_its_read(world, monkeypatch):
    """Pools were read live after the counters: a scan committed between the report's fold
    and its read was in the pool's spend and not in the campaign's grants. Each scan below
    commits right after a fold; the report folds again and every section agrees."""
    campaigns(world, vouchers=False)
    world["clock"].t = T0
    stats, fold = world["stats"], world["stats"].fold
    serials = iter(range(10, 12))  # NOTE: two; a third try reads whatever it finds

    def fold_then_scan(*args, **kwargs):
        n = fold(*args, **kwargs)
        s = next(serials, None)
        if s is not None:
            assert consumer(world, code(world, s), f"u{s}").verdict == "genuine"
        return n

    monkeypatch.setattr(stats, "fold", fold_then_scan)
    rep = stats.report(days=1, now=T0)
    grants = rep["campaigns"]["1"]["ledger"]["grant"]["amount"]
    assert rep["pools"]["p"]["spent"] == grants > 0
    assert rep["as_of"]["scan_event"] == rep["scans"]["total"]


def test_a_request_folds_a_bounded_amount_and_says_what_is_pending(world):
    """A report folded every event since the last in the request: after a quiet spell
    (690k events) that held a server worker 4.3 s, and longer got it killed. With a
    fold limit it folds about that much, pausing between chunks, and says how much is not
    folded yet; the worker's fold_every folds the rest in the background."""
    import time as _time

    world["clock"].t = T0
    for i in range(40):
        consumer(world, code(world, i), f"u{i}")
    stats = Stats(world["data"], world["admin"], chunk=4)
    rep = stats.report(days=1, now=T0, fold_limit=8)  # 8 in all: two chunks of 4
    assert rep["as_of"]["scan_event"] == rep["folded"] == 8
    assert rep["pending"] == {"scan_event": 40 - 8, "ledger_entry": 0}
    rep = stats.report(days=1, now=T0, fold_limit=6)  # a chunk more than the limit at most
    assert rep["folded"] == 8 and rep["pending"]["scan_event"] == 40 - 16
    assert rep["scans"]["total"] == rep["as_of"]["scan_event"]  # as of what it folded
    stats.fold_every(0.05)
    deadline = _time.time() + 10
    while stats.report(days=1, now=T0, fold_limit=1)["pending"]["scan_event"] and _time.time() < deadline:
        _time.sleep(0.05)
    rep = stats.report(days=1, now=T0)
    assert rep["pending"] == {"scan_event": 0, "ledger_entry": 0} and rep["scans"]["total"] == 40


def test_a_window_ending_on_the_last_date_ends_within_range():
    """'9999-12-31' as an end is that day's end, the next day's start (it was refused)."""
    from admin._util import parse_time

    assert parse_time("9999-12-31", "end", day_end=True) == 253402272000.0


def test_report_twice_is_the_same_and_new_scans_fold_in_once(world):
    campaigns(world, vouchers=False)
    for i in range(5):
        consumer(world, code(world, i), f"u{i}")
    stats, now = world["stats"], T0 + 3600
    # a bounded step first (one chunk: 4 events and 4 entries), the report folds the rest
    assert Stats(world["data"], world["admin"], chunk=4).fold(limit=1) == 8
    first = stats.report(now=now)
    assert first["folded"] == 5 + 5 * 2 - 8  # 5 events; a grant and a distributor rebate each
    assert first["scans"]["total"] == 5 and first["campaigns"]["1"]["ledger"]["grant"]["count"] == 10
    again = stats.report(now=now)
    assert again["folded"] == 0 and same_figures(again) == same_figures(first)
    assert same_figures(Stats(world["data"], world["admin"]).report(now=now)) == same_figures(first)

    store(world, code(world, 0, "case_inner", "cases"))  # one more event and one ledger entry
    later = stats.report(now=now)
    assert later["folded"] == 2 and later["as_of"] == {"scan_event": 6, "ledger_entry": 11}
    assert later["scans"]["total"] == first["scans"]["total"] + 1
    assert later["campaigns"]["2"]["ledger"]["locked"] == {"count": 1, "amount": 50}
    assert later["campaigns"]["1"] == first["campaigns"]["1"]
    assert project(later) == recount(world, list(later["scans"]["by_day"]))


def test_bad_arguments(world):
    stats = world["stats"]
    for kw, err in (({"days": 0}, ValueError), ({"days": 367}, ValueError), ({"days": "7"}, TypeError),
                    ({"days": True}, TypeError), ({"top": 0}, ValueError), ({"now": "today"}, TypeError)):
        with pytest.raises(err):
            stats.report(**kw)
    with pytest.raises(ValueError):
        Stats(world["data"], world["admin"], chunk=0)


def test_activations_products_and_scan_rate_follow_new_activations(world):
    agg, stats = world["admin"].aggregation, world["stats"]
    assert agg.activated_counts() == stats.activated() == {"pallet": 1, "case": 2, "cap": 48}
    agg.activate(sku="SKU-2", name="Tea 2", lot="L2", production_date="2026-11-02",
                 serial_range=(world["inactive"].id, 2, 7))
    assert agg.activated_counts() == stats.activated() == {"pallet": 1, "case": 2, "cap": 53}
    for serial in (3, 8, 6, 1, 2):  # in the new run, after it, in it (cached), before it
        consumer(world, code(world, serial, batch="inactive"), "u1")
    rep = stats.report(days=1, now=world["clock"].t)
    assert rep["scans"]["totals"]["product"] == {"SKU-2": 3, UNKNOWN: 2}
    assert rep["scans"]["totals"]["verdict"] == {"genuine": 3, "inactive": 2}
    assert rep["scan_rate"]["consumer"]["cap_inner"] == {
        "codes": 3, "level": "cap", "activated": 53, "rate": round(3 / 53, 6)}


def test_a_replacement_labels_first_scan_is_not_its_units_first_scan(world):
    """A relabel (标签替换): the new label's first scan (count 1 on its own record) is a
    scan of a unit whose code was scanned first already; the scan rate counts it once."""
    agg = world["admin"].aggregation
    spares = world["data"].create_batch("case", 1)
    old, new = code(world, 0, "case_outer", "cases"), world["data"].codes.code(spares, 0, "case_outer")
    store(world, old)
    agg.relabel(old, new)
    assert store(world, new).scan.count == 1
    rep = world["stats"].report(days=1, now=world["clock"].t)
    assert rep["scans"]["totals"]["verdict"] == {"genuine": 2}
    assert rep["scans"]["totals"]["batch"] == {str(world["cases"].id): 2}
    assert rep["scan_rate"]["store"]["case_outer"] == {"codes": 1, "level": "case", "activated": 2,
                                                       "rate": 0.5}
    assert project(rep)["firsts"] == recount(world, [])["firsts"]


def test_a_unit_relabelled_before_its_first_scan_counts_once_in_the_scan_rate(world):
    """A carton's torn label replaced in the warehouse before any scan (the usual relabel):
    its unit was never counted in the scan rate (a replacement label's first scan never
    counted). It counts once, on the replacement's first scan; not again on a second
    replacement's, nor for a torn label scanned afterwards."""
    agg = world["admin"].aggregation
    spares = world["data"].create_batch("case", 2)
    old = code(world, 0, "case_outer", "cases")
    new, newer = (world["data"].codes.code(spares, i, "case_outer") for i in range(2))
    agg.relabel(old, new)
    assert store(world, new).scan.count == 1
    assert store(world, old).verdict == "voided"  # the torn label, scanned after
    agg.relabel(new, newer)
    assert store(world, newer).scan.count == 1
    rate = world["stats"].report(days=1, now=world["clock"].t)["scan_rate"]["store"]["case_outer"]
    assert rate == {"codes": 1, "level": "case", "activated": 2, "rate": 0.5}
    events = world["admin"].scans.events()
    assert [e.get("unit_first") for e in events] == [True, None, None]


# -- concurrency ------------------------------------------------------------------------
def _pending(w) -> int:
    return w["admin"].scans.count_events() + w["admin"].ledger.last_seq()


def test_concurrent_reporters_while_scanning_count_each_event_once(world):
    """Four reporters (own Stats, chunks of 3) fold while a scanner adds events."""
    campaigns(world, vouchers=False, lock=False)
    done, folded, errors = threading.Event(), [], []

    def scanner():
        try:
            for i in range(48):
                consumer(world, code(world, i), f"u{i % 7}", region=("440106", "310106")[i % 3 == 0])
                if i % 12 == 0:
                    store(world, code(world, i // 24, "case_inner", "cases"))
        except Exception as e:  # pragma: no cover
            errors.append(e)
        finally:
            done.set()

    def reporter():
        stats = Stats(world["data"], world["admin"], chunk=3)
        try:
            while not done.is_set():
                folded.append(stats.report(now=T0)["folded"])
            folded.append(stats.fold())
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=scanner)] + [threading.Thread(target=reporter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _pending(world) > 100 and sum(folded) == _pending(world)
    rep = world["stats"].report(days=2, now=T0)
    assert rep["folded"] == 0
    assert project(rep) == recount(world, list(rep["scans"]["by_day"]))


_CHILD = """
import sys
from engine import DataFolder
from admin.service import Admin
from admin.stats import Stats
data = DataFolder(sys.argv[1])
stats = Stats(data, Admin(data), chunk=2)
print("ready", flush=True)
sys.stdin.readline()
print(stats.fold(), flush=True)
"""


def test_two_processes_and_a_thread_fold_each_event_once(world):
    campaigns(world, vouchers=False, lock=False)
    for i in range(40):
        consumer(world, code(world, i), f"u{i % 5}", region=("440106", "310106")[i % 4 == 0])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kids = [subprocess.Popen([sys.executable, "-c", _CHILD, str(world["data"].path)], cwd=ROOT, env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for k in kids:
        assert k.stdout.readline().strip() == "ready"
    here = Stats(world["data"], world["admin"], chunk=2)
    for k in kids:
        k.stdin.write("go\n")
        k.stdin.flush()
    mine = here.fold()
    theirs = [int(k.communicate(timeout=60)[0].strip()) for k in kids]
    assert all(k.returncode == 0 for k in kids)
    assert mine + sum(theirs) == _pending(world)
    rep = world["stats"].report(days=2, now=T0)
    assert project(rep) == recount(world, list(rep["scans"]["by_day"]))


# -- property: random scans against a plain recount ---------------------------------------
_OP = st.tuples(
    st.sampled_from(["consumer", "consumer", "store_cap", "store_case", "inactive", "next_day", "report"]),
    st.integers(0, 47), st.sampled_from(["u1", "u2", "u3"]),
    st.sampled_from(["440106", "310106", "4401", "44", None]))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_OP, max_size=30), chunk=st.integers(1, 7))
def test_random_scans_match_a_recount(tmp_path_factory, ops, chunk):
    w = _world(tmp_path_factory.mktemp("w") / "d")
    try:
        campaigns(w)
        stats = Stats(w["data"], w["admin"], chunk=chunk)
        for kind, serial, actor, region in ops:
            if kind == "consumer":
                w["pipe"].scan(ScanRequest(code(w, serial), actor_id=actor, region=region))
            elif kind == "store_cap":
                w["pipe"].scan(ScanRequest(code(w, serial, "cap_outer"), actor_role="store",
                                           token=w["store_token" if actor == "u1" else "s2_token"], region=region))
            elif kind == "store_case":
                w["pipe"].scan(ScanRequest(code(w, serial % 2, "case_inner", "cases"), actor_role="store",
                                           token=w["store_token"], region=region))
            elif kind == "inactive":
                w["pipe"].scan(ScanRequest(code(w, serial % 10, batch="inactive"), actor_id=actor, region=region))
            elif kind == "next_day":
                w["clock"].t += 86400 - 3600
            else:
                stats.report(days=5, now=w["clock"].t)
        now = w["clock"].t
        rep = stats.report(days=5, now=now, top=5)
        window = list(rep["scans"]["by_day"])
        assert window[-1] == china_day(now) and len(window) == 5
        assert project(rep) == recount(w, window)
        assert rep["as_of"] == {"scan_event": w["admin"].scans.count_events(),
                                "ledger_entry": w["admin"].ledger.last_seq()}
    finally:
        w["admin"].close()
        w["data"].close()
