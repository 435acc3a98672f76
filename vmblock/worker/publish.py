"""What the owner publishes for the workers' fast path (docs/workers.md, "The fast path").

``Publisher`` owns the shared words (``shared.Fence``), hooks the fence into the store's
deferred frees (``Allocator.fence``) and keeps one record per served LU: its L1 slot, size,
block size and flag word. The owner calls ``refresh`` after anything that may change an LU's
SCSI state (a forwarded command, a TMF, a handoff, an admin verb) before the answer leaves,
so a command that follows the answer causally sees the FORWARD bit; ``changing`` brackets a
wholesale map change (snapshot, clone, revert, resize, move, delete): the LUs' CHANGING bit
is set, the epoch bumped, and the change waits until no worker is still in a command that
started before (race 1 of the doc).
"""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from vmblock.native.extent import L1_DTYPE, LEAF_AUS, MAP_DTYPE, REF_DTYPE
from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.task import Nexus
from vmblock.store.extent import ExtentStore
from vmblock.store.maps import L1_RESERVE, LEAF_RESERVE
from vmblock.store.pool_store import PoolStore

from .shared import (
    BLOCK_SIZE,
    BLOCKS,
    CHANGING,
    FLAGS,
    L1_LEN,
    L1_OFF,
    MAX_LUS,
    NOTHING_WATCHED,
    STATE,
    UA_BASE,
    UA_BITS,
    UNUSED,
    WATCH_HIGH,
    WATCH_LOW,
    WRITE_THROUGH,
    Fence,
    record,
)

POLL = 0.0005               # seconds between looks at the workers' words while waiting
# Test-only: a directory where ``changing`` leaves a file ``quiescing`` once its CHANGING bits
# are set and it starts waiting for the workers (tests/e2e/test_fastpath.py).
HOOK_ENV = "VMBLOCK_FASTPATH_HOOK"


