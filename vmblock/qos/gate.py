"""Where the fabric hands a command to QoS: one ``QosGate`` per serving process.

``ScsiTransfer._execute_now`` (vmblock/iscsi/transfer.py) asks ``hold(conn, st)`` before a
READ or WRITE goes to the SCSI core, once its data and data budget are in. A command of an
LU whose VM has no QoS (or none at all while no VM has a reservation or shares) passes. Any
other is queued on its VM's flow (``Scheduler``) and parked: its connection keeps reading
and runs its other commands; it keeps only the data budget it already holds. ``pump`` then
dispatches what the tags allow while fewer than ``slots`` gated commands are in the SCSI
core, and sets a timer for the next due tag; ``done`` (from ``task_done``) frees the slot.

The slots give shares and reservations their meaning when the server itself is the
bottleneck: while every slot is busy, commands leave the queues in tag order, so two
saturating VMs at shares 3:1 get 3 of every 4 slots that free up. Limits need no slots
(a limited VM waits for its L tag whatever the load) but take one while they run.

The time a command waited here is added to the ``queue`` part of the statistics' latency
split (``t_grant`` moves later by the wait, ``t_exec`` is the release).
"""

from __future__ import annotations

import time
from typing import Callable

from vmblock.qos.scheduler import QosParams, Scheduler

# a VM held at its limit this long (seconds) raises qos_throttled (issue 12: "more than a minute")
THROTTLED_AFTER = 60.0


class QosGate:
    """One process's QoS (module docstring). ``call_later(delay, fn)`` is the event loop's."""

    clock = staticmethod(time.perf_counter)     # the statistics' clock: stamps compare

    def __init__(self, call_later: Callable, slots: int):
        self.call_later = call_later
        self.slots = slots
        self.sched = Scheduler()
        self.keys: dict[tuple[str, int], str] = {}     # (target IQN, LUN) -> VM key
        self.active = False             # some LU is gated: the fabric asks at all
        self.inflight = 0
        self.timer = None
        self.pumping = False
        self.passed = 0                 # commands released by the gate (tests count them)

    def configure(self, params: dict[str, QosParams], luns: dict[tuple[str, int], str]) -> None:
        """Install the QoS of every VM (key -> params; a VM without any is absent) and which
        VM each served LU belongs to. While some VM has a reservation or shares, every VM's
        commands are scheduled (the others at weight 1); otherwise only the limited VMs'."""
        everyone = any(p.reservation or p.weight != 1 for p in params.values())
        default = QosParams()
        keys = {lu: vm for lu, vm in luns.items() if everyone or vm in params}
        for vm in set(keys.values()):
            self.sched.set_params(vm, params.get(vm, default))
        left = [item for vm in list(self.sched.flows) if vm not in set(keys.values())
                for item in self.sched.drop(vm)]
        self.keys = keys
        self.active = bool(keys)
        for conn, st, _ in left:          # no QoS any more: they go now
            self._release(conn, st, None)
        self.pump()

    def hold(self, conn, st) -> bool:
        """Take ``st`` if its VM is scheduled (True: the gate runs it, now or later)."""
        if st.qos is not None:
            return False
        nbytes = st.want or st.read_len
        if not nbytes:
            return False
        key = self.keys.get((conn.session.target.name, st.task.lun))
        if key is None:
            return False
        now = self.clock()
        self.sched.submit(self.sched.flows[key], nbytes, now, (conn, st, now))
        self.pump()
        return True

    def done(self, st) -> None:
        """A gated command ended: its slot is free."""
        st.qos = None
        self.inflight -= 1
        if not self.pumping and self.sched.queued:
            self.pump()

    def pump(self) -> None:
        """Dispatch what may go now; then a timer for what is due later."""
        if self.pumping:
            return
        self.pumping = True
        try:
            sched = self.sched
            while sched.queued and self.inflight < self.slots:
                now = self.clock()
                picked = sched.pick(now)
                if picked is None:
                    break
                flow, (conn, st, parked) = picked
                self._release(conn, st, flow.key, now - parked)
        finally:
            self.pumping = False
        self._arm()

    def _release(self, conn, st, key, waited: float = 0.0) -> None:
        if st.done or st.aborted or conn.closing:
            return
        if key is not None:
            st.qos = key
            self.inflight += 1
        self.passed += 1
        if waited and st.stats_rows is not None:   # the wait counts as queue (module doc)
            g = st.t_grant or st.t_arr
            st.t_grant = g + waited
            st.t_exec = (st.t_exec or g) + waited
        conn._execute_now(st)           # its output goes out unless its connection is corked

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.sched.queued or self.inflight >= self.slots:
            return
        due = self.sched.next_due()
        if due is not None:
            self.timer = self.call_later(max(0.0, due - self.clock()), self._fire)

    def _fire(self) -> None:
        self.timer = None
        self.pump()

    def throttled(self, now: float, after: float) -> list[str]:
        """VM keys held by their limit for more than ``after`` seconds and not yet told:
        marked told (again only after their queue emptied)."""
        out = []
        for flow in self.sched.flows.values():
            if flow.limited_since and not flow.reported and now - flow.limited_since > after:
                flow.reported = True
                out.append(flow.key)
        return out
