"""Numba kernels of the flash-cache directory: grouped S3-FIFO over preallocated numpy arrays.

Private: the only caller is ``vmblock.cache.directory.CacheDirectory``, which allocates the state,
validates every input and fixes dtypes. The algorithm (S3-FIFO per eviction group and the arbiter
across groups) is described in that module's docstring; this file is its array form.

State (all preallocated, nothing allocated per access):

* hash table ``ht`` int64[H, 2]: linear probing, power-of-two size, Fibonacci hashing,
  backward-shift deletion (no tombstones). Row ``(key, word)`` with
  ``word = vd << 32 | (ref & 0xffffffff)``, so a probe touches one cache line; ``word == -1`` is
  empty. ``ref >= 0`` is a cache slot, ``ref <= -2`` ghost node ``-2 - ref``.
* slots (one per cache block): ``s_key[s]`` int64 and one 16-byte row
  ``s_i32[s] = (next, prev, vd, list * 4 + freq)`` (list -1 = free; freq is the 2-bit counter).
* ghost nodes (keys recently evicted from a small FIFO): ``g_key[n]`` int64 and
  ``g_i32[n] = (next, prev, vd, group)`` (group -1 = free).
* ``lists[l] = (head, tail, len)``: list ``2g`` is group g's small FIFO, ``2g+1`` its main FIFO
  (both over slots), ``2G+g`` its ghost FIFO (over ghost nodes). Head is newest, tail oldest.
* ``grp[g]`` int64 fields ``G_*``, ``vdt[v]`` int64 fields ``V_*``, stacks of free slots / ghost
  nodes, ``sc`` scalars ``SC_*``, counters ``vd_cnt[v, C_*]`` and ``grp_cnt[g, C_*]``.

Helpers index 2-D arrays element by element and never slice rows: a row view costs a reference
count update per use inside the loop.
"""

import numpy as np
from numba import jit

from .jit import JIT

# The kernels allocate nothing, so they run without Numba's reference counting: with it, every
# helper call increments and decrements the count of each array argument atomically (measured:
# ~40% of the time of a miss). The helpers on the miss path are inlined at Numba IR level: a call
# passing a dozen array structs cost more than the work (measured: 3x on a miss-only trace).
KERNEL = dict(JIT, _nrt=False)

# slot / ghost int32 columns
NEXT, PREV, VD, LF = 0, 1, 2, 3       # LF: list * 4 + freq for slots
GRP = 3                               # ghost nodes: owning group (-1 free)
# lists columns
HEAD, TAIL, LEN = 0, 1, 2
# group fields
G_PRIO, G_MIN, G_MAX, G_PROMOTE, G_PINNED, G_EVICTED, G_LAST, G_FIELDS = range(8)
# vdisk fields
V_GROUP, V_PINNED, V_USED, V_FIELDS = range(4)
# promotion policies
PROMOTE_NEVER, PROMOTE_READ, PROMOTE_WRITE = 0, 1, 2
# scalars
SC_FREE, SC_GFREE, SC_CLOCK, SC_FIELDS = range(4)
# integer parameters
P_MOVE_THRESHOLD, P_IDLE_WINDOW, P_FIELDS = range(3)
# float parameters
F_SMALL_RATIO, F_GHOST_RATIO, F_FIELDS = range(3)
# counter columns
(C_READ_HIT, C_WRITE_HIT, C_READ_MISS, C_WRITE_MISS, C_READ_HIT_BYTES, C_WRITE_HIT_BYTES,
 C_READ_MISS_BYTES, C_WRITE_MISS_BYTES, C_ADMIT, C_EVICT, C_MOVE, C_GHOST_HIT, C_BYPASS,
 C_REMOVE, C_FIELDS) = range(15)

EMPTY = -1
_FREE_VICTIM = -2     # _pick_victim: take a free slot
_NO_VICTIM = -1       # _pick_victim: nothing may be evicted -> bypass
_LOW32 = 0xFFFFFFFF

