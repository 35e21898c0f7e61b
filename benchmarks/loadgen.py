"""A small closed-loop HTTP load generator (keep-alive connections, bounded in time).

Runs ``processes`` x ``connections`` clients against one loopback URL for ``seconds``
and returns requests/s and latency percentiles. Used side by side on two endpoints in
one run, so the ratio is what counts on this shared machine.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import threading
import time


def _worker(port, path, bodies, seconds, connections, out_q):
    lat: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = k
        mine, st = [], {}
        while time.perf_counter() < deadline:
            body = bodies[i % len(bodies)]
            i += connections
            t = time.perf_counter()
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            mine.append(time.perf_counter() - t)
            st[r.status] = st.get(r.status, 0) + 1
        conn.close()
        with lock:
            lat.extend(mine)
            for s, n in st.items():
                statuses[s] = statuses.get(s, 0) + n

    ths = [threading.Thread(target=client, args=(k,)) for k in range(connections)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    out_q.put((lat, statuses))


def run_load(port: int, path: str, bodies: list[dict], *, seconds: float = 5.0,
             processes: int = 2, connections: int = 8) -> dict:
    raw = [json.dumps(b) for b in bodies]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(port, path, raw[p::processes] or raw, seconds, connections, q))
             for p in range(processes)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    lat: list[float] = []
    statuses: dict[int, int] = {}
    for _ in procs:
        lt, st = q.get(timeout=seconds + 60)
        lat.extend(lt)
        for s, n in st.items():
            statuses[s] = statuses.get(s, 0) + n
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - start
    lat.sort()
    pct = (lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] if lat else float("nan"))
    return {"requests": len(lat), "rps": len(lat) / elapsed, "p50_ms": pct(0.5) * 1e3,
            "p99_ms": pct(0.99) * 1e3, "statuses": statuses, "seconds": elapsed}


def server_cpu_seconds(pgid: int) -> float:
    """User+system CPU of every process in a process group (the gunicorn master and workers)."""
    import os

    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 (pgrp) after the comm
            total += int(fields[11]) + int(fields[12])
    return total / tick
