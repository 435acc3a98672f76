"""Eviction-group arbitration: minimum reservations kept, maximum shares never exceeded,
priority decides who gives up space, pinning, live changes, and invalid settings rejected."""

import numpy as np
import pytest

from vmblock.cache import CacheDirectory, GroupSpec, parse_group, validate_groups
from vmblock.cache.params import parse_params
from vmblock.errors import CacheError


def _run(d, keys, vd, step=50, each=None):
    w = np.zeros(keys.shape[0], bool)
    for lo in range(0, keys.shape[0], step):
        d.access(keys[lo:lo + step], vd[lo:lo + step], w[lo:lo + step])
        if each:
            each(d)


def _mixed(n, nvdisks, rng, span=100_000):
    vd = rng.integers(0, nvdisks, n).astype(np.int32)
    keys = rng.integers(0, span, n).astype(np.int64)
    return keys, vd


def test_max_share_is_never_exceeded():
    specs = [GroupSpec("a", priority=9, max=0.3), GroupSpec("b", priority=1, max=0.5),
             GroupSpec("c", priority=5, max=0.2)]
    d = CacheDirectory(1000, specs, 3, block_size=4096)
    for v in range(3):
        d.assign(v, v)
    keys, vd = _mixed(60_000, 3, np.random.default_rng(1))

    def check(d):
        used = d.group_used()
        assert (used <= [300, 500, 200]).all(), used
    _run(d, keys, vd, each=check)
    assert d.used() == 1000         # together they may use the whole cache


def test_min_reservation_is_kept_against_higher_priority():
    specs = [GroupSpec("gold", priority=10, min=0.0, max=1.0),
             GroupSpec("low", priority=0, min=0.25, max=1.0)]
    d = CacheDirectory(1000, specs, 2, block_size=4096)
    d.assign(1, 1)
    rng = np.random.default_rng(2)
    # low fills its reservation first, then gold streams random blocks at 9x the rate
    _run(d, np.arange(400, dtype=np.int64), np.ones(400, np.int32))
    keys, _ = _mixed(50_000, 1, rng, span=1 << 40)
    vd = (rng.random(50_000) < 0.1).astype(np.int32)

    def check(d):
        assert d.group_used()[1] >= 250, d.group_used()
    _run(d, keys, vd, each=check)
    # ... and gold, the higher priority, holds everything above low's minimum
    assert d.group_used()[0] >= 740


def test_lowest_priority_gives_up_space_first():
    specs = [GroupSpec("hi", priority=10), GroupSpec("mid", priority=5),
             GroupSpec("lo", priority=0, min=0.1)]
    d = CacheDirectory(300, specs, 3, block_size=4096)
    for v in range(3):
        d.assign(v, v)
    # lo and mid fill the cache, then hi wants space
    _run(d, np.arange(150, dtype=np.int64), np.full(150, 2, np.int32))
    _run(d, np.arange(150, dtype=np.int64), np.full(150, 1, np.int32))
    _run(d, np.arange(100, dtype=np.int64), np.zeros(100, np.int32))
    used = d.group_used().tolist()
    # lo is the lowest priority above its minimum (30): it gives up all 100, mid keeps its 150
    assert used == [100, 150, 50]


def test_idle_group_loses_its_minimum():
    specs = [GroupSpec("busy", priority=10), GroupSpec("idle", priority=0, min=0.5)]
    d = CacheDirectory(200, specs, 2, "idle-window=1000", block_size=4096)
    d.assign(1, 1)
    _run(d, np.arange(150, dtype=np.int64), np.ones(150, np.int32))
    assert d.group_used()[1] == 150
    _run(d, np.arange(5000, dtype=np.int64), np.zeros(5000, np.int32))
    assert d.group_used()[1] == 0     # idle past the window: its reservation is lent out


def test_pinned_group_is_never_evicted_and_stops_at_its_max():
    specs = [GroupSpec("pin", pinned=True, max=0.25), GroupSpec("rest")]
    d = CacheDirectory(100, specs, 2, block_size=4096)
    d.assign(1, 1)
    _run(d, np.arange(50, dtype=np.int64), np.zeros(50, np.int32))
    assert d.group_used()[0] == 25
    assert d.group_stats(0)["bypasses"] == 25    # no room within its max, nothing to evict
    _run(d, np.arange(10_000, dtype=np.int64), np.ones(10_000, np.int32))
    assert d.group_used()[0] == 25 and d.group_stats(0)["evictions"] == 0
    assert (d.find(np.arange(25), np.zeros(25, np.int32)) >= 0).all()


def test_live_max_change_takes_effect_immediately():
    specs = [GroupSpec("a"), GroupSpec("b")]
    d = CacheDirectory(100, specs, 2, block_size=4096)
    _run(d, np.arange(100, dtype=np.int64), np.zeros(100, np.int32))
    assert d.group_used()[0] == 100
    evicted = d.set_group("a", GroupSpec("a", max=0.4))
    assert evicted == 60 and d.group_used()[0] == 40
    d.check()


def test_promotion_policies():
    specs = [GroupSpec("r", promote="read"), GroupSpec("w", promote="write"),
             GroupSpec("n", promote="never")]
    d = CacheDirectory(100, specs, 3, block_size=4096)
    for v in range(3):
        d.assign(v, v)
    for v in range(3):
        d.access(np.arange(10), np.full(10, v, np.int32), np.ones(10, bool))      # writes
        d.access(np.arange(10, 20), np.full(10, v, np.int32), np.zeros(10, bool))  # reads
    assert d.group_used().tolist() == [10, 20, 0]


@pytest.mark.parametrize("specs,message", [
    ([GroupSpec("a", min=0.6, max=0.5)], "above max"),
    ([GroupSpec("a", min=0.6), GroupSpec("b", min=0.5)], "over 100%"),
    ([GroupSpec("a"), GroupSpec("a")], "twice"),
    ([GroupSpec("a", promote="sometimes")], "promote"),
])
def test_invalid_group_settings_are_rejected(specs, message):
    with pytest.raises(CacheError, match=message):
        validate_groups(specs)


def test_group_parsing():
    g = parse_group("gold:priority=10,min=10%,max=0.6,promote=read")
    assert (g.priority, g.min, g.max, g.promote) == (10, 0.1, 0.6, "read")
    for bad in ("gold:prio=1", "gold:min=x", "gold:max=150%", "gold:min", "gold:min=1%,min=2%"):
        with pytest.raises(CacheError):
            parse_group(bad)


def test_params_reject_unknown_keys():
    assert parse_params("small-size-ratio=0.2")["small-size-ratio"] == 0.2
    with pytest.raises(CacheError, match="unknown"):
        parse_params("small-ratio=0.2")
    with pytest.raises(CacheError):
        parse_params("move-to-main-threshold=9")
