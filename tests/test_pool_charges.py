"""Several charges to one pool inside one settlement: caps hold for their sum, the spend
is written once and exactly, and a top-up by another process is seen at once."""

import pytest

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
