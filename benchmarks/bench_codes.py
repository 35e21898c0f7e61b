"""Issue 2 figures: generation rate vs fastfpe, streaming export memory, verify latency."""

from __future__ import annotations

import statistics
import timeit

from conftest import report, size

from engine.benchmark import export_peak_rss, fastfpe_rate, render_all


def test_generation_rate(benchmark, bench_data):
    """100M codes to memory (as the bytes that would be written) in <= 10 s."""
    codes = size(4_000_000, 100_000_000)
    batch = bench_data.create_batch("pallet", codes)
    bench_data.codes.render(batch, 0, 1 << 16)  # JIT warm-up
    benchmark.pedantic(render_all, args=(bench_data, batch, codes),
                       rounds=3 if codes < 10**7 else 1, iterations=1)
    rate = codes / benchmark.stats.stats.median
    ref = fastfpe_rate(5_000)
    rows = [(f"generate {codes:,} codes", f"{rate / 1e6:.1f}M codes/s", ">= 10M codes/s"),
            ("  seconds per 100M codes", f"{1e8 / rate:.2f} s", "<= 10 s")]
    if ref:
        rows += [("fastfpe one at a time (reference)", f"{ref / 1e3:.0f}k codes/s", ""),
                 ("  ratio wuma / fastfpe", f"{rate / ref:.0f}x", "")]
    report("generation", rows)
    assert rate > 0


def test_export_streaming_memory(benchmark, bench_data):
    """Exporting any batch size keeps peak RSS <= 1 GiB (child process, CSV to /dev/null)."""
    units = size(500_000, 50_000_000)
    result = {}

    def run():
        result["rate"], result["rss"] = export_peak_rss(bench_data, units)

    benchmark.pedantic(run, rounds=1, iterations=1)
    report("export (CSV, 2 codes per unit)", [
        (f"export {units * 2:,} codes", f"{result['rate'] / 1e6:.1f}M codes/s", "incl. process start"),
        ("  peak RSS", f"{result['rss'] / 2**20:.0f} MiB", "<= 1024 MiB"),
    ])
    assert result["rss"] < 2**30


def test_verify_latency(benchmark, bench_data):
    """One code in process <= 10 us (decode + FF1 decrypt + tag check + batch lookup)."""
    batch = bench_data.create_batch("cap", 1000)
    good = bench_data.codes.code(batch, 7, "cap_inner")
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    benchmark(bench_data.codes.verify, good)
    n = 5_000
    bad_us = statistics.median(timeit.repeat(lambda: bench_data.codes.verify(bad), number=n, repeat=5)) / n * 1e6
    report("verification", [
        ("verify genuine (median)", f"{benchmark.stats.stats.median * 1e6:.1f} us", "<= 10 us"),
        ("verify invalid (median)", f"{bad_us:.1f} us", "<= 10 us"),
    ])
    assert bench_data.codes.verify(good).genuine and not bench_data.codes.verify(bad).genuine
