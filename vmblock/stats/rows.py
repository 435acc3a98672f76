"""Which stats row a command on an LU counts in: one row per LU, or a split by LBA range.

Every served LU has a ``LuRows`` entry in its SCSI target's ``stats_rows`` (LUN -> entry),
which the iSCSI fabric looks up once per command. By default a vdisk's LU counts into the
vdisk's one row. A shared datastore LUN (LVM on a LUN, issue 13) installs a split instead:

    lu_rows = LuRows(row_of_the_unowned_rest)
    lu_rows.split(np.array([0, 2048, 10240]), np.array([r_rest, r_vm100, r_rest]))

``starts`` are the first LBAs of ranges in increasing order, the first being 0; ``rows``
their stats rows. A command is counted (ops, latency) in the row of its first LBA; its bytes
go to every range it touches, each range the bytes inside it (``pieces``, a bisect), so that
the sums over rows stay exact. Installing a new split is one attribute store: commands in flight
finish counted under the split they started with.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from vmblock.native.stats import KEY, OP_SHIFT, ROW_SHIFT
from vmblock.stats.layout import READ, WRITE


class LuRows:
    """The stats rows of one LU (module docstring); ``row`` when no split is installed."""

    __slots__ = ("row", "keys", "starts", "rows", "probe", "_bounds", "inline")

    def __init__(self, row: int, probe=None):
        self.row = row
        # the staging key of a grouped command on this row, by opcode (KEY): one int object
        # each, which the fabric compares by identity
        self.keys = tuple(KEY | row << ROW_SHIFT | op << OP_SHIFT for op in range(256))
        self.starts: np.ndarray | None = None
        self.rows: np.ndarray | None = None
        # (starts, rows) as Python lists: a per-command lookup is a bisect, not a numpy call
        self._bounds: tuple[list[int], list[int]] = ([0], [row])
        # the store whose ``capacity_reads`` tells a flash hit from a miss (a CachedStore)
        self.probe = probe
        # one row and no probe: the fabric stages a grouped command itself (ScsiTransfer.task_done)
        self.inline = probe is None

    def split(self, starts, rows) -> None:
        """Install a range -> row split (``None`` for both: back to the one row)."""
        if starts is None:
            self.starts = self.rows = None
            self._bounds = ([0], [self.row])
            self.inline = self.probe is None
            return
        starts = np.asarray(starts, np.int64)
        rows = np.asarray(rows, np.int64)
        if (starts.ndim != 1 or len(starts) != len(rows) or not len(starts) or starts[0] != 0
                or np.any(np.diff(starts) <= 0)):
            raise ValueError("a split needs increasing first LBAs from 0, one row each")
        self._bounds = (starts.tolist(), rows.tolist())    # before the split is visible
        self.rows, self.starts = rows, starts
        self.inline = False

    def pieces(self, lba: int, blocks: int, block_size: int) -> list[tuple[int, int]]:
        """(row, bytes) of each range an I/O of ``blocks`` from ``lba`` touches, first
        range first."""
        starts, rows = self._bounds
        end = lba + blocks
        i = bisect_right(starts, lba) - 1
        last = len(starts) - 1
        out = []
        while True:
            upto = min(starts[i + 1], end) if i < last else end
            out.append((rows[i], (upto - lba) * block_size))
            if upto >= end:
                return out
            lba = upto
            i += 1


def split_by_ranges(ranges, block_size: int, rest: int, row_of
                    ) -> tuple[list[int], list[int]] | tuple[None, None]:
    """The (starts, rows) of a split (``LuRows.split``) from owned byte ranges: ``ranges``
    are (first byte, end byte, key) sorted and not overlapping, ``row_of(key)`` gives each
    key's row, and everything outside them counts in ``rest``. Byte bounds go to the block
    holding them (LVM ranges are whole extents: aligned to any block size); neighbouring
    ranges of one row merge. (None, None) when every block counts in ``rest``."""
    marks = {0: rest}
    for first, end, key in ranges:
        lo, hi = first // block_size, end // block_size
        if hi <= lo:
            continue
        marks[lo] = row_of(key)
        marks[hi] = rest            # a range starting right here overwrites it next
    starts: list[int] = []
    rows: list[int] = []
    for lba in sorted(marks):
        if not rows or rows[-1] != marks[lba]:
            starts.append(lba)
            rows.append(marks[lba])
    if rows == [rest]:
        return None, None
    return starts, rows


def cdb_range(cdb: bytes, kind: int) -> tuple[int, int] | None:
    """(LBA, blocks) of a READ or WRITE CDB (SBC-4 5.x layouts), None for other kinds."""
    if kind != READ and kind != WRITE:
        return None
    n = len(cdb)
    op = cdb[0]
    if op in (0x08, 0x0A):      # READ(6), WRITE(6): 21-bit LBA, 0 blocks means 256
        return int.from_bytes(cdb[1:4], "big") & 0x1FFFFF, cdb[4] or 256
    if op >= 0x80 and n >= 16:  # 16-byte CDBs: LBA(8), TRANSFER LENGTH(4)
        return int.from_bytes(cdb[2:10], "big"), int.from_bytes(cdb[10:14], "big")
    if op >= 0xA0 and n >= 12:  # 12-byte CDBs: LBA(4), TRANSFER LENGTH(4)
        return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[6:10], "big")
    return int.from_bytes(cdb[2:6], "big"), int.from_bytes(cdb[7:9], "big")
