"""The coalescing gunicorn response puts the same bytes on the wire as gunicorn's own, in
fewer writes: one for a response whose body is one chunk."""

from __future__ import annotations

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import wsgi
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.gunicorn_response import CoalescingResponse, SecondDate

STOCK = CoalescingResponse.__mro__[1]


class _Socket:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.writes.append(bytes(data))


class _Request:
    def __init__(self, method: str, version=(1, 1)) -> None:
        self.method, self.version = method, version

    def should_close(self) -> bool:
        return False


@pytest.fixture(autouse=True)
def _fixed_date(monkeypatch):
    monkeypatch.setattr(util, "http_date", lambda *a: "Mon, 30 Nov 2026 04:00:00 GMT")


def _respond(cls, method: str, status: str, headers: list, chunks: list[bytes]) -> list[bytes]:
    sock = _Socket()
    resp = cls(_Request(method), sock, Config())
    resp.start_response(status, list(headers))
    for chunk in chunks:
        resp.write(chunk)
    resp.close()
    return sock.writes


def test_one_write_for_a_one_chunk_answer():
    body = b'{"verdict": "genuine"}'
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    writes = _respond(CoalescingResponse, "POST", "200 OK", headers, [body])
    assert len(writes) == 1
    head, sent = writes[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 22" in head
    assert sent == body
    assert len(_respond(STOCK, "POST", "200 OK", headers, [body])) == 2  # what it saves


def test_gunicorn_uses_it_once_installed(monkeypatch):
    from engine import gunicorn_conf  # noqa: F401  (the config module installs it)
    from engine.gunicorn_response import install, write_json_error

    assert wsgi.Response is CoalescingResponse and util.write_error is write_json_error
    # NOTE: the date, as installed on gunicorn's own (this module's fixture replaces it, and
    # the config module may have been imported already, by another test's module)
    stock = util.http_date
    monkeypatch.setattr(util, "http_date", stock)
    assert install() and isinstance(util.http_date, SecondDate) and util.http_date(0) == stock(0)
    assert install() and not isinstance(util.http_date._http_date, SecondDate)  # once only


def test_the_date_is_gunicorns_for_every_second():
    from email.utils import formatdate

    def stock(ts=None):
        return formatdate(ts, localtime=False, usegmt=True)

    now = [1796013384.0]
    date = SecondDate(stock, clock=lambda: now[0])
    for t in (1796013384.0, 1796013384.2, 1796013384.999999, 1796013385.0, 1796013385.5, 1796013399.01):
        now[0] = t
        assert date() == stock(t)
    assert date() == "Mon, 30 Nov 2026 04:36:39 GMT"
    assert date(86400.7) == stock(86400.7) == "Fri, 02 Jan 1970 00:00:00 GMT"


@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(["GET", "HEAD", "POST"]),
       status=st.sampled_from(["200 OK", "201 Created", "204 No Content", "304 Not Modified",
                               "404 Not Found"]),
       length=st.sampled_from(["exact", "short", "none"]),
       chunks=st.lists(st.binary(max_size=40), max_size=4))
def test_same_bytes_as_gunicorn_in_no_more_writes(method, status, length, chunks):
    body = b"".join(chunks)
    headers = [("Content-Type", "application/json")]
    declared = {"exact": len(body), "short": len(body) // 2, "none": None}[length]
    code = int(status[:3])
    if declared is not None and code not in (204, 304):  # gunicorn refuses a length on these
        headers.append(("Content-Length", str(declared)))
    stock = _respond(STOCK, method, status, headers, chunks)
    ours = _respond(CoalescingResponse, method, status, headers, chunks)
    assert b"".join(ours) == b"".join(stock)
    assert len(ours) <= len(stock)
    if chunks and declared and method != "HEAD" and code not in (204, 304):
        assert len(ours) <= len(stock) - 1  # the header block rode with the first chunk
