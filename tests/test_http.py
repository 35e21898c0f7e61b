"""The scan API through a real gunicorn on loopback: verdicts, errors, bans across
workers, metrics, the OpenAPI document, and kill -9 during load."""

from __future__ import annotations

import fcntl
import http.client
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager

import jsonschema
import pytest
from conftest_world import build_world
from server import ROOT, Server

from engine import DataFolder
from engine.http_scan import JSON_HANDLER
from engine.openapi import OPENAPI
from engine.scanlog import TURN_FILE, ScanLog, bulk_write


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    path = tmp_path_factory.mktemp("http") / "wuma-data"
    # The tests play clients at many addresses through a trusted proxy on loopback.
    w = build_world(path, invalid_threshold=20,
                    serve={"trusted_proxies": ["127.0.0.1"], "proxy_header": "X-Forwarded-For"})
    w["data"].close()
    server = Server(path)
    w["server"] = server
    w["path"] = path
    yield w
    server.stop()


def _schema(path: str, method: str, status: int) -> dict:
    """An answer's schema in the OpenAPI document, as JSON Schema (which has no
    ``nullable``: OpenAPI 3.0's ``{"type": T, "nullable": true}`` is ``[T, "null"]``)."""
    return _json_schema(OPENAPI["paths"][path][method]["responses"][str(status)]["content"]
                        ["application/json"]["schema"])


