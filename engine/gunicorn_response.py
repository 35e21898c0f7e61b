"""gunicorn's response, sending the header block and the first body chunk in one write,
with its Date header formatted once a second (:class:`SecondDate`), and its answers to
requests it cannot parse in JSON (:func:`write_json_error`).

gunicorn writes a response's headers with one ``sendall`` and its body with another. A
scan's answer (~0.5 kB) and the header block fit one TCP segment, so the second call
only costs a system call, a second pass through the loopback stack and a second wake-up
of the client. :class:`CoalescingResponse` keeps the header block until the first body
chunk and sends both together. Responses with no body (HEAD, 204, 304, an empty body)
and chunked responses are sent as gunicorn sends them.

PERF (benchmarks/bench_http.py's loop, two alternated runs each, 16 connections): server
system time per request 32-34 -> 22-24 µs on the bare endpoint and 67-69 -> 55-56 µs on
scans; requests/s bare 8.9-9.3k -> 10.6-11.5k, scans 4.0-4.4k -> 4.4-4.6k.

:func:`install` makes gunicorn build its responses from this class (``gunicorn.http.wsgi``
builds them by that module's name ``Response``) and format dates through
:class:`SecondDate`; ``engine/gunicorn_conf.py`` calls it.
"""

from __future__ import annotations

import json
import time

from gunicorn import util
from gunicorn.http import wsgi

from engine.http_errors import error_code

__all__ = ["CoalescingResponse", "install", "SecondDate", "write_json_error"]


class CoalescingResponse(wsgi.Response):
    """A gunicorn ``Response`` whose header block goes out with the first body chunk."""

    _holding = False  #: inside write(): send_headers() keeps the block instead of sending it
    _held: bytes | None = None

    def write(self, arg):
        self._holding = True
        try:
            super().write(arg)
        finally:
            self._holding = False
            if self._held is not None:  # write() sent no body bytes (HEAD, 204, a full length)
                held, self._held = self._held, None
                self.sock.sendall(held)

    def send_headers(self):
        if self.headers_sent:
            return
        if not self._holding or self.chunked:
            super().send_headers()
            return
        block = self.default_headers()
        block.extend(["%s: %s\r\n" % (k, v) for k, v in self.headers])
        self._held = ("%s\r\n" % "".join(block)).encode("latin-1")
        self.headers_sent = True

    def _emit_body(self, data):
        if self._held is not None:
            data, self._held = self._held + data, None
        super()._emit_body(data)


class SecondDate:
    """gunicorn's ``util.http_date``, formatted once a second instead of once a response.

    A ``Date`` header has a resolution of one second (RFC 9110 5.6.7), so the text for the
    current second is the same for every response in it. PERF: gunicorn formats it through
    ``email.utils.formatdate`` for every response, ~2% of a worker's time under load.
    """

    def __init__(self, http_date=util.http_date, clock=time.time) -> None:
        self._http_date, self._clock = http_date, clock
        self._second, self._text = None, ""

    def __call__(self, timestamp=None) -> str:
        if timestamp is not None:
            return self._http_date(timestamp)
        second = int(self._clock())
        if second != self._second:
            # NOTE: two greenlets/threads may both format a new second; both get its text
            self._text, self._second = self._http_date(second), second
        return self._text


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` (its answer to a request it could not parse: a bad
    request line or header, a line or header block over its limits, a bad chunk; or an
    error outside the app), in this API's error shape instead of an HTML page:
    ``{"error": "<reason in snake case>", "message": "..."}``, and the connection closed."""
    body = json.dumps({"error": error_code(reason), "message": mesg or reason}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


def install() -> bool:
    """Make gunicorn use :class:`CoalescingResponse` and :class:`SecondDate`; False (and
    nothing changed) on a gunicorn whose ``Response`` has no ``_emit_body`` (the one place
    it puts body bytes on the wire; the gunicorn this project is tested with, 27, has it):
    there, holding the headers back could send them after the body."""
    if not hasattr(CoalescingResponse.__mro__[1], "_emit_body"):
        return False
    wsgi.Response = CoalescingResponse
    util.write_error = write_json_error  # NOTE: the workers call it as util.write_error
    if not isinstance(util.http_date, SecondDate):
        util.http_date = SecondDate(util.http_date)
    return True
