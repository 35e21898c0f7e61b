"""The OpenAPI 3 document of the served app: the scan API's (engine/openapi.py) plus
vouchers, the admin page and the admin API (admin/http.py). Served at /openapi.json and
checked against the live server by schemathesis (tests/test_http.py).

Validation the schema cannot say (a pool that must exist, odds that sum to 1, a GTIN's
check digit ...) is the library's: such requests are answered 400 with its message.
"""

from __future__ import annotations

import copy
from typing import Any

from admin._util import IDEMPOTENCY_KEY_PATTERN, MAX_AMOUNT, MAX_REGIONS, MAX_SEQ, MAX_SUBJECT
from admin.campaigns import MAX_TARGETS, STATUSES
from admin.ledger import KINDS
from admin.pools import UNITS
from admin.tokens import ROLES
from engine.accounts import ACTOR_ROLES
from engine.batches import BATCH_STATES
from engine.ids import CONTROL_CHARACTERS, ID_PATTERN, REGION_PATTERN, TEXT_ID_PATTERN
from engine.openapi import OPENAPI, add_server_refusals

__all__ = ["ADMIN_OPENAPI"]

_ERROR = {"type": "object", "required": ["error", "message"],
          "properties": {"error": {"type": "string"}, "message": {"type": "string"}}}
_OBJ = {"type": "object"}
_NUM = {"type": "number"}
_INT = {"type": "integer"}
_AMOUNT = {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT, "description": "fen (100 = 1 yuan) or points"}
_STR = {"type": "string"}
#: Free text printed in listings (names): no control characters (admin/_util.py check_text) ...
_TEXT = {"type": "string", "pattern": TEXT_ID_PATTERN}
#: ... and, for a name that is required, a character that is not white space.
_NAME = {"type": "string", "minLength": 1, "maxLength": 200,
         "pattern": f"^[^{CONTROL_CHARACTERS}]*[^{CONTROL_CHARACTERS}\\s][^{CONTROL_CHARACTERS}]*$"}


def _nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


def _obj(required: list[str], properties: dict, *, closed: bool = False) -> dict:
    doc: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
    if closed:
        doc["additionalProperties"] = False
    return doc


def _array(items: dict) -> dict:
    return {"type": "array", "items": items}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str) -> dict:
    what = {
        "400": "malformed request, or refused by validation (error: bad_request, bad_json; message says why)",
        "401": "no valid token (error: unauthorized)",
        "403": "the token's role may not do this (error: forbidden)",
        "404": "no such thing (error: not_found)",
        "409": "clashes with the current state (error: conflict)",
        "413": "body too large (error: request_too_large)",
        "503": "the data store cannot take it now: disk or map full, an I/O error (error: "
               "storage_unavailable; Retry-After)",
    }
    return {c: _json(_ERROR, what[c]) for c in codes}


_TOKEN = _obj(["name", "role", "created_at", "created_by", "revoked_at"], {
    "name": _STR, "role": {"type": "string", "enum": list(ROLES)}, "created_at": _NUM,
    "created_by": _STR, "revoked_at": _nullable(_NUM)})
_TOKEN_SHOWN_ONCE = {**_TOKEN, "required": _TOKEN["required"] + ["token"],
                     "properties": {**_TOKEN["properties"], "token": _STR}}
_PRODUCT = _obj(["sku", "name", "gtin", "created_at"], {
    "sku": _STR, "name": _STR, "gtin": _nullable(_STR), "created_at": _NUM})
_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
_POOL = _obj(["id", "name", "unit", "total", "spent", "left", "spent_today", "by_day", "by_region", "use_rate"], {
    "id": _STR, "name": _STR, "unit": {"type": "string", "enum": list(UNITS)}, "total": _INT,
    "daily": _nullable(_INT), "regions": _COUNTS, "created_at": _NUM, "spent": _INT, "left": _INT,
    "spent_today": _INT, "by_day": {**_COUNTS, "description": "spend per day (YYYY-MM-DD, China time): the burn-down"},
    "by_region": _COUNTS, "use_rate": _NUM})
