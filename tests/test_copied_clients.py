"""The copied flag needs two clients: device ids and regions are whatever a front end
sends, so one client alone (one address; an IPv6 one by its /64) never makes a genuine
code copied. Before, one client scanning a cap's outer code (printed where anyone can read
it) with five made-up device ids, or from three made-up regions, branded it copied for
good: the landing page then answered ``["copied"]`` to everyone."""

from __future__ import annotations

import pytest
from conftest_world import Clock, build_world
from falcon import testing

from engine.http_scan import UNIX_PEER, create_app
from engine.scan import ScanPipeline, ScanRequest
from engine.scanlog import CLIENTS_KEPT, ScanLog, _copied, _record_key
from engine.store import Store, pack, unpack

AT = (3, 5, 7 * 86400.0)  # the defaults: 3 places or 5 devices within 7 days
DEVICES = [f"fake-{i}" for i in range(5)]
REGIONS = ["440106", "110101", "310101"]


@pytest.fixture
def log(tmp_path):
    store = Store(tmp_path / "db")
    scans = ScanLog(store)
    yield scans
    scans.close()
    store.close()


def _scan(log, unit, t, ip, device=None, region=None):
    event = {"at": t, "device": device, "region": region, "ip": ip}
    return log.record(unit, 4, event, copy_at=AT)


def _raw(log, unit):
    with log._store.read() as txn:
        return unpack(txn.get(_record_key(unit, 4), db=log._store.db("scan_records")))


def test_one_client_alone_never_makes_a_code_copied(log):
    """Five devices, or three places, from one address: not copied, nor kept so; the same
    scans from a second address (at the thresholds) are."""
    one = "203.0.113.5"
    assert [_scan(log, 1, 100.0 + i, one, device=d).copied
            for i, d in enumerate(DEVICES)] == [False] * 5
    assert [_scan(log, 2, 100.0 + i, one, region=r).copied
            for i, r in enumerate(REGIONS)] == [False] * 3
    assert not log.get(1, 4, AT).ever_copied and not log.get(2, 4, AT).ever_copied
    assert "copied" not in str([e.get("flags") for e in log.events()])
    # the fifth device, the third place, from another client: copied
    assert [_scan(log, 3, 100.0 + i, one, device=d).copied
            for i, d in enumerate(DEVICES[:4])] == [False] * 4
    assert _scan(log, 3, 110.0, "198.51.100.9", device=DEVICES[4]).copied
    ips = [one, one, "198.51.100.9"]
    assert [_scan(log, 4, 100.0 + i, ip, region=r).copied
            for i, (ip, r) in enumerate(zip(ips, REGIONS))] == [False, False, True]
    assert log.get(3, 4).ever_copied and log.get(4, 4).ever_copied
    # a second client's scan below the thresholds is not enough
    assert not _scan(log, 5, 100.0, "203.0.113.5", device="a").copied
    assert not _scan(log, 5, 101.0, "198.51.100.9", device="b").copied


def test_an_ipv6_client_counts_by_its_64(log):
    """A subscriber holds a whole /64: its addresses are one client, whether the HTTP layer
    counted it already (``2001:db8:1:2::/64``) or a library caller sent the address."""
    ips = ["2001:db8:1:2::1", "2001:db8:1:2::ffff", "2001:db8:1:2::/64", "2001:db8:1:2:aaaa::5",
           "2001:db8:1:2::9"]
    assert [_scan(log, 1, 100.0 + i, ip, device=d).copied
            for i, (ip, d) in enumerate(zip(ips, DEVICES))] == [False] * 5
    assert _raw(log, 1)[11] == ["2001:db8:1:2::/64"]
    assert _scan(log, 1, 110.0, "2001:db8:1:3::1", device="another").copied  # another /64


def test_only_the_clients_within_the_window_count(log):
    """A client seen eight days ago is not a second client of this week's scans."""
    assert not _scan(log, 1, 100.0, "198.51.100.9", device="old").copied
    t = 100.0 + 8 * 86400
    assert [_scan(log, 1, t + i, "203.0.113.5", device=d).copied
            for i, d in enumerate(DEVICES)] == [False] * 5
    assert _scan(log, 1, t + 10, "198.51.100.9", device="old").copied  # seen again: in the window


def test_without_addresses_the_code_is_judged_as_before(log):
    """Scans with no known client (a library caller's, the unix-socket peer's) are one
    client that may be anyone: alone, or beside one known client, the window is judged by
    places and devices alone; only scans all from one known client are not copied."""
    for ip in (None, UNIX_PEER):
        unit = 1 if ip is None else 2
        assert [_scan(log, unit, 100.0 + i, ip, device=d).copied
                for i, d in enumerate(DEVICES)] == [False] * 4 + [True]
        assert _raw(log, unit)[11] == [""]
    assert [_scan(log, 3, 100.0 + i, None if i < 4 else "203.0.113.5", device=d).copied
            for i, d in enumerate(DEVICES)] == [False] * 4 + [True]
    assert [_scan(log, 4, 100.0 + i, "203.0.113.5", device=d).copied
            for i, d in enumerate(DEVICES)] == [False] * 5


def test_the_two_clients_seen_last_are_kept_which_the_rule_needs(log):
    """Two distinct clients within the window is all the rule asks, and the two seen last
    tell it: a record keeps those two, each with when it was last seen (the one seen
    longest ago is given up), however many addresses scan a busy code."""
    for i in range(CLIENTS_KEPT + 3):
        _scan(log, 1, 100.0 + i, f"198.51.100.{i}", device="d")
    _scan(log, 1, 200.0, "198.51.100.3", device="d")
    rec = _raw(log, 1)
    assert len(rec) == 13 and dict(zip(rec[11], rec[12])) == {"198.51.100.3": 200.0, "198.51.100.4": 104.0}
    # within a window of 50 s at 210 only one of them: one client, not copied
    assert not _copied(rec, 210.0, (1, 1, 50.0)) and _copied(rec, 210.0, (1, 1, 200.0))


