"""Start a gunicorn server on a free loopback port and wait until it answers.

Shared by the demo, the tests and the benchmarks: servers listen on 127.0.0.1 only and
are stopped by whoever started them (a process group, so workers go too).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

__all__ = ["free_port", "wait_until_up", "start_gunicorn", "stop"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 60.0) -> bool:
    """True once ``url`` gives any HTTP answer (a 401 means the server is up too)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.1)
    return False


def start_gunicorn(app: str, *, workers: int = 2, threads: int = 16, env: dict | None = None,
                   cwd=None, stdout=subprocess.DEVNULL, probe: str = "/healthz"
                   ) -> tuple[subprocess.Popen, int]:
    """gunicorn with Wuma's config (engine/gunicorn_conf.py) serving ``app``: the server
    settings are these and ``env``'s, none inherited (:func:`engine.launch.inherited_environment`)."""
    from engine.launch import inherited_environment

    port = free_port()
    full_env = dict(inherited_environment(os.environ), WUMA_BIND=f"127.0.0.1:{port}", WUMA_WORKERS=str(workers),
                    WUMA_THREADS=str(threads), **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "python:engine.gunicorn_conf", app],
                            env=full_env, cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT,
                            start_new_session=True)
    if not wait_until_up(f"http://127.0.0.1:{port}{probe}"):
        stop(proc)
        raise RuntimeError(f"gunicorn serving {app} did not start")
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (graceful), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
