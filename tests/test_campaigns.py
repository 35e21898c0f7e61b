"""Campaigns, pools and the reward ledger through the real scan pipeline (LMDB on disk).

Each test runs scans through ``Admin.scan_pipeline()`` — the same pipeline ``wuma serve``
runs — and checks what the scanner is told, what the ledger holds and what the pools spent.
"""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admin.service import Admin
from conftest_world import Clock, build_world
from engine.errors import Conflict, NotFound
from engine.scan import ScanRequest

T0 = 1_800_000_000.0  # 2027-01-15 16:00 China time (08:00 UTC)


@pytest.fixture
def world(tmp_path):
    w = build_world(tmp_path / "wuma-data", rate_per_minute=100_000)
    clock = Clock()
    admin = Admin(w["data"], rng=random.Random(7), clock=clock)
    w.update(clock=clock, admin=admin, pipe=admin.scan_pipeline())
    yield w
    admin.close()
    w["data"].close()


def rule(w, **over):
    r = {"name": "Cap draw", "pool": "p",
         "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
         "target": {"batches": [w["caps"].id]},
         "window": {"start": T0 - 3600, "end": T0 + 90 * 86400},
         "reward": {"kind": "fixed", "amount": 100}}
    r.update(over)
    return r


def pool(w, total=10_000, **kw):
    return w["admin"].pools.create(kw.pop("id", "p"), total=total, who="test", **kw)


def cap(w, serial, role="cap_inner"):
    return w["data"].codes.code(w["caps"], serial, role)


def scan(w, code, actor_id="u1", **kw):
    kw.setdefault("region", "440106")
    return w["pipe"].scan(ScanRequest(code, actor_id=actor_id, **kw))


def store_scan(w, code):
    return w["pipe"].scan(ScanRequest(code, actor_role="store", token=w["store_token"], region="440106"))


def outcomes(result):
    return [r["outcome"] for r in result.rewards]


# -- validation ------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"reward": {"kind": "draw", "tiers": [{"amount": 100, "odds": 0.5}]}}, "sum to 1"),
    ({"reward": {"kind": "all_win", "min_amount": 100,
                 "tiers": [{"amount": 50, "odds": 1.0}]}}, "below the minimum"),
    ({"reward": {"kind": "fixed", "amount": 20_000}}, "smaller than the smallest prize"),
    ({"trigger": {"code_role": "cap_inner", "actor_role": "alien"}}, "actor_role"),
    ({"trigger": {"code_role": "pallet", "actor_role": "consumer"}}, "printed on pallet"),
    ({"window": {"start": T0 + 10, "end": T0}}, "start must come before"),
    ({"reward": {"kind": "fixed", "amount": 100, "payout": "voucher"}}, "valid_days"),
    ({"reward": {"kind": "fixed", "amount": 1.5}}, "whole number"),
    ({"rebates": [{"to": "store", "amount": 10}, {"to": "store", "amount": 5}]}, "one store rebate"),
    ({"lock": {"kind": "collect", "days": 30}}, "products"),
    ({"regions": ["Guangdong"]}, "division code"),
    ({"target": {"serials": [[1, 40, 99]]}}, "serials of batch"),
    ({"pool": "nope"}, "no pool nope"),
    ({"colour": "red"}, "unknown campaign fields: colour"),
    ({"limits": {"per_address": 3}}, "per_ip_per_day"),
    ({"limits": {"per_device": 0}}, "limit per_device"),
])
def test_rules_are_validated_with_clear_errors(world, change, message):
    pool(world)
    with pytest.raises((ValueError, NotFound), match=message):
        world["admin"].campaigns.create(rule(world, **change), who="test")
    assert world["admin"].campaigns.list() == []


def test_overlapping_campaigns_on_the_same_trigger_are_refused(world):
    pool(world)
    c = world["admin"].campaigns.create(rule(world), who="test")
    with pytest.raises(Conflict, match=f"campaign {c.id}"):
        world["admin"].campaigns.create(rule(world, name="again"), who="test")
    # disjoint serial ranges, windows or another trigger are fine
    world["admin"].campaigns.close(c.id, who="test")
    world["admin"].campaigns.create(rule(world, target={"serials": [[world["caps"].id, 0, 9]]}), who="test")
    world["admin"].campaigns.create(rule(world, target={"serials": [[world["caps"].id, 10, 19]]}), who="test")
    world["admin"].campaigns.create(rule(world, trigger={"code_role": "cap_outer", "actor_role": "store"}),
                                    who="test")
    with pytest.raises(Conflict):
        world["admin"].campaigns.create(rule(world, target={"serials": [[world["caps"].id, 5, 12]]}),
                                        who="test")


# -- rewards ---------------------------------------------------------------------------
def test_fixed_reward_once_per_code_and_in_the_ledger(world):
    pool(world)
    c = world["admin"].campaigns.create(rule(world), who="test")
    r = scan(world, cap(world, 0))
    assert r.rewards[0]["outcome"] == "granted" and r.rewards[0]["amount"] == 100
    # the same code again, by anyone: no second reward
    assert outcomes(scan(world, cap(world, 0), actor_id="u2")) == ["already_rewarded"]
    # outer code and another actor role: not this campaign's trigger
    assert scan(world, cap(world, 1, "cap_outer")).rewards == ()
    (entry,) = world["admin"].ledger.entries()
    assert entry["kind"] == "grant" and entry["campaign"] == c.id and entry["payable"]
    assert entry["beneficiary"] == {"role": "consumer", "id": "u1"} and entry["amount"] == 100
    assert entry["scan"] == r.scan.seq
    # the scan event carries the reward (one durable write)
    ev = world["pipe"].scans.events()[r.scan.seq - 1]
    assert ev["rewards"][0]["ledger"] == entry["seq"]
    assert world["admin"].pools.status("p")["spent"] == 100


def test_consumer_without_an_id_is_not_paid(world):
    pool(world)
    world["admin"].campaigns.create(rule(world), who="test")
    assert outcomes(scan(world, cap(world, 0), actor_id=None)) == ["no_payee"]
    assert world["admin"].ledger.entries() == []


def test_window_region_and_pause(world):
    pool(world)
    c = world["admin"].campaigns.create(rule(world, regions=["4401"]), who="test")
    assert scan(world, cap(world, 0), region="310106").rewards == ()  # outside the regions
    assert scan(world, cap(world, 1), region=None).rewards == ()
    world["admin"].campaigns.pause(c.id, who="test")
    world["admin"].rewards.refresh()
    assert scan(world, cap(world, 2)).rewards == ()
    world["admin"].campaigns.resume(c.id, who="test")
    world["admin"].rewards.refresh()
    assert outcomes(scan(world, cap(world, 2))) == ["granted"]
    world["clock"].t = T0 + 91 * 86400
    assert scan(world, cap(world, 3)).rewards == ()  # after the window
    actions = [e["action"] for e in world["admin"].audit.entries()]
    assert actions == ["pool.create", "campaign.create", "campaign.pause", "campaign.resume"]


