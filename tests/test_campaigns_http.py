"""A small pool under thousands of concurrent scans through the real server (2 gunicorn
workers, 16 threads each): never overspent, no code paid twice, every acknowledged reward
in the ledger."""

from __future__ import annotations

import threading
import time

from admin.service import Admin
from conftest_world import build_world
from engine import DataFolder
from server import Server

N_CAPS = 2_000
POOL = 50 * 100  # affords exactly 50 rewards of 1 yuan (rebates included below)


def test_small_pool_under_concurrent_scans_across_workers(tmp_path):
    path = tmp_path / "wuma-data"
    w = build_world(path, rate_per_minute=10**7)
    data = w["data"]
    caps = data.create_batch("cap", N_CAPS)
    w["agg"].activate(sku="SKU-1", name="Green tea 500ml", lot="L9", production_date="2026-11-01",
                      batch=caps.id)
    admin = Admin(data)
    admin.pools.create("small", total=POOL, who="test")
    now = time.time()
    admin.campaigns.create({
        "name": "Small pool", "pool": "small", "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
        "target": {"batches": [caps.id]}, "window": {"start": now - 60, "end": now + 3600},
        "reward": {"kind": "fixed", "amount": 100}, "limits": {"per_actor_per_day": 10_000}}, who="test")
    codes = [data.codes.code(caps, i, "cap_inner") for i in range(N_CAPS)]
    admin.close()
    data.close()

    server = Server(path)
    answers: list = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        conn = server.conn()
        mine = []
        # every code twice (by two consumers), so "one reward per code" is raced as well
        for i in range(k, 2 * N_CAPS, 32):
            status, body = server.scan({"code": codes[i % N_CAPS], "actor": {"role": "consumer", "id": f"u{i % 7}"},
                                        "location": {"region": "440106"}}, conn=conn)
            mine.append((i % N_CAPS, status, body))
        with lock:
            answers.extend(mine)

    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.stop()

    assert len(answers) == 2 * N_CAPS
    assert all(status == 200 for _, status, _ in answers), {s for _, s, _ in answers}
    granted = [(serial, b["rewards"][0]) for serial, _, b in answers
               if b["rewards"] and b["rewards"][0]["outcome"] == "granted"]
    assert len(granted) == POOL // 100
    assert len({serial for serial, _ in granted}) == len(granted)  # no code paid twice
    outcomes = {b["rewards"][0]["outcome"] for _, _, b in answers if b["rewards"]}
    assert outcomes <= {"granted", "budget_exhausted", "already_rewarded"}

    with DataFolder(path) as data:
        admin = Admin(data)
        entries = admin.ledger.entries(limit=10_000)
        assert sorted(e["seq"] for e in entries) == sorted(r["ledger"] for _, r in granted)
        assert sum(e["amount"] for e in entries) == POOL == admin.pools.status("small")["spent"]
