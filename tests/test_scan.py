"""The scan pipeline end to end on real stores: every verdict, role rules, diversion, bans."""

import json

import pytest

from conftest_world import Clock, build_world
from engine.abuse import subject
from engine.errors import Banned, Unauthorized
from engine.scan import ScanPipeline, ScanRequest
from engine.scanlog import ScanLog


@pytest.fixture
def world(tmp_path):
    w = build_world(tmp_path / "wuma-data")
    clock = Clock()
    w["clock"] = clock
    w["pipe"] = ScanPipeline(w["data"].codes, w["agg"], ScanLog(w["data"].store), w["data"].abuse,
                             w["data"].accounts, clock=clock)
    yield w
    w["pipe"].scans.close()
    w["data"].close()


def _scan(w, code, **kw):
    kw.setdefault("ip", "198.51.100.7")
    kw.setdefault("device", "dev-1")
    return w["pipe"].scan(ScanRequest(code, **kw))


def test_genuine_consumer_scan_and_repeat(world):
    inner = world["data"].codes.code(world["caps"], 30, "cap_inner")
    first = _scan(world, world["data"].url_base + inner, region="440106")
    assert first.verdict == "genuine" and first.flags == ()
    assert first.product["sku"] == "SKU-1"
    assert [a["level"] for a in first.ancestors] == ["case", "pallet"]
    assert first.distributor == "gz-1" and first.scan.count == 1
    again = _scan(world, inner.lower(), region="440106", device="dev-2")
    assert again.scan.count == 2
    assert again.scan.first_at == first.scan.first_at and again.scan.first_region == "440106"
    check = world["pipe"].check(inner)
    assert check.verdict == "genuine" and check.scan.count == 2  # read-only: not counted
    assert world["pipe"].check(inner).scan.count == 2


def test_inactive_voided_and_invalid(world):
    data, agg = world["data"], world["agg"]
    inactive = data.codes.code(world["inactive"], 3, "cap_inner")
    r = _scan(world, inactive)
    assert r.verdict == "inactive" and r.scan.count == 1  # recorded as evidence
    # the caller learns it is not valid, nothing of the label (role, level, earlier scans)
    assert r.to_dict() == {"verdict": "inactive"} and r.to_json() == b'{"verdict": "inactive"}'
    again = world["pipe"].check(inactive)
    assert again.scan.count == 1 and again.to_dict() == {"verdict": "inactive"}
    voided = data.codes.code(world["caps"], 5, "cap_inner")
    agg.void([voided])
    assert _scan(world, voided).verdict == "voided"
    forged = voided[:-1] + ("0" if voided[-1] != "0" else "1")
    assert _scan(world, forged).to_dict() == {"verdict": "invalid"}
    assert _scan(world, "nonsense").to_dict() == {"verdict": "invalid"}


def test_diversion_flag_and_alert(world):
    inner = world["data"].codes.code(world["caps"], 1, "cap_inner")
    r = _scan(world, inner, region="330106")  # Hangzhou, outside gz-1's 4401
    assert "diverted" in r.flags
    assert r.diversion == {"distributor": "gz-1", "territory": ["4401"], "region": "330106"}
    alerts = world["pipe"].scans.alerts("gz-1")
    assert len(alerts) == 1 and alerts[0]["diverted"]["region"] == "330106"
    assert world["pipe"].scans.alert_counts() == {"gz-1": 1}
    assert "diverted" not in _scan(world, inner, region="440103").flags


def test_role_rules_and_authentication(world):
    data = world["data"]
    case_inner = data.codes.code(world["cases"], 0, "case_inner")
    r = _scan(world, case_inner)  # a consumer scanning a store's code
    assert r.verdict == "genuine" and "role_not_allowed" in r.flags
    r = _scan(world, case_inner, actor_role="store", token=world["store_token"])
    assert r.flags == ()
    with pytest.raises(Unauthorized):
        _scan(world, case_inner, actor_role="store")
    with pytest.raises(Unauthorized):
        _scan(world, case_inner, actor_role="distributor", token=world["store_token"])
    with pytest.raises(ValueError, match="region"):
        _scan(world, case_inner, region="Guangzhou")
    with pytest.raises(ValueError, match="actor role"):
        _scan(world, case_inner, actor_role="admin")


