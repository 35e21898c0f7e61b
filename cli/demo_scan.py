"""Demo step: the scan API under gunicorn on loopback, scanned through HTTP.

Uses the production run of the aggregation step: caps on pallet 1 are activated and
shipped to gz-01 (territory 4401); caps on pallet 2 are not activated.
"""

from __future__ import annotations

import csv
import json

from cli.demo import http_json, step


@step
def scans(d) -> None:
    print("\n== Scanning through the HTTP API (wuma serve, gunicorn on 127.0.0.1)")
    with open(d.work / "agg-caps.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    activated_inner, other_inner = rows[0][2], rows[-1][2]
    centres = d.work / "division-centres.csv"  # a two-row stand-in for the national list
    centres.write_text("code,lat,lng\n440106,23.1256,113.3618\n330106,30.2741,120.1551\n")
    d.wuma("region", "import", str(centres))
    with d.serve() as url:
        forged = activated_inner[:-1] + ("0" if activated_inner[-1] != "0" else "1")
        cases = [
            ("consumer scans a genuine cap in Guangzhou", {"code": "HTTPS://S.EXAMPLE.CN/Q/" + activated_inner,
             "location": {"region": "440106"}, "device": "phone-1"}),
            ("the same cap again (repeat: count and first scan)", {"code": activated_inner.lower(),
             "location": {"region": "440106"}, "device": "phone-1"}),
            ("a forged code", {"code": forged, "device": "phone-2"}),
            ("a real code not yet activated", {"code": other_inner, "device": "phone-3"}),
            ("the genuine cap scanned in Hangzhou (outside gz-01's 4401)",
             {"code": activated_inner, "location": {"region": "330106"}, "device": "phone-4"}),
            ("the same cap from a phone in Hangzhou that sends only its position",
             {"code": activated_inner, "location": {"lat": 30.26, "lng": 120.17}, "device": "phone-5"}),
        ]
        for title, body in cases:
            status, answer = http_json(url, "/v1/scans", body)
            print(f"\n  {title}:\n  POST /v1/scans {json.dumps(body, ensure_ascii=False)}")
            shown = {k: answer.get(k) for k in ("verdict", "flags", "scan", "diversion", "product")
                     if answer.get(k) not in (None, [], {})}
            print(f"  -> {status} {json.dumps(shown, ensure_ascii=False)}")
    d.wuma("alerts", "--distributor", "gz-01")
