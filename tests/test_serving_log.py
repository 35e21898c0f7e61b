"""`wuma serve` logs one JSON object a line on stderr: gunicorn's log records, and also
what gunicorn, gevent and Python write there outside logging (engine/gunicorn_conf.py)."""

from __future__ import annotations

import datetime
import io
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
from conftest_world import build_world
from server import ROOT, Server

from cli.localserver import free_port
from engine.gunicorn_conf import JsonStderr


def _objects(text: str) -> list[dict]:
    """Every line of ``text`` as a JSON object (the assertion names the first that is not)."""
    docs = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            doc = None
        assert isinstance(doc, dict), f"not a JSON object: {line!r}"
        docs.append(doc)
    return docs


def test_what_is_printed_to_stderr_goes_out_as_json_objects():
    out = io.StringIO()
    err = JsonStderr(out)
    print("\nError: 'soon' is not a number", file=err)  # gunicorn's "Error: ..." prints
    try:
        raise ValueError("boom")
    except ValueError:
        traceback.print_exc(file=err)
    print('{"level": "INFO", "message": "already JSON"}', file=err)
    err.write("Warning: a line written in pieces")
    err.write(", ended by a flush")
    err.flush()
    docs = _objects(out.getvalue())
    assert [(d.get("level"), d.get("logger"), d["message"]) for d in docs] == [
        ("ERROR", "stderr", "Error: 'soon' is not a number"),
        ("ERROR", "stderr", "ValueError: boom"),
        ("INFO", None, "already JSON"),
        ("WARNING", "stderr", "Warning: a line written in pieces, ended by a flush"),
    ]
    assert docs[1]["exception"].startswith("Traceback (most recent call last):\n  File ")
    assert docs[1]["exception"].endswith("ValueError: boom") and docs[0]["pid"] == os.getpid()
    # times in ISO 8601, UTC, as log shippers read them
    stamp = datetime.datetime.fromisoformat(docs[0]["time"].replace("Z", "+00:00"))
    assert docs[0]["time"].endswith("Z") and abs(stamp.timestamp() - time.time()) < 60


def test_importing_the_config_leaves_a_process_stderr_alone():
    """A test or a tool that imports the config module keeps its own stderr and warnings;
    only gunicorn's processes get JSON. In a new process: this one imported the module
    when it collected this file (and pytest swaps sys.stderr per test)."""
    probe = ("import sys, warnings; show = warnings.showwarning; from engine import gunicorn_conf; "
             "print(type(sys.stderr).__name__, warnings.showwarning is show)")
    got = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=60, check=True)
    assert got.stdout.split() == ["TextIOWrapper", "True"], got.stderr


