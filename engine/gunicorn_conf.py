"""gunicorn configuration for `wuma serve` and `wuma pack serve` (read by gunicorn with -c).

Settings come from the environment. `wuma serve` and `wuma pack serve` set these from
their options, each its own, never from the environment they run in
(engine.launch.SERVER_SETTINGS): WUMA_BIND (default 127.0.0.1:8080), WUMA_WORKERS
(default: one per core), WUMA_WORKER_CLASS (default gevent; gthread is the
alternative), WUMA_THREADS (gthread only), WUMA_TIMEOUT (default 30:
seconds a worker may go without a heartbeat before the arbiter restarts it; a gevent
worker's heartbeat is sent from its hub, which a long write such as an ingest never
blocks, see engine/scanlog.py), WUMA_KEEPALIVE (default 5 s), WUMA_WORKER_CONNECTIONS
(default 10,000), WUMA_ACCEPT_BATCH (default 8, gevent only; all three below) and
WUMA_GRACEFUL_TIMEOUT (below). WUMA_ACCESS_LOG, WUMA_BOOT_RETRY and WUMA_RELOAD_CHECK
are no command's options: they come from the environment the command runs in.

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

Logging: every line on stderr is one JSON object (see :class:`JsonFormatter`), the log
records and also what gunicorn, gevent or Python write there outside logging (see
:class:`JsonStderr`), Python warnings included.
"""

import io
import ipaddress
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

from gunicorn import glogging

from engine.every import Tally
from engine.http_errors import masked_path, masked_referer
from engine.launch import server_of


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC, milliseconds:
    ``2026-11-30T14:31:02.123Z``), level, logger, message, and the traceback."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "message": record.getMessage(), "pid": record.process}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False)


class JsonStderr(io.TextIOBase):
    """``sys.stderr`` of gunicorn's processes: text written to it outside logging goes out
    as JSON objects like the log's (logger ``stderr``), one a line.

    That text is gunicorn's prints (a worker that fails to boot, a setting it refuses),
    tracebacks printed by gevent's hub or by Python (an uncaught exception in a thread).
    Each line is an object, a traceback one object (its last line the message, the whole
    in ``exception``); a line that is a JSON object already goes out as it is. The log
    records themselves go to the stream underneath (``sys.__stderr__``, see
    ``logconfig_dict``), not through here.

    NOTE: a chained traceback is one object per exception, and the line that joins them
    ("During handling of the above exception ...") one of its own: a traceback goes out
    as soon as its exception's line is written, not held back until what follows shows
    whether it goes on.
    """

    def __init__(self, stream, formatter: logging.Formatter | None = None) -> None:
        super().__init__()
        self._stream, self._formatter = stream, formatter or JsonFormatter()
        self._reset()

    def _reset(self) -> None:
        # NOTE: reentrant: a signal handler may write while write() holds it
        self._lock = threading.RLock()
        self._partial = ""  # the line written so far
        self._traceback: list[str] | None = None  # the lines of a traceback being written

    # -- the stream ----------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self):  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")

    @property
    def errors(self):  # type: ignore[override]
        return getattr(self._stream, "errors", "backslashreplace")

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            for line in lines:
                self._line(line)
        return len(text)

    def flush(self) -> None:
        """Writes out what is pending: a line written without its end, a traceback cut
        short (print then flush, as gunicorn does before it exits)."""
        with self._lock:
            if self._traceback is not None:
                self._emit_traceback()
            if self._partial.strip():
                self._emit(self._partial)
            self._partial = ""
            self._stream.flush()

    # -- lines to objects --------------------------------------------------------------
    def _line(self, line: str) -> None:
        if self._traceback is not None:
            self._traceback.append(line)
            if line and not line[0].isspace():  # the exception's line ends it
                self._emit_traceback()
        elif line.startswith("Traceback (most recent call last):"):
            self._traceback = [line]
        elif line.strip():  # NOTE: blank lines (gunicorn prints "\nError: ...") are left out
            self._emit(line)

    def _emit_traceback(self) -> None:
        lines, self._traceback = self._traceback or [], None
        last = lines[-1] if lines[-1:] and not lines[-1][:1].isspace() else lines[0]
        self._emit(last, "\n".join(lines))

    def _emit(self, line: str, exception: str | None = None) -> None:
        if exception is None and line.startswith("{"):
            try:
                if isinstance(json.loads(line), dict):
                    self._stream.write(line + "\n")
                    self._stream.flush()
                    return
            except ValueError:
                pass
        level = logging.WARNING if line.lstrip("! ").lower().startswith("warning") else logging.ERROR
        record = logging.LogRecord("stderr", level, "", 0, line.rstrip(), None, None)
        record.exc_text = exception
        self._stream.write(self._formatter.format(record) + "\n")
        self._stream.flush()


