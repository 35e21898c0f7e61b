"""`wuma serve`'s connection settings, on a real server: keep-alive, and connections
accepted in batches so that scans on new connections share group commits."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest
from conftest_world import build_world
from server import Server, commits


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("conn") / "wuma-data"
    w = build_world(path, invalid_threshold=10**9, rate_per_minute=10**9)
    codes = [w["data"].codes.code(w["caps"], i, "cap_inner") for i in range(w["caps"].count)]
    w["data"].close()
    return path, codes


def _scan_request(code: str, i: int) -> bytes:
    body = json.dumps({"code": code, "device": f"d-{i}", "actor": {"role": "consumer", "id": f"u-{i}"},
                       "location": {"region": "440106"}}).encode()
    return (b"POST /v1/scans HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def _answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer from ``sock``."""
    got = b""
    while True:
        head, sep, body = got.partition(b"\r\n\r\n")
        if sep:
            length = next((int(x.split(b":", 1)[1]) for x in head.split(b"\r\n")
                           if x.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                return got
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the answer: {got!r}"
        got += chunk


@pytest.mark.parametrize("batch", [1, 8])
def test_scans_on_new_connections_share_group_commits(world, batch):
    """Eight clients, each scan on a new connection, for a second and a half: accepting
    connections in batches (`--accept-batch 8`, the default), their scans share group
    commits; accepting one at a time (gunicorn's own), each scan waits for a commit of
    its own (measured: 1.0 scans a commit, benchmarks/bench_connections.py)."""
    path, codes = world
    server = Server(path, workers=2, args=("--accept-batch", str(batch)))
    done: list[bytes] = []
    try:
        before = commits(path)
        end = time.monotonic() + 1.5

        def client(k: int) -> None:
            i = k
            while time.monotonic() < end:
                with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
                    s.sendall(_scan_request(codes[i % len(codes)], i))
                    done.append(_answer(s))
                i += 8

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        per_commit = len(done) / (commits(path) - before)
    finally:
        server.stop()
    assert done and all(a.startswith(b"HTTP/1.1 200") and b'"genuine"' in a for a in done)
    if batch == 8:
        assert per_commit >= 2.5, per_commit
    else:
        assert per_commit < 1.5, per_commit


def test_an_idle_connection_is_closed_after_the_keep_alive(world):
    path, codes = world
    server = Server(path, workers=1, args=("--keep-alive", "1"))
    try:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        for i in range(2):  # kept for a second request
            s.sendall(_scan_request(codes[i], 100 + i))
            assert _answer(s).startswith(b"HTTP/1.1 200")
        t = time.monotonic()
        assert s.recv(1) == b""  # closed by the server, idle
        assert 0.5 < time.monotonic() - t < 3  # NOTE: 1 s asked, 5 s the default
        s.close()
    finally:
        server.stop()


def test_keep_alive_0_closes_each_connection_after_its_answer(world):
    path, codes = world
    server = Server(path, workers=1, args=("--keep-alive", "0"))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(_scan_request(codes[0], 200))
            answer = _answer(s)
            assert answer.startswith(b"HTTP/1.1 200") and b"\r\nconnection: close\r\n" in answer.lower()
            assert s.recv(1) == b""
    finally:
        server.stop()


@pytest.mark.parametrize("soft, hard, connections, raised_to, holds", [
    (1024, 20_000, 10_000, 10_256, 10_000),  # the common soft limit: raised
    (65_536, 65_536, 10_000, None, 10_000),  # high enough already: left alone
    (1024, -1, 10_000, 10_256, 10_000),  # no hard limit (RLIM_INFINITY)
    (1024, 2048, 10_000, 2048, 1792),  # the hard limit is too low: as many as it allows
    (100, 200, 10_000, 200, 1),  # below the worker's own files: one connection, not none
    (-1, -1, 10_000, None, 10_000),
])
def test_the_open_files_limit_is_raised_for_the_connections(monkeypatch, soft, hard, connections, raised_to, holds):
    import resource

    from engine.gunicorn_conf import open_files_for

    inf = resource.RLIM_INFINITY
    soft, hard = (inf if soft == -1 else soft), (inf if hard == -1 else hard)
    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda what: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda what, limits: calls.append(limits))
    assert open_files_for(connections) == holds
    assert calls == ([] if raised_to is None else [(raised_to, hard)])


def _sockets(pid: int) -> int:
    """Sockets a process holds open."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # NOTE: closed meanwhile
    return n


def test_a_burst_of_kept_alive_connections_spreads_over_the_workers(world):
    """A worker that holds a batch more connections than the other takes the next ones
    one at a time, with a pause, so the other takes its share. The scene that put all of
    wrk's 16 connections on one worker: one worker cannot accept for a moment (here
    stopped) while 8 arrive; then 8 more come. Before, the worker that had the first 8
    took 7 of the next 8 in 7 of 8 tries (15/1); now it is 9/7 (12/4 once in 30)."""
    path, _ = world
    server = Server(path, workers=2)
    conns: list[socket.socket] = []
    try:
        time.sleep(0.3)  # NOTE: both workers up and accepting
        first, other = server.workers()
        base = {pid: _sockets(pid) for pid in (first, other)}

        def wave() -> None:
            new = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(8)]
            for c in new:
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            for c in new:
                assert _answer(c).startswith(b"HTTP/1.1 200")
            conns.extend(new)

        os.kill(other, signal.SIGSTOP)
        try:
            wave()  # all 8 on the first worker
        finally:
            os.kill(other, signal.SIGCONT)
        # NOTE: the other worker back at its accept before the next wave (0.1 s was not
        # always enough on a loaded machine: 16/0 once, with other jobs on both cores)
        time.sleep(0.5)
        wave()
        held = {pid: _sockets(pid) - base[pid] for pid in (first, other)}
    finally:
        for c in conns:
            c.close()
        server.stop()
    assert sum(held.values()) == 16 and held[other] >= 3, held


@pytest.mark.parametrize("mine, others, expect", [
    (0, [], 8),        # the only worker: whole batches
    (3, [3], 8),       # level: whole batches
    (0, [5, 9], 8),    # behind: whole batches
    (5, [2, 9], 5),    # 3 ahead of the least loaded: 8 - 3
    (9, [2], 1),       # 7 ahead: one
    (10, [2], 0),      # a whole batch ahead: one, then a pause
])
def test_a_worker_ahead_of_the_others_accepts_fewer_at_once(mine, others, expect):
    from engine.accept_shares import allowance

    assert allowance(8, mine, others) == expect


def test_the_shared_counts_are_the_workers_own(monkeypatch):
    """Slots given by the master, counts written by each worker, read by the others; a
    worker that has not said it is alive lately (booting, stopped, hung) does not count."""
    from engine import accept_shares
    from engine.accept_shares import AcceptShares

    shares = AcceptShares(slots=3)
    a, b, c = shares.assign(set()), shares.assign({0}), shares.assign({0, 1})
    assert (a, b, c) == (0, 1, 2) and shares.assign({0, 1, 2}) is None  # full: unbalanced
    shares.free(c)
    shares.attach(b)  # worker b beats (its count 0)
    shares.attach(a)
    for _ in range(9):
        shares.opened()
    assert shares.allowance(8) == 0  # 9 ahead of worker b's 0: a batch ahead, pause
    shares.closed()
    shares.closed()
    assert shares.allowance(8) == 1 and shares.allowance(16) == 9  # 7 ahead
    now = accept_shares._now_ms()
    monkeypatch.setattr(accept_shares, "_now_ms", lambda: (now + 600) & 0xFFFFFFFF)
    assert shares.allowance(8) == 8  # b silent for 0.6 s (over STALE): left out, whole batches
    monkeypatch.undo()
    shares.free(b)  # b exited: a is alone
    assert shares.allowance(8) == 8
    for _ in range(10):
        shares.closed()
    assert shares._words[2 + 3 * a] == 0  # never below zero


def test_one_worker_serves_with_nothing_in_its_error_log(world):
    """One worker (the default on one core): nothing to balance. The connection counting
    once ran there without its other half and wrote two errors per connection."""
    path, codes = world
    server = Server(path, workers=1)
    try:
        for i in range(3):
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
                s.sendall(_scan_request(codes[i], i))
                assert _answer(s).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)
    finally:
        server.stop()
    log = open(server.log.name, encoding="utf-8").read()
    assert '"ERROR"' not in log and "Traceback" not in log, log[-2000:]
