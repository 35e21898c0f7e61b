"""The admin API through a real `wuma serve` (gunicorn on loopback): tokens and roles,
the audit trail of every change, validation errors, vouchers redeemed exactly once over
HTTP, reads (stats, trace, alerts, bans), and no 500 anywhere."""

from __future__ import annotations

import http.client
import json
import urllib.parse
import re
import threading
import time

import pytest
from admin_world import WINDOW, build_admin_world, consumer_rule
from server import Server

from admin.openapi import ADMIN_OPENAPI

WRITE_ACTIONS = {"product.add", "pool.create", "pool.top_up", "campaign.create", "campaign.pause",
                 "campaign.resume", "campaign.close", "token.add", "token.reissue", "token.revoke", "ban.lift",
                 "voucher.sweep"}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    path = tmp_path_factory.mktemp("admin-http") / "wuma-data"
    # Clients at many addresses through a trusted proxy on loopback (for a ban).
    w = build_admin_world(path, invalid_threshold=5,
                          serve={"trusted_proxies": ["127.0.0.1"], "proxy_header": "X-Forwarded-For"})
    _, w["rep_token"] = w["data"].accounts.add("rep-1", "sales_rep", region="4401")
    # Eight stores in Guangzhou (s-1 is build_world's) for redemptions raced between stores.
    w["stores"] = {"s-1": w["store_token"]}
    for i in range(2, 9):
        _, w["stores"][f"s-{i}"] = w["data"].accounts.add(f"s-{i}", "store", region="440106", distributor="gz-1")
    w["admin"].close()
    w["data"].close()
    w["server"] = Server(path)
    w["path"] = path
    yield w
    w["server"].stop()


def call(live, method: str, path: str, body=None, *, role: str | None = None, token: str | None = None,
         headers: dict | None = None):
    """(status, JSON body, headers) of one request; ``role`` picks that admin token."""
    h = {"Content-Type": "application/json", **(headers or {})}
    if role is not None:
        token = live["tokens"][role]
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", live["server"].port, timeout=30)
    try:
        raw = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        conn.request(method, path, body=raw, headers=h)
        r = conn.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if "json" in (r.getheader("Content-Type") or "") else data), r
    finally:
        conn.close()


def ok(live, method, path, body=None, *, role="admin", status=200):
    got, doc, _ = call(live, method, path, body, role=role)
    assert got == status, (method, path, got, doc)
    return doc


def campaign_live(live, rule: dict) -> dict:
    """Create a campaign and wait until every worker's scan path sees it (workers poll
    the campaign version every 0.5 s: admin/rewards.py)."""
    c = ok(live, "POST", "/admin/api/campaigns", rule, role="operator", status=201)
    time.sleep(0.6)
    return c


def scan(live, serial: int, *, region: str = "440106", user: str = "u-1") -> dict:
    """A consumer's scan of cap ``serial``'s inner code, answered 200."""
    code = live["data"].codes.code(live["caps"], serial, "cap_inner")
    status, doc, _ = call(live, "POST", "/v1/scans", {"code": code, "actor": {"role": "consumer", "id": user},
                                                      "location": {"region": region}},
                          headers={"X-Forwarded-For": "198.51.100.1"})
    assert status == 200, doc
    return doc


# -- authentication and roles ----------------------------------------------------------------
@pytest.mark.parametrize("auth", [None, "Bearer ", "Bearer wma_admin-1_" + "0" * 64, "Bearer wma_nobody_" + "0" * 64,
                                  "Basic YWRtaW46YWRtaW4=", "store", "wrong-secret"])
def test_no_valid_admin_token_is_401(live, auth):
    if auth == "store":  # a scanning account's token is not an admin token
        auth = f"Bearer {live['store_token']}"
    elif auth == "wrong-secret":
        t = live["tokens"]["admin"]
        auth = "Bearer " + t[:-1] + ("0" if t[-1] != "0" else "1")
    for method, path in (("GET", "/admin/api/me"), ("GET", "/admin/api/campaigns"), ("POST", "/admin/api/pools"),
                         ("GET", "/admin/api/tokens"), ("POST", "/admin/api/campaigns/1/pause")):
        status, doc, r = call(live, method, path, {}, headers={"Authorization": auth} if auth else {})
        assert (status, doc["error"]) == (401, "unauthorized"), (method, path)
        assert r.getheader("WWW-Authenticate") == "Bearer"


def test_requests_without_a_valid_admin_token_show_in_the_log_without_it(tmp_path):
    """Someone guessing tokens left no trace (thousands a second answered 401); now each
    worker says so once a minute, with how many, never with what was sent."""
    from conftest_world import build_world

    w = build_world(tmp_path / "wuma-data")
    w["data"].close()
    server = Server(tmp_path / "wuma-data", workers=1)
    try:
        guess = "wma_" + "q7Zk" * 10
        for _ in range(20):
            c = server.conn()
            c.request("GET", "/admin/api/me", headers={"Authorization": f"Bearer {guess}"})
            assert c.getresponse().status == 401
            c.close()
        log = tmp_path / f"server-{server.port}.log"
        deadline = time.time() + 10
        while "without a valid admin token" not in log.read_text() and time.time() < deadline:
            time.sleep(0.1)
        lines = [line for line in log.read_text().splitlines() if "without a valid admin token" in line]
        assert len(lines) == 1 and "1 request(s)" in lines[0] and "/admin/api/me" in lines[0]
        assert guess not in log.read_text() and "q7Zk" not in log.read_text()
    finally:
        server.stop()


