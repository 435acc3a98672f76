"""The live extent maps of a pool's vdisks: two-level sparse maps in one shared leaf arena.

Each live map is an L1 (``uint32``, one entry per ``LEAF_AUS`` vAUs: a leaf number, 0 = none)
over the pool's *leaf arena* (``uint32`` global physical AUs, ``LEAF_AUS`` per leaf, leaf 0
all ``UNMAPPED``); the layout and the kernels that search it are in
``vmblock.native.extent``. Memory follows mapped data, not vdisk size: a leaf (1 KiB) is
taken on the first mapping in its 16 MiB of vdisk and given back when UNMAP empties it; an
L1 costs 4 bytes per 16 MiB of vdisk size, in pages that stay untouched (so cost nothing)
until a leaf of theirs is used.

The leaf arena and the L1 arena are ``SharedArray``s (memfds mapped shared, reserved large,
never moved, the files grown as leaves and L1s are taken): another process given ``leaf_fd``/``l1_fd`` maps the same pages and, with a
map's ``l1_slot`` (offset and length in the L1 arena), looks it up read-only.

Everything here runs under the store lock, except that the data path reads L1s and leaves
without it (one-AU I/O). So a leaf or L1 slice that stops being used is not reused until
every I/O that was in flight then has finished (``limbo``, like the allocator's held AUs); a
new leaf is filled before an L1 entry points at it; an entry changes only after the data it
points at is written.
"""

from __future__ import annotations

import errno
from collections import deque

import numpy as np

from vmblock.errors import PoolError
from vmblock.native import extent as extent_kernels
from vmblock.native.extent import L1_DTYPE, LEAF_AUS, LEAF_BITS, LEAF_MASK, MAP_DTYPE
from vmblock.store.alloc import Allocator
from vmblock.store.layout import (
    TIER_CAPACITY,
    TIER_NAMES,
    UNMAPPED,
    leaf_values,
    n_vaus,
    scan_leaves,
)
from vmblock.store.shm import SharedArray

# Leaves the arena can hold: 64 GiB of address space (pages are used only when touched),
# 4 G mapped AUs (256 TiB of live maps at 64 KiB AUs).
LEAF_RESERVE = 1 << 26
# L1 entries: 4 GiB of address space, vdisks of 16 PiB in all (L1s are rounded up to powers
# of two, so half that in the worst case).
L1_RESERVE = 1 << 30


