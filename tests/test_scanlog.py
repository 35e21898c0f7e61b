"""Scan records: exact counts under concurrency, first/last scan, durability under kill -9."""

import fcntl
import math
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import DataFolder
from engine.scanlog import TURN_FILE, ScanLog
from engine.store import Store, pack

ROOT = Path(__file__).resolve().parent.parent


def test_first_and_repeat_scans(tmp_path):
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    r1 = log.record(7, 4, {"at": 100.0, "region": "4401", "device": "d1"})
    r2 = log.record(7, 4, {"at": 200.0, "region": "3301", "device": "d2"})
    assert (r1.count, r2.count) == (1, 2)
    assert (r2.first_at, r2.first_region, r2.first_device) == (100.0, "4401", "d1")
    assert (r2.last_at, r2.last_region) == (200.0, "3301")
    assert log.record(7, 3, {"at": 300.0}).count == 1  # the other role of the unit: its own record
    assert log.get(7, 4).count == 2 and log.get(8, 4) is None
    assert [e["seq"] for e in log.events()] == [1, 2, 3]
    log.close()
    store.close()


def test_first_and_last_scan_go_by_time_not_by_commit_order(tmp_path):
    """A scan can commit after a later one (waiting for the commit turn, a slow fsync)."""
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    log.record(7, 4, {"at": 200.0, "region": "3301", "device": "d2"})
    late = log.record(7, 4, {"at": 100.0, "region": "4401", "device": "d1"})
    assert (late.first_at, late.first_region, late.first_device) == (100.0, "4401", "d1")
    assert (late.last_at, late.last_region, late.count) == (200.0, "3301", 2)
    log.close()
    store.close()


def test_copied_counts_places_and_devices_within_the_window_only(tmp_path):
    day = 86400.0
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    at = (3, 5, 7 * day)  # 3 regions or 5 devices within a week

    def scan(t, region, device):
        return log.record(7, 4, {"at": t, "region": region, "device": device}, copy_at=at).copied

    # three districts a month apart: one bottle moving with its owner, not a copied label
    assert [scan(i * 30 * day, r, "phone") for i, r in enumerate(["440101", "440103", "440106"])] == [False] * 3
    assert not scan(365 * day, "440101", "phone")
    # then within a week: copied; and no longer once those scans are over a week old
    assert [scan(400 * day + i, r, f"d{i}") for i, r in enumerate(["310101", "310104", "310105"])] == [
        False, False, True]
    assert not scan(420 * day, "310101", "d0")
    # ever: an endless window
    assert log.record(8, 4, {"at": 1.0, "region": "440101"}, copy_at=(1, 5, math.inf)).copied
    log.close()
    store.close()


@pytest.mark.parametrize("regions", [
    ["440106", "440106001", "440106", "440100"],  # one district, one of its towns, its city
    ["44", "4401", "440106"],  # province, city, district
    ["440000", "440100", "440106", "440106001", "440106001001"],  # down to a village
])
def test_one_place_at_different_precision_is_not_copied(tmp_path, regions):
    """Nested division codes are one place: one phone scanning one bottle in Tianhe, its
    region sent at whatever precision the front end had, is no copied label."""
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    at = (3, 5, 86400.0)
    flags = [log.record(7, 4, {"at": 100.0 + i, "region": r, "device": "phone"}, copy_at=at).copied
             for i, r in enumerate(regions)]
    assert flags == [False] * len(regions)
    log.close()
    store.close()


def test_distinct_places_are_counted_whatever_their_precision(tmp_path):
    store = Store(tmp_path / "db")
    log = ScanLog(store)

    def scan(unit, t, region):
        event = {"at": t, "region": region, "device": "phone"}
        return log.record(unit, 4, event, copy_at=(3, 5, 86400.0)).copied

    # Guangzhou, Shenzhen, Beijing
    assert [scan(7, 100.0 + i, r) for i, r in enumerate(["440100", "440300", "110101"])] == [False, False, True]
    # Tianhe and Liwan are two places; Guangdong and Guangzhou, holding both, add none; a
    # third district is the third place
    assert [scan(8, 100.0 + i, r) for i, r in enumerate(["440106", "440103", "44", "440100", "440104"])] == [
        False, False, False, False, True]
    # a coarse region seen first is no place once a finer one inside it is seen, and the
    # finer one outside it still counts
    assert [scan(9, 100.0 + i, r) for i, r in enumerate(["4401", "440106", "330106", "3301"])] == [
        False, False, False, False]
    assert scan(9, 200.0, "110101")
    log.close()
    store.close()


