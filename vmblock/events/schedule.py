"""Automatic snapshots: ``vm set VM --snapshot-every 1h --snapshot-keep 24``.

A VM with ``snapshot_every`` gets a snapshot of all its vdisks at one instant (the server's
``vm snapshot``: writes in flight drained, one batch, so crash-consistent across them) named
``auto-<UTC time>`` (``auto-20261129T225500Z``), and then the oldest automatic snapshots
beyond ``snapshot_keep`` are deleted; a snapshot with any other name is never touched.

When a VM is first seen (a schedule just set, or the server started) or its schedule changed
(``every`` or ``keep``), its next slot follows from its newest automatic snapshot: due at once
when that is ``every`` old or older (or there is none), else ``every`` after it; and retention
applies at once (a lowered ``keep`` deletes the oldest automatic snapshots beyond it now, not
at the next slot). A missed slot is so taken once, never once per slot missed; then the next
is ``every`` from now. A snapshot or deletion that fails records ``snapshot_policy_failed``
once, until a snapshot succeeds again.

``tick`` does one round at the clock's time (tests call it with their own clock); ``due_in``
says when the next is due, which the server's loop sleeps until.
"""

from __future__ import annotations

import calendar
import inspect
import time

from vmblock.errors import AlreadyExists, InvalidArgument, VmblockError

AUTO_PREFIX = "auto-"
AUTO_FORMAT = "%Y%m%dT%H%M%SZ"


def auto_name(t: float) -> str:
    """The name of an automatic snapshot taken at ``t`` (UTC, to the second)."""
    return AUTO_PREFIX + time.strftime(AUTO_FORMAT, time.gmtime(t))


def check_manual_name(name: str) -> None:
    """Refuse a manual VM snapshot name the schedule owns (``auto-<UTC time>``): retention
    deletes the oldest of those, and never a manual snapshot."""
    if auto_time(name) is not None:
        raise InvalidArgument(f"snapshot name {name!r}: names {AUTO_PREFIX}<UTC time> are the "
                              f"snapshot schedule's (vm set --snapshot-every); choose another")


def auto_time(name: str) -> float | None:
    """When an automatic snapshot was taken, from its name; None for any other name."""
    if not name.startswith(AUTO_PREFIX):
        return None
    try:
        return float(calendar.timegm(time.strptime(name[len(AUTO_PREFIX):], AUTO_FORMAT)))
    except ValueError:
        return None


async def _done(result):
    """The result of a verb: awaited when the server's verb is a coroutine."""
    return await result if inspect.isawaitable(result) else result


class SnapshotSchedule:
    """The next slot of every VM with a schedule; ``take(vm, name)`` and ``delete(vm, name)``
    are the server's verbs (awaitables)."""

    def __init__(self, pool, take, delete, clock=time.time):
        self.pool = pool
        self.take = take
        self.delete = delete
        self.clock = clock
        self.next: dict[str, float] = {}    # VM uuid -> when its next snapshot is due
        self.policy: dict[str, tuple] = {}  # VM uuid -> (every, keep) its next was set by
        self.failing: set[str] = set()

    def _autos(self, vm: str) -> list:
        """The VM's automatic snapshots (VM snapshots named auto-...), oldest first."""
        snaps = [s for s in self.pool.snapshots(vm=vm)
                 if s.vdisk is None and auto_time(s.name) is not None]
        return sorted(snaps, key=lambda s: s.name)

    def due_in(self) -> float | None:
        """Seconds until the next slot of any VM (0 if one is due), None with none."""
        if not self.next:
            return None
        return max(0.0, min(self.next.values()) - self.clock())

    async def _retain(self, vm, keep: int | None) -> None:
        """Delete the VM's oldest automatic snapshots beyond ``keep``."""
        if keep:
            autos = self._autos(vm.name)
            for snap in autos[:max(0, len(autos) - keep)]:
                await _done(self.delete(vm.name, snap.name))

    async def tick(self) -> list[str]:
        """Take every snapshot due now and apply retention; the names taken."""
        now = self.clock()
        taken = []
        scheduled = [vm for vm in self.pool.vms() if vm.policies.get("snapshot_every")]
        uuids = {vm.uuid for vm in scheduled}
        self.next = {uid: t for uid, t in self.next.items() if uid in uuids}
        self.policy = {uid: p for uid, p in self.policy.items() if uid in uuids}
        for vm in scheduled:
            every = vm.policies["snapshot_every"]
            keep = vm.policies.get("snapshot_keep")
            fresh = self.policy.get(vm.uuid) != (every, keep)
            if fresh:       # first seen, or its schedule changed: the next slot from its snapshots
                self.policy[vm.uuid] = (every, keep)
                autos = self._autos(vm.name)
                last = auto_time(autos[-1].name) if autos else None
                self.next[vm.uuid] = now if last is None or now - last >= every else last + every
            due = now >= self.next[vm.uuid]
            if not due and not fresh:
                continue
            name = auto_name(now)
            try:
                if due:
                    self.next[vm.uuid] = now + every
                    try:
                        await _done(self.take(vm.name, name))
                        taken.append(name)
                    except AlreadyExists:
                        pass        # this second's snapshot is there already
                await self._retain(vm, keep)
            except (VmblockError, OSError) as e:
                if vm.uuid not in self.failing:
                    self.failing.add(vm.uuid)
                    what = (f"automatic snapshot {name}" if due else
                            "deleting old automatic snapshots")
                    self.pool.record_event(
                        "snapshot_policy_failed", "error",
                        f"{what} of VM {vm.name} failed: {e}", vm=vm.name,
                        advice="free space in the pool (vmblock pool show) or change the "
                        "schedule with vmblock vm set --snapshot-every/--snapshot-keep")
                continue
            if due:
                self.failing.discard(vm.uuid)
        return taken
