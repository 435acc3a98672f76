"""The snapshot schedule with an injected clock: one crash-consistent VM snapshot per slot,
named auto-<UTC time>, retention over automatic ones only, a missed slot taken once after a
restart, failures recorded once."""

import asyncio

import pytest

from support.stores import small_pool
from vmblock.errors import NoSpace
from vmblock.events.schedule import SnapshotSchedule, auto_name, auto_time
from vmblock.meta import policies

T0 = 1_800_000_000.0


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def pool(tmp_path):
    pool = small_pool(tmp_path / "p", {}, {"d1": 16 << 20, "d2": 16 << 20})
    yield pool
    pool.close()


def schedule(pool, clock):
    return SnapshotSchedule(pool, lambda vm, name: pool.snapshot_vm(vm, name),
                            lambda vm, name: pool.delete_snapshot(name, vm=vm), clock)


def names(pool):
    return [s.name for s in pool.snapshots(vm="vm1")]


def test_auto_names_carry_their_utc_time():
    assert auto_name(T0) == "auto-20270115T080000Z"
    assert auto_time(auto_name(T0)) == T0 and auto_time("nightly") is None


def test_one_snapshot_per_slot_of_every_vdisk_and_retention_spares_manual_ones(pool):
    policies.set_policies(pool, "vm1", {"snapshot_every": "10s", "snapshot_keep": "2"})
    pool.snapshot_vm("vm1", "manual")
    clock = Clock(T0)
    s = schedule(pool, clock)
    for step in range(5):
        asyncio.run(s.tick())
        clock.t += 5                        # two ticks per slot: one takes, one does not
    autos = [n for n in names(pool) if n.startswith("auto-")]
    assert autos == [auto_name(T0 + 10), auto_name(T0 + 20)]
    assert "manual" in names(pool)
    snap = pool.snapshot(autos[-1], vm="vm1")
    assert snap.vdisk is None and [d["name"] for d in snap.disks] == ["d1", "d2"]


def test_a_missed_slot_is_taken_once_after_a_restart(pool):
    policies.set_policies(pool, "vm1", {"snapshot_every": "1h", "snapshot_keep": "24"})
    clock = Clock(T0)
    asyncio.run(schedule(pool, clock).tick())
    clock.t += 10 * 3600                    # the server was down for ten slots
    s = schedule(pool, clock)               # a new server: state from the snapshots only
    asyncio.run(s.tick())
    asyncio.run(s.tick())
    assert names(pool) == [auto_name(T0), auto_name(T0 + 10 * 3600)]
    assert s.due_in() == 3600


def test_a_slot_not_yet_due_after_a_restart_waits(pool):
    policies.set_policies(pool, "vm1", {"snapshot_every": "1h"})
    clock = Clock(T0)
    asyncio.run(schedule(pool, clock).tick())
    clock.t += 600
    s = schedule(pool, clock)
    assert asyncio.run(s.tick()) == [] and s.due_in() == 3000


def test_failure_is_recorded_once_until_a_snapshot_works_again(pool):
    policies.set_policies(pool, "vm1", {"snapshot_every": "1s"})
    clock = Clock(T0)
    fail = [True]

    def take(vm, name):
        if fail[0]:
            raise NoSpace("capacity tier full")
        return pool.snapshot_vm(vm, name)
    s = SnapshotSchedule(pool, take, lambda vm, n: pool.delete_snapshot(n, vm=vm), clock)
    for _ in range(3):
        asyncio.run(s.tick())
        clock.t += 1
    failed = [e for e in pool.events() if e["kind"] == "snapshot_policy_failed"]
    assert len(failed) == 1 and failed[0]["vm"] == "vm1" and "advice" in failed[0]
    fail[0] = False
    asyncio.run(s.tick())
    assert len(names(pool)) == 1 and s.failing == set()


def test_a_changed_schedule_applies_at_the_next_tick_not_the_old_slot(pool):
    policies.set_policies(pool, "vm1", {"snapshot_every": "1h", "snapshot_keep": "5"})
    clock = Clock(T0)
    s = schedule(pool, clock)
    asyncio.run(s.tick())                           # taken at T0; next at T0 + 1h
    clock.t += 60
    policies.set_policies(pool, "vm1", {"snapshot_every": "10s"})
    assert asyncio.run(s.tick()) == [auto_name(T0 + 60)]    # not an hour after T0
    assert s.due_in() == 10


def test_a_lowered_keep_deletes_the_oldest_automatic_snapshots_at_once(pool):
    policies.set_policies(pool, "vm1", {"snapshot_every": "1h", "snapshot_keep": "5"})
    pool.snapshot_vm("vm1", "manual")
    clock = Clock(T0)
    s = schedule(pool, clock)
    for _ in range(4):
        asyncio.run(s.tick())
        clock.t += 3600
    policies.set_policies(pool, "vm1", {"snapshot_keep": "2"})
    clock.t -= 1800                                 # the next slot is half an hour away
    assert asyncio.run(s.tick()) == []
    assert sorted(names(pool)) == [auto_name(T0 + 2 * 3600), auto_name(T0 + 3 * 3600), "manual"]