def test_copied_code_flag(world):
    inner = world["data"].codes.code(world["caps"], 2, "cap_inner")
    regions = ["440101", "440103", "440106"]
    # NOTE: from two clients (one alone never makes a code copied: test_copied_clients.py)
    results = [_scan(world, inner, region=r, device=f"d{i}", ip=f"198.51.100.{i}")
               for i, r in enumerate(regions)]
    assert "copied" not in results[0].flags and "copied" in results[-1].flags
    # the flag is evidence: it is stored with the scan event, not only answered
    events = world["pipe"].scans.events(limit=10)
    assert ["copied" in e["flags"] for e in events] == [False, False, True]


def test_the_landing_page_check_shows_a_code_flagged_copied(world):
    """GET /v1/codes/{code} answers the copied flag once a scan of the code was flagged,
    and keeps it after the scans' window has passed (a copied label stays copied)."""
    pipe, code = world["pipe"], world["data"].codes.code
    inner, other = code(world["caps"], 4, "cap_inner"), code(world["caps"], 5, "cap_inner")
    # one place at three precisions: no copy
    for r in ["440106", "440106001", "440100"]:
        _scan(world, other, region=r, device="phone")
    assert pipe.check(other).flags == () and pipe.check(other).scan.count == 3
    _scan(world, inner, region="440100", device="d0")
    _scan(world, inner, region="440300", device="d1", ip="198.51.100.21")  # a second client
    assert pipe.check(inner).flags == ()
    assert "copied" in _scan(world, inner, region="110101", device="d2").flags
    checked = pipe.check(inner, "203.0.113.80")
    assert checked.flags == ("copied",) and checked.scan.count == 3
    assert json.loads(checked.to_json())["flags"] == ["copied"]
    world["clock"].t += 8 * 86400  # past the 7 days' window: a new scan is not flagged
    assert _scan(world, inner, region="440100", device="d0").flags == ()
    assert pipe.check(inner).flags == ("copied",)


def test_a_record_from_before_the_copied_bit_scanned_inactive_is_judged_when_checked(world):
    """A record written before the scan record kept the copied bit, of a code seen in
    three cities within a week up to its latest scan: a scan while the code is inactive
    (no thresholds) writes no judgment, and the landing page check judges it once the code
    is genuine, as the next genuine scan does and keeps."""
    from engine.aggregation import unit_id
    from engine.scanlog import _record_key
    from engine.store import pack

    pipe, data, clock = world["pipe"], world["data"], world["clock"]
    inner = data.codes.code(world["inactive"], 2, "cap_inner")
    t0 = clock.t - 30 * 86400
    unit, role = unit_id(world["inactive"].id, 2), data.codes.spec.role("cap_inner").index
    old = [3, t0, "440106", "d0", t0 + 2, "110101", ["440106", "310101", "110101"], ["d0", "d1", "d2"],
           [t0, t0 + 1, t0 + 2], [t0, t0 + 1, t0 + 2]]  # the layout before the bit (10 fields)
    with data.store.write() as txn:
        txn.put(_record_key(unit, role), pack(old), db=data.store.db("scan_records"))
    assert _scan(world, inner, region="440106").verdict == "inactive"
    world["agg"].activate(sku="SKU-1", name="Green tea 500ml", lot="L2", production_date="2026-11-02",
                          batch=world["inactive"].id)
    checked = pipe.check(inner)
    assert (checked.verdict, checked.flags, checked.scan.count) == ("genuine", ("copied",), 4)
    assert _scan(world, inner, region="440106").flags == ()  # its own window: one place
    assert pipe.check(inner).flags == ("copied",)
    assert pipe.scans.get(unit, role).ever_copied  # kept in the record: no thresholds needed now


