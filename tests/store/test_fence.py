"""The worker processes' fence on the store's deferred frees (docs/workers.md, "The fast path",
race 2): an AU, a leaf or an L1 slice retired while a worker is in a read-side section that
started before is not reused until that section ends (or the worker is gone)."""

from __future__ import annotations

import pytest
from support.stores import small_pool, store_of

from vmblock.store.layout import AU_SIZE, LEAF_AUS
from vmblock.worker.shared import ACTIVE, EPOCH, WRITES, Fence

AU = AU_SIZE


@pytest.fixture
def pool(tmp_path):
    p = small_pool(tmp_path / "pool", {"store.capacity_size": "256M"}, {"d1": 64 << 20})
    yield p
    p.close()


def test_freed_au_and_leaf_wait_for_a_worker_section(pool):
    s = store_of(pool)
    space, live = pool.store.space, pool.store.live
    fence = Fence(2)
    space.fence = fence
    s.write(0, memoryview(b"\x07" * AU))
    p0 = live.lookup(pool.vdisk("d1").map_id, 0)
    fence.words[ACTIVE + 1] = fence.words[EPOCH]      # worker 1 looked the AU up
    s.unmap(0, AU)
    pool.store.flush()                                 # durable free: retired
    assert space.waiting and space.held[p0] == 1       # not allocatable
    s.write(LEAF_AUS * AU, memoryview(b"\x08" * AU))   # needs a leaf: not the one in limbo
    assert live.leaf_count() == 2
    fence.words[ACTIVE + 0] = fence.words[EPOCH]       # worker 0 started after: no matter
    pool.store.flush()
    assert space.held[p0] == 1
    fence.quiescent(1)                                 # the section ended (or the worker died)
    pool.store.flush()
    assert not space.waiting and space.held[p0] == 0
    s.write(2 * LEAF_AUS * AU, memoryview(b"\x09" * AU))  # the leaf is reused now
    assert live.leaf_count() == 2
    assert pool.check()["ok"]
    space.fence = None
    fence.close()


def test_workers_in_place_writes_make_the_next_commit_sync(pool):
    committer = pool.store.committer
    fence = Fence(2)
    pool.store.space.fence = fence
    pool.store.flush()
    synced = committer.synced
    pool.store.flush()
    assert committer.synced == synced              # nothing written: nothing to sync
    fence.words[WRITES + 1] += 1                   # worker 1 overwrote an AU in place
    pool.store.flush()
    assert committer.synced != synced and committer.synced[1] == fence.written() == 1
    pool.store.space.fence = None
    fence.close()
