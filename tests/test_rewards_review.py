"""Who a campaign pays, as a review found it paid the wrong party: a store turning its own
voucher into cash, a distributor paid for another's goods, the baijiu box code (盒码)
registering no store, and a redemption at the command line left out of the audit log.

Through the real scan pipeline (``Admin.scan_pipeline()``, LMDB on disk), as
``tests/test_campaigns.py`` does.
"""

from __future__ import annotations

import random

import falcon.testing
import pytest
import test_campaigns
from click.testing import CliRunner
from conftest_world import Clock, build_world

import admin.campaigns as campaigns_module
from admin.http import create_app
from admin.service import Admin
from cli.main import cli  # NOTE: before cli.admin, which cli.main imports in its turn
from cli.admin import cli_user  # noqa: I001
from engine import DataFolder
from engine.aggregation import Aggregation
from engine.errors import Conflict
from engine.scan import ScanRequest

T0 = test_campaigns.T0
world = test_campaigns.world
rule, cap, scan = test_campaigns.rule, test_campaigns.cap, test_campaigns.scan
VOUCHER = {"kind": "fixed", "amount": 500, "payout": "voucher", "valid_days": 30}


def case_code(w, serial, role):
    return w["data"].codes.code(w["cases"], serial, role)


# -- 1. a voucher is a consumer's, redeemed by a store --------------------------------------
@pytest.mark.parametrize("trigger", [{"code_role": "case_inner", "actor_role": "store"},
                                     {"code_role": "case_outer", "actor_role": "distributor"}])
def test_a_voucher_reward_for_an_accounts_own_scan_is_refused(world, trigger):
    """开箱有礼 paid as a voucher would give the store a voucher it redeems itself for cash."""
    admin = world["admin"]
    admin.pools.create("p", total=10_000, who="test")
    target = {"batches": [world["cases"].id]}
    with pytest.raises(ValueError, match="a voucher is issued to a consumer for a store to redeem.*"
                                         "pay it in cash or points instead"):
        admin.campaigns.create(rule(world, trigger=trigger, target=target, reward=VOUCHER), who="test")
    assert admin.campaigns.list() == []
    admin.campaigns.create(rule(world, reward=VOUCHER), who="test")  # a consumer's scan: as before


def test_a_store_cannot_redeem_its_own_voucher_from_a_rule_stored_before(world, monkeypatch):
    """A store-triggered voucher campaign stored by an earlier release still issues its
    vouchers to the store: neither that store nor any other redeems one for cash."""
    admin, accounts = world["admin"], world["data"].accounts
    admin.pools.create("p", total=10_000, who="test")
    accounts.add("s-2", "store", region="440106", distributor="gz-1")
    checked = campaigns_module.normalise

    def as_before(r, **kw):  # the rule as an earlier release validated and stored it
        return {**checked({**r, "trigger": {**r["trigger"], "actor_role": "consumer"}}, **kw),
                "trigger": dict(r["trigger"])}

    monkeypatch.setattr(campaigns_module, "normalise", as_before)
    admin.campaigns.create(rule(world, trigger={"code_role": "case_inner", "actor_role": "store"},
                                target={"batches": [world["cases"].id]}, reward=VOUCHER), who="test")
    monkeypatch.undo()
    got = test_campaigns.store_scan(world, case_code(world, 0, "case_inner"))
    v = got.rewards[0]["voucher"]
    for store in ("s-1", "s-2"):
        with pytest.raises(Conflict, match="issued to a store's own scan, not to a consumer's"):
            admin.rewards.redeem(v, accounts.get(store), now=T0 + 60)
    assert admin.rewards.voucher(v)["state"] == "issued"
    assert [e["kind"] for e in admin.ledger.entries()] == ["voucher"]  # nothing payable
    assert "voucher.redeem" not in [e["action"] for e in admin.audit.entries()]


