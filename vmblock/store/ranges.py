"""Byte ranges in fixed-size units: the one prologue of every read and write path.

The extent store works in allocation units, the flash cache in cache blocks; both turn a byte
range into the units it touches and cut a long command into pieces a kernel call takes at once.
"""

from __future__ import annotations

from collections.abc import Iterator


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
