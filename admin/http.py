"""The served app: the scan API with campaigns, vouchers, the admin API and the admin page,
in one Falcon app (``wuma serve`` runs :func:`app_from_env`). Resources only translate
HTTP: every change goes through the admin library, which validates and audits it.

Routes added to the scan API of :mod:`engine.http_scan`::

    POST /v1/vouchers/redeem                  a store redeems a voucher (store account token); the
                                              same store again: its redemption, "repeat": true
    GET  /v1/vouchers/{voucher}               a voucher's state (whoever holds the id)
    GET  /admin                               the admin page (admin/page.py)

    Admin API (``Authorization: Bearer wma_...``; permissions in admin/tokens.py)
    GET  /admin/api/me                        the token's name and role          [read]
    GET  /admin/api/products                                                     [read]
    POST /admin/api/products                  {"sku", "name", "gtin"?}           [product.add]
    GET  /admin/api/pools                     every pool with its burn-down      [read]
    POST /admin/api/pools                     {"id", "total", ...}               [pool.create]
    GET  /admin/api/pools/{pool}              spend by day and region            [read]
    POST /admin/api/pools/{pool}/top-up       {"amount"}, Idempotency-Key?       [pool.top_up]
    GET  /admin/api/campaigns?status=                                            [read]
    POST /admin/api/campaigns                 the campaign rule (admin/campaigns.py) [campaign.write]
    GET  /admin/api/campaigns/{id}                                               [read]
    POST /admin/api/campaigns/{id}/pause|resume|close                            [campaign.write]
    GET  /admin/api/ledger?after=&limit=&campaign=&kind=                         [read]
    POST /admin/api/ledger/{seq}/reverse      {"reason"}                         [ledger.reverse]
    GET  /admin/api/payouts                   counts and amounts per state       [read]
    GET  /admin/api/payouts/{seq}                                                [read]
    POST /admin/api/payouts/{seq}/retry                                          [payout.retry]
    POST /admin/api/vouchers/sweep            expire vouchers and locks now      [voucher.sweep]
    GET  /admin/api/audit?after=&limit=&newest_first=                            [read]
    GET  /admin/api/batches                                                      [read]
    GET  /admin/api/alerts?distributor=&limit=  diversion alerts and counts      [read]
    GET  /admin/api/bans?all=                                                    [read]
    POST /admin/api/bans/lift                 {"subject"}                        [ban.lift]
    GET  /admin/api/trace/{code}              everything known about a code      [read]
    GET  /admin/api/stats?days=&top=          statistics (admin/stats.py)        [read]
    GET  /admin/api/tokens                                                       [token.manage]
    POST /admin/api/tokens                    {"name", "role"} -> the token, once [token.manage]
    POST /admin/api/tokens/{name}/reissue     a new secret -> the token, once   [token.manage]
    POST /admin/api/tokens/{name}/revoke                                         [token.manage]

Errors keep the scan API's shape ``{"error": code, "message": ...}``: 400 ``bad_request``
(the library's validation message), 401 ``unauthorized``, 403 ``forbidden``, 404
``not_found`` (``invalid`` for a code that is not genuine), 409 ``conflict``.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import falcon

from admin._util import MAX_SEQ, MAX_SUBJECT
from admin.ledger import KINDS
from admin.openapi import ADMIN_OPENAPI
from admin.page import add_page_routes
from admin.service import Admin
from admin.stats import Stats
from admin.tokens import AdminTokens
from engine import http_scan
from engine.data import DataFolder, default_data_path
from engine.errors import Conflict, InvalidCode, NotFound
from engine.every import Tally
from engine.ids import check_text

__all__ = ["create_app", "app_from_env"]

log = logging.getLogger("wuma.http")

_MAX_BODY = 256 * 1024  # a campaign on many serial ranges is a few KB; leave room
#: Path converters: ids outside these ranges are not routes (404), never a crash.
_CAMPAIGN = "{campaign:int(min=1, max=4294967295)}"
_SEQ = f"{{seq:int(min=1, max={MAX_SEQ})}}"


# -- edges: bodies, parameters, errors ---------------------------------------------------------
def _bearer(req: falcon.Request) -> str | None:
    auth = req.get_header("Authorization") or ""
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


_JSON_TYPE = {str: "a string", int: "a whole number", dict: "an object", list: "a list",
              type(None): "null", bool: "true or false"}


def _body(req: falcon.Request, fields: dict[str, tuple] | None = None,
          required: tuple[str, ...] = ()) -> dict:
    """The request's JSON object. With ``fields`` ({name: allowed types}), unknown fields,
    missing required ones and wrong JSON types are refused here; values are the library's."""
    doc = http_scan.json_body(req, _MAX_BODY)
    if fields is None:
        return doc
    unknown = set(doc) - set(fields)
    if unknown:
        raise falcon.HTTPBadRequest(title="bad_request",
                                    description=f"unknown fields: {', '.join(sorted(unknown))}")
    for name in required:
        if name not in doc:
            raise falcon.HTTPBadRequest(title="bad_request", description=f"\"{name}\" is required")
    for name, value in doc.items():
        types = fields[name]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            want = " or ".join(_JSON_TYPE[t] for t in types)
            raise falcon.HTTPBadRequest(title="bad_request", description=f"\"{name}\" must be {want}")
    return doc



