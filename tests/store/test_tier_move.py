"""Flash-tier AUs in the extent store and ``vdisk move`` between tiers, on a real pool (no
server): the flash split never overlaps cache slots, a move there and back keeps every byte,
snapshots keep reading their old data, refcounts and ``pool check`` stay clean, writes racing
with a move are never lost, and a move that does not fit is refused with nothing changed."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from support.stores import read, small_pool, store_of

from vmblock.errors import NoSpace
from vmblock.meta import Pool
from vmblock.store.layout import AU_SIZE

MiB = 1 << 20
AU = AU_SIZE


@pytest.fixture
def pool(tmp_path):
    p = small_pool(tmp_path / "pool", {"store.capacity_size": "64M", "store.flash_size": "32M",
                                       "cache.size": "8M"}, {"d1": 16 * MiB})
    p.closed_by_test = False
    yield p
    if not p.closed_by_test:
        p.close()


def clean(pool):
    r = pool.check()
    assert r["ok"], r["errors"]
    return r


def pattern(seed, n):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def fill(store, seed=1):
    """Scattered writes of every size class: 4 KiB, sub-AU, multi-AU, a hole left."""
    rng = np.random.default_rng(seed)
    image = bytearray(store.size_bytes)
    for i in range(60):
        n = int(rng.choice([4096, 12288, AU, 3 * AU + 4096]))
        off = int(rng.integers(0, (store.size_bytes - n) // 512)) * 512
        if 8 * MiB <= off < 9 * MiB or 8 * MiB <= off + n < 9 * MiB:
            continue        # a hole that stays unmapped
        data = pattern(i + seed * 1000, n)
        store.write(off, memoryview(data))
        image[off:off + n] = data
    return image


def test_flash_split_starts_after_the_cache_slots(pool):
    st = pool.store
    assert st.cache_bytes == 8 * MiB and st.space.flash_lo == 8 * MiB // AU
    u = st.usage()["tiers"]["flash"]
    assert u["cache_bytes"] == 8 * MiB and u["au_offset_bytes"] == 8 * MiB
    assert u["au_bytes"] == 24 * MiB and u["free_bytes"] == 24 * MiB


def test_move_to_flash_and_back_preserves_every_byte(pool):
    s = store_of(pool)
    image = fill(s)
    used = pool.used_bytes(pool.vdisk("d1"))
    r = pool.move_vdisk("d1", "flash")
    assert r["moved_bytes"] == used and r["tier_bytes"] == {"capacity": 0, "flash": used}
    disk = pool.vdisk("d1")
    assert disk.tier == "flash"
    _, mapped = pool.store.entries(disk.map_id)
    assert (mapped >= pool.store.space.ncap).all()
    # the flash file holds the data at or above the cache region
    assert ((mapped - pool.store.space.fshift) >= pool.store.space.flash_lo).all()
    assert read(s, 0, s.size_bytes) == bytes(image)
    u = pool.store.usage()["tiers"]
    assert u["flash"]["used_bytes"] == used and u["capacity"]["used_bytes"] == 0
    clean(pool)
    # new allocations of a flash vdisk go to flash
    s.write(8 * MiB, memoryview(b"\x5a" * 4096))
    image[8 * MiB:8 * MiB + 4096] = b"\x5a" * 4096
    assert pool.tier_bytes(pool.vdisk("d1"))["capacity"] == 0
    pool.move_vdisk("d1", "capacity")
    assert pool.vdisk("d1").tier == "capacity"
    assert pool.tier_bytes(pool.vdisk("d1"))["flash"] == 0
    assert read(s, 0, s.size_bytes) == bytes(image)
    clean(pool)


def test_flash_mappings_survive_a_restart(pool, tmp_path):
    s = store_of(pool)
    image = fill(s, seed=3)
    pool.move_vdisk("d1", "flash")
    pool.close()
    pool.closed_by_test = True
    p = Pool(str(tmp_path / "pool"))
    try:
        s = store_of(p)
        assert p.vdisk("d1").tier == "flash"
        assert read(s, 0, s.size_bytes) == bytes(image)
        assert p.tier_bytes(p.vdisk("d1"))["capacity"] == 0
        clean(p)
    finally:
        p.close()


def test_snapshot_keeps_its_aus_and_data_across_moves(pool):
    s = store_of(pool)
    image = fill(s, seed=5)
    pool.snapshot_vdisk("d1", "before")
    pool.move_vdisk("d1", "flash")
    s.write(0, memoryview(b"\x77" * (2 * AU)))
    new = bytearray(image)
    new[:2 * AU] = b"\x77" * (2 * AU)
    clean(pool)
    # the snapshot map still points at capacity AUs, with the old data
    snap = pool.snapshot("before", vdisk="d1")
    _, paus = pool.store.entries(snap.disks[0]["map_id"])
    assert (paus < pool.store.space.ncap).all()
    pool.create_vm("vm2")
    vm, disks, _ = pool.clone_vm("vm1", "vm2c", live=True)
    assert disks[0].tier == "flash"
    assert read(store_of(pool, disks[0].name), 0, s.size_bytes) == bytes(new)
    pool.move_vdisk("d1", "capacity")
    assert read(s, 0, s.size_bytes) == bytes(new)
    pool.revert(snap)
    assert read(s, 0, s.size_bytes) == bytes(image)
    clean(pool)


def test_move_that_does_not_fit_is_refused_and_changes_nothing(pool):
    pool.create_vdisk("big", 48 * MiB, vm="vm1")
    s = store_of(pool, "big")
    s.write(0, memoryview(pattern(9, 30 * MiB)))    # 30 MiB > 24 MiB of flash AUs
    before = pool.store.entries(pool.vdisk("big").map_id)
    with pytest.raises(NoSpace, match="not enough free space on the flash tier"):
        pool.move_vdisk("big", "flash")
    assert pool.vdisk("big").tier == "capacity"
    after = pool.store.entries(pool.vdisk("big").map_id)
    assert all(np.array_equal(a, b) for a, b in zip(after, before))
    assert pool.store.live.tiers.get(pool.vdisk("big").map_id, 0) == 0
    assert read(s, 0, 30 * MiB) == pattern(9, 30 * MiB)
    clean(pool)


def test_flash_tier_full_fails_writes_of_flash_vdisks(pool):
    from vmblock.store.backend import SpaceExhausted

    pool.move_vdisk("d1", "flash")      # empty: only the policy
    pool.create_vdisk("f2", 32 * MiB, vm="vm1")
    pool.move_vdisk("f2", "flash")
    s = store_of(pool, "f2")
    s.write(0, memoryview(b"\x01" * (24 * MiB)))
    with pytest.raises(SpaceExhausted, match="flash tier full"):
        s.write(24 * MiB, memoryview(b"\x02" * 4096))
    # capacity vdisks keep writing, flash vdisks keep overwriting in place
    pool.create_vdisk("c1", MiB, vm="vm1")
    store_of(pool, "c1").write(0, memoryview(b"\x03" * 4096))
    s.write(0, memoryview(b"\x04" * 4096))
    assert read(s, 0, 8192) == b"\x04" * 4096 + b"\x01" * 4096
    clean(pool)


def test_writes_racing_with_a_move_are_never_lost(pool):
    s = store_of(pool)
    image = fill(s, seed=7)
    frozen = bytes(image)
    pool.snapshot_vdisk("d1", "frozen")     # the writers' first writes copy on write
    lock = threading.Lock()
    stop = threading.Event()
    errors = []

    def writer(k):
        rng = np.random.default_rng(100 + k)
        i = 0
        while not stop.is_set():
            n = int(rng.choice([4096, 8192, AU + 4096]))
            off = int(rng.integers(0, (s.size_bytes - n) // 4096)) * 4096
            data = bytes([(k * 50 + i) % 251 + 1]) * n
            with lock:      # the image follows each completed write in order
                s.write(off, memoryview(data))
                image[off:off + n] = data
            i += 1
            if i % 7 == 0:
                buf = read(s, off, n)
                if buf != bytes(image[off:off + n]) and not lock.locked():
                    errors.append(off)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        for tier in ("flash", "capacity", "flash"):
            pool.store.move(pool.vdisk("d1").map_id, 1 if tier == "flash" else 0, chunk_aus=8)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert read(s, 0, s.size_bytes) == bytes(image)
    # the snapshot's AUs (shared with the live map until rewritten) were never written
    pool.revert(pool.snapshot("frozen", vdisk="d1"))
    assert read(s, 0, s.size_bytes) == frozen
    clean(pool)


class PausedStep:
    """A move-step hook that stops the first step between its copy and its remap until the
    test has done its racing I/O: the race a move must survive happens for sure."""

    def __init__(self):
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.vaus = None

    def __call__(self, mid, vaus, old_aus):
        if self.vaus is None:
            self.vaus = vaus.copy()
            self.paused.set()
            assert self.resume.wait(60)


def move_with_paused_step(pool, tier, race):
    """Move d1 to ``tier`` in a thread; ``race(vaus)`` runs while the first step that moves
    something holds between copy and remap. Returns the move's result."""
    step = PausedStep()
    pool.store.mover.move_step_hook = step
    result, failed = {}, []

    def move():
        try:
            result.update(pool.store.move(pool.vdisk("d1").map_id, tier, chunk_aus=8))
        except BaseException as e:
            failed.append(e)
            step.paused.set()

    mover = threading.Thread(target=move)
    mover.start()
    try:
        assert step.paused.wait(60) and not failed, failed
        race(step.vaus)
    finally:
        step.resume.set()
        mover.join(60)
        pool.store.mover.move_step_hook = None
    assert not failed, failed
    return result


