"""The scan pipeline in process, no HTTP (issue 5's in-process targets).

* invalid code (forged, well-formed): <= 10 µs per scan, median of single calls;
* genuine scan, durable write included in amortised form: <= 30 µs per scan. Measured
  as wall time / scans with 16 threads scanning at once for a fixed time, so the
  group-committed LMDB transaction and its fsync are shared the way the server shares
  them (one fsync per scan alone is printed beside it, as the reference).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from conftest import FULL, report, size

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest_world import build_world  # noqa: E402

from engine.aggregation import Aggregation  # noqa: E402
from engine.scan import ScanPipeline, ScanRequest  # noqa: E402
from engine.scanlog import ScanLog  # noqa: E402


def _genuine_rate(pipeline: ScanPipeline, reqs: list[ScanRequest], threads: int, seconds: float) -> float:
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def run(k: int) -> None:
        i, n = k, 0
        while time.perf_counter() < deadline:
            assert pipeline.scan(reqs[i % len(reqs)]).verdict == "genuine"
            i += threads
            n += 1
        counts[k] = n

    start = time.perf_counter()
    ths = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def test_pipeline_in_process(benchmark, tmp_path):
    w = build_world(tmp_path / "wuma-data", invalid_threshold=10**9, rate_per_minute=10**9)
    data, caps = w["data"], w["caps"]
    scans = ScanLog(data.store)
    pipeline = ScanPipeline(data.codes, Aggregation(data), scans, data.abuse, data.accounts)
    reqs = [ScanRequest(code=data.codes.code(caps, i, "cap_inner"), actor_id=f"wx-{i}",
                        region="440106", device=f"dev-{i}", ip="198.51.100.7") for i in range(caps.count)]
    good = reqs[0].code
    forged = ScanRequest(code=good[:-1] + ("0" if good[-1] != "0" else "1"), actor_id="wx-f",
                         device="dev-f", ip="198.51.100.8")
    try:
        for r in reqs:  # warm-up: numba kernels, caches, first-scan records
            pipeline.scan(r)
        assert pipeline.scan(forged).verdict == "invalid"

        benchmark.pedantic(pipeline.scan, args=(forged,), rounds=size(2_000, 20_000), iterations=1)
        invalid_us = benchmark.stats.stats.median * 1e6

        one = _genuine_rate(pipeline, reqs, 1, 1.0 if not FULL else 5.0)
        many = _genuine_rate(pipeline, reqs, 16, 2.0 if not FULL else 10.0)
    finally:
        scans.close()
        data.close()
    report("scan pipeline in process (no HTTP), strict durable", [
        ("invalid code: median per scan", f"{invalid_us:.1f} µs", "<= 10 µs"),
        ("genuine, 1 caller (one fsync per scan)", f"{1e6 / one:.1f} µs/scan", f"reference ({one:,.0f}/s)"),
        ("genuine, 16 callers (group commit)", f"{1e6 / many:.1f} µs/scan", f"<= 30 µs ({many:,.0f}/s)"),
        ("  ratio 16 callers / 1", f"{many / one:.1f}x", ""),
    ])
    benchmark.extra_info.update(invalid_us=invalid_us, genuine_amortised_us=1e6 / many)