_CAMPAIGN = _obj(["id", "status", "created_at", "name", "pool", "trigger", "target", "window", "reward"], {
    "id": _INT, "status": {"type": "string", "enum": list(STATUSES)}, "created_at": _NUM, "name": _STR,
    "pool": _STR,
    "trigger": _obj(["code_role", "actor_role"], {"code_role": _STR, "actor_role": _STR}),
    "target": _OBJ, "window": _obj(["start", "end"], {"start": _NUM, "end": _NUM}),
    "regions": _array(_STR), "reward": _OBJ, "limits": _OBJ, "rebates": _array(_OBJ),
    "lock": _nullable(_OBJ)})
_TIME = {"oneOf": [{"type": "number"}, {"type": "string"}],
         "description": "unix time or ISO 8601 (no zone: China time); a window's end is "
                        "not included, but an end given as a date alone includes that day"}
_CAMPAIGN_RULE = {
    "type": "object",
    "description": "A campaign rule; every field is described in the README's section "
                   "\"Campaigns, pools and the ledger\" (checked by admin/campaigns.py).",
    "required": ["name", "pool", "trigger", "target", "window", "reward"],
    "additionalProperties": False,
    "properties": {
        "name": _NAME,
        "pool": {"type": "string", "pattern": ID_PATTERN},
        "trigger": _obj(["code_role", "actor_role"], {
            "code_role": _STR, "actor_role": {"type": "string", "enum": list(ACTOR_ROLES)}}, closed=True),
        "target": {"type": "object", "minProperties": 1, "maxProperties": 1, "properties": {
            "batches": {**_array(_INT), "maxItems": MAX_TARGETS}, "skus": {**_array(_STR), "maxItems": MAX_TARGETS},
            "serials": {**_array(_array(_INT)), "maxItems": MAX_TARGETS}},
            "additionalProperties": False},
        "window": _obj(["start", "end"], {"start": _TIME, "end": _TIME}, closed=True),
        "regions": _nullable({**_array({"type": "string", "pattern": REGION_PATTERN}), "maxItems": MAX_REGIONS}),
        "reward": _obj(["kind"], {"kind": {"type": "string", "enum": ["fixed", "draw", "all_win"]},
                                  "payout": {"type": "string", "enum": ["cash", "points", "voucher"]}}),
        "limits": _nullable(_OBJ),
        "rebates": _nullable(_array(_OBJ)),
        "lock": _nullable(_OBJ),
    },
}
_LEDGER_ENTRY = _obj(["seq", "kind", "amount", "at", "payable"], {
    "seq": _INT, "kind": {"type": "string", "enum": list(KINDS)}, "amount": _INT, "at": _NUM,
    "payable": {"type": "boolean"}, "campaign": _nullable(_INT), "pool": _nullable(_STR),
    "beneficiary": _nullable(_OBJ), "ref": _nullable(_INT)})
_AUDIT_ENTRY = _obj(["seq", "at", "who", "action", "target", "details"], {
    "seq": _INT, "at": _NUM, "who": _STR, "action": _STR, "target": _STR, "details": _OBJ})
_BATCH = _obj(["id", "level", "roles", "count", "state", "activated"], {
    "id": _INT, "level": _STR, "roles": _array(_STR), "count": _INT, "formats": _OBJ,
    "key_version": _INT, "state": {"type": "string", "enum": list(BATCH_STATES)},
    "activated": _INT, "created_at": _NUM, "note": _STR})
_BAN = _obj(["subject", "reason", "created_at", "expires_at", "evidence", "lifted_at"], {
    "subject": _STR, "reason": _STR, "created_at": _NUM, "expires_at": _NUM, "evidence": _array({}),
    "lifted_at": _nullable(_NUM)})