def json_stderr() -> None:
    """Make every line this process (and the workers it forks) writes to stderr one JSON
    object: :class:`JsonStderr` as ``sys.stderr``, Python warnings through logging."""
    if sys.stderr is not None and not isinstance(sys.stderr, JsonStderr):
        sys.stderr = stream = JsonStderr(sys.__stderr__ or sys.stderr)
        os.register_at_fork(after_in_child=stream._reset)  # a worker starts with nothing pending
    logging.captureWarnings(True)  # to the logger py.warnings (JSON once gunicorn set it up)


def _read_by_gunicorn() -> bool:
    """Is this module read by gunicorn (``python -m gunicorn``, the ``gunicorn`` script),
    not imported by a test or a tool (whose stderr stays theirs)?"""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "gunicorn.__main__" or Path((sys.argv or [""])[0]).name == "gunicorn"


if _read_by_gunicorn():
    # NOTE: first, before anything here can fail: gunicorn prints "Error: ..." for a
    # setting it refuses or this module raising, to the stderr installed here
    json_stderr()

bind = os.environ.get("WUMA_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("WUMA_WORKERS") or len(os.sched_getaffinity(0)))
worker_class = os.environ.get("WUMA_WORKER_CLASS") or "gevent"
threads = int(os.environ.get("WUMA_THREADS") or 16)  # gthread only
# PERF: connections (gevent: open connections per worker) and keep-alive chosen by
# measurement (benchmarks/bench_connections.py, README "Connections and keep-alive"):
# phones come on new connections and leave them open and idle, each holding one of a
# worker's connections until the keep-alive timeout closes it; with gunicorn's 1,000 a
# worker, 1,500 phones a second for 15 s at keep-alive 5 s: 10,000 of 22,223 answered,
# the answered ones in a median 5.1 s. An idle connection costs ~11-16 KiB of a worker's
# memory.
worker_connections = int(os.environ.get("WUMA_WORKER_CONNECTIONS") or 10_000)
keepalive = int(os.environ.get("WUMA_KEEPALIVE") or 5)
timeout = int(os.environ.get("WUMA_TIMEOUT") or 30)
#: Seconds a stopping or reloading worker finishes its requests in: a scan's are short;
#: the pack server's downloads are long (`wuma pack serve` gives 300: a reload cut every
#: download over 10 s).
graceful_timeout = int(os.environ.get("WUMA_GRACEFUL_TIMEOUT") or 10)
preload_app = False  # NOTE: every worker opens its own LMDB environment after fork
accesslog = os.environ.get("WUMA_ACCESS_LOG") or None
proc_name = "wuma"


_balance_worker = None  # see post_worker_init: gevent's accept balance, below

if worker_class == "gevent":
    from gevent import sleep as _gevent_sleep

    #: PERF: connections a gevent worker accepts at once when several wait (gunicorn takes
    #: 1 with more than one worker, to spread connections). Measured
    #: (benchmarks/bench_connections.py, README "Connections and keep-alive"): with a new
    #: connection per scan (phones, a proxy without upstream keep-alive) 1 made every group
    #: commit hold one scan: 1,651 scans/s against 3,570 with 8 (7.4 a commit), and 1,500
    #: phones a second got answers in p50/p99 1.2/6.8 s against 3/88 ms. The cost: a burst of
    #: long-lived connections (wrk's 16) could land unevenly on the workers (60/40 in 2
    #: of 5 runs, and once all 16 on one worker): so a worker ahead of the others takes
    #: fewer at once (engine/accept_shares.py: the workers' counts of connections held,
    #: in memory the master shares with them).
    accept_batch = int(os.environ.get("WUMA_ACCEPT_BATCH") or 8)
    if accept_batch > 1 and _read_by_gunicorn():  # NOTE: a process importing this keeps gevent's own
        from gevent.baseserver import BaseServer as _BaseServer

        from gevent.baseserver import _handle_and_close_when_done

        from engine.accept_shares import BEAT, PAUSE, AcceptShares

        _shares = AcceptShares()  # NOTE: made in the master, before any fork
        _start, _do_read, _do_handle = _BaseServer.start, _BaseServer._do_read, _BaseServer.do_handle

        def _start_accepting_batches(self) -> None:
            # NOTE: gunicorn sets max_accept to 1 with more than one worker; with one there
            # is nothing to balance, and gevent's own batches stay
            if self.max_accept == 1 and _shares.mine is not None:
                self._wuma_balanced = True
            _start(self)

        def _read_balanced(self) -> None:
            if not getattr(self, "_wuma_balanced", False):
                return _do_read(self)
            n = _shares.allowance(accept_batch)
            self.max_accept = n or 1
            _do_read(self)
            if n == 0 and self._watcher is not None and self._watcher.active:
                # NOTE: a batch ahead: one taken, then a pause for the others to take theirs
                self.stop_accepting()
                pause = getattr(self, "_wuma_pause", None)
                if pause is not None:
                    pause.close()
                self._wuma_pause = self.loop.timer(PAUSE)
                self._wuma_pause.start(self._start_accepting_if_started)

        def _handle_counted(self, *args) -> None:
            """gevent's ``do_handle``, the connection counted from its accept to the end of
            its handler, whatever ends it (a TLS handshake that fails included)."""
            if not getattr(self, "_wuma_balanced", False):
                return _do_handle(self, *args)
            spawn, handle, close = self._spawn, self._handle, self.do_close

            def counted(*a) -> None:
                try:
                    handle(*a)
                finally:
                    _shares.closed()

            _shares.opened()
            try:
                if spawn is None:
                    _handle_and_close_when_done(counted, close, args)
                else:
                    spawn(_handle_and_close_when_done, counted, close, args)
            except BaseException:  # NOTE: not handled, so not counted closed by it
                _shares.closed()
                close(*args)
                raise

        _BaseServer.start = _start_accepting_batches
        _BaseServer._do_read = _read_balanced

        def pre_fork(server, worker) -> None:
            """In the master: the new worker's slot among the workers' connection counts
            (None when all are taken: that worker is not balanced)."""
            worker.wuma_slot = _shares.assign({getattr(w, "wuma_slot", None) for w in server.WORKERS.values()})

        def _balance_worker(worker) -> None:
            """In the worker, before it serves: count its connections, and say it is alive
            (a worker booting, stopped or hung is left out of the others' balance)."""
            if worker.wuma_slot is None:
                return
            _shares.attach(worker.wuma_slot)
            _BaseServer.do_handle = _handle_counted
            import gevent

            def beat() -> None:
                while True:
                    _shares.beat()
                    gevent.sleep(BEAT)

            gevent.spawn(beat)

        def child_exit(server, worker) -> None:
            """In the master: an exited worker's connections count no more."""
            if getattr(worker, "wuma_slot", None) is not None:
                _shares.free(worker.wuma_slot)

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
            # APPSEC: no code in the access log (GET /v1/codes/{code}, the admin trace; the
            # landing page's URL as the Referer)
            path = environ.get("PATH_INFO") or ""
            masked = masked_path(path)
            if masked != path:
                environ = {**environ, "PATH_INFO": masked, "RAW_URI": masked}
            if environ.get("HTTP_REFERER"):
                environ = {**environ, "HTTP_REFERER": masked_referer(environ["HTTP_REFERER"])}
            super().access(resp, req, environ, request_time)


    def warning(self, msg, *args, **kwargs):
        # APPSEC: gunicorn logs every request it cannot parse, with its request line or
        # header repr'd whole (~20 KB a request measured: 6.6 MB/s from 8 connections, which
        # no ban stops, as the app never sees them): told once a minute, with their count
        if isinstance(msg, str) and msg.startswith(_UNPARSED):
            tally = self.__dict__.get("_unparsed")
            if tally is None:  # NOTE: made in the worker that logs; one, whichever thread first
                tally = self.__dict__.setdefault("_unparsed", Tally(60.0, self._log_unparsed))
            tally.add(msg[len(_UNPARSED):])
            return
        super().warning(msg, *args, **kwargs)

    def _log_unparsed(self, count: int, latest: str) -> None:
        # NOTE: gunicorn's own refusals are among them (a forbidden proxy, scheme headers):
        # the latest's text is told, so a misconfiguration still shows once a minute
        self.error_log.warning("%d request(s) refused by gunicorn before the app since the last "
                               "such line (malformed, or refused by its checks; the latest from "
                               "ip=%s)", count, clipped(latest, 300))


#: How gunicorn begins the line of a request it could not parse (workers/base.py).
_UNPARSED = "Invalid request from ip="


def clipped(text: str, most: int) -> str:
    """``text``, or its first ``most`` characters and how many more there were."""
    return text if len(text) <= most else f"{text[:most]}... ({len(text) - most:,} characters more)"


logger_class = "engine.gunicorn_conf.Logger"


logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "engine.gunicorn_conf.JsonFormatter"}},
    # NOTE: the stream under JsonStderr: these lines are JSON already (and the access log
    # must not be parsed again to find that out)
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                            "stream": "ext://sys.__stderr__"}},
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        # NOTE: the access log is on only with WUMA_ACCESS_LOG (see Logger above).
        "gunicorn.access": {"level": "INFO" if accesslog else "CRITICAL", "handlers": ["stderr"],
                            "propagate": False},
    },
}