_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xC2B2AE3D27D4EB4F)


@jit(**KERNEL)
def _home(key, vd, shift):
    x = (np.uint64(key) ^ (np.uint64(vd) * _C2)) * _C1
    return np.int64(x >> np.uint64(shift))


@jit(**KERNEL)
def _word(vd, ref):
    return (np.int64(vd) << 32) | (np.int64(ref) & _LOW32)


@jit(**KERNEL)
def _ref(word):
    low = word & _LOW32
    return low - (1 << 32) if low >= (1 << 31) else low


@jit(**KERNEL)
def _probe(ht, key, vd, shift):
    """Row of (key, vd), or the empty row where it would go."""
    mask = ht.shape[0] - 1
    i = _home(key, vd, shift)
    while True:
        w = ht[i, 1]
        if w == EMPTY or (ht[i, 0] == key and (w >> 32) == vd):
            return i
        i = (i + 1) & mask


@jit(**KERNEL)
def _ht_delete(ht, pos, shift):
    """Empty row ``pos`` and shift later rows of its probe run back (Knuth's algorithm R)."""
    mask = ht.shape[0] - 1
    i = pos
    j = pos
    while True:
        j = (j + 1) & mask
        w = ht[j, 1]
        if w == EMPTY:
            break
        k = _home(ht[j, 0], w >> 32, shift)
        if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
            ht[i, 0] = ht[j, 0]
            ht[i, 1] = w
            i = j
    ht[i, 1] = EMPTY


@jit(**KERNEL)
def _push_head(a, lists, l, node):
    h = lists[l, HEAD]
    a[node, PREV] = -1
    a[node, NEXT] = h
    if h != -1:
        a[h, PREV] = node
    else:
        lists[l, TAIL] = node
    lists[l, HEAD] = node
    lists[l, LEN] += 1


@jit(**KERNEL)
def _unlink(a, lists, l, node):
    n = a[node, NEXT]
    p = a[node, PREV]
    if p != -1:
        a[p, NEXT] = n
    else:
        lists[l, HEAD] = n
    if n != -1:
        a[n, PREV] = p
    else:
        lists[l, TAIL] = p
    lists[l, LEN] -= 1


@jit(**KERNEL)
def _group_used(lists, g):
    return lists[2 * g, LEN] + lists[2 * g + 1, LEN]


@jit(**KERNEL, inline='always')
def _pick_victim(g, lists, grp, sc, ipar):
    """The group that gives up a slot so group ``g`` can admit one block (see the arbiter)."""
    used_g = lists[2 * g, LEN] + lists[2 * g + 1, LEN]
    if used_g >= grp[g, G_MAX]:
        if grp[g, G_PINNED] == 0 and used_g > 0:
            return g
        return _NO_VICTIM
    if sc[SC_FREE] > 0:
        return _FREE_VICTIM
    ngroups = grp.shape[0]
    # 1. groups over their maximum share (after a live change), largest excess first
    best = -1
    best_excess = 0
    for h in range(ngroups):
        if grp[h, G_PINNED] != 0:
            continue
        excess = _group_used(lists, h) - grp[h, G_MAX]
        if excess > best_excess:
            best = h
            best_excess = excess
    if best >= 0:
        return best
    # 2. lowest priority above its minimum (a group without demand has no minimum)
    clock = sc[SC_CLOCK]
    window = ipar[P_IDLE_WINDOW]
    best_prio = 0
    for h in range(ngroups):
        if grp[h, G_PINNED] != 0:
            continue
        last = grp[h, G_LAST]
        floor = grp[h, G_MIN] if last >= 0 and clock - last <= window else 0
        excess = _group_used(lists, h) - floor
        if excess <= 0:
            continue
        prio = grp[h, G_PRIO]
        if best < 0 or prio < best_prio or (prio == best_prio and excess > best_excess):
            best = h
            best_prio = prio
            best_excess = excess
    if best >= 0:
        return best
    # 3. everybody is at its minimum: replace within the group
    if grp[g, G_PINNED] == 0 and used_g > 0:
        return g
    return _NO_VICTIM


