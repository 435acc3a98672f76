"""vmblock.units: one meaning per unit, clear errors for everything else."""

import pytest

from vmblock.errors import InvalidArgument
from vmblock.units import (format_size, human_size, parse_fraction, parse_kv_list, parse_seconds,
                           parse_size)


@pytest.mark.parametrize("text,n", [("512", 512), ("1k", 1024), ("512M", 512 << 20), ("8GiB", 8 << 30),
                                    ("1T", 1 << 40), (" 2 gb ", 2 << 30), (4096, 4096)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "1.5G", "-1", "1X", True, None, 2.0, -5, "9" * 30])
def test_parse_size_refuses(text):
    with pytest.raises(InvalidArgument):
        parse_size(text)


def test_parse_size_limit_names_the_value():
    with pytest.raises(InvalidArgument, match="tier size '2T' is over .* 1 TiB"):
        parse_size("2T", "tier size", limit=1 << 40)


def test_format_sizes():
    assert format_size(8 << 30) == "8 GiB"
    assert format_size((8 << 30) + 1) == f"{(8 << 30) + 1} bytes"
    assert human_size(3 << 29) == "1.5 GiB"
    assert human_size(100) == "100 B"


@pytest.mark.parametrize("text,v", [("10%", 0.1), ("0.1", 0.1), ("0", 0.0), ("100%", 1.0),
                                    ("1", 1.0), (0.25, 0.25), (" 50% ", 0.5)])
def test_parse_fraction_has_one_meaning(text, v):
    assert parse_fraction(text) == pytest.approx(v)


@pytest.mark.parametrize("text", ["10", "101%", "-0.1", "nan", "inf", "x", "", "%"])
def test_parse_fraction_refuses(text):
    with pytest.raises(InvalidArgument, match="--min"):
        parse_fraction(text, "--min")


def test_a_bare_percentage_says_how_to_write_it():
    with pytest.raises(InvalidArgument, match="write 10% for a percentage"):
        parse_fraction("10")


@pytest.mark.parametrize("text,v", [("30", 30.0), ("1.5", 1.5), ("250ms", 0.25), ("200us", 2e-4), ("2s", 2.0),
                                    ("5m", 300.0), ("1h", 3600.0), (0, 0.0)])
def test_parse_seconds(text, v):
    assert parse_seconds(text) == pytest.approx(v)


@pytest.mark.parametrize("text", ["-1", "1e9", "nan", "inf", "s", "us", "abc", "2d"])
def test_parse_seconds_refuses(text):
    with pytest.raises(InvalidArgument, match="seconds"):
        parse_seconds(text)


def test_parse_kv_list():
    assert parse_kv_list("a=1, b = x,,") == {"a": "1", "b": "x"}
    with pytest.raises(InvalidArgument, match="twice"):
        parse_kv_list("a=1,a=2")
    with pytest.raises(InvalidArgument, match="not key=value"):
        parse_kv_list("a")
    with pytest.raises(InvalidArgument, match="unknown key 'c'"):
        parse_kv_list("c=1", known=("a", "b"))
