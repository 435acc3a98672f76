"""The VM-aware extent store of one pool: tiers, allocator, live extent maps, commit order.

``PoolStore`` composes the parts, each in its own module:

* ``layout``: AU size, tiers, the meta DB's key layout; ``tier``: one tier file;
* ``alloc.Allocator``: global AU numbers, reference counts, free space, held frees;
* ``shm.SharedArray``: memfd-backed arrays other processes can map (leaves, L1s, refcounts);
* ``maps.LiveMaps``: every live vdisk's two-level extent map (vAU -> physical AU) in one leaf
  arena, its size and tier; ``migrate``: old per-AU map keys -> leaves;
* ``events.StoreEvents``: events for the next commit and the low-space policy;
* ``commit.Committer``: dirty leaves, the commit order (data before the keys that point at
  it), faults, metadata transactions (``MapTxn``);
* ``datapath.DataPath``: reads and writes; ``move.TierMover``: tier moves;
* ``quota.Quotas``: per-VM space quotas, checked by the data path before it allocates;
* ``prealloc.preallocate``: mapping zeroed AUs without writing them (benchmarks);
* ``fsck.check_store`` and ``usage.usage_report``: the reports.

``ExtentStore`` (``vmblock.store.extent``) is the ``BackingStore`` one LUN sees: a view of one
map. All parts share one ``lock`` that guards the in-memory state (maps, refcounts, pending
keys); data I/O on AUs that are mapped and owned runs outside it.
"""

from __future__ import annotations

import threading

import numpy as np
from rocksdict import WriteBatch

from vmblock.store.alloc import Allocator
from vmblock.store.commit import Committer, StoreFault
from vmblock.store.datapath import DataPath
from vmblock.store.events import StoreEvents
from vmblock.store.fsck import check_store
from vmblock.store.layout import AU_SIZE, scan_copies, scan_leaves
from vmblock.store.maps import LiveMaps
from vmblock.store.migrate import migrate_au_keys
from vmblock.store.move import MOVE_CHUNK_AUS, TierMover
from vmblock.store.prealloc import preallocate
from vmblock.store.tier import Tier
from vmblock.store.usage import usage_report


class PoolStore:
    """Allocator, reference counts and live extent maps of one pool; thread-safe.

    ``lock`` guards the in-memory state (maps, refcounts, pending keys); data I/O on AUs that
    are mapped and owned runs outside it. ``committer.flush_lock`` orders commits and
    metadata changes.
    """

    def __init__(self, db, capacity: Tier, flash: Tier, live: dict[int, int],
                 thresholds: tuple[int, ...] = (80, 90, 95), au: int = AU_SIZE,
                 tiers: dict[int, int] | None = None, cache_bytes: int = 0):
        """Open the store over the meta DB ``db``: turn a pool's old per-AU map keys into
        leaves (one transaction), read every leaf (few keys, big values), rebuild reference
        counts and free space from them in one kernel pass and load the live maps ``live``
        (map id -> size in bytes) into the leaf arena; ``tiers``: map id -> the tier its new
        allocations go to."""
        self.db = db
        self.au = au
        self.capacity = capacity
        self.flash = flash
        self.lock = threading.Lock()
        migrate_au_keys(db)
        mids, slots, file_rows, tier_rows = scan_leaves(db)
        self.space = Allocator(capacity, flash, au, self.lock, file_rows.reshape(-1),
                               tier_rows.reshape(-1), cache_bytes)
        rows = self.space.loaded_aus.reshape(file_rows.shape)
        self.space.loaded_aus = None
        self.live = LiveMaps(db, self.space)
        self.live.load(live, mids, slots.astype(np.int64), rows)
        self.live.tiers.update(tiers or {})
        self.events = StoreEvents(self.space, thresholds)
        self.committer = Committer(db, self.space, self.live, self.events, self.lock)
        self.data = DataPath(self.live, self.space, self.committer, self.events)
        self.quotas = self.data.quotas
        self.mover = TierMover(self.committer)
        self.closed = False

    @property
    def cache_bytes(self) -> int:
        """The flash tier's bytes below its first AU: the flash cache's slots."""
        return self.space.cache_bytes

    @property
    def fault(self) -> StoreFault | None:
        """The commit that failed and is not recovered from yet."""
        return self.committer.fault

    def flush(self) -> None:
        """Make every completed write durable: data (fdatasync) first, then the map keys."""
        self.committer.flush()

    def transaction(self, batch: WriteBatch):
        """A metadata change as one synced batch; see ``Committer.transaction``."""
        return self.committer.transaction(batch)

    def pending_events(self) -> list[dict]:
        """Events not committed yet, oldest first."""
        with self.lock:
            return list(self.events.queue)

    def map_used_bytes(self, mid: int) -> int:
        """Bytes the live map ``mid`` has mapped."""
        return self.live.used_bytes(mid)

    def map_tier_bytes(self, mid: int) -> dict[str, int]:
        """Bytes the live map ``mid`` holds on each tier."""
        return self.live.tier_bytes(mid)

    def entries(self, mid: int) -> tuple[np.ndarray, np.ndarray]:
        """(vAUs, physical AUs) of one map, live or frozen."""
        return self.live.entries(mid)

    def preallocate(self, map_id: int, first_vau: int, count: int) -> None:
        """Map ``count`` fresh AUs from vAU ``first_vau`` of the live map ``map_id`` without
        writing their data: zeroed cheaply (hole punch, else zeros written), durable, then
        mapped one transaction per chunk; mapped vAUs are left alone (``prealloc``)."""
        preallocate(self.committer, self.data.zeros, map_id, first_vau, count)

    @property
    def shared_fds(self) -> dict[str, int]:
        """The memfds another process maps to look maps and reference counts up read-only:
        ``leaves`` and ``l1`` (``LiveMaps``), ``refcount`` (``Allocator``)."""
        return {"leaves": self.live.leaf_fd, "l1": self.live.l1_fd,
                "refcount": self.space.refcount_fd}

    def move(self, mid: int, tier: int, chunk_aus: int = MOVE_CHUNK_AUS) -> dict:
        """Move the live map ``mid`` to ``tier`` while I/O goes on (``TierMover.move``)."""
        return self.mover.move(mid, tier, chunk_aus)

    def capacity_use(self) -> dict:
        """The capacity tier's size, free bytes and percent used, from counters (no pass over
        the reference counts, unlike ``usage``): what periodic checks read."""
        space = self.space
        return {"capacity_bytes": space.capacity.size_bytes,
                "free_bytes": space.t_free[0] * space.au,
                "used_pct": round(space.used_pct(0), 2)}

    def usage(self) -> dict:
        """Space per tier (``usage_report``)."""
        return usage_report(self.committer)

    def copy_pairs(self) -> list[tuple[int, int]]:
        """The (map, map) pairs EXTENDED COPY made share AUs (``remap``), durable ones."""
        return scan_copies(self.db)

    def check(self, maps_info: dict[int, dict], families: dict[int, int]) -> dict:
        """The fsck (``check_store``)."""
        return check_store(self.committer, self.mover, maps_info, families)

    def close(self) -> None:
        """Commit what is pending, then close the tiers (once)."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            self.capacity.close()
            self.flash.close()
            self.live.close()
            self.space.shared_refs.close()

