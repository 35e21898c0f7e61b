"""The OpenAPI 3 document of the scan API (served at /openapi.json, tested against it)."""

from __future__ import annotations

from engine.ids import REGION_PATTERN, TEXT_ID_PATTERN

__all__ = ["OPENAPI", "SERVER_REFUSALS", "add_server_refusals"]

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"},
                   "until": {"type": "number"}},
}
_SCAN_RECORD = {
    "type": "object",
    "required": ["count", "first_at", "last_at"],
    "properties": {"count": {"type": "integer", "minimum": 1}, "first_at": {"type": "number"},
                   "first_region": {"type": "string", "nullable": True}, "last_at": {"type": "number"}},
}
_VERDICT = {
    "type": "object",
    "required": ["verdict"],
    "properties": {
        "verdict": {"type": "string", "enum": ["genuine", "inactive", "voided", "invalid"]},
        "code": {"type": "string"},
        "role": {"type": "string"},
        "level": {"type": "string"},
        "batch": {"type": "integer"},
        "serial": {"type": "integer"},
        "product": {"type": "object", "nullable": True},
        "ancestors": {"type": "array", "items": {"type": "object"}},
        "distributor": {"type": "string", "nullable": True},
        "diversion": {"type": "object", "nullable": True},
        "flags": {"type": "array", "items": {"type": "string",
                  "enum": ["role_not_allowed", "diverted", "copied"]}},
        "rewards": {"type": "array", "items": {"type": "object"}},
        "scan": _SCAN_RECORD,
    },
}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REFUSED = {
    "403": _json(_ERROR, "client banned for enumeration (error: banned)"),
    "429": _json(_ERROR, "rate limited (error: rate_limited)"),
    "503": _json(_ERROR, "the store cannot take it now, map or disk full (error: storage_unavailable)"),
}
_HEALTH = {"type": "object", "required": ["status"],
           "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]},
                          "reason": {"type": "string", "enum": ["map_nearly_full", "disk_nearly_full"]}}}
_ERRORS = {
    "400": _json(_ERROR, "malformed request (error: bad_request, bad_json)"),
    "413": _json(_ERROR, "body too large"),
}

OPENAPI = {
    "openapi": "3.0.3",
    "info": {"title": "Wuma scan API", "version": "1"},
    "paths": {
        "/v1/scans": {
            "post": {
                "summary": "Verify and record one scan",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["code"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "description": "printed code or its URL"},
                        "actor": {"type": "object", "nullable": True, "additionalProperties": False, "properties": {
                            "role": {"type": "string", "enum": ["consumer", "store", "distributor",
                                                                "sales_rep", "shop_assistant"]},
                            "id": {"type": "string", "maxLength": 128, "pattern": TEXT_ID_PATTERN,
                                   "nullable": True}}},
                        "location": {
                            "type": "object", "nullable": True, "additionalProperties": False, "properties": {
                                "region": {"type": "string", "pattern": REGION_PATTERN, "nullable": True},
                                "lat": {"type": "number", "minimum": -90, "maximum": 90, "nullable": True},
                                "lng": {"type": "number", "minimum": -180, "maximum": 180,
                                        "nullable": True}},
                            # a position is lat and lng together, or neither (null = absent)
                            "anyOf": [{"required": ["lat", "lng"], "properties": {
                                          "lat": {"type": "number"}, "lng": {"type": "number"}}},
                                      {"properties": {"lat": {"enum": [None]}, "lng": {"enum": [None]}}}],
                            "description": "where the scan was: a region code, a position (lat and "
                                           "lng together), or both"},
                        "device": {"type": "string", "maxLength": 128, "pattern": TEXT_ID_PATTERN, "nullable": True,
                                   "description": "the front end's device id; null = absent"},
                    }}}}},
                "responses": {
                    "200": _json(_VERDICT, "the verdict"),
                    "401": _json(_ERROR, "account role without a valid bearer token"),
                    "415": _json(_ERROR, "the body is not sent as application/json (error: "
                                         "unsupported_media_type)"),
                    **_REFUSED,
                    **_ERRORS,
                },
            }
        },
        "/v1/codes/{code}": {
            "get": {
                "summary": "Read-only check of a code (nothing recorded of the code; an invalid "
                           "one counts towards the client's enumeration ban, as for scans)",
                "parameters": [{"name": "code", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": _json(_VERDICT, "the verdict, with the scan history; flags: "
                                                     "copied when a scan of the (genuine) code was "
                                                     "flagged copied, however long ago; of the scans "
                                                     "recorded before the scan record kept that (an "
                                                     "older release), only the window ending at the "
                                                     "latest one is judged, by the thresholds now"),
                              **_REFUSED, **_ERRORS},
            }
        },
        "/healthz": {"get": {"summary": "Liveness, and whether the store can take scans", "responses": {
            "200": _json(_HEALTH, "ok"), "503": _json(_HEALTH, "the store cannot take scans (reason)")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
            "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}}},
    },
}

#: What the HTTP server answers for any route before the app sees the request (gunicorn's
#: limits: a request line over 4094 bytes, a header over 8190): documented on every
#: operation, since any of them can get it. The body is the usual JSON error.
SERVER_REFUSALS = {
    "414": _json(_ERROR, "request line too long, e.g. a query string over ~4 KB (error: uri_too_long)"),
    "431": _json(_ERROR, "a request header too large (error: request_header_fields_too_large)"),
}


def add_server_refusals(doc: dict) -> dict:
    """``doc`` with :data:`SERVER_REFUSALS` among every operation's responses."""
    for operations in doc["paths"].values():
        for op in operations.values():
            for status, response in SERVER_REFUSALS.items():
                op["responses"].setdefault(status, response)
    return doc


add_server_refusals(OPENAPI)
