"""How `wuma serve` and `wuma pack serve` start gunicorn: the address checked first (with
the command's own port in the suggestion), each server's settings from its own options
and defaults (never a WUMA_WORKERS, WUMA_KEEPALIVE, ... exported for the other one), and
the data folder checked for what that server reads (a bad scan setting does not keep the
pack server from starting or reloading)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_packs
from click.testing import CliRunner
from test_cli_robustness import BAD_BINDS

from cli.localserver import free_port, stop, wait_until_up
from cli.main import cli
from engine import DataFolder
from engine.data import check_serving
from engine.errors import DataFolderError
from engine.http_packs import sign_request
from engine.errors import BindError
from engine.launch import SERVER_SETTINGS, check_bind, server_environment

world = test_packs.world
ROOT = Path(__file__).resolve().parent.parent
CORES = len(os.sched_getaffinity(0))
#: A scan-only setting gone wrong (as `wuma serve` reports it).
BAD_ABUSE = {"max_scans": 1}
BAD_ABUSE_MESSAGE = 'wuma.json, "abuse" section: unknown setting \'max_scans\''


def _edit_config(folder: Path, **sections) -> None:
    config = json.loads((folder / "wuma.json").read_text())
    config.update(sections)
    (folder / "wuma.json").write_text(json.dumps(config))


@pytest.fixture
def started(monkeypatch):
    """The environments gunicorn would have been started with (its exec replaced)."""
    envs: list[dict] = []
    monkeypatch.setattr("cli.scan.os.execve", lambda exe, argv, env: envs.append(env))
    return envs


class _PackServe:
    """`wuma pack serve` on a free loopback port, in the environment ``env`` adds to."""

    def __init__(self, data: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.log_path = data.parent / f"pack-serve-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "--data", str(data), "pack", "serve", "--bind",
                 f"127.0.0.1:{self.port}", *args],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
        if not wait_until_up(f"http://127.0.0.1:{self.port}/packs", timeout=30):  # up: 401 unsigned
            self.stop()
            raise RuntimeError(f"the pack server did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self, expect: int, seconds: float = 10.0) -> int:
        """The master's worker processes, once ``expect`` of them run (or ``seconds`` pass)."""
        deadline = time.monotonic() + seconds
        while True:
            pid = self.proc.pid  # NOTE: `wuma pack serve` execs into the gunicorn master
            n = len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
            if n == expect or time.monotonic() > deadline:
                time.sleep(0.5)  # NOTE: none more coming
                return len(Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
            time.sleep(0.1)

    def listing(self, keys, conn: http.client.HTTPConnection | None = None) -> tuple[int, str | None]:
        """A signed GET /packs: its status and its Connection header."""
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", "/packs", headers=sign_request(keys, "GET", "/packs"))
        r = c.getresponse()
        r.read()
        return r.status, r.getheader("Connection")

    def stop(self) -> None:
        stop(self.proc)


# -- the address --------------------------------------------------------------------------------
def test_the_bind_check_is_a_library_function_with_the_messages_the_cli_shows():
    for bind, msg in BAD_BINDS:
        with pytest.raises(BindError) as e:
            check_bind(bind)
        assert msg in str(e.value) and str(e.value).startswith(f"{bind!r}: "), (bind, str(e.value))
        assert str(e.value).endswith("; give HOST:PORT (127.0.0.1:8080), [IPv6]:PORT ([::1]:8080) or unix:PATH")
        assert isinstance(e.value, ValueError)
    with pytest.raises(BindError, match=r"give HOST:PORT \(127.0.0.1:8081\), \[IPv6\]:PORT \(\[::1\]:8081\)"):
        check_bind("127.0.0.1:99999", port=8081)
    for good in ("127.0.0.1:8080", "localhost:1", "0.0.0.0:65535", "[::1]:8080"):
        assert check_bind(good) == good


def test_pack_serve_suggests_its_own_port_for_a_bad_bind(started):
    """It suggested 127.0.0.1:8080, the scan server's port, to a person starting the pack
    server (8081)."""
    r = CliRunner()
    res = r.invoke(cli, ["pack", "serve", "--bind", "127.0.0.1:99999"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "'127.0.0.1:99999': the port must be a number from 1 to 65535, not '99999'; give HOST:PORT " \
           "(127.0.0.1:8081), [IPv6]:PORT ([::1]:8081) or unix:PATH" in res.output, res.output
    assert "8080" not in res.output
    res = r.invoke(cli, ["serve", "--bind", "127.0.0.1:99999"])
    assert res.exit_code == 2 and "give HOST:PORT (127.0.0.1:8080), [IPv6]:PORT ([::1]:8080)" in res.output
    assert started == []


# -- the settings -------------------------------------------------------------------------------
#: Settings exported in the shell for one server (the scan server's, the pack server's
#: graceful timeout), none of them an option given to the command started.
EXPORTED = {"WUMA_WORKERS": "7", "WUMA_THREADS": "3", "WUMA_KEEPALIVE": "75", "WUMA_WORKER_CONNECTIONS": "50",
            "WUMA_ACCEPT_BATCH": "1", "WUMA_TIMEOUT": "600", "WUMA_GRACEFUL_TIMEOUT": "300",
            "WUMA_WORKER_CLASS": "gthread", "WUMA_BIND": "0.0.0.0:9"}
#: Settings only the environment gives (no command has them as options): inherited.
ENVIRONMENT_ONLY = {"WUMA_ACCESS_LOG": "-", "WUMA_BOOT_RETRY": "1", "WUMA_RELOAD_CHECK": "30"}


def test_each_server_gets_its_options_and_defaults_not_the_settings_exported_for_another(tmp_path, started):
    DataFolder.init(tmp_path / "d").close()
    r = CliRunner()
    for args in (["serve"], ["pack", "serve"]):
        res = r.invoke(cli, ["--data", str(tmp_path / "d"), *args], env={**EXPORTED, **ENVIRONMENT_ONLY})
        assert res.exit_code == 0, res.output
    scan, packs = started
    assert {k: scan.get(k) for k in EXPORTED} == {
        "WUMA_WORKERS": None, "WUMA_THREADS": "16", "WUMA_KEEPALIVE": "5", "WUMA_WORKER_CONNECTIONS": "10000",
        "WUMA_ACCEPT_BATCH": "8", "WUMA_TIMEOUT": "30", "WUMA_GRACEFUL_TIMEOUT": None,
        "WUMA_WORKER_CLASS": "gevent", "WUMA_BIND": "127.0.0.1:8080"}
    assert {k: packs.get(k) for k in EXPORTED} == {
        "WUMA_WORKERS": None, "WUMA_THREADS": None, "WUMA_KEEPALIVE": None, "WUMA_WORKER_CONNECTIONS": None,
        "WUMA_ACCEPT_BATCH": None, "WUMA_TIMEOUT": "30", "WUMA_GRACEFUL_TIMEOUT": "300",
        "WUMA_WORKER_CLASS": "gevent", "WUMA_BIND": "127.0.0.1:8081"}
    for env in (scan, packs):
        assert {k: env.get(k) for k in ENVIRONMENT_ONLY} == ENVIRONMENT_ONLY
        assert env["WUMA_DATA"] == str(tmp_path / "d")


def test_every_setting_the_gunicorn_config_reads_is_a_command_s_or_the_environment_s():
    """A new WUMA_* setting in engine/gunicorn_conf.py is either set by the commands (and
    then never inherited) or, like the access log, only ever given by the environment."""
    source = (ROOT / "engine" / "gunicorn_conf.py").read_text()
    read = set(re.findall(r"os\.environ\.get\(\"(WUMA_\w+)\"", source))
    assert read - SERVER_SETTINGS == set(ENVIRONMENT_ONLY)
    assert SERVER_SETTINGS <= read


def test_server_environment_leaves_out_what_the_server_was_not_given(tmp_path):
    env = server_environment({"PATH": "/bin", "WUMA_KEEPALIVE": "75", "WUMA_ACCESS_LOG": "-",
                              "GUNICORN_CMD_ARGS": "--bind 0.0.0.0:8080"}, tmp_path,
                             {"WUMA_BIND": "127.0.0.1:8081", "WUMA_WORKERS": None})
    assert env == {"PATH": "/bin", "WUMA_ACCESS_LOG": "-", "WUMA_DATA": str(tmp_path), "WUMA_BIND": "127.0.0.1:8081"}
    with pytest.raises(ValueError, match="WUMA_NOT_A_SETTING"):
        server_environment({}, tmp_path, {"WUMA_NOT_A_SETTING": 1})


def test_pack_serve_runs_one_worker_a_core_and_keeps_connections_whatever_the_scan_server_exported(world):
    """WUMA_WORKERS and WUMA_KEEPALIVE exported for the scan server were the pack server's
    too when its --workers was not given: here one worker more than the cores, and every
    line's connection closed after each request. GUNICORN_CMD_ARGS, which gunicorn applies
    after the config (a --bind there went past the bind check, off loopback), is not read."""
    reg, keys = world[0], world[1]
    server = _PackServe(reg._data.path, env={"WUMA_WORKERS": str(CORES + 1), "WUMA_KEEPALIVE": "0",
                                             "WUMA_WORKER_CONNECTIONS": "1",
                                             "GUNICORN_CMD_ARGS": f"--workers {CORES + 2} --keep-alive 0"})
    try:
        assert server.workers(CORES) == CORES, server.log()
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        assert server.listing(keys, conn) == (200, "keep-alive")
        assert server.listing(keys, conn) == (200, "keep-alive")  # the same connection, kept
        conn.close()
    finally:
        server.stop()


# -- the data folder ----------------------------------------------------------------------------
def test_check_serving_checks_only_what_the_server_reads(tmp_path):
    DataFolder.init(tmp_path / "d").close()
    _edit_config(tmp_path / "d", abuse=BAD_ABUSE)
    check_serving(tmp_path / "d", "packs")
    with pytest.raises(DataFolderError, match=re.escape(BAD_ABUSE_MESSAGE)):
        check_serving(tmp_path / "d")
    with pytest.raises(DataFolderError, match=re.escape(BAD_ABUSE_MESSAGE)):
        check_serving(tmp_path / "d", "scan")
    with pytest.raises(ValueError, match="'mail': the servers are scan, packs"):
        check_serving(tmp_path / "d", "mail")
    _edit_config(tmp_path / "d", store={"durability": "fast"})  # NOTE: every server writes the store
    with pytest.raises(DataFolderError, match="store durability must be one of strict, relaxed"):
        check_serving(tmp_path / "d", "packs")


def test_pack_serve_starts_and_reloads_over_a_bad_scan_setting_that_serve_refuses(world, started):
    """The pack server refused to start over the "abuse" section, which only the scan
    server reads; and refused every reload over it."""
    reg, keys = world[0], world[1]
    folder = reg._data.path
    reg._data.close()  # NOTE: `wuma serve` opens it in this process
    _edit_config(folder, abuse=BAD_ABUSE)
    res = CliRunner().invoke(cli, ["--data", str(folder), "serve"])
    assert res.exit_code == 1 and f"Error: {folder / 'wuma.json'}, \"abuse\" section: unknown setting " \
        "'max_scans'" in res.output and "Traceback" not in res.output, res.output
    assert started == []
    server = _PackServe(folder, "--workers", "1")
    try:
        assert server.listing(keys)[0] == 200
        os.kill(server.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while server.log().count("Booting worker") < 2 and "reload refused" not in server.log() \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "reload refused" not in server.log() and server.log().count("Booting worker") == 2, server.log()
        assert server.listing(keys)[0] == 200
    finally:
        server.stop()
