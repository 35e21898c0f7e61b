"""Start and stop a real `wuma serve` (gunicorn) on a free loopback port, for tests."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cli.localserver import free_port, stop, wait_until_up

ROOT = Path(__file__).resolve().parent.parent


class Server:
    def __init__(self, data: Path, workers: int = 2, threads: int = 16, worker_class: str = "gevent",
                 timeout: int = 30, env: dict | None = None, args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.log = open(data.parent / f"server-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "--data", str(data), "serve", "--bind",
             f"127.0.0.1:{self.port}", "--workers", str(workers), "--threads", str(threads),
             "--worker-class", worker_class, "--timeout", str(timeout), *args],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
        if wait_until_up(f"http://127.0.0.1:{self.port}/healthz"):
            return
        self.stop()
        raise RuntimeError(f"server did not start; see {self.log.name}")

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(self, method: str, path: str, body=None, headers=None, conn=None):
        c = conn or self.conn()
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        c.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = c.getresponse()
        raw = r.read()
        if conn is None:
            c.close()
        ctype = r.getheader("Content-Type") or ""
        return r.status, (json.loads(raw) if "json" in ctype else raw.decode())

    def get(self, path: str):
        return self.request("GET", path)

    def scan(self, body, headers=None, conn=None):
        return self.request("POST", "/v1/scans", body, headers, conn)

    def workers(self) -> list[int]:
        """The pids of the gunicorn master's workers (`wuma serve` execs into the master)."""
        pid = self.proc.pid
        return [int(w) for w in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


def commits(data: Path) -> int:
    """Write transactions committed so far in a data folder's store (LMDB's last txnid)."""
    import lmdb

    env = lmdb.open(str(data / "db"), readonly=True, max_dbs=64)
    try:
        return env.info()["last_txnid"]
    finally:
        env.close()
