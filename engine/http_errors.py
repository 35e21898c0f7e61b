"""What every HTTP app of Wuma answers on an error, and what its logs show of a path.

Errors are ``{"error": "<stable code>", "message": "<for a person>"}``; no stack trace
reaches a client. The handlers are installed on each Falcon app (:func:`install`), and
gunicorn's own answers use :func:`error_code` too (engine/gunicorn_response.py). This
module imports nothing heavy: the gunicorn master reads it for its access log.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from engine.every import Every

__all__ = ["error_code", "masked_path", "masked_referer", "http_error", "storage_error", "storage_unavailable",
           "unexpected_error", "install"]

log = logging.getLogger("wuma.http")

#: Paths whose last segment is a code or a voucher id (whoever holds one may claim it):
#: masked in log lines.
_CODE_PATHS = ("/v1/codes/", "/admin/api/trace/", "/v1/vouchers/")


def error_code(reason: str) -> str:
    """An HTTP reason phrase as a stable error code: ``Bad Request`` -> ``bad_request``."""
    return reason.lower().replace(" ", "_")


def masked_path(path: str) -> str:
    """``path`` for a log line: a code or a voucher id in it (``/v1/codes/{code}``,
    ``/admin/api/trace/{code}``, ``/v1/vouchers/{id}``) cut to its first 4 characters
    (``/v1/vouchers/redeem`` is kept). APPSEC: codes and voucher ids in logs could be
    harvested and claimed."""
    for prefix in _CODE_PATHS:
        if path.startswith(prefix) and len(path) > len(prefix) + 4 and path != "/v1/vouchers/redeem":
            return path[:len(prefix) + 4] + "..."
    return path


def masked_referer(referer: str) -> str:
    """A ``Referer`` for a log line: its origin only (``https://s.example.cn/...``), or
    ``-``. APPSEC: the landing page a consumer scanned is the printed URL, code and all
    (``https://s.example.cn/q/{code}``); a browser sends it with every request the page
    makes to the API."""
    try:
        parts = urlsplit(referer)
    except ValueError:  # NOTE: "http://[" and the like
        return "-"
    host = parts.netloc.rpartition("@")[2]  # NOTE: never a user name or password in it
    if not parts.scheme or not host:
        return "-"
    return f"{parts.scheme}://{host}/..."


def http_error(req, resp, ex, params) -> None:
    """Falcon's HTTP errors as ``{"error": <stable code>, "message": ...}``."""
    reason = ex.status.split(" ", 1)[1]
    resp.status = ex.status
    resp.media = {"error": ex.title if ex.title and " " not in ex.title else error_code(reason),
                  "message": ex.description or reason}
    for k, v in (ex.headers or {}).items():
        resp.set_header(k, v)


def unexpected_error(req, resp, ex: Exception, params) -> None:
    """Falcon's handler of last resort: the trace to the log for operators (the path
    masked), a stable, bare answer to the client."""
    log.exception("unhandled error on %s %s", req.method, masked_path(req.path))
    resp.status = "500 Internal Server Error"
    message = "internal error; the scan was not recorded" if req.path == "/v1/scans" else "internal error"
    resp.media = {"error": "internal", "message": message}


def storage_unavailable(req, resp, ex: Exception,
                        message: str = "the data store cannot take this request now (its disk or "
                                       "map is full, or an I/O error); try again later") -> None:
    """The answer to an LMDB error (the map or the disk full, an I/O error): 503
    ``storage_unavailable`` with ``Retry-After``, the error logged once a minute (not a
    trace a request: an outage would bury the log)."""
    if _storage_logged.due():
        log.error("the data store cannot take %s %s: %s", req.method, masked_path(req.path), ex)
    resp.status = "503 Service Unavailable"
    resp.media = {"error": "storage_unavailable", "message": message}
    resp.set_header("Retry-After", "60")


def storage_error(req, resp, ex: Exception, params) -> None:
    """Falcon's handler of LMDB errors, on every app: :func:`storage_unavailable`."""
    storage_unavailable(req, resp, ex)


_storage_logged = Every(60)


def install(app) -> None:
    """The handlers on a Falcon app (Falcon picks the most specific: HTTPError's and
    LMDB's before the last resort)."""
    import falcon
    import lmdb

    app.add_error_handler(Exception, unexpected_error)
    app.add_error_handler(lmdb.Error, storage_error)
    app.add_error_handler(falcon.HTTPError, http_error)