class Publisher:
    """The shared words and LU records of one server's pool (module docstring)."""

    def __init__(self, store: PoolStore, workers: int):
        self.store = store
        self.fence = Fence(workers)
        self.words = self.fence.words
        store.space.fence = self.fence
        self.slot_of: dict[LogicalUnit, int] = {}
        self.next_slot = 0      # slots are not reused within a run (a worker may hold one)
        self.changing: dict[int, int] = {}     # slot -> wholesale changes under way
        self.ua_tsihs: dict[int, set[int]] = {}    # slot -> sessions with a UA pending there
        # the TSIH of a nexus's session, None when it has none (set by the WorkerPool)
        self.tsih_of: Callable[[Nexus], int | None] = lambda nexus: None

    def store_message(self) -> tuple[dict, tuple[int, ...]]:
        """(JSON, new descriptors) of the ``STORE`` message: the shared words, the leaf and L1
        arenas, the refcounts and the two tier files, and how global AUs map to them."""
        space = self.store.space
        info = {"au": space.au, "ncap": space.ncap, "fshift": space.fshift,
                "leaves": LEAF_RESERVE * LEAF_AUS, "l1": L1_RESERVE, "refs": space.n_aus,
                "dtypes": [np.dtype(t).str for t in (MAP_DTYPE, L1_DTYPE, REF_DTYPE)]}
        fds = self.store.shared_fds
        mine = (self.fence.fd, fds["leaves"], fds["l1"], fds["refcount"], space.fd, space.ffd)
        return info, tuple(os.dup(fd) for fd in mine)     # the channel closes what it sends

    # ---- LU records ---------------------------------------------------------------------
    def add(self, lu: LogicalUnit) -> None:
        """Publish a served LU when its store is a view of this pool's maps."""
        store = lu.store
        if not (isinstance(store, ExtentStore) and store.pool is self.store) \
                or self.next_slot >= MAX_LUS:
            return
        slot = self.next_slot
        self.next_slot += 1
        self.slot_of[lu] = slot
        self._fields(lu, slot)
        self.words[record(slot) + WATCH_LOW] = 0
        self.words[record(slot) + WATCH_HIGH] = NOTHING_WATCHED
        self.refresh([lu])

    def watch(self, lu: LogicalUnit, low: int, high: int) -> None:
        """Writes to the LU starting below byte ``low`` or ending past byte ``high`` go to the
        owner from now on (a datastore's label and metadata areas: the owner's store watches
        them). A write a worker already checked may still land in place: the caller reads
        the ranges again once more after widening them (vmblock.datastore.watch)."""
        slot = self.slot_of.get(lu)
        if slot is None:
            return
        bs = lu.block_size
        r = record(slot)
        self.words[r + WATCH_LOW] = -(-low // bs)
        self.words[r + WATCH_HIGH] = min(high // bs, NOTHING_WATCHED)

    def remove(self, lu: LogicalUnit) -> None:
        """The LU is no longer served: its commands go to the owner (which has no LU)."""
        slot = self.slot_of.pop(lu, None)
        if slot is not None:
            self.words[record(slot) + FLAGS] = UNUSED
            self.changing.pop(slot, None)
            self._sessions_ua(slot, set())

    def slots(self, luns: dict[int, LogicalUnit]) -> dict[str, int]:
        """LUN -> slot of the published LUs among ``luns`` (for ``LUNS`` and ``HANDOFF``)."""
        return {str(n): self.slot_of[lu] for n, lu in luns.items() if lu in self.slot_of}

    def _fields(self, lu: LogicalUnit, slot: int) -> None:
        off, n = self.store.live.l1_slot(lu.store.map_id)
        r = record(slot)
        self.words[r + L1_OFF] = off
        self.words[r + L1_LEN] = n
        self.words[r + BLOCKS] = lu.num_blocks
        self.words[r + BLOCK_SIZE] = lu.block_size

    def refresh(self, lus) -> None:
        """Set each LU's flag word from its state: STATE while it has PR registrations or a
        reservation or is ``gated`` (write protected, ejected, sanitizing), WRITE_THROUGH while WCE is 0; and the unit-attention bits of the
        sessions whose nexus has one pending there."""
        words = self.words
        for lu in lus:
            slot = self.slot_of.get(lu)
            if slot is None:
                continue
            res = lu.reservations
            # a write-protected, ejected or sanitizing LU: the owner refuses what it must
            flags = STATE if (res.active or res.registrations or lu.gated) else 0
            pending = {self.tsih_of(nexus) for nexus, queue in lu.ua.items() if queue}
            if None in pending:          # a nexus without a session here: every one forwards
                flags |= STATE
                pending.discard(None)
            self._sessions_ua(slot, pending)
            if not lu.write_cache:
                flags |= WRITE_THROUGH
            if self.changing.get(slot):
                flags |= CHANGING
            i = record(slot) + FLAGS
            if words[i] != flags:
                words[i] = flags

    def _sessions_ua(self, slot: int, pending: set[int]) -> None:
        """Sessions ``pending`` have a unit attention pending on LU ``slot``: set the bit of
        the slot in each one's word, clear it in the others' (unless another slot of the
        same bit has one for them)."""
        old = self.ua_tsihs.get(slot, set())
        if pending == old:
            return
        if pending:
            self.ua_tsihs[slot] = pending
        else:
            self.ua_tsihs.pop(slot, None)
        bit = slot % UA_BITS
        for tsih in old ^ pending:
            word = 0
            for s, tsihs in self.ua_tsihs.items():
                if s % UA_BITS == bit and tsih in tsihs:
                    word = 1 << bit
                    break
            cur = int(self.words[UA_BASE + tsih])
            self.words[UA_BASE + tsih] = (cur & ~(1 << bit)) | word

    # ---- wholesale changes --------------------------------------------------------------
    def _begin(self, lus) -> int:
        for lu in lus:
            slot = self.slot_of.get(lu)
            if slot is not None:
                self.changing[slot] = self.changing.get(slot, 0) + 1
        self.refresh(lus)
        hook = os.environ.get(HOOK_ENV)
        if hook:
            Path(hook, "quiescing").touch()
        return self.fence.mark()

    def _end(self, lus) -> None:
        for lu in lus:
            slot = self.slot_of.get(lu)
            if slot is None:
                continue
            if self.store.live.maps.get(lu.store.map_id) is not None:
                self._fields(lu, slot)
            left = self.changing.get(slot, 1) - 1
            if left:
                self.changing[slot] = left
            else:
                self.changing.pop(slot, None)
        self.refresh(lus)

    @asynccontextmanager
    async def changing_maps(self, lus):
        """Around a wholesale change of the LUs' maps: no worker runs a fast-path command on
        them inside (the CHANGING bit, then every worker past the epoch); their records are
        read again after."""
        lus = list(lus)
        mark = self._begin(lus)
        try:
            while not self.fence.passed(mark):
                await asyncio.sleep(POLL)
            yield
        finally:
            self._end(lus)

    def changed_now(self, lus) -> None:
        """A change already made on the event loop (a resize): republish the LUs' records
        while no worker uses them (waits synchronously; a worker's command is short)."""
        lus = list(lus)
        mark = self._begin(lus)
        try:
            while not self.fence.passed(mark):
                time.sleep(POLL)
        finally:
            self._end(lus)

    def close(self) -> None:
        """The store no longer defers frees for workers; close the shared words."""
        self.store.space.fence = None
        self.fence.close()
