"""Used bytes without opening the store (``vmblock.store.census``): what ``Pool.used_bytes`` and
``Pool.tier_bytes`` read from the leaf keys on a pool whose store is not open equals what the
opened store's maps say, after writes, unmaps, snapshots, clones, EXTENDED COPY remaps, tier
moves, a resize and a revert, leaf keys past a map's size, a SIGKILL with writes in flight,
and on a pool with the old per-AU keys (which only the store migrates)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.stores import small_pool, store_of

from vmblock.meta import Pool
from vmblock.store.layout import AU_SIZE, LEAF_AUS, leaf_key, leaf_values, map_key, map_value

KiB, MiB = 1 << 10, 1 << 20
AU = AU_SIZE
LEAF = LEAF_AUS * AU                 # vdisk bytes one leaf covers
ODD = 2 * LEAF + 3 * AU + 4 * KiB    # a last leaf and a last AU both partly inside


@pytest.fixture
def path(tmp_path):
    p = small_pool(tmp_path / "pool", {"store.capacity_size": "256M", "store.flash_size": "64M",
                                       "cache.size": "8M"},
                   {"d1": ODD, "d2": 3 * LEAF})
    p.close()
    return tmp_path / "pool"


def figures(pool: Pool) -> dict[str, tuple[int, dict[str, int]]]:
    """(used bytes, bytes per tier) of every vdisk, as the pool answers them now."""
    return {d.name: (pool.used_bytes(d), pool.tier_bytes(d)) for d in pool.vdisks()}


def assert_census_matches(path, clean: bool = True) -> dict:
    """Reopen the pool: the figures before its store opens (leaf keys) equal those after
    (the loaded maps), and ``pool check``, which compares the two too, is clean (when
    ``clean``); the figures are returned."""
    pool = Pool(str(path))
    try:
        offline = figures(pool)
        assert not pool.store_open
        pool.store       # noqa: B018 (opens it)
        assert figures(pool) == offline
        if clean:
            r = pool.check()
            assert r["ok"], r["errors"]
        return offline
    finally:
        pool.close()


def test_fresh_vdisks_use_nothing_without_the_store(path):
    got = assert_census_matches(path)
    assert got == {n: (0, {"capacity": 0, "flash": 0}) for n in ("d1", "d2")}


def test_census_equals_the_maps_after_every_kind_of_change(path):
    pool = Pool(str(path))
    try:
        d1, d2 = store_of(pool, "d1"), store_of(pool, "d2")
        d1.write(0, memoryview(b"\x11" * (3 * AU)))
        d1.write(LEAF - 4 * KiB, memoryview(b"\x12" * (8 * KiB)))     # across two leaves
        d1.write(ODD - 4 * KiB, memoryview(b"\x13" * (4 * KiB)))      # the last, partial AU
        d2.write(5 * AU, memoryview(b"\x21" * (20 * AU)))
        # whole leaves mapped: leaf 2 of d2, and the 4 vAUs of d1's last leaf inside its size
        pool.store.preallocate(pool.vdisk("d2").map_id, 2 * LEAF_AUS, LEAF_AUS)
        pool.store.preallocate(pool.vdisk("d1").map_id, 2 * LEAF_AUS, 4)
        live = figures(pool)
        assert live["d1"][0] == 9 * AU and live["d2"][0] == (20 + LEAF_AUS) * AU
    finally:
        pool.close()
    assert assert_census_matches(path) == live

    pool = Pool(str(path))
    try:
        d1, d2 = store_of(pool, "d1"), store_of(pool, "d2")
        d1.unmap(AU, AU)                                          # one whole AU
        d2.unmap(5 * AU, 4 * AU + 4 * KiB)                        # whole AUs and a partial one
        pool.snapshot_vm("vm1", "s1")
        d1.write(0, memoryview(b"\x14" * (4 * KiB)))              # copy on write
        d1.write(2 * LEAF, memoryview(b"\x15" * AU))              # in the last leaf
        _, clones, _ = pool.clone_vm("vm1", "c1", snapshot="s1")
        c = pool.open_store(clones[0])
        c.write(10 * AU, memoryview(b"\x31" * AU))
        assert d1.remap_from(d2, 10 * AU, LEAF + 8 * AU, 6 * AU)    # EXTENDED COPY
        pool.move_vdisk("d2", "flash")
        live = figures(pool)
        assert live["d2"][1]["flash"] == live["d2"][0] > 0
    finally:
        pool.close()
    assert assert_census_matches(path) == live

    pool = Pool(str(path))
    try:
        pool.snapshot_vdisk("d1", "small")
        pool.resize_vdisk("d1", ODD + 2 * LEAF)
        d1 = store_of(pool, "d1")
        d1.write(ODD + LEAF, memoryview(b"\x16" * (4 * KiB)))     # past the old size
        grown = figures(pool)["d1"][0]
        pool.revert(pool.snapshot("small", vdisk="d1"))           # back to the old size
        live = figures(pool)
        assert live["d1"][0] == grown - AU
    finally:
        pool.close()
    assert assert_census_matches(path) == live


def test_leaf_entries_past_the_size_are_not_counted(path):
    """A leaf key that maps vAUs past the map's end (the store drops them when it loads) and
    a leaf wholly past it: neither counts, as in the opened store."""
    pool = Pool(str(path))
    try:
        d1 = store_of(pool, "d1")
        d1.write(2 * LEAF, memoryview(b"\x41" * (4 * AU)))   # AUs 0-3 of the last leaf
        d1.flush()
        mid = pool.vdisk("d1").map_id
        value = pool._db.get(leaf_key(mid, 2))
        rows = np.full((2, LEAF_AUS), 0xFFFFFFFF, dtype=np.uint32)
        rows[0] = np.frombuffer(value[:LEAF_AUS * 4], dtype="<u4")
        first = rows[0, 0]
        rows[0, 4:LEAF_AUS // 2] = first        # past the map's last vAU (ODD is 3 AUs in)
        rows[1, :8] = first                     # a leaf wholly past the end
        values = leaf_values(rows, np.zeros_like(rows, dtype=np.uint8))
        pool._db.raw.put(leaf_key(mid, 2), values[0].tobytes())
        pool._db.raw.put(leaf_key(mid, 3), values[1].tobytes())
    finally:
        pool.close()
    got = assert_census_matches(path, clean=False)     # keys past the size: not clean
    assert got["d1"][0] == 4 * AU


WRITER = """
import sys, time
sys.path.insert(0, sys.argv[2])
from support.stores import store_of
from vmblock.meta import Pool
pool = Pool(sys.argv[1])
s = store_of(pool, "d2")
au = pool.store.au
for k in range(40):
    s.write(k * 3 * au, memoryview(bytes([k + 1]) * 4096))
    if k % 7 == 6:
        s.unmap((k - 3) * 3 * au, au)
    if k == 20:
        pool.snapshot_vdisk("d2", "mid")
    if k % 5 == 4 and k < 35:
        s.flush()
print("ready", flush=True)
time.sleep(60)
"""


def test_census_equals_the_maps_after_a_sigkill(path):
    """Writes flushed and not, unmaps and a snapshot, then SIGKILL: after it the leaf keys
    and the reopened store agree (the writes no flush covered are gone from both)."""
    tests = str(Path(__file__).parents[1])
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), tests],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    got = assert_census_matches(path)
    assert got["d2"][0] > 0


def test_a_pool_with_old_per_au_keys_is_migrated_first(path):
    """Old pools keep one key per mapped AU; only the store turns them into leaves, so the
    pool opens it and answers from the migrated maps."""
    pool = Pool(str(path))
    try:
        mid = pool.vdisk("d1").map_id
        for v in range(3):
            pool._db.raw.put(map_key(mid, v), map_value(v))
    finally:
        pool.close()
    pool = Pool(str(path))
    try:
        assert pool.used_bytes(pool.vdisk("d1")) == 3 * AU
        assert pool.store_open
    finally:
        pool.close()
    assert assert_census_matches(path)["d1"][0] == 3 * AU
