"""`make demo`: the main job end to end on a local data folder, as real `wuma` commands.

Each step is printed as the command a person would type, then its output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

STEPS: list = []


def step(fn):
    STEPS.append(fn)
    return fn


def http_json(url: str, path: str, body: dict | None = None, token: str | None = None) -> tuple[int, object]:
    """One request to a demo server: (status, JSON answer or raw bytes)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url + path, data=None if body is None else json.dumps(body).encode(),
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if r.headers.get_content_type() == "application/json" else raw
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Demo:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.work = data.parent / (data.name + "-files")
        self.work.mkdir(parents=True, exist_ok=True)

    def wuma(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        cmd = ["wuma", "--data", str(self.data), *args]
        print(f"\n$ {shlex.join(cmd)}", flush=True)
        proc = subprocess.run([sys.executable, "-m", "cli", "--data", str(self.data), *args],
                              input=stdin, capture_output=True, text=True)
        out = proc.stdout + proc.stderr
        lines = out.splitlines()
        shown = lines if len(lines) <= 12 else lines[:10] + [f"... ({len(lines) - 10} more lines)"]
        for line in shown:
            print("  " + line)
        if check and proc.returncode != 0:
            raise SystemExit(f"demo step failed: {shlex.join(cmd)}")
        return proc.stdout


    @contextlib.contextmanager
    def serve(self):
        """`wuma serve` on a free loopback port for the length of a step; yields its URL."""
        from cli.localserver import free_port, stop, wait_until_up

        port = free_port()
        args = ["--data", str(self.data), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
        print(f"\n$ wuma {' '.join(args)} &")
        server = subprocess.Popen([sys.executable, "-m", "cli", *args], start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            if not wait_until_up(url + "/healthz"):
                raise SystemExit("wuma serve did not start")
            yield url
        finally:
            stop(server)
        print("  (server stopped)")


def run(data: Path) -> None:
    d = Demo(data)
    print("== 1. Codes: a data folder, batches, an export, verification")
    d.wuma("init", "--preset", "beverage")
    d.wuma("batch", "create", "--level", "cap", "--count", "2400000", "--note", "demo caps")
    d.wuma("batch", "create", "--level", "case", "--count", "100000", "--note", "demo cases")
    d.wuma("batch", "create", "--level", "pallet", "--count", "2000", "--note", "demo pallets")
    d.wuma("batch", "list")
    d.wuma("batch", "show", "1")
    csv_path = d.work / "caps.csv"
    d.wuma("batch", "export", "1", "--plaintext", "-o", str(csv_path))
    rows = csv_path.read_text().splitlines()
    print(f"  ({len(rows) - 1:,} rows; first: {rows[1]})")
    serial, outer, inner = rows[1].split(",")
    forged = inner[:-1] + ("0" if inner[-1] != "0" else "1")
    d.wuma("code", "verify", outer, inner.lower(), "HTTPS://S.EXAMPLE.CN/Q/" + inner, forged,
           "not a code")
    d.wuma("key", "rotate")
    d.wuma("batch", "create", "--level", "cap", "--count", "1000", "--note", "after key rotation")
    print("\n  codes printed under key version 1 still verify after rotation:")
    d.wuma("code", "verify", inner)
    d.wuma("bench", "--quick")
    # The later parts of the demo register themselves as steps when imported. NOTE: they
    # import `cli.demo`, which is a different module object from `__main__` under -m.
    import cli.demo as registry
    import cli.demo_aggregate  # noqa: F401
    import cli.demo_scan  # noqa: F401
    import cli.demo_packs  # noqa: F401
    import cli.demo_campaigns  # noqa: F401

    for extra in registry.STEPS:
        extra(d)
    print("\ndemo finished: data folder", data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="demo-data", type=Path)
    args = ap.parse_args()
    run(args.data)


if __name__ == "__main__":
    main()
