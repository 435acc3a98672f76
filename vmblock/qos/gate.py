"""Where the fabric hands a command to QoS: one ``QosGate`` per serving process.

``ScsiTransfer._execute_now`` (vmblock/iscsi/transfer.py) asks ``hold(conn, st)`` before a
command with data goes to the SCSI core, once its data and data budget are in. A command of
an LU whose VM has no QoS (or none at all while no VM has a reservation or shares) passes.
Any other is queued on its VM's flow (``Scheduler``) and parked: its connection keeps
reading and runs its other commands; it keeps only the data budget it already holds.

With limits only, ``pump`` dispatches what the tags allow at once (while fewer than
``slots`` gated commands are in the SCSI core) and sets a timer for the next due tag. While
some VM has a reservation or shares, commands go in dispatch rounds (``_round``): one per
event-loop iteration, at most ``slots`` commands each in tag order, at most
``IN_FLIGHT_ROUNDS`` rounds' worth in the core. The rounds give shares and reservations
their meaning when the server itself is the bottleneck: what arrives between two rounds
competes by its tags, so two saturating VMs at shares 3:1 get 3 of every 4 commands
released. The answers of the commands one call releases leave in one write per connection
(cork, uncork). ``done`` (from ``task_done``) frees a command's slot.

The time a command waited here is added to the ``queue`` part of the statistics' latency
split (``t_grant`` and ``t_exec`` move later by the wait).
"""

from __future__ import annotations

import time
from typing import Callable

from vmblock.qos.scheduler import (LIMIT_BURST_SECONDS, SHARE_CATCHUP_UNITS, QosParams,
                                   Scheduler)
from vmblock.qos.shared import MAX_SHARED_FLOWS, SharedTags
from vmblock.qos.split import LuSplit

# while dispatching in rounds, up to this many rounds' commands may be in the SCSI core at
# once: beyond it the core (its executor) is the bottleneck, and a queue there has no tags
IN_FLIGHT_ROUNDS = 4