class LiveMaps:
    """Every live map (an L1 view into the L1 arena, see the module docstring) by map id,
    each vdisk's size, mapped vAUs and the tier its new allocations go to.

    The dicts are never replaced, only changed under the store lock; an L1 view is replaced
    whole (resize, revert), so a reader that got it keeps a consistent view while its I/O is
    in flight.
    """

    def __init__(self, db, space: Allocator):
        self.db = db
        self.space = space
        self.au = space.au
        self.arena = SharedArray("vmblock-leaves", MAP_DTYPE, LEAF_RESERVE * LEAF_AUS)
        self.leaves = self.arena.array
        self.rows = self.leaves.reshape(-1, LEAF_AUS)
        self.arena.ensure(LEAF_AUS)
        self.rows[0] = UNMAPPED
        self.leaf_top = 1                       # leaves below it have been used
        self.free_leaves: list[int] = []
        self.l1_arena = SharedArray("vmblock-l1", L1_DTYPE, L1_RESERVE)
        self.l1_top = 0
        self.l1_free: dict[int, list[int]] = {}     # capacity -> offsets of free slices
        self.l1_at: dict[int, tuple[int, int]] = {}  # map id -> (offset, capacity)
        # leaves and L1 slices no longer used, with the I/O in flight when they went and the
        # worker processes' fence mark (Allocator.mark)
        self.limbo: deque[tuple[set[int], list[int], list[tuple[int, int]], int]] = deque()
        self.maps: dict[int, np.ndarray] = {}
        self.sizes: dict[int, int] = {}
        self.mapped: dict[int, int] = {}
        # new allocations of a live map go to its vdisk's tier (TIER_CAPACITY when absent)
        self.tiers: dict[int, int] = {}

    # --- shared memory ------------------------------------------------------------------------

    @property
    def leaf_fd(self) -> int:
        """The memfd of the leaf arena (``LEAF_RESERVE * LEAF_AUS`` uint32)."""
        return self.arena.fd

    @property
    def l1_fd(self) -> int:
        """The memfd of the L1 arena (``L1_RESERVE`` uint32)."""
        return self.l1_arena.fd

    def l1_slot(self, mid: int) -> tuple[int, int]:
        """(offset in the L1 arena, L1 entries) of the live map ``mid``."""
        return self.l1_at[mid][0], len(self.maps[mid])

    def leaf_count(self) -> int:
        """Leaves in use by live maps (or waiting in limbo)."""
        return self.leaf_top - 1 - len(self.free_leaves)

    def close(self) -> None:
        """Close the arenas' memfds."""
        self.arena.close()
        self.l1_arena.close()

    # --- leaves and L1 slices -----------------------------------------------------------------

    def reclaim(self) -> None:
        """Reuse leaves and L1 slices once no I/O that could still read them is in flight."""
        inflight = self.space.inflight
        while (self.limbo and self.limbo[0][0].isdisjoint(inflight)
               and self.space.passed(self.limbo[0][3])):
            _, leaves, slices, _ = self.limbo.popleft()
            self.free_leaves.extend(leaves)
            for off, cap in slices:
                self.l1_arena.zero(off, off + cap)
                self.l1_free.setdefault(cap, []).append(off)

    def _retire(self, leaves: list[int], slices: list[tuple[int, int]]) -> None:
        if leaves or slices:
            self.limbo.append((self.space.inflight.copy(), leaves, slices, self.space.mark()))

    def _take_leaves(self, k: int) -> np.ndarray:
        """``k`` leaf numbers, contents undefined."""
        if len(self.free_leaves) < k:
            self.reclaim()
        reuse = min(k, len(self.free_leaves))
        got = self.free_leaves[len(self.free_leaves) - reuse:]
        del self.free_leaves[len(self.free_leaves) - reuse:]
        bump = k - reuse
        if bump:
            try:
                if self.leaf_top + bump > LEAF_RESERVE:
                    raise OSError(errno.ENOSPC, f"{LEAF_RESERVE} leaves at most")
                self.arena.ensure((self.leaf_top + bump) * LEAF_AUS)
            except OSError as e:
                self.free_leaves.extend(got)
                raise PoolError(f"the extent-map leaf arena cannot grow: {e.strerror}") \
                    from None
        ids = np.concatenate([np.array(got, dtype=np.int64),
                              np.arange(self.leaf_top, self.leaf_top + bump, dtype=np.int64)])
        self.leaf_top += bump
        return ids

    def _new_l1(self, n: int) -> tuple[int, int, np.ndarray]:
        """(offset, capacity, view of n zeros) of a new L1 slice."""
        cap = 1 << max(n - 1, 0).bit_length()
        free = self.l1_free.get(cap)
        if not free:
            self.reclaim()
            free = self.l1_free.get(cap)
        if free:
            off = free.pop()
        else:
            off = self.l1_top
            try:
                if off + cap > L1_RESERVE:
                    raise OSError(errno.ENOSPC, f"{L1_RESERVE} entries at most")
                self.l1_arena.ensure(off + cap)
            except OSError as e:
                raise PoolError(f"the extent-map L1 arena cannot grow: {e.strerror}") \
                    from None
            self.l1_top += cap
        return off, cap, self.l1_arena.array[off:off + n]

    # --- whole maps ---------------------------------------------------------------------------

    def create(self, mid: int, size: int, slots: np.ndarray | None = None,
               rows: np.ndarray | None = None) -> None:
        """A new live map of ``size`` bytes holding leaves ``rows`` (global AUs) at L1 entries
        ``slots`` (nothing mapped when None); entries past the size are dropped."""
        nv = n_vaus(size, self.au)
        n = extent_kernels.n_leaves(nv)
        off, cap, l1 = self._new_l1(n)
        mapped = 0
        if rows is not None and len(rows):
            keep = slots < n
            slots, rows = slots[keep].astype(np.int64), rows[keep]
            if nv % LEAF_AUS and len(slots) and slots[-1] == n - 1:
                rows = rows.copy()
                rows[-1, nv % LEAF_AUS:] = UNMAPPED
            ids = self._take_leaves(len(slots))
            self.rows[ids] = rows
            l1[slots] = ids
            mapped = int(np.count_nonzero(rows != UNMAPPED))
        self.l1_at[mid] = (off, cap)
        self.sizes[mid] = size
        self.mapped[mid] = mapped
        self.maps[mid] = l1

    def load(self, live: dict[int, int], mids: np.ndarray, slots: np.ndarray,
             rows: np.ndarray) -> None:
        """Build the live maps ``live`` (map id -> size) from every leaf of the meta DB
        (``mids``, ``slots`` sorted by map id; ``rows`` of global AUs)."""
        for mid, size in live.items():
            a, b = np.searchsorted(mids, [mid, mid + 1])
            self.create(mid, size, slots[a:b], rows[a:b])

    def drop(self, mid: int) -> np.ndarray:
        """Remove the live map ``mid``; returns the global AUs it mapped."""
        l1 = self.maps.pop(mid)
        used = l1[l1 != 0].astype(np.int64)
        rows = self.rows[used]
        paus = rows[rows != UNMAPPED]
        self._retire(used.tolist(), [self.l1_at.pop(mid)])
        self.sizes.pop(mid, None)
        self.mapped.pop(mid, None)
        return paus

    def resize(self, mid: int, size: int) -> None:
        """Grow the live map ``mid`` to ``size`` bytes (a new L1, the leaves stay)."""
        old = self.maps[mid]
        off, cap, l1 = self._new_l1(extent_kernels.n_leaves(n_vaus(size, self.au)))
        l1[:len(old)] = old
        self._retire([], [self.l1_at[mid]])
        self.l1_at[mid] = (off, cap)
        self.sizes[mid] = size
        self.maps[mid] = l1

    def leaf_rows(self, mid: int) -> tuple[np.ndarray, np.ndarray]:
        """(L1 entries, copies of their leaves) of the present leaves of live map ``mid``."""
        l1 = self.maps[mid]
        slots = np.flatnonzero(l1)
        return slots, self.rows[l1[slots].astype(np.int64)]

    def rows_at(self, keys: list[tuple[int, int]]) -> tuple[list[tuple[int, int]], np.ndarray]:
        """Copies of the leaves at (map id, L1 entry) ``keys`` of live maps (all UNMAPPED where
        a leaf is absent); keys of maps that are gone are left out."""
        kept, ids = [], []
        for mid, s in keys:
            l1 = self.maps.get(mid)
            if l1 is not None and s < len(l1):
                kept.append((mid, s))
                ids.append(int(l1[s]))
        return kept, self.rows[np.array(ids, dtype=np.int64)]

    # --- entries ------------------------------------------------------------------------------

    def get(self, mid: int) -> np.ndarray:
        """The L1 of live map ``mid``; ENODEV when its vdisk was deleted under a command
        already dispatched."""
        l1 = self.maps.get(mid)
        if l1 is None:
            raise OSError(errno.ENODEV, f"extent map {mid} is gone")
        return l1

    def n_vaus(self, mid: int) -> int:
        """vAUs of live map ``mid``."""
        return n_vaus(self.sizes[mid], self.au)

    def lookup(self, mid: int, v: int) -> int:
        """The global AU of vAU ``v`` of live map ``mid`` (UNMAPPED when none)."""
        l1 = self.get(mid)
        return self.leaves.item((l1.item(v >> LEAF_BITS) << LEAF_BITS) | (v & LEAF_MASK))

    def lookup_many(self, mid: int, vaus: np.ndarray) -> np.ndarray:
        """Global AUs of vAUs ``vaus`` of live map ``mid`` (UNMAPPED when none or outside)."""
        return extent_kernels.lookup_batch(self.get(mid), self.leaves, vaus)

    def set(self, mid: int, v: int, p: int) -> None:
        """Map vAU ``v`` of live map ``mid`` to global AU ``p`` (whose data is written)."""
        l1 = self.maps[mid]
        s = v >> LEAF_BITS
        leaf = l1.item(s)
        if leaf == 0:
            leaf = int(self._take_leaves(1)[0])
            self.rows[leaf] = UNMAPPED
            l1[s] = leaf
        i = (leaf << LEAF_BITS) | (v & LEAF_MASK)
        if self.leaves.item(i) == UNMAPPED:
            self.mapped[mid] += 1
        self.leaves[i] = p

    def set_many(self, mid: int, vaus: np.ndarray, paus: np.ndarray) -> None:
        """Map the distinct vAUs ``vaus`` of live map ``mid`` to global AUs ``paus``."""
        if not len(vaus):
            return
        l1 = self.maps[mid]
        vaus = vaus.astype(np.int64)
        slots = vaus >> LEAF_BITS
        us = np.unique(slots)
        missing = us[l1[us] == 0]
        if len(missing):
            ids = self._take_leaves(len(missing))
            self.rows[ids] = UNMAPPED
            l1[missing] = ids
        idx = (l1[slots].astype(np.int64) << LEAF_BITS) | (vaus & LEAF_MASK)
        self.mapped[mid] += int(np.count_nonzero(self.leaves[idx] == UNMAPPED))
        self.leaves[idx] = paus

    def unmap_range(self, mid: int, first: int, count: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Unmap vAUs [first, first + count) of live map ``mid``: (the vAUs that were mapped,
        their global AUs, the L1 entries whose leaves changed). Leaves left empty go."""
        l1 = self.maps[mid]
        end = min(first + count, len(l1) << LEAF_BITS)
        none = np.empty(0, dtype=np.int64)
        if end <= first:
            return none, none.astype(MAP_DTYPE), none
        slots = np.arange(first >> LEAF_BITS, ((end - 1) >> LEAF_BITS) + 1, dtype=np.int64)
        slots = slots[l1[slots] != 0]
        if not len(slots):
            return none, none.astype(MAP_DTYPE), none
        ids = l1[slots].astype(np.int64)
        block = self.rows[ids]
        vbase = (slots << LEAF_BITS)[:, None] + np.arange(LEAF_AUS, dtype=np.int64)
        inside = (vbase >= first) & (vbase < end)
        hit = inside & (block != UNMAPPED)
        vaus, paus = vbase[hit], block[hit]
        if not len(vaus):
            return none, none.astype(MAP_DTYPE), none
        block[inside] = UNMAPPED
        self.rows[ids] = block
        empty = (block == UNMAPPED).all(axis=1)
        if empty.any():
            l1[slots[empty]] = 0
            self._retire(ids[empty].tolist(), [])
        self.mapped[mid] -= len(vaus)
        return vaus, paus, np.unique(vaus >> LEAF_BITS)

    def tier(self, mid: int) -> int:
        """The tier new AUs of map ``mid`` come from."""
        return self.tiers.get(mid, TIER_CAPACITY)

    def frozen_rows(self, mid: int) -> tuple[np.ndarray, np.ndarray]:
        """(leaf numbers, leaves of global AUs) of map ``mid`` as the meta DB holds it."""
        _, slots, file_aus, tiers = scan_leaves(self.db, mid)
        return slots.astype(np.int64), self.space.global_rows(file_aus, tiers)

    def entries(self, mid: int) -> tuple[np.ndarray, np.ndarray]:
        """(vAUs, physical AUs) of one map: the live one if it is live, else the DB's."""
        l1 = self.maps.get(mid)
        if l1 is not None:
            vaus, paus = extent_kernels.mapped_entries(l1, self.leaves)
            return vaus.astype(np.uint32), paus
        slots, rows = self.frozen_rows(mid)
        mapped = rows != UNMAPPED
        r, c = np.nonzero(mapped)
        return (slots[r] * LEAF_AUS + c).astype(np.uint32), rows[mapped]

    def values(self, rows: np.ndarray) -> np.ndarray:
        """The meta DB values of leaves ``rows`` (global AUs)."""
        return leaf_values(*self.space.file_rows(rows))

    def used_bytes(self, mid: int) -> int:
        """Bytes the live map ``mid`` has mapped (0 when it is not live)."""
        return self.mapped.get(mid, 0) * self.au

    def tier_bytes(self, mid: int) -> dict[str, int]:
        """Bytes a live map holds on each tier."""
        if mid not in self.maps:
            return {name: 0 for name in TIER_NAMES}
        _, paus = self.entries(mid)
        fl = int(np.count_nonzero(paus >= self.space.ncap))
        return {"capacity": (len(paus) - fl) * self.au, "flash": fl * self.au}