def _page(req: falcon.Request) -> tuple[int, int]:
    """``after`` (a sequence number, default 0) and ``limit`` (1-1000, default 100)."""
    return (req.get_param_as_int("after", min_value=0, max_value=MAX_SEQ, default=0),
            req.get_param_as_int("limit", min_value=1, max_value=1000, default=100))


def _enum_param(req: falcon.Request, name: str, allowed) -> str | None:
    value = req.get_param(name)
    if value is not None and value not in allowed:
        raise falcon.HTTPInvalidParam(f"one of {', '.join(allowed)}", name)
    return value


def _bool_param(req: falcon.Request, name: str) -> bool:
    return _enum_param(req, name, ("true", "false")) == "true"


def _created(resp: falcon.Response, doc: dict) -> None:
    resp.status = falcon.HTTP_201
    resp.media = doc


def _not_found(req, resp, ex: NotFound, params) -> None:
    resp.status = falcon.HTTP_404
    resp.media = {"error": "not_found", "message": str(ex)}


def _conflict(req, resp, ex: Conflict, params) -> None:
    resp.status = falcon.HTTP_409
    resp.media = {"error": "conflict", "message": str(ex)}


def _invalid(req, resp, ex: ValueError, params) -> None:
    # NOTE: the library raises ValueError for a value it refuses, with a message meant
    # for the person who sent it (campaign rules, amounts, ids ...).
    resp.status = falcon.HTTP_400
    message = str(ex)
    if isinstance(ex, UnicodeError):  # NOTE: Python's codec text is for no person: a check missed it
        message = "the request holds text that is not Unicode (a lone surrogate, such as \\ud800)"
    resp.media = {"error": "bad_request", "message": message}


class AdminAuth:
    """Middleware: every resource with ``permissions`` ({HTTP method: permission}) needs
    an active admin token whose role holds that permission. 401 without a valid token,
    403 with one whose role may not. APPSEC: checked before any responder runs.
    PERF: on the scan path this is one getattr per request (scan resources have none)."""

    def __init__(self, tokens: AdminTokens, *, report_every: float = 60.0) -> None:
        self.tokens = tokens
        # requests without a valid token, told with the latest one's client and path
        self._refused = Tally(report_every, _log_refused)

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource, params) -> None:
        permissions = getattr(resource, "permissions", None)
        if permissions is None:
            return
        token = self.tokens.authenticate(_bearer(req))
        if token is None:
            self._note_refused(req)
            raise falcon.HTTPUnauthorized(title="unauthorized", challenges=["Bearer"],
                                          description="an admin token is needed: Authorization: Bearer wma_...")
        permission = permissions.get(req.method)
        if permission is None:  # HEAD/OPTIONS/unsupported: Falcon answers (405 ...)
            return
        if not token.may(permission):
            raise falcon.HTTPForbidden(title="forbidden",
                                       description=f"a {token.role} token may not do this ({permission})")
        req.context.admin_token = token


    def _note_refused(self, req: falcon.Request) -> None:
        """Count a request without a valid admin token (told once a minute at most, see
        :class:`engine.every.Tally`). APPSEC: someone guessing tokens (thousands a second
        were answered 401 and left no trace) shows in the log; a token never does."""
        self._refused.add((req.remote_addr or "a unix socket", req.path))


