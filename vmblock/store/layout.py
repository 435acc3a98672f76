"""The extent store's records: allocation-unit size, tier numbers, and its keys in the meta DB.

Key layout in the meta DB (binary keys, beside the pool's lowercase JSON keys, so ``M`` cannot
collide with them; big-endian numbers so one map's keys sort by vAU)::

    b"M" + map_id:u32be + vau:u32be   ->  struct "<IB": physical AU, flags (bits 0-1: tier)
    b"T"                               ->  16 random bytes: the last transaction's marker
    b"event/<microseconds:020d>/<kind>" -> JSON of one store event (low space, faults)

A *map id* names one extent map: the live map of a vdisk (``map_id`` in its JSON record) or the
frozen map of a snapshot (``map_id`` of each disk in a snapshot record). Every key is tagged
with its map, so with the vdisk and VM that own it. Reference counts and free space are not
stored: ``PoolStore`` rebuilds them from the maps when it opens (an AU is used iff some map
points at it), which is crash-consistent by construction: there is no second structure to
disagree.
"""

from __future__ import annotations

import json
import struct

import numpy as np
from rocksdict import WriteBatch

from vmblock.errors import PoolError
from vmblock.native import extent as extent_kernels

AU_SIZE = 64 * 1024
TIER_CAPACITY = 0
TIER_FLASH = 1
TIER_NAMES = ("capacity", "flash")
UNMAPPED = int(extent_kernels.UNMAPPED)

KEY_MAP = b"M"
KEY_TXN = b"T"      # a random marker, rewritten by every transaction (see Committer.resolve_txn)
_KEY = struct.Struct(">cII")
_VAL = struct.Struct("<IB")
_KEY_DT = np.dtype([("p", "S1"), ("mid", ">u4"), ("vau", ">u4")])
_VAL_DT = np.dtype([("pau", "<u4"), ("flags", "u1")])


def map_key(mid: int, vau: int) -> bytes:
    """The meta DB key of vAU ``vau`` of map ``mid``."""
    return _KEY.pack(KEY_MAP, mid, vau)


def map_prefix(mid: int) -> bytes:
    """The prefix every key of map ``mid`` starts with."""
    return KEY_MAP + mid.to_bytes(4, "big")


def map_value(pau: int, tier: int = TIER_CAPACITY) -> bytes:
    """The meta DB value of a mapping to AU ``pau`` of ``tier`` (its number in the tier file)."""
    return _VAL.pack(pau, tier)


def scan_maps(db, mid: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(map ids, vAUs, physical AUs in their tier, tiers) of every map key, or of one map's,
    in key order."""
    prefix = KEY_MAP if mid is None else map_prefix(mid)
    items = db.scan(prefix)
    if not items:
        e = np.empty(0, dtype=np.uint32)
        return e, e.copy(), e.copy(), np.empty(0, dtype=np.uint8)
    kb, vb = b"".join(k for k, _ in items), b"".join(v for _, v in items)
    if len(kb) != len(items) * _KEY_DT.itemsize or len(vb) != len(items) * _VAL_DT.itemsize:
        raise PoolError("meta DB holds extent-map records of the wrong size")
    k = np.frombuffer(kb, dtype=_KEY_DT)
    v = np.frombuffer(vb, dtype=_VAL_DT)
    return (k["mid"].astype(np.uint32), k["vau"].astype(np.uint32),
            v["pau"].astype(np.uint32), (v["flags"] & 3).astype(np.uint8))


def n_vaus(size_bytes: int, au: int = AU_SIZE) -> int:
    """How many AUs a map of ``size_bytes`` has (the last one may be partial)."""
    return -(-size_bytes // au)


def put_event(batch: WriteBatch, event: dict) -> None:
    """``event/<microseconds:020d>/<kind>`` -> JSON, so events list in time order."""
    key = f"event/{int(event['time'] * 1e6):020d}/{event['kind']}"
    batch.put(key.encode(), json.dumps(event).encode())
