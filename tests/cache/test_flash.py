"""``FlashCache`` / ``CachedStore`` in process over a memory-backed capacity store: every byte read
equals the reference, and after racing threads stop, every valid slot equals capacity."""

from __future__ import annotations

import os
import random
import threading
import time

import numpy as np
import pytest

from vmblock.cache.groups import GroupSpec
from vmblock.cache.flash import CachedStore, FlashCache
from vmblock.store.backend import Unmappable, WriteSameable

BS = 64 * 1024


class MemStore:
    """Capacity tier stand-in: a bytearray, with an optional pause to widen race windows."""

    block_size = 512
    abilities = frozenset({Unmappable, WriteSameable})
    unmap_granularity = BS

    def __init__(self, size: int, pause: float = 0.0):
        self.data = bytearray(size)
        self.pause = pause

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    def _nap(self):
        if self.pause:
            time.sleep(random.random() * self.pause)

    def read_into(self, offset, buf):
        self._nap()
        buf[:] = self.data[offset:offset + len(buf)]
        self._nap()

    def write(self, offset, data):
        self._nap()
        self.data[offset:offset + len(data)] = bytes(data)
        self._nap()

    def unmap(self, offset, length):
        self.data[offset:offset + length] = bytes(length)

    def write_same(self, offset, length, block):
        self.data[offset:offset + length] = bytes(block) * (length // len(block))

    def flush(self):
        pass


@pytest.fixture
def flash(tmp_path):
    fd = os.open(tmp_path / "flash", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 64 * BS)
    yield fd
    os.close(fd)


def make(flash, nslots=16, promote="write", size=64 * BS, pause=0.0):
    cache = FlashCache(flash, 0, nslots, BS, [GroupSpec("default", promote=promote)],
                       max_vdisks=4)
    inner = MemStore(size, pause)
    return cache, inner, CachedStore(cache, inner, cache.attach("u", "d", None))


def check_slots(cache, inner, vid=0):
    """Every valid cached slot holds exactly the capacity bytes of its block."""
    slots, blocks = cache.dir.cached_blocks(vid)
    for s, blk in zip(slots.tolist(), blocks.tolist()):
        if cache.valid[s]:
            want = bytes(inner.data[blk * BS:(blk + 1) * BS])
            got = os.pread(cache.fd, len(want), s * BS)
            assert got == want, f"slot {s} (block {blk}) differs from capacity"


def test_partial_read_miss_fills_the_whole_block(flash):
    cache, inner, st = make(flash, promote="read")
    inner.data[:] = bytes(range(256)) * (len(inner.data) // 256)
    buf = bytearray(4096)
    st.read_into(8192, memoryview(buf))
    assert buf == inner.data[8192:12288]
    check_slots(cache, inner)
    st.read_into(40960, memoryview(buf))                    # same block: a hit
    assert buf == inner.data[40960:45056]
    s = cache.dir.vdisk_stats(0)
    assert (s["read_hits"], s["read_misses"], s["read_hit_bytes"]) == (1, 1, 4096)


def test_writes_update_cached_copies_and_unmap_removes(flash):
    cache, inner, st = make(flash, promote="read")
    st.write(0, memoryview(b"\x11" * (2 * BS)))
    assert cache.dir.used() == 0                            # promote=read: no admission
    buf = bytearray(2 * BS)
    st.read_into(0, memoryview(buf))
    assert cache.dir.used() == 2
    st.write(100, memoryview(b"\x22" * 1000))               # piece of a cached block
    st.read_into(0, memoryview(buf))
    assert buf == inner.data[:2 * BS]
    check_slots(cache, inner)
    st.unmap(0, BS)
    assert cache.dir.used() == 1
    st.read_into(0, memoryview(buf))
    assert buf[:BS] == bytes(BS) and buf == inner.data[:2 * BS]
    st.write_same(BS, BS, memoryview(b"\x33" * 512))
    st.read_into(0, memoryview(buf))
    assert buf == inner.data[:2 * BS]
    check_slots(cache, inner)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("promote", ["read", "write"])
def test_racing_threads_never_leave_a_stale_slot(flash, promote):
    cache, inner, st = make(flash, nslots=8, promote=promote, size=8 * BS, pause=0.0002)
    rng = random.Random(7)
    errors = []

    def worker(seed):
        r = random.Random(seed)
        try:
            for _ in range(6):
                off = r.randrange(0, 4 * BS) // 512 * 512
                n = r.choice([512, 4096, BS, BS + 4096, 2 * BS])
                op = r.random()
                if op < 0.5:
                    st.read_into(off, memoryview(bytearray(n)))
                elif op < 0.95:
                    st.write(off, memoryview(bytes([r.randrange(256)]) * n))
                else:
                    st.unmap(off // BS * BS, BS)
        except Exception as e:     # pragma: no cover - reported below
            errors.append(e)

    for _ in range(150):       # short races, each checked once the threads are done
        threads = [threading.Thread(target=worker, args=(rng.random(),)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        check_slots(cache, inner)
    cache.dir.check()
    buf = bytearray(8 * BS)                                # quiet now: reads equal capacity
    st.read_into(0, memoryview(buf))
    assert buf == inner.data
    st.read_into(0, memoryview(buf))
    assert buf == inner.data
    v = cache.dir.vdisk_stats(0)
    assert v["read_hit_bytes"] + v["read_miss_bytes"] > 0


def test_detach_recycles_the_vdisk_id_with_clean_counters(flash):
    cache, inner, st = make(flash)
    st.read_into(0, memoryview(bytearray(BS)))
    cache.detach("u")
    vid = cache.attach("w", "e", None)
    assert vid == 0 and cache.dir.vdisk_stats(0)["requests"] == 0
    assert cache.dir.used() == 0
    np.testing.assert_array_equal(cache.dir.state.vdisk_counters[0], 0)
