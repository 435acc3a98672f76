"""The flash-cache directory: S3-FIFO within each eviction group, an arbiter across groups.

The directory maps (vdisk, block) to a flash slot. It holds no data, only the state below, in
preallocated numpy arrays; per-block work runs in ``vmblock.native.cache`` kernels, one call per
batch. Interface (libCacheSim ``cache.h`` style): ``find`` (peek), ``access`` (find + insert +
evict, batched), ``remove`` (invalidate), plus group management.

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
from vmblock.native import cache as K

from .groups import PROMOTE, GroupSpec, validate_groups
from .params import parse_params

DEFAULT_BLOCK_SIZE = 64 * 1024     # see docs/cache.md: directory memory per TB of flash

COUNTERS = ("read_hits", "write_hits", "read_misses", "write_misses", "read_hit_bytes",
            "write_hit_bytes", "read_miss_bytes", "write_miss_bytes", "promotions", "evictions",
            "moves", "ghost_hits", "bypasses", "removals")
assert len(COUNTERS) == K.C_FIELDS


def _vec(name: str, a, dtype, n: int | None = None) -> np.ndarray:
    arr = np.ascontiguousarray(a, dtype=dtype)
    if arr.ndim != 1:
        raise CacheError(f"{name} must be one-dimensional")
    if n is not None and arr.shape[0] != n:
        raise CacheError(f"{name} has {arr.shape[0]} entries, expected {n}")
    return arr


class CacheDirectory:
    """Grouped S3-FIFO directory over ``nslots`` cache blocks of ``block_size`` bytes.

    ``groups``: eviction groups (index = group id); ``nvdisks``: vdisk ids are ``0..nvdisks-1``,
    all in group 0 until ``assign``-ed. ``params``: overrides of ``S3FIFO_DEFAULTS``.
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
        ghost_ratio = self.params["ghost-size-ratio"]
        nghost = int(ghost_ratio * nslots) + ng + 1
        bits = max(4, int(np.ceil(np.log2(2 * (nslots + nghost)))))
        self._shift = 64 - bits
        self.ht = np.zeros((1 << bits, 2), np.int64)
        self.ht[:, 1] = K.EMPTY
        self.s_key = np.zeros(nslots, np.int64)
        self.s_i32 = np.full((nslots, 4), -1, np.int32)
        self.s_i32[:, K.LF] = -4
        self.g_key = np.zeros(nghost, np.int64)
        self.g_i32 = np.full((nghost, 4), -1, np.int32)
        self.lists = np.zeros((3 * ng, 3), np.int64)
        self.lists[:, K.HEAD] = -1
        self.lists[:, K.TAIL] = -1
        self.grp = np.zeros((ng, K.G_FIELDS), np.int64)
        self.grp[:, K.G_LAST] = -1
        self.vdt = np.zeros((nvdisks, K.V_FIELDS), np.int64)
        # stacks: the next free slot is the top; slot 0 is handed out first
        self.free_slots = np.arange(nslots - 1, -1, -1, dtype=np.int32)
        self.free_ghosts = np.arange(nghost - 1, -1, -1, dtype=np.int32)
        self.sc = np.zeros(K.SC_FIELDS, np.int64)
        self.sc[K.SC_FREE] = nslots
        self.sc[K.SC_GFREE] = nghost
        self.ipar = np.zeros(K.P_FIELDS, np.int64)
        self.ipar[K.P_MOVE_THRESHOLD] = self.params["move-to-main-threshold"]
        self.ipar[K.P_IDLE_WINDOW] = self.params["idle-window"] or nslots
        self.fpar = np.zeros(K.F_FIELDS, np.float64)
        self.fpar[K.F_SMALL_RATIO] = self.params["small-size-ratio"]
        self.fpar[K.F_GHOST_RATIO] = ghost_ratio
        self.vd_cnt = np.zeros((nvdisks, K.C_FIELDS), np.int64)
        self.grp_cnt = np.zeros((ng, K.C_FIELDS), np.int64)
        for i, g in enumerate(groups):
            self._load_group(i, g)
        self._no_bytes = np.zeros(0, np.int64)    # nbytes not given: block_size per access

    # -- state ---------------------------------------------------------------------------------

    def _state(self):
        return (self.ht, self.s_key, self.s_i32, self.g_key, self.g_i32, self.lists, self.grp,
                self.vdt, self.free_slots, self.free_ghosts, self.sc, self.ipar, self.fpar,
                self.vd_cnt, self.grp_cnt, self._shift)

    def _load_group(self, i: int, g: GroupSpec) -> None:
        n = self.nslots
        self.grp[i, K.G_PRIO] = g.priority
        self.grp[i, K.G_MIN] = int(g.min * n + 1e-9)
        self.grp[i, K.G_MAX] = max(1, int(g.max * n + 1e-9)) if g.max > 0 else 0
        self.grp[i, K.G_PROMOTE] = PROMOTE[g.promote]
        self.grp[i, K.G_PINNED] = int(g.pinned)

    @property
    def nbytes(self) -> int:
        """Memory held by the directory's arrays."""
        return sum(a.nbytes for a in self._state()[:-1])

    @property
    def nvdisks(self) -> int:
        return self.vdt.shape[0]

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
        K._access(keys, vdisk, is_write, nbytes, hits, slots, *self._state(), self.block_size)
        return hits

    def find(self, keys, vdisk) -> np.ndarray:
        """Slot of each block, -1 if not cached; changes nothing."""
        keys, vdisk = self._check_batch(keys, vdisk)
        out = np.empty(keys.shape[0], np.int32)
        K._find(keys, vdisk, out, self.ht, self._shift)
        return out

    def remove(self, keys, vdisk) -> int:
        """Invalidate blocks (and forget them in the ghosts); returns how many were cached."""
        keys, vdisk = self._check_batch(keys, vdisk)
        return int(K._remove(keys, vdisk, self.ht, self.s_key, self.s_i32, self.g_i32,
                             self.lists, self.vdt, self.free_slots, self.free_ghosts, self.sc,
                             self.vd_cnt, self.grp_cnt, self._shift))

    def remove_vdisk(self, vdisk: int) -> int:
        """Drop all cached blocks of a vdisk (deleted, or moved to the capacity tier)."""
        v = self._vdisk_id(vdisk)
        return int(K._remove_vdisk(v, self.ht, self.s_key, self.s_i32, self.g_key, self.g_i32,
                                   self.lists, self.vdt, self.free_slots, self.free_ghosts,
                                   self.sc, self.vd_cnt, self.grp_cnt, self._shift))

    # -- management (live) ---------------------------------------------------------------------

    def assign(self, vdisk: int, group: int | str) -> int:
        """Put a vdisk in a group; its cached blocks move along. Returns blocks moved."""
        v = self._vdisk_id(vdisk)
        g = self._group_id(group)
        self.vdt[v, K.V_GROUP] = g
        moved = int(K._move_vdisk(v, g, self.s_i32, self.lists))
        self.shrink()
        return moved

    def pin_vdisk(self, vdisk: int, pinned: bool = True) -> None:
        """A pinned vdisk's cached blocks are never evicted."""
        self.vdt[self._vdisk_id(vdisk), K.V_PINNED] = int(pinned)

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
        their group index; returns blocks evicted to honour lowered maximums."""
        specs = list(specs)
        if len(specs) != len(self.groups):
            raise CacheError(f"expected {len(self.groups)} groups, got {len(specs)}")
        validate_groups(specs)
        self.groups = specs
        self.group_index = {s.name: i for i, s in enumerate(specs)}
        for i, spec in enumerate(specs):
            self._load_group(i, spec)
        return self.shrink()

    def reset_vdisk(self, vdisk: int) -> int:
        """Forget a vdisk id for reuse: its blocks, counters, pin and group (back to 0)."""
        v = self._vdisk_id(vdisk)
        removed = self.remove_vdisk(v)
        self.vd_cnt[v] = 0
        self.vdt[v, K.V_PINNED] = 0
        self.vdt[v, K.V_GROUP] = 0
        return removed

    def shrink(self) -> int:
        """Evict from groups over their maximum share until none is."""
        return int(K._shrink(self.lists, self.grp, self.vdt, self.ht, self.s_key, self.s_i32,
                             self.g_key, self.g_i32, self.free_slots, self.free_ghosts, self.sc,
                             self.ipar, self.fpar, self.vd_cnt, self.grp_cnt, self._shift))

    # -- accounting ----------------------------------------------------------------------------

    def group_used(self) -> np.ndarray:
        """Cached blocks per group."""
        ng = len(self.groups)
        return self.lists[0:2 * ng:2, K.LEN] + self.lists[1:2 * ng:2, K.LEN]

    def vdisk_used(self) -> np.ndarray:
        return self.vdt[:, K.V_USED].copy()

    def ghost_len(self) -> np.ndarray:
        ng = len(self.groups)
        return self.lists[2 * ng:, K.LEN].copy()

    def used(self) -> int:
        return self.nslots - int(self.sc[K.SC_FREE])

    @staticmethod
    def _row(row: np.ndarray) -> dict:
        d = dict(zip(COUNTERS, (int(x) for x in row)))
        req = d["read_hits"] + d["write_hits"] + d["read_misses"] + d["write_misses"]
        d["requests"] = req
        d["hit_ratio"] = (d["read_hits"] + d["write_hits"]) / req if req else 0.0
        return d

    def vdisk_stats(self, vdisk: int) -> dict:
        v = self._vdisk_id(vdisk)
        d = self._row(self.vd_cnt[v])
        d["cached_blocks"] = int(self.vdt[v, K.V_USED])
        d["group"] = self.groups[int(self.vdt[v, K.V_GROUP])].name
        return d

    def group_stats(self, group: int | str) -> dict:
        g = self._group_id(group)
        d = self._row(self.grp_cnt[g])
        spec = self.groups[g]
        d.update(cached_blocks=int(self.group_used()[g]), priority=spec.priority, min=spec.min,
                 max=spec.max, promote=spec.promote, pinned=spec.pinned)
        return d

    def stats(self) -> dict:
        return {"block_size": self.block_size, "slots": self.nslots, "used": self.used(),
                "directory_bytes": self.nbytes,
                "groups": {s.name: self.group_stats(i) for i, s in enumerate(self.groups)},
                "vdisks": {v: self.vdisk_stats(v) for v in range(self.nvdisks)}}

    def check(self) -> None:
        """Cross-check the redundant state (tests): list lengths, hash rows, free stacks."""
        lf = self.s_i32[:, K.LF]
        owner = np.where(lf >= 0, lf >> 3, -1)
        used = self.group_used()
        for g in range(len(self.groups)):
            assert int((owner == g).sum()) == int(used[g]), ("group length", g)
        assert int((owner >= 0).sum()) == self.used(), "free stack"
        words = self.ht[:, 1]
        live = words != K.EMPTY
        low = words & 0xFFFFFFFF
        refs = np.where(low >= 1 << 31, low - (1 << 32), low)
        assert int((live & (refs >= 0)).sum()) == self.used(), "hash slots"
        assert int((live & (refs <= -2)).sum()) == int(self.ghost_len().sum()), "hash ghosts"
        slots = refs[live & (refs >= 0)]
        assert np.array_equal(np.sort(self.s_key[slots]), np.sort(self.ht[live & (refs >= 0), 0]))
        for v in range(self.nvdisks):
            n = int(((owner >= 0) & (self.s_i32[:, K.VD] == v)).sum())
            assert n == int(self.vdt[v, K.V_USED]), ("vdisk used", v)
