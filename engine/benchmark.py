"""Capacity figures for this machine: generation rate, export memory, verify latency.

Used by ``wuma bench`` and by the pytest-benchmark suite in ``benchmarks/``. Figures are
medians; ratios are taken within one run because these machines are noisy.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from engine.data import DataFolder

__all__ = ["run_all", "generation_rate", "render_all", "fastfpe_rate", "verify_latency", "export_peak_rss",
           "machine"]


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"


def generation_rate(data: DataFolder, codes: int, level: str = "pallet", repeat: int = 3) -> float:
    """Codes per second rendered to memory as the ASCII bytes that would be written."""
    batch = data.create_batch(level, codes)
    per_unit = len(batch.roles)
    units = codes // per_unit
    data.codes.render(batch, 0, min(units, 1 << 16))  # JIT warm-up
    rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        render_all(data, batch, units)
        rates.append(units * per_unit / (time.perf_counter() - t))
    return statistics.median(rates)


def render_all(data: DataFolder, batch, units: int, step: int = 1 << 22) -> None:
    """Render ``units`` units to memory in 4M-unit slices (the rendered bytes are dropped)."""
    for s in range(0, units, step):
        data.codes.render(batch, s, min(s + step, units))


def fastfpe_rate(n: int = 20_000) -> float | None:
    """The reference: fastfpe (Rust FF1, PyPI), one code at a time, same code shape."""
    try:
        from fastfpe import ff1
    except ImportError:
        return None
    key = os.urandom(16).hex()
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    texts = ["".join(alphabet[(i >> (5 * j)) & 31] for j in range(19)) for i in range(n)]
    t = time.perf_counter()
    for s in texts:
        ff1.encrypt(key, "", alphabet, s)
    return n / (time.perf_counter() - t)


def verify_latency(data: DataFolder, n: int = 20_000) -> dict:
    batch = data.create_batch("cap", 1000)
    good = data.codes.code(batch, 7, "cap_inner")
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    out = {}

    def measure(prefix):
        for name, text in (("genuine", good), ("invalid", bad)):
            runs = timeit.repeat(lambda t=text: data.codes.verify(t), number=n, repeat=7)
            out[prefix + name] = statistics.median(runs) / n * 1e6

    measure("")
    if data.codes.use_native_ff1():  # as the scan pipeline verifies (compiled FF1 rounds)
        measure("compiled_")
    return out


# NOTE: VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec, so a child of a
# big parent (pytest after the 10M-code tests) would report the parent's peak.
_RSS_SCRIPT = """
import sys
from engine import DataFolder
data = DataFolder(sys.argv[1])
batch = data.batches.get(int(sys.argv[2]))
with open('/dev/null', 'wb') as fh:
    n = data.codes.export_csv(batch, fh)
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]
print(n, int(hwm) * 1024)
"""


def export_peak_rss(data: DataFolder, units: int) -> tuple[float, int]:
    """Export a cap batch (2 codes per unit) as CSV in a child process: (codes/s, peak RSS)."""
    batch = data.create_batch("cap", units)
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(data.path), str(batch.id)],
                         check=True, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t
    n, rss = out.stdout.split()
    return int(n) * 2 / elapsed, int(rss)


def run_all(quick: bool = True) -> dict:
    codes = 4_000_000 if quick else 100_000_000
    export_units = 2_000_000 if quick else 50_000_000
    with tempfile.TemporaryDirectory() as tmp:
        data = DataFolder.init(Path(tmp) / "bench")
        try:
            gen = generation_rate(data, codes)
            ref = fastfpe_rate()
            lat = verify_latency(data)
            exp_rate, rss = export_peak_rss(data, export_units)
        finally:
            data.close()
    rows = [
        {"name": f"generate {codes:,} codes to memory", "value": gen, "display": f"{gen / 1e6:.1f}M codes/s",
         "target": ">= 10M codes/s"},
        {"name": f"  time for {codes:,} codes", "value": codes / gen, "display": f"{codes / gen:.2f} s",
         "target": "<= 10 s per 100M"},
    ]
    if ref:
        rows.append({"name": "fastfpe (Rust FF1) one at a time", "value": ref,
                     "display": f"{ref / 1e3:.0f}k codes/s", "target": "reference"})
        rows.append({"name": "  ratio wuma / fastfpe", "value": gen / ref, "display": f"{gen / ref:.0f}x",
                     "target": ""})
    rows += [
        {"name": "verify one genuine code (median)", "value": lat["genuine"],
         "display": f"{lat['genuine']:.1f} us", "target": "<= 10 us"},
        {"name": "verify one invalid code (median)", "value": lat["invalid"],
         "display": f"{lat['invalid']:.1f} us", "target": "<= 10 us"},
    ]
    if "compiled_genuine" in lat:
        rows += [
            {"name": "  compiled rounds (scan path): genuine / invalid",
             "value": lat["compiled_genuine"],
             "display": f"{lat['compiled_genuine']:.1f} / {lat['compiled_invalid']:.1f} us", "target": ""},
        ]
    rows += [
        {"name": f"export {export_units * 2:,} codes as CSV", "value": exp_rate,
         "display": f"{exp_rate / 1e6:.1f}M codes/s", "target": ""},
        {"name": "  peak RSS of that export", "value": rss, "display": f"{rss / 2**20:.0f} MiB",
         "target": "<= 1024 MiB"},
    ]
    return {"machine": machine(), "quick": quick, "rows": rows}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(run_all(quick="--full" not in sys.argv), indent=2))