def _gunicorn(app: str, **env: str) -> subprocess.CompletedProcess:
    """gunicorn with Wuma's config, one worker, expected to stop by itself."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), WUMA_BIND=f"127.0.0.1:{free_port()}", WUMA_WORKERS="1")
    return subprocess.run([sys.executable, "-m", "gunicorn", "-c", "python:engine.gunicorn_conf", app],
                          cwd=ROOT, env={**full, **env}, capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.mark.parametrize("app, env, code, printed", [
    # a worker that fails to boot: gunicorn logs the traceback, then prints the error
    ("admin.http:app_from_env()", {"WUMA_DATA": "/nonexistent/wuma-data"}, 3,
     ("stderr", "ERROR", "/nonexistent/wuma-data is not a Wuma data folder")),
    # a Python warning in a worker, then an app gunicorn cannot load (printed)
    ("warnings:warn('a warning at boot')", {}, 4, ("py.warnings", "WARNING", "UserWarning: a warning at boot")),
    ("warnings:warn('a warning at boot')", {}, 4, ("stderr", "ERROR", "Failed to find application object")),
    # a setting gunicorn refuses: "Error: ..." printed before it starts
    ("admin.http:app_from_env()", {"WUMA_TIMEOUT": "soon"}, 1, ("stderr", "ERROR", "Error: invalid literal")),
])
def test_a_server_that_cannot_start_says_why_in_json(app, env, code, printed):
    res = _gunicorn(app, **env)
    assert res.returncode == code and res.stdout == ""
    docs = _objects(res.stderr)
    logger, level, text = printed
    assert any(d["logger"] == logger and d["level"] == level and text in d["message"] for d in docs), docs


def _wait_for(log: Path, text: str, count: int = 1, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while log.read_text().count(text) < count:
        assert time.time() < deadline, f"{text!r} not logged {count} times:\n{log.read_text()}"
        time.sleep(0.1)


def test_the_log_from_start_to_shutdown_is_json_lines(tmp_path, monkeypatch):
    """Start, requests (access log on), a reload, a worker killed with SIGKILL and
    replaced, SIGTERM: what the server writes (stdout and stderr) is JSON objects."""
    monkeypatch.setenv("WUMA_ACCESS_LOG", "-")
    path = tmp_path / "wuma-data"
    build_world(path)["data"].close()
    server = Server(path, workers=2)
    log = Path(server.log.name)
    try:
        assert server.get("/healthz")[0] == 200
        os.kill(server.proc.pid, signal.SIGHUP)
        _wait_for(log, "Booting worker", 4)  # 2 at the start, 2 on the reload
        _wait_for(log, "Worker exiting", 2)  # the 2 old ones
        worker = [d["pid"] for d in _objects(log.read_text()) if d["message"].startswith("Booting")][-1]
        os.kill(worker, signal.SIGKILL)
        _wait_for(log, "Booting worker", 5)
        assert server.get("/healthz")[0] == 200
    finally:
        server.stop()
    assert server.proc.returncode == 0
    docs = _objects(log.read_text())
    messages = [d["message"] for d in docs]
    assert any("GET /healthz" in m for m in messages)  # the access log
    assert "Handling signal: hup" in messages and "Handling signal: term" in messages
    assert any(f"Worker (pid:{worker}) was sent SIGKILL" in m for m in messages)
    assert messages[-1] == "Shutting down: Master"


@pytest.mark.parametrize("address, off", [
    ("127.0.0.1:8080", False), ("localhost:80", False), ("[::1]:8081", False), ("::1", False),
    ("unix:/run/wuma.sock", False), ("127.0.0.2:8080", False), ("[0:0:0:0:0:0:0:1]:80", False),
    ("0.0.0.0:8081", True), ("[::]:80", True), ("10.0.0.5", True), ("wuma.example.cn:80", True)])
def test_a_bind_off_loopback_is_warned_of_in_the_json_log(address, off, caplog):
    """The scan API, the admin API and the page reachable from the network: said once, as
    the server starts, in its log (the server's own on_starting hook, its own logger)."""
    import logging
    from types import SimpleNamespace

    from engine.gunicorn_conf import off_loopback, on_starting

    assert off_loopback(address) is off
    for app, what in (("admin.http:app_from_env()", "the scan API, the admin API and the admin page "
                       "are reachable from the network; put a TLS proxy in front (and set "
                       "serve.trusted_proxies and serve.proxy_header)"),
                      ("engine.http_packs:app_from_env()", "the pack server is reachable from the "
                       "network; put a TLS proxy in front")):
        server = SimpleNamespace(cfg=SimpleNamespace(bind=["127.0.0.1:9", address]), app=SimpleNamespace(
            app_uri=app), log=logging.getLogger("gunicorn.error"))
        caplog.clear()
        with caplog.at_level(logging.WARNING, "gunicorn.error"):
            on_starting(server)
        warned = [r.getMessage() for r in caplog.records if "not loopback" in r.getMessage()]
        assert warned == ([f"listening on {address}, not loopback: {what}"] if off else [])


def _serve_with_open_files_limit(path: Path, log: Path, soft: int, hard: int) -> tuple[int, str]:
    """`wuma serve` (one worker) started with this open-files limit: the worker's limit
    then, and the server's log."""
    import resource

    from cli.localserver import stop, wait_until_up

    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "--data", str(path), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    try:
        assert wait_until_up(f"http://127.0.0.1:{port}/healthz"), log.read_text()
        (worker,) = (int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split())
        limits = Path(f"/proc/{worker}/limits").read_text()
    finally:
        stop(proc)
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    return int(line.split()[3]), log.read_text()


def test_workers_may_open_as_many_files_as_their_connections_need(tmp_path):
    """At the common soft limit of 1,024 open files a worker could not hold its 10,000
    connections (it would stop accepting, and retry up to a second later): `wuma serve`
    raises the soft limit up to the hard one, and says so in its log when the hard limit
    is too low."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 10_256:
        pytest.skip(f"this machine's hard open-files limit is {hard}")
    path = tmp_path / "wuma-data"
    build_world(path)["data"].close()
    got, log = _serve_with_open_files_limit(path, tmp_path / "a.log", 1024, hard)
    assert got == 10_256 and "open-files limit" not in log
    got, log = _serve_with_open_files_limit(path, tmp_path / "b.log", 1024, 2048)
    assert got == 2048
    (warning,) = [d for d in _objects(log) if "open-files limit" in d["message"]]
    assert warning["level"] == "WARNING" and warning["message"] == (
        "each worker can hold 1792 connections, not 10000: the open-files limit (ulimit -n, hard) is too low; "
        "raise it to at least 10256")


def test_requests_gunicorn_cannot_parse_are_told_once_a_minute_not_each(tmp_path):
    """gunicorn logs each request it cannot parse with its bad header whole (repr'd):
    ~20 KB of log a request, 6.6 MB/s from 8 connections, and no ban stops it (the app
    never sees those requests). The first is told, clipped; the rest of the minute with
    their count."""
    import socket

    path = tmp_path / "wuma-data"
    build_world(path)["data"].close()
    server = Server(path, workers=1)
    log = Path(server.log.name)
    try:
        bad = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX\x01" + b"\x01" * 8000 + b": 1\r\n\r\n"
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
                s.sendall(bad)
                assert s.recv(100).startswith(b"HTTP/1.1 400")
        assert server.get("/healthz")[0] == 200
    finally:
        server.stop()
    told = [d["message"] for d in _objects(log.read_text()) if "before the app" in d["message"]]
    assert len(told) == 1 and told[0].startswith("1 request(s) refused by gunicorn before the app since")
    assert told[0].endswith("characters more))") and len(told[0]) < 500
    assert log.stat().st_size < 20_000  # was over 1 MB: 50 lines of ~20 KB
