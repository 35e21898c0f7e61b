"""Abuse control: rate limits, enumeration bans with evidence, shared across processes."""

import multiprocessing as mp

import lmdb
import pytest

from engine import NotFound
from engine.abuse import AbuseGuard, AbuseLimits, subject
from engine.store import Store, pack


@pytest.fixture
def guard(tmp_path):
    store = Store(tmp_path / "db")
    g = AbuseGuard(store, tmp_path / "db-counters", AbuseLimits(rate_per_minute=5, invalid_threshold=3,
                                                                 invalid_window_s=60, ban_s=300))
    yield g
    g.close()
    store.close()


def test_rate_limit_per_minute_window(guard):
    ip = subject("ip", "203.0.113.9")
    assert [guard.over_rate([ip], now=1000.0 + i) for i in range(5)] == [None] * 5
    assert guard.over_rate([ip], now=1006.0) == ip
    assert guard.over_rate([subject("ip", "198.51.100.1")], now=1006.0) is None
    assert guard.over_rate([ip], now=1000.0 + 60) is None  # next minute


def test_enumeration_ban_with_evidence_expires_and_lifts(guard):
    dev = subject("device", "d1")
    for i in range(3):
        assert guard.record_invalid([dev], f"FAKE{i}", now=100.0 + i) is None
    ban = guard.record_invalid([dev], "FAKE3", now=104.0)
    assert ban is not None and ban.subject == dev
    assert [c for _, c in ban.evidence] == ["FAKE0", "FAKE1", "FAKE2", "FAKE3"]
    assert guard.banned([subject("ip", "x"), dev], now=105.0).subject == dev
    assert guard.banned([dev], now=104.0 + 301) is None  # expired
    assert [b.subject for b in guard.list_bans(now=105.0)] == [dev]
    guard.lift(dev, now=106.0)
    assert guard.banned([dev], now=107.0) is None
    assert guard.list_bans(now=107.0) == []
    assert guard.list_bans(now=107.0, include_inactive=True)[0].lifted_at == 106.0
    with pytest.raises(NotFound):
        guard.lift(subject("ip", "never"))


def test_invalid_window_resets(guard):
    dev = subject("device", "slow")
    for i in range(10):  # one invalid code every 61 s never reaches the threshold
        assert guard.record_invalid([dev], "X", now=1000.0 + 61 * i) is None


def test_evidence_is_per_subject_and_restarts_with_the_window(guard):
    """Evidence of a subject whose id extends another's (a NUL in a device id) stays its
    own; a new window starts with new evidence; the ban lists at most evidence_max codes."""
    short, longer = subject("device", "d"), subject("device", "d\0\0\1")
    guard.record_invalid([longer], "LONG0", now=10.0)
    guard.record_invalid([short], "OLD", now=10.0)
    for i in range(3):  # a new window for `short`: OLD is forgotten
        assert guard.record_invalid([short, longer], f"NEW{i}", now=100.0 + i) is None
    ban = guard.record_invalid([short], "NEW3", now=103.0)
    assert [c for _, c in ban.evidence] == ["NEW0", "NEW1", "NEW2", "NEW3"]
    ban = guard.record_invalid([longer], "LONG4", now=105.0)
    assert [c for _, c in ban.evidence] == ["NEW0", "NEW1", "NEW2", "LONG4"]


def test_evidence_is_capped(tmp_path):
    store = Store(tmp_path / "db")
    g = AbuseGuard(store, tmp_path / "db-counters", AbuseLimits(invalid_threshold=30, evidence_max=5))
    ip = subject("ip", "203.0.113.7")
    bans = [g.record_invalid([ip], f"C{i}", now=1.0 + i) for i in range(31)]
    assert bans[:30] == [None] * 30
    assert [c for _, c in bans[30].evidence] == ["C0", "C1", "C2", "C3", "C4"]
    g.close()
    store.close()


def test_sweep_drops_stale_counters(guard):
    guard.over_rate([subject("ip", "a")], now=0.0)
    guard.record_invalid([subject("ip", "a")], "X", now=0.0)
    assert guard.sweep(now=10_000.0) == 2


def _counter_entries(guard) -> int:
    with guard.counters.read() as txn:
        return txn.stat(guard._rate)["entries"] + txn.stat(guard._invalid)["entries"]


