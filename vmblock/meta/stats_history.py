"""Statistics history and cumulative counters in the meta DB, with downsampling tiers.

Every ``stats.interval`` seconds the server hands ``StatsHistory.sample`` the cumulative
counter row (``vmblock.stats.layout``) of every series: ``vd:<vdisk uuid>``, ``vm:<vm
uuid>`` and ``pool``. Each sample stores, per series, that interval's delta:

    stats/c/<series>                      the cumulative row (JSON list of ints)
    stats/h/<tier>/<series>/<t in ms>     [dt_ms, gap, <HISTORY_FIELDS ...>]

in one synced batch. The cumulative rows are the base a restarted server adds its counters
to, so counters survive restarts; the first sample after a start covers the time since the
start and carries ``gap`` 1 (the downtime before it is no interval: no negative rate, ever).
A kill -9 loses the counts since the last sample.

Tiers (``TIERS``): 0 holds every sample for a day; when a sample crosses a 10-minute
boundary, the tier-0 samples of the windows behind it are summed into one tier-1 record
(kept 30 days), and crossing an hour sums tier-1 records into tier 2 (kept a year); each
crossing deletes the records past their tier's retention. Why these: a day of 10 s
resolution answers "what happened this morning", 10 minutes for a month answers "since
when", hourly for a year answers capacity planning; the sizes are in docs/stats.md (about
1.4 MB per series per day at tier 0, bounded at ~3.3 MB per series once a year has passed).
In a downsampled record counts are summed and the p99 is the highest of the window's p99s.
"""

from __future__ import annotations

import numpy as np

from vmblock.stats import figures, layout as L

# (tier, window seconds, retention seconds); tier 0's window is the sampling interval
TIERS = ((0, 0, 86400), (1, 600, 30 * 86400), (2, 3600, 365 * 86400))
HISTORY_FIELDS = ("read_ops", "write_ops", "read_bytes", "write_bytes", "other_ops",
                  "read_us", "write_us", "read_p99_us", "write_p99_us", "network_us",
                  "queue_us", "storage_us", "flash_us", "flash_miss_us", "flash_ops",
                  "flash_miss_ops", "used_bytes", "snapshot_bytes")
_MAX_FIELDS = ("read_p99_us", "write_p99_us")
_LAST_FIELDS = ("used_bytes", "snapshot_bytes")
_OTHER = (L.FLUSH_OPS, L.UNMAP_OPS, L.COMPARE_WRITE_OPS, L.XCOPY_OPS, L.OTHER_OPS)
_COLS = {"read_ops": L.READ_OPS, "write_ops": L.WRITE_OPS, "read_bytes": L.READ_BYTES,
         "write_bytes": L.WRITE_BYTES, "read_us": L.READ_US, "write_us": L.WRITE_US,
         "network_us": L.NETWORK_US, "queue_us": L.QUEUE_US, "storage_us": L.STORAGE_US,
         "flash_us": L.FLASH_US, "flash_miss_us": L.FLASH_MISS_US, "flash_ops": L.FLASH_OPS,
         "flash_miss_ops": L.FLASH_MISS_OPS}
PREFIX = "stats/"
_T_DIGITS = 15


def _tkey(tier: int, series: str, t_ms: int) -> str:
    return f"{PREFIX}h/{tier}/{series}/{t_ms:0{_T_DIGITS}d}"


def entry_of(delta: np.ndarray, space: tuple[int, int]) -> list[int]:
    """The history fields of one interval's ``delta`` row (``space``: used and
    snapshot-only bytes at the end of it)."""
    out = []
    for name in HISTORY_FIELDS:
        if name == "other_ops":
            out.append(int(delta[list(_OTHER)].sum()))
        elif name == "read_p99_us":
            out.append(int(figures.percentile(delta[L.READ_HIST:L.READ_HIST + L.BUCKETS], .99)))
        elif name == "write_p99_us":
            out.append(int(figures.percentile(delta[L.WRITE_HIST:L.WRITE_HIST + L.BUCKETS],
                                              .99)))
        elif name == "used_bytes":
            out.append(int(space[0]))
        elif name == "snapshot_bytes":
            out.append(int(space[1]))
        else:
            out.append(int(delta[_COLS[name]]))
    return out


def as_dict(t_ms: int, value: list) -> dict:
    """A stored history record as the JSON the verbs answer: ``t`` (unix seconds, the
    interval's end), ``dt`` (seconds), ``gap`` and the fields."""
    d = {"t": t_ms / 1000, "dt": value[0] / 1000, "gap": bool(value[1])}
    d.update(zip(HISTORY_FIELDS, value[2:]))
    return d


def merge(entries: list[list]) -> list:
    """Several stored records as one (counts summed, p99 the highest, space the last)."""
    out = [sum(e[0] for e in entries), max(e[1] for e in entries)]
    for i, name in enumerate(HISTORY_FIELDS, start=2):
        col = [e[i] for e in entries]
        out.append(max(col) if name in _MAX_FIELDS else col[-1] if name in _LAST_FIELDS
                   else sum(col))
    return out


