"""Small reads run on the event loop only when the page cache holds them (RWF_NOWAIT): a read
that would wait for the device goes to the executor, where it delays no other command."""

from __future__ import annotations

import asyncio
import os

import pytest
from support.scsi_rig import Rig, read10, write10
from support.stores import small_pool, store_of

from vmblock.scsi.task import SAM_STAT_GOOD, ScsiTask
from vmblock.store.backend import NowaitReadable

MiB = 1 << 20
BLOCK = 512


@pytest.fixture
def pool(tmp_path):
    p = small_pool(tmp_path / "pool", {"store.capacity_size": "64M"}, {"d1": 16 * MiB})
    yield p
    p.close()


def drop_page_cache(pool) -> None:
    """Write back and drop the capacity file's cached pages (clean pages go at once)."""
    pool.store.flush()
    fd = pool.store.space.fd
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def test_read_nowait_serves_cached_and_unwritten_data_and_declines_the_rest(pool):
    store = store_of(pool)
    assert NowaitReadable in store.abilities
    data = os.urandom(4096)
    store.write(1 * MiB, memoryview(data))
    buf = bytearray(4096)
    assert store.read_nowait(1 * MiB, memoryview(buf)) and bytes(buf) == data   # cached
    assert store.read_nowait(2 * MiB, memoryview(buf)) and bytes(buf) == bytes(4096)
    drop_page_cache(pool)
    assert not store.read_nowait(1 * MiB, memoryview(buf))         # would wait for the disk
    store.read_into(1 * MiB, memoryview(buf))
    assert bytes(buf) == data
    assert store.read_nowait(1 * MiB, memoryview(buf)) and bytes(buf) == data   # cached again
    # a range over two AUs is read one AU at a time: inline when both parts are cached
    au = pool.store.au
    two = os.urandom(8192)
    store.write(au - 4096, memoryview(two))
    buf = bytearray(8192)
    assert store.read_nowait(au - 4096, memoryview(buf)) and bytes(buf) == two
    half = bytearray(8192)
    assert store.read_nowait(3 * au - 4096, memoryview(half)) and bytes(half) == bytes(8192)
    drop_page_cache(pool)
    # the second AU's part cached, the first not: the whole read waits for the disk (checked
    # once: a RWF_NOWAIT miss starts readahead, so a second try may find the page)
    store.write(au, memoryview(two[4096:]))
    assert not store.read_nowait(au - 4096, memoryview(buf))
    store.read_into(au - 4096, memoryview(buf))
    assert bytes(buf) == two


def test_uncached_small_read_runs_in_the_executor_cached_one_inline(pool):
    rig = Rig(store_of(pool))
    data = os.urandom(8 * BLOCK)
    assert rig.run(write10(2048, 8), data).status == SAM_STAT_GOOD
    inline = rig.run(read10(2048, 8))
    assert inline.status == SAM_STAT_GOOD and bytes(inline.data_in) == data
    drop_page_cache(pool)
    task = ScsiTask(lun=0, cdb=read10(2048, 8).ljust(16, b"\0"), nexus=rig.a,
                    edtl=len(data), read=True, write=False)
    assert rig.target.prepare(task)
    pending = rig.target.execute(task)
    assert pending is not None                     # handed to the executor, not read inline
    asyncio.run(pending)
    assert task.status == SAM_STAT_GOOD and bytes(task.data_in) == data
    again = rig.run(read10(2048, 8))               # now cached: inline
    assert again.status == SAM_STAT_GOOD and bytes(again.data_in) == data
