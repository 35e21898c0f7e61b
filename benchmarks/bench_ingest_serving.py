"""A line-collection ingest while the scan API serves (capacity planning for line files).

LMDB has one writer at a time, so genuine scans cannot commit while an ingest's write
transaction runs; they wait for it. Everything else must keep being answered: the
workers' committers wait for the ingest's commit turn aside (engine/scanlog.py,
``bulk_write``). Here 4 clients scan genuine codes and 4 check codes (the landing page's
read-only GET), each on its own keep-alive connection with a 5 ms pause between
requests, while ``wuma aggregate load`` ingests a fresh production run's line file (240k
caps by default, 10M with ``WUMA_BENCH=full``, ``WUMA_BENCH_CAPS=N`` for any size).
Reported: the ingest's time, and the longest answer of each kind during it; a scan that
waited for the write shows its length.

A commit's fsync runs on its worker's own thread, so a slow fsync stalls every request of
that worker (engine/scanlog.py, _CommitTurn). To tell such stalls from the ingest's, a
probe thread fsyncs 4 KiB of another file on the same disk every 5 ms, and the report
counts the checks over 50 ms that overlapped one of its slow (over 20 ms) fsyncs.

Each kind's 4 connections are spread 2 and 2 over the 2 workers (left to themselves, one
worker took 7 of the 8), so the report can say which worker each slow check was on, and
how many slow checks came while the other worker's checks were slow too (a stall of both
workers at once).
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_aggregation import _line_file
from conftest import report, size
from loadgen import spread_connections

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest_world import build_world  # noqa: E402
from server import Server  # noqa: E402


def _client(conn: http.client.HTTPConnection, worker: int | None, kind: str, codes: list[str], k: int,
            until: list, out: list) -> None:
    i = k
    while until[0] is None or time.time() < until[0]:
        start = time.time()
        if kind == "scan":
            conn.request("POST", "/v1/scans", json.dumps({"code": codes[i % len(codes)], "device": f"d-{k}"}),
                         {"Content-Type": "application/json"})
        else:
            conn.request("GET", f"/v1/codes/{codes[i % len(codes)]}")
        r = conn.getresponse()
        r.read()
        out.append((start, time.time() - start, r.status, worker))
        i += 4
        time.sleep(0.005)


def _disk_probe(path: Path, until: list, out: list) -> None:
    """fsync 4 KiB of ``path`` every 5 ms; ``out`` gets (start, seconds) of each."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        block, i = b"\0" * 4096, 0
        while until[0] is None or time.time() < until[0]:
            os.pwrite(fd, block, (i % 256) * 4096)
            start = time.time()
            os.fdatasync(fd)
            out.append((start, time.time() - start))
            i += 1
            time.sleep(0.005)
    finally:
        os.close(fd)


def test_ingest_while_serving(benchmark, tmp_path):
    n_caps = int(os.environ.get("WUMA_BENCH_CAPS") or size(240_000, 10_000_000))
    w = build_world(tmp_path / "wuma-data", invalid_threshold=10**9, rate_per_minute=10**9)
    data = w["data"]
    codes = [data.codes.code(w["caps"], i, "cap_inner") for i in range(w["caps"].count)]
    links, _ = _line_file(data, tmp_path / "lines.csv", n_caps)
    data.close()
    server = Server(tmp_path / "wuma-data")
    until: list = [None]
    seen: dict[str, list] = {"scan": [], "check": []}
    fsyncs: list = []
    # NOTE: each kind's 4 connections 2 and 2 on the two workers, so that a stall of one
    # worker shows as a stall of its clients only
    placed = {kind: spread_connections(server.port, server.proc.pid, 4) for kind in seen}
    clients = [threading.Thread(target=_client, args=(conn, pid, kind, codes, k, until, seen[kind]), daemon=True)
               for kind in seen for k, (conn, pid) in enumerate(placed[kind])]
    clients.append(threading.Thread(target=_disk_probe, args=(tmp_path / "probe.dat", until, fsyncs), daemon=True))
    gc.disable()  # NOTE: a full collection in this process (the clients) stalled them ~70 ms
    try:
        for t in clients:
            t.start()
        time.sleep(2.0)  # the clients alone first

        def ingest():
            start = time.time()
            subprocess.run([sys.executable, "-m", "cli", "--data", str(tmp_path / "wuma-data"), "aggregate",
                            "load", str(tmp_path / "lines.csv")], cwd=ROOT, check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
            return start, time.time()

        start, end = benchmark.pedantic(ingest, rounds=1, iterations=1)
        until[0] = time.time() + 1.0
        for t in clients:
            t.join(600)
    finally:
        gc.enable()
        server.stop()

    def longest(kind: str, during: bool) -> tuple[float, int]:
        xs = [lat for s, lat, _, _ in seen[kind] if (start <= s <= end) == during]
        return (max(xs) * 1e3 if xs else 0.0), len(xs)

    rows = []
    for kind in seen:
        before, n_before = longest(kind, False)
        during, n_during = longest(kind, True)
        rows += [(f"{kind}: longest answer outside the ingest", f"{before:.1f} ms", f"{n_before} requests"),
                 (f"{kind}: longest answer during it", f"{during:.1f} ms", f"{n_during} requests")]
    slow_fsyncs = [(s, d) for s, d in fsyncs if d > 0.02]
    slow_checks = [(s, lat, w) for s, lat, _, w in seen["check"] if lat > 0.05]
    explained = sum(any(s - 0.01 <= f <= s + lat for f, _ in slow_fsyncs) for s, lat, _ in slow_checks)
    held = {kind: [pid for _, pid in placed[kind]] for kind in seen}
    workers = sorted({pid for pids in held.values() for pid in pids if pid is not None})
    # a slow check on one worker while a check on the other was slow too: both stalled
    both = sum(any(None not in (w, v) and w != v and s < t + m and t < s + lat for t, m, v in slow_checks)
               for s, lat, w in slow_checks)
    probe = sorted(d for _, d in fsyncs) or [0.0]
    report(f"ingest of {links:,} links ({n_caps:,} caps) while 4 clients scan and 4 check", [
        ("ingest (wuma aggregate load, its own process)", f"{end - start:.1f} s", f"{links / (end - start):,.0f} links/s"),
        *rows,
        ("disk: probe fsyncs, median / longest", f"{probe[len(probe) // 2] * 1e3:.1f} / {probe[-1] * 1e3:.0f} ms",
         f"{len(slow_fsyncs)} of {len(fsyncs)} over 20 ms"),
        ("checks over 50 ms / overlapping a slow fsync", f"{len(slow_checks)} / {explained}", ""),
        ("  by worker (its connections: scan + check)", ", ".join(
            f"{sum(1 for *_, w in slow_checks if w == pid)} ({held['scan'].count(pid)} + "
            f"{held['check'].count(pid)})" for pid in workers), "spread 2 + 2 on each"),
        ("  while the other worker's checks were slow too", f"{both}", ""),
    ])
    benchmark.extra_info.update(ingest_s=end - start, slow_checks=len(slow_checks), slow_checks_both_workers=both,
                                slow_checks_at_slow_fsyncs=explained, slow_fsyncs=len(slow_fsyncs), **{
        f"{kind}_longest_during_ms": longest(kind, True)[0] for kind in seen})
    assert {status for kind in seen for _, _, status, _ in seen[kind]} == {200}
    assert seen["check"] and seen["scan"]
