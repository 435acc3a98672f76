"""Sparse two-level extent maps: leaves persisted as meta DB keys, old per-AU pools migrated,
the arenas and reference counts shared with other processes, memory that follows mapped data,
and snapshots that hold the store lock only for their in-memory part."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest
from rocksdict import WriteBatch
from support.stores import read, small_pool, store_of

from vmblock.errors import InvalidArgument
from vmblock.meta import Pool
from vmblock.native import extent as extent_kernels
from vmblock.store import maps as maps_module
from vmblock.store.layout import (
    AU_SIZE,
    KEY_LEAF,
    LEAF_AUS,
    map_key,
    map_value,
    scan_leaves,
)

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40
AU = AU_SIZE


@pytest.fixture
def pool_dir(tmp_path):
    small_pool(tmp_path / "pool", {"store.capacity_size": "256M"}, {"d1": 64 * MiB}).close()
    return str(tmp_path / "pool")


def pattern(seed: int, n: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def leaf_keys(pool) -> list[bytes]:
    return [k for k in pool._db.raw.keys(from_key=KEY_LEAF) if k.startswith(KEY_LEAF)]


def test_leaves_are_the_keys_and_survive_a_reopen(pool_dir):
    p = Pool(pool_dir)
    s = store_of(p)
    data = pattern(1, 3 * AU)
    s.write(5 * AU, memoryview(data))                     # leaf 0
    s.write(300 * AU + 512, memoryview(data[:4096]))      # leaf 1
    s.flush()
    assert len(leaf_keys(p)) == 2
    mids, slots, file_aus, _ = scan_leaves(p._db)
    assert slots.tolist() == [0, 1] and set(mids.tolist()) == {p.vdisk("d1").map_id}
    assert np.count_nonzero(file_aus != extent_kernels.UNMAPPED) == 4
    p.close()
    p = Pool(pool_dir)
    s = store_of(p)
    assert read(s, 5 * AU, 3 * AU) == data
    assert read(s, 300 * AU, AU) == bytes(512) + data[:4096] + bytes(AU - 4608)
    assert p.used_bytes(p.vdisk("d1")) == 4 * AU
    assert p.check()["ok"]
    s.unmap(0, 64 * MiB)                                  # every leaf empties: keys go
    s.flush()
    assert leaf_keys(p) == [] and p.store.live.leaf_count() == 0
    p.close()


def test_an_old_pool_of_per_au_keys_is_migrated_on_open(pool_dir):
    p = Pool(pool_dir)
    s = store_of(p)
    data = pattern(2, 6 * AU)
    s.write(0, memoryview(data[:3 * AU]))
    s.write(700 * AU, memoryview(data[3 * AU:]))
    p.snapshot_vm("vm1", "snap")
    s.write(0, memoryview(b"\x33" * AU))                  # the snapshot keeps the old AU
    s.flush()
    # rewrite the pool in the old format: one key per mapped AU, no leaves
    mids, slots, file_aus, tiers = scan_leaves(p._db)
    batch = WriteBatch(raw_mode=True)
    for mid, slot, frow, trow in zip(mids.tolist(), slots.tolist(), file_aus, tiers):
        for j in np.flatnonzero(frow != extent_kernels.UNMAPPED).tolist():
            batch.put(map_key(mid, slot * LEAF_AUS + j), map_value(int(frow[j]), int(trow[j])))
    batch.delete_range(KEY_LEAF, bytes([KEY_LEAF[0] + 1]))
    p._db.write(batch)
    p.close()
    p = Pool(pool_dir)
    s = store_of(p)
    assert not any(k.startswith(b"M") for k in p._db.raw.keys(from_key=b"M"))
    assert len(leaf_keys(p)) == 4                         # two maps, leaves 0 and 2 each
    assert read(s, 0, AU) == b"\x33" * AU
    assert read(s, AU, 2 * AU) == data[AU:3 * AU]
    assert read(s, 700 * AU, 3 * AU) == data[3 * AU:]
    r = p.check()
    assert r["ok"], r["errors"]
    assert r["shared_aus"] == 5
    p.clone_vm("vm1", "c", snapshot="snap")
    assert read(store_of(p, "c-d1"), 0, AU) == data[:AU]
    p.close()


def test_another_process_attaches_maps_and_refcounts_without_copying(pool_dir):
    p = Pool(pool_dir)
    s = store_of(p)
    s.write(9 * AU, memoryview(b"\x01" * AU))
    store = p.store
    mid = p.vdisk("d1").map_id
    off, n = store.live.l1_slot(mid)
    pau = store.live.lookup(mid, 9)
    fds = store.shared_fds
    code = f"""