class StatsHistory:
    """The history of one pool (module docstring); ``tiers`` for tests."""

    def __init__(self, pool, tiers=TIERS):
        self.pool = pool
        self.tiers = tiers
        self.prev: dict[str, np.ndarray] = {}   # series -> cumulative row of the last sample
        self.prev_t = 0.0                       # time of the last sample (0: none this run)
        self.started = 0.0

    def base(self, series: str) -> np.ndarray:
        """The cumulative row stored for ``series`` (zeros when none)."""
        row = np.zeros(L.WIDTH, np.int64)
        stored = self.pool.record(f"{PREFIX}c/{series}")
        if stored:
            row[:len(stored)] = stored
        return row

    def start(self, t: float, bases: dict[str, np.ndarray]) -> None:
        """A server starts at ``t`` with these cumulative rows: the next sample's deltas are
        taken from them, and it is marked as following a gap."""
        self.started = t
        self.prev = {s: b.copy() for s, b in bases.items()}
        self.prev_t = 0.0

    def sample(self, t: float, cumulative: dict[str, np.ndarray],
               space: dict[str, tuple[int, int]]) -> dict[str, dict]:
        """Store one sample at ``t`` (module docstring); the stored entries by series."""
        gap = self.prev_t == 0.0
        since = self.started if gap else self.prev_t
        t_ms = int(t * 1000)
        dt_ms = max(int((t - since) * 1000), 0)
        put: dict[str, object] = {}
        out = {}
        for series, cum in cumulative.items():
            prev = self.prev.get(series)
            delta = cum - prev if prev is not None else cum.copy()
            np.maximum(delta, 0, out=delta)         # a vdisk re-created: never negative
            value = [dt_ms, int(gap)] + entry_of(delta, space.get(series, (0, 0)))
            put[_tkey(0, series, t_ms)] = value
            put[f"{PREFIX}c/{series}"] = cum.tolist()
            out[series] = as_dict(t_ms, value)
        self.pool.write_records(put)
        if self.prev_t:
            self._downsample(t, list(cumulative))
        self.prev = {s: c.copy() for s, c in cumulative.items()}
        self.prev_t = t
        return out

    def persist(self, cumulative: dict[str, np.ndarray]) -> None:
        """Store the cumulative rows alone (at shutdown: the counts since the last sample
        are kept, with no history entry)."""
        self.pool.write_records({f"{PREFIX}c/{s}": c.tolist() for s, c in cumulative.items()})

    def _downsample(self, t: float, series: list[str]) -> None:
        """Windows of the coarser tiers that the sample at ``t`` closed: summed from the
        finer tier (already stored) into one record each; then records past retention go."""
        for (finer, _, _), (tier, window, _) in zip(self.tiers, self.tiers[1:]):
            lo_w = int(self.prev_t // window) * window
            hi_w = int(t // window) * window
            if hi_w <= lo_w:
                break           # this window still open: the coarser ones too
            put: dict[str, object] = {}
            for s in series:
                # the finer records ending in (lo_w - window, hi_w]: the windows just closed
                # (and the one before, again: a restart may have left it partly summed)
                recs = self.pool.records_range(_tkey(finer, s, (lo_w - window) * 1000 + 1),
                                               _tkey(finer, s, hi_w * 1000 + 1))
                windows: dict[int, list] = {}
                for k, v in recs:
                    end = int(k.rsplit("/", 1)[1]) - 1      # an end on the boundary: before it
                    windows.setdefault(end // 1000 // window * window, []).append(v)
                for w, vals in windows.items():
                    put[_tkey(tier, s, (w + window) * 1000)] = merge(vals)
            delete = []
            for tr, _, retention in self.tiers[:tier + 1]:
                for s in series:
                    delete += [k for k, _ in self.pool.records_range(
                        _tkey(tr, s, 0), _tkey(tr, s, int((t - retention) * 1000)))]
            self.pool.write_records(put, delete)

    def history(self, series: str, since: float, now: float) -> list[dict]:
        """The entries of ``series`` from ``since`` to ``now``, from the finest tier that
        still holds ``since``."""
        age = now - since
        tier = next((tr for tr, _, keep in self.tiers if age <= keep), self.tiers[-1][0])
        recs = self.pool.records_range(_tkey(tier, series, int(since * 1000)),
                                       _tkey(tier, series, int(now * 1000) + 1))
        return [as_dict(int(k.rsplit("/", 1)[1]), v) for k, v in recs]

    def forget(self, series: str) -> None:
        """Drop everything stored for ``series`` (a deleted vdisk or VM)."""
        keys = [f"{PREFIX}c/{series}"]
        for tier, _, _ in self.tiers:
            keys += [k for k, _ in self.pool.records_range(_tkey(tier, series, 0),
                                                           _tkey(tier, series, 10 ** 15 - 1))]
        self.pool.write_records({}, keys)


def space_of(pool, disks, snapshots) -> dict[str, tuple[int, int, int]]:
    """(used, snapshot-only, shared) bytes per vdisk uuid: mapped bytes of its live map;
    bytes of AUs only its snapshots hold; bytes of live AUs another map (a snapshot, a
    clone) holds too."""
    store = pool.store
    au = store.space.au
    with store.lock:
        refs = store.space.refs()
        frozen: dict[str, list[np.ndarray]] = {}
        for snap in snapshots:
            for d in snap.disks:
                frozen.setdefault(d["vdisk"], []).append(store.entries(d["map_id"])[1])
        out = {}
        for disk in disks:
            live = store.entries(disk.map_id)[1]
            snap_aus = (np.setdiff1d(np.concatenate(frozen[disk.uuid]), live)
                        if disk.uuid in frozen else np.empty(0, np.int64))
            shared = int(np.count_nonzero(refs[live] > 1)) if len(live) else 0
            out[disk.uuid] = (len(live) * au, len(snap_aus) * au, shared * au)
    return out
