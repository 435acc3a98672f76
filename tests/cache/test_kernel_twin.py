"""The jitted cache kernels against their slow twin (tests/support/cache_naive.py).

Random traces with several vdisks and groups, reads and writes, every promotion policy, small
caches so that eviction, ghosts, moves and the arbiter all run: hits, slots and every counter
must be identical, and the directory's redundant state must stay consistent.
"""

import numpy as np
import pytest
from support.cache_naive import NaiveCache

from vmblock.cache import COUNTERS, CacheDirectory, GroupSpec

GROUPS = [
    [GroupSpec("one")],
    [GroupSpec("gold", priority=10, min=0.3, max=0.9), GroupSpec("bulk", priority=0, max=0.6)],
    [GroupSpec("a", priority=5, min=0.2, max=0.5, promote="read"),
     GroupSpec("b", priority=5, min=0.1, max=0.7),
     GroupSpec("c", priority=1, max=0.4, promote="never"),
     GroupSpec("d", priority=0, min=0.1, max=1.0)],
    [GroupSpec("pinned", priority=0, max=0.3, pinned=True), GroupSpec("rest", min=0.5)],
]


def _trace(rng, n, nvdisks, nblocks):
    # a mix of hot blocks (zipf-ish) and a scan, so both hits and ghost hits happen
    hot = rng.zipf(1.3, n) % nblocks
    scan = np.arange(n) % (nblocks * 4)
    keys = np.where(rng.random(n) < 0.7, hot, scan).astype(np.int64)
    vd = rng.integers(0, nvdisks, n).astype(np.int32)
    w = rng.random(n) < 0.3
    return keys, vd, w


def _compare(d, twin):
    assert d.state.vdisk_counters.tolist() == twin.vd_cnt
    assert d.state.group_counters.tolist() == twin.grp_cnt
    assert d.group_used().tolist() == [twin.used(g) for g in range(twin.ng)]
    assert d.ghost_len().tolist() == [len(x) for x in twin.ghost]
    d.check()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("groups", range(len(GROUPS)))
def test_kernel_matches_twin_on_random_traces(seed, groups):
    rng = np.random.default_rng(seed)
    specs = GROUPS[groups]
    nvdisks = 5
    nslots = int(rng.integers(8, 200))
    params = ["", "ghost-size-ratio=0", "small-size-ratio=0.25,move-to-main-threshold=1",
              "idle-window=50"][seed % 4]
    d = CacheDirectory(nslots, specs, nvdisks, params, 4096)
    twin = NaiveCache(nslots, specs, nvdisks, params, 4096)
    for v in range(nvdisks):
        d.assign(v, v % len(specs))
        twin.assign(v, v % len(specs))
    keys, vd, w = _trace(rng, 6000, nvdisks, nslots * 2)
    nbytes = rng.integers(512, 65536, keys.shape[0])
    for lo in range(0, keys.shape[0], 1000):
        sl = slice(lo, lo + 1000)
        slots = np.empty(1000, np.int32)
        hits = d.access(keys[sl], vd[sl], w[sl], nbytes=nbytes[sl], slots=slots)
        th, ts = twin.access(keys[sl], vd[sl], w[sl], nbytes=nbytes[sl])
        assert hits.tolist() == th
        assert slots.tolist() == ts
        _compare(d, twin)
        # live management between batches
        rk = keys[sl][::97]
        rv = vd[sl][::97]
        assert d.remove(rk, rv) == twin.remove(rk, rv)
        v = int(rng.integers(0, nvdisks))
        g = int(rng.integers(0, len(specs)))
        d.assign(v, g)
        twin.assign(v, g)
        _compare(d, twin)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("groups", range(len(GROUPS)))
