"""Payout idempotency keys across a restore: a key never names two different payouts.

Restored from a backup, the ledger hands out again the seqs of entries the original folder
wrote and paid after the backup. Keyed ``wuma-<seq>``, the restored folder's new payouts
reached the payment system under keys it had already paid: it answered 2xx without paying
(as receivers must, see admin/payouts.py), the beneficiaries went unpaid, and Wuma marked
them paid. The receiver here is test_payouts' real HTTP receiver, which deduplicates on
the key as a payment system does."""

from __future__ import annotations

import re

import pytest
from test_payouts import SECRET, T0, Receiver, add, key_of

from admin.service import Admin
from engine import DataFolder
from engine.store import pack, u64


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def paid_to(receiver: Receiver) -> list[str]:
    """Who the payment system paid: one payout per key it accepted."""
    return sorted(body["beneficiary"]["id"] for body in receiver.accepted.values())


def grant(data: DataFolder, admin: Admin, who: str, at: float) -> int:
    return add(data.store, admin.ledger, at=at, beneficiary={"role": "consumer", "id": who})


def test_a_restored_folders_new_payouts_are_paid_and_the_backups_paid_once(tmp_path, receiver):
    folder, backup = tmp_path / "wuma-data", tmp_path / "bk"
    with DataFolder.init(folder) as data:
        admin = Admin(data)
        grant(data, admin, "oPaidBefore", T0)
        assert admin.payouts.deliver_once(receiver.url, SECRET, now=T0)["paid"] == 1
        grant(data, admin, "oPending", T0 + 1)  # taken in, its delivery failed
        receiver.plan = ["500"]
        assert admin.payouts.deliver_once(receiver.url, SECRET, now=T0 + 1)["failed"] == 1
        grant(data, admin, "oNotTakenIn", T0 + 2)  # in the ledger, not yet in the outbox
        data.backup(backup)
        # the original goes on: it pays what the backup held, then a new reward
        assert admin.payouts.deliver_once(receiver.url, SECRET, now=T0 + 100)["paid"] == 2
        after = grant(data, admin, "oAlice", T0 + 200)
        assert admin.payouts.deliver_once(receiver.url, SECRET, now=T0 + 200)["paid"] == 1
    assert paid_to(receiver) == ["oAlice", "oNotTakenIn", "oPaidBefore", "oPending"]

    with DataFolder(backup) as data:  # the folder is lost; the backup is restored
        admin = Admin(data)
        # what the backup held unpaid is sent again: the payment system knows it by its key
        assert admin.payouts.deliver_once(receiver.url, SECRET, now=T0 + 300)["paid"] == 2
        assert paid_to(receiver) == ["oAlice", "oNotTakenIn", "oPaidBefore", "oPending"]
        # a new reward takes the seq of the original's last one: it is paid all the same
        again = grant(data, admin, "oBob", T0 + 400)
        assert again == after
        assert admin.payouts.deliver_once(receiver.url, SECRET, now=T0 + 400)["paid"] == 1
        assert admin.payouts.state(again)["state"] == "paid"
    assert paid_to(receiver) == ["oAlice", "oBob", "oNotTakenIn", "oPaidBefore", "oPending"]
    for request in receiver.requests:  # a key never named two different payouts
        assert request["body"] == receiver.accepted[request["key"]]


def test_keys_are_fixed_when_taken_in_and_older_ones_kept(tmp_path, receiver):
    """An entry's key is fixed when the outbox takes it in, and every copy carries it (an
    export names it too); a record taken in by an earlier release keeps ``wuma-<seq>``,
    the key that release sent it with, so the payment system knows its retries."""
    with DataFolder.init(tmp_path / "wuma-data") as data:
        admin = Admin(data)
        old = grant(data, admin, "oOld", T0)
        outbox, pending, meta = (data.store.db(f"adm_payouts{n}") for n in ("", "_pending", "_meta"))
        with data.store.write() as txn:  # taken in and sent once by an earlier release: no key kept
            txn.put(u64(old), pack({
                "state": "pending", "attempts": 1, "last_status": 500, "last_error": "HTTP 500",
                "next_at": T0 + 30, "leased_until": 0.0, "lease": None, "paid_at": None,
                "cancelled_at": None, "amount": 188, "unit": "cash", "maybe_delivered": True}), db=outbox)
            txn.put(u64(old), b"", db=pending)
            txn.put(b"intake", u64(old), db=meta)
        new = grant(data, admin, "oNew", T0 + 1)
        exported = tmp_path / "p.jsonl"
        admin.payouts.export(exported, "jsonl")
        assert admin.payouts.deliver_once(receiver.url, SECRET, now=T0 + 100)["paid"] == 2
        key = key_of(admin.ledger, new)
    assert re.fullmatch(rf"wuma-{new}-[0-9a-f]{{16}}", key)
    assert receiver.keys() == [f"wuma-{old}", key]
    assert [r["body"]["idempotency_key"] for r in receiver.requests] == [f"wuma-{old}", key]
    assert f'"idempotency_key": "wuma-{old}"' in exported.read_text() and key in exported.read_text()


