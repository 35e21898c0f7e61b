"""Closed-loop genuine scans through the pipeline in one process, as a server worker runs
them: ``python benchmarks/pipeline_load.py DATA_FOLDER CALLERS SECONDS [gevent|threads] [nofsync[+sleep:US|+spin:US]]``.

Prints one JSON line: scans, seconds, µs of wall time and of process CPU per scan, and that
CPU split into user and kernel time. Under ``gevent`` the callers are greenlets and the
standard library is monkey-patched first, exactly as in gunicorn's gevent worker (so it
must be its own process).

``nofsync`` is a reference for capacity planning, never a way to serve: the data folder's
store is opened without fsync, so the figure is the pipeline's own cost, and the gap to
the strict run is what waiting for the disk costs on this machine. ``nofsync+sleep:300``
then blocks the committing thread for 300 µs after each commit (as an fsync does, without
the disk's work), ``nofsync+spin:300`` keeps it busy for as long: together they tell the
cost of the wait itself from the cost of the disk's work.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[4:5] == ["gevent"]:
    from gevent import monkey

    monkey.patch_all()

import json  # noqa: E402
import resource  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402


def _wait_after_commit(how: str) -> None:
    """Benchmark only: hold the committing thread ``how`` = ``sleep:US`` or ``spin:US``
    after every group commit."""
    from gevent.monkey import get_original

    from engine.scanlog import ScanLog

    kind, _, us = how.partition(":")
    if kind not in ("sleep", "spin") or not us.isdigit():
        raise SystemExit(f"expected sleep:US or spin:US after '+', got {how!r}")
    seconds = int(us) / 1e6
    block = get_original("time", "sleep")  # the OS thread's own sleep, not gevent's
    write_group = ScanLog._write_group

    def waiting(self, group):
        out = write_group(self, group)
        if kind == "sleep":
            block(seconds)
        else:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass
        return out

    ScanLog._write_group = waiting


def main(path: str, callers: int, seconds: float, mode: str, fsync: bool = True,
         commit_wait: str | None = None) -> dict:
    from engine import DataFolder
    from engine.store import Store

    if commit_wait:
        _wait_after_commit(commit_wait)

    if not fsync:  # NOTE: benchmark reference only (see the module docstring)
        opened = Store.__init__

        def without_fsync(self, store_path, **options):
            opened(self, store_path, **{**options, "sync": False})

        Store.__init__ = without_fsync
    from engine.aggregation import Aggregation
    from engine.scan import ScanPipeline, ScanRequest
    from engine.scanlog import ScanLog

    data = DataFolder(Path(path))
    scans = ScanLog(data.store)
    pipeline = ScanPipeline(data.codes, Aggregation(data), scans, data.abuse, data.accounts)
    caps = data.batches.find(1)  # NOTE: tests/conftest_world.build_world's caps
    assert caps is not None and caps.level == "cap", "expected build_world's data folder"
    reqs = [ScanRequest(code=data.codes.code(caps, i, "cap_inner"), actor_id=f"wx-{i}", region="440106",
                        device=f"dev-{i}", ip="198.51.100.7") for i in range(caps.count)]
    for r in reqs:  # warm-up: numba kernels, caches
        pipeline.scan(r)
    counts = [0] * callers
    deadline = time.perf_counter() + seconds

    def run(k: int) -> None:
        i, n = k, 0
        while time.perf_counter() < deadline:
            assert pipeline.scan(reqs[i % len(reqs)]).verdict == "genuine"
            i += callers
            n += 1
        counts[k] = n

    usage0, cpu0, start = resource.getrusage(resource.RUSAGE_SELF), time.process_time(), time.perf_counter()
    if mode == "gevent":
        import gevent

        gevent.joinall([gevent.spawn(run, k) for k in range(callers)])
    else:
        ths = [threading.Thread(target=run, args=(k,)) for k in range(callers)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    n = sum(counts)
    scans.close()
    data.close()
    return {"scans": n, "seconds": wall, "wall_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6,
            "user_us": (usage.ru_utime - usage0.ru_utime) / n * 1e6,
            "sys_us": (usage.ru_stime - usage0.ru_stime) / n * 1e6}


if __name__ == "__main__":
    store_mode, _, wait = (sys.argv[5] if len(sys.argv) > 5 else "").partition("+")
    if store_mode not in ("", "nofsync"):
        raise SystemExit(f"the fifth argument is nofsync[+sleep:US|+spin:US], not {sys.argv[5]!r}")
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4],
                          fsync=store_mode != "nofsync", commit_wait=wait or None)))
