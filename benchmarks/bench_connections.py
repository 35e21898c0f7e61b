"""How clients' connections cost the scan API: keep-alive against a new connection per
request, and phones arriving on new connections that they leave open and idle.

The settings these measure are ``wuma serve --keep-alive``, ``--worker-connections`` and
``--accept-batch`` (engine/gunicorn_conf.py); README "Connections and keep-alive" has the
figures.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

from conftest import FULL, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_http import _commits  # noqa: E402
from conftest_world import build_world  # noqa: E402
from loadgen import process_cpu_seconds, rss_mib, run_arrivals, run_wrk, scan_bodies  # noqa: E402
from server import Server  # noqa: E402


def _world(tmp_path) -> tuple[Path, list[dict]]:
    data = tmp_path / "wuma-data"
    w = build_world(data, invalid_threshold=10**9, rate_per_minute=10**9)
    bodies = scan_bodies(w["data"].codes, w["caps"])
    w["data"].close()
    return data, bodies


def _wrk_run(server: Server, data: Path, bodies: list[dict], seconds: float, close: bool) -> dict:
    c0, t0 = process_cpu_seconds(server.proc.pid), _commits(data)
    out = run_wrk(server.port, "/v1/scans", bodies, seconds=seconds, connections=16, close=close)
    c1 = process_cpu_seconds(server.proc.pid)
    out["cpu_ms"] = sum(c1[p] - c0.get(p, 0.0) for p in c1) / out["requests"] * 1e3
    out["per_commit"] = out["requests"] / max(1, _commits(data) - t0)
    return out


def test_new_connection_per_request_vs_keep_alive(benchmark, tmp_path):
    """16 clients scanning as fast as answered, on kept connections or on a new connection
    per request (``Connection: close``, as a client without keep-alive, or a proxy without
    upstream keep-alive), with workers accepting 1 connection at a time (gunicorn's own) or
    up to 8 (``--accept-batch 8``, Wuma's default); alternated rounds, one server per setting
    and round."""
    seconds, rounds = (8.0, 3) if FULL else (2.0, 1)
    data, bodies = _world(tmp_path)
    runs: dict[str, list[dict]] = {}

    def alternated():
        for _ in range(rounds):
            for batch in (1, 8):
                server = Server(data, args=("--accept-batch", str(batch)))
                try:
                    run_wrk(server.port, "/v1/scans", bodies, seconds=1.0, connections=16)  # warm-up
                    for close in (False, True):
                        label = f"{'new connection' if close else 'keep-alive'}, accept {batch}"
                        runs.setdefault(label, []).append(_wrk_run(server, data, bodies, seconds, close))
                finally:
                    server.stop()

    benchmark.pedantic(alternated, rounds=1, iterations=1)
    rows = []
    for label, rs in runs.items():
        assert all(r["statuses"] == {200: r["requests"]} for r in rs), [r["statuses"] for r in rs]
        med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms", "per_commit")}
        rows += [(f"{label}: scans/s", f"{med['rps']:,.0f}", "runs " + ", ".join(f"{r['rps']:,.0f}" for r in rs)),
                 ("  p50 / p99", f"{med['p50_ms']:.1f} / {med['p99_ms']:.1f} ms", ""),
                 ("  server CPU per scan", f"{med['cpu_ms']:.2f} ms", ""),
                 ("  scans per group commit", f"{med['per_commit']:.1f}", "")]

    def ratio(a: str, b: str) -> float:
        return statistics.median(x["rps"] / y["rps"] for x, y in zip(runs[a], runs[b]))

    rows += [("new connection / keep-alive, accept 1", f"{ratio('new connection, accept 1', 'keep-alive, accept 1'):.2f}",
              "same round"),
             ("new connection: accept 8 / accept 1", f"{ratio('new connection, accept 8', 'new connection, accept 1'):.2f}",
              "alternated rounds"),
             ("keep-alive: accept 8 / accept 1", f"{ratio('keep-alive, accept 8', 'keep-alive, accept 1'):.2f}",
              "alternated rounds")]
    report(f"scans over kept vs new connections, 16 clients, {seconds:.0f} s x {rounds}", rows)


def _arrivals(data: Path, bodies: list[dict], rate: float, seconds: float, connections: int,
              keep_alive: int, accept_batch: int) -> dict:
    server = Server(data, args=("--worker-connections", str(connections), "--keep-alive", str(keep_alive),
                                "--accept-batch", str(accept_batch)))
    try:
        time.sleep(0.5)
        before = rss_mib(server.proc.pid)
        peak = [before]
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                peak[0] = max(peak[0], rss_mib(server.proc.pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            out = run_arrivals(server.port, "/v1/scans", bodies, rate=rate, seconds=seconds,
                               linger=keep_alive + (5.0 if FULL else 0.5))
        finally:
            done.set()
            sampler.join()
        out["rss_added_mib"] = peak[0] - before
        return out
    finally:
        server.stop()


def test_phones_arriving_on_new_connections(benchmark, tmp_path):
    """Phones, each on a new connection: one scan, then the connection left open and idle
    until the server's keep-alive timeout closes it (no proxy in front). Each idle
    connection holds one of a worker's connections: with too few, new phones wait."""
    rate, seconds = (1500.0, 15.0) if FULL else (100.0, 1.0)
    data, bodies = _world(tmp_path)
    # NOTE: small runs scale the connections down with the rate, so they still show the effect
    few = 1000 if FULL else 25
    settings = {f"{few:,} connections a worker (gunicorn's default is 1,000), keep-alive 5 s, accept 1": (few, 5, 1),
                "10,000 a worker, keep-alive 5 s, accept 1": (10_000, 5, 1),
                "10,000 a worker, keep-alive 2 s, accept 1": (10_000, 2, 1),
                "10,000 a worker, keep-alive 5 s, accept 8: Wuma's defaults": (10_000, 5, 8)}
    results: dict[str, dict] = {}

    def each():
        for label, (connections, keep_alive, batch) in settings.items():
            results[label] = _arrivals(data, bodies, rate, seconds, connections, keep_alive, batch)

    benchmark.pedantic(each, rounds=1, iterations=1)
    rows = []
    for label, r in results.items():
        per_conn = r["rss_added_mib"] * 1024 / max(1, r["open_max"])
        rows += [(label, "", ""),
                 ("  answered / arrived", f"{r['answered']:,} / {r['arrivals']:,}",
                  f"unanswered {r['unanswered']}, refused {r['refused']}; {r['statuses']}"),
                 ("  answer p50 / p99 / max", f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} / {r['max_ms']:.0f} ms",
                  "the answered, from their arrival"),
                 ("  connections open or queued at once, at most", f"{r['open_max']:,}",
                  f"idle kept {r['idle_kept_s']:.1f} s"),
                 ("  server memory added", f"{r['rss_added_mib']:.0f} MiB", f"~{per_conn:.0f} KiB a connection open or queued")]
    report(f"phones arriving at {rate:,.0f}/s for {seconds:.0f} s, each leaving its connection open", rows)
    default_run = results["10,000 a worker, keep-alive 5 s, accept 8: Wuma's defaults"]
    assert default_run["answered"] == default_run["arrivals"], default_run
