"""The scan API over HTTP (Falcon, JSON). Resources only translate HTTP.

Routes::

    POST /v1/scans          one scan (code or URL, actor, location, device) -> verdict
    GET  /v1/codes/{code}   read-only anti-counterfeit check for the landing page
    GET  /healthz           liveness
    GET  /metrics           Prometheus text: scans by verdict, latency histogram, bans
    GET  /openapi.json      the OpenAPI 3 document of these routes

Errors are JSON ``{"error": "<stable code>", "message": "<for a person>"}``; no stack
trace ever reaches a client.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import re
import time
from typing import Callable

import falcon
import lmdb

from engine import http_errors
from engine.abuse import sweep_every
from engine.addresses import UNIX_PEER, client_address, ipv6_client
from engine.aggregation import Aggregation
from engine.data import DataFolder, default_data_path
from engine.errors import Banned, RateLimited, Unauthorized
from engine.every import Every
from engine.metrics import (BUCKET_KEYS, COUNT_KEY, LATENCY_BUCKETS, REFUSED_KEYS, SUM_KEY, VERDICT_KEYS,
                            Metrics, flush_metrics)
from engine.openapi import OPENAPI
from engine.scan import JSON_ENCODER, ScanPipeline, ScanRequest
from engine.scanlog import ScanLog, gate_writes
from engine.store import Store, clear_dead_readers_every

__all__ = ["create_app", "app_from_env", "serving", "json_body", "Metrics", "LATENCY_BUCKETS", "JSON_HANDLER",
           "flush_metrics"]

log = logging.getLogger("wuma.http")
_MAX_BODY = 16 * 1024

#: JSON bodies in and out. PERF: one reused encoder (engine.scan.JSON_ENCODER). Falcon's
#: default, ``json.dumps(obj, ensure_ascii=False)``, builds a new JSONEncoder on every call:
#: a scan answer took ~12 µs to serialise that way and ~6 µs through a reused encoder. The
#: scan routes write their answers with ScanResult.to_json instead (the same bytes; 8.0 ->
#: 4.7 µs against the reused encoder, measured another day).
JSON_HANDLER = falcon.media.JSONHandler(dumps=JSON_ENCODER.encode)


try:  # gunicorn's errors for a body it cannot parse (a bad chunk size...)
    from gunicorn.http.errors import ParseException as _GunicornParseError
except ImportError:  # pragma: no cover - another WSGI server
    _GunicornParseError = OSError
_UNREADABLE = (OSError, _GunicornParseError)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


#: Request bodies are read as RFC 8259 JSON: Python's json would take the literals NaN,
#: Infinity and -Infinity too, and they would come back out as invalid JSON.
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _is_json(content_type: str | None) -> bool:
    """Whether a Content-Type is ``application/json`` (any case, parameters allowed)."""
    return content_type is not None and (
        content_type.partition(";")[0].strip().lower() == "application/json")


def _error(resp: falcon.Response, status: str, code: str, message: str, **extra) -> None:
    resp.status = status
    resp.media = {"error": code, "message": message, **extra}


def json_body(req: falcon.Request, max_bytes: int = _MAX_BODY) -> dict:
    """The request's JSON object, at most ``max_bytes``, with a clear error otherwise."""
    env = req.env
    # PERF: a server that ends wsgi.input at the body's end (gunicorn says so with
    # wsgi.input_terminated, PEP 3333 extension) is read directly; Falcon's bounded
    # stream, which guards servers that do not, took ~2% of the app's time (py-spy)
    stream = env["wsgi.input"] if env.get("wsgi.input_terminated") else req.bounded_stream
    try:
        raw = stream.read(max_bytes + 1)
    except _UNREADABLE:  # NOTE: the client's doing (a reset, a bad chunk): no ERROR, no trace
        raise falcon.HTTPBadRequest(title="bad_request",
                                    description="the body could not be read (connection or chunk "
                                                "framing broken)") from None
    if len(raw) > max_bytes:
        raise falcon.HTTPContentTooLarge(title="request_too_large",
                                         description=f"body over {max_bytes} bytes")
    try:
        # NOTE: JSON is UTF-8 (RFC 8259); decoding first spares json.loads its encoding
        # detection
        doc = _DECODER.decode(raw.decode() if raw else "null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # NOTE: RecursionError: [[[[...]]]]
        raise falcon.HTTPBadRequest(title="bad_json", description="the body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise falcon.HTTPBadRequest(title="bad_request", description="the body must be a JSON object")
    return doc


#: The fields of a scan's body, of its ``actor`` and of its ``location``.
_SCAN_FIELDS = frozenset({"code", "actor", "location", "device"})
_ACTOR_FIELDS = frozenset({"role", "id"})
_LOCATION_FIELDS = frozenset({"region", "lat", "lng"})


class ScanResource:
    def __init__(self, pipeline: ScanPipeline, metrics: Metrics, client_ip: Callable) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.client_ip = client_ip

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        start = time.perf_counter()
        # APPSEC: a web page may make its visitors' browsers POST a text/plain (or
        # typeless) body to any site without asking it first (a "simple" request, no CORS
        # preflight): scans from thousands of addresses, past every per-address rate and
        # ban. A JSON content type needs the preflight, which this API never grants.
        if not _is_json(req.content_type):
            raise falcon.HTTPUnsupportedMediaType(
                title="unsupported_media_type",
                description="send the scan as JSON, with the header Content-Type: application/json")
        doc = json_body(req)
        actor = {} if doc.get("actor") is None else doc["actor"]
        location = {} if doc.get("location") is None else doc["location"]
        if not isinstance(actor, dict) or not isinstance(location, dict):
            raise falcon.HTTPBadRequest(title="bad_request", description="actor and location must be objects")
        for where, got, known in (("", doc, _SCAN_FIELDS), ("actor.", actor, _ACTOR_FIELDS),
                                  ("location.", location, _LOCATION_FIELDS)):
            if not known.issuperset(got):  # NOTE: a misspelt field (regoin) was lost unseen
                unknown = ", ".join(where + k for k in sorted(set(got) - known))
                raise falcon.HTTPBadRequest(title="bad_request", description=f"unknown fields: {unknown}")
        auth = req.get_header("Authorization") or ""
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        sreq = ScanRequest(code=doc.get("code"), actor_role=actor.get("role", "consumer"),
                           actor_id=actor.get("id"), token=token, region=location.get("region"),
                           lat=location.get("lat"), lng=location.get("lng"), device=doc.get("device"),
                           ip=self.client_ip(req))
        try:
            result = self.pipeline.scan(sreq)
        except (ValueError, Unauthorized, Banned, RateLimited, lmdb.Error) as e:
            _refused(req, resp, self.metrics, e)
            return
        self.metrics.observe_scan(result.verdict, time.perf_counter() - start)
        resp.data = result.to_json()


def _refused(req: falcon.Request, resp: falcon.Response, metrics: Metrics, e: Exception) -> None:
    """The answer to a scan or check the pipeline refused."""
    if isinstance(e, lmdb.Error):  # NOTE: map or disk full, an I/O error: nothing stored
        metrics.inc(REFUSED_KEYS["storage_unavailable"])
        http_errors.storage_unavailable(req, resp, e, "the scan could not be stored and was not "
                                                      "counted; try again later")
        return
    if isinstance(e, ValueError):
        raise falcon.HTTPBadRequest(title="bad_request", description=str(e)) from None
    if isinstance(e, Unauthorized):
        metrics.inc(REFUSED_KEYS["unauthorized"])
        _error(resp, falcon.HTTP_401, "unauthorized", str(e))
        resp.set_header("WWW-Authenticate", "Bearer")
    elif isinstance(e, Banned):
        metrics.inc(REFUSED_KEYS["banned"])
        _error(resp, falcon.HTTP_403, "banned", str(e), until=e.until)
    else:
        metrics.inc(REFUSED_KEYS["rate_limited"])
        _error(resp, falcon.HTTP_429, "rate_limited", str(e))
        resp.set_header("Retry-After", str(e.retry_after))


class CodeResource:
    """The landing page's read-only check: held to the client's bans and rate, and an
    invalid code counts towards its enumeration ban, as for scans."""

    def __init__(self, pipeline: ScanPipeline, metrics: Metrics, client_ip: Callable) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.client_ip = client_ip

    def on_get(self, req: falcon.Request, resp: falcon.Response, code: str) -> None:
        try:
            resp.data = self.pipeline.check(code, self.client_ip(req)).to_json()
        except (ValueError, Banned, RateLimited, lmdb.Error) as e:
            _refused(req, resp, self.metrics, e)


class HealthResource:
    """200 ``{"status": "ok"}``, or 503 with the reason when the store cannot take scans
    (``map_nearly_full``, ``disk_nearly_full``): a load balancer takes the server out. The
    operator's text, which names the data folder's path, goes to the error log (once a
    minute), not to whoever asks: the route is public."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._told = Every(60)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        problem = self.store.problem()
        if problem is None:
            resp.media = {"status": "ok"}
            return
        reason, text = problem
        if self._told.due():
            log.error("the store cannot take scans: %s", text)
        resp.status = falcon.HTTP_503
        resp.media = {"status": "unavailable", "reason": reason}


class MetricsResource:
    def __init__(self, metrics: Metrics, data: DataFolder) -> None:
        self.metrics = metrics
        self.data = data

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Prometheus text format 0.0.4: each family's HELP and TYPE then its samples,
        every series from the start (zeros), buckets in increasing order, +Inf last."""
        totals = self.metrics.totals()
        lines: list[str] = []

        def family(name: str, kind: str, text: str, keys) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{k} {_sample(totals.get(k, 0.0))}" for k in keys)

        family("wuma_scans_total", "counter", "Scans answered, by verdict.", VERDICT_KEYS.values())
        family("wuma_scans_refused_total", "counter", "Scans refused, by reason.", REFUSED_KEYS.values())
        family("wuma_scan_latency_seconds", "histogram", "Time to answer a scan.",
               (*BUCKET_KEYS, SUM_KEY, COUNT_KEY))
        totals["wuma_bans_active"] = float(self.data.abuse.count_active())
        family("wuma_bans_active", "gauge", "Clients banned now.", ("wuma_bans_active",))
        resp.content_type = "text/plain; version=0.0.4"
        resp.text = "\n".join(lines) + "\n"


def _sample(value: float) -> str:
    """A sample value in full: counts as integers (``%g`` wrote 1234567 as 1.23457e+06,
    so past a million a counter moved in steps of ten), other values as Python's repr."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


class OpenApiResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = OPENAPI




#: How a dual-stack (IPv6) socket writes an IPv4 peer's address: ``::ffff:10.0.0.2``.
_MAPPED = "::ffff:"
#: A proxy header's hop with brackets or a port, as load balancers and RFC 7239 write
#: them: ``198.51.100.1:50312``, ``[2001:db8::1]``, ``[2001:db8::1]:443`` (a port may be
#: obfuscated, ``_p1``); group 1 or 2 is the address.
_PORTED_HOP = re.compile(r"\[([^\]]+)\](?::(?:[0-9]{1,5}|_[A-Za-z0-9._-]+))?"
                         r"|([0-9.]+):(?:[0-9]{1,5}|_[A-Za-z0-9._-]+)")
#: The ``for=`` parameter of an RFC 7239 ``Forwarded`` element: a token or a quoted string.
_FORWARDED_FOR = re.compile(r'(?:^|;)\s*for=("(?:[^"\\]|\\.)*"|[^;"]*)(?=;|$)', re.IGNORECASE)


@functools.lru_cache(maxsize=4096)
def _ipv6_node(text: str) -> tuple[str, str] | None:
    """See :func:`_node`. PERF: cached (bounded): ipaddress takes several µs an address."""
    try:
        address = ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        return None
    client = ipv6_client(address)
    return (client, client) if address.ipv4_mapped is not None else (str(address), client)


def _node(text: str) -> tuple[str, str] | None:
    """``(address, client)`` for an IP address's text, or None if it is none: the address
    written one way, to match a proxy by, and the client it counts as
    (:func:`engine.addresses.client_address`). An IPv4-mapped IPv6 address is its IPv4 address
    both ways, so a client or proxy is the same one over IPv4 and over a dual-stack socket."""
    if ":" not in text:
        address = client_address(text)  # PERF: IPv4, the usual case: one regular expression
        return None if address is None else (address, address)
    if text.startswith(_MAPPED) and ":" not in text[7:]:  # PERF: as a dual-stack socket writes IPv4
        address = client_address(text[7:])
        if address is not None:
            return address, address
    return _ipv6_node(text)


def _hop(text: str) -> tuple[str, str] | None:
    """:func:`_node` of one hop of a proxy header, without its brackets and port."""
    text = text.strip()
    if ":" in text and (text[0] == "[" or text.count(":") == 1):  # PERF: IPv4 needs neither test
        ported = _PORTED_HOP.fullmatch(text)
        if ported is None:
            return None
        text = ported[1] or ported[2]
    return _node(text)


def _forwarded_for(element: str) -> str:
    """The node of an RFC 7239 ``Forwarded`` element's ``for=``, unquoted; "" (no address)
    when it has none or more than one. APPSEC: the header is split at every comma, quoted
    or not: a node never holds one, and a quote the client opens cannot then swallow the
    element the proxy appends to its right."""
    found = _FORWARDED_FOR.findall(element)
    if len(found) != 1:
        return ""
    node = found[0]
    return re.sub(r"\\(.)", r"\1", node[1:-1]) if node.startswith('"') else node


def make_client_ip(trusted_proxies: frozenset[str], header: str | None) -> Callable:
    """The client's address as bans and rate limits count it (see
    :func:`engine.addresses.client_address`: an IPv6 client by its /64).

    The connection's address; or, when the connection comes from a trusted proxy or over a
    unix socket (which only a local proxy reaches), the rightmost address in ``header``
    that is not a trusted proxy's: hops to the left of it are whatever the client wrote.
    ``header`` is a list of addresses (X-Forwarded-For; a hop may carry a port:
    ``198.51.100.1:50312``, ``[2001:db8::1]:443``) or RFC 7239's ``Forwarded``, read by its
    ``for=``. A hop that is no address (``unknown``, ``_hidden``, no ``for=``) counts as
    the proxy itself. Addresses are compared as addresses, an IPv4-mapped one
    (``::ffff:10.0.0.2``, how a server bound to ``[::]`` sees an IPv4 peer) as its IPv4
    address. Over a unix socket with no header, every client is one, :data:`UNIX_PEER`,
    sharing one rate and one ban (fail closed; logged once): set ``serve.proxy_header``."""
    proxies = {}  # each trusted proxy's address -> the client it counts as
    for text in trusted_proxies:
        node = _node(text)
        if node is None:
            raise ValueError(f"trusted_proxies: {text!r} is not an IP address")
        proxies[node[0]] = node[1]
    # PERF: a peer is looked up by its text first, so a proxy is found without parsing: an
    # IPv4 proxy also as a dual-stack socket writes it
    peers = {**proxies, **{_MAPPED + a: a for a in proxies if ":" not in a}}
    forwarded = header is not None and header.lower() == "forwarded"
    warned = False

    def client_ip(req: falcon.Request) -> str:
        nonlocal warned
        remote = req.remote_addr or ""
        peer = peers.get(remote)
        if peer is None and remote:
            if ":" not in remote:
                return remote  # PERF: an IPv4 client, the usual case, as the socket wrote it
            node = _node(remote)
            if node is None or node[0] not in proxies:
                return remote if node is None else node[1]
            peer = node[1]
        if header:
            value = req.get_header(header)
            if value:
                for hop in reversed(value.split(",")):
                    node = _hop(_forwarded_for(hop) if forwarded else hop)
                    if node is None:  # no address: the proxy itself
                        return peer or UNIX_PEER
                    if node[0] not in proxies:
                        return node[1]
        if peer:
            return peer
        if not warned:  # a unix socket
            warned = True
            log.warning("scan API reached over a unix socket with no serve.proxy_header in "
                        "wuma.json (or a request without it): every client counts as one "
                        "for rate limits and bans; set it to the header your proxy writes, "
                        "such as X-Forwarded-For")
        return UNIX_PEER

    return client_ip


def create_app(data: DataFolder, *, pipeline: ScanPipeline | None = None,
               clock: Callable[[], float] = time.time) -> falcon.App:
    """Build the scan API over an open data folder (one per worker process). ``pipeline``
    defaults to one without campaign hooks; the admin layer passes its own."""
    cfg = data.serve_settings
    gate_writes(data.store)  # under gevent: bans and admin writes wait for an ingest aside
    if pipeline is None:
        pipeline = ScanPipeline(data.codes, Aggregation(data), ScanLog(data.store), data.abuse,
                                data.accounts, regions=data.regions, clock=clock)
    metrics = Metrics(data.abuse.counters)  # NOTE: one LMDB env per path per process
    client_ip = make_client_ip(frozenset(cfg["trusted_proxies"]), cfg["proxy_header"])
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.media_handlers[falcon.MEDIA_JSON] = JSON_HANDLER
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = JSON_HANDLER
    app.add_route("/v1/scans", ScanResource(pipeline, metrics, client_ip))
    app.add_route("/v1/codes/{code}", CodeResource(pipeline, metrics, client_ip))
    app.add_route("/healthz", HealthResource(data.store))
    app.add_route("/metrics", MetricsResource(metrics, data))
    app.add_route("/openapi.json", OpenApiResource())
    http_errors.install(app)
    return app


def serving(data: DataFolder) -> DataFolder:
    """``data`` with what a server worker runs beside its requests: the reader slots of
    processes killed inside a read of its stores freed every 30 s
    (:func:`engine.store.clear_dead_readers_every`), stale abuse counters swept every
    minute (:func:`engine.abuse.sweep_every`)."""
    clear_dead_readers_every([data.store, data.abuse.counters])
    sweep_every(data.abuse)
    return data


def app_from_env() -> falcon.App:
    """gunicorn entry point: ``engine.http_scan:app_from_env()``; reads ``WUMA_DATA``."""
    return create_app(serving(DataFolder(default_data_path())))
