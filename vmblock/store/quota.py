"""Space quotas: a cap on the AUs a group of maps (one VM's live vdisks and snapshots) holds,
checked where allocation happens.

The accounting rule: a group is charged for every distinct AU that any of its maps references
-- its live maps and its snapshots' frozen maps -- shared with another group or not. So a
snapshot costs nothing when taken and grows by one AU per copy-on-write of an AU it shares; a
clone starts charged for everything it shares with its source; an UNMAP frees charge only for
AUs no snapshot of the group still holds.

The data path keeps the charge exact on the way up at no cost: a write that needs ``need``
new AUs (first write, copy-on-write) adds exactly ``need`` distinct AUs to its group. On the
way down (UNMAP, a snapshot deleted, a revert) the charge is only marked stale; it is counted
again (the union of the group's AUs, numpy over the maps' entries) only when an allocation
would cross the limit, so the per-write work is one dict lookup and an addition. The frozen
maps' AUs never change and are kept per map (``frozen``), read once from the meta DB outside
the store lock.

A group may also hold AU ranges of other maps (``ranges``: the LVs of a VM on a shared
datastore LUN, docs/datastores.md): it is charged for the distinct AUs those ranges of the
live maps reference, and a write into such a range that needs new AUs is admitted against
that group as well as against the group of the whole map (the LUN's own VM), each new AU
charged to the range it lies in (``by_range``: per map, sorted first vAUs and their group).

``admit`` runs under the store lock; ``set_groups`` takes it itself.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_right

import numpy as np

from vmblock.native import extent as extent_kernels
from vmblock.store.backend import SpaceExhausted
from vmblock.store.events import StoreEvents
from vmblock.store.maps import LiveMaps
from vmblock.units import format_size

log = logging.getLogger(__name__)


class QuotaExceeded(SpaceExhausted):
    """A write needed new AUs beyond its VM's space quota: DATA PROTECT, SPACE ALLOCATION
    FAILED WRITE PROTECT (27h/07h) for that VM only (an ENOSPC like ``SpaceExhausted``)."""


class QuotaGroup:
    """One quota: who (``key``, ``name``), the cap in AUs, its maps and what it is charged."""

    __slots__ = ("key", "name", "limit", "live", "frozen", "ranges", "charged", "stale",
                 "over")

    def __init__(self, key: str, name: str, limit: int, live: list[int], frozen: list[int],
                 ranges: list[tuple[int, int, int]] = ()):
        self.key = key
        self.name = name
        self.limit = limit          # AUs
        self.live = live            # live map ids (the group's vdisks)
        self.frozen = frozen        # frozen map ids (its snapshots)
        self.ranges = list(ranges)  # (live map id, first vAU, end vAU): its LVs on shared LUNs
        self.charged = 0            # AUs charged; exact unless ``stale``
        self.stale = True
        self.over = False           # a write was refused; the next crossing is news again

    def dump(self, au: int) -> dict:
        """The quota and its charge in bytes, for ``vm show``."""
        return {"limit_bytes": self.limit * au, "charged_bytes": self.charged * au,
                "over": self.over}


class Quotas:
    """The quota groups of a store and the live map -> group index the data path reads."""

    def __init__(self, live: LiveMaps, events: StoreEvents, lock: threading.Lock, au: int):
        self.live = live
        self.events = events
        self.lock = lock
        self.au = au
        self.groups: dict[str, QuotaGroup] = {}
        self.by_map: dict[int, QuotaGroup] = {}
        # live map id -> (first vAUs, their group or None): the groups of ranges (``ranges``)
        self.by_range: dict[int, tuple[list[int], list[QuotaGroup | None]]] = {}
        self._frozen: dict[int, np.ndarray] = {}    # frozen map id -> its AUs, unique

    def set_groups(self, specs: dict[str, tuple]) -> None:
        """Replace the groups: key -> (name, limit in bytes, live map ids, frozen map ids[,
        ranges: (live map id, first vAU, end vAU), ...]); every charge is counted again.
        Reads frozen maps from the meta DB outside the lock."""
        needed = {m for spec in specs.values() for m in spec[3]}
        for mid in needed - self._frozen.keys():
            self._frozen[mid] = np.unique(self.live.entries(mid)[1])
        for mid in set(self._frozen) - needed:
            del self._frozen[mid]
        with self.lock:
            old = self.groups
            self.groups = {}
            for key, (name, limit, live, frozen, *ranges) in specs.items():
                g = QuotaGroup(key, name, limit // self.au, live, frozen,
                               ranges[0] if ranges else ())
                if key in old:
                    g.over = old[key].over
                self._count(g)
                self.groups[key] = g
            self.by_map = {mid: g for g in self.groups.values() for mid in g.live}
            self.by_range = {}
            spans = sorted((lo, hi, mid, g.key) for g in self.groups.values()
                           for mid, lo, hi in g.ranges)
            for lo, hi, mid, key in spans:
                starts, owners = self.by_range.setdefault(mid, ([0], [None]))
                for at, owner in ((max(lo, starts[-1]), self.groups[key]), (hi, None)):
                    if at == starts[-1]:
                        owners[-1] = owner
                    elif at > starts[-1]:
                        starts.append(at)
                        owners.append(owner)

    def _count(self, g: QuotaGroup) -> None:
        """The exact charge of ``g`` (under the lock): distinct AUs of all its maps."""
        parts = [self._frozen[m] for m in g.frozen if m in self._frozen]
        parts += [self.live.entries(m)[1] for m in g.live if m in self.live.maps]
        for mid, lo, hi in g.ranges:
            if mid in self.live.maps:
                vaus, paus = self.live.entries(mid)
                parts.append(paus[(vaus >= lo) & (vaus < hi)])
        g.charged = int(len(np.unique(np.concatenate(parts)))) if parts else 0
        g.stale = False

    def distinct_aus(self, live: list[int], frozen: list[int]) -> int:
        """AUs referenced by any of the maps ``live`` and ``frozen`` (the accounting rule for
        a VM without a quota too): frozen maps read from the meta DB now, outside the lock
        (a quota group's are kept), the live ones under it."""
        parts = [self._frozen[m] if m in self._frozen else self.live.entries(m)[1]
                 for m in frozen]
        with self.lock:
            parts += [self.live.entries(m)[1] for m in live if m in self.live.maps]
        return int(len(np.unique(np.concatenate(parts)))) if parts else 0

    def touched(self, mid: int) -> None:
        """AUs of live map ``mid`` were let go (UNMAP): its group's charge may have fallen
        (under the lock)."""
        g = self.by_map.get(mid)
        if g is not None:
            g.stale = True
        if mid in self.by_range:
            for g in self.by_range[mid][1]:
                if g is not None:
                    g.stale = True

    def admit(self, mid: int, need: int, first: int = 0, kinds: np.ndarray | None = None
              ) -> None:
        """Charge ``need`` new AUs of live map ``mid`` to its group, or raise QuotaExceeded
        (under the lock, before the allocation; nothing is changed then). The first refusal
        after the group was under its limit records a ``vm_quota`` event. ``first``,
        ``kinds``: the write's first vAU and the kind of each vAU from it (``KIND_*`` of
        ``vmblock.native.extent``): a map with range groups (``by_range``) charges each
        unmapped vAU it maps to the group of its range too. A copy on write is not charged
        there: a range group counts the live map's AUs only, and one replaces another."""
        g = self.by_map.get(mid)
        if mid not in self.by_range or kinds is None:
            if g is not None:
                self._check(g, need)
                g.charged += need
                g.over = False
            return
        needs: dict[QuotaGroup, int] = {g: need} if g is not None else {}
        starts, owners = self.by_range[mid]
        for i in np.flatnonzero(kinds == extent_kernels.KIND_UNMAPPED).tolist():
            at = bisect_right(starts, first + i) - 1
            r = owners[at] if at >= 0 else None
            if r is not None and r is not g:
                needs[r] = needs.get(r, 0) + 1
        for r, n in needs.items():          # all or nothing
            self._check(r, n)
        for r, n in needs.items():
            r.charged += n
            r.over = False

    def _check(self, g: QuotaGroup, need: int) -> None:
        """Raise QuotaExceeded if ``need`` more AUs would take ``g`` past its limit."""
        if g.charged + need > g.limit and g.stale:
            self._count(g)
        if g.charged + need <= g.limit:
            return
        if not g.over:
            g.over = True
            self.events.record("vm_quota", vm=g.name, quota_bytes=g.limit * self.au,
                               charged_bytes=g.charged * self.au)
            log.warning("VM %s at its space quota (%d AUs): refusing writes that need "
                        "new space", g.name, g.limit)
        raise QuotaExceeded(f"VM {g.name} is at its space quota "
                            f"({format_size(g.limit * self.au)})")

    def report(self, key: str) -> dict | None:
        """The quota of group ``key`` in bytes, counted now; None when it has none."""
        with self.lock:
            g = self.groups.get(key)
            if g is None:
                return None
            if g.stale:
                self._count(g)
            return g.dump(self.au)