def test_a_code_flagged_copied_stays_so_in_its_record(tmp_path):
    """The record keeps that a scan of the code was flagged copied (ever_copied), for the
    read-only check, though a scan's own flag looks at its window only."""
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    at = (3, 5, 3600.0)
    assert log.get(7, 4, at) is None
    log.record(7, 4, {"at": 100.0, "region": "4401"}, copy_at=at)
    assert log.get(7, 4, at).ever_copied is False
    log.record(7, 4, {"at": 101.0, "region": "4403"}, copy_at=at)
    third = log.record(7, 4, {"at": 102.0, "region": "1101"}, copy_at=at)
    assert third.copied and third.ever_copied
    later = log.record(7, 4, {"at": 10_000.0, "region": "4401"}, copy_at=at)  # out of the window
    assert not later.copied and later.ever_copied
    # read from the record, not judged again: the window ending at the latest scan holds one
    # place, and a read without thresholds judges nothing
    assert log.get(7, 4, at).ever_copied and log.get(7, 4).ever_copied
    assert ["copied" in e.get("flags", ()) for e in log.events()] == [False, False, True, False]
    assert not log.record(8, 4, {"at": 1.0}, copy_at=at).ever_copied
    assert not log.get(8, 4, at).ever_copied
    log.close()
    store.close()


def test_a_record_from_before_the_copied_bit_is_read(tmp_path):
    """A record of the layout before (10 fields) says copied if its latest scan was, by
    the thresholds given; written again, it keeps that."""
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    at = (3, 5, 3600.0)
    _old_records(store)
    assert log.get(7, 4, at).ever_copied and log.get(7, 4, at).count == 3
    assert not log.get(8, 4, at).ever_copied
    assert not log.get(7, 4).ever_copied  # no thresholds: not judged
    later = log.record(7, 4, {"at": 10_000.0, "region": "4401"}, copy_at=at)
    assert (later.count, later.copied, later.ever_copied) == (4, False, True)
    assert log.get(7, 4).ever_copied
    log.close()
    store.close()


def _old_records(store):
    """Two records of the layout before the copied bit: unit 7 seen in three places within
    the hour up to its latest scan (copied, by 3 places in an hour), unit 8 in two."""
    from engine.scanlog import _record_key

    with store.write() as txn:
        records = store.db("scan_records")
        txn.put(_record_key(7, 4), pack([3, 100.0, "4401", "d1", 102.0, "1101", ["4401", "4403", "1101"],
                                         ["d1"], [100.0, 101.0, 102.0], [102.0]]), db=records)
        txn.put(_record_key(8, 4), pack([2, 100.0, "4401", "d1", 101.0, "4403", ["4401", "4403"],
                                         ["d1"], [100.0, 101.0], [101.0]]), db=records)


def test_a_record_from_before_the_copied_bit_is_not_judged_without_thresholds(tmp_path):
    """A scan without thresholds (not genuine) of a record from before the copied bit
    writes no judgment: a later read or scan with thresholds judges it as before, in the
    window ending at its latest scan before the bit; scans since then (not genuine) are
    never flagged, so they make no copy either."""
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    at = (3, 5, 3600.0)
    _old_records(store)
    assert log.get(7, 4, at).ever_copied
    scanned = log.record(7, 4, {"at": 10_000.0, "region": "4401", "device": "d9"})
    assert (scanned.count, scanned.copied) == (4, False)
    assert log.get(7, 4, at).ever_copied and log.get(7, 4, at).count == 4
    assert not log.get(7, 4).ever_copied  # no thresholds: still not judged
    log.record(7, 4, {"at": 20_000.0, "region": "3301"})
    assert log.get(7, 4, at).ever_copied and log.get(7, 4, at).last_region == "3301"
    # its first genuine scan (out of the window: not copied itself) keeps the judgment
    later = log.record(7, 4, {"at": 30_000.0, "region": "4401"}, copy_at=at)
    assert (later.count, later.copied, later.ever_copied) == (6, False, True)
    assert log.get(7, 4).ever_copied
    # two places before the bit and a third since, not genuine: not copied, now kept so
    log.record(8, 4, {"at": 102.0, "region": "1101"})
    assert not log.get(8, 4, at).ever_copied
    assert not log.record(8, 4, {"at": 10_000.0, "region": "4401"}, copy_at=at).ever_copied
    assert not log.get(8, 4, (2, 5, 3600.0)).ever_copied  # judged once, not with new thresholds
    log.close()
    store.close()


