"""gunicorn configuration for `wuma serve` (read by gunicorn with -c).

Settings come from the environment that `wuma serve` sets:
WUMA_BIND (default 127.0.0.1:8080), WUMA_WORKERS (default: one per core), WUMA_THREADS.

NOTE: gthread workers with several threads each: a scan waits on its durable commit
(fsync), and the other threads' scans join the same commit (group commit), so throughput
does not collapse to one fsync per scan as it would with sync workers.
"""

import json
import logging
import os

bind = os.environ.get("WUMA_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("WUMA_WORKERS") or len(os.sched_getaffinity(0)))
worker_class = "gthread"
threads = int(os.environ.get("WUMA_THREADS") or 16)
keepalive = 5
timeout = 30
graceful_timeout = 10
preload_app = False  # NOTE: every worker opens its own LMDB environment after fork
accesslog = os.environ.get("WUMA_ACCESS_LOG") or None
proc_name = "wuma"


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
        # PERF: with a logconfig_dict gunicorn logs every request unless told not to; the
        # access log cost ~8% of a worker under load. On only with WUMA_ACCESS_LOG.
        "gunicorn.access": {"level": "INFO" if accesslog else "CRITICAL", "handlers": ["stderr"],
                            "propagate": False},
    },
}

# NOTE: gunicorn >= 24 opens a control socket at one fixed path per user; several servers
# on one machine (tests, blue/green) would fight over it. Reloads go through signals.
control_socket_disable = True