def test_pause_is_exact_even_before_a_worker_refreshes(world):
    pool(world)
    c = world["admin"].campaigns.create(rule(world), who="test")
    world["admin"].rewards.refresh()
    world["admin"].campaigns.pause(c.id, who="test")  # the engine's index still says active
    assert outcomes(scan(world, cap(world, 0))) == ["campaign_inactive"]
    assert world["admin"].ledger.entries() == []


def test_per_actor_limits(world):
    pool(world)
    world["admin"].campaigns.create(rule(world, limits={"per_actor_per_day": 2, "per_actor": 3}), who="test")
    got = [outcomes(scan(world, cap(world, i)))[0] for i in range(3)]
    assert got == ["granted", "granted", "limit_reached"]
    world["clock"].t += 86400  # next day: one more, then the campaign total
    got = [outcomes(scan(world, cap(world, i)))[0] for i in range(3, 5)]
    assert got == ["granted", "limit_reached"]
    assert outcomes(scan(world, cap(world, 5), actor_id="u2")) == ["granted"]  # another consumer
    # a limited scan did not use up the code: another consumer may still win with it
    assert outcomes(scan(world, cap(world, 2), actor_id="u3")) == ["granted"]


def test_draw_follows_the_odds(world):
    pool(world, total=10_000_000)
    world["admin"].campaigns.create(rule(world, reward={"kind": "draw", "tiers": [
        {"amount": 500, "odds": 0.25}, {"amount": 0, "odds": 0.75}]}), who="test")
    wins = sum(outcomes(scan(world, cap(world, i), actor_id=f"u{i}"))[0] == "granted" for i in range(48))
    assert 4 <= wins <= 20  # 12 expected; seeded, so this is deterministic
    assert world["admin"].pools.status("p")["spent"] == 500 * wins


def test_all_win_falls_back_to_the_minimum_then_stops_at_the_pool(world):
    pool(world, total=1_000)
    world["admin"].campaigns.create(rule(world, reward={"kind": "all_win", "min_amount": 100, "tiers": [
        {"amount": 800, "odds": 1.0}]}), who="test")
    amounts = [scan(world, cap(world, i), actor_id=f"u{i}").rewards[0].get("amount") for i in range(5)]
    assert amounts == [800, 100, 100, None, None]
    assert world["admin"].pools.status("p")["spent"] == 1_000


def test_daily_and_region_caps(world):
    pool(world, total=10_000, daily=300, regions={"4401": 10_000})
    world["admin"].campaigns.create(rule(world), who="test")
    got = [outcomes(scan(world, cap(world, i), actor_id=f"u{i}"))[0] for i in range(4)]
    assert got == ["granted"] * 3 + ["budget_exhausted"]
    # the pool pays only in its capped regions: elsewhere the scan is told so
    assert outcomes(scan(world, cap(world, 10), actor_id="x", region="310106")) == ["outside_pool_regions"]
    world["clock"].t += 86400
    assert outcomes(scan(world, cap(world, 4), actor_id="u4")) == ["granted"]
    st_ = world["admin"].pools.status("p")
    assert st_["spent"] == 400 and sorted(st_["by_day"].values()) == [100, 300]
    assert st_["by_region"] == {"4401": 400}


# -- regions written as division codes (440100 is Guangzhou: 4401) ------------------------------
@pytest.mark.parametrize("regions", [["440100"], ["4401"], ["440100000000"], ["310000", "440100"]])
def test_campaign_regions_written_as_division_codes_match_their_districts(world, regions):
    """Campaign regions are read as distributor territories are: a level of zeros names the
    whole division (440100 is Guangzhou, 4401). Stored as typed. A scan in a coarser region
    (the province, for a Guangzhou campaign) is not known to be inside: it earns nothing."""
    pool(world)
    c = world["admin"].campaigns.create(rule(world, regions=regions), who="test")
    assert world["admin"].campaigns.get(c.id).rule["regions"] == regions  # kept as typed
    assert outcomes(scan(world, cap(world, 0), region="440106")) == ["granted"]
    assert outcomes(scan(world, cap(world, 1), region="440106001000")) == ["granted"]
    assert outcomes(scan(world, cap(world, 2), region="440100")) == ["granted"]
    for serial, elsewhere in enumerate(("440200", "330106", "44", "440000"), 10):
        assert scan(world, cap(world, serial), region=elsewhere).rewards == (), elsewhere


def test_a_province_written_as_a_division_code_matches_its_cities(world):
    pool(world)
    world["admin"].campaigns.create(rule(world, regions=["440000"]), who="test")
    assert outcomes(scan(world, cap(world, 0), region="440106")) == ["granted"]
    assert outcomes(scan(world, cap(world, 1), region="440200")) == ["granted"]
    assert outcomes(scan(world, cap(world, 2), region="44")) == ["granted"]
    assert scan(world, cap(world, 3), region="450100").rewards == ()


def test_a_region_code_narrower_than_a_campaign_still_matches_only_inside(world):
    pool(world)
    world["admin"].campaigns.create(rule(world, regions=["440106"]), who="test")
    assert scan(world, cap(world, 0), region="4401").rewards == ()  # the city: maybe elsewhere
    assert scan(world, cap(world, 1), region="440100").rewards == ()
    assert scan(world, cap(world, 2), region="440103").rewards == ()
    assert outcomes(scan(world, cap(world, 3), region="440106")) == ["granted"]


def test_campaigns_in_the_same_region_written_two_ways_overlap(world):
    pool(world)
    c = world["admin"].campaigns.create(rule(world, regions=["440100"]), who="test")
    with pytest.raises(Conflict, match=f"campaign {c.id}"):  # Tianhe is in Guangzhou
        world["admin"].campaigns.create(rule(world, name="Tianhe", regions=["440106"]), who="test")
    world["admin"].campaigns.create(rule(world, name="Shaoguan", regions=["440200"]), who="test")


def test_pool_region_caps_written_as_division_codes_pay_their_districts(world):
    pool(world, regions={"440100": 50_000})
    world["admin"].campaigns.create(rule(world, name="Open case", target={"batches": [world["cases"].id]},
                                         trigger={"code_role": "case_inner", "actor_role": "store"}), who="test")
    world["admin"].campaigns.create(rule(world), who="test")
    r = store_scan(world, world["data"].codes.code(world["cases"], 0, "case_inner"))  # a store in 440106
    assert outcomes(r) == ["granted"]
    assert outcomes(scan(world, cap(world, 0), region="440106")) == ["granted"]
    assert outcomes(scan(world, cap(world, 1), region="310106")) == ["outside_pool_regions"]
    st_ = world["admin"].pools.status("p")
    assert st_["regions"] == {"440100": 50_000} and st_["by_region"] == {"440100": 200}  # as typed