def test_a_burst_of_token_guesses_is_told_whole(tmp_path, caplog):
    """The first refusal is logged at once; the rest of a burst were never told unless
    another came a minute later (5,000 guesses logged as "1 request"): a timer tells them."""
    import logging

    from falcon import testing

    from admin.http import AdminAuth
    from admin.tokens import AdminTokens

    class Guarded:
        permissions = {"GET": "read"}

    w = build_admin_world(tmp_path / "wuma-data")
    try:
        auth = AdminAuth(AdminTokens(w["data"].store, w["admin"].audit), report_every=0.3)
        caplog.set_level(logging.WARNING, logger="wuma.http")
        for _ in range(20):
            req = testing.create_req(path="/admin/api/me", headers={"Authorization": "Bearer wma_guess"})
            with pytest.raises(Exception, match="401"):
                auth.process_resource(req, None, Guarded(), {})
        time.sleep(0.8)
        told = [r.getMessage() for r in caplog.records if "without a valid admin token" in r.getMessage()]
        assert [m.split(" request(s)")[0].rsplit(" ", 1)[-1] for m in told] == ["1", "19"], told
        assert all("wma_guess" not in m for m in told)
    finally:
        w["admin"].close()
        w["data"].close()


def test_roles_are_enforced(live):
    assert ok(live, "GET", "/admin/api/me", role="viewer")["role"] == "viewer"
    caps = live["caps"].id
    forbidden = [
        ("viewer", "POST", "/admin/api/products", {"sku": "V-1", "name": "x"}),
        ("viewer", "POST", "/admin/api/campaigns", consumer_rule(caps)),
        ("viewer", "POST", "/admin/api/pools/launch/top-up", {"amount": 1}),
        ("viewer", "POST", "/admin/api/vouchers/sweep", None),
        ("viewer", "GET", "/admin/api/tokens", None),
        ("operator", "POST", "/admin/api/pools", {"id": "op-pool", "total": 100}),
        ("operator", "POST", "/admin/api/tokens", {"name": "op-made", "role": "admin"}),
        ("operator", "GET", "/admin/api/tokens", None),
        ("operator", "POST", "/admin/api/tokens/viewer-1/revoke", None),
        ("operator", "POST", "/admin/api/tokens/operator-1/reissue", None),
        ("operator", "POST", "/admin/api/bans/lift", {"subject": "ip:203.0.113.1"}),
        ("operator", "POST", "/admin/api/ledger/1/reverse", {"reason": "test"}),
    ]
    before = ok(live, "GET", "/admin/api/audit?newest_first=true&limit=1")
    for role, method, path, body in forbidden:
        status, doc, _ = call(live, method, path, body, role=role)
        assert (status, doc["error"]) == (403, "forbidden"), (role, method, path, doc)
        assert role in doc["message"]
    # Refused requests changed nothing.
    assert ok(live, "GET", "/admin/api/audit?newest_first=true&limit=1") == before
    assert "op-pool" not in {p["id"] for p in ok(live, "GET", "/admin/api/pools", role="viewer")}
    # What each role may do, it may.
    for role in ("viewer", "operator", "admin"):
        for path in ("/admin/api/campaigns", "/admin/api/pools", "/admin/api/ledger", "/admin/api/audit",
                     "/admin/api/batches", "/admin/api/alerts", "/admin/api/bans", "/admin/api/payouts",
                     "/admin/api/products"):
            ok(live, "GET", path, role=role)
    ok(live, "POST", "/admin/api/products", {"sku": "OP-1", "name": "Operator's"}, role="operator", status=201)
    ok(live, "POST", "/admin/api/pools/launch/top-up", {"amount": 100}, role="operator")
    ok(live, "POST", "/admin/api/vouchers/sweep", role="operator")