@jit(**KERNEL)
def _ghost_free(node, lists, g_i32, free_ghosts, sc):
    """Unlink a ghost node and return it to the pool (the caller handles its hash row)."""
    ngroups = lists.shape[0] // 3
    _unlink(g_i32, lists, 2 * ngroups + g_i32[node, GRP], node)
    g_i32[node, GRP] = -1
    free_ghosts[sc[SC_GFREE]] = node
    sc[SC_GFREE] += 1


@jit(**KERNEL, inline='always')
def _ghost_pop_tail(h, lists, ht, g_key, g_i32, free_ghosts, sc, shift):
    ngroups = lists.shape[0] // 3
    node = lists[2 * ngroups + h, TAIL]
    pos = _probe(ht, g_key[node], g_i32[node, VD], shift)
    _ht_delete(ht, pos, shift)
    _ghost_free(node, lists, g_i32, free_ghosts, sc)


@jit(**KERNEL, inline='always')
def _ghost_insert(v, used, key, vd, lists, ht, g_key, g_i32, free_ghosts, sc, fpar, shift):
    """Remember ``key`` in group v's ghost FIFO; returns the node or -1 (no ghost)."""
    gcap = np.int64(fpar[F_GHOST_RATIO] * used)
    if gcap <= 0:
        return -1
    ngroups = lists.shape[0] // 3
    lg = 2 * ngroups + v
    while lists[lg, LEN] >= gcap:
        _ghost_pop_tail(v, lists, ht, g_key, g_i32, free_ghosts, sc, shift)
    if sc[SC_GFREE] == 0:
        # pool empty: take from the group furthest over its ghost share
        worst = -1
        worst_excess = np.int64(0)
        for h in range(ngroups):
            glen = lists[2 * ngroups + h, LEN]
            if glen == 0:
                continue
            ex = glen - np.int64(fpar[F_GHOST_RATIO] * _group_used(lists, h))
            if worst < 0 or ex > worst_excess:
                worst = h
                worst_excess = ex
        _ghost_pop_tail(worst, lists, ht, g_key, g_i32, free_ghosts, sc, shift)
    sc[SC_GFREE] -= 1
    node = free_ghosts[sc[SC_GFREE]]
    g_key[node] = key
    g_i32[node, VD] = vd
    g_i32[node, GRP] = v
    _push_head(g_i32, lists, lg, node)
    return node


@jit(**KERNEL)
def _release_slot(s, v, vd, s_i32, free_slots, sc, vdt, vd_cnt, grp_cnt):
    s_i32[s, LF] = -4
    free_slots[sc[SC_FREE]] = s
    sc[SC_FREE] += 1
    vdt[vd, V_USED] -= 1
    vd_cnt[vd, C_EVICT] += 1
    grp_cnt[v, C_EVICT] += 1