@pytest.mark.parametrize("caps", [{"4401": 100, "440100": 200}, {"440000": 100, "44": 200},
                                  {"4401": 100, "440100000000": 200}])
def test_two_caps_on_one_region_are_refused(world, caps):
    with pytest.raises(ValueError, match="region caps .* are the same region .*give it one cap"):
        pool(world, regions=caps)
    assert world["admin"].pools.list() == []


def test_the_most_specific_region_cap_wins_however_it_is_written(world):
    """Caps do not nest: Tianhe (440106) counts against its own cap only, the rest of
    Guangzhou (440100, written with its zeros) against the city's."""
    pool(world, regions={"440000": 10_000, "440100": 10_000, "440106": 150})
    world["admin"].campaigns.create(rule(world), who="test")
    assert outcomes(scan(world, cap(world, 0), actor_id="a", region="440106")) == ["granted"]
    assert outcomes(scan(world, cap(world, 1), actor_id="b", region="440106")) == ["budget_exhausted"]
    assert outcomes(scan(world, cap(world, 2), actor_id="c", region="440103")) == ["granted"]
    assert outcomes(scan(world, cap(world, 3), actor_id="d", region="440200")) == ["granted"]
    assert world["admin"].pools.status("p")["by_region"] == {"440000": 100, "440100": 100, "440106": 100}


def test_a_voucher_of_a_campaign_in_a_division_code_is_redeemed_in_its_districts(world):
    pool(world)
    world["admin"].campaigns.create(rule(world, regions=["440100"], reward={
        "kind": "fixed", "amount": 500, "payout": "voucher", "valid_days": 7}), who="test")
    v = scan(world, cap(world, 0)).rewards[0]["voucher"]
    world["data"].accounts.add("s-hz", "store", region="330106", distributor="gz-1")
    with pytest.raises(Conflict, match="only in the campaign's regions"):
        world["admin"].rewards.redeem(v, world["data"].accounts.get("s-hz"), now=T0 + 100)
    got = world["admin"].rewards.redeem(v, world["data"].accounts.get("s-1"), now=T0 + 100)  # 440106
    assert got["state"] == "redeemed" and got["redeemed_by"] == "s-1"


def test_linked_rebates_bc_and_bbc_withheld_when_diverted(world):
    pool(world)
    world["admin"].campaigns.create(rule(world, rebates=[{"to": "store", "amount": 30},
                                                         {"to": "distributor", "amount": 20}]), who="test")
    # the store registers cap 0 (cap outer code) and opens case 1 (case inner code)
    store_scan(world, cap(world, 0, "cap_outer"))
    store_scan(world, world["data"].codes.code(world["cases"], 1, "case_inner"))
    r = scan(world, cap(world, 0))
    assert outcomes(r) == ["granted"]  # the consumer sees only their own reward
    ev = world["pipe"].scans.events()[-1]
    paid = {x["rebate"]: (x["outcome"], x.get("beneficiary")) for x in ev["rewards"] if "rebate" in x}
    assert paid == {"store": ("granted", {"role": "store", "id": "s-1"}),
                    "distributor": ("granted", {"role": "distributor", "id": "gz-1"})}
    # cap 30 is in case 1, which the store opened: the store is found through the ancestors
    scan(world, cap(world, 30), actor_id="u2")
    assert [x["beneficiary"]["id"] for x in world["admin"].ledger.entries()[-2:]] == ["s-1", "gz-1"]
    # cap 5: not registered by any store -> no store rebate; distributor still paid
    scan(world, cap(world, 5), actor_id="u3")
    ev = world["pipe"].scans.events()[-1]
    assert [x["outcome"] for x in ev["rewards"]] == ["granted", "no_beneficiary", "granted"]
    # a scan in Shanghai of goods shipped to Guangzhou: consumer paid, rebates withheld
    r = scan(world, cap(world, 6), actor_id="u4", region="310106")
    assert "diverted" in r.flags
    ev = world["pipe"].scans.events()[-1]
    assert [x["outcome"] for x in ev["rewards"]] == ["granted", "withheld_diverted", "withheld_diverted"]
    assert sum(e["amount"] for e in world["admin"].ledger.entries()) == world["admin"].pools.status("p")["spent"]


def test_store_open_case_reward(world):
    pool(world)
    world["admin"].campaigns.create(rule(world, name="Open case", target={"batches": [world["cases"].id]},
                                         trigger={"code_role": "case_inner", "actor_role": "store"},
                                         rebates=[{"to": "distributor", "amount": 20}]), who="test")
    r = store_scan(world, world["data"].codes.code(world["cases"], 0, "case_inner"))
    assert outcomes(r) == ["granted"] and r.rewards[0]["amount"] == 100
    kinds = [(e["beneficiary"]["role"], e["amount"]) for e in world["admin"].ledger.entries()]
    assert kinds == [("store", 100), ("distributor", 20)]


def test_store_scan_without_location_is_judged_at_the_store(world):
    """窜货不返利 (Bb): a store opening a case triggers the flow check. A store's scan that
    sends no location is taken at the store's registered region, so a store in Hangzhou
    opening a case shipped to Guangzhou's distributor cannot collect the distributor's
    rebate for it by leaving the location out."""
    pool(world)
    world["admin"].campaigns.create(rule(world, name="Open case", target={"batches": [world["cases"].id]},
                                         trigger={"code_role": "case_inner", "actor_role": "store"},
                                         rebates=[{"to": "distributor", "amount": 20}]), who="test")
    _, hz_token = world["data"].accounts.add("s-hz", "store", region="330106", distributor="gz-1")
    case = world["data"].codes.code(world["cases"], 1, "case_inner")
    r = world["pipe"].scan(ScanRequest(case, actor_role="store", token=hz_token))
    assert "diverted" in r.flags and r.diversion["region"] == "330106"
    ev = world["pipe"].scans.events()[-1]
    assert ev["region"] == "330106" and ev["region_from"] == "account"
    assert [x["outcome"] for x in ev["rewards"]] == ["granted", "withheld_diverted"]
    # the Guangzhou store, no location either: in territory, the distributor is paid
    r = world["pipe"].scan(ScanRequest(world["data"].codes.code(world["cases"], 0, "case_inner"),
                                       actor_role="store", token=world["store_token"]))
    assert r.flags == ()
    assert [x["outcome"] for x in world["pipe"].scans.events()[-1]["rewards"]] == ["granted", "granted"]


