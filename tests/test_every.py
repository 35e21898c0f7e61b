"""A server worker's housekeeping (engine.every): rounds that run in one process at a time,
and events told once in a while."""

from __future__ import annotations

import threading
import time

from engine.every import Tally, repeat


def test_rounds_with_one_lock_never_overlap(tmp_path):
    """Two workers' stats folds (or sweeps) at one moment each threw away the other's
    work and held scans: with ``one_of`` a round runs only while its lock is held."""
    rounds: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def work(who: str) -> None:
        start = time.monotonic()
        time.sleep(0.03)
        with lock:
            rounds.append((who, start, time.monotonic()))

    for who in ("a", "b"):
        repeat(0.005, lambda who=who: work(who), f"test-{who}", one_of=tmp_path / "round.lock")
    time.sleep(1.0)
    with lock:
        done = sorted(rounds, key=lambda r: r[1])
    assert {w for w, _, _ in done} == {"a", "b"} and len(done) >= 10
    assert all(nxt[1] >= cur[2] - 0.002 for cur, nxt in zip(done, done[1:]))


def test_a_tally_tells_the_first_at_once_and_the_rest_with_their_count():
    told: list[tuple[int, object]] = []
    tally = Tally(0.2, lambda count, latest: told.append((count, latest)))
    for i in range(5):
        tally.add(i)
    assert told == [(1, 0)]
    time.sleep(0.4)
    assert told == [(1, 0), (4, 4)]
