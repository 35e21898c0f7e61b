"""Linked rebates (bC / BbC) and who may still be paid: 窜货不返利 through the store's
registration, revoked stores, and which consumer scans prove a sale.

Through the real scan pipeline (``Admin.scan_pipeline()``, LMDB on disk), as
``tests/test_campaigns.py`` does; the scan event holds the rebates' outcomes.
"""

from __future__ import annotations

import random

import pytest
import test_campaigns
from click.testing import CliRunner
from conftest_world import Clock, build_world

from admin.rewards import OUTCOMES
from admin.service import Admin
from cli.main import cli
from engine.errors import Conflict
from engine.scan import ScanRequest

T0 = 1_800_000_000.0  # 2027-01-15 16:00 China time (08:00 UTC)
REBATES = [{"to": "store", "amount": 50}, {"to": "distributor", "amount": 20}]


# The world of test_campaigns (build_world with an Admin on a clock), and its rules with rebates.
world = test_campaigns.world


def rule(w, **over):
    return test_campaigns.rule(w, **{"rebates": REBATES, **over})


def cap(w, serial, role="cap_inner"):
    return w["data"].codes.code(w["caps"], serial, role)


def scan(w, code, actor_id="u1", **kw):
    kw.setdefault("region", "440106")
    return w["pipe"].scan(ScanRequest(code, actor_id=actor_id, **kw))


def store_scan(w, code, token):
    """A store's scan that sends no location: judged at the store's registered region."""
    return w["pipe"].scan(ScanRequest(code, actor_role="store", token=token))


def event_outcomes(w):
    """(rebate or "reward", outcome) of the last scan's event."""
    return [(x.get("rebate", "reward"), x["outcome"]) for x in w["pipe"].scans.events()[-1]["rewards"]]


def paid_to(w):
    return [(e["beneficiary"]["id"], e["amount"]) for e in w["admin"].ledger.entries()]


# -- 窜货不返利 through the registration ---------------------------------------------------
def test_a_unit_registered_by_a_diverted_store_scan_pays_no_rebate(world):
    """Goods shipped to Guangzhou's distributor, registered by a store in Hangzhou: the
    store's scan is diverted. A consumer's later scan (here without a location, so not
    judged itself, and in Guangzhou) still pays the consumer, but neither the store nor the
    distributor: the goods were diverted, wherever the consumer stands."""
    admin = world["admin"]
    admin.pools.create("p", total=10_000, who="test")
    admin.campaigns.create(rule(world), who="test")
    _, hz = world["data"].accounts.add("s-hz", "store", region="330106", distributor="gz-1")
    assert "diverted" in store_scan(world, cap(world, 1, "cap_outer"), hz).flags
    # the case of caps 24..47, opened in Hangzhou: its caps are found through the ancestors
    assert "diverted" in store_scan(world, world["data"].codes.code(world["cases"], 1, "case_inner"), hz).flags
    for serial, region in ((1, None), (30, None), (31, "440106")):
        r = scan(world, cap(world, serial), actor_id=f"c{serial}", region=region)
        assert "diverted" not in r.flags
        assert event_outcomes(world) == [("reward", "granted"), ("store", "withheld_diverted"),
                                         ("distributor", "withheld_diverted")]
    assert paid_to(world) == [("c1", 100), ("c30", 100), ("c31", 100)]
    assert admin.pools.status("p")["spent"] == 300  # nothing charged for a withheld rebate
    # a registration in territory (the Guangzhou store, no location either) pays as before
    assert store_scan(world, cap(world, 2, "cap_outer"), world["store_token"]).flags == ()
    scan(world, cap(world, 2), actor_id="c2", region=None)
    assert event_outcomes(world) == [("reward", "granted"), ("store", "granted"), ("distributor", "granted")]


def test_a_distributor_rebate_alone_is_withheld_for_a_diverted_registration(world):
    admin = world["admin"]
    admin.pools.create("p", total=10_000, who="test")
    admin.campaigns.create(rule(world, rebates=[{"to": "distributor", "amount": 20}]), who="test")
    _, hz = world["data"].accounts.add("s-hz", "store", region="330106", distributor="gz-1")
    store_scan(world, cap(world, 3, "cap_outer"), hz)
    scan(world, cap(world, 3), actor_id="c3", region=None)
    assert event_outcomes(world) == [("reward", "granted"), ("distributor", "withheld_diverted")]
    scan(world, cap(world, 4), actor_id="c4", region=None)  # no store registered: paid
    assert event_outcomes(world) == [("reward", "granted"), ("distributor", "granted")]


# -- revoked stores -----------------------------------------------------------------------
def test_a_store_revoked_since_it_registered_is_not_paid(world):
    admin, accounts = world["admin"], world["data"].accounts
    admin.pools.create("p", total=10_000, who="test")
    admin.campaigns.create(rule(world), who="test")
    store_scan(world, cap(world, 0, "cap_outer"), world["store_token"])
    store_scan(world, cap(world, 1, "cap_outer"), world["store_token"])
    scan(world, cap(world, 0), actor_id="c0")
    assert event_outcomes(world) == [("reward", "granted"), ("store", "granted"), ("distributor", "granted")]
    accounts.revoke("s-1")
    scan(world, cap(world, 1), actor_id="c1")
    assert event_outcomes(world) == [("reward", "granted"), ("store", "beneficiary_revoked"),
                                     ("distributor", "granted")]
    assert paid_to(world) == [("c0", 100), ("s-1", 50), ("gz-1", 20), ("c1", 100), ("gz-1", 20)]
    assert admin.pools.status("p")["spent"] == 290  # the withheld store rebate is not charged
    assert "beneficiary_revoked" in OUTCOMES