def test_tokens_made_and_revoked_through_the_api(live):
    made = ok(live, "POST", "/admin/api/tokens", {"name": "ci-viewer", "role": "viewer"}, status=201)
    assert made["token"].startswith("wma_ci-viewer_") and made["created_by"] == "token:admin-1"
    listed = ok(live, "GET", "/admin/api/tokens")
    assert "ci-viewer" in {t["name"] for t in listed} and all("token" not in t for t in listed)
    assert call(live, "GET", "/admin/api/me", token=made["token"])[1]["name"] == "ci-viewer"
    again = ok(live, "POST", "/admin/api/tokens/ci-viewer/reissue")
    assert again == {**made, "token": again["token"]} and again["token"].startswith("wma_ci-viewer_")
    assert call(live, "GET", "/admin/api/me", token=made["token"])[0] == 401  # the old one, at once
    assert call(live, "GET", "/admin/api/me", token=again["token"])[1]["name"] == "ci-viewer"
    assert again["token"] not in json.dumps(ok(live, "GET", "/admin/api/tokens"))
    ok(live, "POST", "/admin/api/tokens/ci-viewer/revoke")
    assert call(live, "GET", "/admin/api/me", token=again["token"])[0] == 401
    status, doc, _ = call(live, "POST", "/admin/api/tokens/ci-viewer/reissue", role="admin")
    assert (status, doc["error"]) == (409, "conflict") and "revoked" in doc["message"]
    assert call(live, "POST", "/admin/api/tokens/ci-viewer/revoke", role="admin")[0] == 409
    assert call(live, "POST", "/admin/api/tokens", {"name": "ci-viewer", "role": "viewer"}, role="admin")[0] == 409
    status, doc, _ = call(live, "POST", "/admin/api/tokens", {"name": "x", "role": "root"}, role="admin")
    assert status == 400 and "role must be one of" in doc["message"]


# -- every change is audited ------------------------------------------------------------------------
def test_every_change_lands_in_the_audit_log(live):
    caps = live["caps"].id
    start = ok(live, "GET", "/admin/api/audit?newest_first=true&limit=1")[0]["seq"]
    t0 = time.time()
    ok(live, "POST", "/admin/api/products", {"sku": "GT-500", "name": "Green tea 500ml", "gtin": "06901234567892"},
       role="operator", status=201)
    ok(live, "POST", "/admin/api/pools", {"id": "audit-pool", "total": 50_000, "daily": 10_000}, status=201)
    ok(live, "POST", "/admin/api/pools/audit-pool/top-up", {"amount": 5_000}, role="operator")
    c = ok(live, "POST", "/admin/api/campaigns",
           {**consumer_rule(caps, name="Audited", pool="audit-pool"),
            "target": {"serials": [[caps, 40, 47]]}}, role="operator", status=201)
    for action in ("pause", "resume", "close"):
        assert ok(live, "POST", f"/admin/api/campaigns/{c['id']}/{action}", role="operator")["status"] == \
            {"pause": "paused", "resume": "active", "close": "closed"}[action]
    ok(live, "POST", "/admin/api/tokens", {"name": "audit-op", "role": "operator"}, status=201)
    ok(live, "POST", "/admin/api/tokens/audit-op/reissue")
    ok(live, "POST", "/admin/api/tokens/audit-op/revoke")
    ok(live, "POST", "/admin/api/vouchers/sweep", role="operator")
    # A client banned for enumerating codes, then let go.
    for i in range(7):
        call(live, "POST", "/v1/scans", {"code": f"1{'Q' * 17}{i:02d}"}, headers={"X-Forwarded-For": "203.0.113.77"})
    assert "ip:203.0.113.77" in {b["subject"] for b in ok(live, "GET", "/admin/api/bans", role="viewer")}
    lifted = ok(live, "POST", "/admin/api/bans/lift", {"subject": "ip:203.0.113.77"})
    assert lifted["lifted_at"] is not None
    assert "ip:203.0.113.77" not in {b["subject"] for b in ok(live, "GET", "/admin/api/bans")}
    assert "ip:203.0.113.77" in {b["subject"] for b in ok(live, "GET", "/admin/api/bans?all=true")}
    # a page at a time: `limit` (at most 1,000) and `after` the last subject shown
    every = ok(live, "GET", "/admin/api/bans?all=true&limit=1000")
    paged, after = [], ""
    while page := ok(live, "GET", f"/admin/api/bans?all=true&limit=1&after={after}" if after
                     else "/admin/api/bans?all=true&limit=1"):
        paged += page
        after = urllib.parse.quote(page[-1]["subject"])
    assert paged == every
    assert call(live, "GET", "/admin/api/bans?limit=1001", role="viewer")[0] == 400
    t1 = time.time()

    entries = ok(live, "GET", f"/admin/api/audit?after={start}&limit=1000", role="viewer")
    got = [(e["who"], e["action"], e["target"]) for e in entries]
    assert got == [
        ("token:operator-1", "product.add", "GT-500"),
        ("token:admin-1", "pool.create", "audit-pool"),
        ("token:operator-1", "pool.top_up", "audit-pool"),
        ("token:operator-1", "campaign.create", str(c["id"])),
        ("token:operator-1", "campaign.pause", str(c["id"])),
        ("token:operator-1", "campaign.resume", str(c["id"])),
        ("token:operator-1", "campaign.close", str(c["id"])),
        ("token:admin-1", "token.add", "audit-op"),
        ("token:admin-1", "token.reissue", "audit-op"),
        ("token:admin-1", "token.revoke", "audit-op"),
        ("token:operator-1", "voucher.sweep", "vouchers"),
        ("token:admin-1", "ban.lift", "ip:203.0.113.77"),
    ]
    assert {a for _, a, _ in got} == WRITE_ACTIONS
    for e in entries:
        assert t0 - 1 <= e["at"] <= t1 + 1 and isinstance(e["details"], dict)
    assert entries[2]["details"] == {"amount": 5_000, "total": 55_000}
    assert entries[7]["details"] == {"role": "operator"} and entries[8]["details"] == {}  # never the token itself
    # Newest first reads the same entries backwards.
    newest = ok(live, "GET", "/admin/api/audit?newest_first=true&limit=3")
    assert [e["seq"] for e in newest] == [e["seq"] for e in entries[::-1][:3]]