def test_voucher_issue_and_redeem_exactly_once(world):
    pool(world)
    c = world["admin"].campaigns.create(rule(world, reward={"kind": "fixed", "amount": 500, "payout": "voucher",
                                                            "valid_days": 7}), who="test")
    r = scan(world, cap(world, 0))
    (v,) = r.rewards
    assert v["outcome"] == "voucher" and v["amount"] == 500 and v["voucher"].startswith("V")
    assert world["admin"].pools.status("p")["spent"] == 500  # reserved at issue
    store = world["data"].accounts.get("s-1")
    got = world["admin"].rewards.redeem(v["voucher"].lower(), store, now=T0 + 86400)
    assert got["state"] == "redeemed" and got["redeemed_by"] == "s-1" and got["repeat"] is False
    world["data"].accounts.add("s-2", "store", region="440106", distributor="gz-1")
    with pytest.raises(Conflict, match="already redeemed"):  # another store
        world["admin"].rewards.redeem(v["voucher"], world["data"].accounts.get("s-2"), now=T0 + 86400)
    with pytest.raises(NotFound):
        world["admin"].rewards.redeem("V" + "0" * 20, store)
    issue, redeem = world["admin"].ledger.entries()
    assert (issue["kind"], issue["payable"]) == ("voucher", False)
    assert (redeem["kind"], redeem["payable"], redeem["beneficiary"]["id"], redeem["settle_with"]) == (
        "redeem", True, "s-1", "gz-1")
    assert redeem["ref"] == issue["seq"] and redeem["campaign"] == c.id
    assert world["admin"].pools.status("p")["spent"] == 500  # no second charge


def test_a_store_retrying_its_redemption_gets_it_again_and_nothing_more(world):
    """A till whose answer was lost sends the redemption again: the same store gets its own
    redemption back (the same ledger entry, marked a repeat), even once the voucher's time
    is past; nothing is written, credited or charged again. Another store is refused."""
    admin = world["admin"]
    pool(world)
    admin.campaigns.create(rule(world, reward={"kind": "fixed", "amount": 500, "payout": "voucher",
                                               "valid_days": 7}), who="test")
    v = scan(world, cap(world, 0)).rewards[0]["voucher"]
    store = world["data"].accounts.get("s-1")
    first = admin.rewards.redeem(v, store, now=T0 + 100)
    entries, spent = admin.ledger.entries(), admin.pools.status("p")["spent"]
    pending = admin.payouts.summary()
    for at in (T0 + 200, T0 + 30 * 86400):  # at once, and past the voucher's validity
        again = admin.rewards.redeem(v.lower(), store, now=at)
        assert again == {**first, "repeat": True}
    assert admin.ledger.entries() == entries and [e["kind"] for e in entries] == ["voucher", "redeem"]
    assert admin.pools.status("p")["spent"] == spent == 500
    assert admin.payouts.summary() == pending
    world["data"].accounts.add("s-2", "store", region="440106", distributor="gz-1")
    with pytest.raises(Conflict, match="^voucher already redeemed$"):
        admin.rewards.redeem(v, world["data"].accounts.get("s-2"), now=T0 + 300)
    assert admin.rewards.voucher(v)["redeem_ledger"] == first["redeem_ledger"]


def test_unredeemed_vouchers_expire_and_return_their_budget(world):
    pool(world)
    world["admin"].campaigns.create(rule(world, reward={"kind": "fixed", "amount": 500, "payout": "voucher",
                                                        "valid_days": 7}), who="test")
    v = scan(world, cap(world, 0)).rewards[0]["voucher"]
    assert world["admin"].rewards.sweep(now=T0 + 6 * 86400) == {"vouchers_expired": 0, "locks_expired": 0}
    assert world["admin"].rewards.sweep(now=T0 + 8 * 86400)["vouchers_expired"] == 1
    assert world["admin"].pools.status("p")["spent"] == 0
    with pytest.raises(Conflict, match="expired"):
        world["admin"].rewards.redeem(v, world["data"].accounts.get("s-1"))


def test_repurchase_lock_unlocks_on_the_second_scan_within_days(world):
    pool(world)
    world["admin"].campaigns.create(rule(world, lock={"kind": "repurchase", "days": 30}), who="test")
    assert outcomes(scan(world, cap(world, 0))) == ["locked"]
    world["clock"].t += 10 * 86400
    assert outcomes(scan(world, cap(world, 1))) == ["locked", "unlocked", "unlocked"]
    kinds = [(e["kind"], e["payable"]) for e in world["admin"].ledger.entries()]
    assert kinds == [("locked", False), ("locked", False), ("unlock", True), ("unlock", True)]
    # a lone purchase that is never repeated expires and returns its budget
    scan(world, cap(world, 2))
    assert world["admin"].pools.status("p")["spent"] == 300
    assert world["admin"].rewards.sweep(now=world["clock"].t + 31 * 86400)["locks_expired"] == 1
    assert world["admin"].pools.status("p")["spent"] == 200


def test_a_lock_expiring_at_the_next_scan_returns_its_budget(world):
    """The next scan of the actor finds the old locked reward past its days: it expires
    (budget returned) in the same settlement that charges the new one."""
    pool(world)
    world["admin"].campaigns.create(rule(world, lock={"kind": "repurchase", "days": 30}), who="test")
    assert outcomes(scan(world, cap(world, 0))) == ["locked"]
    world["clock"].t += 31 * 86400
    assert outcomes(scan(world, cap(world, 1))) == ["locked", "expired"]
    assert world["admin"].pools.status("p", now=world["clock"].t)["spent"] == 100
    assert [e["kind"] for e in world["admin"].ledger.entries()] == ["locked", "locked", "expire"]


def test_collect_n_needs_different_products(world, tmp_path):
    w = world
    pool(w)
    # a second product: another cap batch activated as SKU-2, and a third as SKU-3
    caps2 = w["data"].create_batch("cap", 4)
    caps3 = w["data"].create_batch("cap", 4)
    w["agg"].activate(sku="SKU-2", name="Black tea", lot="L2", production_date="2026-11-02", batch=caps2.id)
    w["agg"].activate(sku="SKU-3", name="Oolong", lot="L3", production_date="2026-11-02", batch=caps3.id)
    w["admin"].campaigns.create(rule(w, target={"skus": ["SKU-1", "SKU-2", "SKU-3"]},
                                     lock={"kind": "collect", "products": 3, "days": 60}), who="test")
    code = w["data"].codes.code
    assert outcomes(scan(w, cap(w, 0))) == ["locked"]
    assert outcomes(scan(w, cap(w, 1))) == ["locked"]  # same product again: still locked
    assert outcomes(scan(w, code(caps2, 0, "cap_inner"))) == ["locked"]
    assert outcomes(scan(w, code(caps3, 0, "cap_inner"))) == ["locked"] + ["unlocked"] * 4


