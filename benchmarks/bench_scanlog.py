"""Durable scan writes: group commit vs one fsync per scan, same run, same disk."""

from __future__ import annotations

import threading
import time

from conftest import report, size

from engine.scanlog import ScanLog
from engine.store import Store


def _rate(log: ScanLog, threads: int, per_thread: int) -> float:
    def worker(t):
        for i in range(per_thread):
            log.record(t * per_thread + i, 0, {"at": time.time(), "region": "4401"})

    ths = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return threads * per_thread / (time.perf_counter() - start)


def test_group_commit_rate(benchmark, tmp_path):
    n = size(300, 5_000)
    store = Store(tmp_path / "db")
    log = ScanLog(store)
    single = _rate(log, 1, n // 2)  # one caller: one scan per transaction and fsync
    result = {}
    benchmark.pedantic(lambda: result.update(rate=_rate(log, 32, n // 8)), rounds=1, iterations=1)
    report("durable scan writes (fsync on every commit)", [
        ("1 caller: one fsync per scan", f"{single:,.0f} scans/s", "reference"),
        ("32 callers: group commit", f"{result['rate']:,.0f} scans/s", ">= 5,000 scans/s"),
        ("  ratio", f"{result['rate'] / single:.1f}x", ""),
    ])
    log.close()
    store.close()
    assert result["rate"] > 0
