"""Statistics: fold-in rate of new scan events and report latency.

A synthetic month of scans is written through the scan log's public ``record`` (group
commit, 64 writer threads), a third of them with a reward settled into the ledger in
the same transaction, on caps activated in runs of 1,000 over 5 SKUs. Then, in the same
run:

* fold-in: the first report folds in the whole log (events/s, ledger entries included);
* report, caught up: nothing new to fold (what every admin page view costs);
* report, 1,000 new events: the steady state under scan traffic;
* reference: one plain pass over the whole log (what a report without counters would
  cost on every request; it counts scans per day and role only).

Small by default (20,000 events); ``WUMA_BENCH=full`` writes 500,000.

    .venv/bin/pytest -q benchmarks/bench_stats.py -s
"""

from __future__ import annotations

import random
import threading
import time

from conftest import report, size

from admin._util import china_day
from admin.service import Admin
from admin.stats import Stats

_REGIONS = [f"{p}{c:02d}{d:02d}" for p in (11, 31, 44, 51) for c in range(1, 6) for d in range(1, 4)]
_MIX = [("consumer", "cap_inner")] * 17 + [("store", "cap_outer"), ("store", "case_inner"), ("distributor", "pallet")]


def _write_events(admin, units: dict, n: int, t0: float, threads: int = 64) -> None:
    """n scan events over 30 days; every third consumer scan settles a grant."""
    spec, log, ledger = admin.data.spec, admin.scans, admin.ledger

    def worker(k: int) -> None:
        rnd = random.Random(k)
        for i in range(k, n, threads):
            actor_role, code_role = _MIX[i % len(_MIX)]
            level = spec.role(code_role).level
            batch, count = units[level]
            region = rnd.choice(_REGIONS)
            event = {"at": t0 + i * (30 * 86400 / n), "verdict": "genuine", "actor_role": actor_role,
                     "actor": f"{actor_role[0]}{rnd.randrange(1000 if actor_role == 'store' else 100_000)}",
                     "region": region, "device": None, "ip": None, "flags": []}
            if region[:2] == "31" and i % 7 == 0:
                event["diverted"] = {"distributor": f"d{i % 20}", "territory": ["44"], "region": region}
            settle = None
            if actor_role == "consumer" and i % 3 == 0:
                def settle(txn, seq, e=event, region=region):
                    ls = ledger.append(txn, {"kind": "grant", "at": e["at"], "campaign": 1 + seq % 3,
                                             "pool": "bench", "scan": seq, "unit": "cash", "amount": 100,
                                             "beneficiary": {"role": "consumer", "id": e["actor"]},
                                             "region": region})
                    return [{"campaign": 1 + seq % 3, "outcome": "granted", "amount": 100, "ledger": ls}]
            uid = (batch.id << 32) | rnd.randrange(count)
            log.record(uid, spec.role(code_role).index, event, settle)

    ths = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()


def _plain_pass(log) -> int:
    counts: dict = {}
    after = 0
    while True:
        page = log.events(after, 10_000)
        for ev in page:
            key = (china_day(ev["at"]), ev["actor_role"])
            counts[key] = counts.get(key, 0) + 1
        if len(page) < 10_000:
            return sum(counts.values())
        after = page[-1]["seq"]


def test_stats_fold_rate_and_report_latency(benchmark, bench_data):
    n = size(20_000, 500_000)
    data = bench_data
    admin = Admin(data, rng=random.Random(1))
    agg = admin.aggregation
    n_caps = size(100_000, 1_000_000)
    caps = data.create_batch("cap", n_caps)
    cases = data.create_batch("case", n_caps // 24)
    pallets = data.create_batch("pallet", n_caps // 24 // 60 + 1)
    for i, s in enumerate(range(0, n_caps, 1000)):
        agg.activate(sku=f"SKU-{i % 5}", name="Tea", lot=f"L{i}", production_date="2026-11-01",
                     serial_range=(caps.id, s, min(s + 1000, n_caps)))
    for b in (cases, pallets):
        agg.activate(sku="SKU-0", name="Tea", lot="L", production_date="2026-11-01", batch=b.id)
    units = {"cap": (caps, caps.count), "case": (cases, cases.count), "pallet": (pallets, pallets.count)}
    t0 = time.time() - 30 * 86400
    start = time.perf_counter()
    _write_events(admin, units, n, t0)
    write_rate = n / (time.perf_counter() - start)
    entries = admin.ledger.last_seq()

    stats = Stats(data, admin)
    start = time.perf_counter()
    first = stats.report()
    fold_s = time.perf_counter() - start
    assert first["folded"] == n + entries and first["scans"]["all_time"]["total"] == n

    benchmark.pedantic(stats.report, rounds=size(20, 50), iterations=1)
    caught_up_ms = benchmark.stats.stats.median * 1e3

    extra = 1_000
    _write_events(admin, units, extra, time.time() - 3600, threads=16)
    start = time.perf_counter()
    later = stats.report()
    incr_ms = (time.perf_counter() - start) * 1e3
    assert later["scans"]["all_time"]["total"] == n + extra

    start = time.perf_counter()
    assert _plain_pass(admin.scans) == n + extra
    plain_s = time.perf_counter() - start

    report(f"statistics over {n:,} scan events ({entries:,} ledger entries), 30 days", [
        ("write events (group commit, reference)", f"{write_rate:,.0f} events/s", ""),
        ("fold-in, first report (whole log)", f"{n / fold_s:,.0f} events/s", f"{fold_s:.2f} s"),
        ("  per event (ledger entries included)", f"{fold_s / n * 1e6:.1f} µs", ""),
        ("report, caught up (median)", f"{caught_up_ms:.1f} ms", ""),
        (f"report with {extra:,} new events", f"{incr_ms:.1f} ms", ""),
        ("plain pass over the whole log (reference)", f"{plain_s * 1e3:,.0f} ms", "per report without counters"),
    ])
    benchmark.extra_info.update(events=n, fold_events_per_s=n / fold_s, report_ms=caught_up_ms,
                                report_1k_new_ms=incr_ms, plain_pass_ms=plain_s * 1e3)
    admin.close()