def test_sweep_runs_in_steps_and_keeps_what_is_live(guard):
    """Stale counters go in write transactions of `step` entries, with a pause between
    (a serving worker's requests run); this minute's counts, open windows and active bans
    stay and still count."""
    now = 6_000.0
    for i in range(23):
        guard.over_rate([subject("ip", f"old-{i}")], now=now - 120)
    for i in range(11):
        guard.record_invalid([subject("device", f"old-{i}")], "X", now=now - 61)
    for i in range(5):
        guard.over_rate([subject("ip", f"live-{i}")], now=now)
    live = subject("device", "live")
    guard.record_invalid([live], "A", now=now - 10)
    guard.record_invalid([live], "B", now=now - 9)
    for i in range(4):  # 3 invalid codes: banned for 300 s
        guard.record_invalid([subject("ip", "banned")], "Z", now=now - 400 + i)
    for i in range(4):
        guard.record_invalid([subject("ip", "still")], "Z", now=now - 100 + i)
    pauses = []
    # 23 old minutes, 11 ended windows (a ban starts its subject's count again), 1 ended ban
    assert guard.sweep(now=now, step=4, pause=lambda: pauses.append(1)) == 23 + 11 + 1
    assert len(pauses) >= (23 + 5) // 4 and _counter_entries(guard) == 5 + 1
    assert guard.banned([subject("ip", "still")], now=now).subject == "ip:still"
    assert guard.record_invalid([live], "C", now=now) is None  # its window kept: the 4th bans
    assert guard.record_invalid([live], "D", now=now) is not None
    guard.sweep(now=now)
    assert guard.count_active(now=now) == 2 and _counter_entries(guard) == 5  # the rates


def test_a_full_counters_map_answers_invalid_codes_invalid(guard, monkeypatch, caplog):
    """The counters' map full (MDB_MAP_FULL) answered invalid codes 503 and stopped bans:
    an oracle (genuine codes still answered) that no ban stopped. Now counting stops,
    logged once a minute, and the scan goes on."""
    import lmdb

    def full():
        raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL: Environment mapsize limit reached")

    monkeypatch.setattr(guard.counters, "write", full)
    with caplog.at_level("ERROR"):
        assert guard.record_invalid([subject("ip", "a")], "X", now=1.0) is None
        assert guard.record_invalid([subject("ip", "a")], "Y", now=2.0) is None
        guard.over_rate([subject("ip", "a")], now=3.0)
        guard._flush_rate(70.0)
    told = [r.getMessage() for r in caplog.records if "not kept" in r.getMessage()]
    assert len(told) == 1 and "MDB_MAP_FULL" in told[0]


def test_a_full_counters_map_is_swept_and_counting_comes_back(tmp_path, monkeypatch):
    """A delete needs fresh pages too: a sweep of 5,000 entries a transaction failed in a
    full map, every minute, and rate limits and bans never came back. Smaller steps free
    pages first."""
    import engine.abuse as abuse

    monkeypatch.setattr(abuse, "COUNTERS_MAP_SIZE", 4 << 20)
    store = Store(tmp_path / "db")
    g = AbuseGuard(store, tmp_path / "db-counters", AbuseLimits(invalid_threshold=3, invalid_window_s=60))
    n = 0
    for batch in (500, 1):  # stale invalid-code windows until not one more fits
        try:
            while True:
                with g.counters.write() as txn:
                    for i in range(batch):
                        txn.put(subject("device", f"d-{n + i}").encode(),
                                abuse._INVALID_HEAD.pack(0.0, 1) + b"x" * 40, db=g._invalid)
                n += batch
        except lmdb.MapFullError:
            pass
    assert g.sweep(now=1000.0, step=5_000) == n
    bans = [g.record_invalid([subject("ip", "a")], f"X{i}", now=1000.0 + i) for i in range(4)]
    assert bans[:3] == [None] * 3 and bans[3].subject == "ip:a"
    g.close()
    store.close()


def test_a_serving_worker_sweeps_every_minute(guard):
    from engine.abuse import sweep_every

    guard.over_rate([subject("ip", "old")], now=0.0)
    guard.sweep(now=0.0)  # flushes the count
    assert _counter_entries(guard) == 1
    sweep_every(guard, seconds=0.05)
    for _ in range(100):
        if _counter_entries(guard) == 0:
            break
        import time

        time.sleep(0.05)
    assert _counter_entries(guard) == 0


