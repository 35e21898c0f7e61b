"""Scan API over HTTP vs a bare Falcon endpoint, same gunicorn config, same run."""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

from conftest import FULL, report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest_world import build_world  # noqa: E402
from loadgen import process_cpu_seconds, run_load, scan_bodies  # noqa: E402
from server import Server, commits  # noqa: E402

from cli.localserver import start_gunicorn, stop  # noqa: E402


def _commits(data: Path | None) -> int:
    return 0 if data is None else commits(data)


def _measure(port: int, pid: int, bodies: list[dict], seconds: float, connections: int = 16,
             data: Path | None = None) -> dict:
    """Requests/s, p50/p99, server CPU per request and the workers' shares of it (wrk's
    connections land on the workers as they accept them: an uneven split shows here);
    with the scan API's ``data`` folder also scans per commit (how many scans each group
    commit, and its fsyncs, carried)."""
    run_load(port, "/v1/scans", bodies, seconds=1.0)  # warm-up (numba, caches), not measured
    c0, t0 = process_cpu_seconds(pid), _commits(data)
    out = run_load(port, "/v1/scans", bodies, seconds=seconds, processes=2, connections=connections // 2)
    c1 = process_cpu_seconds(pid)
    used = {p: c1[p] - c0.get(p, 0.0) for p in c1}
    out["cpu_ms"] = sum(used.values()) / out["requests"] * 1e3
    workers = sorted((v for p, v in used.items() if p != pid), reverse=True)  # NOTE: pid is the master
    out["split"] = " / ".join(f"{v / max(sum(workers), 1e-9):.0%}" for v in workers)
    if data is not None:
        out["per_commit"] = out["requests"] / max(1, _commits(data) - t0)
    return out


def _bare(worker_class: str, bodies: list[dict], seconds: float) -> dict:
    proc, port = start_gunicorn("bare_app:app", cwd=ROOT, env={
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}", "WUMA_WORKER_CLASS": worker_class})
    try:
        return _measure(port, proc.pid, bodies, seconds)
    finally:
        stop(proc)


def _scan(data: Path, worker_class: str, bodies: list[dict], seconds: float, connections: int = 16) -> dict:
    server = Server(data, worker_class=worker_class)
    try:
        return _measure(server.port, server.proc.pid, bodies, seconds, connections, data)
    finally:
        server.stop()


def _medians(runs: list[dict]) -> dict:
    """One figure per measure: the median over alternated runs (this machine's speed drifts
    within minutes), with every run's requests/s kept."""
    out = {k: statistics.median(m[k] for m in runs) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms", "per_commit")
           if k in runs[0]}
    out["statuses"] = {}
    for m in runs:
        for status, n in m["statuses"].items():
            out["statuses"][status] = out["statuses"].get(status, 0) + n
    out["client"], out["runs_rps"] = runs[0]["client"], [round(m["rps"]) for m in runs]
    out["split"] = ", ".join(m["split"] for m in runs)
    return out


def test_scan_endpoint_vs_bare_falcon(benchmark, tmp_path):
    seconds = 15.0 if FULL else 3.0
    rounds = 3 if FULL else 1
    data = tmp_path / "wuma-data"
    w = build_world(data, invalid_threshold=10**9, rate_per_minute=10**9)
    caps = w["caps"]
    bodies = scan_bodies(w["data"].codes, caps)
    w["data"].close()
    bare_runs: list[dict] = []
    scan_runs: list[dict] = []

    def alternated():  # bare, scan, bare, scan, ...: each pair sees the machine alike
        for _ in range(rounds):
            bare_runs.append(_bare("gevent", bodies, seconds))
            scan_runs.append(_scan(data, "gevent", bodies, seconds))

    benchmark.pedantic(alternated, rounds=1, iterations=1)
    r = {"bare": _medians(bare_runs), "scan": _medians(scan_runs)}
    ratios = [sr["rps"] / br["rps"] for br, sr in zip(bare_runs, scan_runs)]
    # NOTE: the previous worker class, for comparison: thread hand-offs cost more than scans
    r["bare_gthread"] = _bare("gthread", bodies, seconds)
    r["scan_gthread"] = _scan(data, "gthread", bodies, seconds)
    r["relaxed"] = _scan_durability(data, "relaxed", bodies, seconds)
    if FULL:  # NOTE: for capacity planning: more clients at once, bigger group commits
        r["scan_32"] = _scan(data, "gevent", bodies, seconds, connections=32)
    _three_campaigns(data, w)
    r["campaigns"] = _scan(data, "gevent", bodies, seconds)

    def rows(label, m, target="", ref=None, ref_label="bare"):
        out = [(f"{label}: requests/s", f"{m['rps']:,.0f}", target),
               ("  p50 / p99", f"{m['p50_ms']:.1f} / {m['p99_ms']:.1f} ms", "p99 <= 20 ms" if target else ""),
               ("  server CPU per request", f"{m['cpu_ms']:.2f} ms", ""),
               ("  workers' shares of it", m["split"], "")]
        if "per_commit" in m:
            out.append(("  scans per group commit", f"{m['per_commit']:.1f}", ""))
        if ref is not None:
            out.append((f"  ratio to {ref_label}", f"{m['rps'] / ref['rps']:.0%}", ">= 80%" if target else ""))
        return out

    b, s = r["bare"], r["scan"]
    report(f"HTTP, 2 gunicorn workers, 16 keep-alive connections ({b['client']} client), {seconds:.0f} s "
           f"each; bare and scan alternated {rounds}x, medians", [
        *rows("bare Falcon, gevent (the reference)", b),
        ("  each run", ", ".join(f"{x:,}" for x in b["runs_rps"]), ""),
        *rows("scan, strict durable, gevent", s, ">= 5,000"),
        ("  each run", ", ".join(f"{x:,}" for x in s["runs_rps"]), ""),
        ("  ratio to bare (median of the pairs)", f"{statistics.median(ratios):.0%}",
         ">= 80%"),
        ("  statuses", str(s["statuses"]), "all 200"),
        *rows("scan, relaxed durability (meta page not fsynced)", r["relaxed"], "", s, "strict"),
        *(rows("scan, strict, 32 connections (one run)", r["scan_32"], "", s, "16 connections")
          if "scan_32" in r else []),
        *rows("scan with 3 campaigns active, gevent", r["campaigns"], "", s, "plain scans"),
        *rows("bare Falcon, gthread x 16 threads", r["bare_gthread"]),
        *rows("scan, strict durable, gthread x 16", r["scan_gthread"], "", r["bare_gthread"], "gthread bare"),
        ("gevent scans / gthread bare", f"{s['rps'] / r['bare_gthread']['rps']:.0%}", ""),
    ])
    benchmark.extra_info.update({k: v for k, v in s.items() if k not in ("statuses", "split")})
    assert all(set(m["statuses"]) == {200} for m in r.values())


def _scan_durability(data: Path, durability: str, bodies: list[dict], seconds: float) -> dict:
    """The scan endpoint with the data folder set to ``durability``, then back to strict."""
    from engine import DataFolder

    def store(value):
        with DataFolder(data) as folder:
            folder.update_config(store={"durability": value})

    store(durability)
    try:
        return _scan(data, "gevent", bodies, seconds)
    finally:
        store("strict")


def _three_campaigns(path, w) -> None:
    """A consumer draw with bC/BbC rebates, a store open-case reward and a store
    registration reward on the scanned batches, drawing on one large pool."""
    import time

    from admin.service import Admin
    from engine import DataFolder

    with DataFolder(path) as data:
        admin = Admin(data)
        admin.pools.create("bench", total=10**11, who="bench")
        window = {"start": time.time() - 60, "end": time.time() + 86400}

        def rule(name, code_role, actor_role, batch, **extra):
            return {"name": name, "pool": "bench", "trigger": {"code_role": code_role, "actor_role": actor_role},
                    "target": {"batches": [batch]}, "window": window, **extra}

        admin.campaigns.create(rule("draw", "cap_inner", "consumer", w["caps"].id, reward={
            "kind": "draw", "tiers": [{"amount": 100, "odds": 0.5}, {"amount": 0, "odds": 0.5}]},
            rebates=[{"to": "store", "amount": 10}, {"to": "distributor", "amount": 5}]), who="bench")
        admin.campaigns.create(rule("open case", "case_inner", "store", w["cases"].id,
                                    reward={"kind": "fixed", "amount": 100}), who="bench")
        admin.campaigns.create(rule("register", "cap_outer", "store", w["caps"].id,
                                    reward={"kind": "fixed", "amount": 10}), who="bench")
        admin.close()
