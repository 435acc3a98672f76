"""The QoS flows of a shared datastore LU: which VM's flow a command goes to, by its LBA.

A LUN holding an LVM2 volume group (docs/datastores.md) is one LU, but each logical volume on
it belongs to a VM of its own. ``LuSplit`` is what ``QosGate.configure`` takes for such an LU
instead of one flow key: increasing first LBAs from 0 and one flow key per run (None: no
flow, the command passes). A command goes to the flow of the run its first LBA lies in -- the
same rule the statistics use to count it (docs/stats.md, "Sub-vdisks") -- so a VM's limit,
reservation and shares hold for the I/O into its LVs wherever those LVs lie. Commands
without an LBA (TEST UNIT READY, INQUIRY, ...) go to the first run's flow: LBA 0 is the PV
label, which belongs to the LUN's own VM.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from vmblock.stats.layout import KIND_OF_OPCODE
from vmblock.store.ranges import runs
from vmblock.stats.rows import cdb_range


@dataclass(frozen=True)
class LuSplit:
    """The runs of one LU (module docstring): ``starts[i]`` is the first LBA of run ``i``,
    ``keys[i]`` its flow key or None."""

    starts: tuple[int, ...]
    keys: tuple[str | None, ...]

    def __post_init__(self):
        if (not self.starts or self.starts[0] != 0 or len(self.starts) != len(self.keys)
                or any(a >= b for a, b in zip(self.starts, self.starts[1:]))):
            raise ValueError("a QoS split needs increasing first LBAs from 0, one key each")

    @classmethod
    def of_ranges(cls, ranges: list[tuple[int, int, str | None]], block_size: int,
                  rest: str | None) -> LuSplit | str | None:
        """The split of byte ranges ``[(first, end, key)]`` (sorted, not overlapping) of an
        LU of ``block_size`` bytes, ``rest`` for the bytes in none (a range's key None counts
        as ``rest`` too); just ``rest`` when every run has that key."""
        def marks():
            last = 0
            for first, end, key in ranges:
                # a block shared by two ranges (never with LVM's aligned extents) goes to
                # the first
                lo = max(first // block_size, last)
                last = max(-(-end // block_size), lo)
                yield lo, rest if key is None else key
                yield last, rest
        starts, keys = runs(rest, marks())
        if len(keys) == 1:
            return rest
        return cls(starts, keys)

    def key_at(self, cdb: bytes) -> str | None:
        """The flow key of the command ``cdb``: that of the run its first LBA is in."""
        rng = cdb_range(cdb, KIND_OF_OPCODE[cdb[0]])
        if rng is None:
            return self.keys[0]
        return self.keys[bisect_right(self.starts, rng[0]) - 1]

    def flows(self) -> set[str]:
        """Every flow key the LU's commands may go to."""
        return {k for k in self.keys if k is not None}

    def dump(self) -> list:
        """As JSON (the workers' ``QOS`` message): ``[starts, keys]``."""
        return [list(self.starts), list(self.keys)]

    @classmethod
    def load(cls, d: list) -> LuSplit:
        """The split ``dump`` gave."""
        return cls(tuple(d[0]), tuple(d[1]))
