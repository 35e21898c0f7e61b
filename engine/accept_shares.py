"""How many waiting connections a gevent worker may accept at once, so that a burst of
long-lived connections spreads over the workers (see ``engine/gunicorn_conf.py``).

A worker accepts several waiting connections per wake-up (``accept_batch``): with a new
connection per scan, accepting one at a time made every group commit hold one scan. The
cost was balance: 16 keep-alive connections opened at once could all land on the worker
that woke first (seen in benchmarks: all 16 on one worker, the other idle). So each
worker publishes how many connections it holds, in memory its master shares with all its
workers (:class:`AcceptShares`), and a worker ahead of the least loaded one by ``d``
accepts ``batch - d`` at once (at least one, as gunicorn's own rule): level workers take
whole batches, one that is a batch or more ahead takes one and pauses (:data:`PAUSE`)
until the others catch up. Only workers that are serving count: each says so every
:data:`BEAT` seconds, and one booting, stopped or hung is left out, so the others take
whole batches rather than wait for it.
"""

from __future__ import annotations

import mmap
import time

__all__ = ["AcceptShares", "BEAT", "PAUSE", "STALE", "allowance"]

_SLOTS = 64  # workers of one server balanced, at most (more go unbalanced)


def allowance(batch: int, mine: int, others: list[int]) -> int:
    """How many waiting connections a worker holding ``mine`` may accept at once, when the
    other live workers hold ``others``: ``batch`` when it is not ahead of the least loaded
    one, ``batch - d`` when it is ``d`` ahead, and never less than 1; 0 says "1, then
    pause": it is a whole batch or more ahead (see :data:`PAUSE`)."""
    if not others:
        return batch
    ahead = mine - min(others)
    return 0 if ahead >= batch else max(1, min(batch, batch - ahead))


#: Seconds a worker a whole batch ahead stops accepting after it took one connection: the
#: others, if they are awake, take the waiting ones meanwhile (measured: a worker woken
#: faster took 7 of 8 connections one at a time while the other was still waking).
PAUSE = 0.002
#: Seconds between a worker's signs of life; one silent for :data:`STALE` (booting,
#: stopped, its loop blocked) is left out of the others' balance: they take whole batches.
BEAT = 0.05
STALE = 0.25


class AcceptShares:
    """The connections each worker of one server holds, in an anonymous shared memory
    mapping made by the master before it forks its workers (so they all see it).

    The master gives each worker a slot (:meth:`assign`, before the fork) and frees it when
    the worker exits (:meth:`free`); the worker counts its connections in its slot
    (:meth:`opened`, :meth:`closed`: only it writes there, from one thread), says it is
    alive (:meth:`beat`) and reads the others' (:meth:`allowance`). Words of 32 bits: the
    slots in use, then per slot (live, connections held, last beat in ms). A count read
    while another worker writes it is at most one connection off: good enough for
    balance, which is all it is for."""

    def __init__(self, slots: int = _SLOTS) -> None:
        self._mem = mmap.mmap(-1, (1 + 3 * slots) * 4)
        self._words = memoryview(self._mem).cast("I")
        self._slots = slots
        self.mine: int | None = None
        self._held = 0

    # -- the master --------------------------------------------------------------------
    def assign(self, taken: set) -> int | None:
        """A free slot (not in ``taken``, the slots of the live workers), marked live with
        no connections and no beat yet; None if all are taken (that worker goes
        unbalanced, rather than share a slot)."""
        w = self._words
        slot = next((i for i in range(self._slots) if i not in taken), None)
        if slot is not None:
            w[1 + 3 * slot], w[2 + 3 * slot], w[3 + 3 * slot] = 1, 0, 0
            w[0] = max(w[0], slot + 1)
        return slot

    def free(self, slot: int) -> None:
        """The worker of ``slot`` exited: its connections count no more."""
        w = self._words
        w[1 + 3 * slot] = w[2 + 3 * slot] = w[3 + 3 * slot] = 0

    # -- a worker ----------------------------------------------------------------------
    def attach(self, slot: int) -> None:
        """This process is the worker of ``slot``."""
        self.mine, self._held = slot, 0
        self.beat()

    def beat(self) -> None:
        """This worker is alive and serving (every :data:`BEAT` seconds)."""
        self._words[3 + 3 * self.mine] = _now_ms()

    def opened(self) -> None:
        self._held += 1
        self._words[2 + 3 * self.mine] = self._held

    def closed(self) -> None:
        self._held -= 1
        self._words[2 + 3 * self.mine] = max(0, self._held)

    def allowance(self, batch: int) -> int:
        """:func:`allowance` for this worker now, against the other live workers that beat
        within :data:`STALE`. PERF: reads only the slots in use (a server has about as many
        workers as cores): ~1 µs for two."""
        w, mine, now = self._words, self.mine, _now_ms()
        stale = int(STALE * 1000)
        others = [w[2 + 3 * i] for i in range(w[0])
                  if i != mine and w[1 + 3 * i] and (now - w[3 + 3 * i]) & 0xFFFFFFFF <= stale]
        return allowance(batch, self._held, others)


def _now_ms() -> int:
    """Milliseconds of the monotonic clock (shared by the processes of one machine), in 32
    bits: the differences are taken modulo 2^32 (the words wrap every 49 days)."""
    return int(time.monotonic() * 1000) & 0xFFFFFFFF