# -- 2. a distributor earns on goods shipped to it -------------------------------------------
def test_a_distributor_is_paid_only_for_goods_shipped_to_it(world):
    """A receipt reward: Shenzhen's distributor scans a case shipped to Guangzhou's and earns
    nothing; the case keeps its chance, which Guangzhou's distributor then takes."""
    admin, accounts = world["admin"], world["data"].accounts
    world["agg"].add_distributor("sz-1", "Shenzhen Trading", ["4403"])
    _, sz = accounts.add("sz-1", "distributor", region="4403")
    _, gz = accounts.reissue("gz-1")
    admin.pools.create("p", total=10_000, who="test")
    admin.campaigns.create(rule(world, trigger={"code_role": "case_outer", "actor_role": "distributor"},
                                target={"batches": [world["cases"].id]},
                                reward={"kind": "fixed", "amount": 200}), who="test")
    code = case_code(world, 0, "case_outer")
    for region in ("440300", "440106"):  # in its own territory (diverted), or in Guangzhou's
        got = world["pipe"].scan(ScanRequest(code, actor_role="distributor", token=sz, region=region))
        assert [r["outcome"] for r in got.rewards] == ["not_your_goods"]
    assert admin.ledger.entries() == [] and admin.pools.status("p")["spent"] == 0
    got = world["pipe"].scan(ScanRequest(code, actor_role="distributor", token=gz))
    assert [(r["outcome"], r["amount"]) for r in got.rewards] == [("granted", 200)]
    assert [(e["beneficiary"]["id"], e["amount"]) for e in admin.ledger.entries()] == [("gz-1", 200)]


# -- 3. the baijiu box code registers the store that sold the bottle ---------------------------
@pytest.fixture
def baijiu(tmp_path):
    data = DataFolder.init(tmp_path / "wuma-data", preset="baijiu")
    data.update_config(abuse={"rate_per_minute": 100_000})
    agg = Aggregation(data)
    caps, boxes = data.create_batch("cap", 6), data.create_batch("box", 6)
    cases, pallets = data.create_batch("case", 1), data.create_batch("pallet", 1)
    code = data.codes.code
    for i in range(6):
        agg.link(code(boxes, i, "box"), [code(caps, i, "cap_outer")])
    agg.link(code(cases, 0, "case"), [code(boxes, i, "box") for i in range(6)])
    agg.link(code(pallets, 0, "pallet"), [code(cases, 0, "case")])
    agg.activate(sku="BJ-500", name="Baijiu", lot="L1", production_date="2026-11-01",
                 pallets=[code(pallets, 0, "pallet")])
    agg.add_distributor("gz-1", "Guangzhou Trading", ["4401"])
    agg.ship([code(pallets, 0, "pallet")], "gz-1")
    data.accounts.add("gz-1", "distributor", region="4401")
    _, wholesaler = data.accounts.add("s-whole", "store", region="440106", distributor="gz-1")
    _, shop = data.accounts.add("s-shop", "store", region="440106", distributor="gz-1")
    admin = Admin(data, rng=random.Random(1), clock=Clock())
    yield {"data": data, "admin": admin, "pipe": admin.scan_pipeline(), "caps": caps, "boxes": boxes,
           "cases": cases, "wholesaler": wholesaler, "shop": shop}
    admin.close()
    data.close()


def test_a_shops_box_scan_earns_it_the_bc_rebate_over_the_wholesaler_of_the_case(baijiu):
    w, code = baijiu, baijiu["data"].codes.code
    w["admin"].pools.create("p", total=100_000, who="test")
    w["admin"].campaigns.create({"name": "bC", "pool": "p",
                                 "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
                                 "target": {"batches": [w["caps"].id]}, "window": {"start": 0, "end": 2e9},
                                 "reward": {"kind": "fixed", "amount": 100},
                                 "rebates": [{"to": "store", "amount": 50}]}, who="test")

    def store_scan(c, token):
        w["pipe"].scan(ScanRequest(c, actor_role="store", token=token))

    store_scan(code(w["cases"], 0, "case"), w["wholesaler"])  # the wholesaler receives the case
    store_scan(code(w["boxes"], 0, "box"), w["shop"])  # and sells box 0 to the shop
    for serial in (0, 1):  # box 1 the shop never registered: the case's store, as before
        w["pipe"].scan(ScanRequest(code(w["caps"], serial, "cap_inner"), actor_id=f"c{serial}",
                                   region="440106"))
    rebates = [(e["beneficiary"]["id"], e["amount"]) for e in w["admin"].ledger.entries() if e.get("rebate")]
    assert rebates == [("s-shop", 50), ("s-whole", 50)]