def _ban_from_other_process(path):
    store = Store(path / "db")
    g = AbuseGuard(store, path / "db-counters", AbuseLimits(invalid_threshold=1))
    g.record_invalid(["ip:10.9.9.9"], "A")
    g.record_invalid(["ip:10.9.9.9"], "B")
    g.close()
    store.close()


def test_ban_holds_across_processes(tmp_path):
    store = Store(tmp_path / "db")
    g = AbuseGuard(store, tmp_path / "db-counters")
    assert g.banned(["ip:10.9.9.9"]) is None
    p = mp.get_context("spawn").Process(target=_ban_from_other_process, args=(tmp_path,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert g.banned(["ip:10.9.9.9"]).subject == "ip:10.9.9.9"
    g.close()
    store.close()


def test_limits_are_validated():
    with pytest.raises(ValueError, match="ban_s"):
        AbuseLimits(ban_s=0)


@pytest.mark.parametrize("name, value, message", [
    # a ban's end is stored as an unsigned 64-bit number: this one made every ban a 500
    ("ban_s", 10**20, r"ban_s must be a positive integer of at most 315360000 \(10 years\); got 1000"),
    ("ban_s", True, r"ban_s must be a positive integer .*; got True"),  # not 1
    ("ban_s", 3600.0, "ban_s must be a positive integer"),
    ("invalid_threshold", 2**32, r"invalid_threshold .* at most 1000000000 \(a billion\)"),
    ("invalid_threshold", False, "invalid_threshold must be"),
    ("rate_per_minute", 10**9 + 1, "rate_per_minute .* at most 1000000000"),
    ("invalid_window_s", 31 * 86400, r"invalid_window_s .* at most 2592000 \(30 days\)"),
    # subtracted from a float time: OverflowError on every scan of a code seen widely
    pytest.param("copy_window_s", 10**400, r"copy_window_s .* at most 31536000 \(365 days\); got 1000.*\.\.\.$",
                 id="copy_window_s-10**400"),
    ("copy_regions", 17, "copy_regions .* at most 16;"),  # a code keeps 16 places: it never flags
    ("copy_devices", 17, "copy_devices .* at most 16;"),
    ("evidence_max", 1001, "evidence_max .* at most 1000;"),
])
def test_limits_are_range_checked(name, value, message):
    with pytest.raises(ValueError, match=message):
        AbuseLimits(**{name: value})


def test_limits_at_their_maximum_are_taken_and_work(tmp_path):
    """A ban of 10 years is made and holds; a billion invalid codes is a count that fits."""
    limits = AbuseLimits(rate_per_minute=10**9, invalid_threshold=2, invalid_window_s=30 * 86400,
                         ban_s=3650 * 86400, evidence_max=1000, copy_regions=16, copy_devices=16,
                         copy_window_s=365 * 86400)
    store = Store(tmp_path / "db")
    g = AbuseGuard(store, tmp_path / "db-counters", limits)
    assert [g.record_invalid(["ip:10.7.7.7"], f"X{i}", now=1000.0 + i) for i in range(2)] == [None, None]
    ban = g.record_invalid(["ip:10.7.7.7"], "X2", now=1002.0)
    assert ban is not None and ban.expires_at == 1002.0 + 3650 * 86400
    assert g.banned(["ip:10.7.7.7"], now=1002.0 + 3649 * 86400) is not None
    assert g.count_active(now=2000.0) == 1
    g.close()
    store.close()
    AbuseLimits(invalid_threshold=10**9)


@pytest.mark.parametrize("abuse, message", [
    ({"invalid_threshold": 2, "ban_s": 10**20}, "ban_s must be a positive integer of at most 315360000"),
    ({"ban_s": True}, "ban_s must be a positive integer"),
])
def test_a_limit_out_of_range_is_refused_by_the_data_folder(tmp_path, abuse, message):
    """Refused as a config update, and in wuma.json before the scan app starts
    (check_serving: wuma serve, and the master before a reload)."""
    import json

    from engine import DataFolder
    from engine.data import check_serving
    from engine.errors import DataFolderError

    with DataFolder.init(tmp_path / "d") as data, \
            pytest.raises(ValueError, match=f'"abuse" section: abuse limit {message}'):
        data.update_config(abuse=abuse)
    doc = json.loads((tmp_path / "d" / "wuma.json").read_text())
    assert "abuse" not in doc  # the update was not written
    doc["abuse"] = abuse
    (tmp_path / "d" / "wuma.json").write_text(json.dumps(doc))
    with pytest.raises(DataFolderError, match=f'wuma.json, "abuse" section: abuse limit {message}'):
        check_serving(tmp_path / "d")


def _two_invalid_codes(path):
    store = Store(path / "db")
    g = AbuseGuard(store, path / "db-counters", AbuseLimits(invalid_threshold=3))
    assert g.record_invalid(["ip:10.8.8.8"], "P1", now=1001.0) is None
    ban = g.record_invalid(["ip:10.8.8.8"], "P2", now=1002.0)
    assert ban is not None and [c for _, c in ban.evidence] == ["M0", "M1", "P1", "P2"]
    g.close()
    store.close()


def test_invalid_count_is_exact_across_processes(tmp_path):
    """Each invalid code is committed before it is answered: two codes here and two in
    another process are four, and the fourth bans there with all four as evidence."""
    store = Store(tmp_path / "db")
    g = AbuseGuard(store, tmp_path / "db-counters", AbuseLimits(invalid_threshold=3))
    for i in range(2):
        assert g.record_invalid(["ip:10.8.8.8"], f"M{i}", now=1000.0 + i / 10) is None
    p = mp.get_context("spawn").Process(target=_two_invalid_codes, args=(tmp_path,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert g.banned(["ip:10.8.8.8"], now=1003.0).subject == "ip:10.8.8.8"
    g.close()
    store.close()


def test_sweep_empties_the_old_invalid_layout(guard):
    """Counts and evidence under the layout before one record per subject are forgotten."""
    with guard.counters.write() as txn:
        txn.put(b"ip:old", pack((1.0, 2)), db=guard.counters.db("invalid"))
        txn.put(b"ip:old\0\0\0", pack([1.0, "X"]), db=guard.counters.db("invalid_evidence"))
    assert guard.sweep(now=2.0) == 2
    assert guard.record_invalid([subject("ip", "old")], "Y", now=3.0) is None


def _four_requests(path):
    store = Store(path / "db")
    g = AbuseGuard(store, path / "db-counters", AbuseLimits(rate_per_minute=5))
    assert [g.over_rate(["ip:10.7.7.7"], now=1000.0 + i / 100) for i in range(4)] == [None] * 4
    g.close()  # flushes, as a worker does every 0.1 s
    store.close()


def test_rate_counts_are_shared_across_processes(tmp_path):
    """Another worker's requests count here once this process flushes its own (<= 0.1 s)."""
    store = Store(tmp_path / "db")
    g = AbuseGuard(store, tmp_path / "db-counters", AbuseLimits(rate_per_minute=5))
    p = mp.get_context("spawn").Process(target=_four_requests, args=(tmp_path,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert g.over_rate(["ip:10.7.7.7"], now=1000.5) is None  # 4 there + 1 here
    assert g.over_rate(["ip:10.7.7.7"], now=1000.7) == "ip:10.7.7.7"  # the 6th in the minute
    assert g.over_rate(["ip:10.8.8.8"], now=1000.8) is None
    g.close()
    store.close()


def test_a_subject_fits_a_database_key(guard):
    s = subject("device", "\U0001F600" * 200)
    assert s.startswith("device:") and len(s.encode()) <= 7 + 384
    assert subject("device", "d" * 200) == "device:" + "d" * 128
    for i in range(4):  # over the threshold of 3
        guard.record_invalid([s], f"code-{i}", now=1000.0 + i)
    assert guard.banned([s], now=1004.0) is not None


def test_evidence_keeps_the_end_of_what_was_tried_and_always_stores(guard):
    """The code ends a scanned URL: padding the path must not push it out of the evidence;
    text that is no UTF-8 (a lone surrogate) must not make the count fail."""
    ip = subject("ip", "203.0.113.80")
    guard.record_invalid([ip], "https://x.cn/" + "p/" * 100 + "1FORGEDCODE", now=1000.0)
    guard.record_invalid([ip], "\ud800/1FORGED", now=1001.0)
    guard.record_invalid([ip], "a", now=1002.0)
    ban = guard.record_invalid([ip], "b", now=1003.0)
    assert ban is not None
    tried = [code for _, code in ban.evidence]
    assert tried[0].endswith("p/1FORGEDCODE") and tried[1] == "?/1FORGED"  # the surrogate replaced


@pytest.mark.parametrize("text, counted", [
    ("203.0.113.9", "203.0.113.9"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),  # one subscriber: a whole /64
    ("2001:db8:1:2:bbbb::7", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.7", "198.51.100.7"),
    ("fe80::1%eth0", "fe80::/64"),
    ("1.2.3.256", None), ("1.2.3", None), ("١.2.3.4", None), ("garbage", None), ("", None),
])
def test_client_address(text, counted):
    from engine.abuse import client_address
    assert client_address(text) == counted


def test_active_bans_are_counted_without_reading_every_ban(guard):
    a, b = subject("ip", "203.0.113.91"), subject("ip", "203.0.113.92")
    for s in (a, b):
        for i in range(4):  # over the threshold of 3
            guard.record_invalid([s], f"code-{i}", now=1000.0 + i)
    assert guard.count_active(now=1010.0) == 2
    guard.lift(a, now=1011.0)
    assert guard.count_active(now=1012.0) == 1
    assert guard.count_active(now=1003.0 + 301) == 0  # ban_s 300: ended
    # a ban ending within a second: counted exactly as banned() sees it (its end is kept
    # rounded up to the second)
    c = subject("ip", "203.0.113.93")
    for i in range(4):
        guard.record_invalid([c], f"code-{i}", now=1500.25 + i)  # ends at 1803.25
    for now in (1803.0, 1803.24, 1803.25, 1803.5, 1804.0):
        assert guard.count_active(now=now) == (guard.banned([c], now=now) is not None) == (now < 1803.25)
    guard.sweep(now=2000.0)
    assert guard.count_active(now=1010.0) == 0  # the ended ban's end is swept; its record stays
    assert len(guard.list_bans(include_inactive=True)) == 3


def test_active_bans_are_listed_a_page_at_a_time(guard):
    """A listing (the admin page's) is a page of bans, from a subject on: anyone may get
    banned from thousands of addresses, and each ban holds its evidence."""
    subjects = [subject("ip", f"203.0.113.{i}") for i in range(10, 20)]
    for s in subjects:
        for i in range(4):
            guard.record_invalid([s], f"code-{i}", now=1000.0 + i)
    guard.lift(subjects[3], now=1004.0)
    live = [s for s in sorted(subjects) if s != subjects[3]]
    got, after = [], None
    while page := guard.list_bans(now=1005.0, limit=4, after=after):
        assert len(page) <= 4 and all(b.evidence for b in page)
        got += [b.subject for b in page]
        after = page[-1].subject
    assert got == live == [b.subject for b in guard.list_bans(now=1005.0)]
    assert guard.list_bans(now=1003.0 + 301, limit=4) == []  # all ended
    for i in range(4):  # subjects[0] banned again: two records, which stay on one page
        guard.record_invalid([subjects[0]], f"again-{i}", now=2000.0 + i)
    everything = guard.list_bans(now=2005.0, include_inactive=True)
    assert [b.subject for b in everything].count(subjects[0]) == 2
    first = guard.list_bans(now=2005.0, include_inactive=True, limit=1)
    assert [b.subject for b in first] == [subjects[0]] * 2
    assert guard.list_bans(now=2005.0, include_inactive=True, limit=3, after=subjects[0]) == everything[2:5]
    with pytest.raises(ValueError, match="limit"):
        guard.list_bans(limit=0)


def test_bans_from_before_the_ends_are_counted(guard):
    from engine.store import pack as _pack
    with guard._store.write() as txn:  # a ban recorded by an earlier release
        txn.put(b"ip:198.51.100.99", _pack({"subject": "ip:198.51.100.99", "reason": "r", "created_at": 1.0,
                                          "expires_at": 5000.0, "evidence": []}), db=guard._bans)
    assert guard.count_active(now=1000.0) == 1


def _ban(guard, s, at, tag):
    """Four invalid codes from ``s`` from ``at`` on (threshold 3): the fourth bans."""
    for i in range(4):
        ban = guard.record_invalid([s], f"{tag}{i}", now=at + i)
    assert ban is not None
    return ban


def test_a_subject_banned_again_keeps_its_earlier_bans(guard):
    """A repeat offender's earlier bans (lifted or ended) stay listed with their evidence;
    only the latest one bans and counts."""
    ip, other = subject("ip", "203.0.113.5"), subject("ip", "203.0.113.50")  # one id extends the other
    _ban(guard, ip, 1000.0, "FIRST")
    _ban(guard, other, 1000.0, "OTHER")
    guard.lift(ip, now=1010.0)
    _ban(guard, ip, 2000.0, "SECOND")  # after a lift
    _ban(guard, ip, 9000.0, "THIRD")  # after the second ended (ban_s 300)
    history = [(b.subject, b.evidence[0][1], b.lifted_at)
               for b in guard.list_bans(now=9010.0, include_inactive=True)]
    assert history == [(ip, "FIRST0", 1010.0), (ip, "SECOND0", None), (ip, "THIRD0", None),
                       (other, "OTHER0", None)]
    assert [(b.subject, b.created_at) for b in guard.list_bans(now=9010.0)] == [(ip, 9003.0)]
    assert guard.banned([ip], now=9010.0).created_at == 9003.0
    assert guard.count_active(now=9010.0) == 1
    guard.sweep(now=20_000.0)
    assert guard.count_active(now=9010.0) == 0  # the ends are swept, the records stay
    assert len(guard.list_bans(now=20_000.0, include_inactive=True)) == 4
    with pytest.raises(NotFound, match="ended by itself"):  # all three are over now
        guard.lift(ip, now=20_001.0)
    _ban(guard, ip, 30_000.0, "FOURTH")
    guard.lift(ip, now=30_010.0)  # lifts the latest ban only
    assert [b.lifted_at for b in guard.list_bans(include_inactive=True) if b.subject == ip][-3:] == \
        [None, None, 30_010.0]


def test_earlier_bans_are_bounded(guard, monkeypatch):
    from engine import abuse
    monkeypatch.setattr(abuse, "EARLIER_BANS_MAX", 2)
    ip = subject("ip", "203.0.113.6")
    for n in range(5):
        _ban(guard, ip, 1000.0 + 1000 * n, f"B{n}-")
    kept = [b.evidence[0][1] for b in guard.list_bans(include_inactive=True)]
    assert kept == ["B2-0", "B3-0", "B4-0"]  # the two latest earlier bans and the current one


def test_a_lifted_ban_is_not_lifted_again(guard):
    """Lifting twice would overwrite when the ban was lifted (and audit a second lift)."""
    ip = subject("ip", "203.0.113.7")
    _ban(guard, ip, 1000.0, "X")
    guard.lift(ip, now=1010.0)
    with pytest.raises(NotFound, match="lifted already"):
        guard.lift(ip, now=1020.0)
    assert guard.list_bans(include_inactive=True)[0].lifted_at == 1010.0
    # a ban that ended by itself (ban_s 300) is not "lifted" after the fact either
    other = subject("ip", "203.0.113.8")
    _ban(guard, other, 2000.0, "Y")
    with pytest.raises(NotFound, match="ended by itself"):
        guard.lift(other, now=2000.0 + 400)
    assert [b.lifted_at for b in guard.list_bans(include_inactive=True) if b.subject == other] == [None]


def test_a_ban_held_up_by_a_long_write_lets_no_connection_start_again(guard):
    """The count was dropped when it crossed the threshold and the ban written after, in the
    main store, which waits for a long write (an ingest): meanwhile each connection of the
    subject counted from 0 again, and 16 of them got 16 x 21 answers before the ban. Now the
    count stays until the ban is written: each connection's next invalid code waits for it."""
    import threading
    import time as _time

    ip = subject("ip", "203.0.113.60")
    answered = []
    lock = threading.Lock()

    def connection() -> None:
        for i in range(50):
            if guard.banned([ip], now=1000.0) is not None:
                return
            guard.record_invalid([ip], f"GUESS{i}", now=1000.0)
            with lock:
                answered.append(i)

    holding = threading.Event()
    release = threading.Event()

    def long_write() -> None:  # the store's writer held, as an ingest holds it
        with guard._store.write():
            holding.set()
            release.wait(10)

    writer = threading.Thread(target=long_write)
    writer.start()
    holding.wait(10)
    connections = [threading.Thread(target=connection) for _ in range(4)]
    for c in connections:
        c.start()
    _time.sleep(0.5)  # every connection has crossed, or waits for the ban
    release.set()
    writer.join(10)
    for c in connections:
        c.join(10)
    # threshold 3: the 4th invalid code bans; each other connection's one in flight waits too
    assert len(answered) <= 3 + 4, answered
    assert len(guard.list_bans(now=1000.0, include_inactive=True)) == 1  # one ban, not one a connection
