"""Each kernel of native/extent.py against its naive twin (tests/store/naive.py) on random
inputs, plus the wrappers' input checks."""

from __future__ import annotations

import numpy as np
import pytest

from support import naive_extent as naive
from vmblock.native import extent as extent_kernels

SEEDS = range(12)


def random_map(rng, n, density):
    amap = extent_kernels.new_map(n)
    mapped = rng.random(n) < density
    # physical AUs: runs of consecutive numbers with jumps, like a next-fit allocator's
    paus = np.cumsum(rng.integers(1, 3, size=n)).astype(np.uint32) + rng.integers(0, 50)
    amap[mapped] = paus[mapped]
    return amap


@pytest.mark.parametrize("seed", SEEDS)
def test_lookup_batch_matches_naive(seed):
    rng = np.random.default_rng(seed)
    amap = random_map(rng, 1000, rng.random())
    vaus = rng.integers(-5, 1100, size=500)
    assert extent_kernels.lookup_batch(amap, vaus).tolist() == naive.lookup_batch(amap, vaus)
    for v in vaus[:50].tolist():
        assert extent_kernels.lookup(amap, v) == naive.lookup_batch(amap, [v])[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_classify_matches_naive(seed):
    rng = np.random.default_rng(seed)
    amap = random_map(rng, 600, 0.6)
    top = int(amap[amap != extent_kernels.UNMAPPED].max())
    refcount = rng.integers(1, 4, size=top + 1).astype(np.uint32)
    first = int(rng.integers(0, 500))
    count = int(rng.integers(1, 100))
    paus = np.empty(count, dtype=np.uint32)
    kinds = np.empty(count, dtype=np.uint8)
    need = extent_kernels.classify(amap, refcount, first, count, paus, kinds)
    want_paus, want_kinds, want_need = naive.classify(amap, refcount, first, count)
    assert (paus.tolist(), kinds.tolist(), need) == (want_paus, want_kinds, want_need)


@pytest.mark.parametrize("seed", SEEDS)
def test_run_length_and_count_match_naive(seed):
    rng = np.random.default_rng(seed)
    amap = random_map(rng, 300, rng.random())
    assert extent_kernels.count_mapped(amap) == naive.count_mapped(amap)
    for start in rng.integers(0, 300, size=40).tolist():
        end = int(rng.integers(start + 1, 301))
        assert extent_kernels.run_length(amap, start, end) == naive.run_length(amap, start, end)


@pytest.mark.parametrize("seed", SEEDS)
def test_alloc_scan_matches_naive(seed):
    rng = np.random.default_rng(seed)
    n = 400
    refcount = (rng.random(n) < 0.7).astype(np.uint32)
    held = (rng.random(n) < 0.1).astype(np.uint8)
    cursor = int(rng.integers(0, n))
    count = int(rng.integers(1, 200))
    out = np.empty(count, dtype=np.int64)
    found, cur = extent_kernels.alloc_scan(refcount, held, cursor, count, out)
    want, want_cur = naive.alloc_scan(refcount, held, cursor, count)
    assert out[:found].tolist() == want[:found] and found == len(want)
    if want_cur is not None:
        assert cur == want_cur


@pytest.mark.parametrize("seed", SEEDS)
def test_add_refs_matches_naive(seed):
    rng = np.random.default_rng(seed)
    refcount = rng.integers(1, 3, size=100).astype(np.uint32)
    paus = rng.choice(100, size=40, replace=False).astype(np.uint32)
    paus[::7] = extent_kernels.UNMAPPED
    ref_naive = refcount.astype(np.int64).tolist()
    want = naive.add_refs(ref_naive, paus.tolist(), -1)
    work = paus.copy()
    z = extent_kernels.add_refs(refcount, work, -1)
    assert work[:z].tolist() == want and refcount.tolist() == ref_naive
    naive.add_refs(ref_naive, paus.tolist(), +1)
    extent_kernels.add_refs(refcount, paus.copy(), +1)
    assert refcount.tolist() == ref_naive


@pytest.mark.parametrize("seed", SEEDS)
def test_phys_runs_matches_naive(seed):
    rng = np.random.default_rng(seed)
    amap = random_map(rng, 200, rng.random())
    count = int(rng.integers(1, 200))
    paus = amap[:count].copy()
    starts = np.empty(count, dtype=np.int64)
    lens = np.empty(count, dtype=np.int64)
    runs = extent_kernels.phys_runs(paus, count, starts, lens)
    assert list(zip(starts[:runs].tolist(), lens[:runs].tolist())) == naive.phys_runs(
        paus.tolist())


def test_alloc_scan_of_nothing_writes_nothing():
    """count 0 (a racing writer mapped the AUs first) must not touch ``out``: Numba does not
    bounds-check, and a write to a 0-length array corrupted the heap once."""
    refcount = np.zeros(8, dtype=np.uint32)
    held = np.zeros(8, dtype=np.uint8)
    out = np.full(1, -7, dtype=np.int64)
    assert extent_kernels._alloc_scan(refcount, held, 3, 0, out[:0]) == (0, 3)
    assert out[0] == -7
    assert naive.alloc_scan(refcount, held, 3, 0) == ([], 3)


def test_wrappers_reject_bad_input():
    with pytest.raises(TypeError):
        extent_kernels.lookup(np.zeros(4, dtype=np.int64), 0)
    with pytest.raises(ValueError):
        extent_kernels.run_length(extent_kernels.new_map(4), 3, 2)
    with pytest.raises(ValueError):
        extent_kernels.classify(extent_kernels.new_map(4), np.zeros(4, dtype=np.uint32), 2, 5,
                    np.empty(5, np.uint32), np.empty(5, np.uint8))
    with pytest.raises(ValueError):
        extent_kernels.new_map(-1)
