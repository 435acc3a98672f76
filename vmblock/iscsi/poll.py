"""Polling instead of sleeping between close PDUs: one process's ``iscsi.poll_window``.

An initiator that waits for each answer before it sends the next command (QD1) finds a
server that sleeps in ``epoll_wait`` between commands, so every command pays the wake-up of
an idle CPU. On a virtual machine that is an interprocessor interrupt through the hypervisor,
tens of microseconds: more than the command's own work here (docs/benchmarks.md, "Polling
between close PDUs"). While PDUs arrive less than ``window`` apart, the process keeps its
event loop turning (``epoll_wait`` with a zero timeout, and ``sched_yield`` so that a client
on the same CPU runs) until ``window`` has passed since the last one, then sleeps again.

The cost is bounded: at most ``window`` of one CPU per PDU, and nothing at all while PDUs
come further apart than ``window`` (the loop only polls after it saw two close ones). A CPU
that others need is given up: a yield that comes back late (``TAKEN``: another process ran
on this CPU meanwhile) ends the polling, and the process sleeps between PDUs for ``BACKOFF``
before it polls again. Polling thus takes nothing from clients or other workers that want
the CPU (many sessions on few cores), and ``window`` 0 turns it off.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

# Longer than a QD1 initiator's turn between an answer and its next command on a loopback or
# a LAN (~50-150 us), short enough that a process that polls in vain burns little.
DEFAULT_WINDOW = 200e-6
# A yield that took longer than this let another process run on this CPU: someone else wants
# it, and polling would take it from them (a client on the same CPU wakes us cheaply anyway).
TAKEN = 10e-6
# How long the process sleeps between PDUs after its CPU was taken, before it polls again.
BACKOFF = 0.001
# Test-only: set in a server's environment, no yield counts as late, so a test measures the
# polling itself whatever else runs on the machine (tests/e2e/test_poll_live.py); the giving
# up is tested on its own (tests/iscsi/test_idle_poll.py).
NEVER_TAKEN_ENV = "VMBLOCK_POLL_NEVER_TAKEN"


class IdlePoll:
    """The poll state of one process's event loop, fed by every connection's arrivals."""

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic,
                 relax: Callable[[], None] = os.sched_yield):
        self.window = window
        self.clock = clock          # seconds; must resolve microseconds (not uvloop's time())
        self.relax = relax          # between turns: let a runnable process have the CPU
        self.last = -float("inf")   # clock of the last arrival
        self.quiet_until = 0.0      # no polling before this clock (the CPU was taken)
        self.taken = float("inf") if os.environ.get(NEVER_TAKEN_ENV) else TAKEN
        self.polling = False

    def arrived(self) -> None:
        """A connection received bytes: poll on if the previous arrival was close."""
        now = self.clock()
        close = now - self.last < self.window
        self.last = now
        if close and not self.polling and now >= self.quiet_until:
            self.polling = True
            asyncio.get_running_loop().call_soon(self._turn)

    def _turn(self) -> None:
        """One turn of the loop without sleeping; the last turn ``window`` after the last
        arrival, or the first whose yield let another process run (module docstring)."""
        before = self.clock()
        if before - self.last >= self.window:
            self.polling = False
            return
        self.relax()
        after = self.clock()
        if after - before > self.taken:
            self.polling = False
            self.quiet_until = after + BACKOFF
        else:
            asyncio.get_running_loop().call_soon(self._turn)