# -- 4. every redemption is audited ------------------------------------------------------------
def voucher_world(tmp_path):
    w = build_world(tmp_path / "wuma-data", rate_per_minute=100_000)
    admin = Admin(w["data"], rng=random.Random(7), clock=Clock())
    w.update(admin=admin, pipe=admin.scan_pipeline())
    admin.pools.create("p", total=10_000, who="test")
    admin.campaigns.create(rule(w, reward=VOUCHER, window={"start": 0, "end": 2e9}), who="test")
    return w, scan(w, cap(w, 0)).rewards[0]["voucher"]


def redemptions(admin):
    return [(e["who"], e["target"], e["details"]) for e in admin.audit.entries(limit=1000)
            if e["action"] == "voucher.redeem"]


def test_wuma_voucher_redeem_is_audited_as_its_operator(tmp_path):
    w, v = voucher_world(tmp_path)
    path = str(w["data"].path)
    w["admin"].close()
    w["data"].close()
    for _ in range(2):  # the second: a repeat, nothing written
        res = CliRunner().invoke(cli, ["--data", path, "voucher", "redeem", v, "--store", "s-1"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
    data = DataFolder(path)
    admin = Admin(data)
    try:
        seq = admin.rewards.voucher(v)["redeem_ledger"]
        assert redemptions(admin) == [(cli_user(), v, {"store": "s-1", "amount": 500, "ledger": seq})]
    finally:
        admin.close()
        data.close()


def test_a_stores_redemption_over_http_is_audited_as_its_account(tmp_path):
    w, v = voucher_world(tmp_path)
    client = falcon.testing.TestClient(create_app(w["data"], admin=w["admin"], clock=lambda: T0))
    try:
        for _ in range(2):
            got = client.simulate_post("/v1/vouchers/redeem", json={"voucher": v},
                                       headers={"Authorization": f"Bearer {w['store_token']}"})
            assert got.status_code == 200, got.text
        assert redemptions(w["admin"]) == [("account:s-1", v, {"store": "s-1", "amount": 500,
                                                              "ledger": got.json["ledger"]})]
    finally:
        w["admin"].close()
        w["data"].close()


# -- 5. a copied code earns nothing ----------------------------------------------------------
def test_a_code_flagged_copied_earns_nothing_and_registers_no_store(world):
    """Before, a cap inner code seen in three cities by three clients (the landing page
    answering it copied) still paid the campaign to the next signed-in scan: the
    settlement never looked at the flag. The scan that flags it, and every one after,
    answers ``copied``; nothing is claimed or charged; a code not copied is paid as before."""
    admin = world["admin"]
    admin.pools.create("p", total=10_000, who="test")
    c = admin.campaigns.create(rule(world), who="test")
    admin.rewards.refresh()
    code = cap(world, 5)
    cities = (("440106", "203.0.113.1", None), ("310101", "203.0.113.2", None), ("110101", "203.0.113.3", "u3"))
    got = [scan(world, code, actor_id=who, region=region, ip=ip) for region, ip, who in cities]
    assert [r.flags for r in got] == [(), ("diverted",), ("diverted", "copied")]
    again = scan(world, code, actor_id="u4", ip="203.0.113.4")
    for r in (got[2], again):
        assert [(x["campaign"], x["outcome"]) for x in r.rewards] == [(c.id, "copied")]
    assert world["pipe"].check(code).flags == ("copied",)
    assert admin.ledger.entries(0, 100) == []
    paid = scan(world, cap(world, 6), actor_id="u5", ip="203.0.113.5")
    assert [x["outcome"] for x in paid.rewards] == ["granted"] and len(admin.ledger.entries(0, 100)) == 1