def test_a_record_from_before_last_seen_times_and_the_bit_waits_for_thresholds(tmp_path):
    from engine.scanlog import _record_key

    store = Store(tmp_path / "db")
    log = ScanLog(store)
    with store.write() as txn:  # no last-seen times: seen at the first scan
        txn.put(_record_key(7, 4), pack([3, 100.0, "4401", "d1", 150.0, "4403", ["4401", "4402", "4403"],
                                         ["d1"]]), db=store.db("scan_records"))
    log.record(7, 4, {"at": 9_000.0, "device": "d2"})
    assert not log.get(7, 4).ever_copied
    assert log.get(7, 4, (3, 5, 3600.0)).ever_copied
    assert not log.get(7, 4, (3, 5, 10.0)).ever_copied  # first seen 100 s, last 150 s
    log.close()
    store.close()


def test_a_record_from_before_last_seen_times_is_read_and_kept(tmp_path):
    from engine.scanlog import _record_key
    from engine.store import pack

    store = Store(tmp_path / "db")
    log = ScanLog(store)
    with store.write() as txn:  # the layout before: no last-seen times
        txn.put(_record_key(7, 4), pack([2, 100.0, "4401", "d1", 150.0, "4402", ["4401", "4402"], ["d1"]]),
                db=store.db("scan_records"))
    r = log.record(7, 4, {"at": 200.0, "region": "4403", "device": "d2"}, copy_at=(3, 5, 1e9))
    assert (r.count, r.first_at, r.regions, r.devices, r.copied) == (3, 100.0, ("4401", "4402", "4403"), 2, True)
    log.close()
    store.close()


def test_an_event_is_never_dropped_when_the_counter_is_behind(tmp_path):
    """Events are appended in sequence order; if the sequence counter were ever behind the
    log (a bad restore), the scan fails loudly and nothing of it is written."""
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    log.record(7, 4, {"at": 100.0})
    log.record(7, 4, {"at": 101.0})
    with store.write() as txn:
        store.set_id(txn, "scan_event", 1)
    with pytest.raises(RuntimeError, match="not after the last one"):
        log.record(7, 4, {"at": 102.0})
    assert log.get(7, 4).count == 2 and [e["at"] for e in log.events()] == [100.0, 101.0]
    log.close()
    store.close()