def test_one_block_and_range_calls_match_twin_block_by_block(seed, groups):
    """The data path's kernels (``access_one`` per block, ``access_range`` per command) against
    the twin one block at a time: reads and writes of part of a block, pinned vdisks, ghost
    hits; the code of every access, and every counter after it."""
    rng = np.random.default_rng(100 + seed)
    specs = GROUPS[groups]
    nvdisks = 4
    bs = 4096
    nslots = int(rng.integers(8, 120))
    params = ["", "small-size-ratio=0.25,move-to-main-threshold=1", "idle-window=40",
              "ghost-size-ratio=0.5"][seed]
    d = CacheDirectory(nslots, specs, nvdisks, params, bs)
    twin = NaiveCache(nslots, specs, nvdisks, params, bs)
    for v in range(nvdisks):
        d.assign(v, v % len(specs))
        twin.assign(v, v % len(specs))
    d.pin_vdisk(1)
    twin.pin_vdisk(1)
    keys, vd, w = _trace(rng, 3000, nvdisks, nslots * 2)

    def twin_code(key, v, write, nb):
        (hit,), (slot,) = twin.access([key], [v], [write], nbytes=[nb])
        return slot if hit else -2 - slot

    i = 0
    while i < keys.shape[0]:
        key, v, write = int(keys[i]), int(vd[i]), bool(w[i])
        if rng.random() < 0.7:
            nb = int(rng.integers(1, bs + 1))
            assert d.access_one(key, v, write, nb) == twin_code(key, v, write, nb), i
            i += 1
        else:   # one command over the next few blocks, starting and ending inside a block
            offset = key * bs + int(rng.integers(0, bs))
            length = int(rng.integers(1, 5 * bs))
            first = offset // bs
            n = (offset + length - 1) // bs - first + 1
            want = [twin_code(first + j, v, write,
                              min(offset + length, (first + j + 1) * bs)
                              - max(offset, (first + j) * bs)) for j in range(n)]
            assert d.access_range(v, offset, length, write) == want, i
            i += n
        _compare(d, twin)
        if rng.random() < 0.01:     # pins change while blocks are cached
            p = int(rng.integers(0, nvdisks))
            pinned = bool(rng.random() < 0.5)
            d.pin_vdisk(p, pinned)
            twin.pin_vdisk(p, pinned)
    _compare(d, twin)
    total = d.state.vdisk_counters.sum(axis=0)
    counted = dict(zip(COUNTERS, total.tolist()))
    assert counted["write_hits"] and counted["write_misses"] and counted["read_hits"]
    assert counted["evictions"] or specs[0].pinned
    assert counted["ghost_hits"] or "ghost-size-ratio=0" in params or specs[0].pinned


def test_find_peeks_without_changing_state():
    d = CacheDirectory(16, block_size=4096)
    keys = np.arange(10, dtype=np.int64)
    vd = np.zeros(10, np.int32)
    d.access(keys, vd, np.zeros(10, bool))
    before = d.state.vdisk_counters.copy()
    slots = d.find(np.arange(20), np.zeros(20, np.int32))
    assert (slots[:10] >= 0).all() and (slots[10:] == -1).all()
    assert np.array_equal(before, d.state.vdisk_counters)


def test_remove_vdisk_drops_its_blocks_and_ghosts():
    d = CacheDirectory(32, nvdisks=2, block_size=4096)
    n = 400
    keys = np.arange(n, dtype=np.int64) % 90
    vd = (np.arange(n) % 2).astype(np.int32)
    d.access(keys, vd, np.zeros(n, bool))
    cached = int(d.vdisk_used()[1])
    assert cached > 0
    assert d.remove_vdisk(1) == cached
    assert d.vdisk_used()[1] == 0
    assert (d.find(keys[vd == 1], vd[vd == 1]) == -1).all()
    d.check()


def test_pinned_vdisk_is_never_evicted():
    d = CacheDirectory(64, nvdisks=2, block_size=4096)
    d.pin_vdisk(0)
    d.access(np.arange(20), np.zeros(20, np.int32), np.zeros(20, bool))
    n = 5000
    d.access(np.arange(n) + 1000, np.ones(n, np.int32), np.zeros(n, bool))
    assert d.vdisk_used()[0] == 20
    assert d.vdisk_stats(0)["evictions"] == 0
    d.check()