def written_by_an_earlier_release(data: DataFolder) -> None:
    """Make ``data`` a store whose ledger entries an earlier release wrote: that release
    kept no record of the last seq it wrote (the first open of this one records it)."""
    meta = data.store.db("adm_payouts_meta")  # opened before the transaction (engine/store.py)
    with data.store.write() as txn:
        txn.delete(b"plain_keys_through", db=meta)


def plain_keys_through(data: DataFolder) -> int | None:
    meta = data.store.db("adm_payouts_meta")
    with data.store.read() as txn:
        raw = txn.get(b"plain_keys_through", db=meta)
    return None if raw is None else int.from_bytes(raw, "big")


def test_entries_written_before_the_upgrade_keep_the_key_the_earlier_release_sends(tmp_path, receiver):
    """An entry an earlier release wrote and its outbox had not taken in is sent as
    ``wuma-<seq>``, as that release would have sent it; entries after the upgrade get the
    digest key. The seq is recorded once: a later open does not move it."""
    folder = tmp_path / "wuma-data"
    with DataFolder.init(folder) as data:
        admin = Admin(data)
        assert plain_keys_through(data) == 0  # a new folder: every entry gets the new key
        old = grant(data, admin, "oOld", T0)
        written_by_an_earlier_release(data)
    with DataFolder(folder) as data:  # the upgrade's first open
        admin = Admin(data)
        assert plain_keys_through(data) == old
        new = grant(data, admin, "oNew", T0 + 1)
    with DataFolder(folder) as data:
        admin = Admin(data)
        assert plain_keys_through(data) == old
        assert admin.payouts.state(old)["idempotency_key"] == f"wuma-{old}"
        assert admin.payouts.deliver_once(receiver.url, SECRET, now=T0 + 100)["paid"] == 2
        key = key_of(admin.ledger, new)
    assert re.fullmatch(rf"wuma-{new}-[0-9a-f]{{16}}", key)
    assert receiver.keys() == [f"wuma-{old}", key]


def test_a_backup_taken_by_an_earlier_release_is_paid_once_after_a_restore(tmp_path, receiver):
    """A backup taken by an earlier release before its outbox took an entry in: the original
    folder pays it as ``wuma-<seq>``; restored under this release, the backup sends it under
    the same key (paid once), and its new entries, which take again seqs the original
    used after the backup, get new keys (paid)."""
    folder, backup = tmp_path / "wuma-data", tmp_path / "bk"
    with DataFolder.init(folder) as data:  # the earlier release writes a reward and is backed up
        admin = Admin(data)
        alice = grant(data, admin, "oAlice", T0)
        written_by_an_earlier_release(data)
        data.backup(backup)
        bob = grant(data, admin, "oBob", T0 + 1)  # after the backup, still the earlier release
        written_by_an_earlier_release(data)
    with DataFolder(folder) as data:  # the original pays both, as the earlier release does
        admin = Admin(data)
        assert admin.payouts.deliver_once(receiver.url, SECRET, now=T0 + 100)["paid"] == 2
    assert receiver.keys() == [f"wuma-{alice}", f"wuma-{bob}"]
    assert paid_to(receiver) == ["oAlice", "oBob"]

    with DataFolder(backup) as data:  # the folder is lost; the backup is restored
        admin = Admin(data)
        assert plain_keys_through(data) == alice
        carol = grant(data, admin, "oCarol", T0 + 300)
        assert carol == bob  # the seq the original used after the backup
        assert admin.payouts.deliver_once(receiver.url, SECRET, now=T0 + 300)["paid"] == 2
        key = key_of(admin.ledger, carol)
    assert receiver.keys() == [f"wuma-{alice}", f"wuma-{bob}", f"wuma-{alice}", key]
    assert paid_to(receiver) == ["oAlice", "oBob", "oCarol"]  # oAlice once
    for request in receiver.requests:  # a key never named two different payouts
        assert request["body"] == receiver.accepted[request["key"]]
