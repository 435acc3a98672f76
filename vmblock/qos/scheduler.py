"""The mClock tag arithmetic and dispatch order (Gulati et al., OSDI 2010), without I/O.

Each VM with QoS is a ``Flow`` with three tags per queued command, computed when it arrives:

    R = max(R_prev + cost / reservation, now)     reservation: due at R (IOPS)
    L = max(L_prev + cost / limit, now - burst)   limit: not before L (IOPS); the byte limit
    B = max(B_prev + bytes / limit_bytes, ...)    has a tag of its own, B
    P = max(P_prev + cost / weight, V - catchup / weight)
                                                  share: smaller first; V is the P tag of the
                                                  last command dispatched by share (the
                                                  virtual time): a VM that was idle starts at
                                                  most ``catchup`` units of its own ahead of
                                                  the busy ones, not with a burst of all it
                                                  missed

``cost`` is the command's size in 8 KiB units (``cost``). The limit tags may start up to
``burst`` seconds in the past (``max(L_prev + step, now - burst)``): an initiator whose
queue ran dry for a moment -- qemu's iSCSI client, at a few thousand IOPS, sends its next
commands in bunches with gaps of several milliseconds -- catches up what it left unused in
the last ``burst`` seconds instead of losing it, so a limit is met on average, while over
any interval T at most ``limit * (T + burst)`` commands go. ``catchup`` does the same for
shares: a saturating VM whose initiator left its queue empty for a moment (its process
waiting for a CPU) gets back up to that many units of its share when its commands come. ``pick(now)`` chooses the next
command: first the smallest R tag that is due (R <= now; reservations first), else among
the flows whose head is within its limits (L <= now and B <= now) the smallest P tag; None
when nothing may go now (``next_due`` says when something may). A reservation is served
even at the limit only as far as it is below the limit (``QosParams`` refuses min > max).
Everything takes ``now`` from the caller: tests drive it with their own clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# IOPS are counted in 8 KiB units: an I/O of n bytes costs ceil(n / 8 KiB), at least 1
COST_UNIT_BYTES = 8192
# unused limit a flow may catch up (seconds of it): covers the gaps of bunched initiators
LIMIT_BURST_SECONDS = 0.05
# share a flow that ran dry may catch up, in its own 8 KiB units: with 32, a VM at shares 3
# next to one at 1 measured 2.3:1 (its qemu-img process waits for a CPU now and then and its
# queue runs dry); with 1024, 2.6-2.8:1 (tools/bench_qos.py, docs/qos.md)
SHARE_CATCHUP_UNITS = 1024


def cost(nbytes: int) -> int:
    """The IOPS cost of an I/O of ``nbytes``: ceil(nbytes / 8 KiB), at least 1."""
    return max(1, -(-nbytes // COST_UNIT_BYTES))


@dataclass(frozen=True)
class QosParams:
    """One VM's QoS: ``reservation`` and ``limit`` in (8 KiB-normalized) IOPS, 0 for none;
    ``limit_bytes`` in bytes per second, 0 for none; ``weight`` its shares (1 by default)."""

    reservation: float = 0.0
    limit: float = 0.0
    limit_bytes: float = 0.0
    weight: float = 1.0


class Flow:
    """One VM's queue and its tags."""

    __slots__ = ("key", "params", "queue", "r", "l", "b", "p", "limited_since", "reported",
                 "shared", "slot")

    def __init__(self, key: str, params: QosParams):
        self.key = key
        self.params = params
        self.queue: deque = deque()     # [r, l, b, p, nbytes, item]
        self.r = self.l = self.b = self.p = 0.0
        self.limited_since = 0.0        # when its head was first held by its limit (0: not)
        self.reported = False           # qos_throttled recorded for this stretch
        # vmblock.qos.shared.SharedTags and this VM's slot there: the L and B tags are the
        # VM's across processes (None: this process's own, in l and b)
        self.shared = None
        self.slot = 0


