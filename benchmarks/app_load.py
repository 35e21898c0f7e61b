"""The scan API's Falcon app called directly (WSGI, no gunicorn, no sockets), as greenlets
of one gevent worker: ``python benchmarks/app_load.py DATA_FOLDER CALLERS SECONDS [APP]``.

``APP`` is ``admin`` (what ``wuma serve`` runs; the default), ``scan`` (engine.http_scan
alone) or ``bare`` (benchmarks/bare_app.py). The data folder is one made by
tests/conftest_world.build_world. Prints one JSON line: requests, and µs of wall time and
of process CPU per request. What the app costs on top of the pipeline
(benchmarks/pipeline_load.py) is the difference; what gunicorn costs on top of the app is
benchmarks/bench_http.py's bare endpoint.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import io  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _environ(body: bytes) -> dict:
    return {"REQUEST_METHOD": "POST", "PATH_INFO": "/v1/scans", "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
            "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1", "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": False,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0)}


def main(path: str, callers: int, seconds: float, which: str) -> dict:
    import gevent

    from loadgen import scan_bodies

    from engine import DataFolder

    data = DataFolder(Path(path))
    if which == "bare":
        from bare_app import app
    elif which == "scan":
        from engine.http_scan import create_app

        app = create_app(data)
    else:
        from admin.http import create_app

        app = create_app(data)
    caps = data.batches.find(1)  # NOTE: tests/conftest_world.build_world's caps
    assert caps is not None and caps.level == "cap", "expected build_world's data folder"
    bodies = [json.dumps(b).encode() for b in scan_bodies(data.codes, caps)]
    statuses: dict[str, int] = {}

    def start_response(status, headers, exc_info=None):
        statuses[status] = statuses.get(status, 0) + 1

    for body in bodies * 3:  # warm-up: numba kernels, caches
        b"".join(app(_environ(body), start_response))
    assert set(statuses) == {"200 OK"}, statuses
    counts = [0] * callers
    deadline = time.perf_counter() + seconds

    def run(k: int) -> None:
        i, n = k, 0
        while time.perf_counter() < deadline:
            b"".join(app(_environ(bodies[i % len(bodies)]), start_response))
            i += callers
            n += 1
        counts[k] = n

    cpu0, start = time.process_time(), time.perf_counter()
    gevent.joinall([gevent.spawn(run, k) for k in range(callers)])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    n = sum(counts)
    assert set(statuses) == {"200 OK"}, statuses
    return {"app": which, "requests": n, "wall_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    out = main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), (sys.argv[4:5] or ["admin"])[0])
    print(json.dumps(out))
    # NOTE: the scan log's committer and the metrics flusher are daemon greenlets/threads;
    # the process exits without closing LMDB (nothing is pending: every request answered).
    sys.stdout.flush()
    import os

    os._exit(0)