# -- validation ---------------------------------------------------------------------------------------
def _rule(live, **changes) -> dict:
    rule = consumer_rule(live["caps"].id, name="Invalid")
    rule["target"] = {"serials": [[live["caps"].id, 30, 39]]}
    rule.update(changes)
    return {k: v for k, v in rule.items() if v is not None}


@pytest.mark.parametrize("make, status, message", [
    (lambda w: _rule(w, reward={"kind": "draw", "tiers": [{"amount": 100, "odds": 0.3}]}), 400, "must sum to 1"),
    (lambda w: _rule(w, colour="red"), 400, "unknown campaign fields: colour"),
    (lambda w: _rule(w, pool="no-such-pool"), 404, "no pool no-such-pool"),
    (lambda w: _rule(w, window={"start": "2027-01-01T00:00", "end": "2026-01-01T00:00"}), 400,
     "start must come before the end"),
    (lambda w: _rule(w, reward={"kind": "fixed", "amount": 10**9}), 400, "smaller than the smallest prize"),
    (lambda w: _rule(w, trigger={"code_role": "cap_lid", "actor_role": "consumer"}), 400, "code_role must be one of"),
    (lambda w: _rule(w, trigger={"code_role": ["cap_inner"], "actor_role": "consumer"}), 400, "code_role"),
    (lambda w: _rule(w, target={"batches": [999]}), 404, "no batch 999"),
    (lambda w: _rule(w, name=None), 400, "a campaign needs \"name\""),
    (lambda w: b"{not json", 400, "not valid JSON"),
    (lambda w: [1, 2], 400, "must be a JSON object"),
    (lambda w: _rule(w, pool=""), 400, "pool: the id of a budget pool"),
    (lambda w: _rule(w, target={"skus": ["S" * 600]}), 400, "target skus"),
    (lambda w: _rule(w, window={"start": 0, "end": 10**400}), 400, "the year 9999"),
    (lambda w: json.dumps(_rule(w, window={"start": float("nan"), "end": 2e9})).encode(), 400, "not valid JSON"),
    (lambda w: b'{"name": ' + b"[" * 3000 + b"]" * 3000 + b"}", 400, "not valid JSON"),
])
def test_campaign_validation_errors_carry_the_library_message(live, make, status, message):
    got, doc, _ = call(live, "POST", "/admin/api/campaigns", make(live), role="operator")
    assert got == status and message in doc["message"], doc
    assert doc["error"] in ("bad_request", "bad_json", "not_found")


def test_conflicts_and_missing_things(live):
    caps = live["caps"].id
    rule = {**consumer_rule(caps, name="Only one"), "target": {"serials": [[caps, 20, 29]]}}
    first = ok(live, "POST", "/admin/api/campaigns", rule, role="operator", status=201)
    status, doc, _ = call(live, "POST", "/admin/api/campaigns", {**rule, "name": "Overlapping"}, role="operator")
    assert (status, doc["error"]) == (409, "conflict") and f"campaign {first['id']}" in doc["message"]
    ok(live, "POST", f"/admin/api/campaigns/{first['id']}/close", role="operator")
    status, doc, _ = call(live, "POST", f"/admin/api/campaigns/{first['id']}/resume", role="operator")
    assert status == 409 and "closed" in doc["message"]
    for method, path, body in (("POST", "/admin/api/campaigns/99999/pause", None),
                               ("GET", "/admin/api/campaigns/99999", None),
                               ("GET", "/admin/api/pools/nowhere", None),
                               ("POST", "/admin/api/pools/nowhere/top-up", {"amount": 1}),
                               ("POST", "/admin/api/tokens/nobody/revoke", None),
                               ("POST", "/admin/api/tokens/nobody/reissue", None),
                               ("POST", "/admin/api/bans/lift", {"subject": "ip:192.0.2.1"}),
                               ("GET", "/admin/api/payouts/99999", None),
                               ("POST", "/admin/api/ledger/99999/reverse", {"reason": "typo"})):
        status, doc, _ = call(live, method, path, body, role="admin")
        assert (status, doc["error"]) == (404, "not_found"), (path, doc)
    assert call(live, "POST", "/admin/api/pools", {"id": "launch", "total": 1}, role="admin")[0] == 409
    for path, body, message in (("/admin/api/pools", {"id": "bad id", "total": 1}, "pool id"),
                                ("/admin/api/pools", {"id": "p2", "total": 0}, "pool total"),
                                ("/admin/api/pools", {"id": "p2", "total": "lots"}, "\"total\" must be a whole number"),
                                ("/admin/api/pools", {"id": "p2", "total": 10, "daily": 20}, "daily cap"),
                                ("/admin/api/pools/launch/top-up", {"amount": -5}, "top-up"),
                                ("/admin/api/products", {"sku": "P-9", "name": "x", "gtin": "123"}, "GTIN"),
                                ("/admin/api/products", {"sku": "P-9"}, "\"name\" is required"),
                                ("/admin/api/ledger/1/reverse", {"reason": " "}, "why")):
        status, doc, _ = call(live, "POST", path, body, role="admin")
        assert status == 400 and message in doc["message"], (path, doc)
    for query in ("kind=gift", "limit=0", "after=-1", "campaign=x", f"after={2**64}"):
        status, doc, _ = call(live, "GET", f"/admin/api/ledger?{query}", role="viewer")
        assert (status, doc["error"]) == (400, "bad_request"), query
    assert call(live, "GET", "/admin/api/campaigns?status=sleeping", role="viewer")[0] == 400
    assert call(live, "GET", "/admin/api/stats?days=0", role="viewer")[0] == 400


