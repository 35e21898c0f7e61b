"""Once in a while, for log lines. Light (the standard library only): the gunicorn master
reads it too (engine/http_errors.py)."""

from __future__ import annotations

import time

__all__ = ["Every"]


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