# -- the budget under concurrency --------------------------------------------------------
def test_pool_is_never_overspent_under_concurrent_scans(world):
    """16 threads scan all 48 caps at a pool that affords 7 rewards: exactly 7 are paid."""
    pool(world, total=700)
    world["admin"].campaigns.create(rule(world), who="test")
    results, barrier = [], threading.Barrier(16)

    def worker(k):
        barrier.wait()
        for i in range(k, 48, 16):
            results.append(outcomes(scan(world, cap(world, i), actor_id=f"u{i}"))[0])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count("granted") == 7 and results.count("budget_exhausted") == 41
    assert world["admin"].pools.status("p")["spent"] == 700
    assert len(world["admin"].ledger.entries()) == 7


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.integers(0, 47), st.sampled_from(["u1", "u2", "u3"]),
                              st.sampled_from(["440106", "310106"])), max_size=40),
       total=st.integers(100, 2_000), per_day=st.integers(1, 5))
def test_ledger_and_pool_agree_with_a_model(tmp_path_factory, ops, total, per_day):
    """Random scans: the ledger matches a plain-Python model of the rules exactly."""
    w = build_world(tmp_path_factory.mktemp("w") / "d", rate_per_minute=100_000)
    clock = Clock()
    admin = Admin(w["data"], rng=random.Random(1), clock=clock)
    pipe = admin.scan_pipeline()
    try:
        admin.pools.create("p", total=total, who="t")
        admin.campaigns.create(rule(w, limits={"per_actor_per_day": per_day},
                                    rebates=[{"to": "distributor", "amount": 10}]), who="t")
        used, per_actor, spent = set(), {}, 0
        for serial, actor, region in ops:
            r = pipe.scan(ScanRequest(cap(w, serial), actor_id=actor, region=region))
            if serial in used:
                want = ["already_rewarded"]
            elif per_actor.get(actor, 0) >= per_day:
                want = ["limit_reached"]
            elif spent + 100 > total:  # nothing paid: the code and the actor keep their chance
                want = ["budget_exhausted"]
            else:
                used.add(serial)
                per_actor[actor] = per_actor.get(actor, 0) + 1
                want = ["granted"]
                spent += 100
                if region != "310106" and spent + 10 <= total:  # diverted: rebate withheld
                    spent += 10
            assert outcomes(r) == want
        assert admin.pools.status("p")["spent"] == spent
        assert sum(e["amount"] for e in admin.ledger.entries()) == spent
    finally:
        admin.close()
        w["data"].close()


def test_reversal_returns_the_budget_and_cancels_the_unsent_payout(world):
    pool(world)
    world["admin"].campaigns.create(rule(world), who="test")
    first = scan(world, cap(world, 0)).rewards[0]["ledger"]
    second = scan(world, cap(world, 1)).rewards[0]["ledger"]
    with pytest.raises(ValueError, match="say why"):
        world["admin"].reverse(first, reason=" ", who="test")
    with pytest.raises(ValueError, match="reason: no control characters"):  # shown in the ledger, audit
        world["admin"].reverse(first, reason="typo\x1b[8m", who="test")
    r = world["admin"].reverse(first, reason="warehouse test scan", who="test")
    assert (r["kind"], r["ref"], r["amount"], r["payable"]) == ("reversal", first, 100, False)
    assert world["admin"].pools.status("p")["spent"] == 100
    assert world["admin"].payouts.state(first)["state"] == "cancelled"
    with pytest.raises(Conflict, match="already reversed"):
        world["admin"].reverse(first, reason="again", who="test")
    with pytest.raises(Conflict, match="only payable"):
        world["admin"].reverse(r["seq"], reason="x", who="test")
    # once a copy may have reached the payment system, it cannot be reversed here
    world["admin"].payouts.deliver_once("http://127.0.0.1:9/", "s" * 32, timeout=0.5)
    with pytest.raises(Conflict, match="already sent"):
        world["admin"].reverse(second, reason="late", who="test")
    assert world["admin"].pools.status("p")["spent"] == 100
    assert [e["action"] for e in world["admin"].audit.entries()][-1] == "ledger.reverse"


def test_reversing_an_unlock_returns_the_budget_to_the_day_it_was_charged(world):
    """A locked reward is charged on its own day; reversing its unlock (a later day) must
    give the budget back to that day, or the unlock day could pay past its daily cap."""
    admin = world["admin"]
    pool(world, total=100_000, daily=300)
    admin.campaigns.create(rule(world, lock={"kind": "repurchase", "days": 30}), who="test")
    world["clock"].t = T0
    day_1 = scan(world, cap(world, 0)).rewards  # 100 charged on day 1
    assert [x["outcome"] for x in day_1] == ["locked"]
    world["clock"].t = T0 + 86400
    r = scan(world, cap(world, 1))  # 100 on day 2, and both unlocked
    assert outcomes(r) == ["locked", "unlocked", "unlocked"]
    unlock_of_day_1 = next(x for x in r.rewards if x.get("ref") == day_1[0]["ledger"])["ledger"]
    admin.reverse(unlock_of_day_1, reason="test scan", who="test", now=T0 + 86400 + 100)
    status = admin.pools.status("p", now=T0 + 86400 + 100)
    assert status["by_day"] == {"2027-01-15": 0, "2027-01-16": 100} and status["spent"] == 100
    got = [outcomes(scan(world, cap(world, 10 + i), actor_id=f"x{i}"))[0] for i in range(3)]
    assert got == ["locked", "locked", "budget_exhausted"]  # day 2: 300, its cap


def test_reversing_a_redemption_gives_the_voucher_back(world):
    admin = world["admin"]
    pool(world, total=1_000)
    admin.campaigns.create(rule(world, reward={"kind": "fixed", "amount": 500, "payout": "voucher",
                                                "valid_days": 7}), who="test")
    v = scan(world, cap(world, 0)).rewards[0]["voucher"]
    store = world["data"].accounts.get("s-1")
    redeemed = admin.rewards.redeem(v, store, now=T0 + 100)
    admin.reverse(redeemed["redeem_ledger"], reason="wrong store", who="test", now=T0 + 200)
    assert admin.payouts.state(redeemed["redeem_ledger"])["state"] == "cancelled"
    back = admin.rewards.voucher(v)
    assert back["state"] == "issued" and "redeemed_by" not in back
    assert admin.pools.status("p")["spent"] == 500  # still owed to the consumer's voucher
    again = admin.rewards.redeem(v, store, now=T0 + 300)  # redeemable again, by the same store too: ...
    assert again["repeat"] is False and again["redeem_ledger"] > redeemed["redeem_ledger"]  # a new redemption
    admin.reverse(again["redeem_ledger"], reason="wrong store again", who="test", now=T0 + 8 * 86400)
    # ... and reversed past its validity, it expires at once with its budget returned
    assert admin.rewards.voucher(v)["state"] == "expired"
    assert admin.pools.status("p")["spent"] == 0
    kinds = [e["kind"] for e in admin.ledger.entries()]
    assert kinds == ["voucher", "redeem", "reversal", "redeem", "expire", "reversal"]


