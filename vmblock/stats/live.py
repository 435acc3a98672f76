"""The owner's statistics of one run: the arena of every process's counters, its own
recorder, and the stats row of each key (a vdisk's uuid, later a sub-vdisk's).

Rows are given out in order and never reused within a run (a worker may still add into one);
they are not persisted: what survives a restart is each key's cumulative row, kept by the
history (``vmblock.meta.stats_history``), which ``totals`` callers add.
"""

from __future__ import annotations

import numpy as np

from vmblock.stats.arena import StatsArena, rows_view
from vmblock.stats.layout import WIDTH
from vmblock.stats.recorder import StatsRecorder
from vmblock.stats.rows import LuRows


class LiveStats:
    """Counters of this run by key (module docstring); ``workers`` worker slabs besides
    the owner's, ``schedule`` the loop's ``call_later`` for the recorder's flushes."""

    def __init__(self, workers: int = 0, schedule=None):
        self.arena = StatsArena(workers)
        self.recorder = StatsRecorder(rows_view(self.arena.slabs[0]), schedule)
        self.rows: dict[str, int] = {}

    def row_of(self, key: str) -> int:
        """The row of ``key``, given out now if it has none (backed in every slab)."""
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = len(self.rows)
            self.arena.ensure(row + 1)
        return row

    def lu_rows(self, key: str, probe=None) -> LuRows:
        """A new ``LuRows`` counting into ``key``'s row; ``probe``: the LU's CachedStore."""
        return LuRows(self.row_of(key), probe)

    def totals(self, keys: list[str]) -> np.ndarray:
        """This run's counters of ``keys`` (rows of (len(keys), WIDTH)), every process's
        added; keys without a row count zero."""
        self.recorder.flush()
        rows = np.array([self.rows.get(k, -1) for k in keys], np.int64)
        out = np.zeros((len(keys), WIDTH), np.int64)
        have = rows >= 0            # a key without a row has no backed row to read
        if have.any():
            out[have] = self.arena.totals(rows[have])
        return out

    def close(self) -> None:
        """Close the slabs' memfds."""
        self.arena.close()


def lu_rows_json(lr: LuRows) -> dict:
    """What a worker needs to count an LU as the owner does (``LUNS``, ``HANDOFF``)."""
    out = {"row": lr.row}
    if lr.starts is not None:
        out["starts"] = lr.starts.tolist()
        out["rows"] = lr.rows.tolist()
    return out


def lu_rows_from_json(d: dict) -> LuRows:
    """The worker's ``LuRows`` from ``lu_rows_json`` (no cache probe: the cache is the
    owner's)."""
    lr = LuRows(int(d["row"]))
    if "starts" in d:
        lr.split(d["starts"], d["rows"])
    return lr
