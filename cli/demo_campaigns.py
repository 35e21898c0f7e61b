"""Demo step: campaigns on the demo batches, exercised through the HTTP API.

A consumer draw with bC/BbC rebates, a store open-case reward with a BbC rebate and a
N元换购 voucher campaign; a store registers and opens, consumers scan, a store redeems a
voucher; then the ledger, the pools, the payouts and the admin page.
"""

from __future__ import annotations

import csv
import json
import time

from cli.demo import http_json, step


def _rows(d, name: str) -> list[list[str]]:
    with open(d.work / f"agg-{name}.csv", newline="") as fh:
        return list(csv.reader(fh))[1:]


def _batch_of(d, code: str) -> int:
    return json.loads(d.wuma("code", "verify", code, "--json"))["batch"]


@step
def campaigns(d) -> None:
    print("\n== Campaigns, budget pools and the reward ledger (scans through HTTP)")
    caps, cases = _rows(d, "caps"), _rows(d, "cases")  # serial, outer, inner
    cap_batch, case_batch = _batch_of(d, caps[0][1]), _batch_of(d, cases[0][1])
    now = time.time()
    window = {"start": now - 60, "end": now + 30 * 86400}
    d.wuma("product", "add", "TEA-500", "--name", "Green tea 500ml", "--gtin", "4006381333931")
    d.wuma("pool", "create", "summer", "--total", "50000", "--daily", "20000", "--region-cap", "44=50000",
           "--name", "Summer 2026, Guangdong")
    d.wuma("pool", "create", "trade", "--total", "20000", "--name", "Trade rebates")
    rules = {
        "consumer-draw": {"name": "Consumer cap draw", "pool": "summer",
                          "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
                          "target": {"serials": [[cap_batch, 0, 59]]}, "window": window,
                          "reward": {"kind": "all_win", "min_amount": 100,
                                     "tiers": [{"amount": 888, "odds": 0.1}, {"amount": 100, "odds": 0.9}]},
                          "limits": {"per_actor_per_day": 5},
                          "rebates": [{"to": "store", "amount": 50}, {"to": "distributor", "amount": 20}]},
        "open-case": {"name": "Store open-case reward", "pool": "trade",
                      "trigger": {"code_role": "case_inner", "actor_role": "store"},
                      "target": {"batches": [case_batch]}, "window": window,
                      "reward": {"kind": "fixed", "amount": 200},
                      "rebates": [{"to": "distributor", "amount": 30}]},
        "voucher": {"name": "Swap for 5 yuan", "pool": "summer",
                    "trigger": {"code_role": "cap_inner", "actor_role": "consumer"},
                    "target": {"serials": [[cap_batch, 60, 119]]}, "window": window,
                    "reward": {"kind": "fixed", "amount": 500, "payout": "voucher", "valid_days": 14}},
    }
    for name, rule in rules.items():
        path = d.work / f"campaign-{name}.json"
        path.write_text(json.dumps(rule, ensure_ascii=False, indent=1))
        d.wuma("campaign", "create", str(path))
    print("\n  a rule whose odds do not sum to 1 is refused:")
    bad = dict(rules["consumer-draw"], reward={"kind": "draw", "tiers": [{"amount": 100, "odds": 0.3}]})
    d.wuma("campaign", "create", "-", stdin=json.dumps(bad), check=False)
    d.wuma("campaign", "list")
    d.wuma("account", "add", "gz-01", "--role", "distributor", "--region", "4401")
    store = json.loads(d.wuma("account", "add", "store-gz-7", "--role", "store", "--region", "440106",
                              "--distributor", "gz-01", "--json"))
    other_store = json.loads(d.wuma("account", "add", "store-gz-9", "--role", "store", "--region", "440106",
                                    "--distributor", "gz-01", "--json"))
    admin = json.loads(d.wuma("admin-token", "add", "demo-admin", "--role", "admin", "--json"))["token"]

    with d.serve() as url:
        gz = {"region": "440106"}
        st = store["token"]
        scans = [
            ("store registers cap 1 (cap outer code)", {"code": caps[1][1], "actor": {"role": "store"},
                                                        "location": gz}, st),
            ("store opens case 0 (case inner code): open-case reward + BbC rebate",
             {"code": cases[0][2], "actor": {"role": "store"}, "location": gz}, st),
            ("consumer scans cap 1 (inner): draw; store (bC) and distributor (BbC) paid",
             {"code": caps[1][2], "actor": {"role": "consumer", "id": "wx-openid-A"}, "location": gz}, None),
            ("consumer scans cap 1 again: no second reward",
             {"code": caps[1][2], "actor": {"role": "consumer", "id": "wx-openid-B"}, "location": gz}, None),
            ("consumer scans cap 2 in Hangzhou: diverted, rebates withheld; pool pays only in 44",
             {"code": caps[2][2], "actor": {"role": "consumer", "id": "wx-openid-C"},
              "location": {"region": "330106"}}, None),
            ("consumer scans cap 70 (inner): a 5-yuan swap voucher",
             {"code": caps[70][2], "actor": {"role": "consumer", "id": "wx-openid-A"}, "location": gz}, None),
        ]
        voucher = None
        for title, body, token in scans:
            status, answer = http_json(url, "/v1/scans", body, token)
            print(f"\n  {title}:\n  -> {status} verdict {answer.get('verdict')}, flags {answer.get('flags')}, "
                  f"rewards {json.dumps(answer.get('rewards'), ensure_ascii=False)}")
            for r in answer.get("rewards") or []:
                voucher = r.get("voucher") or voucher
        if voucher:
            for attempt, token in (("the store redeems the voucher (核销)", st),
                                   ("another store tries the same voucher", other_store["token"]),
                                   ("the first store sends it again (its answer was lost): the same answer, "
                                    "nothing credited twice", st)):
                status, answer = http_json(url, "/v1/vouchers/redeem", {"voucher": voucher}, token)
                print(f"\n  {attempt}: POST /v1/vouchers/redeem -> {status} "
                      f"{json.dumps(answer, ensure_ascii=False)[:160]}")
        status, page = http_json(url, "/admin")
        print(f"\n  admin page: GET /admin -> {status}, {len(page)} bytes of HTML (log in with the admin token)")
        for path in ("/admin/api/campaigns", "/admin/api/pools", "/admin/api/stats"):
            status, answer = http_json(url, path, token=admin)
            print(f"  GET {path} -> {status} {json.dumps(answer, ensure_ascii=False)[:200]}...")
    d.wuma("ledger", "list")
    d.wuma("pool", "list")
    d.wuma("pool", "show", "summer")
    d.wuma("payout", "status")
    d.wuma("ledger", "export", "-o", str(d.work / "payouts.csv"))
