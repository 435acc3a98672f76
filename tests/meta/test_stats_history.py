"""The statistics history in the meta DB: its size per series per day (the figure
docs/stats.md states), downsampling into the coarser tiers and pruning past retention,
cumulative rows that survive a reopen, a restart shown as a gap, never a negative delta."""

from __future__ import annotations

import numpy as np
from support.stores import small_pool

from vmblock.meta.stats_history import PREFIX, TIERS, StatsHistory
from vmblock.stats import layout as L

# docs/stats.md: at most this many bytes (key + value) per series per day at tier 0 with the
# default 10 s interval, and at most this many per series held once a year has passed
DAY_BYTES_BOUND = 2_000_000
HELD_BYTES_BOUND = 4_500_000
SAMPLES_PER_DAY = 86400 // 10


def busy_row(i: int) -> np.ndarray:
    """A cumulative row of a busy vdisk after ``i`` intervals (large, growing counters)."""
    row = np.zeros(L.WIDTH, np.int64)
    row[L.READ_OPS] = row[L.WRITE_OPS] = 250_000 * i
    row[L.READ_BYTES] = row[L.WRITE_BYTES] = 250_000 * 65536 * i
    row[[L.READ_US, L.WRITE_US, L.STORAGE_US, L.QUEUE_US, L.NETWORK_US]] = 10**9 * i
    row[L.READ_HIST + 40] = row[L.WRITE_HIST + 44] = 250_000 * i
    return row


def stored_bytes(pool, prefix: str) -> tuple[int, int]:
    recs = pool.records(prefix)
    return len(recs), sum(len(PREFIX) + len(k) + 2 + len(str(v)) for k, v in recs)


def test_bytes_per_series_per_day_stay_under_the_stated_bound(tmp_path):
    pool = small_pool(tmp_path / "pool", {}, {"d0": 1 << 20})
    h = StatsHistory(pool)
    t0 = 1_800_000_000.0
    h.start(t0, {"vd:x": busy_row(0)})
    n = 200
    for i in range(1, n + 1):
        h.sample(t0 + 10 * i, {"vd:x": busy_row(i)}, {"vd:x": (1 << 40, 1 << 38)})
    count, nbytes = stored_bytes(pool, f"{PREFIX}h/0/vd:x/")
    assert count == n
    per_day = nbytes / n * SAMPLES_PER_DAY
    assert per_day <= DAY_BYTES_BOUND, per_day
    held = nbytes / n * sum(keep // max(w, 10) for _, w, keep in TIERS)
    assert held <= HELD_BYTES_BOUND, held
    pool.close()


def test_downsampling_and_retention_and_restart(tmp_path):
    pool = small_pool(tmp_path / "pool", {}, {"d0": 1 << 20})
    tiers = ((0, 0, 60), (1, 30, 3000), (2, 120, 30000))   # seconds: a day in miniature
    h = StatsHistory(pool, tiers)
    t0 = 1_800_000_000.0
    h.start(t0, {"s": busy_row(0)})
    for i in range(1, 61):                                  # 10 minutes of 10 s samples
        h.sample(t0 + 10 * i, {"s": busy_row(i)}, {})
    tier0 = pool.records(f"{PREFIX}h/0/s/")
    assert len(tier0) <= 60 // 10 + 1                       # pruned past 60 s
    tier1 = [v for _, v in pool.records(f"{PREFIX}h/1/s/")]
    tier2 = [v for _, v in pool.records(f"{PREFIX}h/2/s/")]
    assert tier1 and tier2
    # every window closed (the last sample ends on a boundary of both): each coarse tier
    # sums to every sample's delta, the first one since the start included
    assert sum(v[2] for v in tier1) == sum(v[2] for v in tier2) == 250_000 * 60
    assert len(tier1) == 600 // 30 and len(tier2) == 600 // 120
    # restart: the stored cumulative row is the base, the next sample is a gap, and a
    # counter that went down (a vdisk re-created) gives 0, never a negative delta
    h2 = StatsHistory(pool, tiers)
    base = h2.base("s")
    assert np.array_equal(base, busy_row(60))
    h2.start(t0 + 10_000, {"s": base})
    e = h2.sample(t0 + 10_005, {"s": base + busy_row(1)}, {})["s"]
    assert e["gap"] and e["read_ops"] == 250_000 and e["dt"] == 5
    e = h2.sample(t0 + 10_010, {"s": busy_row(2)}, {})["s"]
    assert not e["gap"] and e["read_ops"] == 0
    hist = h2.history("s", t0 + 9_990, t0 + 10_010)
    assert [x["gap"] for x in hist] == [True, False]
    pool.close()