def test_copied_thresholds_set_on_the_pipeline_are_used(world):
    pipe = world["pipe"]
    assert (pipe.copy_regions, pipe.copy_devices, pipe.copy_window_s) == (3, 5, 7 * 86400)
    pipe.copy_regions = 2
    assert (pipe.copy_regions, pipe.copy_devices, pipe.copy_window_s) == (2, 5, 7 * 86400)
    inner = world["data"].codes.code(world["caps"], 6, "cap_inner")
    assert _scan(world, inner, region="440101").flags == ()
    assert _scan(world, inner, region="440103", ip="198.51.100.21").flags == ("copied",)
    assert pipe.check(inner).flags == ("copied",)


def test_copied_limits_are_settings(tmp_path):
    """The copied flag's thresholds are the "abuse" settings of wuma.json (defaults: 3
    regions or 5 devices within 7 days); a bad value is refused with the section named."""
    from engine import DataFolder

    w = build_world(tmp_path / "d")
    w["data"].update_config(abuse={"copy_regions": 2, "copy_devices": 9, "copy_window_s": 3600})
    w["data"].close()
    with DataFolder(tmp_path / "d") as data:
        clock = Clock()
        scans = ScanLog(data.store)
        from engine.aggregation import Aggregation

        pipe = ScanPipeline(data.codes, Aggregation(data), scans, data.abuse, data.accounts, clock=clock)
        inner = data.codes.code(w["caps"], 3, "cap_inner")
        first = pipe.scan(ScanRequest(inner, region="440101", device="d1", ip="198.51.100.7"))
        second = pipe.scan(ScanRequest(inner, region="440103", device="d1", ip="198.51.100.8"))
        clock.t += 3601  # the first region is out of the hour's window
        third = pipe.scan(ScanRequest(inner, region="440106", device="d1", ip="198.51.100.7"))
        assert ["copied" in r.flags for r in (first, second, third)] == [False, True, False]
        scans.close()
        with pytest.raises(ValueError, match='"abuse" section: abuse limit copy_regions must be a positive'):
            data.update_config(abuse={"copy_regions": 0})


def test_position_without_region_is_located(world, tmp_path):
    """A scan with only lat/lng is counted in the nearest division centre within reach:
    diversion is judged on it and the event says where the region came from."""
    world["data"].regions.put([("440106", 23.1256, 113.3618),  # Tianhe, Guangzhou (gz-1's 4401)
                               ("330106", 30.2741, 120.1551)])  # Xihu, Hangzhou
    pipe = ScanPipeline(world["data"].codes, world["agg"], world["pipe"].scans, world["data"].abuse,
                        world["data"].accounts, regions=world["data"].regions, clock=world["clock"])
    inner = world["data"].codes.code(world["caps"], 7, "cap_inner")
    home = pipe.scan(ScanRequest(inner, lat=23.13, lng=113.33, device="p1"))
    assert home.flags == () and home.scan.last_region == "440106"
    away = pipe.scan(ScanRequest(inner, lat=30.25, lng=120.16, device="p2"))
    assert "diverted" in away.flags and away.diversion["region"] == "330106"
    nowhere = pipe.scan(ScanRequest(inner, lat=45.0, lng=90.0, device="p3"))  # no centre near
    assert "diverted" not in nowhere.flags and nowhere.scan.last_region is None
    given = pipe.scan(ScanRequest(inner, region="440103", lat=30.25, lng=120.16, device="p4"))
    assert "diverted" not in given.flags  # a region code given by the front end wins
    events = pipe.scans.events(limit=10)
    assert [(e["region"], e.get("region_from")) for e in events] == [
        ("440106", "latlng"), ("330106", "latlng"), (None, None), ("440103", None)]
    assert [e["lat"] for e in events] == [23.13, 30.25, 45.0, 30.25]


