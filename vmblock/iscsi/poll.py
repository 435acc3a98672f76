"""Polling instead of sleeping between close PDUs: one process's ``iscsi.poll_window``.

An initiator that waits for each answer before it sends the next command (QD1) finds a
server that sleeps in ``epoll_wait`` between commands, so every command pays the wake-up of
an idle CPU. On a virtual machine that is an interprocessor interrupt through the hypervisor,
tens of microseconds: more than the command's own work here (docs/benchmarks.md, "Polling
between close PDUs"). While PDUs arrive less than ``window`` apart, the process keeps its
event loop turning (``epoll_wait`` with a zero timeout, and ``sched_yield`` so that a client
on the same CPU runs) until ``window`` has passed since the last one, then sleeps again.

The cost is bounded: at most ``window`` of one CPU per PDU, and nothing at all while PDUs
come further apart than ``window`` (the loop only polls after it saw two close ones). At
higher queue depths the loop is busy anyway and polls rarely. ``window`` 0 turns it off.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

# Longer than a QD1 initiator's turn between an answer and its next command on a loopback or
# a LAN (~50-150 us), short enough that a process that polls in vain burns little.
DEFAULT_WINDOW = 200e-6

class IdlePoll:
    """The poll state of one process's event loop, fed by every connection's arrivals."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic,
                 relax: Callable[[], None] = os.sched_yield):
        self.window = window
        self.clock = clock          # seconds; must resolve microseconds (not uvloop's time())
        self.relax = relax          # between turns: let a runnable process have the CPU
        self.last = -float("inf")   # clock of the last arrival
        self.polling = False

    def arrived(self) -> None:
        """A connection received bytes: poll on if the previous arrival was close."""
        now = self.clock()
        close = now - self.last < self.window
        self.last = now
        if close and not self.polling:
            self.polling = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """One turn of the loop without sleeping; the last turn ``window`` after the last
        arrival."""
        if self.clock() - self.last < self.window:
            self.relax()
            asyncio.get_running_loop().call_soon(self._turn)
        else:
            self.polling = False
