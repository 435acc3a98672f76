"""``PoolStore.preallocate``: AUs mapped without writing their data read as zeros (also after a
reopen, also where a freed AU held another vdisk's bytes), leave mapped vAUs alone and keep
``pool check`` clean."""

from __future__ import annotations

import os

import pytest
from support.stores import read, small_pool, store_of

from vmblock.errors import InvalidArgument, NoSpace
from vmblock.meta import Pool
from vmblock.store.layout import AU_SIZE

MiB = 1 << 20
AU = AU_SIZE


@pytest.fixture
def pool_dir(tmp_path):
    small_pool(tmp_path / "pool", {"store.capacity_size": "64M"},
               {"d1": 32 * MiB, "d2": 32 * MiB}).close()
    return str(tmp_path / "pool")


def test_preallocated_aus_read_zeros_after_reopen_and_leak_nothing(pool_dir):
    p = Pool(pool_dir)
    # stale bytes where the new AUs will come from (as a freed AU of another vdisk holds)
    os.pwrite(p.store.capacity.fd, b"\x5a" * 32 * AU, 0)
    mid = p.vdisk("d1").map_id
    s1 = store_of(p, "d1")
    s1.write(3 * AU, memoryview(b"\x11" * AU))
    p.store.preallocate(mid, 0, 16)       # the new AUs are zeroed first
    assert p.used_bytes(p.vdisk("d1")) == 16 * AU
    assert read(s1, 3 * AU, AU) == b"\x11" * AU      # mapped vAUs are left alone
    assert read(s1, 0, 3 * AU) == bytes(3 * AU)
    assert read(s1, 4 * AU, 12 * AU) == bytes(12 * AU)
    assert s1.lba_status(0) == (True, 16 * AU)
    assert p.check()["ok"]
    p.close()
    p = Pool(pool_dir)
    s1 = store_of(p, "d1")
    assert p.used_bytes(p.vdisk("d1")) == 16 * AU
    assert read(s1, 0, 3 * AU) == bytes(3 * AU)
    assert read(s1, 3 * AU, AU) == b"\x11" * AU
    assert read(s1, 4 * AU, 12 * AU) == bytes(12 * AU)
    r = p.check()
    assert r["ok"], r["errors"]
    p.close()


def test_preallocate_writes_zeros_where_it_cannot_punch(pool_dir):
    p = Pool(pool_dir)
    os.pwrite(p.store.capacity.fd, b"\x5a" * 8 * AU, 0)
    p.store.capacity.punch_ok = False       # as on a block device
    p.store.preallocate(p.vdisk("d1").map_id, 0, 8)
    assert os.pread(p.store.capacity.fd, 8 * AU, 0) == bytes(8 * AU)
    assert read(store_of(p, "d1"), 0, 8 * AU) == bytes(8 * AU)
    p.close()


def test_preallocate_in_small_chunks_then_write_in_place(pool_dir):
    p = Pool(pool_dir)
    mid = p.vdisk("d1").map_id
    from vmblock.store.prealloc import preallocate
    preallocate(p.store.committer, p.store.data.zeros, mid, 10, 100, chunk_aus=7)
    s1 = store_of(p, "d1")
    s1.write(50 * AU + 512, memoryview(b"\x22" * 512))
    assert read(s1, 50 * AU, 2 * 512) == bytes(512) + b"\x22" * 512
    assert p.used_bytes(p.vdisk("d1")) == 100 * AU
    assert p.check()["ok"]
    p.close()


def test_preallocate_refuses_a_bad_range_and_a_full_tier(pool_dir):
    p = Pool(pool_dir)
    mid = p.vdisk("d1").map_id
    with pytest.raises(InvalidArgument):
        p.store.preallocate(mid, 500, 13)     # the map has 512 AUs
    with pytest.raises(InvalidArgument):
        p.store.preallocate(12345, 0, 1)
    p.create_vdisk("big", 128 * MiB, vm="vm1")
    with pytest.raises(NoSpace):
        p.store.preallocate(p.vdisk("big").map_id, 0, 2048)     # 128 MiB on a 64 MiB tier
    assert p.used_bytes(p.vdisk("big")) == 0
    assert p.check()["ok"]
    p.close()
