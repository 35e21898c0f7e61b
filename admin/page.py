"""The thin admin page: ``GET /admin`` and its script and stylesheet (admin/static/).

The server renders the page's frame; a little vanilla JavaScript logs in with an admin
token (kept in the tab's sessionStorage, sent as ``Authorization: Bearer`` to the admin
API) and fills in batches, campaigns (pause / resume / close, create), pools with their
burn-down, statistics as inline SVG charts, diversion alerts and bans. No build step, no
external resources (the page works offline).

APPSEC: data is only ever written with ``textContent``; the CSP below allows this
origin's script and stylesheet and nothing inline, so injected markup could not run.
"""

from __future__ import annotations

from importlib.resources import files

import falcon

__all__ = ["add_page_routes", "PAGE_ROUTES"]

_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
#: path -> (file in admin/static, content type)
PAGE_ROUTES = {
    "/admin": ("admin.html", "text/html; charset=utf-8"),
    "/admin/static/admin.js": ("admin.js", "text/javascript; charset=utf-8"),
    "/admin/static/admin.css": ("admin.css", "text/css; charset=utf-8"),
}


class _StaticResource:
    def __init__(self, name: str, content_type: str) -> None:
        self.body = files("admin").joinpath("static", name).read_bytes()  # read once per worker
        self.content_type = content_type

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = self.content_type
        resp.data = self.body
        resp.set_header("Content-Security-Policy", _CSP)
        resp.set_header("X-Content-Type-Options", "nosniff")
        resp.set_header("Referrer-Policy", "no-referrer")
        resp.set_header("Cache-Control", "no-cache")


def add_page_routes(app: falcon.App) -> None:
    for path, (name, content_type) in PAGE_ROUTES.items():
        app.add_route(path, _StaticResource(name, content_type))