_VOUCHER = _obj(["id", "campaign", "value", "state", "issued_at", "expires_at"], {
    "id": _STR, "campaign": _INT, "value": _INT, "state": {"type": "string", "enum": ["issued", "redeemed", "expired"]},
    "issued_at": _NUM, "expires_at": _NUM, "redeemed_at": _nullable(_NUM)})
_REDEMPTION = _obj(_VOUCHER["required"] + ["redeemed_by", "ledger", "repeat"], {
    **_VOUCHER["properties"], "redeemed_by": _STR, "ledger": _INT,
    "repeat": {"type": "boolean", "description": "true: this store had redeemed the voucher already (a retry): "
                                                 "its redemption as it stands, nothing credited again"}})
_PAYOUT = _obj(["seq", "state"], {"seq": _INT, "state": _STR})


def _param(name: str, where: str, schema: dict, description: str = "", required: bool = False) -> dict:
    p = {"name": name, "in": where, "required": required or where == "path", "schema": schema}
    if description:
        p["description"] = description
    return p


_AFTER = _param("after", "query", {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
                "only entries with a higher seq")
_LIMIT = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many (default 100)")
_BOOL = {"type": "string", "enum": ["true", "false"]}


def _op(summary: str, permission: str, ok: dict, *, errors=("400",), body: dict | None = None,
        params: list | None = None, ok_status: str = "200") -> dict:
    """One admin API operation: admin bearer token, the permission it needs, and errors."""
    op: dict[str, Any] = {
        "summary": summary,
        "description": f"Needs an admin token whose role holds `{permission}` (see admin/tokens.py).",
        "tags": ["admin"],
        "security": [{"adminToken": []}],
        "responses": {ok_status: ok, **_errors("401", "403", *errors, "503")},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["responses"].update(_errors("400", "413"))
    if params:
        op["parameters"] = params
    return op


def _static(summary: str, content_type: str) -> dict:
    return {"get": {"summary": summary, "tags": ["admin page"], "responses": {"200": {
        "description": summary, "content": {content_type: {"schema": _STR}}}}}}


_CAMPAIGN_ID = _param("campaign", "path", {"type": "integer", "minimum": 1, "maximum": 2**32 - 1})
_SEQ = _param("seq", "path", {"type": "integer", "minimum": 1, "maximum": MAX_SEQ}, "a ledger entry's seq")
_POOL_ID = _param("pool", "path", {"type": "string", "pattern": ID_PATTERN})


def _campaign_action(action: str) -> dict:
    return {"post": _op(f"{action.capitalize()} a campaign", "campaign.write", _json(_CAMPAIGN, "the campaign"),
                        errors=("404", "409"), params=[_CAMPAIGN_ID])}


_PATHS: dict[str, dict[str, Any]] = {
    "/v1/vouchers/redeem": {"post": {
        "summary": "A store redeems (核销) a consumer's voucher: credited to the store, exactly once",
        "description": "Safe to retry: the same store sending it again once the voucher is redeemed (its "
                       "answer lost, say) is answered 200 with that redemption, `repeat` true (the same "
                       "`ledger` entry; nothing credited twice). Another store gets 409. A redemption an "
                       "admin reversed since is no longer one: the voucher is issued again (redeemed anew, "
                       "a new entry) or expired (409).",
        "tags": ["vouchers"],
        "security": [{"accountToken": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _obj(
            ["voucher"], {"voucher": {"type": "string", "minLength": 1, "maxLength": 64}}, closed=True)}}},
        "responses": {"200": _json(_REDEMPTION, "redeemed (`repeat` false), or redeemed by this store already "
                                                "(`repeat` true); `ledger` is the store's payable entry"),
                      **_errors("400", "401", "404", "413", "503"),
                      "403": _json(_ERROR, "the account is not a store (error: forbidden)"),
                      "409": _json(_ERROR, "redeemed by another store (\"voucher already redeemed\"), expired, "
                                           "outside the campaign's regions, not a consumer's voucher, or the "
                                           "store's account revoked (error: conflict)")}}},
    "/v1/vouchers/{voucher}": {"get": {
        "summary": "A voucher's state (whoever holds the id may read it)",
        "tags": ["vouchers"],
        "parameters": [_param("voucher", "path", _STR)],
        "responses": {"200": _json(_VOUCHER, "the voucher"), **_errors("404", "503")}}},
    "/admin": _static("The admin page (HTML; logs in with an admin token)", "text/html"),
    "/admin/static/admin.js": _static("The admin page's script", "text/javascript"),
    "/admin/static/admin.css": _static("The admin page's stylesheet", "text/css"),
    "/admin/api/me": {"get": _op("The token in use: name and role", "read", _json(_TOKEN, "the token"), errors=())},
    "/admin/api/products": {
        "get": _op("List products", "read", _json(_array(_PRODUCT), "products"), errors=()),
        "post": _op("Add a product", "product.add", _json(_PRODUCT, "added"), errors=("409",), ok_status="201",
                    body=_obj(["sku", "name"], {
                        "sku": {"type": "string", "pattern": ID_PATTERN},
                        "name": _NAME,
                        "gtin": _nullable({"type": "string", "pattern": "^[0-9]{8,14}$",
                                           "description": "GTIN-8/12/13/14 with its check digit"})},
                        closed=True)),
    },
    "/admin/api/pools": {
        "get": _op("Every pool with its spend (burn-down by day)", "read", _json(_array(_POOL), "pools"), errors=()),
        "post": _op("Create a budget pool", "pool.create", _json(_POOL, "created"), errors=("409",),
                    ok_status="201", body=_obj(["id", "total"], {
                        "id": {"type": "string", "pattern": ID_PATTERN},
                        "total": _AMOUNT,
                        "name": {**_TEXT, "maxLength": 200},
                        "unit": {"type": "string", "enum": list(UNITS)},
                        "daily": _nullable(_AMOUNT),
                        "regions": _nullable({"type": "object", "additionalProperties": _AMOUNT,
                                              "description": "region code prefix (2-12 digits; "
                                                             "OpenAPI 3.0 cannot say so of keys) "
                                                             "-> cap; a pool "
                                                             "with region caps pays only scans in "
                                                             "those regions. Codes read as "
                                                             "territories: 440100 is 4401 (two "
                                                             "caps on one region are refused); "
                                                             "a scan counts against the most "
                                                             "specific cap its region is in"})},
                        closed=True)),
    },
    "/admin/api/pools/{pool}": {"get": _op("A pool's spend: total, by day (burn-down) and by region", "read",
                                           _json(_POOL, "the pool"), errors=("404",), params=[_POOL_ID])},
    "/admin/api/pools/{pool}/top-up": {"post": _op(
        "Raise a pool's total (send an Idempotency-Key to make it safe to retry); a total past the "
        "largest amount taken is 400", "pool.top_up",
        {**_json(_POOL, "the pool after the top-up; with a key sent before with the same amount, the first "
                        "top-up's answer again, nothing changed"),
         "headers": {"Idempotent-Replayed": {
             "description": "`true` when the answer is a replay of an earlier top-up with this Idempotency-Key",
             "schema": {"type": "string", "enum": ["true"]}}}},
        errors=("404", "409"),
        params=[_POOL_ID, _param("Idempotency-Key", "header", {
            "type": "string", "minLength": 1, "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
            "any unique value (a UUID): a top-up sent again with the same key and amount is done once and "
            "answered as the first time; the same key with another amount is 409. Kept per pool.")],
        body=_obj(["amount"], {"amount": _AMOUNT}, closed=True))},
    "/admin/api/campaigns": {
        "get": _op("List campaigns", "read", _json(_array(_CAMPAIGN), "campaigns"),
                   params=[_param("status", "query", {"type": "string", "enum": list(STATUSES)})]),
        "post": _op("Create a campaign (validated: overlaps, odds, pool size ...)", "campaign.write",
                    _json(_CAMPAIGN, "created (active)"), errors=("404", "409"), ok_status="201",
                    body=_CAMPAIGN_RULE),
    },
    "/admin/api/campaigns/{campaign}": {"get": _op("One campaign", "read", _json(_CAMPAIGN, "the campaign"),
                                                   errors=("404",), params=[_CAMPAIGN_ID])},
    "/admin/api/campaigns/{campaign}/pause": _campaign_action("pause"),
    "/admin/api/campaigns/{campaign}/resume": _campaign_action("resume"),
    "/admin/api/campaigns/{campaign}/close": _campaign_action("close"),
    "/admin/api/ledger": {"get": _op("Reward ledger entries, oldest first", "read",
                                     _json(_array(_LEDGER_ENTRY), "entries"), params=[
        _AFTER, _LIMIT, _param("campaign", "query", {"type": "integer", "minimum": 1}),
        _param("kind", "query", {"type": "string", "enum": list(KINDS)})])},
    "/admin/api/ledger/{seq}/reverse": {"post": _op(
        "Reverse a payable entry never sent for payout (budget returns, payout cancelled)", "ledger.reverse",
        _json(_OBJ, "the reversal"), errors=("404", "409"), params=[_SEQ],
        body=_obj(["reason"], {"reason": {**_NAME, "maxLength": 500}}, closed=True))},
    "/admin/api/payouts": {"get": _op("Payouts: count and amount per state", "read",
                                      _json(_OBJ, "per state: count and amount per unit"), errors=())},
    "/admin/api/payouts/{seq}": {"get": _op("The payout state of a payable ledger entry", "read",
                                            _json(_PAYOUT, "its payout"), errors=("404",), params=[_SEQ])},
    "/admin/api/payouts/{seq}/retry": {"post": _op(
        "Send a rejected payout again (same idempotency key)", "payout.retry", _json(_PAYOUT, "pending again"),
        errors=("400", "404", "409"), params=[_SEQ])},
    "/admin/api/vouchers/sweep": {"post": _op(
        "Expire vouchers and locked rewards past their time now (budget returns)", "voucher.sweep",
        _json(_obj(["vouchers_expired", "locks_expired"], {"vouchers_expired": _INT, "locks_expired": _INT}),
              "how many expired"), errors=())},
    "/admin/api/audit": {"get": _op("The audit log: who changed what, when", "read",
                                    _json(_array(_AUDIT_ENTRY), "entries"), params=[
        _AFTER, _LIMIT, _param("newest_first", "query", _BOOL),
        _param("before", "query", {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
               "only entries with a lower seq (newest first, the next page back: the last seq shown)")])},
    "/admin/api/batches": {"get": _op("Code batches", "read", _json(_array(_BATCH), "batches"), errors=())},
    "/admin/api/alerts": {"get": _op("Diversion alerts (窜货), newest first, and their count per distributor", "read",
                                     _json(_obj(["counts", "alerts"], {"counts": _COUNTS, "alerts": _array(_OBJ)}),
                                           "alerts"), params=[
        _param("distributor", "query", _STR), _LIMIT,
        _param("before", "query", {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
               "only alerts of scans before this sequence number (the next page: the last alert's seq)")])},
    "/admin/api/bans": {"get": _op("Clients banned for enumerating codes, by subject, a page at a time", "read",
                                   _json(_array(_BAN), "bans"),
                                   params=[_param("all", "query", _BOOL, "include expired and lifted bans, and "
                                                  "the earlier bans of clients banned again"),
                                           _param("limit", "query", _LIMIT["schema"],
                                                  "at most this many subjects (default 100); with all, each "
                                                  "subject with all its bans, oldest first"),
                                           _param("after", "query", {**_TEXT, "maxLength": MAX_SUBJECT},
                                                  "only bans of subjects after this one (the next page: the "
                                                  "last subject shown)")])},
    "/admin/api/bans/lift": {"post": _op("Lift a client's latest ban now (the record is kept); 404 when it has "
                                         "none, or it was lifted already", "ban.lift", _json(_BAN, "lifted"),
                                         errors=("404",), body=_obj(["subject"], {"subject": {
                                             **_TEXT, "minLength": 1, "maxLength": MAX_SUBJECT,
                                             "description": "kind:id, e.g. ip:203.0.113.9"}}, closed=True))},
    "/admin/api/trace/{code}": {"get": _op(
        "Everything known about a code: unit, product, packaging, shipment, history", "read",
        _json(_OBJ, "the trace"), errors=(), params=[_param("code", "path", _STR)])},
    "/admin/api/stats": {"get": _op(
        "Statistics: scans by day, role, region, product and batch; scan rate per role; budget use per pool;"
        " rewards per campaign; diversion per distributor; top stores (admin/stats.py)", "read",
        _json(_obj(["scans", "scan_rate", "pools", "campaigns", "diversion", "top_stores"], {
            "window": _OBJ, "scans": _OBJ, "scan_rate": _OBJ, "pools": _OBJ, "campaigns": _OBJ,
            "diversion": _OBJ, "top_stores": _OBJ, "as_of": _OBJ, "pending": _OBJ}), "the report"), params=[
            _param("days", "query", {"type": "integer", "minimum": 1, "maximum": 366}, "days back (default 30)"),
            _param("top", "query", {"type": "integer", "minimum": 1, "maximum": 1000}, "top stores (default 10)")])},
    "/admin/api/tokens": {
        "get": _op("Admin tokens (never their secrets)", "token.manage", _json(_array(_TOKEN), "tokens"), errors=()),
        "post": _op("Make an admin token; the token is in the answer, once", "token.manage",
                    _json(_TOKEN_SHOWN_ONCE, "made"),
                    errors=("409",), ok_status="201", body=_obj(["name", "role"], {
                        "name": {"type": "string", "pattern": ID_PATTERN},
                        "role": {"type": "string", "enum": list(ROLES)}}, closed=True)),
    },
    "/admin/api/tokens/{name}/reissue": {"post": _op(
        "A new secret for an active admin token; the token is in the answer, once (the old one stops"
        " working at once)", "token.manage", _json(_TOKEN_SHOWN_ONCE, "reissued"),
        errors=("404", "409"), params=[_param("name", "path", _STR)])},
    "/admin/api/tokens/{name}/revoke": {"post": _op(
        "Revoke an admin token (it stops working at once)", "token.manage", _json(_TOKEN, "revoked"),
        errors=("404", "409"), params=[_param("name", "path", _STR)])},
}
_PATHS["/admin/api/trace/{code}"]["get"]["responses"]["404"] = _json(
    _ERROR, "not a genuine code (error: invalid; forged, mistyped and malformed look the same)")


def _document() -> dict:
    doc: dict[str, Any] = copy.deepcopy(OPENAPI)
    doc["info"] = {"title": "Wuma API: scans, vouchers, admin", "version": "1"}
    doc["paths"].update(copy.deepcopy(_PATHS))
    add_server_refusals(doc)  # (OPENAPI's own operations have them already)
    doc.setdefault("components", {})["securitySchemes"] = {
        "adminToken": {"type": "http", "scheme": "bearer",
                       "description": "An admin token (wma_<name>_<secret>) with role viewer, operator or admin"},
        "accountToken": {"type": "http", "scheme": "bearer",
                         "description": "A scanning account's token (wm_<id>_<secret>); vouchers: a store's"},
    }
    return doc


ADMIN_OPENAPI = _document()
