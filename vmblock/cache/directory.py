"""The flash-cache directory: S3-FIFO within each eviction group, an arbiter across groups.

The directory maps (vdisk, block) to a flash slot. It holds no data, only the state below, in
preallocated numpy arrays; per-block work runs in ``vmblock.native.cache`` kernels, one call per
batch. Interface (libCacheSim ``cache.h`` style): ``find`` (peek), ``access`` (find + insert +
evict, batched; ``access_one`` and ``access_range`` are the data path's one-block and
one-command forms), ``remove`` (invalidate), plus group management. It is the only caller of
the kernels, so the policy can be swapped behind it.

S3-FIFO (Yang et al., SOSP'23), per group g, sizes in blocks, ``used = |S| + |M|``::

    access(x):
        if x in S or M:  freq[x] = min(freq[x] + 1, 3); hit
        else:            miss; if promote(g, op): admit(x)
    admit(x):
        v = arbiter(g)                            # which group gives up a block, or none
        if v is none: bypass; return
        if x in ghost: remove x from ghost; to = M
        elif g never evicted and |S| >= small_ratio * max(g): to = M   # filling up
        else: to = S
        if v is not "free": evict(v)
        push x at the head of `to` with freq 0
    evict(v):                                     # frees exactly one slot of group v
        loop:
            if |S| > 0 and (|S| >= small_ratio * used or |M| == 0):
                y = tail(S); remove y from S
                if freq[y] >= move_threshold:  push y on M with freq 0      # move
                else: insert y in ghost (ghost keeps ghost_ratio * used keys); free y; return
            else:
                y = tail(M); remove y from M
                if freq[y] >= 1: push y on M with freq - 1                 # 2-bit clock
                else: free y; return

Blocks of a pinned vdisk are always reinserted (never freed); if a group holds nothing else,
eviction gives up and the access is a bypass.

Arbiter, for group g that needs one slot::

    if used[g] >= max[g]:   g evicts its own (a group never exceeds its maximum share)
    elif a slot is free:    take it
    elif some group is over its max (max lowered live): the one furthest over
    else: the lowest-priority group above its minimum — a group idle for more than
          idle-window accesses has no minimum — ties to the one furthest above it
    else: g evicts its own (everyone is at its minimum)
    pinned groups are never chosen; if nothing can be chosen, bypass.

Counters (``COUNTERS``) per vdisk and per group: read/write hits and misses in requests and
bytes, admissions (promotions), evictions, moves small->main, ghost hits, bypasses, removals.
"""

from __future__ import annotations

import numpy as np

from vmblock.errors import CacheError
from vmblock.native import cache as cache_kernels
from vmblock.native.cache import (BYTES, C_READ_HIT, C_READ_HIT_BYTES, C_READ_MISS,
                                  C_READ_MISS_BYTES, C_WRITE_HIT, C_WRITE_MISS, DirectoryState)
from vmblock.store.ranges import units

from .groups import PROMOTE, GroupSpec, validate_groups
from .params import parse_params

DEFAULT_BLOCK_SIZE = 64 * 1024     # see docs/cache.md: directory memory per TB of flash

COUNTERS = ("read_hits", "write_hits", "read_misses", "write_misses", "read_hit_bytes",
            "write_hit_bytes", "read_miss_bytes", "write_miss_bytes", "promotions", "evictions",
            "moves", "ghost_hits", "bypasses", "removals")
assert len(COUNTERS) == cache_kernels.C_FIELDS

_READ_REQUEST_COLUMNS = [C_READ_HIT, C_READ_HIT_BYTES, C_READ_MISS, C_READ_MISS_BYTES]