def test_account_scan_without_location_is_at_its_registered_region(world):
    """Stores, shop assistants and distributors scan on their own premises: without a
    location their scan is counted in the account's region (and judged for diversion
    there); a location they send wins; a sales rep, who moves about, gets no region."""
    data = world["data"]
    _, hz = data.accounts.add("s-hz", "store", region="330106", distributor="gz-1")
    _, rep = data.accounts.add("rep-1", "sales_rep", region="330106")
    case_inner = data.codes.code(world["cases"], 1, "case_inner")
    away = _scan(world, case_inner, actor_role="store", token=hz)
    assert "diverted" in away.flags and away.scan.last_region == "330106"
    here = _scan(world, case_inner, actor_role="store", token=hz, region="440106")
    assert "diverted" not in here.flags
    case_outer = data.codes.code(world["cases"], 1, "case_outer")
    assert "diverted" not in _scan(world, case_outer, actor_role="sales_rep", token=rep).flags
    events = world["pipe"].scans.events(limit=10)
    assert [(e["region"], e.get("region_from")) for e in events] == [
        ("330106", "account"), ("440106", None), (None, None)]


@pytest.mark.parametrize("sent", ["33", "330000", "330100", "3301"])
def test_a_store_sending_a_region_holding_its_own_is_at_its_registered_region(world, sent):
    """A region coarser than a territory is never judged outside it: before, a store out
    of its distributor's territory (Hangzhou, gz-1 covers Guangzhou) that sent its own
    province or city instead of nothing cleared the diversion flag, and its distributor's
    rebate was paid (窜货不返利). A region that does not hold the store's is still taken."""
    data = world["data"]
    _, hz = data.accounts.add("s-hz", "store", region="330106", distributor="gz-1")
    case_inner = data.codes.code(world["cases"], 1, "case_inner")
    coarse = _scan(world, case_inner, actor_role="store", token=hz, region=sent)
    assert "diverted" in coarse.flags and coarse.diversion["region"] == "330106"
    elsewhere = _scan(world, case_inner, actor_role="store", token=hz, region="44")
    assert "diverted" not in elsewhere.flags  # the province of Guangzhou: maybe inside
    assert [(e["region"], e.get("region_from")) for e in world["pipe"].scans.events(limit=10)] == [
        ("330106", "account"), ("44", None)]


def test_a_store_position_wins_over_its_registered_region(world):
    """A store's lat/lng, once located, is where its scan is; only a scan with no place
    found (no centre within reach) falls back to the account's region."""
    data = world["data"]
    data.regions.put([("440106", 23.1256, 113.3618)])  # Tianhe, in gz-1's territory
    pipe = ScanPipeline(data.codes, world["agg"], world["pipe"].scans, data.abuse, data.accounts,
                        regions=data.regions, clock=world["clock"])
    _, hz = data.accounts.add("s-hz", "store", region="330106", distributor="gz-1")
    case_inner = data.codes.code(world["cases"], 1, "case_inner")
    here = pipe.scan(ScanRequest(case_inner, actor_role="store", token=hz, lat=23.13, lng=113.35))
    assert "diverted" not in here.flags and here.scan.last_region == "440106"
    nowhere = pipe.scan(ScanRequest(case_inner, actor_role="store", token=hz, lat=45.0, lng=90.0))
    assert "diverted" in nowhere.flags and nowhere.scan.last_region == "330106"
    assert [(e["region"], e.get("region_from")) for e in pipe.scans.events(limit=10)] == [
        ("440106", "latlng"), ("330106", "account")]


@pytest.mark.parametrize("text", ["a\x1b[2J", "u\r\n=1+1", "tab\there", "nul\x00", "c1\x9b31m",
                                  "line\u2028sep", "扫\x07", "invoice\u202egnp.exe", "rtl\u200f",
                                  "isolate\u2067x\u2069"])
