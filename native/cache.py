"""Numba kernels of the flash-cache directory: grouped S3-FIFO over preallocated numpy arrays.

Private: the only caller is ``vmblock.cache.directory.CacheDirectory``, which allocates the state,
validates every input and fixes dtypes. The algorithm (S3-FIFO per eviction group and the arbiter
across groups) is described in that module's docstring; this file is its array form.

The state is one ``DirectoryState``, a named tuple of numpy arrays (compiled code passes it as
one argument and reads a field at no cost), all preallocated, nothing allocated per access:

* ``table`` int64[H, 2]: hash table, linear probing, power-of-two size, Fibonacci hashing,
  backward-shift deletion (no tombstones). Row ``(block, word)`` with
  ``word = vdisk << 32 | (ref & 0xffffffff)``, so a probe touches one cache line; ``word == -1``
  is empty. ``ref >= 0`` is a cache slot, ``ref <= -2`` ghost node ``-2 - ref``.
* slots (one per cache block): ``slot_block[s]`` int64 and one 16-byte row
  ``slot_links[s] = (next, prev, vdisk, list * 4 + freq)`` (list -1 = free; freq is the 2-bit
  counter).
* ghost nodes (blocks recently evicted from a small FIFO): ``ghost_block[n]`` int64 and
  ``ghost_links[n] = (next, prev, vdisk, group)`` (group -1 = free).
* ``lists[l] = (head, tail, len)``: list ``2g`` is group g's small FIFO, ``2g+1`` its main FIFO
  (both over slots), ``2G+g`` its ghost FIFO (over ghost nodes). Head is newest, tail oldest.
* ``group_info[g]`` int64 fields ``G_*``, ``vdisk_info[v]`` int64 fields ``V_*``; stacks of free
  slots and ghost nodes; ``scalars`` (stack heights, the access clock); ``settings`` (integer
  parameters, the hash shift, the block size); ``ratios`` (float parameters); counters
  ``vdisk_counters[v, C_*]`` and ``group_counters[g, C_*]``.

Helpers index 2-D arrays element by element and never slice rows: a row view costs a reference
count update per use inside the loop.
"""

from typing import NamedTuple

import numpy as np
from numba import jit

from .jit import JIT_NO_REFCOUNT

# slot / ghost link columns
NEXT, PREV, VDISK, LIST_FREQ = 0, 1, 2, 3   # LIST_FREQ: list * 4 + freq for slots
GROUP = 3                                   # ghost nodes: owning group (-1 free)
# lists columns
HEAD, TAIL, LEN = 0, 1, 2
# group fields
G_PRIORITY, G_MIN, G_MAX, G_PROMOTE, G_PINNED, G_EVICTED, G_LAST_ACCESS, G_FIELDS = range(8)
# vdisk fields
V_GROUP, V_PINNED, V_CACHED, V_FIELDS = range(4)
# promotion policies
PROMOTE_NEVER, PROMOTE_READ, PROMOTE_WRITE = 0, 1, 2
# scalars
FREE_SLOTS_TOP, FREE_GHOSTS_TOP, CLOCK, SCALAR_FIELDS = range(4)
# integer settings
MOVE_THRESHOLD, IDLE_WINDOW, HASH_SHIFT, BLOCK_SIZE, SETTING_FIELDS = range(5)
# float settings
SMALL_RATIO, GHOST_RATIO, RATIO_FIELDS = range(3)
# counter columns
(C_READ_HIT, C_WRITE_HIT, C_READ_MISS, C_WRITE_MISS, C_READ_HIT_BYTES, C_WRITE_HIT_BYTES,
 C_READ_MISS_BYTES, C_WRITE_MISS_BYTES, C_ADMIT, C_EVICT, C_MOVE, C_GHOST_HIT, C_BYPASS,
 C_REMOVE, C_FIELDS) = range(15)
BYTES = C_READ_HIT_BYTES - C_READ_HIT   # a request column + BYTES = its bytes column
assert (C_WRITE_HIT + BYTES, C_READ_MISS + BYTES, C_WRITE_MISS + BYTES) == \
    (C_WRITE_HIT_BYTES, C_READ_MISS_BYTES, C_WRITE_MISS_BYTES)

EMPTY = -1
_FREE_VICTIM = -2     # _pick_victim: take a free slot
_NO_VICTIM = -1       # _pick_victim: nothing may be evicted -> bypass
_LOW32 = 0xFFFFFFFF

