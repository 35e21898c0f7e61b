"""A small production run on disk, shared by tests and benchmarks."""

from __future__ import annotations

from engine import DataFolder


class Clock:
    """A test clock: each call is one second later (injected where the library takes
    ``clock``). Starts at 1_800_000_000 = 2027-01-15 16:00 China time (08:00 UTC)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def unit_codes(data, batch) -> list[str]:
    """The first (outer, or only) printed code of every unit of a batch, in serial order."""
    w = data.spec.role(batch.roles[0]).format.length
    return [r[:w].tobytes().decode() for r in data.codes.render(batch, 0, batch.count)]


def production_run(data):
    """A small production run: 4 pallets, 10 cases, 10x24 caps (beverage preset), no links."""
    from engine.aggregation import Aggregation

    caps = data.create_batch("cap", 240)
    cases = data.create_batch("case", 10)
    pallets = data.create_batch("pallet", 4)
    r = type("Run", (), {})()
    r.data, r.agg = data, Aggregation(data)
    r.caps, r.cases, r.pallets = unit_codes(data, caps), unit_codes(data, cases), unit_codes(data, pallets)
    r.cap_batch, r.case_batch, r.pallet_batch = caps.id, cases.id, pallets.id
    return r


def build_world(path, *, invalid_threshold: int = 5, serve: dict | None = None,
                rate_per_minute: int = 600):
    """A small production run: 2 cases of 24 caps on a pallet, activated, shipped to gz-1
    (territory 4401); an inactive cap batch; a distributor and a store account."""
    from engine.aggregation import Aggregation

    data = DataFolder.init(path)
    data.update_config(abuse={"invalid_threshold": invalid_threshold, "rate_per_minute": rate_per_minute},
                       serve=serve or {})
    agg = Aggregation(data)
    caps = data.create_batch("cap", 48)
    cases = data.create_batch("case", 2)
    pallets = data.create_batch("pallet", 1)
    code = data.codes.code
    pallet = code(pallets, 0, "pallet")
    for c in range(2):
        agg.link(code(cases, c, "case_outer"), [code(caps, 24 * c + i, "cap_outer") for i in range(24)])
        agg.link(pallet, [code(cases, c, "case_outer")])
    agg.activate(sku="SKU-1", name="Green tea 500ml", lot="L1", production_date="2026-11-01",
                 pallets=[pallet])
    agg.add_distributor("gz-1", "Guangzhou Trading", ["4401"])
    agg.ship([pallet], "gz-1")
    inactive = data.create_batch("cap", 10)
    data.accounts.add("gz-1", "distributor", region="4401")
    _, store_token = data.accounts.add("s-1", "store", region="440106", distributor="gz-1")
    return {"data": data, "caps": caps, "cases": cases, "inactive": inactive, "agg": agg,
            "store_token": store_token}