# -- vouchers ---------------------------------------------------------------------------------------------
def test_voucher_redeemed_exactly_once_over_http(live):
    caps = live["caps"].id
    c = campaign_live(live, {
        "name": "Swap for 5 yuan", "pool": "launch", "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
        "target": {"serials": [[caps, 0, 9]]}, "window": WINDOW,
        "reward": {"kind": "fixed", "amount": 500, "payout": "voucher", "valid_days": 30}})
    answer = scan(live, 3, user="u-voucher")
    [reward] = [r for r in answer["rewards"] if r["campaign"] == c["id"]]
    assert reward["outcome"] == "voucher" and reward["amount"] == 500
    vid = reward["voucher"]
    seen = ok(live, "GET", f"/v1/vouchers/{vid}", role=None)
    assert seen["state"] == "issued" and seen["value"] == 500 and "holder" not in seen
    assert call(live, "GET", f"/v1/vouchers/{vid.lower()}")[1]["id"] == vid  # read as typed by a person

    body = {"voucher": vid}
    for token, status, error in ((None, 401, "unauthorized"), (live["tokens"]["admin"], 401, "unauthorized"),
                                 (live["rep_token"], 403, "forbidden")):
        got, doc, _ = call(live, "POST", "/v1/vouchers/redeem", body, token=token)
        assert (got, doc["error"]) == (status, error)
    assert call(live, "POST", "/v1/vouchers/redeem", {"voucher": "VNOSUCHVOUCHER0000000"},
                token=live["store_token"])[0] == 404
    assert call(live, "POST", "/v1/vouchers/redeem", {"voucher": vid, "extra": 1},
                token=live["store_token"])[0] == 400

    # Sixteen tills press "redeem" at the same moment, two at each of eight stores: one store
    # wins. Its other till is answered with that same redemption, as a repeat (a till
    # retrying after a lost answer is told it was credited); every other store is refused.
    tills = [store for store in sorted(live["stores"]) for _ in range(2)]
    results: list[tuple[str, int, dict]] = []
    barrier = threading.Barrier(len(tills))

    def redeem(store):
        barrier.wait()
        status, doc, _ = call(live, "POST", "/v1/vouchers/redeem", body, token=live["stores"][store])
        results.append((store, status, doc))

    threads = [threading.Thread(target=redeem, args=(store,)) for store in tills]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(status for _, status, _ in results) == [200] * 2 + [409] * 14, results
    (winner, won), (_, repeat) = sorted(((s, d) for s, status, d in results if status == 200),
                                        key=lambda x: x[1]["repeat"])
    assert [s for s, status, _ in results if status == 200] == [winner, winner]
    assert won["state"] == "redeemed" and won["redeemed_by"] == winner and won["repeat"] is False
    assert repeat == {**won, "repeat": True}  # the same redemption: same ledger entry, same time
    assert all(d["message"] == "voucher already redeemed" for s, status, d in results if status == 409)
    schema = ADMIN_OPENAPI["paths"]["/v1/vouchers/redeem"]["post"]["responses"]["200"]
    assert set(schema["content"]["application/json"]["schema"]["required"]) <= set(won)
    # Later, the winner's till sends it once more: the same answer; another store: 409.
    assert call(live, "POST", "/v1/vouchers/redeem", body, token=live["stores"][winner])[:2] == (200, repeat)
    other = next(s for s in live["stores"] if s != winner)
    status, doc, _ = call(live, "POST", "/v1/vouchers/redeem", body, token=live["stores"][other])
    assert (status, doc["message"]) == (409, "voucher already redeemed")
    assert ok(live, "GET", f"/v1/vouchers/{vid}", role=None)["state"] == "redeemed"
    redeems = [e for e in ok(live, "GET", "/admin/api/ledger?kind=redeem&limit=1000", role="viewer")
               if e.get("voucher") == vid]
    assert len(redeems) == 1 and redeems[0]["beneficiary"] == {"role": "store", "id": winner}
    assert redeems[0]["seq"] == won["ledger"] and redeems[0]["amount"] == 500
    assert call(live, "GET", "/v1/vouchers/VNOSUCHVOUCHER0000000")[0] == 404


