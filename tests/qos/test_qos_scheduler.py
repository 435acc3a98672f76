"""The mClock tag arithmetic and dispatch order of ``vmblock.qos.scheduler``, driven by the
test's own clock: which command goes when, never a measured rate."""

from __future__ import annotations

import os

import pytest

from vmblock.qos.scheduler import QosParams, Scheduler, cost
from vmblock.qos.shared import SharedTags

T0 = 1000.0


def backlog(sched: Scheduler, key: str, n: int, nbytes: int = 4096, now: float = T0) -> None:
    flow = sched.flows[key]
    for i in range(n):
        sched.submit(flow, nbytes, now, (key, i))


def drain(sched: Scheduler, now: float, most: int = 10**6) -> list:
    out = []
    while len(out) < most:
        picked = sched.pick(now)
        if picked is None:
            break
        out.append(picked[1])
    return out


@pytest.mark.parametrize("nbytes, units", [(512, 1), (4096, 1), (8192, 1), (8193, 2),
                                           (65536, 8), (1 << 20, 128)])
def test_cost_is_8k_units_rounded_up(nbytes, units):
    assert cost(nbytes) == units


def test_limit_releases_exactly_n_per_second_of_the_clock():
    sched = Scheduler(burst=0, catchup=0)
    sched.set_params("a", QosParams(limit=100), T0)
    backlog(sched, "a", 1000)
    assert len(drain(sched, T0)) == 1                 # the first at once, the rest spaced
    assert sched.next_due() == pytest.approx(T0 + 0.01)
    assert len(drain(sched, T0 + 1.0)) == 100         # one second later: 100 more
    assert len(drain(sched, T0 + 1.5)) == 50


def test_large_ios_count_in_8k_units_against_the_limit():
    sched = Scheduler(burst=0, catchup=0)
    sched.set_params("a", QosParams(limit=800), T0)
    backlog(sched, "a", 1000, nbytes=65536)           # 8 units each: 100 commands a second
    assert len(drain(sched, T0 + 1.0)) == 101


def test_byte_limit_has_its_own_tag():
    sched = Scheduler(burst=0, catchup=0)
    sched.set_params("a", QosParams(limit_bytes=1 << 20), T0)   # 1 MiB/s
    backlog(sched, "a", 100, nbytes=65536)
    assert len(drain(sched, T0 + 1.0)) == 17          # 16 per second and the first at T0


def test_shares_3_to_1_order_of_two_backlogged_vms():
    sched = Scheduler(burst=0, catchup=0)
    sched.set_params("a", QosParams(weight=3), T0)
    sched.set_params("b", QosParams(weight=1), T0)
    backlog(sched, "a", 300)
    backlog(sched, "b", 300)
    first = drain(sched, T0, most=200)
    assert sum(1 for k, _ in first if k == "a") == 150
    assert sum(1 for k, _ in first if k == "b") == 50


def test_reservation_goes_first_then_shares():
    sched = Scheduler(burst=0, catchup=0)
    sched.set_params("a", QosParams(reservation=10), T0)
    sched.set_params("b", QosParams(weight=100), T0)
    backlog(sched, "b", 1000)
    backlog(sched, "a", 100)
    # at T0 + 1 s, a's reservation tags T0, T0 + 0.1, ... T0 + 1.0 are due: 11 of a first
    out = drain(sched, T0 + 1.001, most=11)
    assert [k for k, _ in out] == ["a"] * 11
    assert drain(sched, T0 + 1.001, most=1)[0][0] == "b"      # then shares: b's weight wins


def test_shares_never_above_the_limit():
    sched = Scheduler(burst=0, catchup=0)
    sched.set_params("a", QosParams(limit=10, weight=1000), T0)
    sched.set_params("b", QosParams(weight=1), T0)
    backlog(sched, "a", 100)
    backlog(sched, "b", 100)
    out = drain(sched, T0 + 1.001, most=60)
    assert sum(1 for k, _ in out if k == "a") == 11     # T0 .. T0 + 1.0 every 0.1 s


def test_an_idle_vm_starts_level_not_with_a_burst():
    sched = Scheduler(burst=0, catchup=0)
    sched.set_params("a", QosParams(), T0)
    sched.set_params("b", QosParams(), T0)
    backlog(sched, "a", 1000)
    drain(sched, T0, most=500)                  # a ran alone: its P tags went far ahead
    backlog(sched, "b", 1000)
    out = drain(sched, T0, most=100)            # b does not get 500 in a row
    assert 45 <= sum(1 for k, _ in out if k == "b") <= 55


def test_a_raised_limit_applies_to_commands_already_queued():
    sched = Scheduler(burst=0, catchup=0)
    sched.set_params("a", QosParams(limit=1), T0)
    backlog(sched, "a", 10)
    assert len(drain(sched, T0)) == 1
    sched.set_params("a", QosParams(limit=1000), T0 + 0.5)
    assert len(drain(sched, T0 + 0.5 + 0.0085)) == 9    # retagged at 1 ms spacing


def test_dropping_a_flow_returns_its_queue():
    sched = Scheduler(burst=0, catchup=0)
    sched.set_params("a", QosParams(limit=1), T0)
    backlog(sched, "a", 3)
    assert sched.drop("a") == [("a", 0), ("a", 1), ("a", 2)]
    assert sched.queued == 0 and sched.pick(T0) is None


def test_shared_limit_tags_hold_across_two_processes_views():
    owner = SharedTags()
    worker = SharedTags(os.dup(owner.fd))       # as a worker maps it from --qos-fd
    try:
        procs = [Scheduler(burst=0, catchup=0), Scheduler(burst=0, catchup=0)]
        for sched, tags in zip(procs, (owner, worker)):
            flow = sched.set_params("a", QosParams(limit=100), T0)
            flow.shared, flow.slot = tags, 7
        for i in range(200):                    # the VM's commands alternate between them
            sched = procs[i % 2]
            sched.submit(sched.flows["a"], 4096, T0, i)
        n = sum(len(drain(s, T0 + 1.0)) for s in procs)
        assert n == 101                         # 100 a second for the VM, not per process
    finally:
        worker.close()
        owner.close()


def test_a_flow_catches_up_at_most_burst_seconds_of_unused_limit():
    sched = Scheduler(burst=0.05)
    sched.set_params("a", QosParams(limit=100), T0)
    backlog(sched, "a", 1000)
    assert len(drain(sched, T0)) == 6             # tags T0 - 0.05 .. T0: 50 ms caught up
    assert len(drain(sched, T0 + 1.0)) == 100     # then 100 a second again


def test_a_vm_that_ran_dry_catches_up_at_most_catchup_units_of_its_share():
    sched = Scheduler(burst=0, catchup=8)
    sched.set_params("a", QosParams(), T0)
    sched.set_params("b", QosParams(), T0)
    backlog(sched, "a", 1000)
    drain(sched, T0, most=500)
    backlog(sched, "b", 1000)
    out = drain(sched, T0, most=100)
    assert sum(1 for k, _ in out if k == "b") == 54    # 8 ahead, then level: (100 + 8) / 2