def test_a_write_between_a_steps_copy_and_remap_is_kept(pool):
    """The write lands on an AU the step has already copied: it must go round the bias to a
    new AU, and the step must leave that vAU alone (else the copy's old data wins)."""
    s = store_of(pool)
    image = fill(s, seed=11)

    def race(vaus):
        for v in (int(vaus[0]), int(vaus[-1])):
            off = v * AU + 4096
            data = pattern(v, 4096)
            s.write(off, memoryview(data))          # the 4 KiB path, as a guest's write
            image[off:off + 4096] = data

    r = move_with_paused_step(pool, 1, race)
    assert r["raced_aus"] == 2 and r["moved_aus"] > 0, r
    assert read(s, 0, s.size_bytes) == bytes(image)
    _, mapped = pool.store.entries(pool.vdisk("d1").map_id)
    assert (mapped >= pool.store.space.ncap).all()      # the raced AUs went to flash too
    clean(pool)


def test_an_unmap_between_a_steps_copy_and_remap_is_kept(pool):
    s = store_of(pool)
    image = fill(s, seed=12)

    def race(vaus):
        off = int(vaus[0]) * AU
        s.unmap(off, AU)
        image[off:off + AU] = bytes(AU)

    r = move_with_paused_step(pool, 1, race)
    assert r["raced_aus"] == 1, r
    assert read(s, 0, s.size_bytes) == bytes(image)
    clean(pool)