def test_a_top_up_sent_again_with_its_idempotency_key_is_done_once(live):
    ok(live, "POST", "/admin/api/pools", {"id": "idem-pool", "total": 10_000}, status=201)
    path = "/admin/api/pools/idem-pool/top-up"
    key = {"Idempotency-Key": "0b7c9e0a-5a8e-4a39-9f3e-2d1c7a6b5e4f"}
    status, first, r = call(live, "POST", path, {"amount": 500}, role="operator", headers=key)
    assert (status, first["total"], r.getheader("Idempotent-Replayed")) == (200, 10_500, None)
    status, again, r = call(live, "POST", path, {"amount": 500}, role="operator", headers=key)
    assert (status, again, r.getheader("Idempotent-Replayed")) == (200, first, "true")
    status, doc, _ = call(live, "POST", path, {"amount": 600}, role="operator", headers=key)
    assert (status, doc["error"]) == (409, "conflict") and "a new top-up needs a new key" in doc["message"]
    for bad in ("", "two words", "k" * 256):
        status, doc, _ = call(live, "POST", path, {"amount": 1}, role="operator", headers={"Idempotency-Key": bad})
        assert status == 400 and "Idempotency-Key" in doc["message"], (bad, doc)

    # Eight retries of one top-up at once, across the workers: done once.
    key = {"Idempotency-Key": "retry-storm-1"}
    results: list[tuple[int, dict, str | None]] = []
    barrier = threading.Barrier(8)

    def top_up():
        barrier.wait()
        status, doc, r = call(live, "POST", path, {"amount": 1_000}, role="operator", headers=key)
        results.append((status, doc, r.getheader("Idempotent-Replayed")))

    threads = [threading.Thread(target=top_up) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [s for s, _, _ in results] == [200] * 8
    assert sorted(str(h) for _, _, h in results) == ["None"] + ["true"] * 7
    assert all(doc == results[0][1] for _, doc, _ in results) and results[0][1]["total"] == 11_500
    # Without a key, each top-up is a top-up (as before).
    ok(live, "POST", path, {"amount": 100}, role="operator")
    assert ok(live, "POST", path, {"amount": 100}, role="operator")["total"] == 11_700
    audited = [e["details"] for e in ok(live, "GET", "/admin/api/audit?limit=1000", role="viewer")
               if e["action"] == "pool.top_up" and e["target"] == "idem-pool"]
    assert audited == [{"amount": 500, "total": 10_500, "idempotency_key": "0b7c9e0a-5a8e-4a39-9f3e-2d1c7a6b5e4f"},
                       {"amount": 1_000, "total": 11_500, "idempotency_key": "retry-storm-1"},
                       {"amount": 100, "total": 11_600}, {"amount": 100, "total": 11_700}]
    params = ADMIN_OPENAPI["paths"]["/admin/api/pools/{pool}/top-up"]["post"]["parameters"]
    assert "Idempotency-Key" in {p["name"] for p in params if p["in"] == "header"}


@pytest.mark.parametrize("path, body, field", [
    ("/admin/api/products", {"sku": "NUL-1", "name": "Green tea\u0000"}, "product name"),
    ("/admin/api/products", {"sku": "BIDI-1", "name": "Green tea \u202egpj.exe"}, "product name"),
    ("/admin/api/pools", {"id": "bidi-pool", "total": 100, "name": "\u202eSummer"}, "pool name"),
    ("/admin/api/pools", {"id": "esc-pool", "total": 100, "name": "Summer\u001b[2J"}, "pool name"),
    ("/admin/api/campaigns", "Cap draw\u0000", "campaign name"),
    ("/admin/api/campaigns", "\u202eCap draw", "campaign name"),
])
def test_names_with_control_characters_are_refused(live, path, body, field):
    if isinstance(body, str):
        body = {**consumer_rule(live["caps"].id, name=body), "target": {"serials": [[live["caps"].id, 44, 45]]}}
    status, doc, _ = call(live, "POST", path, body, role="admin")
    assert (status, doc["error"]) == (400, "bad_request") and doc["message"].startswith(f"{field}: no control"), doc


@pytest.mark.parametrize("path, body, field", [
    ("/admin/api/products", {"sku": "SUR-1", "name": "Green \ud800tea"}, "product name"),
    ("/admin/api/pools", {"id": "sur-pool", "total": 100, "name": "x\udfffy"}, "pool name"),
    ("/admin/api/campaigns", "Cap \ud800draw", "campaign name"),
])
def test_names_with_a_lone_surrogate_are_refused_with_a_message_for_a_person(live, path, body, field):
    """JSON may carry "\ud800", which is no text: it was answered with Python's codec error."""
    if isinstance(body, str):
        body = {**consumer_rule(live["caps"].id, name=body), "target": {"serials": [[live["caps"].id, 44, 45]]}}
    status, doc, _ = call(live, "POST", path, body, role="admin")
    assert (status, doc["error"]) == (400, "bad_request"), doc
    assert doc["message"].startswith(f"{field}: must be Unicode text; it holds a lone surrogate"), doc
    assert "codec" not in doc["message"]


def test_a_page_mark_past_every_sequence_number_is_a_400_not_a_500(live, tmp_path):
    """`before` of 2^64 and more answered 500 (it became an 8-byte key)."""
    for before in (2**63, 2**64, 10**30):
        status, doc, _ = call(live, "GET", f"/admin/api/alerts?before={before}", role="viewer")
        assert (status, doc["error"]) == (400, "bad_request") and "before" in doc["message"], doc
    assert call(live, "GET", f"/admin/api/alerts?before={2**63 - 1}", role="viewer")[0] == 200
    from engine.scanlog import ScanLog
    from engine.store import Store

    store = Store(tmp_path / "db")
    try:
        with pytest.raises(ValueError, match="before must be a scan sequence number"):
            ScanLog(store).alerts(before=2**64)
    finally:
        store.env.close()


def test_a_ban_subject_with_a_lone_surrogate_is_refused_with_a_message_for_a_person(live):
    status, doc, _ = call(live, "POST", "/admin/api/bans/lift", {"subject": "device:x\ud800"}, role="admin")
    assert (status, doc["error"]) == (400, "bad_request"), doc
    assert doc["message"].startswith("subject: must be Unicode text; it holds a lone surrogate"), doc


def test_region_caps_written_two_ways_for_one_region_are_refused(live):
    status, doc, _ = call(live, "POST", "/admin/api/pools",
                          {"id": "gz-pool", "total": 1_000, "regions": {"4401": 500, "440100": 500}}, role="admin")
    assert status == 400 and "region caps 4401 and 440100 are the same region" in doc["message"], doc
    pool = ok(live, "POST", "/admin/api/pools", {"id": "gz-pool", "total": 1_000, "regions": {"440100": 500}},
              status=201)
    assert pool["regions"] == {"440100": 500}  # kept as typed


# -- reads -----------------------------------------------------------------------------------------------
def test_trace_stats_pools_alerts(live):
    caps = live["caps"].id
    c = campaign_live(live, {**consumer_rule(caps, name="Stats draw"), "target": {"serials": [[caps, 10, 19]]}})
    granted = scan(live, 12, user="u-stats")
    assert [r["outcome"] for r in granted["rewards"] if r["campaign"] == c["id"]] == ["granted"]
    diverted = scan(live, 35, region="330106", user="u-far")  # no campaign on serial 35
    assert "diverted" in diverted["flags"]

    code = live["data"].codes.code(live["caps"], 12, "cap_inner")
    trace = ok(live, "GET", f"/admin/api/trace/{code}", role="viewer")
    assert trace["unit"]["code"] == code and trace["product"]["sku"] == "SKU-1"
    assert trace["distributor"]["id"] == "gz-1"
    for bad in ("1" + "Z" * 19, "hello", code[:-1] + ("0" if code[-1] != "0" else "1")):
        status, doc, _ = call(live, "GET", f"/admin/api/trace/{bad}", role="viewer")
        assert (status, doc["error"]) == (404, "invalid")

    pool = ok(live, "GET", "/admin/api/pools/launch", role="viewer")
    assert pool["spent"] >= 100 and sum(pool["by_day"].values()) == pool["spent"]
    alerts = ok(live, "GET", "/admin/api/alerts?distributor=gz-1", role="viewer")
    assert alerts["counts"]["gz-1"] >= 1 and alerts["alerts"][0]["diverted"]["distributor"] == "gz-1"
    ledger = ok(live, "GET", f"/admin/api/ledger?campaign={c['id']}&kind=grant", role="viewer")
    assert [(e["amount"], e["beneficiary"]["id"]) for e in ledger] == [(100, "u-stats")]
    assert {b["id"] for b in ok(live, "GET", "/admin/api/batches", role="viewer")} >= {caps}

    stats = ok(live, "GET", "/admin/api/stats?days=7", role="viewer")
    assert {"scans", "scan_rate", "pools", "campaigns", "diversion", "top_stores"} <= set(stats)
    assert stats["scans"]["totals"]["actor_role"]["consumer"] >= 2
    assert stats["diversion"]["by_distributor"]["gz-1"]["window"] >= 1
    assert stats["campaigns"][str(c["id"])]["ledger"]["grant"] == {"count": 1, "amount": 100}
    assert "launch" in stats["pools"]

    payouts = ok(live, "GET", "/admin/api/payouts", role="viewer")
    assert payouts["pending"]["count"] >= 1
    seq = ledger[0]["seq"]
    assert ok(live, "GET", f"/admin/api/payouts/{seq}", role="viewer")["state"] == "pending"
    status, doc, _ = call(live, "POST", f"/admin/api/payouts/{seq}/retry", role="operator")
    assert status == 409 and "only a rejected payout" in doc["message"]
    # An admin reverses the unpaid grant: the budget returns, the audit log says who and why.
    spent = pool["spent"]
    ok(live, "POST", f"/admin/api/ledger/{seq}/reverse", {"reason": "test grant"})
    assert ok(live, "GET", "/admin/api/pools/launch")["spent"] == spent - 100
    last = ok(live, "GET", "/admin/api/audit?newest_first=true&limit=1")[0]
    assert (last["who"], last["action"], last["target"]) == ("token:admin-1", "ledger.reverse", str(seq))
    assert call(live, "POST", f"/admin/api/ledger/{seq}/reverse", {"reason": "again"}, role="admin")[0] == 409


# -- the page and the document ------------------------------------------------------------------------------
def test_admin_page_is_served_with_a_strict_policy(live):
    status, html, r = call(live, "GET", "/admin")
    assert status == 200 and r.getheader("Content-Type").startswith("text/html")
    assert b'id="login-form"' in html and b"<script src=\"/admin/static/admin.js\"" in html
    csp = r.getheader("Content-Security-Policy")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    status, js, r = call(live, "GET", "/admin/static/admin.js")
    assert status == 200 and r.getheader("Content-Type").startswith("text/javascript")
    for sink in (b".innerHTML", b".outerHTML", b"insertAdjacentHTML", b"document.write", b"eval("):
        assert sink not in js  # data reaches the page through textContent only


def test_openapi_describes_every_route(live):
    from falcon.inspect import inspect_routes

    from admin.http import create_app
    from engine import DataFolder

    data = DataFolder(live["path"])
    try:
        app = create_app(data)
        # /admin/api/campaigns/{campaign:int(min=1, ...)} is /admin/api/campaigns/{campaign} there
        routes = {re.sub(r"\{(\w+):[^}]*\}", r"{\1}", route.path):
                  {m.method.lower() for m in route.methods if not m.internal}
                  for route in inspect_routes(app)}
    finally:
        data.close()
    documented = {p: {m for m in ops if m in ("get", "post", "put", "patch", "delete")}
                  for p, ops in ADMIN_OPENAPI["paths"].items()}
    assert routes == documented
    for path, ops in ADMIN_OPENAPI["paths"].items():
        for method, op in ops.items():
            if path.startswith("/admin/api/"):
                assert op["security"] == [{"adminToken": []}]
                assert {"401", "403"} <= set(op["responses"]), (path, method)


def test_no_server_errors(live):
    """Runs last in this module: nothing above made the server answer 500."""
    log = (live["path"].parent / f"server-{live['server'].port}.log").read_text()
    assert "unhandled error" not in log and "Traceback" not in log


def test_a_full_store_is_a_503_on_every_write_not_a_500(tmp_path, monkeypatch, caplog):
    """The map or the disk full (or an I/O error) in the admin API or a voucher redemption:
    503 storage_unavailable with Retry-After, logged once a minute, no trace; as scans."""
    import lmdb
    from falcon import testing

    from admin.http import create_app
    from admin.pools import PoolRegistry
    from admin.rewards import RewardEngine
    from engine import http_errors
    from engine.every import Every

    w = build_admin_world(tmp_path / "wuma-data")
    try:
        client = testing.TestClient(create_app(w["data"], admin=w["admin"]))

        def full(*args, **kwargs):
            raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL: Environment mapsize limit reached")

        monkeypatch.setattr(PoolRegistry, "create", full)
        monkeypatch.setattr(RewardEngine, "redeem", full)
        monkeypatch.setattr(http_errors, "_storage_logged", Every(60))  # nothing logged yet
        admin = {"Authorization": f"Bearer {w['tokens']['admin']}"}
        for _ in range(2):
            got = client.simulate_post("/admin/api/pools", json={"id": "p2", "total": 100}, headers=admin)
            assert got.status_code == 503 and got.json["error"] == "storage_unavailable"
            assert got.headers["Retry-After"] == "60" and "try again later" in got.json["message"]
        got = client.simulate_post("/v1/vouchers/redeem", json={"voucher": "V-1"},
                                   headers={"Authorization": f"Bearer {w['store_token']}"})
        assert got.status_code == 503 and got.json["error"] == "storage_unavailable"
        assert "unhandled" not in caplog.text and "Traceback" not in caplog.text
        assert caplog.text.count("cannot take") == 1  # once a minute, not once a request
        assert "503" in ADMIN_OPENAPI["paths"]["/admin/api/pools"]["post"]["responses"]
    finally:
        w["admin"].close()
        w["data"].close()