@jit(**KERNEL, inline='always')
def _evict_one(v, lists, grp, vdt, ht, s_key, s_i32, g_key, g_i32, free_slots, free_ghosts, sc,
               ipar, fpar, vd_cnt, grp_cnt, shift):
    """S3-FIFO eviction in group ``v``: frees exactly one slot, or returns False if every block
    left in the group belongs to a pinned vdisk."""
    ls = 2 * v
    lm = 2 * v + 1
    grp[v, G_EVICTED] = 1
    used = lists[ls, LEN] + lists[lm, LEN]
    small_cap = np.int64(fpar[F_SMALL_RATIO] * used)
    threshold = ipar[P_MOVE_THRESHOLD]
    budget = 4 * used + 4          # every unpinned block is evicted within 4 passes
    while budget > 0:
        budget -= 1
        if lists[ls, LEN] > 0 and (lists[ls, LEN] >= small_cap or lists[lm, LEN] == 0):
            s = lists[ls, TAIL]
            vd = s_i32[s, VD]
            _unlink(s_i32, lists, ls, s)
            if (s_i32[s, LF] & 3) >= threshold or vdt[vd, V_PINNED] != 0:
                s_i32[s, LF] = lm * 4                  # moved to main with freq 0
                _push_head(s_i32, lists, lm, s)
                vd_cnt[vd, C_MOVE] += 1
                grp_cnt[v, C_MOVE] += 1
                continue
            key = s_key[s]
            node = _ghost_insert(v, used, key, vd, lists, ht, g_key, g_i32, free_ghosts, sc,
                                 fpar, shift)
            pos = _probe(ht, key, vd, shift)
            if node >= 0:
                ht[pos, 1] = _word(vd, -2 - node)
            else:
                _ht_delete(ht, pos, shift)
            _release_slot(s, v, vd, s_i32, free_slots, sc, vdt, vd_cnt, grp_cnt)
            return True
        s = lists[lm, TAIL]
        if s == -1:
            return False
        vd = s_i32[s, VD]
        _unlink(s_i32, lists, lm, s)
        lf = s_i32[s, LF]
        if (lf & 3) != 0 or vdt[vd, V_PINNED] != 0:
            if (lf & 3) != 0:
                s_i32[s, LF] = lf - 1                  # 2-bit clock: reinsert, freq - 1
            _push_head(s_i32, lists, lm, s)
            continue
        pos = _probe(ht, s_key[s], vd, shift)
        _ht_delete(ht, pos, shift)
        _release_slot(s, v, vd, s_i32, free_slots, sc, vdt, vd_cnt, grp_cnt)
        return True
    return False


