"""``SpaceWatch`` on a real pool with an injected clock: a VM over the hog share, a VM whose
growth would fill the pool within the horizon, each raised once per crossing."""

import pytest

from support.stores import small_pool
from vmblock.events.watch import GROWTH_MIN_SPAN, SpaceWatch

MIB = 1 << 20


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def pool(tmp_path):
    pool = small_pool(tmp_path / "p", {"store.capacity_size": "64M"}, {"a0": 64 * MIB})
    pool.create_vm("b")
    pool.create_vdisk("b0", 64 * MIB, vm="b")
    yield pool
    pool.close()


def write(pool, vdisk, offset, n):
    pool.open_store(pool.vdisk(vdisk)).write(offset, memoryview(b"x" * n))


def test_vm_over_the_share_is_a_hog_once_per_crossing(pool):
    clock = Clock()
    watch = SpaceWatch(pool, clock)
    write(pool, "b0", 0, 4 * MIB)
    write(pool, "a0", 0, 24 * MIB)                       # 37.5% of 64M
    evs = watch.check()
    assert [(e["kind"], e["vm"]) for e in evs] == [("vm_space_hog", "vm1")]
    assert "vm1" in evs[0]["advice"] and evs[0]["used_bytes"] == 24 * MIB
    assert watch.check() == []                           # still a hog: nothing new
    pool.open_store(pool.vdisk("a0")).unmap(0, 16 * MIB)
    assert watch.check() == []                           # under, its growth not known yet
    clock.t += GROWTH_MIN_SPAN
    evs = watch.check()                                  # under again, shrinking
    assert [(e["kind"], e["vm"], e["severity"]) for e in evs] == \
        [("vm_space_hog_cleared", "vm1", "info")]
    assert watch.check() == []
    write(pool, "a0", 0, 16 * MIB)
    assert [e["vm"] for e in watch.check()] == ["vm1"]   # a new crossing


def test_a_restart_is_no_crossing(pool):
    write(pool, "a0", 0, 24 * MIB)                       # 37.5% of 64M
    assert [e["vm"] for e in SpaceWatch(pool, Clock()).check()] == ["vm1"]
    clock = Clock()
    watch = SpaceWatch(pool, clock)                      # the next server's
    assert watch.check() == []                           # still a hog: nothing new
    pool.open_store(pool.vdisk("a0")).unmap(0, 16 * MIB)
    clock.t += GROWTH_MIN_SPAN
    assert [e["kind"] for e in watch.check()] == ["vm_space_hog_cleared"]
    write(pool, "a0", 0, 16 * MIB)
    watch = SpaceWatch(pool, Clock())                    # restarted while under: a crossing
    pool.open_store(pool.vdisk("a0")).unmap(0, 16 * MIB)
    assert watch.check() == []
    write(pool, "a0", 0, 16 * MIB)
    assert [e["kind"] for e in watch.check()] == ["vm_space_hog"]


def test_snapshot_held_space_counts_towards_the_share(pool):
    watch = SpaceWatch(pool, Clock())
    write(pool, "a0", 0, 12 * MIB)
    pool.snapshot_vm("vm1", "s1")
    write(pool, "a0", 0, 12 * MIB)                       # copy-on-write: 24M charged
    assert [e["vm"] for e in watch.check()] == ["vm1"]


def test_growth_that_would_fill_the_pool_within_the_horizon(pool):
    pool.config_set("events.hog_horizon", "1h")
    clock = Clock()
    watch = SpaceWatch(pool, clock)
    assert watch.check() == []
    clock.t += GROWTH_MIN_SPAN
    write(pool, "b0", 0, 8 * MIB)                        # 8M a minute, 56M free: 7 min left
    write(pool, "a0", 0, 1 * MIB)
    evs = watch.check()
    assert [e["vm"] for e in evs] == ["b"] and "grows" in evs[0]["message"]
