"""Several charges to one pool inside one settlement: caps hold for their sum, the spend
is written once and exactly, and a top-up by another process is seen at once."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admin.audit import AuditLog
from admin.pools import PoolRegistry
from engine.store import Store

T = 1_800_000_000.0  # 2027-01-15, China time


@pytest.fixture
def stores(tmp_path):
    store = Store(tmp_path / "db")
    yield store, PoolRegistry(store, AuditLog(store))
    store.close()


def test_charges_share_caps_and_write_once(stores):
    store, pools = stores
    pools.create("p", total=150, daily=140, regions={"44": 120}, who="t")
    with store.write() as txn:
        c = pools.charges(txn)
        assert c.charge("p", 100, "440106", T)  # the reward
        assert not c.charge("p", 30, "440106", T)  # a rebate over the region cap (130 > 120)
        assert c.charge("p", 20, "440106", T)  # a smaller one fits (120)
        assert not c.charge("p", 10, "330106", T)  # outside the pool's regions
        assert pools.status("p", now=T)["spent"] == 0  # nothing written before flush
        c.flush()
    st = pools.status("p", now=T)
    assert (st["spent"], st["spent_today"], st["by_region"]) == (120, 120, {"44": 120})
    with store.write() as txn:
        assert not pools.charge(txn, "p", 1, "440106", T)  # region cap reached across settlements


def test_top_up_by_another_registry_is_seen(stores, tmp_path):
    store, pools = stores
    pools.create("p", total=100, who="t")
    with store.write() as txn:
        assert pools.charge(txn, "p", 100, None, T)
        assert not pools.charge(txn, "p", 1, None, T)
    other = PoolRegistry(store, AuditLog(store))  # as another worker would
    other.top_up("p", 50, who="t")
    with store.write() as txn:
        assert pools.charge(txn, "p", 50, None, T)
        assert not pools.charge(txn, "p", 1, None, T)
    assert pools.status("p", now=T)["left"] == 0


DAY = 86400.0


def test_days_roll_over_and_late_scans_count_on_their_own_day(stores):
    store, pools = stores
    pools.create("p", total=1_000, daily=100, who="t")
    with store.write() as txn:
        assert pools.charge(txn, "p", 100, None, T)
        assert not pools.charge(txn, "p", 1, None, T)  # the daily cap
        assert pools.charge(txn, "p", 60, None, T + DAY)  # a new day
        assert not pools.charge(txn, "p", 1, None, T + 60)  # late, dated to the full day
    with store.write() as txn:
        assert pools.charge(txn, "p", 40, None, T + DAY)
        pools.refund(txn, "p", 30, None, T)  # a reversal of yesterday's reward
        assert pools.charge(txn, "p", 30, None, T + 120)  # late, and yesterday has room again
    st = pools.status("p", now=T + DAY)
    assert (st["spent"], st["spent_today"]) == (200, 100)
    assert st["by_day"] == {"2027-01-15": 100, "2027-01-16": 100}


def test_spend_of_the_first_layout_is_carried_on(stores):
    """Pools charged before the running ``spend`` state kept ``total`` and ``d:`` keys."""
    store, pools = stores
    pools.create("p", total=1_000, daily=100, who="t")
    db = store.db("adm_pool_spend")
    with store.write() as txn:
        txn.put(b"p\0total", (500).to_bytes(8, "big"), db=db)
        txn.put(b"p\0d:2027-01-14", (420).to_bytes(8, "big"), db=db)
        txn.put(b"p\0d:2027-01-15", (80).to_bytes(8, "big"), db=db)
    assert pools.status("p", now=T)["spent"] == 500
    with store.write() as txn:
        assert not pools.charge(txn, "p", 30, None, T)  # 80 already spent today
        assert pools.charge(txn, "p", 20, None, T)
    st = pools.status("p", now=T)
    assert (st["spent"], st["spent_today"], st["by_day"]) == (520, 100, {"2027-01-14": 420, "2027-01-15": 100})


_op = st.tuples(st.sampled_from(["charge", "refund"]), st.integers(1, 60), st.integers(0, 3),
                st.sampled_from(["440106", "440300", "330106", None]))


@settings(max_examples=60, deadline=None)
@given(settlements=st.lists(st.lists(_op, min_size=1, max_size=4), min_size=1, max_size=12))
def test_spend_matches_a_model_of_the_caps(tmp_path_factory, settlements):
    """Any sequence of settlements (charges and refunds over four days, in and out of
    order) leaves exactly the spend a plain model of the caps computes."""
    store = Store(tmp_path_factory.mktemp("db"))
    pools = PoolRegistry(store, AuditLog(store))
    pools.create("p", total=400, daily=150, regions={"44": 250, "4403": 90}, who="t")
    total, days, regions = 0, {}, {}
    charged: list[tuple[int, int, str]] = []
    for ops in settlements:
        with store.write() as txn:
            c = pools.charges(txn)
            for kind, amount, day, region in ops:
                prefix = None if region is None else ("4403" if region.startswith("4403") else
                                                      "44" if region.startswith("44") else None)
                if kind == "refund":
                    if charged:
                        amount, day, prefix = charged.pop()
                        c.refund("p", amount, {"4403": "440300", "44": "440106"}[prefix], T + day * DAY)
                        total -= amount
                        days[day] -= amount
                        regions[prefix] -= amount
                    continue
                fits = (prefix is not None and total + amount <= 400 and days.get(day, 0) + amount <= 150
                        and regions.get(prefix, 0) + amount <= {"44": 250, "4403": 90}[prefix])
                assert c.charge("p", amount, region, T + day * DAY) == fits
                if fits:
                    total += amount
                    days[day] = days.get(day, 0) + amount
                    regions[prefix] = regions.get(prefix, 0) + amount
                    charged.append((amount, day, prefix))
            c.flush()
        got = pools.status("p", now=T)
        assert got["spent"] == total
        assert {d: v for d, v in got["by_day"].items() if v} == {
            f"2027-01-{15 + d}": v for d, v in sorted(days.items()) if v}
        assert {r: v for r, v in got["by_region"].items() if v} == {r: v for r, v in regions.items() if v}
    store.close()