@jit(**KERNEL)
def _access(keys, vds, writes, nbytes, out_hit, out_slot, ht, s_key, s_i32, g_key, g_i32, lists,
            grp, vdt, free_slots, free_ghosts, sc, ipar, fpar, vd_cnt, grp_cnt, shift, block_size):
    """One batch of block accesses: hit -> bump frequency; miss -> admit by the group's policy.
    ``nbytes`` may be empty: every access is then ``block_size`` bytes."""
    n_hits = 0
    per_access_bytes = nbytes.shape[0] > 0
    for i in range(keys.shape[0]):
        key = keys[i]
        vd = vds[i]
        w = writes[i]
        nb = nbytes[i] if per_access_bytes else block_size
        g = vdt[vd, V_GROUP]
        sc[SC_CLOCK] += 1
        grp[g, G_LAST] = sc[SC_CLOCK]
        pos = _probe(ht, key, vd, shift)
        word = ht[pos, 1]
        ref = _ref(word) if word != EMPTY else -1
        if ref >= 0:
            lf = s_i32[ref, LF]
            if (lf & 3) < 3:
                s_i32[ref, LF] = lf + 1
            out_hit[i] = True
            out_slot[i] = ref
            n_hits += 1
            hg = lf >> 3                               # list >> 1 = group
            if w:
                vd_cnt[vd, C_WRITE_HIT] += 1
                vd_cnt[vd, C_WRITE_HIT_BYTES] += nb
                grp_cnt[hg, C_WRITE_HIT] += 1
                grp_cnt[hg, C_WRITE_HIT_BYTES] += nb
            else:
                vd_cnt[vd, C_READ_HIT] += 1
                vd_cnt[vd, C_READ_HIT_BYTES] += nb
                grp_cnt[hg, C_READ_HIT] += 1
                grp_cnt[hg, C_READ_HIT_BYTES] += nb
            continue
        out_hit[i] = False
        out_slot[i] = -1
        if w:
            vd_cnt[vd, C_WRITE_MISS] += 1
            vd_cnt[vd, C_WRITE_MISS_BYTES] += nb
            grp_cnt[g, C_WRITE_MISS] += 1
            grp_cnt[g, C_WRITE_MISS_BYTES] += nb
        else:
            vd_cnt[vd, C_READ_MISS] += 1
            vd_cnt[vd, C_READ_MISS_BYTES] += nb
            grp_cnt[g, C_READ_MISS] += 1
            grp_cnt[g, C_READ_MISS_BYTES] += nb
        promote = grp[g, G_PROMOTE]
        if promote == PROMOTE_NEVER or (promote == PROMOTE_READ and w):
            continue
        victim = _pick_victim(g, lists, grp, sc, ipar)
        if victim == _NO_VICTIM:
            vd_cnt[vd, C_BYPASS] += 1
            grp_cnt[g, C_BYPASS] += 1
            continue
        ghost_hit = ref <= -2
        if ghost_hit:
            _ghost_free(-2 - ref, lists, g_i32, free_ghosts, sc)
            _ht_delete(ht, pos, shift)
            vd_cnt[vd, C_GHOST_HIT] += 1
            grp_cnt[g, C_GHOST_HIT] += 1
        if victim != _FREE_VICTIM:
            if not _evict_one(victim, lists, grp, vdt, ht, s_key, s_i32, g_key, g_i32,
                              free_slots, free_ghosts, sc, ipar, fpar, vd_cnt, grp_cnt, shift):
                vd_cnt[vd, C_BYPASS] += 1
                grp_cnt[g, C_BYPASS] += 1
                continue
        sc[SC_FREE] -= 1
        s = free_slots[sc[SC_FREE]]
        if ghost_hit:
            l = 2 * g + 1
        elif grp[g, G_EVICTED] == 0 and \
                lists[2 * g, LEN] >= np.int64(fpar[F_SMALL_RATIO] * grp[g, G_MAX]):
            l = 2 * g + 1
        else:
            l = 2 * g
        s_key[s] = key
        s_i32[s, VD] = vd
        s_i32[s, LF] = l * 4
        _push_head(s_i32, lists, l, s)
        vdt[vd, V_USED] += 1
        pos = _probe(ht, key, vd, shift)
        ht[pos, 0] = key
        ht[pos, 1] = _word(vd, s)
        out_slot[i] = s
        vd_cnt[vd, C_ADMIT] += 1
        grp_cnt[g, C_ADMIT] += 1
    return n_hits


@jit(**KERNEL)
def _find(keys, vds, out_slot, ht, shift):
    """Slot of each block or -1, without touching any state (a peek)."""
    for i in range(keys.shape[0]):
        word = ht[_probe(ht, keys[i], vds[i], shift), 1]
        r = _ref(word) if word != EMPTY else -1
        out_slot[i] = r if r >= 0 else -1


@jit(**KERNEL)
def _drop_slot(s, ht, s_key, s_i32, lists, vdt, free_slots, sc, shift):
    """Free a cached block outside eviction (invalidation); the caller counts it."""
    vd = s_i32[s, VD]
    _unlink(s_i32, lists, s_i32[s, LF] >> 2, s)
    _ht_delete(ht, _probe(ht, s_key[s], vd, shift), shift)
    s_i32[s, LF] = -4
    free_slots[sc[SC_FREE]] = s
    sc[SC_FREE] += 1
    vdt[vd, V_USED] -= 1


@jit(**KERNEL)
def _remove(keys, vds, ht, s_key, s_i32, g_i32, lists, vdt, free_slots, free_ghosts, sc,
            vd_cnt, grp_cnt, shift):
    """Invalidate blocks (unmap, overwrite elsewhere): cached copies and ghost entries go."""
    removed = 0
    for i in range(keys.shape[0]):
        pos = _probe(ht, keys[i], vds[i], shift)
        word = ht[pos, 1]
        if word == EMPTY:
            continue
        r = _ref(word)
        if r >= 0:
            g = s_i32[r, LF] >> 3
            _drop_slot(r, ht, s_key, s_i32, lists, vdt, free_slots, sc, shift)
            vd_cnt[vds[i], C_REMOVE] += 1
            grp_cnt[g, C_REMOVE] += 1
            removed += 1
        else:
            _ghost_free(-2 - r, lists, g_i32, free_ghosts, sc)
            _ht_delete(ht, pos, shift)
    return removed


