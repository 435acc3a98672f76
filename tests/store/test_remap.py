"""EXTENDED COPY's store side (``vmblock.store.remap``) on a real pool: whole AUs become shared
(reference counted, copied on a later write on either side), unaligned heads and tails are
copied, unmapped source AUs unmap the destination, the remap is durable after one commit and
survives a reopen, ``pool check`` stays clean, and stores of another pool are refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
from support.stores import read, small_pool, store_of

from vmblock.meta import Pool
from vmblock.native import extent as extent_kernels
from vmblock.store.backend import Remappable
from vmblock.store.layout import AU_SIZE

KiB, MiB = 1 << 10, 1 << 20
AU = AU_SIZE


@pytest.fixture
def pool(tmp_path):
    p = small_pool(tmp_path / "pool", {"store.capacity_size": "64M"},
                   {"src": 16 * MiB, "dst": 16 * MiB})
    yield p
    p.close()


def pau(pool, name, vau):
    live = pool.store.live
    return extent_kernels.lookup(live.maps[pool.vdisk(name).map_id], live.leaves, vau)


def pattern(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def assert_clean(pool):
    r = pool.check()
    assert r["ok"], r["errors"]


def test_whole_aus_are_shared_and_copy_on_write_keeps_both_sides(pool):
    src, dst = store_of(pool, "src"), store_of(pool, "dst")
    assert Remappable in dst.abilities
    data = pattern(8 * AU, 1)
    src.write(0, memoryview(data))
    used = pool.store.usage()["used_bytes"]
    assert dst.remap_from(src, 0, 2 * AU, 8 * AU)
    assert pool.store.usage()["used_bytes"] == used      # nothing was written
    assert read(dst, 2 * AU, 8 * AU) == data
    for v in range(8):
        p = pau(pool, "src", v)
        assert pau(pool, "dst", 2 + v) == p
        assert pool.store.space.refcount[p] == 2
    # a write to the source after the copy does not show in the destination, and back
    src.write(AU, memoryview(b"\x5a" * 4 * KiB))
    dst.write(3 * AU, memoryview(b"\xa5" * 4 * KiB))
    assert read(dst, 2 * AU, 8 * AU) == data[:AU] + b"\xa5" * 4 * KiB + data[AU + 4 * KiB:]
    assert read(src, 0, 8 * AU) == data[:AU] + b"\x5a" * 4 * KiB + data[AU + 4 * KiB:]
    pool.store.flush()
    assert_clean(pool)


def test_unaligned_head_and_tail_are_copied(pool):
    src, dst = store_of(pool, "src"), store_of(pool, "dst")
    data = pattern(6 * AU, 2)
    src.write(0, memoryview(data))
    off, n = AU // 2 + 512, 4 * AU + 1024
    dst.write(0, memoryview(b"\x11" * 7 * AU))
    assert dst.remap_from(src, off, off, n)
    assert read(dst, 0, 7 * AU) == b"\x11" * off + data[off:off + n] + b"\x11" * (7 * AU - off - n)
    # the three whole AUs in the middle are the source's
    for v in (1, 2, 3):
        assert pau(pool, "dst", v) == pau(pool, "src", v)
    pool.store.flush()
    assert_clean(pool)


def test_differently_placed_offsets_copy_the_data(pool):
    src, dst = store_of(pool, "src"), store_of(pool, "dst")
    data = pattern(3 * AU, 3)
    src.write(0, memoryview(data))
    assert dst.remap_from(src, 512, 0, 2 * AU)
    assert read(dst, 0, 2 * AU) == data[512:512 + 2 * AU]
    assert pau(pool, "dst", 0) != pau(pool, "src", 0)
    pool.store.flush()
    assert_clean(pool)


def test_unmapped_source_unmaps_the_destination_and_frees_its_aus(pool):
    src, dst = store_of(pool, "src"), store_of(pool, "dst")
    dst.write(0, memoryview(pattern(4 * AU, 4)))
    src.write(AU, memoryview(b"\x22" * AU))
    used = pool.store.usage()["used_bytes"]
    assert dst.remap_from(src, 0, 0, 4 * AU)
    assert read(dst, 0, 4 * AU) == bytes(AU) + b"\x22" * AU + bytes(2 * AU)
    assert pool.used_bytes(pool.vdisk("dst")) == AU
    pool.store.flush()
    assert pool.store.usage()["used_bytes"] == used - 4 * AU
    assert_clean(pool)


def test_copy_inside_one_vdisk(pool):
    src = store_of(pool, "src")
    data = pattern(4 * AU, 5)
    src.write(0, memoryview(data))
    assert src.remap_from(src, 0, 8 * AU, 4 * AU)
    assert read(src, 8 * AU, 4 * AU) == data
    src.write(0, memoryview(b"\x33" * AU))
    assert read(src, 8 * AU, AU) == data[:AU]
    pool.store.flush()
    assert_clean(pool)


def test_the_remap_is_durable_after_one_commit_and_survives_reopen(tmp_path):
    path = tmp_path / "pool"
    pool = small_pool(path, {"store.capacity_size": "64M"}, {"src": 16 * MiB, "dst": 16 * MiB})
    src, dst = store_of(pool, "src"), store_of(pool, "dst")
    data = pattern(16 * AU, 6)
    src.write(0, memoryview(data))
    pool.store.flush()
    commits = pool.store.committer.commits
    assert dst.remap_from(src, 0, 0, 16 * AU)
    pool.store.flush()
    assert pool.store.committer.commits == commits + 1
    pool.close()
    pool = Pool(str(path))
    try:
        dst, src = store_of(pool, "dst"), store_of(pool, "src")
        assert read(dst, 0, 16 * AU) == data
        assert pool.store.space.refcount[pau(pool, "dst", 5)] == 2
        src.write(0, memoryview(bytes(16 * AU)))
        assert read(dst, 0, 16 * AU) == data
        pool.store.flush()
        assert_clean(pool)
    finally:
        pool.close()


def test_a_store_of_another_pool_is_refused(tmp_path, pool):
    other = small_pool(tmp_path / "other", {"store.capacity_size": "64M"}, {"x": 16 * MiB})
    try:
        assert not store_of(pool, "dst").remap_from(store_of(other, "x"), 0, 0, AU)
    finally:
        other.close()
    assert os.path.exists(tmp_path / "other")


@pytest.mark.parametrize("shift", [AU, -AU, 3 * AU // 2, -512])
def test_an_overlapping_copy_inside_one_vdisk_reads_before_it_writes(pool, shift):
    src = store_of(pool, "src")
    data = pattern(40 * AU, 7)          # 2.5 MiB: several chunks of the data copy
    src.write(4 * AU, memoryview(data))
    assert src.remap_from(src, 4 * AU, 4 * AU + shift, 40 * AU)
    assert read(src, 4 * AU + shift, 40 * AU) == data
    pool.store.flush()
    assert_clean(pool)
