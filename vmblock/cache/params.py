"""Cache parameters parsed from a defaults string (libCacheSim style, ``key=value,...``).

The defaults are the S3-FIFO paper's: a small FIFO of 10% of the group's blocks, a ghost FIFO
remembering 90% as many keys, and a block moves from small to main after 2 hits while in small
(``move-to-main-threshold``, as libCacheSim's S3FIFO). ``idle-window`` is the number of accesses
without a request after which a group loses the protection of its minimum reservation
(0 = as many accesses as the cache has slots). Unknown keys are rejected.
"""

from __future__ import annotations

from functools import partial

from vmblock.errors import CacheError, InvalidArgument
from vmblock.units import parse_fraction, parse_kv_list

S3FIFO_DEFAULTS = "small-size-ratio=0.10,ghost-size-ratio=0.90,move-to-main-threshold=2,idle-window=0"

# key -> (parse, lowest, highest); small-size-ratio is a share of the cache ('0.1' or '10%')
_KEYS = {"small-size-ratio": (partial(parse_fraction, what="cache parameter small-size-ratio"),
                              0.0, 1.0),
         "ghost-size-ratio": (float, 0.0, 4.0),
         "move-to-main-threshold": (int, 1, 3),
         "idle-window": (int, 0, 1 << 62)}


def _parse_into(out: dict, text: str) -> None:
    try:
        items = parse_kv_list(text, "cache parameters", tuple(_KEYS))
    except InvalidArgument as e:
        raise CacheError(str(e)) from None
    for key, value in items.items():
        parse, lo, hi = _KEYS[key]
        try:
            v = parse(value)
        except ValueError:
            raise CacheError(f"cache parameter {key}={value!r} is not a number") from None
        except InvalidArgument as e:
            raise CacheError(str(e)) from None
        if not lo <= v <= hi:
            raise CacheError(f"cache parameter {key}={v} out of range [{lo}, {hi}]")
        out[key] = v


def parse_params(text: str | None = None) -> dict:
    """The defaults overridden by ``text``; raises ``CacheError`` for unknown keys or bad values."""
    out: dict = {}
    _parse_into(out, S3FIFO_DEFAULTS)
    if text:
        _parse_into(out, text)
    return out