def test_front_end_ids_with_control_characters_are_refused(world, text):
    """A consumer's or device id lands in ban listings, alerts and payout exports that an
    operator reads in a terminal or a spreadsheet: control characters (and bidirectional
    ones, which reorder how an id reads) are refused, with which field it was; printable
    text of any script is taken."""
    inner = world["data"].codes.code(world["caps"], 32, "cap_inner")
    for field in ("device", "actor_id"):
        with pytest.raises(ValueError, match=f"{field} must be printable text"):
            _scan(world, inner, **{field: text})
    assert _scan(world, inner, device="设备 1号", actor_id="o-Ab_9 ☕").verdict == "genuine"
    # not printable to str.isprintable() but no control character: an ideographic space
    # (Chinese input methods), a no-break space, a zero-width joiner (emoji)
    assert _scan(world, inner, device="设备\u30001号", actor_id="o\xa0👩\u200d💻").verdict == "genuine"


def test_the_scan_api_and_its_openapi_document_refuse_the_same_characters():
    """has_control (what the scan refuses) and TEXT_ID_PATTERN (what the OpenAPI document
    tells front ends) agree on every character of the Basic Multilingual Plane."""
    import re

    from engine.ids import TEXT_ID_PATTERN, has_control

    pattern = re.compile(TEXT_ID_PATTERN)
    # NOTE: has_control's shortcut: every character the pattern refuses is not printable
    assert not [hex(i) for i in range(0x10000) if pattern.fullmatch(chr(i)) is None and chr(i).isprintable()]
    differ = [hex(i) for i in range(0x10000) if not 0xD800 <= i < 0xE000
              and has_control(chr(i)) != (pattern.fullmatch(chr(i)) is None)]
    assert differ == []


def test_enumeration_ban(world):
    for i in range(6):  # threshold 5: the sixth invalid code bans the client
        assert _scan(world, f"1{'A' * 18}{i}", ip="203.0.113.66", device=f"x{i}").verdict == "invalid"
    with pytest.raises(Banned):
        _scan(world, "1" + "B" * 19, ip="203.0.113.66", device="fresh")
    genuine = world["data"].codes.code(world["caps"], 7, "cap_inner")
    with pytest.raises(Banned):  # banned clients get nothing, genuine codes included
        _scan(world, genuine, ip="203.0.113.66", device="fresh")
    assert _scan(world, genuine, ip="198.51.100.8", device="other").verdict == "genuine"
    ban = world["data"].abuse.list_bans(now=world["clock"].t)[0]
    assert ban.subject == "ip:203.0.113.66" and len(ban.evidence) == 6


def test_alerts_command_lists_diversion(world):
    import subprocess
    import sys

    inner = world["data"].codes.code(world["caps"], 9, "cap_inner")
    _scan(world, inner, region="330106")
    # A second process, as an operator would run it (LMDB allows one env per process).
    res = subprocess.run([sys.executable, "-m", "cli", "--data", str(world["data"].path), "alerts",
                          "--json"], capture_output=True, text=True, check=True)
    (alert,) = [json.loads(x) for x in res.stdout.splitlines()]
    assert alert["diverted"] == {"distributor": "gz-1", "territory": ["4401"], "region": "330106"}
    res = subprocess.run([sys.executable, "-m", "cli", "--data", str(world["data"].path), "alerts"],
                         capture_output=True, text=True, check=True)
    line, total = res.stdout.splitlines()
    assert line.endswith(f"scanned in 330106\tunit {world['caps'].id}:9") and total == "gz-1: 1 diverted scans in all"


