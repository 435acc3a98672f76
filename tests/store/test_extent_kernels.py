"""Each kernel of native/extent.py against its naive twin (tests/support/naive_extent.py) on
random two-level maps, plus the wrappers' input checks."""

from __future__ import annotations

import numpy as np
import pytest

from support import naive_extent as naive
from vmblock.native import extent as extent_kernels

SEEDS = range(12)


LEAF = extent_kernels.LEAF_AUS


def random_dense(rng, n, density):
    dense = np.full(n, extent_kernels.UNMAPPED, dtype=np.uint32)
    # whole leaves left out, the rest mapped at random
    mapped = (rng.random(n) < density) & (rng.random(-(-n // LEAF)) < 0.7).repeat(LEAF)[:n]
    # physical AUs: runs of consecutive numbers with jumps, like a next-fit allocator's
    paus = np.cumsum(rng.integers(1, 3, size=n)).astype(np.uint32) + rng.integers(0, 50)
    dense[mapped] = paus[mapped]
    return dense


def two_level(rng, dense):
    """(l1, leaves) holding ``dense``: leaves in shuffled arena order, some present but empty."""
    slots = extent_kernels.n_leaves(len(dense))
    l1, leaves = extent_kernels.sample_map(len(dense), slots + 2)
    order = rng.permutation(slots) + 1
    padded = np.full(slots * LEAF, extent_kernels.UNMAPPED, dtype=np.uint32)
    padded[:len(dense)] = dense
    for s in range(slots):
        row = padded[s * LEAF:(s + 1) * LEAF]
        if (row != extent_kernels.UNMAPPED).any() or rng.random() < 0.3:
            l1[s] = order[s]
            leaves[order[s] * LEAF:(order[s] + 1) * LEAF] = row
    return l1, leaves


def random_map(rng, n, density):
    return two_level(rng, random_dense(rng, n, density))


@pytest.mark.parametrize("seed", SEEDS)
def test_lookup_batch_matches_naive(seed):
    rng = np.random.default_rng(seed)
    m = random_map(rng, 1000, rng.random())
    vaus = rng.integers(-5, 1100, size=500)
    assert extent_kernels.lookup_batch(*m, vaus).tolist() == naive.lookup_batch(*m, vaus)
    for v in vaus[:50].tolist():
        assert extent_kernels.lookup(*m, v) == naive.lookup_batch(*m, [v])[0]
    first = int(rng.integers(0, 900))
    out = np.empty(100, dtype=np.uint32)
    assert extent_kernels.lookup_range(*m, first, 100, out).tolist() == \
        naive.lookup_batch(*m, range(first, first + 100))


@pytest.mark.parametrize("seed", SEEDS)
def test_classify_matches_naive(seed):
    rng = np.random.default_rng(seed)
    dense = random_dense(rng, 600, 0.6)
    m = two_level(rng, dense)
    top = int(dense[dense != extent_kernels.UNMAPPED].max(initial=0))
    refcount = rng.integers(1, 4, size=top + 1).astype(np.uint32)
    first = int(rng.integers(0, 500))
    count = int(rng.integers(1, 100))
    paus = np.empty(count, dtype=np.uint32)
    kinds = np.empty(count, dtype=np.uint8)
    need = extent_kernels.classify(*m, refcount, first, count, paus, kinds)
    want_paus, want_kinds, want_need = naive.classify(*m, refcount, first, count)
    assert (paus.tolist(), kinds.tolist(), need) == (want_paus, want_kinds, want_need)


@pytest.mark.parametrize("seed", SEEDS)
def test_run_length_and_count_match_naive(seed):
    rng = np.random.default_rng(seed)
    m = random_map(rng, 1300, rng.random())
    assert extent_kernels.count_mapped(*m) == naive.count_mapped(*m)
    vaus, paus = extent_kernels.mapped_entries(*m)
    assert (vaus.tolist(), paus.tolist()) == naive.mapped_entries(*m)
    for start in rng.integers(0, 1300, size=40).tolist():
        end = int(rng.integers(start + 1, 1301))
        assert extent_kernels.run_length(*m, start, end) == naive.run_length(*m, start, end)


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
    dense = random_dense(rng, 200, rng.random())
    count = int(rng.integers(1, 200))
    paus = dense[:count].copy()
    starts = np.empty(count, dtype=np.int64)
    lens = np.empty(count, dtype=np.int64)
    runs = extent_kernels.phys_runs(paus, count, starts, lens)
    assert list(zip(starts[:runs].tolist(), lens[:runs].tolist())) == naive.phys_runs(
        paus.tolist())


@pytest.mark.parametrize("seed", SEEDS)
def test_tier_bounds_and_count_refs_match_naive(seed):
    rng = np.random.default_rng(seed)
    n = 500
    file_aus = rng.integers(0, 300, size=n).astype(np.uint32)
    file_aus[rng.random(n) < 0.3] = extent_kernels.UNMAPPED
    tiers = (rng.random(n) < rng.random()).astype(np.uint8)
    assert extent_kernels.tier_bounds(file_aus, tiers) == naive.tier_bounds(
        file_aus.tolist(), tiers.tolist())
    refcount = np.zeros(700, dtype=np.uint32)
    ref_naive = [0] * 700
    got, mapped = extent_kernels.count_refs(refcount, file_aus, tiers, 350)
    want, want_mapped = naive.count_refs(ref_naive, file_aus.tolist(), tiers.tolist(), 350)
    assert (got.tolist(), mapped, refcount.tolist()) == (want, want_mapped, ref_naive)


def test_alloc_scan_of_nothing_writes_nothing():
    """count 0 (a racing writer mapped the AUs first) must not touch ``out``: Numba does not
    bounds-check, and a write to a 0-length array corrupted the heap once."""
    refcount = np.zeros(8, dtype=np.uint32)
    held = np.zeros(8, dtype=np.uint8)
    out = np.full(1, -7, dtype=np.int64)
    assert extent_kernels._alloc_scan(refcount, held, 3, 0, out[:0]) == (0, 3)
    assert out[0] == -7
    assert naive.alloc_scan(refcount, held, 3, 0) == ([], 3)


def test_run_length_skips_absent_leaves_and_stops_at_end():
    l1, leaves = extent_kernels.sample_map(10 * LEAF, 2)
    l1[7] = 1
    leaves[LEAF + 5:LEAF + 9] = [10, 11, 12, 13]
    assert extent_kernels.run_length(l1, leaves, 3, 10 * LEAF) == (False, 7 * LEAF + 2)
    assert extent_kernels.run_length(l1, leaves, 7 * LEAF + 5, 10 * LEAF) == (True, 4)
    assert extent_kernels.run_length(l1, leaves, 0, 100) == (False, 100)


def test_wrappers_reject_bad_input():
    l1, leaves = extent_kernels.sample_map(4, 1)
    with pytest.raises(TypeError):
        extent_kernels.lookup(np.zeros(4, dtype=np.int64), leaves, 0)
    with pytest.raises(ValueError):
        extent_kernels.run_length(l1, leaves, 3, 2)
    with pytest.raises(ValueError):
        extent_kernels.classify(l1, leaves, np.zeros(4, dtype=np.uint32), LEAF - 2, 5,
                                np.empty(5, np.uint32), np.empty(5, np.uint8))
    with pytest.raises(ValueError):
        extent_kernels.n_leaves(-1)


def test_warm_compiles_the_lookup_a_worker_makes_over_read_only_arenas():
    """A worker maps the leaf and L1 arenas read-only, a type of its own to Numba: warm()
    compiles it too, else the first command over several AUs waits for the compiler (150 ms
    on a fresh clone)."""
    extent_kernels.warm()
    before = len(extent_kernels._lookup_batch.signatures)
    l1, leaves = extent_kernels.sample_map(4 * LEAF, 2)
    l1_arena, leaf_arena = extent_kernels.read_only(l1), extent_kernels.read_only(leaves)
    extent_kernels.lookup_batch(l1_arena[:2], leaf_arena, np.arange(3, 7))    # as sharedpath
    assert len(extent_kernels._lookup_batch.signatures) == before