def test_a_distributor_whose_account_is_revoked_is_not_paid(world):
    """The distributor is paid as its registry record; once its scanning account (the same
    id) is revoked, its rebates stop too, as a store's do. A distributor with no account
    at all is still paid (the registry alone names it)."""
    admin, accounts = world["admin"], world["data"].accounts
    admin.pools.create("p", total=10_000, who="test")
    admin.campaigns.create(rule(world), who="test")
    store_scan(world, cap(world, 0, "cap_outer"), world["store_token"])
    store_scan(world, cap(world, 1, "cap_outer"), world["store_token"])
    accounts.revoke("gz-1")
    scan(world, cap(world, 0), actor_id="c0")
    assert event_outcomes(world) == [("reward", "granted"), ("store", "granted"),
                                     ("distributor", "beneficiary_revoked")]
    assert paid_to(world) == [("c0", 100), ("s-1", 50)]
    assert admin.pools.status("p")["spent"] == 150  # the withheld rebate is not charged
    # a distributor in the registry without a scanning account: paid as before
    world["agg"].add_distributor("gz-2", "Guangzhou Second Trading", ["4401"])
    world["agg"].transfer([world["data"].codes.code(world["cases"], 1, "case_outer")], "gz-2")
    scan(world, cap(world, 40), actor_id="c40")  # case 1 holds caps 24..47
    assert ("distributor", "granted") in event_outcomes(world)
    assert paid_to(world)[-1] == ("gz-2", 20)


def voucher_world(world):
    admin = world["admin"]
    admin.pools.create("p", total=10_000, who="test")
    admin.campaigns.create(rule(world, rebates=[], reward={"kind": "fixed", "amount": 500, "payout": "voucher",
                                                           "valid_days": 7}), who="test")
    return scan(world, cap(world, 0)).rewards[0]["voucher"]


def test_a_revoked_store_redeems_no_voucher(world):
    admin, accounts = world["admin"], world["data"].accounts
    v = voucher_world(world)
    stale = accounts.get("s-1")  # read before the revocation, as a caller may hold it
    accounts.revoke("s-1")
    for account in (stale, accounts.get("s-1")):
        with pytest.raises(Conflict, match="store account s-1 is revoked"):
            admin.rewards.redeem(v, account, now=T0 + 60)
    assert admin.rewards.voucher(v)["state"] == "issued"
    assert [e["kind"] for e in admin.ledger.entries()] == ["voucher"]


def test_wuma_voucher_redeem_refuses_a_revoked_store(tmp_path):
    """The CLI names the store account (no token): a revoked one is refused all the same."""
    path = tmp_path / "wuma-data"
    w = build_world(path, rate_per_minute=100_000)
    admin = Admin(w["data"], rng=random.Random(7), clock=Clock())
    w.update(admin=admin, pipe=admin.scan_pipeline())
    v = voucher_world(w)
    w["data"].accounts.revoke("s-1")
    admin.close()
    w["data"].close()
    res = CliRunner().invoke(cli, ["--data", str(path), "voucher", "redeem", v, "--store", "s-1"],
                             catch_exceptions=False)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "store account s-1 is revoked: it redeems no vouchers" in res.output
    shown = CliRunner().invoke(cli, ["--data", str(path), "voucher", "show", v], catch_exceptions=False)
    assert shown.exit_code == 0 and '"state": "issued"' in shown.output


# -- which consumer scans prove a sale ----------------------------------------------------
def test_rebates_follow_every_counted_scan_win_or_lose(world):
    """bC / BbC: the consumer's scan is the proof of sale that pays the store and the
    distributor, so a losing draw pays them too; a scan that does not count in the campaign
    (the actor's limit, a code already used) pays none."""
    admin = world["admin"]
    admin.pools.create("p", total=10_000, who="test")
    admin.campaigns.create(rule(world, limits={"per_actor": 1}, reward={"kind": "draw", "tiers": [
        {"amount": 0, "odds": 0.999999}, {"amount": 888, "odds": 0.000001}]}), who="test")
    for serial in (0, 1):
        store_scan(world, cap(world, serial, "cap_outer"), world["store_token"])
    scan(world, cap(world, 0), actor_id="c0")
    assert event_outcomes(world) == [("reward", "no_win"), ("store", "granted"), ("distributor", "granted")]
    scan(world, cap(world, 1), actor_id="c0")
    assert event_outcomes(world) == [("reward", "limit_reached")]
    scan(world, cap(world, 0), actor_id="c9")
    assert event_outcomes(world) == [("reward", "already_rewarded")]
    assert paid_to(world) == [("s-1", 50), ("gz-1", 20)]
    assert admin.pools.status("p")["spent"] == 70


def test_a_scan_the_pool_cannot_afford_pays_no_rebate(world):
    admin = world["admin"]
    admin.pools.create("p", total=100, who="test")
    admin.campaigns.create(rule(world), who="test")
    for serial in (0, 1):
        store_scan(world, cap(world, serial, "cap_outer"), world["store_token"])
    scan(world, cap(world, 0), actor_id="c0")  # the reward takes the whole pool
    assert event_outcomes(world) == [("reward", "granted"), ("store", "budget_exhausted"),
                                     ("distributor", "budget_exhausted")]
    scan(world, cap(world, 1), actor_id="c1")
    assert event_outcomes(world) == [("reward", "budget_exhausted")]
    assert paid_to(world) == [("c0", 100)]