@jit(**KERNEL)
def _remove_vdisk(vd, ht, s_key, s_i32, g_key, g_i32, lists, vdt, free_slots, free_ghosts, sc,
                  vd_cnt, grp_cnt, shift):
    """Drop every cached block and ghost entry of one vdisk (deleted or moved off flash)."""
    removed = 0
    for s in range(s_key.shape[0]):
        if s_i32[s, LF] >= 0 and s_i32[s, VD] == vd:
            g = s_i32[s, LF] >> 3
            _drop_slot(s, ht, s_key, s_i32, lists, vdt, free_slots, sc, shift)
            vd_cnt[vd, C_REMOVE] += 1
            grp_cnt[g, C_REMOVE] += 1
            removed += 1
    for node in range(g_key.shape[0]):
        if g_i32[node, GRP] >= 0 and g_i32[node, VD] == vd:
            _ht_delete(ht, _probe(ht, g_key[node], vd, shift), shift)
            _ghost_free(node, lists, g_i32, free_ghosts, sc)
    return removed


@jit(**KERNEL)
def _move_vdisk(vd, new_group, s_i32, lists):
    """Re-home a vdisk's cached blocks into ``new_group`` (same queue kind, oldest first)."""
    moved = 0
    ngroups = lists.shape[0] // 3
    for g in range(ngroups):
        if g == new_group:
            continue
        for kind in range(2):
            l = 2 * g + kind
            s = lists[l, TAIL]
            while s != -1:
                p = s_i32[s, PREV]
                if s_i32[s, VD] == vd:
                    _unlink(s_i32, lists, l, s)
                    nl = 2 * new_group + kind
                    s_i32[s, LF] = nl * 4 + (s_i32[s, LF] & 3)
                    _push_head(s_i32, lists, nl, s)
                    moved += 1
                s = p
    return moved


@jit(**KERNEL)
def _shrink(lists, grp, vdt, ht, s_key, s_i32, g_key, g_i32, free_slots, free_ghosts, sc, ipar,
            fpar, vd_cnt, grp_cnt, shift):
    """Evict from every unpinned group over its maximum share until it fits (live changes)."""
    evicted = 0
    for g in range(grp.shape[0]):
        if grp[g, G_PINNED] != 0:
            continue
        while _group_used(lists, g) > grp[g, G_MAX]:
            if not _evict_one(g, lists, grp, vdt, ht, s_key, s_i32, g_key, g_i32, free_slots,
                              free_ghosts, sc, ipar, fpar, vd_cnt, grp_cnt, shift):
                break
            evicted += 1
    return evicted


@jit(**KERNEL)
def _access_one(key, vd, write, nb, k1, v1, w1, n1, h1, s1, ht, s_key, s_i32, g_key, g_i32,
                lists, grp, vdt, free_slots, free_ghosts, sc, ipar, fpar, vd_cnt, grp_cnt, shift,
                block_size):
    """``_access`` of one block, with scalars in and one code out (the data path's common
    case: no numpy item writes in Python): the slot of a hit, ``-2 - slot`` for an admitted
    miss, -1 for a miss that was not admitted."""
    k1[0] = key
    v1[0] = vd
    w1[0] = write
    n1[0] = nb
    _access(k1, v1, w1, n1, h1, s1, ht, s_key, s_i32, g_key, g_i32, lists, grp, vdt,
            free_slots, free_ghosts, sc, ipar, fpar, vd_cnt, grp_cnt, shift, block_size)
    s = s1[0]
    if h1[0]:
        return s
    return -2 - s if s >= 0 else -1
