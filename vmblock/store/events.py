"""Store events (low space, a full tier, faults) queued for the next commit, and the low-space
policy that raises them.

Low-space thresholds and events are about the capacity tier; a full flash tier fails the
writes of flash vdisks that need new AUs the same way (27h/07h).

Every event has the record shape of ``Pool.record_event``: ``{id, time, kind, severity,
message, vm?, advice?, ...}``, its severity, message and advice made here from its kind
(``KINDS``); ``id`` is its meta DB key after ``event/`` (``layout.put_event``). Events are
written with the next commit (or metadata transaction) and handed to ``listeners`` once that
write is durable (``committed``), from the committing thread.
"""

from __future__ import annotations

import logging
import time

from vmblock.store.alloc import Allocator
from vmblock.store.layout import TIER_CAPACITY, TIER_NAMES
from vmblock.units import format_size

log = logging.getLogger(__name__)

LOW_SPACE_ADVICE = ("delete old snapshots, trim (UNMAP) inside the guests, move a VM to another "
                    "pool or grow the capacity tier; `vmblock events --kind vm_space_hog` "
                    "names the VMs using most")
# a kind without a row: its name as the message
DEFAULT_KIND = ("warning", lambda e: e["kind"].replace("_", " "), None)
# kind -> (severity, message from the event's fields, advice or None)
KINDS = {
    "low_space": ("warning", lambda e: f"capacity tier {e['used_pct']}% used (threshold "
                  f"{e['threshold_pct']}%)", LOW_SPACE_ADVICE),
    "pool_full": ("critical", lambda e: f"{e['tier']} tier full: writes that need new space "
                  f"fail (27h/07h)", LOW_SPACE_ADVICE),
    "meta_fault": ("critical", lambda e: f"meta DB commit failed ({e['error']}): writes that "
                   f"need it are refused until it works again", "check the pool's disk"),
    "tier_fault": ("critical", lambda e: f"{e['where']} tier sync failed ({e['error']}): "
                   f"writes are refused until it works again", "check the tier's device"),
    "meta_recovered": ("info", lambda e: f"meta DB commits work again after {e['fault_s']} s",
                       None),
    "tier_recovered": ("info", lambda e: f"{e['where']} tier works again after "
                       f"{e['fault_s']} s", None),
    "vm_quota": ("error", lambda e: f"VM {e['vm']} reached its space quota "
                 f"({format_size(e['quota_bytes'])}): writes that need new space fail "
                 f"(27h/07h)",
                 "raise it with `vmblock vm set VM --space-quota SIZE`, delete its old "
                 "snapshots or trim inside the guest"),
}


class StoreEvents:
    """The events not committed yet and the low-space level last seen; under the store lock."""

    def __init__(self, space: Allocator, thresholds: tuple[int, ...]):
        self.space = space
        self.thresholds = tuple(sorted(thresholds))
        self.queue: list[dict] = []
        self.level = self.current_level()
        self.full = False       # a write already failed for want of space (one event for it)
        # called with each event once its commit is durable (the pool's event listeners)
        self.listeners: list = []

    def record(self, kind: str, **fields) -> None:
        """Queue an event of a kind of ``KINDS``; every event says how full the capacity
        tier is."""
        space = self.space
        t = time.time()
        event = dict(time=t, kind=kind, used_bytes=space.t_used[TIER_CAPACITY] * space.au,
                     capacity_bytes=space.capacity.size_bytes, **fields)
        severity, message, advice = KINDS.get(kind, DEFAULT_KIND)
        event.update(id=f"{int(t * 1e6):020d}/{kind}", severity=severity,
                     message=message(event))
        if advice is not None:
            event["advice"] = advice
        self.queue.append(event)

    def committed(self, events: list[dict]) -> None:
        """``events`` are durable: hand each to the listeners (errors logged, not raised:
        the commit is done)."""
        for event in events:
            for listener in list(self.listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("event listener failed on %s", event.get("kind"))

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
