"""vmblock.store.ranges against a naive twin that lists the unit of every byte."""

from hypothesis import given
from hypothesis import strategies as st

from vmblock.store.ranges import pieces, units


def _units_of(offset, length, unit):
    return sorted({(offset + i) // unit for i in range(length)})


@given(st.integers(0, 5000), st.integers(1, 3000), st.sampled_from([1, 7, 512, 4096]))
def test_units_matches_every_byte(offset, length, unit):
    first, count = units(offset, length, unit)
    assert list(range(first, first + count)) == _units_of(offset, length, unit)


@given(st.integers(0, 5000), st.integers(0, 3000), st.sampled_from([1, 7, 512]),
       st.integers(1, 5))
def test_pieces_cover_the_range_within_the_limit(offset, length, unit, max_units):
    got = list(pieces(offset, length, unit, max_units))
    bounds = [0] + [b for _, b in got]
    assert [a for a, _ in got] == bounds[:-1] and bounds[-1] == length
    for a, b in got:
        assert a < b and units(offset + a, b - a, unit)[1] <= max_units
        if b < length:
            assert (offset + b) % unit == 0
