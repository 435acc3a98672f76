"""The jitted cache kernels against their slow twin (tests/cache/cache_naive.py).

Random traces with several vdisks and groups, reads and writes, every promotion policy, small
caches so that eviction, ghosts, moves and the arbiter all run: hits, slots and every counter
must be identical, and the directory's redundant state must stay consistent.
"""

import numpy as np
import pytest
from cache_naive import NaiveCache

from vmblock.cache import CacheDirectory, GroupSpec

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