def test_a_scan_from_before_midnight_committed_after_one_from_after_keeps_the_daily_limit(world):
    """The clock is read before the group commit, so around midnight a scan of the old day
    can commit after one of the new day: the new day's count must survive it."""
    midnight = T0 + 8 * 3600  # 2027-01-16 00:00 China time
    pool(world)
    world["admin"].campaigns.create(rule(world, limits={"per_actor_per_day": 1, "per_actor": 10}), who="test")
    times = iter([midnight + 0.5, midnight - 0.5, midnight + 10.0])
    world["pipe"].clock = lambda: next(times)
    got = [outcomes(scan(world, cap(world, i), actor_id="same-user"))[0] for i in range(3)]
    assert got == ["granted", "granted", "limit_reached"]


def test_a_scan_from_before_midnight_committed_late_keeps_its_own_days_limit(world):
    """A scan of the old day committed after one of the new day is checked against its own
    day's count (kept as the day before's), not waved through: limit 1 a day pays one a day."""
    midnight = T0 + 8 * 3600  # 2027-01-16 00:00 China time
    pool(world)
    world["admin"].campaigns.create(rule(world, limits={"per_actor_per_day": 1}), who="test")
    times = iter([midnight - 5.0, midnight + 0.5] + [midnight - 0.5] * 4 + [midnight + 10.0])
    world["pipe"].clock = lambda: next(times)
    got = [outcomes(scan(world, cap(world, i), actor_id="same-user"))[0] for i in range(7)]
    assert got == ["granted", "granted"] + ["limit_reached"] * 5
    # another actor: the old day's first scan, committed late, is still paid
    world["pipe"].clock = iter([midnight + 1.0, midnight - 1.0, midnight - 1.0]).__next__
    got = [outcomes(scan(world, cap(world, i), actor_id="other"))[0] for i in range(7, 10)]
    assert got == ["granted", "granted", "limit_reached"]


def test_counts_kept_before_the_day_before_was_kept_still_read(world):
    """A count written by the old layout (day, that day's, in all: 12 bytes) reads with
    no draws the day before, and is rewritten in the new one."""
    import struct

    from admin._util import china_day_number
    from engine.store import u32

    pool(world)
    c = world["admin"].campaigns.create(rule(world, limits={"per_actor_per_day": 1, "per_actor": 5}),
                                        who="test")
    engine, key = world["admin"].rewards, u32(c.id) + b"old-user"
    day = china_day_number(T0) + 1  # the stored day is the day after T0's
    with world["data"].store.write() as txn:
        txn.put(key, struct.pack(">III", day, 1, 3), db=engine._actor_counts)
    world["clock"].t = T0 + 86400
    assert outcomes(scan(world, cap(world, 0), actor_id="old-user")) == ["limit_reached"]  # that day's 1
    world["clock"].t = T0  # the day before, committed late: its count reads as 0
    assert outcomes(scan(world, cap(world, 1), actor_id="old-user")) == ["granted"]
    assert outcomes(scan(world, cap(world, 2), actor_id="old-user")) == ["limit_reached"]
    with world["data"].store.read() as txn:
        assert struct.unpack(">IIII", txn.get(key, db=engine._actor_counts)) == (day, 1, 4, 1)


def test_per_device_limits_stop_one_phone_claiming_under_many_ids(world):
    """羊毛党: one device, a new user id for every scan. The device's limits count like the
    actor's; a scan without a device is not counted against them."""
    pool(world)
    world["admin"].campaigns.create(rule(world, limits={"per_actor_per_day": 1, "per_actor": 1,
                                                        "per_device_per_day": 2, "per_device": 3}),
                                    who="test")
    got = [scan(world, cap(world, i), actor_id=f"u{i}", device="phone-1", ip="203.0.113.7").rewards[0]
           for i in range(4)]
    assert [r["outcome"] for r in got] == ["granted", "granted", "limit_reached", "limit_reached"]
    assert (got[2]["limit"], got[2]["max"]) == ("per_device_per_day", 2)
    world["clock"].t += 86400  # next day: one more for the device, then its total
    got = [scan(world, cap(world, i), actor_id=f"v{i}", device="phone-1").rewards[0] for i in range(4, 6)]
    assert [r["outcome"] for r in got] == ["granted", "limit_reached"]
    assert (got[1]["limit"], got[1]["max"]) == ("per_device", 3)
    # the refused codes kept their chance; other devices and scans without one are not held
    assert outcomes(scan(world, cap(world, 2), actor_id="w1", device="phone-2")) == ["granted"]
    assert outcomes(scan(world, cap(world, 3), actor_id="w2")) == ["granted"]
    assert outcomes(scan(world, cap(world, 5), actor_id="w3", device="")) == ["granted"]
    assert sum(e["amount"] for e in world["admin"].ledger.entries()) == 600  # 6 granted


def test_per_ip_limits_stop_a_farm_behind_one_address(world):
    """Phones making up a new device id and user id for every scan, all behind one
    address: the address's limits count like the device's; other addresses are not held;
    device and address counts never meet."""
    pool(world)
    world["admin"].campaigns.create(rule(world, limits={"per_ip_per_day": 2, "per_device": 1}), who="test")
    got = [scan(world, cap(world, i), actor_id=f"u{i}", device=f"d{i}", ip="203.0.113.9").rewards[0]
           for i in range(3)]
    assert [r["outcome"] for r in got] == ["granted", "granted", "limit_reached"]
    assert (got[2]["limit"], got[2]["max"]) == ("per_ip_per_day", 2)
    assert outcomes(scan(world, cap(world, 2), actor_id="x", device="203.0.113.9", ip="198.51.100.4")) == \
        ["granted"]  # a device id spelt like the address: its own count


def test_a_window_ending_on_a_date_includes_that_day(world):
    pool(world)
    c = world["admin"].campaigns.create(rule(world, window={"start": "2027-01-15", "end": "2027-01-16"}),
                                        who="test")
    assert c.rule["window"] == {"start": T0 - 16 * 3600, "end": T0 + 32 * 3600}  # China days
    world["clock"].t = T0 + 32 * 3600 - 2  # NOTE: the test clock ticks 1 s before it answers
    assert outcomes(scan(world, cap(world, 0))) == ["granted"]  # 2027-01-16 23:59:59
    assert outcomes(scan(world, cap(world, 1))) == []  # 2027-01-17 00:00:00


@pytest.mark.parametrize("window, message", [
    ({"start": T0, "end": 10**400}, "the year 9999"),
    ({"start": float("nan"), "end": T0}, "the year 9999"),
    ({"start": T0, "end": float("inf")}, "the year 9999"),
    ({"start": -1, "end": T0}, "the year 9999"),
    ({"start": "0001-01-01", "end": T0}, "the year 9999"),
])
def test_window_times_out_of_range_are_refused(world, window, message):
    pool(world)
    with pytest.raises(ValueError, match=message):
        world["admin"].campaigns.create(rule(world, window=window), who="test")