#: Seconds a worker that cannot boot, while others serve, waits before it exits (and the
#: arbiter starts another): see :func:`post_fork`.
BOOT_RETRY_S = float(os.environ.get("WUMA_BOOT_RETRY") or 10)
#: Its exit status (EX_TEMPFAIL): not gunicorn's WORKER_BOOT_ERROR (3) nor APP_LOAD_ERROR
#: (4), on which the arbiter stops the whole server.
BOOT_RETRY_EXIT = 75


class BootedWorkers:
    """The pids of the workers that have booted, in memory the master makes before it forks
    and shares with every worker (256 slots of 4 bytes; a worker's slot is its spawn
    number's, so workers started at once never write the same slot)."""

    SLOTS = 256

    def __init__(self) -> None:
        import mmap

        self._pids = memoryview(mmap.mmap(-1, 4 * self.SLOTS)).cast("I")

    def add(self, age: int, pid: int) -> None:
        self._pids[age % self.SLOTS] = pid

    def serving(self, master: int, but: int) -> list[int]:
        """The booted workers of ``master`` still running, other than ``but``."""
        return [p for p in set(self._pids) if p and p != but and _child_of(p, master)]


def _child_of(pid: int, parent: int) -> bool:
    """Whether process ``pid`` runs and is ``parent``'s child (a pid used again by another
    process is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()  # NOTE: the name, in parentheses, may hold spaces
    return len(fields) > 1 and fields[0] != "Z" and fields[1] == str(parent)


_booted = BootedWorkers() if _read_by_gunicorn() else None


def post_fork(server, worker) -> None:
    """In a new worker: when its app cannot load (the data folder no longer opens: a bad
    edit of wuma.json, a key file's mode changed) while other workers serve, it says why,
    waits :data:`BOOT_RETRY_S` and exits with :data:`BOOT_RETRY_EXIT`, and the arbiter
    starts another; the others serve on.

    NOTE: gunicorn stops the whole server when a worker fails to boot. ``wuma serve``
    checks the data folder before it starts gunicorn, and the master before a reload; but
    a worker is also replaced unasked (killed by the OOM killer, by gunicorn's own timeout,
    a crash), and one that read a mistake made since took the whole scan API down. With no
    other worker serving the failure stops the server, as gunicorn does (nothing could
    serve)."""
    if _booted is None:
        return
    load = worker.load_wsgi

    def load_wsgi() -> None:
        try:
            load()
        except Exception as e:
            others = _booted.serving(server.pid, os.getpid())
            if not others:
                raise
            worker.log.error(
                "this worker cannot start: %s. The server serves on with its %d other worker(s); "
                "this one exits in %g s and another is started in its place: fix what this names "
                "(no restart needed)", str(e) or type(e).__name__, len(others), BOOT_RETRY_S)
            time.sleep(BOOT_RETRY_S)
            sys.exit(BOOT_RETRY_EXIT)

    worker.load_wsgi = load_wsgi


def post_worker_init(worker) -> None:
    """In a worker whose app has loaded, before it serves: it counts as booted (see
    :func:`post_fork`), and takes its part in the accept balance (gevent)."""
    if _booted is not None:
        _booted.add(worker.age, os.getpid())
    if _balance_worker is not None:
        _balance_worker(worker)


#: Seconds the check before a reload may take (it opens the data folder, which waits for a
#: long write in progress).
RELOAD_CHECK_S = float(os.environ.get("WUMA_RELOAD_CHECK") or 60)


def _check_before_reload() -> None:
    """SIGHUP (graceful reload) only when the data folder and its settings still load, and
    the app's module imports (a new release's code).

    NOTE: gunicorn halts the whole server when a new worker fails to boot: a mistake in
    wuma.json followed by `kill -HUP` stopped the old workers too, which were serving.
    The check runs in a child process (the master never opens the LMDB environments its
    workers fork from)."""
    import subprocess

    from gunicorn.arbiter import Arbiter

    reload = Arbiter.handle_hup

    def handle_hup(self) -> None:
        # NOTE: the app's module is imported too: a release installed with a broken import
        # (then SIGHUP, gunicorn's upgrade) failed in every new worker while the reload
        # retired the old ones, and the server stopped. The folder is the workers' own,
        # WUMA_DATA or ./wuma-data (engine.data.default_data_path): its check was skipped
        # without WUMA_DATA.
        # NOTE: and only what this server reads (engine.launch.server_of): the pack server
        # refused every reload over a mistake in the scan server's settings
        app = getattr(self.app, "app_uri", None) or ""
        try:
            check = subprocess.run(
                [sys.executable, "-c", "import importlib, sys\n"
                 "from engine.data import check_serving, default_data_path\n"
                 "try:\n    check_serving(default_data_path(), sys.argv[2])\n"
                 "    if sys.argv[1]:\n        importlib.import_module(sys.argv[1])\n"
                 "except BaseException as e:\n    sys.exit(f'{type(e).__name__}: {e}')",
                 app.partition(":")[0], server_of(app)], capture_output=True, text=True, timeout=RELOAD_CHECK_S)
            why = (check.stderr.strip().splitlines() or ["?"])[-1] if check.returncode else None
        except subprocess.TimeoutExpired:  # NOTE: it was the master's end (exit 255)
            why = (f"the check did not finish in {RELOAD_CHECK_S:g} s (a long write, an "
                   "ingest, holds the store?); send SIGHUP again once it is over")
        if why is not None:
            self.log.error("reload refused, the workers keep serving with the code and settings "
                           "they started with: %s", why)
            return
        reload(self)

    Arbiter.handle_hup = handle_hup


_check_before_reload()


def off_loopback(address: str) -> bool:
    """Whether a gunicorn bind address (``host:port``, ``[v6]:port``, ``unix:path``, or a
    bare host) listens beyond this machine."""
    if address.startswith("unix:"):
        return False
    if address.startswith("["):  # [v6]:port
        host = address[1:].split("]", 1)[0]
    elif address.count(":") == 1:  # host:port
        host = address.split(":", 1)[0]
    else:  # a bare host, an IPv6 one included
        host = address
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8, ::1 however written
    except ValueError:
        return True  # a name other than localhost: it may be any address


_OWN_FILES = 256  # NOTE: a worker's files besides its connections: LMDB, logs, pipes, headroom


def open_files_for(connections: int) -> int:
    """Raise this process's open-files limit (the soft one, up to the hard one) so that a
    worker, which inherits it, can hold ``connections`` sockets and its own files; returns
    how many connections it can hold.

    NOTE: a worker out of file descriptors stops accepting and retries after up to 1 s
    (gevent's accept back-off): at the common soft limit of 1,024 the connections above
    would never be reached."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + _OWN_FILES
    if soft != resource.RLIM_INFINITY and soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY:
        return connections
    return max(1, min(connections, soft - _OWN_FILES))


_asked_connections = worker_connections
if _read_by_gunicorn():
    worker_connections = open_files_for(worker_connections)


def worker_exit(server, worker) -> None:
    """In a worker that exits (stopped, reloaded, interrupted): its metrics' file is put on
    disk (engine.metrics: the counts survive a crash of the worker without it, not one of
    the machine)."""
    http_scan = sys.modules.get("engine.http_scan")
    if http_scan is not None:
        http_scan.flush_metrics()


def on_starting(server) -> None:
    """Warn, in the JSON log, of a listener reachable from the network, and of fewer
    connections per worker than asked for (the open-files limit)."""
    if worker_connections < _asked_connections:
        server.log.warning("each worker can hold %d connections, not %d: the open-files limit (ulimit -n, "
                           "hard) is too low; raise it to at least %d", worker_connections,
                           _asked_connections, _asked_connections + _OWN_FILES)
    packs = server_of(getattr(server.app, "app_uri", None) or "") == "packs"
    what = ("the pack server is reachable from the network; put a TLS proxy in front" if packs else
            "the scan API, the admin API and the admin page are reachable from the network; put a "
            "TLS proxy in front (and set serve.trusted_proxies and serve.proxy_header)")
    for address in server.cfg.bind:
        if off_loopback(address):
            server.log.warning("listening on %s, not loopback: %s", address, what)

# NOTE: gunicorn >= 24 opens a control socket at one fixed path per user; several servers
# on one machine (tests, blue/green) would fight over it. Reloads go through signals.
control_socket_disable = True

# PERF: a response's headers and body in one write (see engine/gunicorn_response.py).
from engine.gunicorn_response import install as _install_coalescing_response  # noqa: E402

_install_coalescing_response()