def _hold_turn(store: Store, wait: bool = True) -> int:
    """Take the scan commit turn as another process would (its own open file).

    NOTE: ``wait``: a committer answers its scans just before it gives the turn back."""
    fd = os.open(store.path / TURN_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        raise
    return fd


def test_scans_wait_for_the_commit_turn_and_then_share_one_commit(tmp_path):
    """While another process has the turn to commit scans, nothing is acknowledged; the
    scans that queued meanwhile are then committed together, in one transaction."""
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    queued = []

    class Queue(queue.SimpleQueue):  # NOTE: counts the scans handed to the committer
        def put(self, item):
            super().put(item)
            queued.append(item)

    log._queue = Queue()
    log.record(1, 0, {"at": 1.0})
    held = _hold_turn(store)
    before = store.env.info()["last_txnid"]
    done: list = []
    threads = [threading.Thread(target=lambda u=u: done.append(log.record(u, 0, {"at": 2.0})))
               for u in range(2, 7)]
    for t in threads:
        t.start()
    deadline = time.time() + 10  # the first scan and these 5 handed over: the committer waits for the turn
    while len(queued) < 6 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert done == [] and store.env.info()["last_txnid"] == before
    fcntl.flock(held, fcntl.LOCK_UN)
    for t in threads:
        t.join(10)
    assert sorted(r.seq for r in done) == [2, 3, 4, 5, 6]
    assert store.env.info()["last_txnid"] == before + 1
    os.close(held)
    log.close()
    store.close()


def test_a_failed_commit_gives_the_turn_back(tmp_path, monkeypatch):
    store = Store(tmp_path / "db")
    log = ScanLog(store)

    def full(group):
        raise OSError("No space left on device")

    monkeypatch.setattr(log, "_write_group", full)
    with pytest.raises(OSError, match="No space"):
        log.record(1, 0, {"at": 1.0})
    deadline = time.monotonic() + 5
    while True:  # NOTE: the caller is answered just before the committer gives the turn back
        try:
            fd = _hold_turn(store, wait=False)
            break
        except BlockingIOError:
            assert time.monotonic() < deadline, "the commit turn was never given back"
            time.sleep(0.01)
    os.close(fd)
    monkeypatch.undo()
    assert log.record(1, 0, {"at": 2.0}).count == 1
    log.close()
    store.close()


def test_scans_are_committed_when_the_turn_cannot_be_taken(tmp_path, monkeypatch, caplog):
    """The turn only orders scan committers (LMDB's own lock keeps writes apart): a
    filesystem that refuses the lock costs no scan."""
    import engine.scanlog as scanlog

    store = Store(tmp_path / "db")
    log = ScanLog(store)

    def refused(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(scanlog.fcntl, "flock", refused)
    assert [log.record(1, 0, {"at": float(t)}).count for t in range(3)] == [1, 2, 3]
    assert "scan commit turn unavailable" in caplog.text
    monkeypatch.undo()
    log.close()
    store.close()


def _hammer(path, unit, n):
    store = Store(Path(path))
    log = ScanLog(store)

    def worker():
        for i in range(n):
            log.record(unit, 0, {"at": time.time()})

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    store.close()


def test_counts_exact_across_processes_and_threads(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path / "db"), 42, 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    assert log.get(42, 0).count == 3 * 8 * 50
    assert log.count_events() == 3 * 8 * 50
    seqs = [e["seq"] for e in log.events(limit=10_000)]
    assert seqs == list(range(1, 1201))
    store.close()


_WRITER = """
import sys, threading, time
from engine.store import Store
from engine.scanlog import ScanLog
log = ScanLog(Store(sys.argv[1], metasync=sys.argv[2] == "strict"))
lock = threading.Lock()
def worker(t):
    i = 0
    while True:
        rec = log.record(t, 0, {"at": time.time(), "device": f"{t}-{i}"})
        with lock:
            print(t, rec.seq, rec.count, flush=True)
        i += 1
ths = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(4)]
[t.start() for t in ths]
time.sleep(60)
"""


@pytest.mark.parametrize("durability", ["strict", "relaxed"])
def test_acknowledged_scans_survive_kill_9(tmp_path, durability):
    """Either durability: a scan answered is committed, so a killed process loses none."""
    db = tmp_path / "db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), durability], stdout=subprocess.PIPE,
                            text=True, env=env)
    acked = []
    deadline = time.time() + 30
    while len(acked) < 400 and time.time() < deadline:
        line = proc.stdout.readline()
        if line:
            acked.append(tuple(int(x) for x in line.split()))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(acked) >= 400
    store = Store(db)
    log = ScanLog(store)
    stored = {e["seq"] for e in log.events(limit=1_000_000)}
    assert {seq for _, seq, _ in acked} <= stored
    for unit in range(4):
        best = max((c for u, _, c in acked if u == unit), default=0)
        rec = log.get(unit, 0)
        assert rec is not None and rec.count >= best
    # Counts agree with the events actually stored (nothing half-written).
    per_unit = {}
    for e in log.events(limit=1_000_000):
        per_unit[e["unit"]] = per_unit.get(e["unit"], 0) + 1
    assert all(log.get(u, 0).count == n for u, n in per_unit.items())
    store.close()


def test_settlements_of_a_group_share_a_memo_and_a_failure_undoes_only_its_own(tmp_path):
    """One write transaction for a group: its settlements share a memo. A settlement that
    raises is undone (the group is written again without it, with a new memo): its scan
    is recorded with an error outcome, its neighbours keep their rewards."""
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    db = store.db("t")
    seen = []

    def settle(n, fail=False):
        def run(txn, seq, memo):
            seen.append((n, dict(memo)))
            memo["last"] = n
            txn.put(b"k%d" % n, b"x", db=db)
            if fail:
                raise RuntimeError("campaign bug")
            return [{"outcome": "granted", "n": n}]
        return run

    # (unit, role, event, settle, copy_at, printed uid, waiter)
    group = [(1, 0, {"at": 1.0}, settle(1), None, 1, None),
             (2, 0, {"at": 2.0}, settle(2, fail=True), None, 2, None),
             (3, 0, {"at": 3.0}, settle(3), None, 3, None),
             (4, 0, {"at": 4.0}, settle(4), None, 4, None)]
    records = log._write_group(group)  # as the committer does with a queued group
    assert seen == [(1, {}), (2, {"last": 1}), (1, {}), (3, {"last": 1}), (4, {"last": 3})]
    assert [r.rewards for r in records] == [({"outcome": "granted", "n": 1},), ({"outcome": "error"},),
                                            ({"outcome": "granted", "n": 3},), ({"outcome": "granted", "n": 4},)]
    with store.read() as txn:
        assert [txn.get(b"k%d" % n, db=db) for n in (1, 2, 3, 4)] == [b"x", None, b"x", b"x"]
    assert [(e["seq"], e["count"], e.get("rewards")) for e in log.events()] == [
        (1, 1, [{"outcome": "granted", "n": 1}]), (2, 1, [{"outcome": "error"}]),
        (3, 1, [{"outcome": "granted", "n": 3}]), (4, 1, [{"outcome": "granted", "n": 4}])]
    log.close()
    store.close()


def test_durability_setting(tmp_path):
    """strict (the default) fsyncs data and meta pages at each commit; relaxed only the
    data pages; anything else is refused with the setting's name and values."""
    data = DataFolder.init(tmp_path / "w")
    assert data.durability == "strict" and data.store.env.flags()["metasync"]
    with pytest.raises(ValueError, match="durability must be one of strict, relaxed"):
        data.update_config(store={"durability": "fast"})
    data.update_config(store={"durability": "relaxed"})
    data.close()
    with DataFolder(tmp_path / "w") as data:
        flags = data.store.env.flags()
        assert data.durability == "relaxed" and flags["sync"] and not flags["metasync"]


def test_alerts_come_newest_first_and_page_back(tmp_path):
    """A distributor's newest diversion alerts are the ones listed (oldest first, those
    past the limit could never be seen); ``before`` pages back; all distributors merge
    by sequence number."""
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    for i in range(30):
        dist = "gz-1" if i % 3 else "sh-1"  # seq 1, 4, 7 ... are sh-1's
        log.record(i, 1, {"at": 100.0 + i, "region": "3101",
                          "diverted": {"distributor": dist, "territory": ["4401"], "region": "3101"}})
    assert [a["seq"] for a in log.alerts("gz-1", 3)] == [30, 29, 27]
    assert [a["seq"] for a in log.alerts(limit=4)] == [30, 29, 28, 27]
    pages, before = [], None
    while page := log.alerts("gz-1", 7, before):
        pages.append([a["seq"] for a in page])
        before = page[-1]["seq"]
    assert sum(pages, []) == [s for s in range(30, 0, -1) if s % 3 != 1] and len(pages) == 3
    assert [a["seq"] for a in log.alerts("sh-1", 2, before=10)] == [7, 4]
    assert log.alerts("nobody") == [] and log.alert_counts() == {"gz-1": 20, "sh-1": 10}
    for bad in (0, -1, True, 2.0):  # NOTE: True was taken as a page of 1
        with pytest.raises(ValueError, match="limit"):
            log.alerts(limit=bad)
    log.close()
    store.close()