@pytest.mark.parametrize("change", [{"pool": ""}, {"pool": "p\n"}, {"target": {"skus": ["S" * 600]}},
                                    {"target": {"skus": ["BJ-500\n"]}}])
def test_ids_that_cannot_be_ids_are_refused_before_any_lookup(world, change):
    pool(world)
    with pytest.raises(ValueError, match="pool|SKU"):
        world["admin"].campaigns.create(rule(world, **change), who="test")


def test_a_top_up_cannot_raise_a_pool_past_the_most_it_holds(world):
    from admin._util import MAX_AMOUNT
    pool(world, total=MAX_AMOUNT - 10)
    with pytest.raises(ValueError, match="top up at most 10"):
        world["admin"].pools.top_up("p", 11, who="test")
    assert world["admin"].pools.top_up("p", 10, who="test").total == MAX_AMOUNT


def test_a_top_up_with_an_idempotency_key_is_done_once(world):
    """A top-up sent again with its key (an answer lost) is answered as the first time and
    changes nothing; the same key with another amount is refused; keys are per pool."""
    pools = world["admin"].pools
    pool(world, total=10_000)
    pool(world, total=10_000, id="q")
    first, replayed = pools.top_up_status("p", 500, who="test", idempotency_key="7f3e-top-up-1")
    assert (first["total"], first["left"], replayed) == (10_500, 10_500, False)
    pools.top_up("p", 1_000, who="test")  # another top-up meanwhile
    again, replayed = pools.top_up_status("p", 500, who="test", idempotency_key="7f3e-top-up-1")
    assert (again, replayed) == (first, True)  # the first answer, not the pool now
    assert pools.top_up("p", 500, who="test", idempotency_key="7f3e-top-up-1").total == 10_500
    assert pools.get("p").total == 11_500
    with pytest.raises(Conflict, match="7f3e-top-up-1 was sent with a top-up of pool p by 500, not 600"):
        pools.top_up("p", 600, who="test", idempotency_key="7f3e-top-up-1")
    assert pools.top_up("q", 600, who="test", idempotency_key="7f3e-top-up-1").total == 10_600  # per pool
    assert pools.get("p").total == 11_500
    top_ups = [e for e in world["admin"].audit.entries() if e["action"] == "pool.top_up"]
    assert [(e["target"], e["details"]) for e in top_ups] == [
        ("p", {"amount": 500, "total": 10_500, "idempotency_key": "7f3e-top-up-1"}),
        ("p", {"amount": 1_000, "total": 11_500}),
        ("q", {"amount": 600, "total": 10_600, "idempotency_key": "7f3e-top-up-1"})]


@pytest.mark.parametrize("key", ["", "two words", "k" * 256, "k\n", "ключ", 7])
def test_an_idempotency_key_is_visible_ascii(world, key):
    pool(world)
    with pytest.raises(ValueError, match="Idempotency-Key: 1-255 visible ASCII"):
        world["admin"].pools.top_up("p", 100, who="test", idempotency_key=key)
    assert world["admin"].pools.get("p").total == 10_000


def test_a_failed_top_up_keeps_no_key(world):
    from admin._util import MAX_AMOUNT
    pool(world, total=MAX_AMOUNT - 10)
    with pytest.raises(ValueError, match="top up at most 10"):
        world["admin"].pools.top_up("p", 11, who="test", idempotency_key="k-1")
    assert world["admin"].pools.top_up("p", 10, who="test", idempotency_key="k-1").total == MAX_AMOUNT


# -- free text printed in listings -------------------------------------------------------------
_CONTROLS = ["\x00", "\u202e", "\x1b[2J", "\r", "\u2028", "\x85", "\u2066"]


@pytest.mark.parametrize("bad", _CONTROLS)
def test_names_with_control_characters_are_refused(world, bad):
    admin = world["admin"]
    with pytest.raises(ValueError, match="^product name: no control characters"):
        admin.products.add("P-1", f"Green tea{bad}gpj.exe", who="test")
    with pytest.raises(ValueError, match="^pool name: no control characters"):
        admin.pools.create("p", total=10_000, name=f"Summer{bad}", who="test")
    pool(world)
    with pytest.raises(ValueError, match="^campaign name: no control characters"):
        admin.campaigns.create(rule(world, name=f"{bad}Cap draw"), who="test")
    assert admin.products.list() == [] and [p.id for p in admin.pools.list()] == ["p"]
    assert admin.campaigns.list() == []


def test_names_are_held_to_one_size_rule(world):
    """A required name is 1-200 characters, not only spaces; an optional one (a pool's) may
    be empty; a reversal's reason is up to 500 and says where to give it."""
    admin = world["admin"]
    for blank in ("", "   "):
        with pytest.raises(ValueError, match="^product name: 1-200 characters, not only spaces$"):
            admin.products.add("P-1", blank, who="test")
        with pytest.raises(ValueError, match="^campaign name: 1-200 characters"):
            admin.campaigns.create(rule(world, name=blank), who="test")
    with pytest.raises(ValueError, match="^pool name: at most 200 characters$"):
        admin.pools.create("p", total=10_000, name="夏" * 201, who="test")
    with pytest.raises(ValueError, match=r"^reason: 1-500 characters, not only spaces: say why .*--reason"):
        admin.reverse(1, reason=" ", who="test")
    assert admin.products.add("P-1", "绿茶" * 100, who="test").name == "绿茶" * 100
    assert admin.pools.create("p", total=10_000, who="test").name == "p"  # named by its id


def test_names_in_any_script_are_taken(world):
    admin = world["admin"]
    assert admin.products.add("P-1", "绿茶 500ml", who="test").name == "绿茶 500ml"
    assert admin.pools.create("p", total=10_000, name="夏季 活动", who="test").name == "夏季 活动"
    assert admin.campaigns.create(rule(world, name="  扫码 抽奖 "), who="test").name == "扫码 抽奖"


def test_a_reversal_reason_is_at_most_500_characters(world):
    pool(world)
    world["admin"].campaigns.create(rule(world), who="test")
    seq = scan(world, cap(world, 0)).rewards[0]["ledger"]
    with pytest.raises(ValueError, match="500 characters"):
        world["admin"].reverse(seq, reason="x" * 501, who="test")


