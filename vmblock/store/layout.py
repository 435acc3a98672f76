"""The extent store's records: allocation-unit size, tier numbers, and its keys in the meta DB.

Key layout in the meta DB (binary keys, beside the pool's lowercase JSON keys, so ``L`` cannot
collide with them; big-endian numbers so one map's keys sort by leaf)::

    b"L" + map_id:u32be + leaf:u32be  ->  LEAF_AUS x u32le: AU in its tier file (UNMAPPED:
                                          none), then LEAF_AUS x u8: its tier
    b"T"                               ->  16 random bytes: the last transaction's marker
    b"X" + map_a:u32be + map_b:u32be   ->  b"": EXTENDED COPY made maps a < b share AUs
                                          (``remap``); ``pool check`` lets them share
    b"event/<microseconds:020d>/<kind>" -> JSON of one store event (low space, faults)

One key holds one *leaf* of a map: the mappings of vAUs ``[leaf * LEAF_AUS, (leaf + 1) *
LEAF_AUS)``, the same unit as the in-memory leaves (``vmblock.native.extent``), so a map of a
million mapped AUs is 4,096 keys of 1,280 bytes. A leaf with nothing mapped has no key.

Pools written before leaves had one key per mapped AU (``b"M" + map_id:u32be + vau:u32be ->
struct "<IB": AU in its tier, flags bits 0-1: tier``); ``PoolStore`` turns them into leaves in
one transaction when it opens such a pool (``migrate_au_keys``).

A *map id* names one extent map: the live map of a vdisk (``map_id`` in its JSON record) or the
frozen map of a snapshot (``map_id`` of each disk in a snapshot record). Every key is tagged
with its map, so with the vdisk and VM that own it. Reference counts and free space are not
stored: ``PoolStore`` rebuilds them from the leaves when it opens (an AU is used iff some map
points at it; one kernel pass over every leaf), which is crash-consistent by construction:
there is no second structure to disagree.
"""

from __future__ import annotations

import json
import struct
from typing import TYPE_CHECKING

from rocksdict import WriteBatch

from vmblock.errors import PoolError
from vmblock.native.leaf import LEAF_AUS, UNMAPPED_AU

if TYPE_CHECKING:
    # the functions that build or parse arrays import numpy themselves: the constants and
    # keys here are what the listing verbs need (vmblock.store.census), without numpy
    import numpy as np

AU_SIZE = 64 * 1024
TIER_CAPACITY = 0
TIER_FLASH = 1
TIER_NAMES = ("capacity", "flash")
UNMAPPED = UNMAPPED_AU

KEY_MAP = b"M"      # the per-AU keys of old pools (migrated when opened)
KEY_LEAF = b"L"
KEY_TXN = b"T"      # a random marker, rewritten by every transaction (see Committer.resolve_txn)
KEY_COPY = b"X"     # two maps EXTENDED COPY made share AUs (map ids are never reused)
_COPY_KEY = struct.Struct(">cII")
_KEY = struct.Struct(">cII")
_VAL = struct.Struct("<IB")
_KEY_FIELDS = [("p", "S1"), ("mid", ">u4"), ("vau", ">u4")]        # numpy dtypes of _KEY,
_VAL_FIELDS = [("pau", "<u4"), ("flags", "u1")]                     # _VAL
LEAF_VALUE_BYTES = LEAF_AUS * 5
_LEAF_KEY = struct.Struct(">cII")
_LEAF_KEY_FIELDS = [("p", "S1"), ("mid", ">u4"), ("leaf", ">u4")]   # and _LEAF_KEY


def map_key(mid: int, vau: int) -> bytes:
    """The old (per-AU) meta DB key of vAU ``vau`` of map ``mid`` (migration and its tests)."""
    return _KEY.pack(KEY_MAP, mid, vau)


def map_value(pau: int, tier: int = TIER_CAPACITY) -> bytes:
    """The old (per-AU) meta DB value of a mapping to AU ``pau`` of ``tier``."""
    return _VAL.pack(pau, tier)


def leaf_key(mid: int, leaf: int) -> bytes:
    """The meta DB key of leaf ``leaf`` (vAUs from ``leaf * LEAF_AUS``) of map ``mid``."""
    return _LEAF_KEY.pack(KEY_LEAF, mid, leaf)


def leaf_prefix(mid: int) -> bytes:
    """The prefix every leaf key of map ``mid`` starts with (``leaf_prefix(mid + 1)`` ends
    its range)."""
    return KEY_LEAF + mid.to_bytes(4, "big")


def copy_key(a: int, b: int) -> bytes:
    """The meta DB key that records that maps ``a`` and ``b`` share AUs by EXTENDED COPY."""
    return _COPY_KEY.pack(KEY_COPY, min(a, b), max(a, b))


