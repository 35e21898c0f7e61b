"""A pack registered by an earlier release keeps no ``downloaded_at`` or ``opened_at``: they
are derived from its events once, not at every cut download and open report."""

from __future__ import annotations

import time

import test_packs
from test_packs_signers import _receipt

import engine.packs as P

world = test_packs.world


def _as_an_earlier_release_left_it(reg, pack_id: str) -> None:
    with reg._store.write() as txn:
        rec = reg._get_raw(txn, pack_id)
        del rec["downloaded_at"], rec["opened_at"]
        reg._put(txn, rec)


def _reading_events(monkeypatch) -> list[dict]:
    """The pack events the registry reads from now on."""
    read = []
    real = P.unpack

    def unpack(raw):
        got = real(raw)
        if isinstance(got, dict) and "kind" in got and "pack" in got:
            read.append(got)
        return got

    monkeypatch.setattr(P, "unpack", unpack)
    return read


def test_an_earlier_releases_pack_has_its_events_read_once(world, monkeypatch):
    """Before, a pack of an earlier release never downloaded whole had every pack event read
    at each cut download and each open report, for as long as it was not downloaded whole."""
    reg, keys, _brand, _batch, _tmp = world
    old, other = test_packs._export(world, stop=600, parts=2)
    now = time.time()
    for i in range(5):  # events of another pack, read with this one's
        reg.record_download(other.id, "L1", "127.0.0.1", now=now - 9000 + i)
    _as_an_earlier_release_left_it(reg, old.id)
    read = _reading_events(monkeypatch)
    reg.record_download(old.id, "L1", "127.0.0.1", sent=10, now=now - 8000)
    assert len(read) == 2 + 5  # the issued events, the other pack's downloads
    read.clear()
    for i in range(3):  # cut off again and again: nothing more is read
        reg.record_download(old.id, "L1", "127.0.0.1", sent=10, now=now - 7000 + i)
    got = reg.record_open(_receipt(keys, old, 300, now - 6000))  # and an open report
    assert read == [] and reg.get(old.id)["history_read"] is True
    # what is derived is as before: never downloaded whole, the earlier release's rule
    assert got["already_recorded"] is False and got["opened_at"] == now - 6000
    rec = reg.get(old.id)
    assert "downloaded_at" not in rec and rec["opened_at"] == now - 6000
    reg.record_download(old.id, "L1", "127.0.0.1", now=now - 100)  # whole, at last
    assert reg.get(old.id)["downloaded_at"] == now - 100 and read == []


def test_an_earlier_releases_pack_downloaded_and_opened_keeps_both_from_its_events(world, monkeypatch):
    reg, keys, _brand, _batch, _tmp = world
    (old,) = test_packs._export(world, stop=300)
    now = time.time()
    reg.record_download(old.id, "L1", "127.0.0.1", now=now - 7200)
    reg.record_open(_receipt(keys, old, 300, now - 7000))
    _as_an_earlier_release_left_it(reg, old.id)
    read = _reading_events(monkeypatch)
    assert reg.record_open(_receipt(keys, old, 300, now - 100))["already_recorded"] is True
    assert len(read) == 3  # issued, download, opened: once
    read.clear()
    reg.record_download(old.id, "L1", "127.0.0.1", sent=10, now=now)
    rec = reg.get(old.id)
    assert (rec["downloaded_at"], rec["opened_at"], read) == (now - 7200, now - 7000, [])


def test_a_pack_of_this_release_reads_no_events_to_record_a_download_or_an_open(world, monkeypatch):
    reg, keys, _brand, _batch, _tmp = world
    (p,) = test_packs._export(world, stop=300)
    read = _reading_events(monkeypatch)
    now = time.time()
    reg.record_download(p.id, "L1", "127.0.0.1", sent=10, now=now - 60)
    reg.record_download(p.id, "L1", "127.0.0.1", now=now - 50)
    reg.record_open(_receipt(keys, p, 300, now - 40))
    assert read == [] and "history_read" not in reg.get(p.id)

