"""Byte ranges in fixed-size units: the one prologue of every read and write path.

The extent store works in allocation units, the flash cache in cache blocks; both turn a byte
range into the units it touches and cut a long command into pieces a kernel call takes at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


def units(offset: int, length: int, unit: int) -> tuple[int, int]:
    """(first unit, number of units) that the bytes [offset, offset + length) touch; length > 0."""
    first = offset // unit
    return first, (offset + length - 1) // unit - first + 1


def pieces(offset: int, length: int, unit: int, max_units: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte positions, relative to ``offset``, of consecutive pieces of the range
    that each touch at most ``max_units`` units; every cut falls on a unit boundary."""
    start = 0
    while start < length:
        end = min(length, start + max_units * unit - (offset + start) % unit)
        yield start, end
        start = end


def runs(first, marks: Iterable[tuple[int, object]]) -> tuple[tuple[int, ...], tuple]:
    """A piecewise map as runs: ``first`` from position 0, then each ``(position, value)`` of
    ``marks`` in increasing order (a mark at the position of the one before replaces it).
    Returns (starts, values) with neighbouring equal values merged: the LBA/byte splits of
    a shared datastore's LU (vmblock.cache.split, vmblock.qos.split)."""
    starts, values = [0], [first]
    for pos, value in marks:
        if pos == starts[-1]:
            values[-1] = value
        else:
            starts.append(pos)
            values.append(value)
    run_starts, run_values = [], []
    for pos, value in zip(starts, values):
        if not run_values or run_values[-1] != value:
            run_starts.append(pos)
            run_values.append(value)
    return tuple(run_starts), tuple(run_values)
