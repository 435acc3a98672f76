"""One parser per unit a user writes: sizes, fractions, seconds and ``key=value,...`` lists.

Every value a person types (a CLI option, a config key, a TOML entry, a replay argument) goes
through one of these, so the same text means the same thing everywhere. Errors are
``InvalidArgument`` naming ``what`` was being parsed; a caller with its own error class catches
and rewraps. Nothing here imports a layer of vmblock.
"""

from __future__ import annotations

import math
import re

from vmblock.errors import InvalidArgument

_SIZE_RE = re.compile(r"^\s*(\d{1,20})\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_SIZE_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}
_BINARY_UNITS = (("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10))

# The longest interval a seconds value takes: a day (an infinite or huge one would overflow the
# event loop's timer when the server starts).
MAX_SECONDS = 86400.0


def shown(text, limit: int = 40) -> str:
    """``text`` for an error message, cut short so a huge value cannot flood it."""
    text = str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_size(text: str | int, what: str = "size", limit: int | None = None) -> int:
    """Bytes from '512M', '1G', '8GiB', '1T' or a plain number; K/M/G/T/P are powers of 1024.

    Over ``limit`` is refused, naming the value as ``what``."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise InvalidArgument(f"{what} must be a size such as 1G or a number of bytes, "
                              f"not {type(text).__name__}")
    if isinstance(text, int):
        n = text
        if n < 0:
            raise InvalidArgument(f"{what} must not be negative, not {n}")
    else:
        m = _SIZE_RE.match(text)
        if not m:
            raise InvalidArgument(f"bad {what} {shown(text)} (use e.g. 512M, 1G, 8GiB, 1T)")
        n = int(m.group(1)) << _SIZE_SHIFT[m.group(2).lower()]
    if limit is not None and n > limit:
        raise InvalidArgument(f"{what} {shown(text)} is over the largest the pool "
                              f"describes, {format_size(limit)}")
    return n


def format_size(n: int) -> str:
    """Exact: '8 GiB' when ``n`` is a whole number of a binary unit, else '<n> bytes'."""
    for unit, shift in _BINARY_UNITS:
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def human_size(n: int) -> str:
    """Rounded for tables: '1.5 GiB'."""
    for unit, shift in _BINARY_UNITS[1:]:
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def parse_fraction(text: str | float, what: str = "fraction") -> float:
    """A share in [0, 1] from '10%' or '0.1' (both mean a tenth).

    A bare number above 1 is refused rather than read as a percentage, so ``--min 10`` is an
    error that says to write ``10%`` or ``0.1`` instead of silently meaning either."""
    t = str(text).strip()
    percent = t.endswith("%")
    try:
        v = float(t[:-1] if percent else t)
    except ValueError:
        raise InvalidArgument(f"{what} {shown(t)} is not a fraction (write 10% or 0.1)") from None
    if percent:
        v /= 100.0
    elif 1.0 < v <= 100.0:
        raise InvalidArgument(f"{what} {shown(t)} is over 1: write {t}% for a percentage, "
                              f"or a fraction such as 0.1")
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise InvalidArgument(f"{what} {shown(t)} is not between 0 and 1 (0% and 100%)")
    return v


def parse_seconds(text: str | float, what: str = "interval", limit: float = MAX_SECONDS) -> float:
    """Seconds from '30', '1.5', '200us', '250ms', '2s', '5m' or '1h', between 0 and
    ``limit``."""
    t = str(text).strip().lower()
    per, scale = 1.0, 1.0       # '200us' is 200 / 1e6: exactly the float 0.0002, not 200 * 1e-6
    for suffix, divisor, factor in (("us", 1e6, 1.0), ("ms", 1e3, 1.0), ("s", 1.0, 1.0),
                                    ("m", 1.0, 60.0), ("h", 1.0, 3600.0)):
        if t.endswith(suffix) and t[:-len(suffix)].strip():
            t, per, scale = t[:-len(suffix)].strip(), divisor, factor
            break
    try:
        v = float(t) / per * scale
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and 0.0 <= v <= limit):
        raise InvalidArgument(f"{what} must be a number of seconds from 0 to {limit:g}, "
                              f"not {shown(text)}")
    return v


def parse_kv_list(text: str, what: str = "list", known: tuple[str, ...] | None = None
                  ) -> dict[str, str]:
    """``{'a': '1', 'b': 'x'}`` from 'a=1, b=x'; empty items are skipped.

    A repeated key or an item without '=' is refused; so is a key outside ``known`` when
    given, naming the known ones."""
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in str(text).split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidArgument(f"{what}: {shown(item)} is not key=value")
        if known is not None and key not in known:
            raise InvalidArgument(f"{what}: unknown key {shown(key)} (known: {', '.join(known)})")
        if key in out:
            raise InvalidArgument(f"{what}: {key} is given twice")
        out[key] = value.strip()
    return out


_DURATION_RE = re.compile(r"^\s*(\d{1,9})\s*([smhd])\s*$", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str = "duration", lo: int = 1,
                   hi: int = 366 * 86400) -> int:
    """Whole seconds from '30s', '5m', '1h' or '7d' (a unit is required), from ``lo`` to
    ``hi``."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise InvalidArgument(f"bad {what} {shown(text)} (use e.g. 30s, 5m, 1h, 7d)")
    v = int(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
    if not lo <= v <= hi:
        raise InvalidArgument(f"{what} {shown(text)} must be from {lo} s to {hi // 86400} days")
    return v