def test_a_scan_the_pool_cannot_afford_keeps_its_chance_for_after_a_top_up(world):
    """Nothing is paid for it, rebates neither, and neither the code's one chance nor the
    actor's limit is used up: after a top-up the same code pays, once."""
    pool(world, total=110)
    world["admin"].campaigns.create(rule(world, limits={"per_actor": 2},
                                         rebates=[{"to": "distributor", "amount": 10}]), who="test")
    assert outcomes(scan(world, cap(world, 0))) == ["granted"]  # 100 + the rebate's 10
    for _ in range(3):  # the pool is empty: the same code, the same actor, again and again
        r = scan(world, cap(world, 1))
        assert outcomes(r) == ["budget_exhausted"] and len(r.rewards) == 1
    assert world["admin"].pools.status("p")["spent"] == 110
    world["admin"].pools.top_up("p", 1_000, who="test")
    assert outcomes(scan(world, cap(world, 1))) == ["granted"]  # the actor's second of 2
    assert outcomes(scan(world, cap(world, 1))) == ["already_rewarded"]
    assert outcomes(scan(world, cap(world, 2))) == ["limit_reached"]
    assert world["admin"].pools.status("p")["spent"] == 220
    assert [e["amount"] for e in world["admin"].ledger.entries()] == [100, 10, 100, 10]


def test_a_scan_outside_its_role_earns_nothing_even_from_a_campaign_for_it(world):
    """A consumer scanning a case inner code (a store's code) is flagged and earns nothing,
    even under a campaign written to pay consumers for case inner codes: the role rules
    come before any campaign."""
    pool(world)
    world["admin"].campaigns.create(rule(world, trigger={"code_role": "case_inner", "actor_role": "consumer"},
                                         target={"batches": [world["cases"].id]}), who="test")
    r = scan(world, world["data"].codes.code(world["cases"], 1, "case_inner"))
    assert "role_not_allowed" in r.flags and r.rewards == ()
    assert not world["pipe"].scans.events()[-1].get("rewards") and world["admin"].ledger.entries() == []


# -- big rules: checked without comparing every pair, and bounded ----------------------------
def _pairwise_overlap(a: dict, b: dict) -> bool:
    """The overlap rule written out pair by pair (as it was): the reference."""
    from admin._util import region_prefixes

    if a["trigger"] != b["trigger"]:
        return False
    if a["window"]["end"] <= b["window"]["start"] or b["window"]["end"] <= a["window"]["start"]:
        return False
    ra, rb = region_prefixes(a["regions"]), region_prefixes(b["regions"])
    if ra and rb and not any(x.startswith(y) or y.startswith(x) for x in ra for y in rb):
        return False
    ta, tb = a["target"], b["target"]

    def ranges(t):
        return [[x, 0, 1 << 40] for x in t["batches"]] if "batches" in t else t["serials"]

    return any(x[0] == y[0] and x[1] <= y[2] and y[1] <= x[2] for x in ranges(ta) for y in ranges(tb))


_serial_ranges = st.lists(st.tuples(st.integers(1, 3), st.integers(0, 60), st.integers(0, 12)).map(
    lambda t: [t[0], t[1], t[1] + t[2]]), min_size=1, max_size=12).map(sorted)
_regions = st.lists(st.sampled_from(["44", "4401", "440100", "440106", "440106001", "4403", "33", "330106",
                                     "11", "110101"]), max_size=4)


@st.composite
def _rules(draw):
    target = draw(st.one_of(st.builds(lambda s: {"serials": s}, _serial_ranges),
                            st.builds(lambda b: {"batches": sorted(set(b))},
                                      st.lists(st.integers(1, 3), min_size=1, max_size=3))))
    start = draw(st.integers(0, 10))
    return {"trigger": {"code_role": "cap_inner", "actor_role": "consumer"}, "target": target,
            "window": {"start": start, "end": start + draw(st.integers(1, 10))}, "regions": draw(_regions)}


@settings(max_examples=400, deadline=None)
@given(a=_rules(), b=_rules(), batch=st.integers(1, 3), serial=st.integers(0, 80))
def test_overlap_and_matching_are_the_pairwise_rules(a, b, batch, serial):
    """The overlap check and a scan's serial match, now by merged runs and prefix sets,
    answer as comparing every pair did."""
    from admin.campaigns import Campaign, _overlap

    assert _overlap(a, b) == _pairwise_overlap(a, b) == _overlap(b, a)
    if "serials" in a["target"]:
        c = Campaign(1, "active", {**a, "regions": []}, 0.0)
        want = any(x == batch and f <= serial <= last for x, f, last in a["target"]["serials"])
        assert c.matches("consumer", a["window"]["start"], None, batch, serial) == want


def test_a_rule_past_the_bounds_is_refused_before_anything_is_checked(world):
    """16,000 one-serial ranges against as many held the write transaction, and every
    scan, for 14.6 s; 24,000 regions each got both workers killed by their timeout."""
    pool(world)
    caps = world["data"].create_batch("cap", 2000).id
    with pytest.raises(ValueError, match="target serials: at most 1,000"):
        world["admin"].campaigns.create(rule(world, target={"serials": [[caps, i, i] for i in range(1001)]}),
                                        who="test")
    with pytest.raises(ValueError, match="regions: at most 3,000 regions"):
        world["admin"].campaigns.create(rule(world, regions=[f"4401{i:04d}" for i in range(3001)]), who="test")
    # at the bounds: made, and a second such rule is checked against it
    big = {"serials": [[caps, i, i] for i in range(0, 2000, 2)]}
    regions = [f"{i:06d}" for i in range(110000, 113000)]
    world["admin"].campaigns.create(rule(world, target=big, regions=regions), who="test")
    with pytest.raises(Conflict, match="already rewards"):
        world["admin"].campaigns.create(rule(world, target={"serials": [[caps, 1998, 1998]]},
                                             regions=regions[-1:]), who="test")
    world["admin"].campaigns.create(rule(world, target={"serials": [[caps, i, i] for i in range(1, 2000, 2)]},
                                         regions=regions), who="test")  # the odd serials: no overlap


def test_the_admin_facade_keeps_to_its_clock(world):
    """Sweep, ban lifts and the ban listing (as the admin API runs them) took the wall
    clock where the rest took the admin's: a voucher expired by it was not swept, a ban the
    pipeline enforced was missing from the list."""
    from engine.abuse import subject

    admin, clock = world["admin"], world["clock"]
    pool(world)
    admin.campaigns.create(rule(world, reward={"kind": "fixed", "amount": 500, "payout": "voucher",
                                                "valid_days": 7}), who="test")
    assert scan(world, cap(world, 0)).rewards[0]["outcome"] == "voucher"
    clock.t += 10 * 86400
    assert admin.sweep(who="test")["vouchers_expired"] == 1
    ip = subject("ip", "203.0.113.50")
    for i in range(6):  # build_world's invalid threshold is 5
        world["data"].abuse.record_invalid([ip], f"FAKE{i}", now=clock.t)
    assert [b.subject for b in admin.list_bans()] == [ip]
    assert admin.lift_ban(ip, who="test").lifted_at is not None