_C1 = np.uint64(0x9E3779B97F4A7C15)
_C2 = np.uint64(0xC2B2AE3D27D4EB4F)


class DirectoryState(NamedTuple):
    """Every array of one directory (see the module docstring), passed to a kernel as one."""

    table: np.ndarray           # int64[H, 2] hash rows (block, vdisk << 32 | ref)
    slot_block: np.ndarray      # int64[slots]
    slot_links: np.ndarray      # int32[slots, 4] next, prev, vdisk, list * 4 + freq
    ghost_block: np.ndarray     # int64[ghosts]
    ghost_links: np.ndarray     # int32[ghosts, 4] next, prev, vdisk, group
    lists: np.ndarray           # int64[3 * groups, 3] head, tail, length
    group_info: np.ndarray      # int64[groups, G_FIELDS]
    vdisk_info: np.ndarray      # int64[vdisks, V_FIELDS]
    free_slots: np.ndarray      # int32 stack
    free_ghosts: np.ndarray     # int32 stack
    scalars: np.ndarray         # int64[SCALAR_FIELDS]
    settings: np.ndarray        # int64[SETTING_FIELDS]
    ratios: np.ndarray          # float64[RATIO_FIELDS]
    vdisk_counters: np.ndarray  # int64[vdisks, C_FIELDS]
    group_counters: np.ndarray  # int64[groups, C_FIELDS]


@jit(**JIT_NO_REFCOUNT)
def _home(block, vdisk, shift):
    x = (np.uint64(block) ^ (np.uint64(vdisk) * _C2)) * _C1
    return np.int64(x >> np.uint64(shift))


@jit(**JIT_NO_REFCOUNT)
def _word(vdisk, ref):
    return (np.int64(vdisk) << 32) | (np.int64(ref) & _LOW32)


@jit(**JIT_NO_REFCOUNT)
def _ref(word):
    low = word & _LOW32
    return low - (1 << 32) if low >= (1 << 31) else low


@jit(**JIT_NO_REFCOUNT)
def _probe(table, block, vdisk, shift):
    """Row of (block, vdisk), or the empty row where it would go."""
    mask = table.shape[0] - 1
    i = _home(block, vdisk, shift)
    while True:
        w = table[i, 1]
        if w == EMPTY or (table[i, 0] == block and (w >> 32) == vdisk):
            return i
        i = (i + 1) & mask


@jit(**JIT_NO_REFCOUNT)
def _table_delete(table, row, shift):
    """Empty ``row`` and shift later rows of its probe run back (Knuth's algorithm R)."""
    mask = table.shape[0] - 1
    i = row
    j = row
    while True:
        j = (j + 1) & mask
        w = table[j, 1]
        if w == EMPTY:
            break
        k = _home(table[j, 0], w >> 32, shift)
        if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
            table[i, 0] = table[j, 0]
            table[i, 1] = w
            i = j
    table[i, 1] = EMPTY


@jit(**JIT_NO_REFCOUNT)
def _push_head(links, lists, lst, node):
    h = lists[lst, HEAD]
    links[node, PREV] = -1
    links[node, NEXT] = h
    if h != -1:
        links[h, PREV] = node
    else:
        lists[lst, TAIL] = node
    lists[lst, HEAD] = node
    lists[lst, LEN] += 1


@jit(**JIT_NO_REFCOUNT)
def _unlink(links, lists, lst, node):
    n = links[node, NEXT]
    p = links[node, PREV]
    if p != -1:
        links[p, NEXT] = n
    else:
        lists[lst, HEAD] = n
    if n != -1:
        links[n, PREV] = p
    else:
        lists[lst, TAIL] = p
    lists[lst, LEN] -= 1


@jit(**JIT_NO_REFCOUNT)
def _group_used(lists, group):
    return lists[2 * group, LEN] + lists[2 * group + 1, LEN]


@jit(**JIT_NO_REFCOUNT, inline='always')
def _count(state, vdisk, group, column, amount):
    """Add ``amount`` to one counter of the vdisk and of the group."""
    state.vdisk_counters[vdisk, column] += amount
    state.group_counters[group, column] += amount