def test_ids_of_many_bytes_are_refused_or_stored_whole(world):
    """Ids become parts of database keys (LMDB: at most 511 bytes). 128 emoji (512 bytes)
    are refused with a clear message; 128 Chinese characters (384 bytes) are scanned,
    counted, and banned like any id."""
    inner = world["data"].codes.code(world["caps"], 31, "cap_inner")
    with pytest.raises(ValueError, match="384 bytes"):
        _scan(world, inner, device="\U0001F600" * 128)
    device = "扫" * 128
    assert _scan(world, inner, device=device, actor_id=device).verdict == "genuine"
    with pytest.raises(Banned):  # over the enumeration threshold, the device is banned
        for _ in range(100):
            assert _scan(world, "nonsense", device=device, ip=None).verdict == "invalid"
    assert world["data"].abuse.banned([subject("device", device)], world["clock"]()) is not None


@pytest.mark.parametrize("location, message", [
    ({"lat": 10**400, "lng": 113.3}, "lat must be a number"),
    ({"lat": 23.1, "lng": float("nan")}, "lng must be a number"),
    ({"region": "440106\n"}, "region must be"),
    ({"region": "\u0664\u0664\u0660\u0661\u0660\u0666"}, "region must be"),  # Arabic-Indic digits
])
def test_locations_that_are_no_place_are_refused(world, location, message):
    inner = world["data"].codes.code(world["caps"], 32, "cap_inner")
    with pytest.raises(ValueError, match=message):
        _scan(world, inner, **location)


def test_the_landing_page_check_is_held_to_bans_and_counts_invalid_codes(world):
    """The read-only check must not be an unlimited oracle: forged guesses count towards
    the client's ban, and a banned client's checks are refused like its scans."""
    pipe, genuine = world["pipe"], world["data"].codes.code(world["caps"], 8, "cap_inner")
    assert pipe.check(genuine, "203.0.113.70").verdict == "genuine"
    for i in range(6):  # threshold 5
        assert pipe.check(f"1{'C' * 18}{i}", "203.0.113.70").verdict == "invalid"
    with pytest.raises(Banned):
        pipe.check(genuine, "203.0.113.70")
    with pytest.raises(Banned):  # and its scans too: one ban
        _scan(world, genuine, ip="203.0.113.70", device="fresh")
    assert pipe.check(genuine, "198.51.100.9").scan is None  # nothing recorded of the code
    assert world["pipe"].scans.count_events() == 0


def test_a_banned_client_is_refused_before_its_token_is_checked(world):
    for i in range(6):
        _scan(world, f"1{'D' * 18}{i}", ip="203.0.113.71", device=f"y{i}")
    case = world["data"].codes.code(world["cases"], 0, "case_inner")
    with pytest.raises(Banned):  # not Unauthorized: a banned client learns nothing of tokens
        _scan(world, case, actor_role="store", token="wm_s-1_" + "0" * 64, ip="203.0.113.71")


@pytest.mark.parametrize("typed", [
    lambda c: "".join(chr(ord(ch) + 0xFEE0) for ch in c),  # full-width (a Chinese input method)
    lambda c: "".join(chr(ord(ch) + 0xFEE0) for ch in c[:5]) + "\uff0d" + c[5:],  # and a full-width dash
    lambda c: "\u3000" + c.lower() + "\u3000",  # ideographic spaces
    lambda c: c[:5] + "\u2014" + c[5:10] + "\u2013" + c[10:],  # an input method's dashes
    lambda c: "\ufeff" + c[:7] + "\u200b" + c[7:],  # copied and pasted: a BOM, a zero-width space
])
def test_full_width_input_is_read(world, typed):
    code = world["data"].codes.code(world["caps"], 9, "cap_inner")
    assert _scan(world, typed(code)).verdict == "genuine"


def test_a_lone_surrogate_is_refused_not_counted_nor_verified(world):
    """JSON can carry "\\ud800": it must be refused whatever follows it (before, a forged
    guess after it escaped the ban count while a genuine code still verified)."""
    genuine = world["data"].codes.code(world["caps"], 10, "cap_inner")
    for code in ("\ud800/" + genuine, "\ud800/1" + "E" * 19):
        with pytest.raises(ValueError, match="lone surrogate"):
            _scan(world, code, ip="203.0.113.72")
