"""How many waiting connections a gevent worker may accept at once, so that a burst of
long-lived connections spreads over the workers (see ``engine/gunicorn_conf.py``).

A worker accepts several waiting connections per wake-up (``accept_batch``): with a new
connection per scan, accepting one at a time made every group commit hold one scan. The
cost was balance: 16 keep-alive connections opened at once could all land on the worker
that woke first (seen in benchmarks: all 16 on one worker, the other idle). So each
worker publishes how many connections it holds, in memory its master shares with all its
workers (:class:`AcceptShares`), and a worker ahead of the least loaded one by ``d``
accepts ``batch - d`` at once (at least one, as gunicorn's own rule): level workers take
whole batches, one that is ahead by a batch or more takes one at a time, as gunicorn's
workers do, until the others catch up.
"""

from __future__ import annotations

import mmap

__all__ = ["AcceptShares", "PAUSE", "allowance"]

_SLOTS = 64  # workers of one server, at most (more share the last slot)


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
#: faster took 7 of 8 connections one at a time while the other was still waking); one
#: that is stuck costs the connections waiting at most this long each.
PAUSE = 0.002


class AcceptShares:
    """The connections each worker of one server holds, in an anonymous shared memory
    mapping made by the master before it forks its workers (so they all see it).

    The master gives each worker a slot (:meth:`assign`, before the fork) and frees it when
    the worker exits (:meth:`free`); the worker counts its connections in its slot
    (:meth:`opened`, :meth:`closed`: only it writes there, from one thread) and reads the
    others' (:meth:`allowance`). Words of 32 bits: the slots in use, then per slot
    (live, connections held). A count read while another worker writes it is at most one
    connection off: good enough for balance, which is all it is for."""

    def __init__(self, slots: int = _SLOTS) -> None:
        self._mem = mmap.mmap(-1, (1 + 2 * slots) * 4)
        self._words = memoryview(self._mem).cast("I")
        self._slots = slots
        self._mine = 0
        self._held = 0

    # -- the master --------------------------------------------------------------------
    def assign(self, taken: set[int]) -> int:
        """A free slot (not in ``taken``, the slots of the live workers), marked live with
        no connections; the last one if all are taken (shared: balance is then rougher)."""
        w = self._words
        slot = next((i for i in range(self._slots) if i not in taken), self._slots - 1)
        w[1 + 2 * slot], w[2 + 2 * slot] = 1, 0
        w[0] = max(w[0], slot + 1)
        return slot

    def free(self, slot: int) -> None:
        """The worker of ``slot`` exited: its connections count no more."""
        self._words[1 + 2 * slot] = self._words[2 + 2 * slot] = 0

    # -- a worker ----------------------------------------------------------------------
    def attach(self, slot: int) -> None:
        """This process is the worker of ``slot``."""
        self._mine, self._held = slot, 0

    def opened(self) -> None:
        self._held += 1
        self._words[2 + 2 * self._mine] = self._held

    def closed(self) -> None:
        self._held -= 1
        self._words[2 + 2 * self._mine] = self._held

    def allowance(self, batch: int) -> int:
        """:func:`allowance` for this worker now. PERF: reads only the slots in use (a
        server has about as many workers as cores): ~1 µs for two."""
        w, mine = self._words, self._mine
        others = [w[2 + 2 * i] for i in range(w[0]) if i != mine and w[1 + 2 * i]]
        return allowance(batch, self._held, others)
