"""The numbers people read, from counter rows (``vmblock.stats.layout``): cumulative counts,
latency average / percentiles / maximum, the latency split, the flash hit ratio, rates.

Percentiles come from the log-linear histogram: the value reported is the middle of the
bucket the percentile falls in (within 12.5% of the true value above 4 us).
"""

from __future__ import annotations

import numpy as np

from vmblock.stats import layout as L

PERCENTILES = (("p50", 0.50), ("p99", 0.99), ("p999", 0.999))
SPLIT = (("network", L.NETWORK_US), ("queue", L.QUEUE_US), ("storage", L.STORAGE_US),
         ("flash", L.FLASH_US), ("flash_miss", L.FLASH_MISS_US))


def percentile(hist: np.ndarray, q: float) -> float:
    """The ``q`` quantile (0..1) of a bucket histogram, in microseconds (0 when empty)."""
    n = int(hist.sum())
    if not n:
        return 0.0
    b = int(np.searchsorted(np.cumsum(hist), max(1, int(np.ceil(q * n)))))
    return (L.bucket_low(b) + L.bucket_low(b + 1)) / 2


def combine(rows: np.ndarray) -> np.ndarray:
    """Several rows (n, WIDTH) as one: counts added, maxima kept."""
    if not len(rows):
        return np.zeros(L.WIDTH, np.int64)
    out = rows.sum(axis=0)
    out[list(L.MAX_COLUMNS)] = rows[:, list(L.MAX_COLUMNS)].max(axis=0)
    return out


def latency(row: np.ndarray, op: str) -> dict:
    """{avg, p50, p99, p999, max} of reads or writes (``op``), microseconds."""
    ops = int(row[L.READ_OPS if op == "read" else L.WRITE_OPS])
    total = int(row[L.READ_US if op == "read" else L.WRITE_US])
    start = L.READ_HIST if op == "read" else L.WRITE_HIST
    hist = row[start:start + L.BUCKETS]
    out = {"avg": round(total / ops, 1) if ops else 0.0}
    for name, q in PERCENTILES:
        out[name] = percentile(hist, q)
    out["max"] = int(row[L.READ_MAX_US if op == "read" else L.WRITE_MAX_US])
    return out


def split(row: np.ndarray) -> dict:
    """Where an average read or write spent its time, microseconds per command: the parts
    add up to the average latency of reads and writes together."""
    ops = int(row[L.READ_OPS] + row[L.WRITE_OPS])
    return {name: round(int(row[col]) / ops, 1) if ops else 0.0 for name, col in SPLIT}


def counts(row: np.ndarray) -> dict:
    """The cumulative counters of a row by name (histograms left out)."""
    return {name: int(row[i]) for i, name in enumerate(L.COUNTERS)}


def hit_ratio(row: np.ndarray) -> float | None:
    """Reads served by flash among the reads behind the cache; None without cached reads."""
    hits, misses = int(row[L.FLASH_OPS]), int(row[L.FLASH_MISS_OPS])
    return round(hits / (hits + misses), 6) if hits + misses else None


def figures(row: np.ndarray) -> dict:
    """The cumulative figures of one row (a vdisk, a VM, a group, the pool)."""
    out = counts(row)
    out["latency_us"] = {"read": latency(row, "read"), "write": latency(row, "write")}
    out["latency_split_us"] = split(row)
    out["flash_hit_ratio"] = hit_ratio(row)
    return out


def rates(delta: np.ndarray, seconds: float) -> dict:
    """IOPS, bytes per second and average I/O size over one interval's ``delta`` row."""
    dt = seconds if seconds > 0 else 1.0
    r_ops, w_ops = int(delta[L.READ_OPS]), int(delta[L.WRITE_OPS])
    r_b, w_b = int(delta[L.READ_BYTES]), int(delta[L.WRITE_BYTES])
    return {"read_iops": round(r_ops / dt, 2), "write_iops": round(w_ops / dt, 2),
            "read_bps": round(r_b / dt, 1), "write_bps": round(w_b / dt, 1),
            "avg_io_bytes": (r_b + w_b) // (r_ops + w_ops) if r_ops + w_ops else 0}
