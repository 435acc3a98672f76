"""The counters of every serving process, each in its own shared-memory slab.

One ``SharedArray`` (a memfd, ``vmblock.store.shm``) per process: slot 0 is the owner's,
slot ``i + 1`` worker ``i``'s. Each process adds only into its own slab (no locks, no atomics);
the owner reads every slab and sums them (``totals``), so a figure is exact once a command's
recorder has flushed (a worker flushes right after the loop iteration that answered it). A
worker that dies leaves its counts in its slab; the one that replaces it goes on adding there.
Row ``r`` of a slab is ``array[r * WIDTH:(r + 1) * WIDTH]`` (``vmblock.stats.layout``).
"""

from __future__ import annotations

import numpy as np

from vmblock.stats.layout import MAX_COLUMNS, WIDTH
from vmblock.store.shm import SharedArray

MAX_ROWS = 1 << 16          # stats rows of one run (vdisks, sub-vdisks); address space only


def slab(fd: int | None = None, rows: int = MAX_ROWS) -> SharedArray:
    """One process's counters: a new slab, or (``fd``) the owner's slab handed to a worker."""
    return SharedArray("vmblock-stats", np.int64, rows * WIDTH, fd=fd)


def rows_view(shared: SharedArray) -> np.ndarray:
    """The slab as a (rows, WIDTH) array."""
    return shared.array.reshape(-1, WIDTH)


class StatsArena:
    """The owner's view of every slab (module docstring); ``used`` rows are backed."""

    def __init__(self, workers: int = 0, rows: int = MAX_ROWS):
        self.slabs = [slab(rows=rows) for _ in range(workers + 1)]
        self.views = [rows_view(s) for s in self.slabs]
        self.used = 0
        self.rows = rows

    def ensure(self, n: int) -> None:
        """Back rows [0, n) in every slab (before any process may add into them)."""
        if n > self.rows:
            raise OSError(f"at most {self.rows} stats rows")
        if n > self.used:
            for s in self.slabs:
                s.ensure(n * WIDTH)
            self.used = n

    def fd_of(self, worker: int) -> int:
        """The memfd of worker ``worker``'s slab (passed to its process)."""
        return self.slabs[worker + 1].fd

    def totals(self, rows=None) -> np.ndarray:
        """Every slab's rows added up (maxima kept as maxima): (len(rows), WIDTH)."""
        if rows is None:
            rows = np.arange(self.used)
        out = np.zeros((len(rows), WIDTH), np.int64)
        for v in self.views:
            part = v[rows]
            maxima = np.maximum(out[:, MAX_COLUMNS], part[:, MAX_COLUMNS])
            out += part
            out[:, MAX_COLUMNS] = maxima
        return out

    def close(self) -> None:
        """Close the memfds (the mappings live while views exist)."""
        for s in self.slabs:
            s.close()
