"""Demo step: line collection (caps -> cases -> pallets), activation, shipping, trace, a
relabel, EPCIS.

Registered with ``cli.demo.step`` on import (the lead imports this module from the demo).
"""

from __future__ import annotations

import csv
import json

from cli.demo import step

CAPS_PER_CASE = 24
CASES_PER_PALLET = 5


def _batch(d, level: str, count: int, name: str) -> list[str]:
    """Create a batch and return the first code of every unit (plaintext export)."""
    info = json.loads(d.wuma("batch", "create", "--level", level, "--count", str(count),
                             "--note", f"aggregation demo {name}", "--json"))
    d.wuma("batch", "export", str(info["id"]), "--plaintext", "-o", str(_csv(d, name)))
    return _column(d, name, 1)


def _csv(d, name: str):
    return d.work / f"agg-{name}.csv"


def _column(d, name: str, column: int) -> list[str]:
    """A column of a batch's plaintext export: 1 = the first code, 2 = the inner one."""
    with open(_csv(d, name), newline="") as fh:
        return [row[column] for row in list(csv.reader(fh))[1:]]


@step
def aggregation(d) -> None:
    print("\n== Line collection, activation (赋值), shipping and trace")
    caps = _batch(d, "cap", 10 * CAPS_PER_CASE, "caps")
    cases = _batch(d, "case", 10, "cases")
    pallets = _batch(d, "pallet", 2, "pallets")
    lines = [",".join([cases[i]] + caps[i * CAPS_PER_CASE:(i + 1) * CAPS_PER_CASE])
             for i in range(len(cases))]
    lines += [",".join([pallets[p]] + cases[p * CASES_PER_PALLET:(p + 1) * CASES_PER_PALLET])
              for p in range(len(pallets))]
    good = d.work / "line-collection.csv"
    good.write_text("\n".join(lines) + "\n")
    print(f"  ({len(lines)} records: {len(caps)} caps in {len(cases)} cases on {len(pallets)} "
          f"pallets; first: {lines[0][:60]}...)")
    bad = d.work / "line-collection-bad.csv"
    bad.write_text("\n".join(lines[:2] + [",".join([pallets[0], caps[0]])]) + "\n")
    print("\n  a file with one bad record (a cap straight onto a pallet) loads nothing:")
    d.wuma("aggregate", "load", str(bad), check=False)
    d.wuma("aggregate", "load", str(good))
    print("\n  loading the same file again is harmless:")
    d.wuma("aggregate", "load", str(good))
    d.wuma("activate", "--sku", "TEA-500", "--name", "Green tea 500ml", "--gtin", "4006381333931",
           "--lot", "L20261121", "--date", "2026-11-21", "--line", "L1", "--pallet", pallets[0])
    d.wuma("distributor", "add", "gz-01", "--name", "Guangzhou Trading", "--region", "4401")
    d.wuma("ship", pallets[0], "--to", "gz-01")
    d.wuma("trace", caps[0])
    print("\n  a torn carton label (标签替换): a spare case label goes over it. The inner code"
          "\n  in the flap still scans genuine (the store's open-case reward); the torn label"
          "\n  is voided:")
    spare = _batch(d, "case", 1, "spare-labels")[0]
    d.wuma("aggregate", "relabel", cases[0], spare)
    d.wuma("code", "verify", _column(d, "cases", 2)[0], spare, cases[0])
    d.wuma("epcis", "export", "-o", str(d.work / "epcis.jsonld"), "--company-prefix", "0614141")