def _vec(name: str, a, dtype, n: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(a, dtype=dtype)
    if arr.ndim != 1:
        raise CacheError(f"{name} must be one-dimensional")
    if n is not None and arr.shape[0] != n:
        raise CacheError(f"{name} has {arr.shape[0]} entries, expected {n}")
    return arr


def _new_state(nslots: int, ngroups: int, nvdisks: int, nghost: int, bits: int,
               block_size: int, params: dict) -> DirectoryState:
    """Every array of an empty directory, in the layout of ``vmblock.native.cache``."""
    table = np.zeros((1 << bits, 2), np.int64)
    table[:, 1] = cache_kernels.EMPTY
    slot_links = np.full((nslots, 4), -1, np.int32)
    slot_links[:, cache_kernels.LIST_FREQ] = -4
    lists = np.zeros((3 * ngroups, 3), np.int64)
    lists[:, cache_kernels.HEAD] = -1
    lists[:, cache_kernels.TAIL] = -1
    group_info = np.zeros((ngroups, cache_kernels.G_FIELDS), np.int64)
    group_info[:, cache_kernels.G_LAST_ACCESS] = -1
    scalars = np.zeros(cache_kernels.SCALAR_FIELDS, np.int64)
    scalars[cache_kernels.FREE_SLOTS_TOP] = nslots
    scalars[cache_kernels.FREE_GHOSTS_TOP] = nghost
    settings = np.zeros(cache_kernels.SETTING_FIELDS, np.int64)
    settings[cache_kernels.MOVE_THRESHOLD] = params["move-to-main-threshold"]
    settings[cache_kernels.IDLE_WINDOW] = params["idle-window"] or nslots
    settings[cache_kernels.HASH_SHIFT] = 64 - bits
    settings[cache_kernels.BLOCK_SIZE] = block_size
    ratios = np.zeros(cache_kernels.RATIO_FIELDS, np.float64)
    ratios[cache_kernels.SMALL_RATIO] = params["small-size-ratio"]
    ratios[cache_kernels.GHOST_RATIO] = params["ghost-size-ratio"]
    return DirectoryState(
        table=table,
        slot_block=np.zeros(nslots, np.int64),
        slot_links=slot_links,
        ghost_block=np.zeros(nghost, np.int64),
        ghost_links=np.full((nghost, 4), -1, np.int32),
        lists=lists,
        group_info=group_info,
        vdisk_info=np.zeros((nvdisks, cache_kernels.V_FIELDS), np.int64),
        # stacks: the next free slot is the top; slot 0 is handed out first
        free_slots=np.arange(nslots - 1, -1, -1, dtype=np.int32),
        free_ghosts=np.arange(nghost - 1, -1, -1, dtype=np.int32),
        scalars=scalars,
        settings=settings,
        ratios=ratios,
        vdisk_counters=np.zeros((nvdisks, cache_kernels.C_FIELDS), np.int64),
        group_counters=np.zeros((ngroups, cache_kernels.C_FIELDS), np.int64),
    )


class CacheDirectory:
    """Grouped S3-FIFO directory over ``nslots`` cache blocks of ``block_size`` bytes.

    ``groups``: eviction groups (index = group id); ``nvdisks``: vdisk ids are ``0..nvdisks-1``,
    all in group 0 until ``assign``-ed. ``params``: overrides of ``S3FIFO_DEFAULTS``.
    ``state`` holds every array (read it, e.g. in tests; only the kernels write it). Not
    thread-safe: the caller serialises calls.
    """

    def __init__(self, nslots: int, groups: list[GroupSpec] | None = None, nvdisks: int = 1,
                 params: str | None = None, block_size: int = DEFAULT_BLOCK_SIZE):
        if nslots < 1:
            raise CacheError("the cache needs at least one block")
        if nslots >= 1 << 31:
            raise CacheError("too many cache blocks for a 32-bit slot number")
        if nvdisks < 1:
            raise CacheError("at least one vdisk")
        if block_size < 512 or block_size & (block_size - 1):
            raise CacheError(f"cache block size {block_size} is not a power of two >= 512")
        groups = list(groups) if groups else [GroupSpec("default")]
        validate_groups(groups)
        self.params = parse_params(params)
        self.nslots = int(nslots)
        self.block_size = int(block_size)
        self.groups = groups
        self.group_index = {g.name: i for i, g in enumerate(groups)}
        ng = len(groups)
        nghost = int(self.params["ghost-size-ratio"] * nslots) + ng + 1
        bits = max(4, int(np.ceil(np.log2(2 * (nslots + nghost)))))
        self.state = _new_state(self.nslots, ng, nvdisks, nghost, bits, self.block_size,
                                self.params)
        for i, g in enumerate(groups):
            self._load_group(i, g)
        self._no_bytes = np.zeros(0, np.int64)    # nbytes not given: block_size per access
        self._codes = np.empty(0, np.int64)       # access_range's output, grown on demand

    # -- state ---------------------------------------------------------------------------------

    def _load_group(self, i: int, g: GroupSpec) -> None:
        n = self.nslots
        info = self.state.group_info
        info[i, cache_kernels.G_PRIORITY] = g.priority
        info[i, cache_kernels.G_MIN] = int(g.min * n + 1e-9)
        info[i, cache_kernels.G_MAX] = max(1, int(g.max * n + 1e-9)) if g.max > 0 else 0
        info[i, cache_kernels.G_PROMOTE] = PROMOTE[g.promote]
        info[i, cache_kernels.G_PINNED] = int(g.pinned)

    @property
    def nbytes(self) -> int:
        """Memory held by the directory's arrays."""
        return sum(a.nbytes for a in self.state)

    @property
    def nvdisks(self) -> int:
        """Vdisk ids the directory has room for (``0 .. nvdisks - 1``)."""
        return self.state.vdisk_info.shape[0]

    def _group_id(self, group: int | str) -> int:
        if isinstance(group, str):
            if group not in self.group_index:
                raise CacheError(f"unknown eviction group {group!r}")
            return self.group_index[group]
        if not 0 <= group < len(self.groups):
            raise CacheError(f"unknown eviction group {group}")
        return int(group)

    def _vdisk_id(self, vdisk: int) -> int:
        if not 0 <= vdisk < self.nvdisks:
            raise CacheError(f"unknown vdisk {vdisk}")
        return int(vdisk)

    def _check_batch(self, keys, vdisk, n_name="keys"):
        keys = _vec(n_name, keys, np.int64)
        vdisk = _vec("vdisk", vdisk, np.int32, keys.shape[0])
        if keys.shape[0] and (vdisk.min() < 0 or vdisk.max() >= self.nvdisks):
            raise CacheError(f"vdisk id out of range 0..{self.nvdisks - 1}")
        return keys, vdisk

    # -- data path -----------------------------------------------------------------------------

    def access(self, keys, vdisk, is_write, nbytes=None, hits=None, slots=None) -> np.ndarray:
        """Look up a batch of blocks, counting and admitting by group policy, in one kernel call.

        Returns ``hits`` (bool per access). ``slots`` (int32, optional output) receives the flash
        slot of each access: the hit's slot, the slot an admitted miss must be filled into, or -1
        (miss not admitted). ``nbytes`` per access (default: the block size) feeds the byte
        counters. Pass preallocated ``hits``/``slots`` to allocate nothing.
        """
        keys, vdisk = self._check_batch(keys, vdisk)
        n = keys.shape[0]
        is_write = _vec("is_write", is_write, np.bool_, n)
        nbytes = self._no_bytes if nbytes is None else _vec("nbytes", nbytes, np.int64, n)
        if hits is None:
            hits = np.empty(n, np.bool_)
        if slots is None:
            slots = np.empty(n, np.int32)
        if hits.dtype != np.bool_ or hits.shape != (n,) or slots.dtype != np.int32 \
                or slots.shape != (n,):
            raise CacheError("hits must be bool[n] and slots int32[n]")
        cache_kernels._access(keys, vdisk, is_write, nbytes, hits, slots, self.state)
        return hits

    def access_one(self, key: int, vdisk: int, is_write: bool, nbytes: int) -> int:
        """``access`` of one block of ``nbytes`` bytes, the data path's common case (scalars in,
        no array to fill): returns the slot of a hit, ``-2 - slot`` for an admitted miss, -1
        for a miss that was not admitted (``-2 - code`` is the slot in both miss cases)."""
        if not 0 <= vdisk < self.nvdisks:
            raise CacheError(f"unknown vdisk {vdisk}")
        return cache_kernels._access_one(key, vdisk, is_write, nbytes, *self.state)

    def access_range(self, vdisk: int, offset: int, length: int, is_write: bool) -> list[int]:
        """``access`` of the blocks one command's bytes [offset, offset + length) touch, each
        counting the bytes of it the command covers; one code per block as in ``access_one``."""
        if not 0 <= vdisk < self.nvdisks:
            raise CacheError(f"unknown vdisk {vdisk}")
        first, count = units(offset, length, self.block_size)
        if count > self._codes.shape[0]:
            self._codes = np.empty(count, np.int64)
        codes = self._codes[:count]
        cache_kernels._access_run(vdisk, first, count, offset, offset + length, is_write,
                                  codes, *self.state)
        return codes.tolist()

    def recount_hit_as_miss(self, vdisk: int, slot: int, nbytes: int, is_write: bool) -> None:
        """The caller found the data of a slot ``access`` counted as a hit not valid (its fill
        is still in flight): count that access as a miss instead."""
        st = self.state
        group = int(st.slot_links[slot, cache_kernels.LIST_FREQ]) >> 3
        hit, miss = (C_WRITE_HIT, C_WRITE_MISS) if is_write else (C_READ_HIT, C_READ_MISS)
        for counters, row in ((st.vdisk_counters, vdisk), (st.group_counters, group)):
            counters[row, hit] -= 1
            counters[row, hit + BYTES] -= nbytes
            counters[row, miss] += 1
            counters[row, miss + BYTES] += nbytes

    def preload(self, keys, vdisk: int, slots: np.ndarray) -> np.ndarray:
        """``access`` of blocks of one vdisk for a preload: read, admitted whatever its group's
        promotion policy, not counted as requests (only as promotions, evictions, ...).
        Returns the hits; ``slots`` receives the slots as in ``access``."""
        v = self._vdisk_id(vdisk)
        st = self.state
        g = int(st.vdisk_info[v, cache_kernels.V_GROUP])
        save_v = st.vdisk_counters[v, _READ_REQUEST_COLUMNS].copy()
        save_g = st.group_counters[g, _READ_REQUEST_COLUMNS].copy()
        promote = int(st.group_info[g, cache_kernels.G_PROMOTE])
        st.group_info[g, cache_kernels.G_PROMOTE] = PROMOTE["write"]
        n = len(keys)
        try:
            return self.access(keys, np.full(n, v, np.int32), np.zeros(n, np.bool_),
                               slots=slots)
        finally:
            st.group_info[g, cache_kernels.G_PROMOTE] = promote
            st.vdisk_counters[v, _READ_REQUEST_COLUMNS] = save_v
            st.group_counters[g, _READ_REQUEST_COLUMNS] = save_g

    def find(self, keys, vdisk) -> np.ndarray:
        """Slot of each block, -1 if not cached; changes nothing."""
        keys, vdisk = self._check_batch(keys, vdisk)
        out = np.empty(keys.shape[0], np.int32)
        cache_kernels._find(keys, vdisk, out, self.state)
        return out

    def remove(self, keys, vdisk) -> int:
        """Invalidate blocks (and forget them in the ghosts); returns how many were cached."""
        keys, vdisk = self._check_batch(keys, vdisk)
        return int(cache_kernels._remove(keys, vdisk, self.state))

    def remove_vdisk(self, vdisk: int) -> int:
        """Drop all cached blocks of a vdisk (deleted, or moved to the capacity tier)."""
        return int(cache_kernels._remove_vdisk(self._vdisk_id(vdisk), self.state))

    # -- management (live) ---------------------------------------------------------------------

    def move_vdisk(self, vdisk: int, group: int | str) -> int:
        """Put a vdisk in a group, its cached blocks along, evicting nothing yet (a batch of
        changes ends with ``shrink``). Returns blocks moved."""
        v = self._vdisk_id(vdisk)
        g = self._group_id(group)
        info = self.state.vdisk_info
        if int(info[v, cache_kernels.V_GROUP]) == g:  # all its blocks are in its group already
            return 0
        info[v, cache_kernels.V_GROUP] = g
        return int(cache_kernels._move_vdisk(v, g, self.state))

    def assign(self, vdisk: int, group: int | str) -> int:
        """Put a vdisk in a group; its cached blocks move along. Returns blocks moved."""
        moved = self.move_vdisk(vdisk, group)
        self.shrink()
        return moved

    def pin_vdisk(self, vdisk: int, pinned: bool = True) -> None:
        """A pinned vdisk's cached blocks are never evicted."""
        self.state.vdisk_info[self._vdisk_id(vdisk), cache_kernels.V_PINNED] = int(pinned)

    def set_group(self, group: int | str, spec: GroupSpec) -> int:
        """Change a group's settings while serving; returns blocks evicted to honour a lower max."""
        g = self._group_id(group)
        new = list(self.groups)
        new[g] = spec
        validate_groups(new)
        self.groups = new
        self.group_index = {s.name: i for i, s in enumerate(new)}
        self._load_group(g, spec)
        return self.shrink()

    def set_groups(self, specs: list[GroupSpec]) -> int:
        """Replace every group's settings at once (same number of groups, validated as a set,
        so moving reservation from one group to another never fails half-way). Vdisks keep
        their group index; a group index that now holds another group (a new name) starts
        with zero counters. Returns blocks evicted to honour lowered maximums."""
        specs = list(specs)
        if len(specs) != len(self.groups):
            raise CacheError(f"expected {len(self.groups)} groups, got {len(specs)}")
        validate_groups(specs)
        for i, spec in enumerate(specs):
            if self.groups[i].name != spec.name:
                self.state.group_counters[i] = 0
        self.groups = specs
        self.group_index = {s.name: i for i, s in enumerate(specs)}
        for i, spec in enumerate(specs):
            self._load_group(i, spec)
        return self.shrink()

    def reset_vdisk(self, vdisk: int) -> int:
        """Forget a vdisk id for reuse: its blocks, counters, pin and group (back to 0)."""
        v = self._vdisk_id(vdisk)
        removed = self.remove_vdisk(v)
        self.state.vdisk_counters[v] = 0
        self.state.vdisk_info[v, cache_kernels.V_PINNED] = 0
        self.state.vdisk_info[v, cache_kernels.V_GROUP] = 0
        return removed

    def shrink(self) -> int:
        """Evict from groups over their maximum share until none is."""
        return int(cache_kernels._shrink(self.state))

    # -- accounting ----------------------------------------------------------------------------

    def group_used(self) -> np.ndarray:
        """Cached blocks per group."""
        ng = len(self.groups)
        lists = self.state.lists
        return lists[0:2 * ng:2, cache_kernels.LEN] + lists[1:2 * ng:2, cache_kernels.LEN]

    def vdisk_used(self) -> np.ndarray:
        """Cached blocks per vdisk id."""
        return self.state.vdisk_info[:, cache_kernels.V_CACHED].copy()

    def ghost_len(self) -> np.ndarray:
        """Ghost entries per group."""
        ng = len(self.groups)
        return self.state.lists[2 * ng:, cache_kernels.LEN].copy()

    def used(self) -> int:
        """Cached blocks in all."""
        return self.nslots - int(self.state.scalars[cache_kernels.FREE_SLOTS_TOP])

    def cached_blocks(self, vdisk: int) -> tuple[np.ndarray, np.ndarray]:
        """(slots, blocks) of every cached block of a vdisk, by slot (checks and tests)."""
        links = self.state.slot_links
        slots = np.flatnonzero((links[:, cache_kernels.LIST_FREQ] >= 0)
                               & (links[:, cache_kernels.VDISK] == self._vdisk_id(vdisk)))
        return slots, self.state.slot_block[slots]

    @staticmethod
    def _row(row: np.ndarray) -> dict:
        d = dict(zip(COUNTERS, (int(x) for x in row)))
        req = d["read_hits"] + d["write_hits"] + d["read_misses"] + d["write_misses"]
        d["requests"] = req
        d["hit_ratio"] = (d["read_hits"] + d["write_hits"]) / req if req else 0.0
        return d

    def vdisk_stats(self, vdisk: int) -> dict:
        """Counters of one vdisk id, its cached blocks and group."""
        v = self._vdisk_id(vdisk)
        d = self._row(self.state.vdisk_counters[v])
        d["cached_blocks"] = int(self.state.vdisk_info[v, cache_kernels.V_CACHED])
        d["group"] = self.groups[int(self.state.vdisk_info[v, cache_kernels.V_GROUP])].name
        return d

    def group_stats(self, group: int | str) -> dict:
        """Counters of one group, its cached blocks and settings."""
        g = self._group_id(group)
        d = self._row(self.state.group_counters[g])
        spec = self.groups[g]
        d.update(cached_blocks=int(self.group_used()[g]), priority=spec.priority, min=spec.min,
                 max=spec.max, promote=spec.promote, pinned=spec.pinned)
        return d

    def stats(self) -> dict:
        """Everything above for every group and vdisk id, as one dict."""
        return {"block_size": self.block_size, "slots": self.nslots, "used": self.used(),
                "directory_bytes": self.nbytes,
                "groups": {s.name: self.group_stats(i) for i, s in enumerate(self.groups)},
                "vdisks": {v: self.vdisk_stats(v) for v in range(self.nvdisks)}}

    def snapshot(self) -> dict:
        """Copies of the counter and occupancy arrays, per vdisk id and group (row = id)."""
        st = self.state
        return {"vd_cnt": st.vdisk_counters.copy(), "grp_cnt": st.group_counters.copy(),
                "vd_used": st.vdisk_info[:, cache_kernels.V_CACHED].copy(),
                "vd_group": st.vdisk_info[:, cache_kernels.V_GROUP].copy(),
                "vd_pinned": st.vdisk_info[:, cache_kernels.V_PINNED].copy(),
                "grp_used": self.group_used().copy(), "groups": list(self.groups),
                "used": self.used(), "directory_bytes": self.nbytes}

    def check(self) -> None:
        """Cross-check the redundant state (tests): list lengths, hash rows, free stacks."""
        st = self.state
        lf = st.slot_links[:, cache_kernels.LIST_FREQ]
        owner = np.where(lf >= 0, lf >> 3, -1)
        used = self.group_used()
        for g in range(len(self.groups)):
            assert int((owner == g).sum()) == int(used[g]), ("group length", g)
        assert int((owner >= 0).sum()) == self.used(), "free stack"
        words = st.table[:, 1]
        live = words != cache_kernels.EMPTY
        low = words & 0xFFFFFFFF
        refs = np.where(low >= 1 << 31, low - (1 << 32), low)
        assert int((live & (refs >= 0)).sum()) == self.used(), "hash slots"
        assert int((live & (refs <= -2)).sum()) == int(self.ghost_len().sum()), "hash ghosts"
        slots = refs[live & (refs >= 0)]
        assert np.array_equal(np.sort(st.slot_block[slots]),
                              np.sort(st.table[live & (refs >= 0), 0]))
        for v in range(self.nvdisks):
            n = int(((owner >= 0) & (st.slot_links[:, cache_kernels.VDISK] == v)).sum())
            assert n == int(st.vdisk_info[v, cache_kernels.V_CACHED]), ("vdisk used", v)