def _json_schema(node):
    if isinstance(node, list):
        return [_json_schema(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out


def test_verdicts_over_http(live):
    s, codes = live["server"], live["data"].codes
    inner = codes.code(live["caps"], 40, "cap_inner")
    status, body = s.scan({"code": live["data"].url_base + inner, "location": {"region": "440106"},
                           "device": "d-1", "actor": {"role": "consumer", "id": "u-1"}})
    assert status == 200 and body["verdict"] == "genuine" and body["scan"]["count"] == 1
    jsonschema.validate(body, _schema("/v1/scans", "post", 200))
    status, body = s.scan({"code": inner.lower(), "device": "d-1"})
    assert body["scan"]["count"] == 2
    assert s.scan({"code": codes.code(live["inactive"], 1, "cap_inner")})[1]["verdict"] == "inactive"
    assert s.scan({"code": "1" + "Z" * 19})[1] == {"verdict": "invalid"}
    diverted = s.scan({"code": codes.code(live["caps"], 41, "cap_inner"), "location": {"region": "330106"}})[1]
    assert "diverted" in diverted["flags"] and diverted["diversion"]["distributor"] == "gz-1"
    status, body = s.get(f"/v1/codes/{inner}")
    assert status == 200 and body["scan"]["count"] == 2
    jsonschema.validate(body, _schema("/v1/codes/{code}", "get", 200))


def test_the_check_shows_a_code_flagged_copied(live):
    """A code flagged copied by POST /v1/scans is answered copied by GET /v1/codes/{code}
    (the landing page can warn); one place at three precisions is no copy."""
    s, code = live["server"], live["data"].codes.code
    inner, other = code(live["caps"], 42, "cap_inner"), code(live["caps"], 43, "cap_inner")
    for r in ["440106", "440106001", "440100"]:
        assert s.scan({"code": other, "location": {"region": r}, "device": "phone"})[1]["flags"] == []
    assert s.get(f"/v1/codes/{other}")[1]["flags"] == []
    # NOTE: from three clients (one alone never makes a code copied: test_copied_clients.py)
    flags = [s.scan({"code": inner, "location": {"region": r}, "device": f"d-{i}"},
                    {"X-Forwarded-For": f"192.0.2.{30 + i}"})[1]["flags"]
             for i, r in enumerate(["440100", "440300", "110101"])]
    assert ["copied" in f for f in flags] == [False, False, True]  # (and diverted: gz-1 is 4401)
    status, body = s.get(f"/v1/codes/{inner}")
    assert status == 200 and body["flags"] == ["copied"] and body["scan"]["count"] == 3
    jsonschema.validate(body, _schema("/v1/codes/{code}", "get", 200))


def test_accounts_over_http(live):
    s, codes = live["server"], live["data"].codes
    case_inner = codes.code(live["cases"], 1, "case_inner")
    body = {"code": case_inner, "actor": {"role": "store", "id": "s-1"}}
    status, err = s.scan(body)
    assert status == 401 and err["error"] == "unauthorized"
    status, ok = s.scan(body, {"Authorization": f"Bearer {live['store_token']}"})
    assert status == 200 and ok["verdict"] == "genuine" and ok["flags"] == []


@pytest.mark.parametrize("body, status, error", [
    (b"{not json", 400, "bad_json"),
    (b"[1, 2]", 400, "bad_request"),
    ({"code": 5}, 400, "bad_request"),
    ({"code": "x", "location": {"region": "Guangzhou"}}, 400, "bad_request"),
    ({"code": "x", "location": {"lat": 200}}, 400, "bad_request"),
    ({"code": "x", "actor": {"role": "admin"}}, 400, "bad_request"),
    ({"code": "x", "extra": 1}, 400, "bad_request"),
    (b"x" * 20000, 413, "request_too_large"),
    (b'{"code": "x", "device": ' + b"[" * 2000 + b"]" * 2000 + b"}", 400, "bad_json"),  # too deep
    (b'{"code": "x", "location": {"lat": NaN}}', 400, "bad_json"),  # not JSON (RFC 8259)
    ({"code": "x", "location": {"lat": 10**400}}, 400, "bad_request"),  # too large for a float
    ({"code": "x", "device": "\U0001F600" * 128}, 400, "bad_request"),  # 512 bytes: too long a key
    ({"code": "x", "location": {"region": "440106\n"}}, 400, "bad_request"),
    # control characters would drive an operator's terminal (wuma bans, ledger list)
    ({"code": "x", "device": "d\x1b]52;c;ZXZpbA==\x07"}, 400, "bad_request"),
    ({"code": "x", "actor": {"role": "consumer", "id": "u-1\r\nforged"}}, 400, "bad_request"),
    ({"code": "x", "location": {"region": "\u0664\u0664\u0660\u0661\u0660\u0666"}}, 400, "bad_request"),
])
def test_bad_requests_get_json_errors(live, body, status, error):
    got_status, got = live["server"].scan(body)
    assert (got_status, got["error"]) == (status, error)
    assert "Traceback" not in got["message"]


@pytest.mark.parametrize("where, message", [
    ({"location": {"regoin": "330106"}}, "unknown fields: location.regoin"),
    ({"actor": {"role": "consumer", "user": "u-1"}}, "unknown fields: actor.user"),
    ({"location": {"lat": 30.27}}, "lat and lng must be given together"),
    ({"location": {"lat": None, "lng": 120.15}}, "lat and lng must be given together"),
])
def test_a_misspelt_or_half_location_is_refused_not_dropped(live, where, message):
    """Before, a misspelt region was dropped unseen (and no diversion judged), and so was
    a latitude without its longitude: the scan answered 200 as if sent without them."""
    code = live["data"].codes.code(live["caps"], 3, "cap_inner")
    status, got = live["server"].scan({"code": code, **where})
    assert (status, got["error"]) == (400, "bad_request") and message in got["message"], got


@pytest.mark.parametrize("raw, status", [
    (b"GET /v1/codes/" + b"A" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400),
    (b"POST /v1/scans HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 10000 + b"\r\n\r\n", 431),
    (b"GARBAGE\r\n\r\n", 400),
])
def test_requests_the_server_cannot_parse_get_json_errors(live, raw, status):
    """What gunicorn refuses before the app sees it is answered in the API's error shape."""
    import socket

    with socket.create_connection(("127.0.0.1", live["server"].port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    assert "content-type: application/json" in (line.lower() for line in lines)
    doc = json.loads(body)
    assert set(doc) == {"error", "message"} and doc["error"] and doc["message"]


def test_bodies_in_chunks_and_on_one_connection(live):
    """A chunked body (no Content-Length) is read to its end, and each of several requests
    on one keep-alive connection gets its own body's answer."""
    s = live["server"]
    genuine = live["data"].codes.code(live["caps"], 4, "cap_inner")
    conn = s.conn()
    try:
        body = json.dumps({"code": genuine, "device": "chunky"}).encode()
        conn.request("POST", "/v1/scans", body=iter([body[:7], body[7:20], body[20:]]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["verdict"] == "genuine"
        conn.request("POST", "/v1/scans", body=iter([b"x" * 9000, b"y" * 9000]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        assert r.status == 413 and json.loads(r.read())["error"] == "request_too_large"
    finally:
        conn.close()
    conn = s.conn()
    try:
        for code, verdict in ((genuine, "genuine"), ("1" + "Q" * 19, "invalid"), (genuine, "genuine")):
            status, got = s.scan({"code": code, "device": "keepalive"}, conn=conn)
            assert (status, got["verdict"]) == (200, verdict)
    finally:
        conn.close()


def test_ban_holds_across_workers(live):
    s = live["server"]
    # Each request on a fresh connection: gunicorn spreads them over both workers.
    flood = {"X-Forwarded-For": "203.0.113.50"}
    results = [s.scan({"code": f"1{'Q' * 17}{i:02d}", "device": f"rotating-{i}"}, flood)[0]
               for i in range(30)]
    assert results[:21] == [200] * 21 and set(results[21:]) == {403}
    genuine = live["data"].codes.code(live["caps"], 3, "cap_inner")
    status, body = s.scan({"code": genuine, "device": "fresh"}, flood)
    assert status == 403 and body["error"] == "banned"
    other = {"X-Forwarded-For": "198.51.100.23"}
    assert s.scan({"code": genuine, "device": "someone-else"}, other)[0] == 200
    status, bans = 0, DataFolder(live["path"]).abuse.list_bans()
    assert [b.subject for b in bans] == ["ip:203.0.113.50"] and len(bans[0].evidence) == 21


def test_rate_limits_per_client_and_per_account(live):
    """Past ``rate_per_minute`` (600 here) in a minute a client gets 429 ``rate_limited``
    with Retry-After; an account is held to it across all its addresses and devices."""
    s, codes = live["server"], live["data"].codes
    if time.time() % 60 > 45:  # all in one minute's window
        time.sleep(61 - time.time() % 60)
    genuine = codes.code(live["caps"], 11, "cap_inner")
    conn = s.conn()
    one_ip = {"X-Forwarded-For": "203.0.113.90"}
    got = [s.scan({"code": genuine, "device": f"rate-{i}"}, one_ip, conn=conn) for i in range(640)]
    assert [st for st, _ in got[:590]] == [200] * 590  # none refused early
    refused = [body for st, body in got[590:] if st == 429]
    assert refused and {b["error"] for b in refused} == {"rate_limited"}
    conn.request("POST", "/v1/scans", body=json.dumps({"code": genuine, "device": "rate-x"}),
                 headers={"Content-Type": "application/json", **one_ip})
    r = conn.getresponse()
    r.read()
    assert r.status == 429 and 0 < int(r.getheader("Retry-After")) <= 60

    with DataFolder(live["path"]) as data:  # a store scanning from many addresses and devices
        _, token = data.accounts.add("s-rate", "store", region="440106", distributor="gz-1")
    auth = {"Authorization": f"Bearer {token}"}
    case_inner = codes.code(live["cases"], 0, "case_inner")
    statuses = [s.scan({"code": case_inner, "actor": {"role": "store"}, "device": f"pda-{i}"},
                       {**auth, "X-Forwarded-For": f"198.51.{100 + i // 250}.{i % 250}"}, conn=conn)[0]
                for i in range(640)]
    assert statuses[:590] == [200] * 590 and 429 in statuses[590:]
    conn.close()


def test_metrics_and_openapi(live):
    s = live["server"]
    code = live["data"].codes.code(live["caps"], 7, "cap_inner")
    status, _ = s.scan({"code": code, "device": "metrics-1"}, {"X-Forwarded-For": "198.51.100.77"})
    assert status == 200
    time.sleep(1.2)  # workers flush their counters once a second
    status, text = s.get("/metrics")
    assert status == 200 and 'wuma_scans_total{verdict="genuine"}' in text
    assert "wuma_scan_latency_seconds_bucket" in text and "wuma_bans_active" in text
    lines = text.splitlines()  # Prometheus text format: a family's TYPE before its samples
    for family in ("wuma_scans_total", "wuma_scans_refused_total", "wuma_scan_latency_seconds",
                   "wuma_bans_active"):
        typed = lines.index(next(x for x in lines if x.startswith(f"# TYPE {family} ")))
        samples = [i for i, x in enumerate(lines) if x.startswith(family + "{") or x.startswith(family + " ")
                   or x.startswith(family + "_bucket") or x.startswith(family + "_sum")
                   or x.startswith(family + "_count")]
        assert samples and min(samples) == typed + 1 and max(samples) - min(samples) == len(samples) - 1
    buckets = [x for x in lines if x.startswith("wuma_scan_latency_seconds_bucket")]
    assert buckets[-1].startswith('wuma_scan_latency_seconds_bucket{le="+Inf"}')
    counts = [int(x.rsplit(" ", 1)[1]) for x in buckets]
    assert counts == sorted(counts) and counts[-1] == int(next(
        x for x in lines if x.startswith("wuma_scan_latency_seconds_count")).rsplit(" ", 1)[1])
    assert "e+" not in text and 'wuma_scans_total{verdict="voided"} 0' in text
    status, doc = s.get("/openapi.json")
    # The served document is the admin app's (admin/openapi.py): the scan API and more.
    assert status == 200 and set(doc["paths"]) >= {"/v1/scans", "/v1/codes/{code}", "/healthz",
                                                   "/metrics", "/openapi.json"}
    assert s.get("/nowhere")[0] == 404


@contextmanager
def _slow_commit(path):
    """Another worker's scan commit that takes long (a slow fsync): it holds the turn."""
    fd = os.open(path / "db" / TURN_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def _long_write(path):
    """A long write (a line-collection ingest) in another process."""
    with DataFolder(path) as data, bulk_write(data.store):
        yield


@pytest.mark.parametrize("holder", [_long_write, _slow_commit], ids=["long_write", "slow_commit"])
def test_scans_wait_for_the_store_but_the_workers_go_on(live, holder):
    """While a long write has the store, or another commit takes long, genuine scans wait
    for it, and both workers keep answering everything else; then every waiting scan
    lands, once."""
    s, codes = live["server"], live["data"].codes
    scanned = [codes.code(live["caps"], 20 + i, "cap_inner") for i in range(8)]
    before = [(s.get(f"/v1/codes/{c}")[1].get("scan") or {}).get("count", 0) for c in scanned]
    answers: dict[int, tuple] = {}

    def scan(i):  # each on its own connection: the workers share them
        answers[i] = s.scan({"code": scanned[i], "device": f"d-bulk-{i}"},
                            headers={"X-Forwarded-For": f"203.0.113.{60 + i}"})

    threads = [threading.Thread(target=scan, args=(i,)) for i in range(len(scanned))]
    with holder(live["path"]):
        for t in threads:
            t.start()
        time.sleep(0.5)
        assert answers == {}
        for _ in range(8):  # new connections, so both workers answer some
            start = time.perf_counter()
            status, body = s.get(f"/v1/codes/{scanned[0]}")
            assert status == 200 and body["verdict"] == "genuine"
            assert s.get("/healthz")[0] == 200
            assert time.perf_counter() - start < 1.0
        assert answers == {}
    for t in threads:
        t.join(10)
    assert sorted(answers) == list(range(len(scanned)))
    assert all(status == 200 and body["verdict"] == "genuine" and body["scan"]["count"] == before[i] + 1
               for i, (status, body) in answers.items())


@pytest.mark.parametrize("flooders", [1, 24])
def test_a_ban_during_a_long_write_does_not_block_its_worker(live, flooders):
    """An enumeration ban is a write. Begun while a long write has the store, it waits for
    that write without stalling its worker (engine.scanlog.gate_writes): the request that
    crosses the threshold is answered after the write, everything else meanwhile. With 24
    flooders at once, one worker has more bans waiting than gevent's thread pool has
    threads (10): they queue there, and its hub still goes on."""
    s = live["server"]
    floods = [{"X-Forwarded-For": f"203.0.113.{150 + k}" if flooders == 1 else f"198.18.7.{k}"}
              for k in range(flooders)]
    answered: dict[int, list[int]] = {k: [] for k in range(flooders)}

    def enumerate_codes(k):  # one connection: one worker sees all 21
        conn = s.conn()
        for i in range(21):
            answered[k].append(s.scan({"code": f"1{'W' * 17}{i:02d}", "device": f"rot-{k}-{i}"}, floods[k],
                                      conn=conn)[0])

    flooding = [threading.Thread(target=enumerate_codes, args=(k,)) for k in range(flooders)]
    with DataFolder(live["path"]) as data, bulk_write(data.store):
        for t in flooding:
            t.start()
        deadline = time.time() + 30
        while sum(map(len, answered.values())) < 20 * flooders and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        assert all(a == [200] * 20 for a in answered.values())  # each 21st waits for its ban's write
        check = live["data"].codes.code(live["caps"], 30, "cap_inner")
        for _ in range(8):  # new connections: both workers, the flooders' included
            start = time.perf_counter()
            assert s.get(f"/v1/codes/{check}")[0] == 200 and s.get("/healthz")[0] == 200
            assert time.perf_counter() - start < 1.0
        assert all(len(a) == 20 for a in answered.values())
    for t in flooding:
        t.join(30)
    assert all(a == [200] * 21 for a in answered.values())
    for flood in floods:
        status, body = s.scan({"code": check, "device": "after-the-ban"}, flood)
        assert status == 403 and body["error"] == "banned"


def test_a_write_longer_than_the_worker_timeout_restarts_no_worker(tmp_path):
    """gunicorn restarts a worker that sends no heartbeat for ``--timeout`` seconds. A
    write that holds the store for longer (a big ingest) must not get the workers killed:
    the scans that waited for it are answered, by the same workers."""
    path = tmp_path / "wuma-data"
    w = build_world(path)
    scanned = [w["data"].codes.code(w["caps"], i, "cap_inner") for i in range(4)]
    w["data"].close()
    timeout = 3
    server = Server(path, timeout=timeout)
    try:
        workers = set(server.workers())
        assert len(workers) == 2
        answers: dict[int, tuple] = {}

        def scan(i):
            answers[i] = server.scan({"code": scanned[i], "device": f"d-long-{i}"})

        threads = [threading.Thread(target=scan, args=(i,)) for i in range(len(scanned))]
        with DataFolder(path) as data, bulk_write(data.store):
            for t in threads:
                t.start()
            time.sleep(3 * timeout)  # the arbiter checks heartbeats about once a second
            assert answers == {}
            assert server.get("/healthz")[0] == 200
        for t in threads:
            t.join(30)
        assert all(status == 200 and body["verdict"] == "genuine" and body["scan"]["count"] == 1
                   for status, body in answers.values()) and len(answers) == len(scanned)
        assert set(server.workers()) == workers
    finally:
        server.stop()
    assert "WORKER TIMEOUT" not in (tmp_path / f"server-{server.port}.log").read_text()


class _ScanLoad:
    """Clients scanning their own codes on keep-alive connections, one thread each, until
    stopped; ``acked[code]`` is the count each was last told. A client whose connection
    dies mid-answer (that scan not acknowledged) stops, or with ``reconnect`` opens
    another."""

    def __init__(self, server: Server, codes: list[str], reconnect: bool = False) -> None:
        self.acked: dict[str, int] = {}
        self._server, self._reconnect, self._stop = server, reconnect, threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(c,)) for c in codes]
        for t in self._threads:
            t.start()

    def _client(self, code: str) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                conn = conn or self._server.conn()
                status, body = self._server.scan({"code": code, "device": f"dev-{code}"}, conn=conn)
            except (OSError, http.client.HTTPException):  # died mid-answer: not acknowledged
                if not self._reconnect:
                    return
                conn = None
                time.sleep(0.01)
                continue
            if status == 200:
                self.acked[code] = body["scan"]["count"]

    def total(self) -> int:
        return sum(self.acked.values())

    def wait_for(self, n: int, seconds: float = 20) -> None:
        deadline = time.time() + seconds
        while self.total() < n and time.time() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def _loaded_server(path, **world) -> tuple[Server, list[str]]:
    w = build_world(path, **world)
    codes = [w["data"].codes.code(w["caps"], i, "cap_inner") for i in range(8)]
    w["data"].close()
    return Server(path), codes


def test_kill_9_loses_no_acknowledged_scan(tmp_path):
    server, codes = _loaded_server(tmp_path / "wuma-data")
    load = _ScanLoad(server, codes)
    load.wait_for(400)
    server.kill9()
    load.stop()
    assert load.total() >= 400
    _acknowledged_scans_are_stored(tmp_path / "wuma-data", load.acked)


def _acknowledged_scans_are_stored(path, acked: dict[str, int]) -> None:
    """Every acknowledged scan is in its code's record, and every record counts exactly
    the scan events stored for it (nothing half-written)."""
    data = DataFolder(path)
    log = ScanLog(data.store)
    idx = data.spec.role("cap_inner").index
    for code, count in acked.items():
        v = data.codes.verify(code)
        assert log.get((v.batch << 32) | v.serial, idx).count >= count
    events: dict[int, int] = {}
    for e in log.events(limit=10**6):
        events[e["unit"]] = events.get(e["unit"], 0) + 1
    assert events and all(log.get(unit, idx).count == n for unit, n in events.items())
    log.close()
    data.close()


def test_kill_9_of_one_worker_under_load_loses_no_acknowledged_scan(tmp_path):
    """One worker killed mid-load: its clients reconnect (to the other worker or the one
    gunicorn starts in its place), nothing acknowledged is lost, nothing half-written."""
    server, codes = _loaded_server(tmp_path / "wuma-data", rate_per_minute=10**9)
    load = _ScanLoad(server, codes, reconnect=True)
    try:
        load.wait_for(400)
        before = load.total()
        os.kill(server.workers()[0], signal.SIGKILL)
        load.wait_for(before + 400)
    finally:
        load.stop()
        server.stop()
    assert before >= 400 and load.total() >= before + 400  # served on after the kill
    _acknowledged_scans_are_stored(tmp_path / "wuma-data", load.acked)


# Business rules the schema cannot state (a pool that must exist, odds that sum to 1, a
# GTIN's check digit, a ledger entry that must be payable ...) refuse some schema-valid
# bodies with 400 and the library's message: allowed for those operations only.
_ST_CONFIG = """
# The server refuses an over-long request line (414) or header (431) before any route:
# a rejection of bad data like the others
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "414", "415", "422", "428", "429", "431"]

[auth.openapi.adminToken]
bearer = "{admin}"
[auth.openapi.accountToken]
bearer = "{store}"

[[operations]]
include-path-regex = "^/admin/api/(products|pools|campaigns|ledger/.*/reverse|payouts/.*/retry)$"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]

# Ids that exist, so requests reach the logic behind them (and reissue and revoke a spare
# token, never the one schemathesis runs with).
[[operations]]
include-path-regex = "^/admin/api/tokens/[{{]name[}}]/(reissue|revoke)$"
parameters = {{ "path.name" = "spare" }}
[[operations]]
include-path-regex = "^/admin/api/campaigns/[{{]campaign[}}]"
parameters = {{ "path.campaign" = {campaign} }}
[[operations]]
include-path = "/admin/api/trace/{{code}}"
parameters = {{ "path.code" = "{code}" }}
[[operations]]
include-path = "/v1/vouchers/{{voucher}}"
parameters = {{ "path.voucher" = "{voucher}" }}
[[operations]]
include-path-regex = "^/admin/api/(ledger|payouts)/[{{]seq[}}]"
parameters = {{ "path.seq" = 2 }}
"""


def test_openapi_document_holds_against_live_server(tmp_path):
    """schemathesis generates requests from /openapi.json (valid and schema-violating)
    and checks every answer: no 5xx, no undocumented status or body, violations refused,
    authentication enforced. It runs with an admin token and a store token, so the admin
    API and voucher redemption are exercised past their authentication too."""
    import subprocess
    import sys
    from pathlib import Path

    from admin_world import WHO, build_admin_world, consumer_rule

    from admin.tokens import AdminTokens
    from engine.scan import ScanRequest

    st = Path(sys.executable).parent / "st"
    w = build_admin_world(tmp_path / "wuma-data")
    admin, data = w["admin"], w["data"]
    AdminTokens(data.store, admin.audit).add("spare", "viewer", who=WHO)
    caps = w["caps"].id
    campaign = admin.campaigns.create({**consumer_rule(caps, payout="voucher", valid_days=30, kind="fixed",
                                                       amount=500), "target": {"serials": [[caps, 0, 9]]}}, who=WHO)
    admin.campaigns.create({**consumer_rule(caps, name="Grant"), "target": {"serials": [[caps, 10, 19]]}}, who=WHO)
    pipeline = admin.scan_pipeline()
    code = data.codes.code(w["caps"], 5, "cap_inner")
    scanned = pipeline.scan(ScanRequest(code=code, actor_id="u-1", region="440106"))
    voucher = next(r["voucher"] for r in scanned.rewards if r["outcome"] == "voucher")  # ledger entry 1
    pipeline.scan(ScanRequest(code=data.codes.code(w["caps"], 12, "cap_inner"), actor_id="u-1"))  # a grant: 2
    admin.close()
    data.close()
    config = tmp_path / "schemathesis.toml"
    config.write_text(_ST_CONFIG.format(admin=w["tokens"]["admin"], store=w["store_token"],
                                        campaign=campaign.id, code=code, voucher=voucher))
    server = Server(tmp_path / "wuma-data")
    try:
        base = f"http://127.0.0.1:{server.port}"
        res = subprocess.run([str(st), "--config-file", str(config), "run", f"{base}/openapi.json",
                              "--url", base, "--checks", "all", "--max-examples", "40",
                              "--seed", "20261122", "--no-color"],
                             capture_output=True, text=True, timeout=600, cwd=tmp_path)
    finally:
        server.stop()
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:]
    assert "Traceback" not in (tmp_path / f"server-{server.port}.log").read_text()
    # The run kept its own token (so the admin API was exercised past authentication).
    from admin.audit import AuditLog

    with DataFolder(tmp_path / "wuma-data") as data:
        changed = {e["target"] for e in AuditLog(data.store).entries(0, 100_000)
                   if e["action"] in ("token.revoke", "token.reissue")}
    assert "admin-1" not in changed


def test_every_operation_documents_what_the_server_refuses_before_the_app():
    """gunicorn answers 414 (a query string over ~4 KB) or 431 (a header too large) for
    any route, in the API's JSON error shape: both OpenAPI documents say so for every
    operation (schemathesis found a 414 from /admin/api/audit undocumented)."""
    from admin.openapi import ADMIN_OPENAPI

    for doc in (OPENAPI, ADMIN_OPENAPI):
        missing = [(path, method) for path, ops in doc["paths"].items() for method, op in ops.items()
                   if not {"414", "431"} <= set(op["responses"])]
        assert missing == []


def test_json_bodies_are_utf8_text():
    """Answers carry Chinese product names as UTF-8, not \\u escapes, and read back."""
    body = JSON_HANDLER.serialize({"name": "绿茶 500ml", "n": [1, 2.5, None]}, "application/json")
    assert body == '{"name": "绿茶 500ml", "n": [1, 2.5, null]}'.encode()
    assert JSON_HANDLER.deserialize(io.BytesIO(body), "application/json", len(body)) == {
        "name": "绿茶 500ml", "n": [1, 2.5, None]}


def test_metrics_keep_the_counts_of_a_worker_killed_with_sigkill_once(tmp_path):
    """A worker counts into shared memory: kill -9 a moment after its last answer loses
    none of its counts (a second's were lost when each worker wrote its totals once a
    second), and its counts are added once, however many workers start after it (the
    first takes its file over and counts on in it)."""
    from engine.http_scan import Metrics
    from engine.store import Store

    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from engine.http_scan import Metrics
        from engine.store import Store
        m = Metrics(Store({str(tmp_path / "counters")!r}, sync=False))
        for i in range(1000):
            m.observe_scan("genuine" if i % 4 else "voided", 0.003)
        m.inc('wuma_scans_refused_total{{reason="banned"}}')
        print("counted", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout.readline() == "counted\n"
    counters = Store(tmp_path / "counters", sync=False)
    live = Metrics(counters)  # the child lives: its file is read, not folded
    assert live.totals()['wuma_scans_total{verdict="genuine"}'] == 750
    assert len(list((tmp_path / "counters" / "metrics").glob("*.cells"))) == 2
    child.kill()
    child.wait(10)
    started = []
    for _ in range(3):  # workers starting after it: the dead one's file taken over by the first
        started.append(Metrics(counters))
        got = started[-1].totals()
        assert got['wuma_scans_total{verdict="genuine"}'] == 750
        assert got['wuma_scans_total{verdict="voided"}'] == 250
        assert got['wuma_scans_refused_total{reason="banned"}'] == 1
        assert got["wuma_scan_latency_seconds_count"] == 1000
        assert got.get('wuma_scan_latency_seconds_bucket{le="0.002"}', 0) == 0
        assert got['wuma_scan_latency_seconds_bucket{le="0.005"}'] == 1000
        assert abs(got["wuma_scan_latency_seconds_sum"] - 3.0) < 1e-9
    assert live.totals() == got
    assert len(list((tmp_path / "counters" / "metrics").glob("*.cells"))) == 4  # one a live worker
    started[0].observe_scan("genuine", 0.003)  # counting on in the file it took over
    assert live.totals()['wuma_scans_total{verdict="genuine"}'] == 751


def test_metrics_never_go_down_when_workers_come_and_go(tmp_path):
    """Prometheus reads any drop of a counter as a reset. The latencies' sum was a float:
    added in another order after a worker's counts moved, it came out lower (0.3558167631781408
    -> 0.35581676317814076 in a review's run). Counts and the sum are integers now."""
    from engine.http_scan import Metrics
    from engine.store import Store

    counters = Store(tmp_path / "counters", sync=False)
    rng = __import__("random").Random(7)
    before = None
    for _ in range(30):
        workers = [Metrics(counters) for _ in range(rng.randint(1, 4))]
        for m in workers:
            for _ in range(rng.randint(1, 20)):
                m.observe_scan(rng.choice(["genuine", "invalid"]), rng.random() / 7)
        got = workers[0].totals()
        if before is not None:
            assert all(got.get(k, 0) >= v for k, v in before.items()), (before, got)
        before = got
        del workers, m  # gone: the next ones take their files over
    counters = Store(tmp_path / "exact", sync=False)
    workers = [Metrics(counters) for _ in range(3)]
    for m in workers:
        m.observe_scan("genuine", 0.1)
    assert workers[0].totals()["wuma_scan_latency_seconds_sum"] == 0.3  # as floats: 0.30000000000000004


def test_metrics_of_another_release_s_cells_are_folded_once_and_kept(tmp_path):
    """A file names its cells: a file of a release that counts another verdict is read by
    name, and folded into the store once by a worker starting after its worker is gone."""
    from engine import metrics
    from engine.http_scan import Metrics
    from engine.store import Store

    counters = Store(tmp_path / "counters", sync=False)
    folder = tmp_path / "counters" / "metrics"
    folder.mkdir(parents=True)
    names = (*metrics._CELLS, 'wuma_scans_total{verdict="recalled"}')
    header, at = metrics._layout(names)
    counts = [0] * len(names)
    counts[names.index('wuma_scans_total{verdict="genuine"}')] = 40
    counts[names.index('wuma_scans_total{verdict="recalled"}')] = 2
    counts[names.index(metrics._BUCKET_CELL + "0.001")] = 42
    counts[names.index(metrics._SUM_NS_CELL)] = 42_000_000
    (folder / "99-1.cells").write_bytes(header + struct.pack(f"<{len(names)}q", *counts))
    first = Metrics(counters)
    first.observe_scan("genuine", 0.001)
    assert not (folder / "99-1.cells").exists()
    for m in (first, Metrics(counters)):
        got = m.totals()
        assert got['wuma_scans_total{verdict="genuine"}'] == 41
        assert got['wuma_scans_total{verdict="recalled"}'] == 2
        assert got["wuma_scan_latency_seconds_count"] == 43
        assert got['wuma_scan_latency_seconds_bucket{le="0.001"}'] == 43
        assert abs(got["wuma_scan_latency_seconds_sum"] - 0.043) < 1e-9


def test_metrics_are_served_with_an_unreadable_entry_in_their_folder(tmp_path, caplog):
    """A folder named like a cells file (or a file no worker may read) made every /metrics
    fail (IsADirectoryError), and kept each new worker's counts out of the totals."""
    from engine.http_scan import Metrics
    from engine.store import Store

    counters = Store(tmp_path / "counters", sync=False)
    (tmp_path / "counters" / "metrics" / "x.cells").mkdir(parents=True)
    m = Metrics(counters)
    m.observe_scan("genuine", 0.001)
    assert m.shared and m.totals()['wuma_scans_total{verdict="genuine"}'] == 1
    assert "x.cells is not a metrics file" in caplog.text


def test_metrics_without_a_file_keep_serving_and_say_so(tmp_path, caplog):
    """No file can be made for a worker's counts (here the folder's name is taken by a
    file; a full disk alike): the worker counts on, its counts are in no one's totals
    (they would drop when it exits), and the log says so."""
    from engine.http_scan import Metrics
    from engine.store import Store

    counters = Store(tmp_path / "counters", sync=False)
    (tmp_path / "counters" / "metrics").write_text("not a folder")
    m = Metrics(counters)
    m.observe_scan("genuine", 0.001)
    m.inc('wuma_scans_refused_total{reason="banned"}')
    assert not m.shared and m.totals() == {}
    assert "not in /metrics" in caplog.text


def test_metrics_add_what_an_older_release_wrote(tmp_path):
    """Totals an older release's workers wrote to the store (one entry each) still count."""
    from engine.http_scan import Metrics
    from engine.store import Store, pack

    counters = Store(tmp_path / "counters", sync=False)
    db = counters.db("metrics")  # NOTE: opened before the write (opening takes the write lock)
    with counters.write() as txn:
        txn.put(b"pid:41:1", pack({'wuma_scans_total{verdict="genuine"}': 5.0,
                                   "wuma_scan_latency_seconds_count": 5.0}), db=db)
    m = Metrics(counters)
    m.observe_scan("genuine", 0.001)
    got = m.totals()
    assert got['wuma_scans_total{verdict="genuine"}'] == 6
    assert got["wuma_scan_latency_seconds_count"] == 6


def test_metrics_count_every_observed_scan_exactly(tmp_path):
    from engine.http_scan import LATENCY_BUCKETS, Metrics
    from engine.store import Store

    metrics = Metrics(Store(tmp_path / "counters", sync=False))

    def observe(k: int) -> None:
        for i in range(5000):
            metrics.observe_scan("genuine" if i % 5 else "invalid", 0.0007 if k else 0.3)

    threads = [threading.Thread(target=observe, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = metrics.totals()
    assert got['wuma_scans_total{verdict="genuine"}'] == 16_000
    assert got['wuma_scans_total{verdict="invalid"}'] == 4_000
    assert got["wuma_scan_latency_seconds_count"] == 20_000
    assert got['wuma_scan_latency_seconds_bucket{le="0.0005"}'] == 0
    assert got['wuma_scan_latency_seconds_bucket{le="0.001"}'] == 15_000
    assert got[f'wuma_scan_latency_seconds_bucket{{le="{LATENCY_BUCKETS[-2]}"}}'] == 20_000
    assert abs(got["wuma_scan_latency_seconds_sum"] - (15_000 * 0.0007 + 5_000 * 0.3)) < 1e-6


@pytest.mark.parametrize("remote, forwarded, client", [
    ("203.0.113.5", None, "203.0.113.5"),
    ("203.0.113.5", "198.51.100.1", "203.0.113.5"),  # not from a trusted proxy: the header is ignored
    ("10.0.0.1", "198.51.100.1", "198.51.100.1"),
    ("10.0.0.1", "6.6.6.6, 198.51.100.1, 10.0.0.2", "198.51.100.1"),  # rightmost not a proxy
    ("10.0.0.1", "10.0.0.2", "10.0.0.1"),  # only proxies: the connection's
    ("10.0.0.1", "not-an-address", "10.0.0.1"),  # a hop that is no address: the proxy itself
    ("10.0.0.1", "2001:db8:7:7::99", "2001:db8:7:7::/64"),
    ("", "198.51.100.1", "198.51.100.1"),  # a unix socket: a local proxy's
    ("2001:db8:9:9::1", None, "2001:db8:9:9::/64"),
])
def test_client_ip_behind_proxies(remote, forwarded, client):
    from falcon import testing

    from engine.http_scan import make_client_ip
    client_ip = make_client_ip(frozenset({"10.0.0.1", "10.0.0.2"}), "X-Forwarded-For")
    req = testing.create_req(remote_addr=remote or None,
                             headers={"X-Forwarded-For": forwarded} if forwarded else {})
    if not remote:
        req.env["REMOTE_ADDR"] = ""
    assert client_ip(req) == client


def test_a_unix_socket_without_a_proxy_header_is_one_client(caplog):
    from falcon import testing

    from engine.http_scan import UNIX_PEER, make_client_ip
    client_ip = make_client_ip(frozenset(), None)
    req = testing.create_req()
    req.env["REMOTE_ADDR"] = ""
    assert client_ip(req) == client_ip(req) == UNIX_PEER
    assert sum("proxy_header" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_no_code_reaches_the_access_log(tmp_path):
    from cli.localserver import start_gunicorn, stop

    w = build_world(tmp_path / "wuma-data")
    code = w["data"].codes.code(w["caps"], 3, "cap_inner")
    w["data"].close()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc, port = start_gunicorn("engine.http_scan:app_from_env()", workers=1, stdout=out, env={
            "WUMA_DATA": str(tmp_path / "wuma-data"), "WUMA_ACCESS_LOG": "-"})
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            # the landing page's own URL (the printed one) comes along as the Referer
            conn.request("GET", f"/v1/codes/{code}?from=qr",
                         headers={"Referer": f"https://ops:pw@s.example.cn/q/{code}"})
            assert json.loads(conn.getresponse().read())["verdict"] == "genuine"
            conn.close()
        finally:
            stop(proc)
    text = log.read_text()
    assert f"/v1/codes/{code[:4]}..." in text and code not in text
    assert 'https://s.example.cn/...' in text and "ops:pw" not in text
    # a voucher id is as good as the voucher to whoever holds it (any store may redeem it)
    from engine.http_errors import masked_path

    assert masked_path("/v1/vouchers/VABCDEFGHJKMNPQRSTVWX") == "/v1/vouchers/VABC..."
    assert masked_path("/v1/vouchers/redeem") == "/v1/vouchers/redeem"


def test_a_full_store_is_a_503_and_healthz_says_so(tmp_path, monkeypatch, caplog):
    """Map or disk full: the scan is not stored and the client is told so (503, not a
    500 and a traceback per request); /healthz takes the server out of rotation."""
    import lmdb
    from falcon import testing

    import engine.store
    from engine.http_scan import create_app
    from engine.scan import ScanPipeline

    w = build_world(tmp_path / "wuma-data")
    try:
        client = testing.TestClient(create_app(w["data"]))
        assert client.simulate_get("/healthz").json == {"status": "ok"}

        def full(self, req):
            raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL: Environment mapsize limit reached")

        monkeypatch.setattr(ScanPipeline, "scan", full)
        got = client.simulate_post("/v1/scans", json={"code": "x"})
        assert got.status_code == 503 and got.json["error"] == "storage_unavailable"
        assert got.headers["Retry-After"] == "60"
        monkeypatch.setattr(engine.store, "free_bytes", lambda path: 10 << 20)
        with caplog.at_level(logging.ERROR, logger="wuma.http"):
            health = client.simulate_get("/healthz")
            again = client.simulate_get("/healthz")
        # NOTE: the route is public: the data folder's path is for the log, not the client
        assert health.status_code == 503 and health.json == {"status": "unavailable", "reason": "disk_nearly_full"}
        assert again.json == health.json and str(tmp_path) not in health.text
        told = [m for r in caplog.records if "cannot take scans" in (m := r.getMessage())]
        assert len(told) == 1 and "10 MiB free on the file system of" in told[0], told  # once a minute
    finally:
        w["data"].close()


def test_counters_stop_rather_than_crash_when_their_disk_is_full(tmp_path, monkeypatch, caplog):
    """Writes through the counters' memory map onto a full disk would kill the worker
    (SIGBUS): below the free-space floor the counting stops, logged, and scans go on."""
    import engine.store
    from engine.abuse import subject

    w = build_world(tmp_path / "wuma-data")
    try:
        abuse = w["data"].abuse
        monkeypatch.setattr(engine.store, "free_bytes", lambda path: 1 << 20)
        abuse.counters._space_checked = -1.0
        assert abuse.record_invalid([subject("ip", "203.0.113.90")], "1XYZ", now=1000.0) is None
        assert "not kept" in caplog.text
    finally:
        w["data"].close()


def test_metric_samples_are_written_in_full():
    from engine.http_scan import _sample
    assert [_sample(v) for v in (1234567.0, 0.0, 0.000123, 12.5)] == ["1234567", "0", "0.000123", "12.5"]


def test_a_body_that_cannot_be_read_is_a_400_not_an_error_in_the_log(tmp_path, caplog):
    """A client that resets mid-body, or sends a bad chunk, is the client's doing."""
    from falcon import testing

    from engine.http_scan import create_app

    class Broken(io.RawIOBase):
        def read(self, n=-1):
            raise ConnectionResetError(104, "Connection reset by peer")

    w = build_world(tmp_path / "wuma-data")
    try:
        client = testing.TestClient(create_app(w["data"]))
        got = client.simulate_post("/v1/scans", body=b"", content_type="application/json",
                                   extras={"wsgi.input": Broken(), "wsgi.input_terminated": True})
        assert got.status_code == 400 and "could not be read" in got.json["message"]
        assert "unhandled error" not in caplog.text
    finally:
        w["data"].close()


def test_a_reload_with_a_mistake_in_wuma_json_keeps_the_server_serving(tmp_path):
    """SIGHUP after a bad edit: refused, logged, the workers serve on; fixed, it reloads."""
    w = build_world(tmp_path / "wuma-data")
    w["data"].close()
    cfg = tmp_path / "wuma-data" / "wuma.json"
    good = cfg.read_text()
    s = Server(tmp_path / "wuma-data", workers=1)
    try:
        doc = json.loads(good)
        doc["abuse"]["rate_per_minute"] = "sixty"
        cfg.write_text(json.dumps(doc))
        os.kill(s.proc.pid, signal.SIGHUP)
        log = tmp_path / f"server-{s.port}.log"
        deadline = time.time() + 20
        while "reload refused" not in log.read_text() and time.time() < deadline:
            time.sleep(0.2)
        assert "reload refused" in log.read_text() and "rate_per_minute" in log.read_text()
        assert s.get("/healthz")[0] == 200 and s.proc.poll() is None
        cfg.write_text(good)
        os.kill(s.proc.pid, signal.SIGHUP)
        time.sleep(2)
        assert s.get("/healthz")[0] == 200 and s.proc.poll() is None
        assert log.read_text().count("reload refused") == 1  # this time it reloaded
    finally:
        s.stop()


def test_a_reload_onto_code_that_does_not_import_keeps_the_server_serving(tmp_path):
    """A release installed with a broken import, then SIGHUP (gunicorn's upgrade): every
    new worker failed to boot while the reload retired the old ones, and the server
    stopped. The reload is refused, logged, and the workers serve on; fixed, it reloads."""
    from cli.localserver import free_port, stop, wait_until_up

    build_world(tmp_path / "wuma-data")["data"].close()
    (tmp_path / "release").mkdir()
    app = tmp_path / "release" / "wuma_release.py"
    app.write_text("from admin.http import app_from_env\n")
    port, log = free_port(), tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "python:engine.gunicorn_conf",
             "wuma_release:app_from_env()"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=dict(os.environ, WUMA_DATA=str(tmp_path / "wuma-data"),
                                             WUMA_BIND=f"127.0.0.1:{port}", WUMA_WORKERS="1",
                                             PYTHONPATH=f"{tmp_path / 'release'}:{ROOT}"))
    try:
        assert wait_until_up(f"http://127.0.0.1:{port}/healthz")
        app.write_text("from admin.http import app_from_env\nimport wuma_module_not_installed\n")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.time() + 30
        while "reload refused" not in log.read_text() and time.time() < deadline:
            time.sleep(0.2)
        assert "ModuleNotFoundError: No module named 'wuma_module_not_installed'" in log.read_text()
        time.sleep(1)
        assert proc.poll() is None and wait_until_up(f"http://127.0.0.1:{port}/healthz")
        app.write_text("from admin.http import app_from_env\n")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.time() + 30
        while log.read_text().count("Booting worker") < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert log.read_text().count("Booting worker") == 2 and log.read_text().count("reload refused") == 1
        assert wait_until_up(f"http://127.0.0.1:{port}/healthz")
    finally:
        stop(proc)


def _answering_workers(s: Server, want: int, timeout: float = 60.0) -> set[int]:
    """The pids of the workers that answer new connections, once ``want`` of them have."""
    import sys

    from server import ROOT

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from loadgen import serving_pid

    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < want and time.monotonic() < deadline:
        conn = s.conn()
        conn.request("GET", "/healthz")
        if conn.getresponse().read() and (pid := serving_pid(conn, s.proc.pid)):
            seen.add(pid)
        conn.close()
    return seen


def _wait_for(log, text: str, timeout: float = 60.0) -> str:
    """The first line of the server's log holding ``text`` (waited for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if text in line]
        if lines:
            return lines[0]
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in the log: {log.read_text()[-3000:]}")


@pytest.mark.parametrize("mistake", ["setting", "key mode"])
def test_a_worker_that_cannot_boot_while_another_serves_leaves_the_server_serving(tmp_path, mistake):
    """A mistake made while the server runs (wuma.json edited wrong, no reload asked; a key
    file's mode opened), then a worker killed (the OOM killer, gunicorn's own timeout): its
    replacement cannot boot. gunicorn stopped the whole server then; now the other worker
    serves on, the log says why, and once fixed a new worker starts in its place."""
    w = build_world(tmp_path / "wuma-data")
    w["data"].close()
    cfg = tmp_path / "wuma-data" / "wuma.json"
    key = next((tmp_path / "wuma-data" / "keys").glob("master-v*.key"))
    good = cfg.read_text()
    s = Server(tmp_path / "wuma-data", workers=2, env={"WUMA_BOOT_RETRY": "1"})
    log = tmp_path / f"server-{s.port}.log"
    try:
        assert len(_answering_workers(s, 2)) == 2  # both booted
        if mistake == "setting":
            cfg.write_text(json.dumps({**json.loads(good), "abuse": {
                **json.loads(good)["abuse"], "rate_per_minute": "sixty"}}))
        else:
            key.chmod(0o640)
        victim = s.workers()[0]
        os.kill(victim, signal.SIGKILL)
        why = _wait_for(log, "this worker cannot start")
        assert ("rate_per_minute" if mistake == "setting" else key.name) in why
        assert "serves on with its 1 other worker" in why
        for _ in range(10):  # the survivor serves, and the server stays up
            assert s.get("/healthz")[0] == 200
            time.sleep(0.3)
        assert s.proc.poll() is None and "Worker failed to boot" not in log.read_text()
        cfg.write_text(good)
        key.chmod(0o600)
        assert len(_answering_workers(s, 2) - {victim}) == 2  # a new worker in the killed one's place
    finally:
        s.stop()


def test_with_no_other_worker_serving_a_worker_that_cannot_boot_stops_the_server(tmp_path):
    """Nothing could serve: the server stops, as gunicorn does, with the reason logged
    (`wuma serve` then refuses to start until it is fixed)."""
    w = build_world(tmp_path / "wuma-data")
    w["data"].close()
    cfg = tmp_path / "wuma-data" / "wuma.json"
    s = Server(tmp_path / "wuma-data", workers=1, env={"WUMA_BOOT_RETRY": "1"})
    log = tmp_path / f"server-{s.port}.log"
    try:
        doc = json.loads(cfg.read_text())
        doc["abuse"]["rate_per_minute"] = "sixty"
        cfg.write_text(json.dumps(doc))
        os.kill(s.workers()[0], signal.SIGKILL)
        assert s.proc.wait(60) != 0
        assert "rate_per_minute" in log.read_text() and "this worker cannot start" not in log.read_text()
    finally:
        s.stop()


def test_a_scan_must_come_as_json_so_no_web_page_can_post_one_through_its_visitors(tmp_path):
    """A page on any site may make its visitors' browsers POST a text/plain, form or typeless
    body without asking the API first (a "simple" request): 415, nothing recorded. A JSON
    content type (any case, with a charset) is taken."""
    from falcon import testing

    from engine.http_scan import create_app

    w = build_world(tmp_path / "wuma-data")
    data = w["data"]
    try:
        client = testing.TestClient(create_app(data))
        body = json.dumps({"code": data.codes.code(w["caps"], 5, "cap_inner"), "device": "page"})
        for ctype in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                      "multipart/form-data; boundary=x", None, "application/jsonp"):
            got = client.simulate_post("/v1/scans", body=body, content_type=ctype,
                                       headers={"Origin": "https://evil.example"})
            assert got.status_code == 415, ctype
            assert got.json["error"] == "unsupported_media_type"
            assert "Content-Type: application/json" in got.json["message"]
        assert ScanLog(data.store).count_events() == 0
        for ctype in ("application/json", "Application/JSON; charset=utf-8"):
            got = client.simulate_post("/v1/scans", body=body, content_type=ctype)
            assert got.status_code == 200 and got.json["verdict"] == "genuine", ctype
        assert "Access-Control-Allow-Origin" not in got.headers  # no preflight is granted
    finally:
        data.close()


def test_the_openapi_documents_are_openapi_3_0():
    """Both documents say 3.0.3, where a schema's type is one string and null is said with
    ``nullable`` (a list of types is 3.1: 3.0 tools reject or misread it)."""
    from admin.openapi import ADMIN_OPENAPI

    def types(node):
        if isinstance(node, dict):
            if "type" in node:
                yield node["type"]
            for v in node.values():
                yield from types(v)
        elif isinstance(node, list):
            for v in node:
                yield from types(v)

    for doc in (OPENAPI, ADMIN_OPENAPI):
        assert doc["openapi"] == "3.0.3"
        assert all(isinstance(t, str) for t in types(doc["paths"])), [t for t in types(doc) if not isinstance(t, str)]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_scans_answered_just_before_a_stop_are_in_the_metrics(tmp_path, how):
    """A quick stop (Ctrl-C) lost the scans answered in the second before (15 of 50
    counted), and a kill -9 of the workers too: each worker counts into shared memory."""
    w = build_world(tmp_path / "wuma-data", invalid_threshold=10**9, rate_per_minute=10**9)
    codes = [w["data"].codes.code(w["caps"], i, "cap_inner") for i in range(w["caps"].count)]
    w["data"].close()

    def genuine(s: Server) -> float:
        status, text = s.get("/metrics")
        assert status == 200
        line = next(x for x in text.splitlines() if x.startswith('wuma_scans_total{verdict="genuine"}'))
        return float(line.split()[-1])

    s = Server(tmp_path / "wuma-data")
    before = genuine(s)
    for i in range(50):
        assert s.scan({"code": codes[i % len(codes)], "device": f"m-{i}"})[0] == 200
    os.killpg(s.proc.pid, how)  # SIGKILL: the whole server, at once after its last answer
    s.proc.wait(30)
    s.log.close()
    s = Server(tmp_path / "wuma-data")
    try:
        assert genuine(s) - before == 50
    finally:
        s.stop()