class Scheduler:
    """The flows of one process and the choice between their queued commands."""

    def __init__(self, burst: float = LIMIT_BURST_SECONDS,
                 catchup: float = SHARE_CATCHUP_UNITS):
        """No flows yet; ``burst`` and ``catchup``: see the module docstring (0: none)."""
        self.burst = burst
        self.catchup = catchup
        self.flows: dict[str, Flow] = {}
        self.vtime = 0.0                # P tag of the last command dispatched by share
        self.queued = 0

    def set_params(self, key: str, params: QosParams, now: float) -> Flow:
        """Create or change ``key``'s flow; on a change its queued commands are tagged
        again from ``now`` under the new parameters (a raised limit applies to them too)."""
        flow = self.flows.get(key)
        if flow is None:
            flow = self.flows[key] = Flow(key, params)
        elif flow.params != params:
            flow.params = params
            queued = list(flow.queue)
            flow.queue.clear()
            self.queued -= len(queued)
            flow.r = flow.l = flow.b = 0.0
            flow.p = self.vtime
            for e in queued:
                self.submit(flow, e[4], now, e[5])
        return flow

    def drop(self, key: str) -> list:
        """Remove ``key``'s flow; returns the items still queued (the caller runs them)."""
        flow = self.flows.pop(key, None)
        if flow is None:
            return []
        self.queued -= len(flow.queue)
        return [e[5] for e in flow.queue]

    def submit(self, flow: Flow, nbytes: int, now: float, item) -> None:
        """Queue ``item`` (an I/O of ``nbytes``) on ``flow`` with its tags."""
        par = flow.params
        c = cost(nbytes)
        if par.reservation:
            flow.r = max(flow.r + c / par.reservation, now)
        floor = now - self.burst
        if flow.limited_since and max(flow.l, flow.b) < floor:
            flow.limited_since = 0.0        # it had limit to spare: that stretch is over
            flow.reported = False
        if flow.shared is not None and (par.limit or par.limit_bytes):
            flow.l, flow.b = flow.shared.advance(
                flow.slot, c / par.limit if par.limit else 0.0,
                nbytes / par.limit_bytes if par.limit_bytes else 0.0, floor)
        else:
            if par.limit:
                flow.l = max(flow.l + c / par.limit, floor)
            if par.limit_bytes:
                flow.b = max(flow.b + nbytes / par.limit_bytes, floor)
        flow.p = max(flow.p + c / par.weight, self.vtime - self.catchup / par.weight)
        flow.queue.append([flow.r if par.reservation else None,
                           flow.l if par.limit else 0.0, flow.b if par.limit_bytes else 0.0,
                           flow.p, nbytes, item])
        self.queued += 1

    def pick(self, now: float):
        """The flow and item to dispatch now (removed from its queue), or None."""
        best = None
        for flow in self.flows.values():
            if flow.queue:
                r = flow.queue[0][0]
                if r is not None and r <= now and (best is None or r < best.queue[0][0]):
                    best = flow
        if best is None:
            tag = 0.0
            for flow in self.flows.values():
                q = flow.queue
                if not q:
                    flow.limited_since = 0.0
                    flow.reported = False
                    continue
                head = q[0]
                if head[1] > now or head[2] > now:
                    if not flow.limited_since:
                        flow.limited_since = now
                    continue
                if best is None or head[3] < tag:
                    best, tag = flow, head[3]
            if best is None:
                return None
            self.vtime = tag
        self.queued -= 1
        return best, best.queue.popleft()[5]

    def next_due(self) -> float | None:
        """The earliest time a queued command becomes eligible (by reservation or within
        its limits), None when nothing is queued."""
        due = None
        for flow in self.flows.values():
            if flow.queue:
                r, l, b = flow.queue[0][:3]
                t = max(l, b)
                if r is not None:
                    t = min(t, r)
                if due is None or t < due:
                    due = t
        return due