import numpy as np
from vmblock.native import extent as k
from vmblock.store.maps import LEAF_RESERVE, L1_RESERVE
from vmblock.store.shm import SharedArray
leaves = SharedArray.attach({fds['leaves']}, np.uint32, LEAF_RESERVE * k.LEAF_AUS).array
l1 = SharedArray.attach({fds['l1']}, np.uint32, L1_RESERVE).array[{off}:{off + n}]
refs = SharedArray.attach({fds['refcount']}, np.uint32, {store.space.n_aus}).array
p = k.lookup(l1, leaves, 9)
print(p, k.lookup(l1, leaves, 10), refs[p], leaves.flags.writeable)
"""
    out = subprocess.run([sys.executable, "-c", code], pass_fds=tuple(fds.values()),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(pau), str(0xFFFFFFFF), "1", "False"]
    p.close()


def test_memory_follows_mapped_data_not_vdisk_size(pool_dir):
    p = Pool(pool_dir)
    for i in range(20):
        p.create_vdisk(f"huge{i}", 4 * TiB, vm="vm1")     # 256 K L1 entries each, untouched
    live = p.store.live
    assert live.leaf_count() == 0
    s = store_of(p, "huge3")
    for v in (0, 1, 255, 256, 10**7):
        s.write(v * AU, memoryview(b"\x02" * 4096))
    assert live.leaf_count() == 3
    assert p.used_bytes(p.vdisk("huge3")) == 5 * AU
    assert s.lba_status(2 * AU) == (False, 253 * AU)
    assert s.lba_status(257 * AU) == (False, (10**7 - 257) * AU)
    assert store_of(p, "huge3").mapped_aus().tolist() == [0, 1, 255, 256, 10**7]
    s.unmap(0, 257 * AU)
    p.store.flush()
    assert live.leaf_count() == 1
    assert p.check()["ok"]
    p.close()


def test_snapshot_and_clone_write_their_leaves_without_the_store_lock(pool_dir):
    p = Pool(pool_dir)
    s = store_of(p)
    s.write(0, memoryview(pattern(3, 40 * AU)))
    store = p.store
    seen = []
    real_write = store.committer.db.write

    def write(batch):
        """The synced write of a transaction: the data path's lock must be free meanwhile."""
        if store.lock.acquire(blocking=False):
            store.lock.release()
            seen.append("free")
        else:
            seen.append("held")
        got = []
        t = threading.Thread(target=lambda: got.append(read(s, 0, 2 * AU)))
        t.start()           # a multi-AU read takes the lock: it must finish during the write
        t.join(30)
        seen.append(len(got[0]) if got else "stalled")
        real_write(batch)

    store.committer.db.write = write
    try:
        p.snapshot_vm("vm1", "s1")
        p.clone_vm("vm1", "c1", snapshot="s1")
        p.clone_vm("vm1", "c2", live=True)
    finally:
        store.committer.db.write = real_write
    assert "held" not in seen and "stalled" not in seen
    assert seen.count("free") >= 3
    for name in ("d1", "c1-d1", "c2-d1"):
        assert read(store_of(p, name), 0, 40 * AU) == pattern(3, 40 * AU)
    assert p.check()["ok"]
    p.close()


def test_a_transaction_that_fails_before_its_write_gives_its_references_back(pool_dir):
    p = Pool(pool_dir)
    s = store_of(p)
    s.write(0, memoryview(b"\x05" * 8 * AU))
    p.create_vdisk("d2", 64 * MiB, vm="vm1")
    with pytest.raises(InvalidArgument):
        p.clone_vm("vm1", "bad name!", live=True)       # refused before any copy
    store = p.store
    batch = WriteBatch(raw_mode=True)
    with pytest.raises(RuntimeError):
        with store.transaction(batch) as txn:
            txn.copy_map(p.vdisk("d1").map_id, 99999)
            assert store.space.refcount[store.live.lookup(p.vdisk("d1").map_id, 0)] == 2
            raise RuntimeError("changed my mind")
    assert store.space.refcount[store.live.lookup(p.vdisk("d1").map_id, 0)] == 1
    s.write(0, memoryview(b"\x06" * AU))                  # in place again: owned
    assert store.usage()["used_bytes"] == 8 * AU
    assert p.check()["ok"]
    p.close()


def test_arena_reuses_leaves_only_after_in_flight_io(pool_dir):
    p = Pool(pool_dir)
    s = store_of(p)
    live = p.store.live
    s.write(0, memoryview(b"\x07" * AU))
    tok = next(p.store.space.tokens)
    p.store.space.inflight.add(tok)       # an I/O that looked the leaf up before the unmap
    s.unmap(0, AU)
    s.write(LEAF_AUS * AU, memoryview(b"\x08" * AU))     # needs a leaf: not the one in limbo
    assert live.leaf_count() == 2
    p.store.space.inflight.discard(tok)
    s.write(2 * LEAF_AUS * AU, memoryview(b"\x09" * AU))  # now it is reused
    assert live.leaf_count() == 2
    assert p.check()["ok"]
    p.close()


def test_maps_reserve_enough_for_a_pool():
    """The arenas are reserved (address space, not memory) for 4 G mapped AUs of live maps."""
    assert maps_module.LEAF_RESERVE * LEAF_AUS >= 1 << 32


def test_check_finds_a_mapped_count_that_differs_from_the_leaves(pool_dir):
    p = Pool(pool_dir)
    store_of(p).write(0, memoryview(b"\x01" * 3 * AU))
    p.store.live.mapped[p.vdisk("d1").map_id] += 1
    r = p.check()
    assert not r["ok"] and "4 vAUs counted as mapped, 3 are" in " ".join(r["errors"])
    p.store.live.mapped[p.vdisk("d1").map_id] -= 1
    assert p.check()["ok"]
    p.close()
