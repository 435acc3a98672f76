"""What each live map uses, read from its leaf keys in the meta DB without opening the store.

Opening the store (``PoolStore``) loads every map into the leaf arena and rebuilds the
reference counts: the data path's work, with the Numba kernels. A listing (``vm list``,
``vdisk list``) on a pool no server runs needs only how many AUs each live map has mapped on
each tier, and the leaf keys say that directly: they are what the store would load, so the
figures are exact and crash-consistent with no count of their own to keep.

``LeafCensus.tier_bytes`` counts as ``LiveMaps.create`` loads: an entry is mapped when it is
not ``UNMAPPED``, leaves past the map's size and entries of the last leaf past its last vAU
are left out, and an entry's tier is the one its leaf stores. Pools that still hold the old
per-AU keys have no census (``read_census`` gives None): only opening the store turns them
into leaves (``migrate``).
"""

from __future__ import annotations

import numpy as np

from vmblock.native.leaf import LEAF_AUS
from vmblock.store.layout import (KEY_MAP, TIER_CAPACITY, TIER_FLASH, TIER_NAMES, UNMAPPED,
                                  n_vaus, scan_leaves)


class LeafCensus:
    """Every leaf key of the meta DB, read once, and per leaf its mapped entries on each
    tier; asked per map (and its size), it adds up that map's leaves."""

    def __init__(self, db, au: int):
        self.au = au
        mids, slots, file_aus, tiers = scan_leaves(db)
        self.slots = slots.astype(np.int64)
        self.mapped = file_aus != UNMAPPED
        self.flash = self.mapped & (tiers == TIER_FLASH)
        self.leaf_mapped = self.mapped.sum(axis=1, dtype=np.int64)
        self.leaf_flash = self.flash.sum(axis=1, dtype=np.int64)
        # map id -> its leaves [a, b) (keys sort by map id, then leaf)
        ids, first = np.unique(mids, return_index=True)
        ends = np.append(first[1:], len(mids))
        self.spans = {int(m): (int(a), int(b)) for m, a, b in zip(ids, first, ends)}

    def tier_bytes(self, mid: int, size_bytes: int) -> dict[str, int]:
        """Bytes map ``mid``, ``size_bytes`` long, maps on each tier as its keys hold it."""
        total = flash = 0
        span = self.spans.get(mid)
        if span is not None:
            a, b = span
            nv = n_vaus(size_bytes, self.au)
            whole, part = divmod(nv, LEAF_AUS)
            slots = self.slots[a:b]
            inside = slots < whole
            total = int(self.leaf_mapped[a:b][inside].sum())
            flash = int(self.leaf_flash[a:b][inside].sum())
            i = a + int(np.searchsorted(slots, whole))
            if part and i < b and self.slots[i] == whole:     # the last leaf, partly inside
                total += int(self.mapped[i, :part].sum())
                flash += int(self.flash[i, :part].sum())
        return {TIER_NAMES[TIER_CAPACITY]: (total - flash) * self.au,
                TIER_NAMES[TIER_FLASH]: flash * self.au}


def read_census(db, au: int) -> LeafCensus | None:
    """The census of the meta DB ``db``'s leaf keys (maps of ``au``-byte AUs); None when the
    pool still has old per-AU map keys (the store migrates them when it opens)."""
    if db.scan(KEY_MAP):
        return None
    return LeafCensus(db, au)
