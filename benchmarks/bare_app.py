"""The reference for HTTP benchmarks: a bare Falcon endpoint returning constant JSON,
served under the same gunicorn configuration as the scan API."""

import falcon


class Constant:
    def on_post(self, req, resp):
        req.bounded_stream.read()
        resp.media = {"verdict": "genuine"}

    on_get = on_post


app = falcon.App()
app.add_route("/v1/scans", Constant())
app.add_route("/healthz", Constant())
