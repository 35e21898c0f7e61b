"""Once in a while, for log lines. Light (the standard library only): the gunicorn master
reads it too (engine/http_errors.py)."""

from __future__ import annotations

import fcntl
import logging
import os
import random
import threading
import time
from typing import Callable

__all__ = ["Every", "Tally", "repeat", "yield_to_others"]


class Every:
    """``if every.due(): log...``: true at most once per ``seconds`` (a log line repeated
    by every request of an outage would bury the one that matters)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self._last = seconds, None

    def due(self) -> bool:
        now = time.monotonic()
        if self._last is not None and now - self._last < self.seconds:
            return False
        self._last = now
        return True


class Tally:
    """Events told at most once per ``seconds``: ``tally.add(latest)`` counts one; the first
    is told at once, ``report(count, latest)``, and the ones after it together, with their
    count and the latest of them, once ``seconds`` have passed. A timer tells them: a burst
    then silence is still told whole (a line per event would bury the log, and a line
    only at the next event would hide the burst)."""

    def __init__(self, seconds: float, report: Callable[[int, object], None]) -> None:
        self.seconds, self._report = seconds, report
        self._every = Every(seconds)
        self._count, self._latest = 0, None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def add(self, latest: object = None) -> None:
        with self._lock:
            self._count += 1
            self._latest = latest
            if self._every.due():
                self._tell()
            elif self._timer is None:
                self._timer = threading.Timer(self.seconds, self._tell_pending)
                self._timer.daemon = True
                self._timer.start()

    def _tell_pending(self) -> None:
        with self._lock:
            self._timer = None
            if self._count:
                self._tell()

    def _tell(self) -> None:
        count, self._count = self._count, 0
        self._report(count, self._latest)


def repeat(seconds: float, work: Callable[[], object], name: str, *,
           one_of: str | os.PathLike | None = None) -> threading.Thread:
    """Start a daemon thread (a greenlet under gevent's patching) that runs ``work()``
    every ``seconds`` for the life of the process (a server worker's housekeeping); a
    failure is logged, once every 10 minutes at most, and the next round runs.

    The first round comes after a random part of ``seconds``: workers started together do
    not run theirs at once. With ``one_of``, a lock file's path, a round runs only while
    this process holds its ``flock`` (taken without waiting, else the round is skipped):
    one of a server's workers does the work at a time, not both racing for it (the stats
    fold of two workers at one moment, each throwing away what the other folded, held
    scans up to 344 ms)."""
    failing = Every(600)

    def run() -> None:
        time.sleep(random.uniform(0, seconds))
        while True:
            try:
                if one_of is None:
                    work()
                else:
                    _alone(one_of, work)
            except Exception:
                if failing.due():
                    logging.getLogger("wuma").exception("%s failed (it runs again in %g s)", name, seconds)
            time.sleep(seconds)

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()
    return thread


def _alone(path, work: Callable[[], object]) -> None:
    """``work()`` while holding the ``flock`` of the file at ``path``; nothing if another
    open file holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        work()
    finally:
        os.close(fd)


def yield_to_others() -> None:
    """Let the process's other work run a moment: under gevent's patching the hub runs its
    other greenlets (a server worker's requests), under threads the GIL is let go. For a
    long job in steps (a sweep, a fold)."""
    time.sleep(0)