def _put(log, unit, rec):
    with log._store.write() as txn:
        txn.put(_record_key(unit, 4), pack(rec), db=log._store.db("scan_records"))


def test_a_record_of_the_release_before_reads_and_upgrades(log):
    """A record without clients (11 fields, or 12 pending a judgment) reads as it did and
    gains the clients at its next scan; its scans had no known address: judged as before
    until its window holds one, and then by two clients."""
    old = [4, 100.0, "440106", "d0", 103.0, "440106", ["440106"], ["d0", "d1", "d2", "d3"],
           [103.0], [100.0, 101.0, 102.0, 103.0], False]
    _put(log, 1, old)
    got = log.get(1, 4, AT)
    assert (got.count, got.devices, got.ever_copied) == (4, 4, False)
    assert _scan(log, 1, 104.0, None, device="d4").copied  # no address in the window: as before
    assert _raw(log, 1)[11:] == [[""], [104.0]]
    # NOTE: its scans before came from no known client: with one new client, two (a review
    # found one new address took the old scans for its own, and the code went unflagged)
    _put(log, 2, old)
    assert _scan(log, 2, 104.0, "203.0.113.5", device="d4").copied
    assert dict(zip(*_raw(log, 2)[11:])) == {"": 103.0, "203.0.113.5": 104.0}
    _put(log, 6, [*old[:4], 103.0 - 8 * 86400, *old[5:]])  # its scans a week before and more
    assert not _scan(log, 6, 104.0, "203.0.113.5", device="d4").copied  # one client this week
    # the bit kept by the release before stays
    _put(log, 3, old[:10] + [True])
    assert log.get(3, 4).ever_copied and _scan(log, 3, 104.0, "203.0.113.5").ever_copied
    # pending (12 fields: the record before the bit last), seen in three places
    before = [3, 100.0, "4401", "d1", 102.0, "1101", ["4401", "4403", "1101"], ["d1"],
              [100.0, 101.0, 102.0], [102.0]]
    _put(log, 4, [4, *before[1:10], False, before])
    assert not log.get(4, 4).ever_copied and log.get(4, 4, AT).ever_copied
    assert _scan(log, 4, 9e9, "203.0.113.5", region="3301").ever_copied
    assert len(_raw(log, 4)) == 13
    # a scan without thresholds (not genuine) writes it pending in this layout: 14 fields
    _put(log, 5, [4, *before[1:10], False, before])
    log.record(5, 4, {"at": 9e9, "ip": "203.0.113.5"})
    assert len(_raw(log, 5)) == 14 and _raw(log, 5)[11] == ["", "203.0.113.5"]
    assert log.get(5, 4, AT).ever_copied and len(_raw(log, 5)) == 14  # a read writes nothing
    assert _scan(log, 5, 9e9 + 1, "203.0.113.5").ever_copied and len(_raw(log, 5)) == 13


@pytest.fixture
def world(tmp_path):
    w = build_world(tmp_path / "wuma-data")
    w["pipe"] = ScanPipeline(w["data"].codes, w["agg"], ScanLog(w["data"].store), w["data"].abuse,
                             w["data"].accounts, clock=Clock())
    yield w
    w["pipe"].scans.close()
    w["data"].close()


def test_the_landing_page_agrees(world):
    """The pipeline's scans and its check: one client forcing devices or regions on a
    cap's outer code leaves it unflagged; a second client at the thresholds flags it."""
    pipe, code = world["pipe"], world["data"].codes.code
    outer, inner = code(world["caps"], 10, "cap_outer"), code(world["caps"], 11, "cap_inner")
    for d in DEVICES:
        assert "copied" not in pipe.scan(ScanRequest(outer, device=d, ip="203.0.113.5")).flags
    for r in REGIONS:
        assert "copied" not in pipe.scan(ScanRequest(inner, region=r, ip="203.0.113.5")).flags
    assert pipe.check(outer).flags == () and pipe.check(inner).flags == ()
    assert "copied" in pipe.scan(ScanRequest(outer, device="real", ip="198.51.100.9")).flags
    assert "copied" in pipe.scan(ScanRequest(inner, region="320102", ip="198.51.100.9")).flags
    assert pipe.check(outer).flags == ("copied",) and pipe.check(inner).flags == ("copied",)


def test_over_http_the_connection_is_the_client(tmp_path):
    """The reviewer's reproduction through the scan API: one connection address (an IPv6
    one by its /64) cannot brand a code copied; a second address can."""
    w = build_world(tmp_path / "wuma-data")
    try:
        client = testing.TestClient(create_app(w["data"]))
        code = w["data"].codes.code(w["caps"], 12, "cap_outer")
        for i, d in enumerate(DEVICES):
            got = client.simulate_post("/v1/scans", json={"code": code, "device": d},
                                       remote_addr=f"2001:db8:7:7::{i + 1}")
            assert got.status_code == 200 and "copied" not in got.json["flags"]
        assert client.simulate_get(f"/v1/codes/{code}").json["flags"] == []
        got = client.simulate_post("/v1/scans", json={"code": code, "device": "real"},
                                   remote_addr="198.51.100.9")
        assert "copied" in got.json["flags"]
        assert client.simulate_get(f"/v1/codes/{code}").json["flags"] == ["copied"]
    finally:
        w["data"].close()
