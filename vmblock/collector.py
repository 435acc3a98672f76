"""Garbage-collector settings for the processes that serve I/O (the server and its workers).

The data path makes a few short-lived objects per command: with Python's default young
generation threshold (700) the collector ran thousands of times a second (~9% of the server's
CPU in `perf`, docs/benchmarks.md), and each full collection walked the ~150k objects numba,
numpy and the pool left at start. Those are frozen once a process is up (never collected,
never walked), and the young generation is collected less often (a closed connection frees its
receive buffer itself, so garbage cycles waiting longer stay small).
"""

from __future__ import annotations

import gc

GC_YOUNG_THRESHOLD = 10_000


def settle_gc() -> None:
    """Freeze what start-up made and raise the young generation's threshold (above)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
