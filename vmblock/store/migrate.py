"""Turning a pool's old per-AU map keys into leaf keys (``vmblock.store.layout``), in one
transaction, when the store opens it."""

from __future__ import annotations

import logging

import numpy as np
from rocksdict import WriteBatch

from vmblock.store.layout import (
    LEAF_AUS,
    UNMAPPED,
    au_key_range,
    leaf_key,
    leaf_values,
    scan_au_keys,
)

log = logging.getLogger(__name__)


def migrate_au_keys(db) -> int:
    """Rewrite every old ``M`` key as leaves and delete the ``M`` keys, in one synced batch
    (a crash leaves either format whole); returns how many AU keys were migrated."""
    mids, vaus, file_aus, tiers = scan_au_keys(db)
    if not len(mids):
        return 0
    leaf_of = mids.astype(np.int64) << 32 | (vaus.astype(np.int64) // LEAF_AUS)
    keys, row = np.unique(leaf_of, return_inverse=True)
    rows = np.full((len(keys), LEAF_AUS), UNMAPPED, dtype=np.uint32)
    trows = np.zeros((len(keys), LEAF_AUS), dtype=np.uint8)
    col = vaus.astype(np.int64) % LEAF_AUS
    rows[row, col] = file_aus
    trows[row, col] = tiers
    batch = WriteBatch(raw_mode=True)
    for k, val in zip(keys.tolist(), leaf_values(rows, trows)):
        batch.put(leaf_key(k >> 32, k & 0xFFFFFFFF), val.tobytes())
    batch.delete_range(*au_key_range())
    db.write(batch)
    log.warning("extent maps: %d per-AU keys of %d maps rewritten as %d leaves", len(mids),
                len(np.unique(mids)), len(keys))
    return len(mids)