@jit(**JIT_NO_REFCOUNT, inline='always')
def _count_request(state, vdisk, group, is_write, hit, nbytes):
    """A read or write that hit or missed: one request and its bytes."""
    if hit:
        column = C_WRITE_HIT if is_write else C_READ_HIT
    else:
        column = C_WRITE_MISS if is_write else C_READ_MISS
    _count(state, vdisk, group, column, 1)
    _count(state, vdisk, group, column + BYTES, nbytes)


@jit(**JIT_NO_REFCOUNT, inline='always')
def _pick_victim(group, state):
    """The group that gives up a slot so ``group`` can admit one block (see the arbiter)."""
    lists = state.lists
    info = state.group_info
    used_g = lists[2 * group, LEN] + lists[2 * group + 1, LEN]
    if used_g >= info[group, G_MAX]:
        if info[group, G_PINNED] == 0 and used_g > 0:
            return group
        return _NO_VICTIM
    if state.scalars[FREE_SLOTS_TOP] > 0:
        return _FREE_VICTIM
    ngroups = info.shape[0]
    # 1. groups over their maximum share (after a live change), largest excess first
    best = -1
    best_excess = 0
    for h in range(ngroups):
        if info[h, G_PINNED] != 0:
            continue
        excess = _group_used(lists, h) - info[h, G_MAX]
        if excess > best_excess:
            best = h
            best_excess = excess
    if best >= 0:
        return best
    # 2. lowest priority above its minimum (a group without demand has no minimum)
    clock = state.scalars[CLOCK]
    window = state.settings[IDLE_WINDOW]
    best_prio = 0
    for h in range(ngroups):
        if info[h, G_PINNED] != 0:
            continue
        last = info[h, G_LAST_ACCESS]
        floor = info[h, G_MIN] if last >= 0 and clock - last <= window else 0
        excess = _group_used(lists, h) - floor
        if excess <= 0:
            continue
        prio = info[h, G_PRIORITY]
        if best < 0 or prio < best_prio or (prio == best_prio and excess > best_excess):
            best = h
            best_prio = prio
            best_excess = excess
    if best >= 0:
        return best
    # 3. everybody is at its minimum: replace within the group
    if info[group, G_PINNED] == 0 and used_g > 0:
        return group
    return _NO_VICTIM


@jit(**JIT_NO_REFCOUNT)
def _ghost_free(node, lists, ghost_links, free_ghosts, scalars):
    """Unlink a ghost node and return it to the pool (the caller handles its hash row)."""
    ngroups = lists.shape[0] // 3
    _unlink(ghost_links, lists, 2 * ngroups + ghost_links[node, GROUP], node)
    ghost_links[node, GROUP] = -1
    free_ghosts[scalars[FREE_GHOSTS_TOP]] = node
    scalars[FREE_GHOSTS_TOP] += 1


