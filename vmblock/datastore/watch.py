"""The owner's write hook on the ranges where a volume manager keeps its map, and the debounce
that turns a burst of such writes into one re-read (docs/datastores.md, "Detection").

``WatchedStore`` is the ``ExtentStore`` the server puts under every LUN: each write, WRITE SAME
or UNMAP does the store's work and then one range check, ``offset < watch_low or end >
watch_high``, outside every per-block loop. Until a scan says more, ``watch_low`` covers the
label sectors (``lvm.LABEL_SCAN_BYTES``) and nothing is watched at the end; a PV's scan widens
it to its metadata areas (the first one starts at 4 KiB, a second one lies at the end of the
device). A write in range calls ``touched`` (from the event loop or an executor thread).

``Debounce`` runs ``fire(key)`` once ``delay`` seconds have passed without another ``touch(key)``
(lvm2 writes its text, then the area header, then maybe the label: several commands), and
at the latest ``delay * MAX_DELAYS`` after the first touch, so a steady stream of writes cannot
hold the re-read off for ever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from vmblock.store.extent import ExtentStore

from .lvm import LABEL_SCAN_BYTES

NOTHING_ABOVE = 1 << 62         # watch_high when nothing at the end of the device is watched
MAX_DELAYS = 10                 # a re-read waits at most this many delays after the first touch


def thresholds(ranges: list[tuple[int, int]], size: int) -> tuple[int, int]:
    """(watch_low, watch_high) covering ``ranges`` (offset, length) of a ``size``-byte device:
    everything below the end of the ranges in its first half, everything from the start of
    those in its second half (where lvm2 puts a second metadata area)."""
    low, high = LABEL_SCAN_BYTES, NOTHING_ABOVE
    for off, n in ranges:
        if off < size // 2:
            low = max(low, off + n)
        else:
            high = min(high, off)
    return low, high


class WatchedStore(ExtentStore):
    """An ``ExtentStore`` that calls ``touched()`` after a write into its watched ranges."""

    def __init__(self, pool, map_id: int, block_size: int, touched: Callable[[], None]):
        super().__init__(pool, map_id, block_size)
        self.touched = touched
        self.watch_low = LABEL_SCAN_BYTES
        self.watch_high = NOTHING_ABOVE

    def write(self, offset: int, data: memoryview) -> None:
        """The store's write, then the range check."""
        ExtentStore.write(self, offset, data)
        if offset < self.watch_low or offset + len(data) > self.watch_high:
            self.touched()

    def write_same(self, offset: int, length: int, block: memoryview) -> None:
        """The store's WRITE SAME, then the range check."""
        ExtentStore.write_same(self, offset, length, block)
        if offset < self.watch_low or offset + length > self.watch_high:
            self.touched()

    def unmap(self, offset: int, length: int) -> None:
        """The store's UNMAP (a wiped label or area reads zeros), then the range check."""
        ExtentStore.unmap(self, offset, length)
        if offset < self.watch_low or offset + length > self.watch_high:
            self.touched()


class Debounce:
    """``fire(key)`` on the loop ``delay`` seconds after the last ``touch(key)`` (module
    docstring); ``touch`` may be called from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float,
                 fire: Callable[[str], None]):
        self.loop = loop
        self.delay = delay
        self.fire = fire
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.first: dict[str, float] = {}
        self.closed = False

    def touch(self, key: str) -> None:
        """A watched write landed on ``key``: (re)arm its timer, from any thread. Never
        raises into the write that called it (after ``close`` the loop may be gone)."""
        if self.closed:
            return
        try:
            self.loop.call_soon_threadsafe(self._arm, key)
        except RuntimeError:        # the loop closed under a write finishing in a thread
            pass

    def _arm(self, key: str) -> None:
        if self.closed:
            return
        now = time.monotonic()
        first = self.first.setdefault(key, now)
        old = self.timers.pop(key, None)
        if old is not None:
            old.cancel()
        wait = min(self.delay, max(first + self.delay * MAX_DELAYS - now, 0.0))
        self.timers[key] = self.loop.call_later(wait, self._fire, key)

    def _fire(self, key: str) -> None:
        self.timers.pop(key, None)
        self.first.pop(key, None)
        self.fire(key)

    def cancel(self, key: str) -> None:
        """Forget ``key`` (its vdisk is no longer served)."""
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.first.pop(key, None)

    def close(self) -> None:
        """Cancel every pending re-read; later touches are ignored."""
        self.closed = True
        for key in list(self.timers):
            self.cancel(key)