def parse_leaf_key(key: bytes) -> tuple[int, int]:
    """(map id, leaf number) of a leaf key (``leaf_key``)."""
    _, mid, leaf = _LEAF_KEY.unpack(key)
    return mid, leaf


def scan_copies(db) -> list[tuple[int, int]]:
    """Every (map a, map b) pair EXTENDED COPY made share AUs."""
    return [_COPY_KEY.unpack(k)[1:] for k, _ in db.scan(KEY_COPY)]


def leaf_values(file_aus: np.ndarray, tiers: np.ndarray) -> np.ndarray:
    """The meta DB values of ``k`` leaves, one row of ``LEAF_VALUE_BYTES`` each, from their
    (k, LEAF_AUS) AUs in their tier files (UNMAPPED: none) and tiers."""
    import numpy as np
    k = file_aus.shape[0]
    out = np.empty((k, LEAF_VALUE_BYTES), dtype=np.uint8)
    out[:, :LEAF_AUS * 4] = file_aus.astype("<u4").view(np.uint8).reshape(k, LEAF_AUS * 4)
    out[:, LEAF_AUS * 4:] = tiers
    return out


def scan_leaves(db, mid: int | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(map ids, leaf numbers, (k, LEAF_AUS) AUs in their tier files, (k, LEAF_AUS) tiers)
    of every leaf key, or of one map's, in key order (map id, then leaf)."""
    import numpy as np
    items = db.scan(KEY_LEAF if mid is None else leaf_prefix(mid))
    k = len(items)
    kb, vb = b"".join(k_ for k_, _ in items), b"".join(v for _, v in items)
    if len(kb) != k * _LEAF_KEY.size or len(vb) != k * LEAF_VALUE_BYTES:
        raise PoolError("meta DB holds extent-map leaves of the wrong size")
    keys = np.frombuffer(kb, dtype=np.dtype(_LEAF_KEY_FIELDS))
    vals = np.frombuffer(vb, dtype=np.uint8).reshape(k, LEAF_VALUE_BYTES)
    file_aus = np.ascontiguousarray(vals[:, :LEAF_AUS * 4]).view("<u4").astype(
        np.uint32, copy=False)
    tiers = np.ascontiguousarray(vals[:, LEAF_AUS * 4:])
    return (keys["mid"].astype(np.uint32), keys["leaf"].astype(np.uint32), file_aus, tiers)


def flat_entries(mids: np.ndarray, leaves: np.ndarray, file_aus: np.ndarray,
                 tiers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(map ids, vAUs, AUs in their tier, tiers) of every mapped entry of ``scan_leaves``'s
    leaves, in key order."""
    import numpy as np
    mapped = file_aus != UNMAPPED
    row, col = np.nonzero(mapped)
    vaus = leaves[row].astype(np.int64) * LEAF_AUS + col
    return (mids[row], vaus.astype(np.uint32), file_aus[mapped], tiers[mapped])


def scan_maps(db, mid: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(map ids, vAUs, physical AUs in their tier, tiers) of every mapped vAU of every map, or
    of one map's, in key order."""
    return flat_entries(*scan_leaves(db, mid))


def scan_au_keys(db) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(map ids, vAUs, physical AUs in their tier, tiers) of every old per-AU map key."""
    import numpy as np
    items = db.scan(KEY_MAP)
    if not items:
        e = np.empty(0, dtype=np.uint32)
        return e, e.copy(), e.copy(), np.empty(0, dtype=np.uint8)
    kb, vb = b"".join(k for k, _ in items), b"".join(v for _, v in items)
    if len(kb) != len(items) * _KEY.size or len(vb) != len(items) * _VAL.size:
        raise PoolError("meta DB holds extent-map records of the wrong size")
    k = np.frombuffer(kb, dtype=np.dtype(_KEY_FIELDS))
    v = np.frombuffer(vb, dtype=np.dtype(_VAL_FIELDS))
    return (k["mid"].astype(np.uint32), k["vau"].astype(np.uint32),
            v["pau"].astype(np.uint32), (v["flags"] & 3).astype(np.uint8))


def au_key_range() -> tuple[bytes, bytes]:
    """The key range [begin, end) of every old per-AU map key."""
    return KEY_MAP, bytes([KEY_MAP[0] + 1])


def n_vaus(size_bytes: int, au: int = AU_SIZE) -> int:
    """How many AUs a map of ``size_bytes`` has (the last one may be partial)."""
    return -(-size_bytes // au)


def put_event(batch: WriteBatch, event: dict) -> None:
    """``event/<microseconds:020d>/<kind>`` -> JSON, so events list in time order."""
    key = f"event/{int(event['time'] * 1e6):020d}/{event['kind']}"
    batch.put(key.encode(), json.dumps(event).encode())
