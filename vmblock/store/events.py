"""Store events (low space, a full tier, faults) queued for the next commit, and the low-space
policy that raises them.

Low-space thresholds and events are about the capacity tier; a full flash tier fails the
writes of flash vdisks that need new AUs the same way (27h/07h).
"""

from __future__ import annotations

import logging
import time

from vmblock.store.alloc import Allocator
from vmblock.store.layout import TIER_CAPACITY, TIER_NAMES

log = logging.getLogger(__name__)


class StoreEvents:
    """The events not committed yet and the low-space level last seen; under the store lock."""

    def __init__(self, space: Allocator, thresholds: tuple[int, ...]):
        self.space = space
        self.thresholds = tuple(sorted(thresholds))
        self.queue: list[dict] = []
        self.level = self.current_level()
        self.full = False       # a write already failed for want of space (one event for it)

    def record(self, kind: str, **fields) -> None:
        """Queue an event; every event says how full the capacity tier is."""
        space = self.space
        self.queue.append(dict(time=time.time(), kind=kind,
                               used_bytes=space.t_used[TIER_CAPACITY] * space.au,
                               capacity_bytes=space.capacity.size_bytes, **fields))

    def take(self) -> list[dict]:
        """The queued events, for a commit to write."""
        events, self.queue = self.queue, []
        return events

    def put_back(self, events: list[dict]) -> None:
        """Events of a commit that failed, ahead of those queued since."""
        self.queue[:0] = events

    def current_level(self) -> int:
        """The highest threshold the capacity tier's use has reached (0: none)."""
        pct = self.space.used_pct(TIER_CAPACITY)
        return max((t for t in self.thresholds if pct >= t), default=0)

    def check_level(self) -> None:
        """Record a low-space event when usage crosses a threshold upwards (under lock)."""
        level = self.current_level()
        if level > self.level:
            pct = self.space.used_pct(TIER_CAPACITY)
            self.record("low_space", threshold_pct=level, used_pct=round(pct, 2))
            log.warning("capacity tier %.1f%% used (threshold %d%%)", pct, level)
        self.level = level

    def lower_level(self) -> None:
        """After frees: a later crossing of a threshold is news again (under lock)."""
        self.level = min(self.level, self.current_level())

    def tier_full(self, t: int) -> None:
        """A write found tier ``t`` full: record it once until a write gets space again."""
        if not self.full:
            self.record("pool_full", threshold_pct=100, tier=TIER_NAMES[t],
                        used_pct=round(self.space.used_pct(t), 2))
            log.warning("%s tier full: failing writes that need space", TIER_NAMES[t])
            self.full = True
