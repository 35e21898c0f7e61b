"""Closed-loop HTTP load (keep-alive connections, bounded in time) against one loopback URL.

:func:`run_load` returns requests/s and latency percentiles. Used side by side on two
endpoints in one run, so the ratio is what counts on this shared machine. With ``wrk``
on the PATH (Debian's package; ``.ci/run`` installs it) the load comes from wrk, one
thread: a C client leaves the server most of the 2 cores. Without it (or with
``WUMA_LOADGEN=python``), ``processes`` x ``connections`` Python clients, which share
the 2 cores with the server (measured here: bare Falcon 3.5k req/s under the Python
clients, 7.2k under wrk).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import statistics
import threading
import time


def scan_bodies(codes, caps) -> list[dict]:
    """One consumer scan of each cap of a batch (``POST /v1/scans`` bodies): the load the
    HTTP benchmarks send, each cap from its own device and user, in one region."""
    return [{"code": codes.code(caps, i, "cap_inner"), "device": f"bench-{i}",
             "actor": {"role": "consumer", "id": f"wx-{i}"}, "location": {"region": "440106"}}
            for i in range(caps.count)]


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


_WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "%s", headers, bodies[(counter %% #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format("WUMA %%d %%d %%d %%f %%f\\n", summary.requests, summary.duration,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(port: int, path: str, bodies: list[dict], *, seconds: float, connections: int,
            close: bool = False) -> dict:
    """The same figures as :func:`run_load`, measured by wrk (statuses: 200 or ``errors``);
    ``close``: each request on a new connection (``Connection: close``), as clients without
    keep-alive come."""
    import os
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write("bodies = {" + ",".join(_lua_string(json.dumps(b)) for b in bodies) + "}\n")
        fh.write('headers = {["Content-Type"] = "application/json"%s}\n' % (', ["Connection"] = "close"' * close))
        fh.write(_WRK_SCRIPT % path)
    try:
        out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "-s", fh.name,
                              f"http://127.0.0.1:{port}"], capture_output=True, text=True,
                             timeout=seconds + 60).stdout
    finally:
        os.unlink(fh.name)
    line = next(x for x in out.splitlines() if x.startswith("WUMA "))
    n, duration_us, errors, p50, p99 = line.split()[1:]
    n, errors, elapsed = int(n), int(errors), int(duration_us) / 1e6
    statuses = {200: n - errors}
    if errors:
        statuses["errors"] = errors
    return {"requests": n, "rps": n / elapsed, "p50_ms": float(p50) / 1e3, "p99_ms": float(p99) / 1e3,
            "statuses": statuses, "seconds": elapsed, "client": "wrk"}


_WRK_FLOOD = """
local alphabet = "%(alphabet)s"
local limit = %(n)d
local counts = {}
local not_invalid = 0
local answered = 0
math.randomseed(%(seed)d)
request = function()
  local t = {"1"}  -- the real key version: the hardest case
  for i = 2, %(length)d do local k = math.random(1, #alphabet); t[i] = alphabet:sub(k, k) end
  return wrk.format("POST", "/v1/scans", {["Content-Type"] = "application/json",
    ["X-Forwarded-For"] = "%(ip)s"}, '{"code":"' .. table.concat(t) .. '","device":"bot"}')
end
response = function(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if status == 200 and not body:find('"verdict": *"invalid"') then not_invalid = not_invalid + 1 end
  answered = answered + 1
  if answered == limit then
    -- NOTE: wrk runs for its whole -d even after a thread stops: the figures go to a file
    -- and the caller stops wrk when it sees the END line.
    local f = io.open("%(out)s", "w")
    for k, v in pairs(counts) do f:write(string.format("STATUS %%d %%d\\n", k, v)) end
    f:write(string.format("NOTINVALID %%d\\nEND\\n", not_invalid))
    f:close()
    wrk.thread:stop()
  end
end
"""


def run_wrk_flood(port: int, n: int, *, alphabet: str, length: int, ip: str,
                  max_seconds: float = 900.0, seed: int = 7) -> dict:
    """``n`` scans of random well-formed codes (key version 1, then random characters)
    from one client IP on one wrk connection; returns the answers' statuses, how many 200
    answers were not ``invalid`` (must be 0), requests/s and seconds."""
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        script, out = os.path.join(tmp, "flood.lua"), os.path.join(tmp, "flood.out")
        with open(script, "w") as fh:
            fh.write(_WRK_FLOOD % {"alphabet": alphabet, "n": n, "seed": seed, "length": length,
                                   "ip": ip, "out": out})
        start = time.perf_counter()
        proc = subprocess.Popen(["wrk", "-t", "1", "-c", "1", "-d", f"{max_seconds:g}s", "-s", script,
                                 f"http://127.0.0.1:{port}"], stdout=subprocess.DEVNULL)
        text = ""
        try:
            while not text.endswith("END\n") and proc.poll() is None:
                time.sleep(0.05)
                if os.path.exists(out):
                    with open(out) as fh:
                        text = fh.read()
            elapsed = time.perf_counter() - start
        finally:
            proc.kill()
            proc.wait()
    if not text.endswith("END\n"):
        raise RuntimeError(f"the flood did not reach {n:,} answers in {max_seconds:g} s")
    statuses: dict[int, int] = {}
    not_invalid = 0
    for line in text.splitlines():
        parts = line.split()
        if parts[0] == "STATUS":
            statuses[int(parts[1])] = int(parts[2])
        elif parts[0] == "NOTINVALID":
            not_invalid = int(parts[1])
    return {"statuses": statuses, "not_invalid": not_invalid, "requests": n, "rps": n / elapsed,
            "seconds": elapsed}


def run_load(port: int, path: str, bodies: list[dict], *, seconds: float = 5.0,
             processes: int = 2, connections: int = 8) -> dict:
    import os
    import shutil

    if shutil.which("wrk") and os.environ.get("WUMA_LOADGEN", "wrk") == "wrk":
        return run_wrk(port, path, bodies, seconds=seconds, connections=processes * connections)
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
            "p99_ms": pct(0.99) * 1e3, "statuses": statuses, "seconds": elapsed, "client": "python"}


def _group_stats(pgid: int):
    """``(pid, fields of /proc/<pid>/stat after the comm)`` of each process in a process
    group (the gunicorn master and its workers)."""
    import os

    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 (pgrp) after the comm
            yield int(pid), fields


def process_cpu_seconds(pgid: int) -> dict[int, float]:
    """User+system CPU of each process in a process group (the gunicorn master and its
    workers), by pid."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    return {pid: (int(fields[11]) + int(fields[12])) / tick for pid, fields in _group_stats(pgid)}


def rss_mib(pgid: int) -> float:
    """Resident memory of a process group (the gunicorn master and its workers), MiB."""
    total = 0
    for pid, _ in _group_stats(pgid):
        try:
            with open(f"/proc/{pid}/status") as fh:
                total += next(int(x.split()[1]) for x in fh if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total / 1024


def serving_pid(conn: http.client.HTTPConnection, pgid: int) -> int | None:
    """The pid of the server process (of process group ``pgid``) that holds the other end
    of ``conn``, a loopback connection that has had an answer (so a worker accepted it);
    None if /proc does not tell (not Linux, or the connection is gone).

    gunicorn's workers accept from one shared socket, so which worker serves a connection
    is up to them; a benchmark about one worker's stalls needs to know."""
    import os

    client_port, server_port = conn.sock.getsockname()[1], conn.port
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()  # sl, local address, remote address, state, ..., inode (10th)
            if f[3] == "01" and (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)) == (
                    server_port, client_port):  # NOTE: 01 = established, never a closed one's
                inode = f[9]
                break
        if inode:
            break
    if not inode:
        return None
    target = f"socket:[{inode}]"
    for pid, _ in _group_stats(pgid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def spread_connections(port: int, pgid: int, n: int, tries: int = 100) -> list[tuple]:
    """``n`` keep-alive connections to the server of process group ``pgid``, spread evenly
    over its workers: ``[(connection, worker pid), ...]``.

    One gunicorn worker often accepts nearly all of a burst of connections (14 of 16
    measured here). A connection that lands on a worker already holding more than the
    others is closed and made again, up to ``tries`` times per connection; after that it is
    kept where it landed (the caller reports the split it got)."""
    workers = [pid for pid, _ in _group_stats(pgid) if pid != pgid]
    held = dict.fromkeys(workers, 0)
    out = []
    for _ in range(n):
        for attempt in range(tries):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            pid = serving_pid(conn, pgid)
            if pid not in held or held[pid] == min(held.values()) or attempt == tries - 1:
                break
            conn.close()
        if pid in held:
            held[pid] += 1
        out.append((conn, pid))
    return out


def run_arrivals(port: int, path: str, bodies: list[dict], *, rate: float, seconds: float,
                 linger: float = 10.0) -> dict:
    """Open-loop arrivals of one-shot clients, the way phones reach a server with no proxy
    in front: ``rate`` new connections a second for ``seconds``, each sends one request,
    reads the answer and then stays open and idle, as a browser leaves a connection, until
    the server closes it (its keep-alive timeout) or ``linger`` s after the last arrival.

    Returns each answered client's time from its scheduled arrival (when it should have
    connected, so that a late client counts its wait) to the whole answer: p50/p99/max over
    the answered ones; ``unanswered``: the clients with no answer, whether still waiting
    ``linger`` s after the last arrival or closed or reset by the server first (``statuses``
    says which); ``open_max``: this client's connections open or connecting at once at most
    (the server's, plus those waiting in its listen queue); and how long the server kept an
    idle connection before closing it (median). Every arrival due is made, late if this
    process falls behind. One process, non-blocking sockets."""
    import errno
    import selectors
    import socket

    raw = [json.dumps(b).encode() for b in bodies]
    requests = [f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(b)}\r\n\r\n".encode() + b for b in raw]
    sel = selectors.DefaultSelector()
    start = time.perf_counter()
    end_arrivals = start + seconds
    deadline = end_arrivals + linger
    state: dict[socket.socket, list] = {}  # sock -> [t_connect, buffer, t_answered or None, request]
    latencies: list[float] = []
    idle_kept: list[float] = []
    statuses: dict = {}
    open_max = refused = unanswered = 0
    sent, total = 0, int(rate * seconds)

    def finish(sock):
        sel.unregister(sock)
        sock.close()
        del state[sock]

    while True:
        now = time.perf_counter()
        due = start + sent / rate
        while sent < total and due <= now:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            if s.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
                refused += 1
                s.close()
            else:
                state[s] = [due, b"", None, requests[sent % len(requests)]]
                sel.register(s, selectors.EVENT_WRITE)
            sent += 1
            due = start + sent / rate
        open_max = max(open_max, len(state))
        if now >= deadline or (sent >= total and not state):
            break
        for key, events in sel.select(timeout=max(0.0, min(due, deadline) - now) if sent < total else 0.05):
            s, st = key.fileobj, state[key.fileobj]
            if events & selectors.EVENT_WRITE and st[3]:
                try:
                    n = s.send(st[3])
                except OSError:
                    statuses["reset"] = statuses.get("reset", 0) + 1
                    unanswered += 1
                    finish(s)
                    continue
                st[3] = st[3][n:]
                if not st[3]:
                    sel.modify(s, selectors.EVENT_READ)
                continue
            try:
                chunk = s.recv(65536)
            except OSError:
                chunk = b""
            if st[2] is not None:  # the answer came: this is the server closing the idle connection
                if not chunk:
                    idle_kept.append(time.perf_counter() - st[2])
                    finish(s)
                continue
            if not chunk:
                statuses["closed unanswered"] = statuses.get("closed unanswered", 0) + 1
                unanswered += 1
                finish(s)
                continue
            st[1] += chunk
            head, sep, body = st[1].partition(b"\r\n\r\n")
            if not sep:
                continue
            length = next((int(x.split(b":", 1)[1]) for x in head.split(b"\r\n")
                           if x.lower().startswith(b"content-length:")), 0)
            if len(body) < length:
                continue
            t = time.perf_counter()
            latencies.append(t - st[0])
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            st[1], st[2] = b"", t
    for s, st in list(state.items()):
        if st[2] is None:
            statuses["no answer"] = statuses.get("no answer", 0) + 1
            unanswered += 1
        finish(s)
    latencies.sort()
    pct = (lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))] * 1e3 if latencies else float("nan"))
    return {"arrivals": sent, "answered": len(latencies), "unanswered": unanswered, "refused": refused,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0), "open_max": open_max,
            "idle_kept_s": statistics.median(idle_kept) if idle_kept else float("nan"), "statuses": statuses}
