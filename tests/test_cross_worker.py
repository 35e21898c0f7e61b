"""An operator's change counts in every worker of a running server, from its next request.

A real `wuma serve` with 2 gunicorn workers, each a process with its own caches (campaign
index, division-centre grid, key ring, trace records). Each test first fills both
workers' caches through a keep-alive connection pinned to each (found through /proc),
then changes the data folder as an operator does, with the `wuma` CLI (its own view of
the folder, here in the test's process) or through the admin API on one worker, and
then asks both workers at once.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from admin_world import WHO, build_admin_world, consumer_rule
from click.testing import CliRunner
from server import ROOT, Server

from cli.main import cli

sys.path.insert(0, str(ROOT / "benchmarks"))
from loadgen import serving_pid, spread_connections

BEIJING = {"lat": 39.92, "lng": 116.44}  # Dongcheng; outside gz-1's territory (4401)
CAMPAIGN_BATCHES = ("topup", "pause", "create", "resume")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    path = tmp_path_factory.mktemp("cross-worker") / "wuma-data"
    w = build_admin_world(path, invalid_threshold=1000, rate_per_minute=10**6)
    data, admin = w["data"], w["admin"]
    _, w["s9_token"] = data.accounts.add("s-9", "store", region="440106", distributor="gz-1")
    # one activated cap batch per campaign test (campaigns on one target would overlap)
    w["batches"] = {}
    for name in CAMPAIGN_BATCHES:
        b = w["batches"][name] = data.create_batch("cap", 8)
        w["agg"].activate(sku="SKU-1", name="Green tea 500ml", lot="L1", production_date="2026-11-01",
                          batch=b.id)
    admin.pools.create("tiny", total=100, who=WHO)  # one reward of 1 yuan
    w["topup"] = admin.campaigns.create(consumer_rule(w["batches"]["topup"].id, pool="tiny"), who=WHO).id
    w["pause"] = admin.campaigns.create(consumer_rule(w["batches"]["pause"].id), who=WHO).id
    w["resume"] = admin.campaigns.create(consumer_rule(w["batches"]["resume"].id), who=WHO).id
    admin.close()
    data.close()
    w["server"] = server = Server(path)
    w["path"] = path
    try:
        w["workers"] = _one_connection_per_worker(server)
        yield w
    finally:
        for worker in w.get("workers", ()):
            worker.close()
        server.stop()


class Worker:
    """A keep-alive connection to one worker of the server, made again, to the same
    worker, when it has been idle for ``IDLE_S``: the server closes a connection idle for
    its keepalive (5 s, engine/gunicorn_conf.py), and the next request on it would fail
    (RemoteDisconnected) whenever the test, or the machine, is slow."""

    #: Well under the server's keepalive.
    IDLE_S = 2.0

    def __init__(self, server: Server, conn, pid: int) -> None:
        self.server, self.conn, self.pid = server, conn, pid
        self.used = time.monotonic()

    def request(self, method: str, path: str, body=None, headers=None):
        if time.monotonic() - self.used > self.IDLE_S:
            self.conn.close()
            self.conn = _connect_to(self.server, self.pid)
        try:
            return self.server.request(method, path, body, headers, conn=self.conn)
        finally:
            self.used = time.monotonic()

    def close(self) -> None:
        self.conn.close()


def _connect_to(server: Server, pid: int):
    """A new keep-alive connection that worker ``pid`` accepted (the workers race to accept)."""
    for _ in range(200):
        conn = server.conn()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        if serving_pid(conn, server.proc.pid) == pid:
            return conn
        conn.close()
    raise AssertionError(f"no connection reached worker {pid}")


def _one_connection_per_worker(server: Server) -> list[Worker]:
    """A keep-alive connection to each of the 2 workers (the second may still be booting
    when the first answers)."""
    deadline = time.monotonic() + 60
    while True:
        pinned = spread_connections(server.port, server.proc.pid, 2)
        if len({pid for _, pid in pinned}) == 2:
            return [Worker(server, c, pid) for c, pid in pinned]
        for c, _ in pinned:
            c.close()
        assert time.monotonic() < deadline, "could not reach both workers"
        time.sleep(0.2)


def wuma(live, *args) -> str:
    """Run a `wuma` command on the server's data folder, as an operator would."""
    res = CliRunner().invoke(cli, ["--data", str(live["path"]), *args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def scan_each(live, body: dict, token: str | None = None, order=(0, 1)) -> list[tuple[int, dict]]:
    """(status, answer) of the same scan on each worker (in ``order``: 0 first by default)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return [live["workers"][k].request("POST", "/v1/scans", body, headers) for k in order]


def admin_each(live, path: str, token: str) -> list[int]:
    """The status of ``GET path`` with an admin token on each worker."""
    return [w.request("GET", path, headers={"Authorization": f"Bearer {token}"})[0] for w in live["workers"]]


def code(live, batch, serial: int, role: str = "cap_inner") -> str:
    from engine import DataFolder

    with DataFolder(live["path"]) as data:
        return data.codes.code(data.batches.get(batch if isinstance(batch, int) else batch.id), serial, role)


def consumer(code_: str, who: str, **location) -> dict:
    return {"code": code_, "actor": {"role": "consumer", "id": who}, "location": location or None}


def outcomes(answer: dict) -> list[str]:
    return [r["outcome"] for r in answer["rewards"]]


def test_a_revoked_account_or_replaced_token_is_refused_by_every_worker_at_once(live):
    store_scan = {"code": code(live, live["caps"], 30, "cap_outer"), "actor": {"role": "store"}}
    old = live["s9_token"]
    assert [s for s, _ in scan_each(live, store_scan, old)] == [200, 200]
    new = json.loads(wuma(live, "account", "token", "s-9", "--json"))["token"]
    assert [s for s, _ in scan_each(live, store_scan, old)] == [401, 401]
    assert [s for s, _ in scan_each(live, store_scan, new)] == [200, 200]
    wuma(live, "account", "revoke", "s-9")
    assert [s for s, _ in scan_each(live, store_scan, new)] == [401, 401]


def test_a_revoked_admin_token_is_refused_by_every_worker_at_once(live):
    a = live["workers"][0]
    admin = {"Authorization": f"Bearer {live['tokens']['admin']}"}
    for name in ("by-api", "by-cli"):
        status, doc = a.request("POST", "/admin/api/tokens", {"name": name, "role": "viewer"}, admin)
        assert status == 201, doc
        assert admin_each(live, "/admin/api/me", doc["token"]) == [200, 200]
        if name == "by-api":  # revoked through one worker
            assert a.request("POST", f"/admin/api/tokens/{name}/revoke", headers=admin)[0] == 200
        else:
            wuma(live, "admin-token", "revoke", name)
        assert admin_each(live, "/admin/api/me", doc["token"]) == [401, 401]


def test_division_centres_imported_count_in_every_worker_at_once(live, tmp_path):
    """A scan with only a position is counted in the nearest centre's region: centres
    imported while the server runs count from the next scan (they used to wait for a
    restart: each worker kept the grid it built at its first such scan)."""
    before = scan_each(live, consumer(code(live, live["caps"], 0), "u-geo", **BEIJING))
    assert [(s, a["diversion"]) for s, a in before] == [(200, None)] * 2  # no centres: no region
    centres = tmp_path / "centres.csv"
    centres.write_text("code,lat,lng\n110101,39.9288,116.4164\n")
    wuma(live, "region", "import", str(centres))
    after = scan_each(live, consumer(code(live, live["caps"], 1), "u-geo", **BEIJING))
    assert [(s, a["diversion"]) for s, a in after] == [
        (200, {"distributor": "gz-1", "territory": ["4401"], "region": "110101"})] * 2


def test_a_pool_topped_up_pays_on_every_worker_at_once(live):
    batch = live["batches"]["topup"]
    got = [outcomes(a) for _, a in scan_each(live, consumer(code(live, batch, 0), "u-t1"))]
    assert got == [["granted"], ["already_rewarded"]]
    got = [outcomes(a) for _, a in scan_each(live, consumer(code(live, batch, 1), "u-t2"))]
    assert got == [["budget_exhausted"], ["budget_exhausted"]]
    wuma(live, "pool", "top-up", "tiny", "100")  # one more reward, paid by whichever worker asks
    got = [outcomes(a) for _, a in scan_each(live, consumer(code(live, batch, 1), "u-t2"), order=(1, 0))]
    assert got == [["granted"], ["already_rewarded"]]
    got = [outcomes(a) for _, a in scan_each(live, consumer(code(live, batch, 2), "u-t3"))]
    assert got == [["budget_exhausted"], ["budget_exhausted"]]


def test_a_paused_or_closed_campaign_pays_nothing_on_any_worker(live):
    """Each worker's campaign index may lag (see below), but the campaign's status is read
    again inside the scan's write: nothing is paid once it is paused or closed."""
    a = live["workers"][0]
    batch, cid = live["batches"]["pause"], live["pause"]
    assert [outcomes(x) for _, x in scan_each(live, consumer(code(live, batch, 0), "u-p"))] == [
        ["granted"], ["already_rewarded"]]
    operator = {"Authorization": f"Bearer {live['tokens']['operator']}"}
    assert a.request("POST", f"/admin/api/campaigns/{cid}/pause", headers=operator)[0] == 200
    for _, answer in scan_each(live, consumer(code(live, batch, 1), "u-p"), order=(1, 0)):
        assert outcomes(answer) in ([], ["campaign_inactive"])
    wuma(live, "campaign", "close", str(cid))
    for _, answer in scan_each(live, consumer(code(live, batch, 2), "u-p"), order=(1, 0)):
        assert outcomes(answer) in ([], ["campaign_inactive"])
    status, entries = a.request("GET", f"/admin/api/ledger?campaign={cid}", headers=operator)
    assert status == 200 and len(entries) == 1


def test_a_new_or_resumed_campaign_pays_on_every_worker_within_a_second(live):
    """Each worker re-reads its campaign index every 0.5 s (admin/rewards.py; reading it
    before every scan cost ~1.2 µs a scan): a campaign created or resumed pays on every
    worker from at most half a second after the change. (Pause and close are exact at
    once: the test above.)

    NOTE: the sleeps cannot be too short on a slow machine: a worker re-reads the index at
    a scan 0.5 s or more after it last read it, and it last read it before the change."""
    a = live["workers"][0]
    batch = live["batches"]["create"]
    admin = {"Authorization": f"Bearer {live['tokens']['operator']}"}
    assert a.request("POST", "/admin/api/campaigns", consumer_rule(batch.id, name="Flash draw"), admin)[0] == 201
    time.sleep(0.6)
    assert [outcomes(x) for _, x in scan_each(live, consumer(code(live, batch, 0), "u-w"))] == [
        ["granted"], ["already_rewarded"]]
    batch, cid = live["batches"]["resume"], live["resume"]
    resumed = consumer(code(live, batch, 0), "u-w")
    wuma(live, "campaign", "pause", str(cid))
    time.sleep(0.6)
    # both workers' indexes now hold the campaign paused (no reward, the code keeps its chance) ...
    assert [outcomes(x) for _, x in scan_each(live, resumed)] == [[], []]
    wuma(live, "campaign", "resume", str(cid))
    time.sleep(0.6)
    # ... and then resumed
    assert [outcomes(x) for _, x in scan_each(live, resumed, order=(1, 0))] == [["granted"], ["already_rewarded"]]


def test_units_activated_voided_shipped_and_new_key_batches_answer_at_once(live):
    """The trace caches only records that never change (activations, shipments,
    distributors): a unit's state is read on every scan."""
    inactive = live["inactive"]
    first = code(live, inactive, 0)
    assert [a["verdict"] for _, a in scan_each(live, consumer(first, "u-a"))] == ["inactive"] * 2
    wuma(live, "activate", "--sku", "SKU-2", "--name", "Oolong", "--lot", "L2", "--date", "2026-12-01",
         "--batch", str(inactive.id))
    answers = [a for _, a in scan_each(live, consumer(first, "u-a"))]
    assert [(a["verdict"], a["product"]["sku"], a["distributor"]) for a in answers] == [
        ("genuine", "SKU-2", None)] * 2
    wuma(live, "distributor", "add", "sh-1", "--name", "Shanghai", "--region", "3101")
    wuma(live, "ship", code(live, inactive, 0, "cap_outer"), "--to", "sh-1")
    assert [a["distributor"] for _, a in scan_each(live, consumer(first, "u-a"))] == ["sh-1"] * 2
    wuma(live, "void", first, "--reason", "label damaged")
    assert [a["verdict"] for _, a in scan_each(live, consumer(first, "u-a"))] == ["voided"] * 2

    wuma(live, "key", "rotate")
    batch = json.loads(wuma(live, "batch", "create", "--level", "cap", "--count", "4", "--json"))
    fresh = code(live, batch["id"], 0)
    assert batch["key_version"] == 2 and fresh[0] != first[0]
    assert [a["verdict"] for _, a in scan_each(live, consumer(fresh, "u-k"))] == ["inactive"] * 2
    wuma(live, "activate", "--sku", "SKU-2", "--name", "Oolong", "--lot", "L3", "--date", "2026-12-02",
         "--batch", str(batch["id"]))
    assert [a["verdict"] for _, a in scan_each(live, consumer(fresh, "u-k"))] == ["genuine"] * 2
