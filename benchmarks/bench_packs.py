"""Pack export and open rates (codes/s), and export rate / bare generation rate.

Default: a small pack (2M units, a few seconds; ``WUMA_BENCH_UNITS=N`` to choose).
``WUMA_BENCH=full``: 100M units (the issue's targets: export and open >= 5M codes/s;
peak RSS <= 1 GiB, streaming).

    .venv/bin/pytest -q benchmarks/bench_packs.py -s
    WUMA_BENCH=full .venv/bin/pytest -q benchmarks/bench_packs.py -s

"codes" here are units (one cap = outer + inner code), as in ``wuma bench``.
"""

from __future__ import annotations

import os
import resource
import time

import pytest

from engine import DataFolder
from engine.codes import EXPORT_CHUNK
from engine.lines import LineKeys, generate_line_keys, load_brand_keys
from engine.packs import PackRegistry, open_pack_to_file

FULL = os.environ.get("WUMA_BENCH") == "full"
UNITS = int(os.environ.get("WUMA_BENCH_UNITS") or (100_000_000 if FULL else 2_000_000))
_rates: dict[str, float] = {}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench-packs")
    data = DataFolder.init(tmp / "data")
    reg = PackRegistry(data)
    brand = tmp / "brand-keys.json"
    brand.write_bytes(reg.lines.brand_keys())
    generate_line_keys(tmp / "line", brand_keys=brand.read_bytes())
    reg.lines.add("L1", (tmp / "line" / "line.pub").read_bytes())
    batch = data.create_batch("cap", UNITS)
    (warm,) = reg.export(batch.id, "L1", tmp / "warm", stop=1000)  # JIT warm-up
    reg.revoke(warm.id)  # NOTE: its serials are exported again below (overlaps are refused)
    yield data, reg, batch, tmp
    data.close()


def _generate(data, batch) -> None:
    for _ in data.codes.iter_chunks(batch, 0, batch.count, EXPORT_CHUNK):
        pass


def test_generation_rate(benchmark, world):
    data, _reg, batch, _tmp = world
    t0 = time.perf_counter()
    benchmark.pedantic(_generate, args=(data, batch), rounds=1, iterations=1)
    _rates["generate"] = UNITS / (time.perf_counter() - t0)
    benchmark.extra_info["codes_per_s"] = _rates["generate"]
    print(f"\nbare generation: {_rates['generate'] / 1e6:.2f}M codes/s ({UNITS:,} units)")


def test_export_rate(benchmark, world):
    _data, reg, batch, tmp = world
    out = tmp / "packs"
    t0 = time.perf_counter()
    (p,) = benchmark.pedantic(reg.export, args=(batch.id, "L1", out), rounds=1, iterations=1)
    rate = UNITS / (time.perf_counter() - t0)
    _rates["export"] = rate
    benchmark.extra_info.update(codes_per_s=rate, pack_bytes=p.size)
    msg = f"\npack export: {rate / 1e6:.2f}M codes/s, {p.size / 2**20:,.0f} MiB"
    if "generate" in _rates:
        msg += f"; export / bare generation = {rate / _rates['generate']:.2f}"
    print(msg + f"; peak RSS so far {_peak_rss_mib():,.0f} MiB")


def test_open_rate(benchmark, world):
    _data, _reg, _batch, tmp = world
    (path,) = list((tmp / "packs").glob("*.wpk"))
    keys = LineKeys.load(tmp / "line")
    brand = load_brand_keys(tmp / "line" / "brand-keys.json")
    out = tmp / "codes.csv"
    t0 = time.perf_counter()
    got = benchmark.pedantic(
        open_pack_to_file, args=(path, keys, brand, out), rounds=1, iterations=1
    )
    rate = UNITS / (time.perf_counter() - t0)
    size = out.stat().st_size
    out.unlink()
    path.unlink()
    assert got.count == UNITS
    benchmark.extra_info.update(codes_per_s=rate, csv_bytes=size, peak_rss_mib=_peak_rss_mib())
    print(
        f"\npack open: {rate / 1e6:.2f}M codes/s to CSV ({size / 2**20:,.0f} MiB); "
        f"peak RSS {_peak_rss_mib():,.0f} MiB"
    )
