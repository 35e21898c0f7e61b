"""gunicorn configuration for `wuma serve` (read by gunicorn with -c).

Settings come from the environment that `wuma serve` sets: WUMA_BIND (default
127.0.0.1:8080), WUMA_WORKERS (default: one per core), WUMA_WORKER_CLASS (default
gevent; gthread is the alternative), WUMA_THREADS (gthread only), WUMA_TIMEOUT (default 30:
seconds a worker may go without a heartbeat before the arbiter restarts it; a gevent
worker's heartbeat is sent from its hub, which a long write such as an ingest never
blocks, see engine/scanlog.py).

PERF: the worker class was chosen by measurement (benchmarks/bench_http.py, wrk, 16
keep-alive connections, 2 workers on the 2-core machine, 20 s): strict-durable scans
went from 2.4k/s under gthread x 16 threads to 5.4k/s under gevent. Under gthread a
scan crossed four threads (accept loop -> pool thread -> committer -> pool thread), and
perf showed ~38% of the CPU in the kernel waking threads (futex) in this VM. Under
gevent the requests of a worker are greenlets of one thread; their durable writes
still group-commit (engine/scanlog.py): every request waiting at that moment shares one
LMDB transaction and one fsync.

PERF: one worker per core, measured (2-core machine, 16 connections, 8 s runs, bare and
scan alternated 3 times, medians, a slow day): 2 / 3 / 4 workers gave 3,364 / 3,264 /
2,440 strict scans/s and 9,658 / 7,689 / 8,059 bare req/s. More workers only split the
group commits (7.2 / 4.7 / 2.7 scans per commit). gunicorn's C HTTP parser
(gunicorn_h1c 0.6.10, ``gunicorn[fast]``, built from source here) was not worth a
compiled dependency: bare 10,031 -> 10,482 req/s, scans 4,398 -> 4,515/s (4 alternated
rounds); gunicorn uses it where it is installed (http_parser "auto").
"""

import json
import logging
import os

from gunicorn import glogging

from engine.http_errors import masked_path

bind = os.environ.get("WUMA_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("WUMA_WORKERS") or len(os.sched_getaffinity(0)))
worker_class = os.environ.get("WUMA_WORKER_CLASS") or "gevent"
threads = int(os.environ.get("WUMA_THREADS") or 16)  # gthread only
worker_connections = 1000  # gevent: open connections per worker
keepalive = 5
timeout = int(os.environ.get("WUMA_TIMEOUT") or 30)
graceful_timeout = 10
preload_app = False  # NOTE: every worker opens its own LMDB environment after fork
accesslog = os.environ.get("WUMA_ACCESS_LOG") or None
proc_name = "wuma"


if worker_class == "gevent":
    from gevent import sleep as _gevent_sleep

    def post_request(worker, req, environ, resp) -> None:
        """Let the worker's other connections run between two requests.

        NOTE: a greenlet gives the others a turn only when it waits. A client that sends
        its next request as soon as it has an answer (a flood of forged codes, refused
        from memory in microseconds) always finds data waiting and never waits:
        measured, genuine clients on that worker went from p99 4 ms to 359-746 ms, some
        timing out. Yielding here once per request: genuine p99 3.5 and 8.6 ms (two runs)
        during a 30,000-code flood (benchmarks/bench_flood.py).
        """
        _gevent_sleep(0)


class Logger(glogging.Logger):
    """gunicorn's logger, with the access log built only when it is switched on, and no
    code in it (see engine.http_errors.masked_path).

    PERF: with a logconfig_dict, gunicorn formats every request's access-log atoms even
    when the access logger drops them (~4% of a worker under load)."""

    def access(self, resp, req, environ, request_time):
        if accesslog:
            # APPSEC: no code in the access log (GET /v1/codes/{code}, the admin trace)
            path = environ.get("PATH_INFO") or ""
            masked = masked_path(path)
            if masked != path:
                environ = {**environ, "PATH_INFO": masked, "RAW_URI": masked}
            super().access(resp, req, environ, request_time)


logger_class = "engine.gunicorn_conf.Logger"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "message": record.getMessage(), "pid": record.process}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "engine.gunicorn_conf.JsonFormatter"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                            "stream": "ext://sys.stderr"}},
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        # NOTE: the access log is on only with WUMA_ACCESS_LOG (see Logger above).
        "gunicorn.access": {"level": "INFO" if accesslog else "CRITICAL", "handlers": ["stderr"],
                            "propagate": False},
    },
}

def _check_before_reload() -> None:
    """SIGHUP (graceful reload) only when the data folder and its settings still load.

    NOTE: gunicorn halts the whole server when a new worker fails to boot: a mistake in
    wuma.json followed by `kill -HUP` stopped the old workers too, which were serving.
    The check runs in a child process (the master never opens the LMDB environments its
    workers fork from)."""
    import subprocess
    import sys

    from gunicorn.arbiter import Arbiter

    reload = Arbiter.handle_hup

    def handle_hup(self) -> None:
        path = os.environ.get("WUMA_DATA")
        if path:
            check = subprocess.run(
                [sys.executable, "-c", "import sys\nfrom engine.data import check_serving\n"
                 "try:\n    check_serving(sys.argv[1])\nexcept Exception as e:\n"
                 "    sys.exit(str(e))", path], capture_output=True, text=True, timeout=60)
            if check.returncode != 0:
                why = (check.stderr.strip().splitlines() or ["?"])[-1]
                self.log.error("reload refused, the workers keep serving with the settings they "
                               "started with: %s", why)
                return
        reload(self)

    Arbiter.handle_hup = handle_hup


_check_before_reload()

# NOTE: gunicorn >= 24 opens a control socket at one fixed path per user; several servers
# on one machine (tests, blue/green) would fight over it. Reloads go through signals.
control_socket_disable = True

# PERF: a response's headers and body in one write (see engine/gunicorn_response.py).
from engine.gunicorn_response import install as _install_coalescing_response  # noqa: E402

_install_coalescing_response()
