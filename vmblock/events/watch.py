"""``vm_space_hog`` and ``vm_flash_hog``: the VMs that hold, or will soon hold, too much of
the pool or of their eviction group's flash.

Each ``check`` (every ``events.check_interval`` in a server, in the executor) takes every VM's
space by the quota's rule (``vmblock.store.quota``: distinct AUs its vdisks and snapshots
reference, shared or not) and compares it with the capacity tier:

* over ``events.hog_share`` of the tier (default 30%): a hog by share;
* else the VM growing fastest, if at that rate the tier's free space lasts less than
  ``events.hog_horizon`` (default 1 h): a hog by growth. The rate is over the checks of the
  last ``GROWTH_WINDOW`` seconds and only once they span ``GROWTH_MIN_SPAN``, so a burst (a
  guest installing, a copy) is not a trend.

An event is raised once per crossing: a VM stays a hog, silently, until a check finds it
under both conditions, its growth measured (``vm_space_hog_cleared``, info), and the next
crossing is news again.
The advice names the VM to move or trim. A restart is no crossing: a new watch's first
check takes as hogs the VMs whose newest recorded event of the two is ``vm_space_hog`` (in
the executor, as every check).

A check reads the VM, vdisk and snapshot records and the maps' mapped-AU counters: a bound
on each VM's charge (live mapped bytes plus what its snapshots mapped when taken). Only a VM
whose bound is over the share is counted exactly (numpy over its maps, frozen ones read from
the meta DB), and counted again only once its bound has moved by ``RECOUNT_SHIFT`` of the tier
since (a steady hog costs nothing per check); growth is measured on the bounds.

``FlashWatch`` looks at the flash cache's per-vdisk occupancy and read misses (copies of the
directory's arrays, ``FlashCache.snapshot``): in an eviction group whose vdisks belong to
several VMs, a VM holding more than ``FLASH_HOG_FACTOR`` times its even share of the group's
cached blocks while another VM of the group had read misses since the last check is a
``vm_flash_hog``, once per crossing. The advice: its own eviction group (or a lower share for
its group), or pinning what the others need.
"""

from __future__ import annotations

import collections
import time

from vmblock.cache.directory import COUNTERS
from vmblock.meta import events as meta_events
from vmblock.units import human_size

HOG = "vm_space_hog"
HOG_CLEARED = "vm_space_hog_cleared"

GROWTH_WINDOW = 600.0
GROWTH_MIN_SPAN = 60.0
# an exact count is reused while the VM's bound moved less than this share of the tier
RECOUNT_SHIFT = 0.01
# a VM holding more than this times its even share of its group's flash is a flash hog
FLASH_HOG_FACTOR = 1.5


class SpaceWatch:
    """The hogs seen by the last check and each VM's space then (for its growth)."""

    def __init__(self, pool, clock=time.monotonic):
        self.pool = pool
        self.clock = clock
        self.hogs: set[str] | None = None      # read from the events at the first check
        # VM uuid -> (its bound, its exact charge) when last counted exactly
        self.counted: dict[str, tuple[int, int]] = {}
        # VM uuid -> (clock, bytes) of the checks of the last GROWTH_WINDOW seconds
        self.samples: dict[str, collections.deque] = {}

    def bounds(self) -> dict[str, tuple[int, list[int], list[int]]]:
        """VM uuid -> (a bound on the bytes it is charged, its live and frozen map ids): the
        bytes its live maps map (counters) plus what its snapshots mapped when taken
        (their records), no map read."""
        pool, store = self.pool, self.pool.store
        out = {vm.uuid: [0, [], []] for vm in pool.vms()}
        for d in pool.vdisks():
            if d.vm in out:
                out[d.vm][0] += store.map_used_bytes(d.map_id)
                out[d.vm][1].append(d.map_id)
        for snap in pool.snapshots():
            if snap.vm in out:
                out[snap.vm][0] += sum(e["used_bytes"] for e in snap.disks)
                out[snap.vm][2].extend(e["map_id"] for e in snap.disks)
        return {uid: tuple(v) for uid, v in out.items()}

    def space(self, over: float = 0, slack: float = 0) -> dict[str, tuple[int, int]]:
        """VM uuid -> (its bound, the bytes it is charged by the quota's rule): counted
        exactly for the VMs whose bound is above ``over`` bytes, the others' bound. A VM's
        exact count
        is reused, moved by what its bound moved, while the bound is within ``slack`` bytes
        of what it was at that count."""
        store = self.pool.store
        out = {}
        counted = {}
        for uid, (bound, live, frozen) in self.bounds().items():
            if bound <= over:
                out[uid] = (bound, bound)
                continue
            last = self.counted.get(uid)
            if last is not None and abs(bound - last[0]) <= slack:
                out[uid] = (bound, last[1] + bound - last[0])
                counted[uid] = last
                continue
            out[uid] = (bound, store.quotas.distinct_aus(live, frozen) * store.au)
            counted[uid] = out[uid]
        self.counted = counted
        return out

    def check(self) -> list[dict]:
        """One check; the events it recorded."""
        pool = self.pool
        if self.hogs is None:
            self.hogs = recorded_hogs(pool)
        settings = pool.settings()
        share, horizon = settings.get("events.hog_share"), settings.get("events.hog_horizon")
        usage = pool.store.capacity_use()
        cap, free = usage["capacity_bytes"], usage["free_bytes"]
        now = self.clock()
        space = self.space(share * cap, RECOUNT_SHIFT * cap)
        rates = {}
        self.samples = {uid: self.samples.get(uid, collections.deque()) for uid in space}
        for uid, (bound, _) in space.items():
            samples = self.samples[uid]
            samples.append((now, bound))
            while now - samples[0][0] > GROWTH_WINDOW:
                samples.popleft()
            t0, b0 = samples[0]
            if now - t0 >= GROWTH_MIN_SPAN:
                rates[uid] = (bound - b0) / (now - t0)
        fastest = max(rates, key=rates.get, default=None)
        if fastest is not None and rates[fastest] <= 0:
            fastest = None
        names = {vm.uuid: vm.name for vm in pool.vms()}
        recorded = []
        for uid, (_, b) in space.items():
            name = names.get(uid)
            if name is None:
                continue
            message = None
            if cap and b > share * cap:
                message = (f"VM {name} holds {b / cap:.0%} of the capacity tier "
                           f"({human_size(b)} of {human_size(cap)}), over events.hog_share "
                           f"{share:.0%}")
            elif uid == fastest and free / rates[uid] < horizon:
                message = (f"VM {name} grows {human_size(int(rates[uid]))}/s: at that rate "
                           f"the pool's free {human_size(free)} is gone in "
                           f"{free / rates[uid] / 60:.0f} min (events.hog_horizon "
                           f"{horizon / 60:.0f} min)")
            if message is None:
                # cleared once a check can tell its growth too (a restart knows none yet)
                if uid in self.hogs and uid in rates:
                    self.hogs.discard(uid)
                    recorded.append(pool.record_event(
                        HOG_CLEARED, "info", f"VM {name} is no longer a space hog: it holds "
                        f"{b / cap if cap else 0:.0%} of the capacity tier ({human_size(b)})",
                        vm=name, used_bytes=b, capacity_bytes=cap))
                continue
            if uid in self.hogs:
                continue
            self.hogs.add(uid)
            recorded.append(pool.record_event(
                HOG, "warning", message, vm=name, used_bytes=b,
                capacity_bytes=cap, advice=f"move VM {name} to another pool, trim (UNMAP) "
                f"inside its guest or delete its old snapshots"))
        return recorded


