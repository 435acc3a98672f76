"""The cache vdisks of a shared datastore LU: which cache vdisk id serves which byte run.

A LUN holding an LVM2 volume group (docs/datastores.md) is one ``CachedStore``, but each
logical volume on it belongs to a VM of its own, and that VM's eviction group and pins should
decide how the LV's blocks are cached. So each LV (sub-vdisk) gets a cache vdisk id of its own
(``FlashCache.attach`` with the key ``<vdisk uuid>/<vg>/<lv>``) with its own group, pin and
counters, and ``CacheSplit`` tells the store which id a byte run goes to: increasing first
bytes from 0, one id per run; the LUN's own id for the label, metadata and free extents.

Why it stays coherent: a cache key is (id, block), and each id only ever reads and writes the
bytes of its own runs. A cache block straddling two runs (never with LVM's 1 MiB-aligned
extents and the default 64 KiB block) may be cached under both ids, each copy then serving
and updating only its own run's bytes, so neither is ever read stale. When the runs change (a
re-read of the VG), bytes move between ids: the server then drops every cached block of the
LU's old ids before installing the new split (``Server.cache_split``).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from vmblock.store.ranges import runs


@dataclass(frozen=True)
class CacheSplit:
    """The runs of one LU (module docstring): ``starts[i]`` is the first byte of run ``i``,
    ``vids[i]`` its cache vdisk id."""

    starts: tuple[int, ...]
    vids: tuple[int, ...]

    def __post_init__(self):
        if (not self.starts or self.starts[0] != 0 or len(self.starts) != len(self.vids)
                or any(a >= b for a, b in zip(self.starts, self.starts[1:]))):
            raise ValueError("a cache split needs increasing first bytes from 0, one id each")

    @classmethod
    def of_ranges(cls, ranges: list[tuple[int, int, int]], rest: int) -> CacheSplit | None:
        """The split of byte ranges ``[(first, end, vid)]`` (sorted, not overlapping), the
        bytes in none going to ``rest``; None when every byte is ``rest``'s."""
        starts, vids = runs(rest, (mark for first, end, vid in ranges
                                   for mark in ((first, vid), (end, rest))))
        if len(vids) == 1:
            return None
        return cls(starts, vids)

    def pieces(self, offset: int, length: int) -> list[tuple[int, int, int]]:
        """``[(vid, start, end)]`` of the I/O ``[offset, offset + length)``: the parts in each
        run, ``start``/``end`` relative to ``offset``."""
        starts, vids = self.starts, self.vids
        i = bisect_right(starts, offset) - 1
        out = []
        pos, end = offset, offset + length
        while pos < end:
            nxt = starts[i + 1] if i + 1 < len(starts) else end
            stop = min(end, nxt)
            out.append((vids[i], pos - offset, stop - offset))
            pos = stop
            i += 1
        return out

    def blocks_by_vid(self, blocks: np.ndarray, block_size: int) -> dict[int, np.ndarray]:
        """Cache blocks (numbers of ``block_size`` bytes) by the id of the run their first byte
        is in (a preload's blocks)."""
        idx = np.searchsorted(np.asarray(self.starts, np.int64), blocks * block_size,
                              side="right") - 1
        vids = np.asarray(self.vids, np.int64)[idx]
        return {int(v): blocks[vids == v] for v in np.unique(vids)}
