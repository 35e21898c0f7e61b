"""Accounts: tokens shown once and stored hashed, revocation, validation."""

import pytest

from engine import Conflict, NotFound
from engine.accounts import AccountRegistry
from engine.store import Store


@pytest.fixture
def accounts(tmp_path):
    store = Store(tmp_path / "db")
    yield AccountRegistry(store), tmp_path
    store.close()


def test_token_authenticates_and_is_stored_hashed(accounts):
    reg, path = accounts
    dist, _ = reg.add("gz-dist_1", "distributor", name="Guangzhou Trading", region="4401")
    store, token = reg.add("store_7", "store", region="440106", distributor="gz-dist_1")
    assert reg.authenticate(token).id == "store_7"
    assert store.distributor == dist.id
    assert token.encode() not in (path / "db" / "data.mdb").read_bytes()
    assert token.split("_")[-1].encode() not in (path / "db" / "data.mdb").read_bytes()


def test_wrong_revoked_and_malformed_tokens(accounts):
    reg, _ = accounts
    _, token = reg.add("rep-1", "sales_rep")
    for bad in (token[:-1] + ("0" if token[-1] != "0" else "1"), "wm_rep-1_", "", None, 7,
                "Bearer " + token, "wm_nobody_" + "0" * 64, "x" * 10_000):
        assert reg.authenticate(bad) is None
    reg.revoke("rep-1")
    assert reg.authenticate(token) is None
    assert not reg.get("rep-1").active


def test_validation_and_conflicts(accounts):
    reg, _ = accounts
    reg.add("a1", "shop_assistant")
    with pytest.raises(Conflict):
        reg.add("a1", "store")
    with pytest.raises(ValueError, match="role"):
        reg.add("c1", "consumer")
    for region in ("Guangzhou", "4401\n", "\u0664\u0664\u0660\u0661"):
        with pytest.raises(ValueError, match="region"):
            reg.add("s1", "store", region=region)
    with pytest.raises(NotFound, match="distributor"):
        reg.add("s2", "store", distributor="a1")
    for account_id in ("bad id", "s-1\n"):
        with pytest.raises(ValueError, match="account id"):
            reg.add(account_id, "store")
    for name in ("Shop\x1b[2J", "Shop\nline", "\u202eShop"):  # printed in `account list`
        with pytest.raises(ValueError, match="account name: no control characters"):
            reg.add("s3", "store", name=name)
    with pytest.raises(ValueError, match="account name: at most 200 characters"):
        reg.add("s3", "store", name="便" * 201)  # a pasted document is no name
    reg.add("s3", "store", name="天河便利店 No.7")
    assert [a.id for a in reg.list("shop_assistant")] == ["a1"]
    with pytest.raises(NotFound):
        reg.revoke("zz")


def test_a_new_token_replaces_the_old_one(accounts):
    """A token lost, leaked, or never seen (an add whose output was lost: adding the id
    again is refused) is replaced; the old one stops working at once; a revoked account
    gets none."""
    reg, path = accounts
    _, old = reg.add("store_9", "store", region="440106")
    with pytest.raises(Conflict):
        reg.add("store_9", "store")
    account, new = reg.reissue("store_9")
    assert account.id == "store_9" and new != old
    assert reg.authenticate(old) is None and reg.authenticate(new).id == "store_9"
    assert new.split("_")[-1].encode() not in (path / "db" / "data.mdb").read_bytes()
    for nobody in ("nobody", "", "x" * 600):  # "" and 600 bytes: no LMDB key, still NotFound
        for call in (reg.reissue, reg.revoke, reg.get):
            with pytest.raises(NotFound):
                call(nobody)
    reg.revoke("store_9")
    with pytest.raises(Conflict, match="revoked"):
        reg.reissue("store_9")
    assert reg.authenticate(new) is None


def test_active_in_reads_the_callers_transaction(accounts):
    """A revocation counts at once in a transaction begun after it; an id not on record, or
    one that cannot be an account id (no LMDB key), is not active: False, never an error."""
    reg, _ = accounts
    reg.add("store_5", "store")
    store = reg._store
    with store.read() as txn:
        assert reg.active_in(txn, "store_5")
        for nobody in ("nobody", "", "x" * 600, "s\0x", None):
            assert not reg.active_in(txn, nobody)
    reg.revoke("store_5")
    with store.read() as txn:
        assert not reg.active_in(txn, "store_5")
