"""Owned byte ranges (an LVM datastore's ``lu_ranges``) as a stats split of one LU: LVs'
blocks in their rows, the rest in the vdisk's, neighbours of one row merged."""

from __future__ import annotations

from vmblock.stats.rows import LuRows, split_by_ranges

MiB = 1 << 20


def test_ranges_become_a_split_with_the_rest_in_the_vdisk_row():
    rows = {"a": 7, "b": 8}
    ranges = [(1 * MiB, 9 * MiB, "a"), (9 * MiB, 13 * MiB, "a"), (13 * MiB, 25 * MiB, "b"),
              (25 * MiB, 29 * MiB, "a")]
    starts, out = split_by_ranges(ranges, 512, 3, rows.__getitem__)
    assert starts == [0, 2048, 13 * 2048, 25 * 2048, 29 * 2048]
    assert out == [3, 7, 8, 7, 3]
    lr = LuRows(3)
    lr.split(starts, out)
    # a 64 KiB write across the a|b boundary: its bytes split, its command in a's row
    assert lr.pieces(13 * 2048 - 64, 128, 512) == [(7, 32768), (8, 32768)]


def test_a_range_from_zero_and_one_to_the_end():
    starts, out = split_by_ranges([(0, 4096, "a"), (8192, 16384, "b")], 4096, 1,
                                  {"a": 2, "b": 3}.__getitem__)
    assert (starts, out) == ([0, 1, 2, 4], [2, 1, 3, 1])


def test_no_ranges_or_empty_ones_install_no_split():
    assert split_by_ranges([], 512, 1, None) == (None, None)
    assert split_by_ranges([(100, 200, "a")], 512, 1, {"a": 2}.__getitem__) == (None, None)