class QosGate:
    """One process's QoS (module docstring). ``call_later(delay, fn)`` is the event loop's."""

    clock = staticmethod(time.perf_counter)     # the statistics' clock: stamps compare

    def __init__(self, call_later: Callable, slots: int, shared: SharedTags | None = None,
                 burst: float = LIMIT_BURST_SECONDS, catchup: float = SHARE_CATCHUP_UNITS):
        """``shared``: the limit tags shared with the other serving processes (None: the
        limits are this process's alone); ``burst``, ``catchup``: the scheduler's."""
        self.call_later = call_later
        self.slots = slots
        self.shared = shared
        self.slot_of: dict[str, int] = {}       # VM key -> its cells in ``shared``
        self.params: dict[str, QosParams] = {}
        self.luns: dict[tuple[str, int], str | LuSplit] = {}
        self.sched = Scheduler(burst, catchup)
        # (target IQN, LUN) -> VM key, or the LuSplit of a shared datastore LU (vmblock.qos.split)
        self.keys: dict[tuple[str, int], str | LuSplit] = {}
        self.active = False             # some LU is gated: the fabric asks at all
        self.inflight = 0
        self.timer = None
        self.rounds = False             # some VM has a reservation or shares: dispatch rounds
        self.round_due = None           # the next round's timer handle
        self.pumping = False
        self.throttled_after = 60.0     # qos.throttled_after: the owner's, in ``describe``

    def configure(self, params: dict[str, QosParams],
                  luns: dict[tuple[str, int], str | LuSplit],
                  slot_of: dict[str, int] | None = None) -> None:
        """Install the QoS of every VM (key -> params; a VM without any is absent) and which
        VM each served LU belongs to (a ``LuSplit``: which VM each LBA run of a shared
        datastore LU belongs to). While some VM has a reservation or shares, every VM's
        commands are scheduled (the others at weight 1); otherwise only the limited VMs'.
        ``slot_of``: the owner's shared slots (a worker's call); None: the owner gives each
        limited VM a slot, kept for the run."""
        if slot_of is not None:
            self.slot_of = dict(slot_of)
        elif self.shared is not None:
            for vm, p in params.items():
                if ((p.limit or p.limit_bytes) and vm not in self.slot_of
                        and len(self.slot_of) < MAX_SHARED_FLOWS):
                    self.slot_of[vm] = len(self.slot_of)
        self.params, self.luns = params, luns
        everyone = any(p.reservation or p.weight != 1 for p in params.values())
        default = QosParams()
        keys = {}
        vms = set()
        for lu, vm in luns.items():
            gated = {k for k in (vm.flows() if isinstance(vm, LuSplit) else (vm,))
                     if everyone or k in params}
            if gated:
                keys[lu] = vm
                vms |= gated
        now = self.clock()
        for vm in vms:
            slot = self.slot_of.get(vm) if self.shared is not None else None
            flow = self.sched.flows.get(vm)
            if flow is not None:
                flow.shared, flow.slot = (self.shared if slot is not None else None), slot or 0
            flow = self.sched.set_params(vm, params.get(vm, default), now)
            flow.shared, flow.slot = (self.shared if slot is not None else None), slot or 0
        left = [item for vm in list(self.sched.flows) if vm not in vms
                for item in self.sched.drop(vm)]
        self.keys = keys
        self.active = bool(keys)
        self.rounds = everyone
        for conn, st, _ in left:          # no QoS any more: they go now
            self._release(conn, st, None)
        if self.rounds:
            self._round()
        else:
            self.pump()

    def describe(self) -> dict:
        """The configuration as JSON, for the workers (``configure_json``)."""
        return {"slots": self.slots, "slot_of": self.slot_of,
                "throttled_after": self.throttled_after,
                "params": {vm: [p.reservation, p.limit, p.limit_bytes, p.weight]
                           for vm, p in self.params.items()},
                "luns": [[iqn, lun, vm.dump() if isinstance(vm, LuSplit) else vm]
                         for (iqn, lun), vm in self.luns.items()]}

    def configure_json(self, d: dict) -> None:
        """``configure`` from the owner's ``describe`` (a worker's gate)."""
        self.slots = d["slots"]
        self.throttled_after = d["throttled_after"]
        self.configure({vm: QosParams(*v) for vm, v in d["params"].items()},
                       {(iqn, lun): vm if isinstance(vm, str) else LuSplit.load(vm)
                        for iqn, lun, vm in d["luns"]}, d["slot_of"])

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
        if key.__class__ is LuSplit:        # a shared datastore LU: the flow of its LBA
            flow = self.sched.flows.get(key.key_at(st.task.cdb))
            if flow is None:
                return False
        else:
            flow = self.sched.flows[key]
        conn.own_times(st)              # it waits here, if only until ``pump`` below
        now = self.clock()
        self.sched.submit(flow, nbytes, now, (conn, st, now))
        if not self.rounds:
            self.pump()
        elif self.round_due is None:
            self.round_due = self.call_later(0, self._round)
        return True

    def done(self, st) -> None:
        """A gated command ended: its slot is free."""
        st.qos = None
        self.inflight -= 1
        if self.pumping or not self.sched.queued:
            return
        if not self.rounds:
            self.pump()
        elif self.round_due is None:
            self.round_due = self.call_later(0, self._round)

    def _round(self) -> None:
        """One dispatch round (while some VM has a reservation or shares): at most
        ``slots`` commands, in tag order, and no more than ``IN_FLIGHT_ROUNDS`` rounds' worth
        in the SCSI core; the next round comes after the event loop has read its sockets
        again (what arrived meanwhile is queued by then, and competes by its tags)."""
        self.round_due = None
        self.pump(self.slots, self.slots * IN_FLIGHT_ROUNDS)
        if self.sched.queued and self.inflight < self.slots * IN_FLIGHT_ROUNDS:
            due = self.sched.next_due()
            if due is not None and due <= self.clock():
                self.round_due = self.call_later(0, self._round)

    def pump(self, most: int | None = None, inflight: int | None = None) -> None:
        """Dispatch what may go now (at most ``most``, while fewer than ``inflight`` run;
        default: while fewer than ``slots`` run); then a timer for what is due later."""
        if self.pumping:
            return
        self.pumping = True
        cap = self.slots if inflight is None else inflight
        left = -1 if most is None else most
        corked = []         # the answers of what this call releases leave in one write each
        try:
            sched = self.sched
            while sched.queued and self.inflight < cap and left:
                left -= 1
                now = self.clock()
                picked = sched.pick(now)
                if picked is None:
                    break
                flow, (conn, st, parked) = picked
                if not conn.corked:
                    conn.cork()
                    corked.append(conn)
                self._release(conn, st, flow.key, now - parked)
        finally:
            self.pumping = False
            for conn in corked:
                conn.uncork()
        self._arm()

    def _release(self, conn, st, key, waited: float = 0.0) -> None:
        if st.done or st.aborted or conn.closing:
            return
        if key is not None:
            st.qos = key
            self.inflight += 1
        if waited and st.stats_rows is not None:   # the wait counts as queue (module doc)
            g = st.t_grant or st.t_arr
            st.t_grant = g + waited
            st.t_exec = (st.t_exec or g) + waited
        conn._execute_now(st)           # its output goes out when ``pump`` uncorks it

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.sched.queued or self.inflight >= self.slots * (
                IN_FLIGHT_ROUNDS if self.rounds else 1):
            return
        due = self.sched.next_due()
        if due is not None:
            self.timer = self.call_later(max(0.0, due - self.clock()), self._fire)

    def _fire(self) -> None:
        self.timer = None
        if not self.rounds:
            self.pump()
        elif self.round_due is None:
            self._round()

    def throttled(self, now: float, after: float) -> list[str]:
        """VM keys held by their limit for more than ``after`` seconds and not yet told:
        marked told (again only after their queue emptied). Only a flow with commands
        waiting is held: one whose queue ran dry has gone idle (its stretch ends when it
        next has limit to spare)."""
        out = []
        for flow in self.sched.flows.values():
            if flow.queue and flow.limited_since and not flow.reported \
                    and now - flow.limited_since > after:
                flow.reported = True
                out.append(flow.key)
        return out
