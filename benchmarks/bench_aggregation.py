"""Aggregation speed and size: ingest links/s, bytes per link, trace latency.

Small by default (240k caps in 10k cases on 167 pallets, well under 30 s):

    .venv/bin/pytest -q benchmarks/bench_aggregation.py --benchmark-only -s

``WUMA_BENCH=full`` uses the production day (100M caps in 4.17M cases of 24 on 69.5k
pallets of 60; needs ~15 GB of RAM and a few GB of disk); ``WUMA_BENCH_CAPS=N`` picks
any size. Figures are printed and kept in the benchmark's ``extra_info``.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from engine import DataFolder
from engine.aggregation import Aggregation

CAPS_PER_CASE = 24
CASES_PER_PALLET = 60


def _caps() -> int:
    if os.environ.get("WUMA_BENCH_CAPS"):
        return int(os.environ["WUMA_BENCH_CAPS"])
    return 100_000_000 if os.environ.get("WUMA_BENCH") == "full" else 240_000


def _line_file(data, path, n_caps: int, shuffle: bool = False) -> tuple[int, list[str]]:
    """A line-collection CSV for a fresh production run; returns (links, some cap codes)."""
    n_cases = -(-n_caps // CAPS_PER_CASE)
    n_pallets = -(-n_cases // CASES_PER_PALLET)
    caps = data.create_batch("cap", n_caps)
    cases = data.create_batch("case", n_cases)
    pallets = data.create_batch("pallet", n_pallets)
    L = 20
    sample = []
    with open(path, "wb") as fh:
        step = 1_000_000 // CAPS_PER_CASE * CAPS_PER_CASE
        perm = np.random.default_rng(1).permutation(n_caps) if shuffle else None
        for s in range(0, n_caps, step):
            e = min(s + step, n_caps)
            if perm is None:
                cm = data.codes.render(caps, s, e)[:, :L]
            else:
                full = data.codes.render(caps, 0, n_caps)[:, :L]  # small sizes only
                cm = full[perm[s:e]]
            c0, c1 = s // CAPS_PER_CASE, -(-e // CAPS_PER_CASE)
            km = data.codes.render(cases, c0, c1)[:, :L]
            k = c1 - c0
            pad = np.zeros(((k * CAPS_PER_CASE) - (e - s), L), np.uint8)
            cm2 = np.concatenate([cm, pad]).reshape(k, CAPS_PER_CASE, L) if len(pad) else \
                cm.reshape(k, CAPS_PER_CASE, L)
            rows = np.empty((k, L + CAPS_PER_CASE * (L + 1) + 1), np.uint8)
            rows[:, :L] = km
            body = np.empty((k, CAPS_PER_CASE, L + 1), np.uint8)
            body[:, :, 0] = ord(",")
            body[:, :, 1:] = cm2
            rows[:, L:-1] = body.reshape(k, -1)
            rows[:, -1] = ord("\n")
            out = rows.tobytes()
            if len(pad):  # last case is short: cut the padding fields
                last = out.rsplit(b"\n", 2)[-2]
                keep = (e - s) - (k - 1) * CAPS_PER_CASE
                out = out[: len(out) - len(last) - 1] + last[: L + keep * (L + 1)] + b"\n"
            fh.write(out)
            if not sample:
                sample = [cm[i].tobytes().decode() for i in range(0, min(len(cm), 1000), 97)]
        for p0 in range(0, n_pallets, 10_000):
            p1 = min(p0 + 10_000, n_pallets)
            pm = data.codes.render(pallets, p0, p1)[:, :L]
            for i in range(p1 - p0):
                a, b = (p0 + i) * CASES_PER_PALLET, min((p0 + i + 1) * CASES_PER_PALLET, n_cases)
                km = data.codes.render(cases, a, b)[:, :L]
                fh.write(pm[i].tobytes() + b"," + b",".join(r.tobytes() for r in km) + b"\n")
    return n_caps + n_cases, sample


def _used_bytes(data) -> int:
    info = data.store.env.info()
    return (info["last_pgno"] + 1) * data.store.env.stat()["psize"]


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    base = tmp_path_factory.mktemp("agg")
    data = DataFolder.init(base / "w")
    path = base / "line.csv"
    t0 = time.perf_counter()
    links, sample = _line_file(data, path, _caps())
    print(f"\n[aggregation] generated {links:,} links ({path.stat().st_size / 1e6:.0f} MB) "
          f"in {time.perf_counter() - t0:.1f} s")
    yield data, Aggregation(data), path, links, sample
    data.close()


def test_ingest_links_per_second_and_bytes_per_link(benchmark, day):
    data, agg, path, links, _ = day
    before = _used_bytes(data)
    rep = agg.load(path)  # first load: measure the store's growth
    assert rep.loaded and rep.links_added == links, rep.bad[:3]
    grown = _used_bytes(data) - before
    seconds = []

    def clear():
        with data.store.write() as txn:
            for db in (agg._c2p_db, agg._p2c_db, agg._events_db, agg._unit_events_db,
                       agg._load_runs_db):
                txn.drop(db, delete=False)

    def load():
        t = time.perf_counter()
        r = agg.load(path)
        seconds.append(time.perf_counter() - t)
        assert r.links_added == links

    rounds = 1 if links > 20_000_000 else 3
    benchmark.pedantic(load, setup=clear, rounds=rounds, iterations=1)
    t = min(seconds)
    t0 = time.perf_counter()
    again = agg.load(path)
    rerun = time.perf_counter() - t0
    assert again.links_added == 0 and again.links_existing == links
    benchmark.extra_info.update(links=links, links_per_s=links / t, bytes_per_link=grown / links,
                                rerun_s=rerun)
    print(f"[aggregation] ingest {links:,} links in {t:.2f} s = {links / t / 1e6:.2f} M links/s "
          f"(target 2 M/s); store grew {grown / links:.2f} bytes/link both directions "
          f"(target 40); idempotent re-run {rerun:.2f} s")


def test_bytes_per_link_out_of_order(tmp_path):
    """Worst case for the run layout: caps packed in random order (runs of one)."""
    data = DataFolder.init(tmp_path / "w")
    try:
        links, _ = _line_file(data, tmp_path / "l.csv", min(_caps(), 240_000), shuffle=True)
        agg = Aggregation(data)
        before = _used_bytes(data)
        t = time.perf_counter()
        assert agg.load(tmp_path / "l.csv").links_added == links
        t = time.perf_counter() - t
        per = (_used_bytes(data) - before) / links
        print(f"\n[aggregation] shuffled packing: {per:.1f} bytes/link, "
              f"{links / t / 1e6:.2f} M links/s")
    finally:
        data.close()


def test_trace_latency(benchmark, day):
    data, agg, path, links, sample = day
    if not agg.trace(sample[0])["ancestors"]:  # run alone (-k trace): load first
        agg.load(path)
    if not agg.distributors():
        agg.add_distributor("gz-01", "Guangzhou", ["4401"])
        t = agg.trace(sample[0])
        pallet = t["ancestors"][-1]
        agg.activate(sku="S", name="N", lot="L", production_date="2026-11-21",
                     batch=t["unit"]["batch"])
        agg.ship([agg.code_of(pallet["uid"])], "gz-01")
    code = sample[0]
    t = agg.trace(code)
    assert t["distributor"]["id"] == "gz-01" and len(t["ancestors"]) == 2
    uid = agg.unit(code)
    n = 20_000
    timings = {}
    for label, fn in (("trace(code)", lambda: agg.trace(code)),
                      ("trace(code, history=False)", lambda: agg.trace(code, history=False)),
                      ("trace_unit(uid, history=False)",
                       lambda: agg.trace_unit(uid, history=False)),
                      ("codes.verify(code)", lambda: data.codes.verify(code))):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        timings[label] = (time.perf_counter() - t0) / n * 1e6
    benchmark(agg.trace, code)
    benchmark.extra_info.update({k + " us": v for k, v in timings.items()})
    print("\n" + "\n".join(f"[aggregation] {k}: {v:.1f} us (target 20)"
                           for k, v in timings.items()))