def recorded_hogs(pool) -> set[str]:
    """The uuids of the VMs whose newest recorded ``vm_space_hog`` is not followed by a
    ``vm_space_hog_cleared``: hogs when the server stopped."""
    last: dict[str, str] = {}
    for e in meta_events.list_events(pool, 0, pending=False):
        if e["kind"] in (HOG, HOG_CLEARED) and e.get("vm"):
            last[e["vm"]] = e["kind"]
    return {vm.uuid for vm in pool.vms() if last.get(vm.name) == HOG}


class FlashWatch:
    """The flash hogs seen by the last check and each VM's read misses then."""

    def __init__(self, pool, cache):
        self.pool = pool
        self.cache = cache          # vmblock.cache.flash.FlashCache
        self.hogs: set[str] = set()
        self.misses: dict[str, int] = {}

    def check(self) -> list[dict]:
        """One check; the events it recorded."""
        snap = self.cache.snapshot()
        col = COUNTERS.index("read_misses")
        held: dict[int, dict[str, int]] = {}       # group slot -> VM -> cached blocks
        misses: dict[str, int] = {}
        group_of: dict[str, int] = {}
        for vid, (_, vm) in snap["names"].items():
            if vm is None:
                continue
            g = int(snap["vd_group"][vid])
            held.setdefault(g, {}).setdefault(vm, 0)
            held[g][vm] += int(snap["vd_used"][vid])
            misses[vm] = misses.get(vm, 0) + int(snap["vd_cnt"][vid, col])
            group_of[vm] = g
        missed = {vm for vm, n in misses.items() if n > self.misses.get(vm, n)}
        self.misses = misses
        recorded = []
        hogs = set()
        for g, vms in held.items():
            total = sum(vms.values())
            if len(vms) < 2 or not total:
                continue
            fair = total / len(vms)
            group = snap["groups"][g].name
            for vm, blocks in vms.items():
                starved = sorted(v for v in vms if v != vm and v in missed)
                if blocks <= FLASH_HOG_FACTOR * fair or not starved:
                    continue
                hogs.add(vm)
                if vm in self.hogs:
                    continue
                recorded.append(self.pool.record_event(
                    "vm_flash_hog", "warning",
                    f"VM {vm} holds {blocks / total:.0%} of eviction group {group}'s flash "
                    f"({blocks} of {total} blocks, {len(vms)} VMs) while "
                    f"{', '.join(starved)} miss", vm=vm, group=group, cached_blocks=blocks,
                    advice=f"put VM {vm} in an eviction group of its own (vmblock group "
                    f"create, group assign {vm} ...) or lower its group's share, or pin the "
                    f"vdisks of {', '.join(starved)}"))
        self.hogs = {vm for vm in self.hogs if vm in hogs} | hogs
        return recorded