@jit(**JIT_NO_REFCOUNT, inline='always')
def _ghost_pop_tail(group, state):
    lists = state.lists
    shift = state.settings[HASH_SHIFT]
    node = lists[2 * (lists.shape[0] // 3) + group, TAIL]
    row = _probe(state.table, state.ghost_block[node], state.ghost_links[node, VDISK], shift)
    _table_delete(state.table, row, shift)
    _ghost_free(node, lists, state.ghost_links, state.free_ghosts, state.scalars)


@jit(**JIT_NO_REFCOUNT, inline='always')
def _ghost_insert(group, used, block, vdisk, state):
    """Remember ``block`` in the group's ghost FIFO; returns the node or -1 (no ghost)."""
    lists = state.lists
    scalars = state.scalars
    ghost_ratio = state.ratios[GHOST_RATIO]
    gcap = np.int64(ghost_ratio * used)
    if gcap <= 0:
        return -1
    ngroups = lists.shape[0] // 3
    lg = 2 * ngroups + group
    while lists[lg, LEN] >= gcap:
        _ghost_pop_tail(group, state)
    if scalars[FREE_GHOSTS_TOP] == 0:
        # pool empty: take from the group furthest over its ghost share
        worst = -1
        worst_excess = np.int64(0)
        for h in range(ngroups):
            glen = lists[2 * ngroups + h, LEN]
            if glen == 0:
                continue
            ex = glen - np.int64(ghost_ratio * _group_used(lists, h))
            if worst < 0 or ex > worst_excess:
                worst = h
                worst_excess = ex
        _ghost_pop_tail(worst, state)
    scalars[FREE_GHOSTS_TOP] -= 1
    node = state.free_ghosts[scalars[FREE_GHOSTS_TOP]]
    state.ghost_block[node] = block
    state.ghost_links[node, VDISK] = vdisk
    state.ghost_links[node, GROUP] = group
    _push_head(state.ghost_links, lists, lg, node)
    return node


@jit(**JIT_NO_REFCOUNT, inline='always')
def _free_slot(slot, vdisk, state):
    """Mark a slot free and push it on the free stack (the caller unlinked it)."""
    scalars = state.scalars
    state.slot_links[slot, LIST_FREQ] = -4
    state.free_slots[scalars[FREE_SLOTS_TOP]] = slot
    scalars[FREE_SLOTS_TOP] += 1
    state.vdisk_info[vdisk, V_CACHED] -= 1


@jit(**JIT_NO_REFCOUNT, inline='always')
def _evict_one(group, state):
    """S3-FIFO eviction in ``group``: frees exactly one slot, or returns False if every block
    left in the group belongs to a pinned vdisk."""
    lists = state.lists
    links = state.slot_links
    table = state.table
    vdisk_info = state.vdisk_info
    shift = state.settings[HASH_SHIFT]
    ls = 2 * group
    lm = 2 * group + 1
    state.group_info[group, G_EVICTED] = 1
    used = lists[ls, LEN] + lists[lm, LEN]
    small_cap = np.int64(state.ratios[SMALL_RATIO] * used)
    threshold = state.settings[MOVE_THRESHOLD]
    budget = 4 * used + 4          # every unpinned block is evicted within 4 passes
    while budget > 0:
        budget -= 1
        if lists[ls, LEN] > 0 and (lists[ls, LEN] >= small_cap or lists[lm, LEN] == 0):
            s = lists[ls, TAIL]
            vdisk = links[s, VDISK]
            _unlink(links, lists, ls, s)
            if (links[s, LIST_FREQ] & 3) >= threshold or vdisk_info[vdisk, V_PINNED] != 0:
                links[s, LIST_FREQ] = lm * 4                  # moved to main with freq 0
                _push_head(links, lists, lm, s)
                _count(state, vdisk, group, C_MOVE, 1)
                continue
            block = state.slot_block[s]
            node = _ghost_insert(group, used, block, vdisk, state)
            row = _probe(table, block, vdisk, shift)
            if node >= 0:
                table[row, 1] = _word(vdisk, -2 - node)
            else:
                _table_delete(table, row, shift)
            _free_slot(s, vdisk, state)
            _count(state, vdisk, group, C_EVICT, 1)
            return True
        s = lists[lm, TAIL]
        if s == -1:
            return False
        vdisk = links[s, VDISK]
        _unlink(links, lists, lm, s)
        lf = links[s, LIST_FREQ]
        if (lf & 3) != 0 or vdisk_info[vdisk, V_PINNED] != 0:
            if (lf & 3) != 0:
                links[s, LIST_FREQ] = lf - 1                  # 2-bit clock: reinsert, freq - 1
            _push_head(links, lists, lm, s)
            continue
        _table_delete(table, _probe(table, state.slot_block[s], vdisk, shift), shift)
        _free_slot(s, vdisk, state)
        _count(state, vdisk, group, C_EVICT, 1)
        return True
    return False


@jit(**JIT_NO_REFCOUNT, inline='always')
def _access_block(block, vdisk, is_write, nbytes, state):
    """One access: hit -> bump frequency; miss -> admit by the group's policy. Returns the slot
    of a hit, ``-2 - slot`` for an admitted miss, -1 for a miss that was not admitted."""
    table = state.table
    links = state.slot_links
    lists = state.lists
    info = state.group_info
    scalars = state.scalars
    shift = state.settings[HASH_SHIFT]
    group = state.vdisk_info[vdisk, V_GROUP]
    scalars[CLOCK] += 1
    info[group, G_LAST_ACCESS] = scalars[CLOCK]
    row = _probe(table, block, vdisk, shift)
    word = table[row, 1]
    ref = _ref(word) if word != EMPTY else -1
    if ref >= 0:
        lf = links[ref, LIST_FREQ]
        if (lf & 3) < 3:
            links[ref, LIST_FREQ] = lf + 1
        _count_request(state, vdisk, lf >> 3, is_write, True, nbytes)   # list >> 1 = group
        return ref
    _count_request(state, vdisk, group, is_write, False, nbytes)
    promote = info[group, G_PROMOTE]
    if promote == PROMOTE_NEVER or (promote == PROMOTE_READ and is_write):
        return -1
    victim = _pick_victim(group, state)
    if victim == _NO_VICTIM:
        _count(state, vdisk, group, C_BYPASS, 1)
        return -1
    ghost_hit = ref <= -2
    if ghost_hit:
        _ghost_free(-2 - ref, lists, state.ghost_links, state.free_ghosts, scalars)
        _table_delete(table, row, shift)
        _count(state, vdisk, group, C_GHOST_HIT, 1)
    if victim != _FREE_VICTIM:
        if not _evict_one(victim, state):
            _count(state, vdisk, group, C_BYPASS, 1)
            return -1
    scalars[FREE_SLOTS_TOP] -= 1
    s = state.free_slots[scalars[FREE_SLOTS_TOP]]
    if ghost_hit:
        lst = 2 * group + 1
    elif info[group, G_EVICTED] == 0 and \
            lists[2 * group, LEN] >= np.int64(state.ratios[SMALL_RATIO] * info[group, G_MAX]):
        lst = 2 * group + 1
    else:
        lst = 2 * group
    state.slot_block[s] = block
    links[s, VDISK] = vdisk
    links[s, LIST_FREQ] = lst * 4
    _push_head(links, lists, lst, s)
    state.vdisk_info[vdisk, V_CACHED] += 1
    row = _probe(table, block, vdisk, shift)
    table[row, 0] = block
    table[row, 1] = _word(vdisk, s)
    _count(state, vdisk, group, C_ADMIT, 1)
    return -2 - s


@jit(**JIT_NO_REFCOUNT)
def _access(blocks, vdisks, writes, nbytes, out_hit, out_slot, state):
    """One batch of block accesses. ``out_slot``: the slot of a hit or of an admitted miss, -1
    otherwise. ``nbytes`` may be empty: every access is then one block. Returns the hits."""
    n_hits = 0
    per_access_bytes = nbytes.shape[0] > 0
    block_size = state.settings[BLOCK_SIZE]
    for i in range(blocks.shape[0]):
        code = _access_block(blocks[i], vdisks[i], writes[i],
                             nbytes[i] if per_access_bytes else block_size, state)
        hit = code >= 0
        out_hit[i] = hit
        out_slot[i] = code if hit else -2 - code
        n_hits += hit
    return n_hits


# The data path's two kernels take the state's arrays one by one, in ``DirectoryState`` order
# (``*state`` in Python), and rebuild the tuple inside: Numba's dispatcher types an array
# argument in C but a tuple argument in Python, ~1 us more per call (measured: 0.66 vs 1.7 us
# with 15 arrays), which is a fifth of a cached 4 KiB read.

@jit(**JIT_NO_REFCOUNT)
def _access_one(block, vdisk, is_write, nbytes, table, slot_block, slot_links, ghost_block,
                ghost_links, lists, group_info, vdisk_info, free_slots, free_ghosts, scalars,
                settings, ratios, vdisk_counters, group_counters):
    """``_access`` of one block with scalars in and its code out (see ``_access_block``): the
    data path's common case, with no array to fill or read in Python."""
    state = DirectoryState(table, slot_block, slot_links, ghost_block, ghost_links, lists,
                           group_info, vdisk_info, free_slots, free_ghosts, scalars, settings,
                           ratios, vdisk_counters, group_counters)
    return _access_block(block, vdisk, is_write, nbytes, state)


@jit(**JIT_NO_REFCOUNT)
def _access_run(vdisk, first, count, offset, end, is_write, out_codes, table, slot_block,
                slot_links, ghost_block, ghost_links, lists, group_info, vdisk_info, free_slots,
                free_ghosts, scalars, settings, ratios, vdisk_counters, group_counters):
    """Blocks ``first .. first + count - 1`` of one vdisk, touched by the bytes [offset, end)
    of one command (each block counts the bytes of it the command covers); one code per
    block in ``out_codes`` (see ``_access_block``)."""
    state = DirectoryState(table, slot_block, slot_links, ghost_block, ghost_links, lists,
                           group_info, vdisk_info, free_slots, free_ghosts, scalars, settings,
                           ratios, vdisk_counters, group_counters)
    block_size = settings[BLOCK_SIZE]
    for i in range(count):
        start = (first + i) * block_size
        nbytes = min(end, start + block_size) - max(offset, start)
        out_codes[i] = _access_block(first + i, vdisk, is_write, nbytes, state)


@jit(**JIT_NO_REFCOUNT)
def _find(blocks, vdisks, out_slot, state):
    """Slot of each block or -1, without touching any state (a peek)."""
    table = state.table
    shift = state.settings[HASH_SHIFT]
    for i in range(blocks.shape[0]):
        word = table[_probe(table, blocks[i], vdisks[i], shift), 1]
        r = _ref(word) if word != EMPTY else -1
        out_slot[i] = r if r >= 0 else -1


@jit(**JIT_NO_REFCOUNT, inline='always')
def _drop_slot(slot, state):
    """Free a cached block outside eviction (invalidation), counted as a removal."""
    links = state.slot_links
    vdisk = links[slot, VDISK]
    lst = links[slot, LIST_FREQ] >> 2
    shift = state.settings[HASH_SHIFT]
    _unlink(links, state.lists, lst, slot)
    _table_delete(state.table, _probe(state.table, state.slot_block[slot], vdisk, shift), shift)
    _free_slot(slot, vdisk, state)
    _count(state, vdisk, lst >> 1, C_REMOVE, 1)


@jit(**JIT_NO_REFCOUNT)
def _remove(blocks, vdisks, state):
    """Invalidate blocks (unmap, overwrite elsewhere): cached copies and ghost entries go."""
    table = state.table
    shift = state.settings[HASH_SHIFT]
    removed = 0
    for i in range(blocks.shape[0]):
        row = _probe(table, blocks[i], vdisks[i], shift)
        word = table[row, 1]
        if word == EMPTY:
            continue
        r = _ref(word)
        if r >= 0:
            _drop_slot(r, state)
            removed += 1
        else:
            _ghost_free(-2 - r, state.lists, state.ghost_links, state.free_ghosts, state.scalars)
            _table_delete(table, row, shift)
    return removed


@jit(**JIT_NO_REFCOUNT)
def _remove_vdisk(vdisk, state):
    """Drop every cached block and ghost entry of one vdisk (deleted or moved off flash)."""
    links = state.slot_links
    ghost_links = state.ghost_links
    shift = state.settings[HASH_SHIFT]
    removed = 0
    for s in range(state.slot_block.shape[0]):
        if links[s, LIST_FREQ] >= 0 and links[s, VDISK] == vdisk:
            _drop_slot(s, state)
            removed += 1
    for node in range(state.ghost_block.shape[0]):
        if ghost_links[node, GROUP] >= 0 and ghost_links[node, VDISK] == vdisk:
            _table_delete(state.table, _probe(state.table, state.ghost_block[node], vdisk, shift),
                          shift)
            _ghost_free(node, state.lists, ghost_links, state.free_ghosts, state.scalars)
    return removed


@jit(**JIT_NO_REFCOUNT)
def _move_vdisk(vdisk, new_group, state):
    """Re-home a vdisk's cached blocks into ``new_group`` (same queue kind, oldest first)."""
    links = state.slot_links
    lists = state.lists
    moved = 0
    ngroups = lists.shape[0] // 3
    for g in range(ngroups):
        if g == new_group:
            continue
        for kind in range(2):
            lst = 2 * g + kind
            s = lists[lst, TAIL]
            while s != -1:
                p = links[s, PREV]
                if links[s, VDISK] == vdisk:
                    _unlink(links, lists, lst, s)
                    new_list = 2 * new_group + kind
                    links[s, LIST_FREQ] = new_list * 4 + (links[s, LIST_FREQ] & 3)
                    _push_head(links, lists, new_list, s)
                    moved += 1
                s = p
    return moved


@jit(**JIT_NO_REFCOUNT)
def _shrink(state):
    """Evict from every unpinned group over its maximum share until it fits (live changes)."""
    info = state.group_info
    evicted = 0
    for g in range(info.shape[0]):
        if info[g, G_PINNED] != 0:
            continue
        while _group_used(state.lists, g) > info[g, G_MAX]:
            if not _evict_one(g, state):
                break
            evicted += 1
    return evicted