def _log_refused(count: int, latest: tuple[str, str]) -> None:
    log.warning("admin API: %d request(s) without a valid admin token since the last such line "
                "(the latest from %s to %s): a token mistyped, revoked or replaced, or someone "
                "guessing", count, *latest)


def _who(req: falcon.Request) -> str:
    return req.context.admin_token.who


# -- vouchers (stores and consumers) ------------------------------------------------------------
_PUBLIC_VOUCHER = ("id", "campaign", "value", "state", "issued_at", "expires_at", "redeemed_at")


def _public_voucher(v: dict) -> dict:
    # APPSEC: whoever holds the id may see the voucher, not who it was issued to.
    return {k: v.get(k) for k in _PUBLIC_VOUCHER}


class AdminResource:
    """A resource over the :class:`Admin` facade. Subclasses name, per HTTP method, the
    permission a token needs (``permissions``; checked by :class:`AdminAuth`)."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin


class VoucherResource(AdminResource):
    def on_get(self, req, resp, voucher: str) -> None:
        if not voucher.strip():  # NOTE: an empty LMDB key is an error, not a miss
            raise NotFound("no such voucher")
        resp.media = _public_voucher(self.admin.rewards.voucher(voucher))


class RedeemResource(AdminResource):
    def __init__(self, admin: Admin, clock: Callable[[], float]) -> None:
        super().__init__(admin)
        self.clock = clock

    def on_post(self, req, resp) -> None:
        account = self.admin.data.accounts.authenticate(_bearer(req))
        if account is None:
            raise falcon.HTTPUnauthorized(title="unauthorized", challenges=["Bearer"],
                                          description="a store account token is needed")
        if account.role != "store":
            raise falcon.HTTPForbidden(title="forbidden", description="only a store redeems vouchers")
        doc = _body(req, {"voucher": (str,)}, required=("voucher",))
        # audited as by the redeeming account (its token), as admin changes are by theirs
        v = self.admin.rewards.redeem(doc["voucher"], account, who=f"account:{account.id}", now=self.clock())
        resp.media = {**_public_voucher(v), "redeemed_by": v["redeemed_by"], "ledger": v["redeem_ledger"],
                      "repeat": v["repeat"]}


# -- the admin API ------------------------------------------------------------------------------
class MeResource:
    permissions = {"GET": "read"}

    def on_get(self, req, resp) -> None:
        resp.media = req.context.admin_token.to_dict()


class ProductsResource(AdminResource):
    permissions = {"GET": "read", "POST": "product.add"}

    def on_get(self, req, resp) -> None:
        resp.media = [p.to_dict() for p in self.admin.products.list()]

    def on_post(self, req, resp) -> None:
        doc = _body(req, {"sku": (str,), "name": (str,), "gtin": (str, type(None))}, required=("sku", "name"))
        p = self.admin.products.add(doc["sku"], doc["name"], gtin=doc.get("gtin"), who=_who(req))
        _created(resp, p.to_dict())


class PoolsResource(AdminResource):
    permissions = {"GET": "read", "POST": "pool.create"}

    def on_get(self, req, resp) -> None:
        pools = self.admin.pools
        resp.media = [pools.status(p.id) for p in pools.list()]

    def on_post(self, req, resp) -> None:
        doc = _body(req, {"id": (str,), "total": (int,), "name": (str,), "unit": (str,),
                          "daily": (int, type(None)), "regions": (dict, type(None))}, required=("id", "total"))
        pool_id = doc.pop("id")
        pool = self.admin.pools.create(pool_id, who=_who(req), **doc)
        _created(resp, self.admin.pools.status(pool.id))


class PoolResource(AdminResource):
    permissions = {"GET": "read"}

    def on_get(self, req, resp, pool: str) -> None:
        resp.media = self.admin.pools.status(pool)


class PoolTopUpResource(AdminResource):
    permissions = {"POST": "pool.top_up"}

    def on_post(self, req, resp, pool: str) -> None:
        doc = _body(req, {"amount": (int,)}, required=("amount",))
        status, replayed = self.admin.pools.top_up_status(pool, doc["amount"], who=_who(req),
                                                          idempotency_key=req.get_header("Idempotency-Key"))
        if replayed:  # the first top-up's answer again; nothing changed
            resp.set_header("Idempotent-Replayed", "true")
        resp.media = status


class CampaignsResource(AdminResource):
    permissions = {"GET": "read", "POST": "campaign.write"}

    def on_get(self, req, resp) -> None:
        status = _enum_param(req, "status", ("active", "paused", "closed"))
        resp.media = [c.to_dict() for c in self.admin.campaigns.list(status)]

    def on_post(self, req, resp) -> None:
        c = self.admin.campaigns.create(_body(req), who=_who(req))
        _created(resp, c.to_dict())


class CampaignResource(AdminResource):
    permissions = {"GET": "read"}

    def on_get(self, req, resp, campaign: int) -> None:
        resp.media = self.admin.campaigns.get(campaign).to_dict()


class CampaignActionResource(AdminResource):
    """POST /admin/api/campaigns/{id}/pause (resume, close): one resource per action."""

    permissions = {"POST": "campaign.write"}

    def __init__(self, admin: Admin, action: str) -> None:
        super().__init__(admin)
        self.action = action

    def on_post(self, req, resp, campaign: int) -> None:
        c = getattr(self.admin.campaigns, self.action)(campaign, who=_who(req))
        resp.media = c.to_dict()


class LedgerResource(AdminResource):
    permissions = {"GET": "read"}

    def on_get(self, req, resp) -> None:
        after, limit = _page(req)
        campaign = req.get_param_as_int("campaign", min_value=1)
        kind = _enum_param(req, "kind", KINDS)
        resp.media = self.admin.ledger.entries(after, limit, campaign=campaign, kind=kind)


class LedgerReverseResource(AdminResource):
    permissions = {"POST": "ledger.reverse"}

    def on_post(self, req, resp, seq: int) -> None:
        doc = _body(req, {"reason": (str,)}, required=("reason",))
        resp.media = self.admin.reverse(seq, reason=doc["reason"], who=_who(req))


class PayoutsResource(AdminResource):
    permissions = {"GET": "read"}

    def on_get(self, req, resp) -> None:
        resp.media = self.admin.payouts.summary()


class PayoutResource(AdminResource):
    permissions = {"GET": "read"}

    def on_get(self, req, resp, seq: int) -> None:
        resp.media = self.admin.payouts.state(seq)


class PayoutRetryResource(AdminResource):
    permissions = {"POST": "payout.retry"}

    def on_post(self, req, resp, seq: int) -> None:
        resp.media = self.admin.payouts.retry(seq, who=_who(req))


class SweepResource(AdminResource):
    permissions = {"POST": "voucher.sweep"}

    def on_post(self, req, resp) -> None:
        resp.media = self.admin.sweep(who=_who(req))


class AuditResource(AdminResource):
    permissions = {"GET": "read"}

    def on_get(self, req, resp) -> None:
        after, limit = _page(req)
        newest = _bool_param(req, "newest_first")
        before = req.get_param_as_int("before", min_value=1, max_value=MAX_SEQ)
        resp.media = self.admin.audit.entries(after, limit, newest_first=newest, before=before)


class BatchesResource(AdminResource):
    permissions = {"GET": "read"}

    def on_get(self, req, resp) -> None:
        resp.media = [b.to_dict() for b in self.admin.data.batches.list()]


class AlertsResource(AdminResource):
    permissions = {"GET": "read"}

    def on_get(self, req, resp) -> None:
        distributor = req.get_param("distributor")
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000, default=100)
        before = req.get_param_as_int("before", min_value=1, max_value=MAX_SEQ)
        resp.media = {"counts": self.admin.scans.alert_counts(),
                      "alerts": self.admin.scans.alerts(distributor, limit, before)}


class BansResource(AdminResource):
    permissions = {"GET": "read"}

    def on_get(self, req, resp) -> None:
        """A page of bans: ``limit`` subjects (default 100; with ``all``, each with all its
        bans), those after ``after`` (the last subject shown)."""
        everything = _bool_param(req, "all")
        limit = req.get_param_as_int("limit", min_value=1, max_value=1000, default=100)
        after = req.get_param("after")
        if after is not None and len(check_text(after, "after")) > MAX_SUBJECT:
            raise falcon.HTTPBadRequest(title="bad_request",
                                        description=f"after: a ban's subject (at most {MAX_SUBJECT} characters)")
        resp.media = [b.to_dict() for b in self.admin.list_bans(
            include_inactive=everything, limit=limit, after=after)]


class BanLiftResource(AdminResource):
    permissions = {"POST": "ban.lift"}

    def on_post(self, req, resp) -> None:
        doc = _body(req, {"subject": (str,)}, required=("subject",))
        subject = check_text(doc["subject"], "subject")
        if not 0 < len(subject) <= MAX_SUBJECT:
            raise falcon.HTTPBadRequest(title="bad_request",
                                        description=f"subject: 1-{MAX_SUBJECT} characters, e.g. ip:203.0.113.9")
        if len(subject.encode()) > 511:  # NOTE: longer than any LMDB key, so never banned
            raise NotFound(f"no ban for {subject}")
        resp.media = self.admin.lift_ban(subject, who=_who(req)).to_dict()


class TraceResource(AdminResource):
    permissions = {"GET": "read"}

    def on_get(self, req, resp, code: str) -> None:
        try:
            resp.media = self.admin.aggregation.trace(code, render=True)
        except InvalidCode:
            # APPSEC: forged, mistyped and malformed codes get the same answer.
            resp.status = falcon.HTTP_404
            resp.media = {"error": "invalid", "message": "not a genuine code"}


#: How many scan events and ledger entries a stats request folds at most (and a chunk
#: more): ~70-85 ms at the fold rate of benchmarks/bench_stats.py, with the worker's other
#: requests run between its steps.
REQUEST_FOLD = 10_000
#: Scan events (and ledger entries) a serving worker folds in one write transaction, its
#: requests run every 100 of them (admin.stats._PAUSE_EVERY). Measured over HTTP (16
#: connections): chunks of 500 with no pause within, each written on its own, took the
#: scans' p99 from 9.7 to 14.2-14.9 ms.
STATS_CHUNK = 2_000


class StatsResource:
    permissions = {"GET": "read"}

    def __init__(self, stats: Stats, clock: Callable[[], float]) -> None:
        self.stats = stats
        self.clock = clock

    def on_get(self, req, resp) -> None:
        days = req.get_param_as_int("days", min_value=1, max_value=366, default=30)
        top = req.get_param_as_int("top", min_value=1, max_value=1000, default=10)
        # NOTE: a request folds a bounded amount (the worker's fold_every does the rest):
        # a long backlog folded in the request held the worker past gunicorn's timeout
        resp.media = self.stats.report(days, now=self.clock(), top=top, fold_limit=REQUEST_FOLD)


class TokensResource:
    permissions = {"GET": "token.manage", "POST": "token.manage"}

    def __init__(self, tokens: AdminTokens) -> None:
        self.tokens = tokens

    def on_get(self, req, resp) -> None:
        resp.media = [t.to_dict() for t in self.tokens.list()]

    def on_post(self, req, resp) -> None:
        doc = _body(req, {"name": (str,), "role": (str,)}, required=("name", "role"))
        record, token = self.tokens.add(doc["name"], doc["role"], who=_who(req))
        _created(resp, {**record.to_dict(), "token": token})


class TokenReissueResource:
    permissions = {"POST": "token.manage"}

    def __init__(self, tokens: AdminTokens) -> None:
        self.tokens = tokens

    def on_post(self, req, resp, name: str) -> None:
        record, token = self.tokens.reissue(name, who=_who(req))
        resp.media = {**record.to_dict(), "token": token}


class TokenRevokeResource:
    permissions = {"POST": "token.manage"}

    def __init__(self, tokens: AdminTokens) -> None:
        self.tokens = tokens

    def on_post(self, req, resp, name: str) -> None:
        resp.media = self.tokens.revoke(name, who=_who(req)).to_dict()


class OpenApiResource:
    def on_get(self, req, resp) -> None:
        resp.media = ADMIN_OPENAPI


# -- the app ------------------------------------------------------------------------------------
def create_app(data: DataFolder, *, admin: Admin | None = None,
               clock: Callable[[], float] = time.time, stats: Stats | None = None) -> falcon.App:
    """The scan API with campaign rewards, plus vouchers, the admin API and page, over an
    open data folder (one per worker process)."""
    admin = admin or Admin(data, clock=clock)
    stats = stats or Stats(data, admin, chunk=STATS_CHUNK)
    app = http_scan.create_app(data, pipeline=admin.scan_pipeline(), clock=clock)
    tokens = admin.tokens
    app.add_middleware(AdminAuth(tokens))
    app.add_error_handler(ValueError, _invalid)
    app.add_error_handler(NotFound, _not_found)
    app.add_error_handler(Conflict, _conflict)

    app.add_route("/openapi.json", OpenApiResource())  # NOTE: replaces the scan API's document
    app.add_route("/v1/vouchers/redeem", RedeemResource(admin, clock))
    app.add_route("/v1/vouchers/{voucher}", VoucherResource(admin))
    add_page_routes(app)

    api = "/admin/api"
    app.add_route(f"{api}/me", MeResource())
    app.add_route(f"{api}/products", ProductsResource(admin))
    app.add_route(f"{api}/pools", PoolsResource(admin))
    app.add_route(f"{api}/pools/{{pool}}", PoolResource(admin))
    app.add_route(f"{api}/pools/{{pool}}/top-up", PoolTopUpResource(admin))
    app.add_route(f"{api}/campaigns", CampaignsResource(admin))
    app.add_route(f"{api}/campaigns/{_CAMPAIGN}", CampaignResource(admin))
    for action in ("pause", "resume", "close"):
        app.add_route(f"{api}/campaigns/{_CAMPAIGN}/{action}", CampaignActionResource(admin, action))
    app.add_route(f"{api}/ledger", LedgerResource(admin))
    app.add_route(f"{api}/ledger/{_SEQ}/reverse", LedgerReverseResource(admin))
    app.add_route(f"{api}/payouts", PayoutsResource(admin))
    app.add_route(f"{api}/payouts/{_SEQ}", PayoutResource(admin))
    app.add_route(f"{api}/payouts/{_SEQ}/retry", PayoutRetryResource(admin))
    app.add_route(f"{api}/vouchers/sweep", SweepResource(admin))
    app.add_route(f"{api}/audit", AuditResource(admin))
    app.add_route(f"{api}/batches", BatchesResource(admin))
    app.add_route(f"{api}/alerts", AlertsResource(admin))
    app.add_route(f"{api}/bans", BansResource(admin))
    app.add_route(f"{api}/bans/lift", BanLiftResource(admin))
    app.add_route(f"{api}/trace/{{code}}", TraceResource(admin))
    app.add_route(f"{api}/stats", StatsResource(stats, clock))
    app.add_route(f"{api}/tokens", TokensResource(tokens))
    app.add_route(f"{api}/tokens/{{name}}/reissue", TokenReissueResource(tokens))
    app.add_route(f"{api}/tokens/{{name}}/revoke", TokenRevokeResource(tokens))
    return app


def app_from_env() -> falcon.App:
    """gunicorn entry point: ``admin.http:app_from_env()``; reads ``WUMA_DATA``. The worker
    also folds the statistics every 10 s (:meth:`admin.stats.Stats.fold_every`)."""
    data = http_scan.serving(DataFolder(default_data_path()))
    admin = Admin(data)
    stats = Stats(data, admin, chunk=STATS_CHUNK)
    stats.fold_every()
    return create_app(data, admin=admin, stats=stats)
