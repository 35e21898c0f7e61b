"""Demo step: a print line's keys, an encrypted split-key pack, opened on the line.

Registered with ``cli.demo.step`` on import (the lead imports this module from the demo).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cli.demo import step
from cli.localserver import start_gunicorn, stop


@step
def packs(d) -> None:
    print("\n== Encrypted code packs for a print line (码包)")
    brand_keys = d.work / "brand-keys.json"
    line_dir = d.work / "line-L1"
    packs_dir = d.work / "packs"
    shutil.rmtree(line_dir, ignore_errors=True)
    shutil.rmtree(packs_dir, ignore_errors=True)
    d.wuma("line", "brand-keys", "-o", str(brand_keys))
    d.wuma("line", "keygen", "-o", str(line_dir), "--brand-key", str(brand_keys))
    d.wuma("line", "add", "L1", "--pubkey", str(line_dir / "line.pub"))
    out = d.wuma(
        "pack",
        "export",
        "1",
        "--line",
        "L1",
        "--range",
        "0:1000000",
        "--parts",
        "2",
        "--split-key",
        "-o",
        str(packs_dir),
        "--json",
    )
    first = json.loads(out.splitlines()[0])
    print("\n  the line controller pulls its packs over HTTP (pull server on loopback):")
    pulled = d.work / "line-L1-pulled"
    shutil.rmtree(pulled, ignore_errors=True)
    server, port = start_gunicorn("engine.http_packs:app_from_env()", workers=1,
                                  env={"WUMA_DATA": str(d.data)}, probe="/packs")
    try:
        d.wuma("pack", "pull", "--line", str(line_dir), "--server", f"http://127.0.0.1:{port}",
               "-o", str(pulled))
    finally:
        stop(server)
    first["path"] = str(pulled / Path(first["path"]).name)
    codes = d.work / "line-L1-codes.csv"
    receipt = d.work / "line-L1-receipt.json"
    print("\n  without the key share (sent separately) the pack does not open:")
    d.wuma("pack", "open", first["path"], "--key", str(line_dir), "-o", str(codes), check=False)
    share_file = d.work / "line-L1-share.txt"  # NOTE: from a file, the share stays out of `ps`
    share_file.write_text(first["share"] + "\n")
    share_file.chmod(0o600)
    d.wuma(
        "pack",
        "open",
        first["path"],
        "--key",
        str(line_dir),
        "--share-file",
        str(share_file),
        "-o",
        str(codes),
        "--url",
        "--receipt",
        str(receipt),
    )
    rows = codes.read_text().splitlines()
    print(f"  ({len(rows) - 1:,} rows; first: {rows[1]})")
    _, outer, inner = rows[1].split(",")
    d.wuma("code", "verify", outer, inner)
    d.wuma("pack", "report", str(receipt))
    d.wuma("pack", "list", "--line", "L1")
    print("\n  serials already in a pack are not exported again (until that pack is revoked):")
    d.wuma("pack", "export", "1", "--line", "L1", "--range", "400000:600000", "-o", str(packs_dir),
           check=False)
    codes.unlink()

