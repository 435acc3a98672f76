"""What each live map uses, read from its leaf keys in the meta DB without opening the store.

Opening the store (``PoolStore``) loads every map into the leaf arena and rebuilds the
reference counts: the data path's work, with numpy and the Numba kernels. A listing (``vm
list``, ``vdisk list``) on a pool no server runs needs only how many AUs each live map has
mapped on each tier, and the leaf keys say that directly: they are what the store would load,
so the figures are exact and crash-consistent with no count of their own to keep (``pool
check`` compares the keys with the loaded maps).

``LeafCensus.tier_bytes`` counts as ``LiveMaps.create`` loads: an entry is mapped when it is
not ``UNMAPPED``, leaves past the map's size and entries of the last leaf past its last vAU
are left out, and an entry's tier is the one its leaf stores. It needs no numpy: a leaf
none of whose entries has UNMAPPED's top byte and none on flash is all mapped (one
``bytes.count`` of every fourth byte); else its AUs are counted by ``array.count``, and entry
by entry only in a leaf with flash AUs. Pools that still hold the old per-AU keys have no census
(``read_census`` gives None): only opening the store turns them into leaves (``migrate``).
"""

from __future__ import annotations

import sys
from array import array

from vmblock.errors import PoolError
from vmblock.store.layout import (KEY_LEAF, KEY_MAP, LEAF_AUS, LEAF_VALUE_BYTES, TIER_CAPACITY,
                                  TIER_FLASH, TIER_NAMES, UNMAPPED, n_vaus, parse_leaf_key)

_AUS_BYTES = LEAF_AUS * 4       # a leaf value: LEAF_AUS x u32le AUs, then LEAF_AUS tier bytes
_U32 = next(code for code in "IL" if array(code).itemsize == 4)     # array's uint32


def _leaf_use(value: bytes, entries: int) -> tuple[int, int]:
    """(mapped, on flash) among the first ``entries`` entries of a leaf value."""
    tiers = value[_AUS_BYTES:_AUS_BYTES + entries]
    if not value[3:entries * 4:4].count(0xFF) and not tiers.count(TIER_FLASH):
        return entries, 0       # no entry's top byte is UNMAPPED's: all mapped, none on flash
    aus = array(_U32, value[:entries * 4])
    if sys.byteorder != "little":
        aus.byteswap()
    mapped = entries - aus.count(UNMAPPED)
    if not tiers.count(TIER_FLASH):
        return mapped, 0
    return mapped, sum(1 for a, t in zip(aus, tiers) if t == TIER_FLASH and a != UNMAPPED)


class LeafCensus:
    """Every leaf key of the meta DB, read once, by map; asked per map (and its size), it
    counts that map's leaves."""

    def __init__(self, db, au: int):
        self.au = au
        self.leaves: dict[int, list[tuple[int, bytes]]] = {}    # map id -> (leaf, value)
        for key, value in db.scan(KEY_LEAF):
            if len(value) != LEAF_VALUE_BYTES:
                raise PoolError("meta DB holds extent-map leaves of the wrong size")
            mid, leaf = parse_leaf_key(key)
            self.leaves.setdefault(mid, []).append((leaf, value))

    def tier_bytes(self, mid: int, size_bytes: int) -> dict[str, int]:
        """Bytes map ``mid``, ``size_bytes`` long, maps on each tier as its keys hold it."""
        nv = n_vaus(size_bytes, self.au)
        total = flash = 0
        for leaf, value in self.leaves.get(mid, ()):
            entries = min(nv - leaf * LEAF_AUS, LEAF_AUS)
            if entries <= 0:
                break           # leaves sort by number: the rest are past the size too
            m, f = _leaf_use(value, entries)
            total += m
            flash += f
        return {TIER_NAMES[TIER_CAPACITY]: (total - flash) * self.au,
                TIER_NAMES[TIER_FLASH]: flash * self.au}


def read_census(db, au: int) -> LeafCensus | None:
    """The census of the meta DB ``db``'s leaf keys (maps of ``au``-byte AUs); None when the
    pool still has old per-AU map keys (the store migrates them when it opens)."""
    if db.scan(KEY_MAP):
        return None
    return LeafCensus(db, au)
