"""Moving a live map between tiers while I/O goes on (``vmblock vdisk move``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from vmblock.errors import NoSpace
from vmblock.native import extent as extent_kernels
from vmblock.native.extent import LEAF_AUS, LEAF_BITS
from vmblock.store.alloc import MOVE_BIAS
from vmblock.store.commit import Committer
from vmblock.store.layout import TIER_NAMES
from vmblock.store.tier import read_full, write_full

# AUs copied per step (one commit each).
MOVE_CHUNK_AUS = 128

# Called by a move step between its copy and its remap with (map id, the step's vAUs, their
# old AUs); the old AUs cannot change then and every write to those vAUs takes the locked
# copy-on-write path. Tests install one to make a write race the step for sure.
MoveStepHook = Callable[[int, np.ndarray, np.ndarray], None]


class TierMover:
    """Relocates a live map's AUs to another tier, step by step, crash-safe at every point."""

    def __init__(self, committer: Committer):
        self.committer = committer
        self.live = committer.live
        self.space = committer.space
        self.lock = committer.lock
        self.move_lock = threading.Lock()
        # Held by each step and by the fsck: between a step's locked phases its refcounts
        # and accounting are in flux.
        self.step_lock = threading.Lock()
        self.move_step_hook: MoveStepHook | None = None

    def _outside(self, paus: np.ndarray, tier: int) -> np.ndarray:
        lo, hi = self.space.bounds[tier]
        return (paus != extent_kernels.UNMAPPED) & ((paus < lo) | (paus >= hi))

    def _starts(self, mid: int, chunk_aus: int) -> list[int]:
        """The first vAU of every step over the present leaves of live map ``mid``."""
        with self.lock:
            slots = np.flatnonzero(self.live.get(mid)).tolist()
        return [s * LEAF_AUS + k for s in slots for k in range(0, LEAF_AUS, chunk_aus)]

    def move(self, mid: int, tier: int, chunk_aus: int = MOVE_CHUNK_AUS) -> dict:
        """Relocate every AU of the live map ``mid`` that is not on ``tier`` to it, while I/O
        goes on; new allocations of the map go to ``tier`` from the start. Snapshot maps keep
        their AUs (a shared AU gets a copy for the live map; the snapshot's stays).

        Per step of ``chunk_aus`` vAUs: under the lock, reserve new AUs (held, so no one else
        allocates them) and add ``MOVE_BIAS`` to the old AUs' reference counts: from then on
        every writer sees them as shared and takes the locked copy-on-write path (which
        allocates on ``tier`` too) instead of writing in place. Wait until every I/O that was
        in flight at that moment has finished (an in-place write may have looked the AU up
        before the bias), copy old -> new outside the lock (the old AUs cannot change now),
        then under the lock remap each vAU that still points at its old AU (one that was
        rewritten or unmapped meanwhile keeps what that write gave it), drop the bias, free
        old AUs whose last reference went (held until durable, as every free) and commit:
        fdatasync of the tiers, then the remapped keys in one batch. A crash at any point
        leaves each vAU on its old or its new AU with the same data.

        Refuses up front (``NoSpace``, nothing changed) when the tier lacks the free AUs."""
        live, space = self.live, self.space
        with self.move_lock:
            t0 = time.monotonic()
            with self.lock:
                live.get(mid)
                need = int(np.count_nonzero(self._outside(live.entries(mid)[1], tier)))
                free = space.t_free[tier]
            if need > free:
                self.committer.flush()     # frees of that tier become free once durable and drained
                with self.lock:
                    space.release()
                    free = space.t_free[tier]
            if need > free:
                raise NoSpace(f"not enough free space on the {TIER_NAMES[tier]} tier: the "
                              f"move needs {need * space.au} bytes ({need} AUs), "
                              f"{free * space.au} are free; nothing was moved")
            old_policy = live.tier(mid)
            live.tiers[mid] = tier
            moved = raced = steps = 0
            try:
                chunk_aus = max(1, min(chunk_aus, LEAF_AUS))
                for _ in range(3):      # a revert during the move can bring AUs back
                    found = False
                    for start in self._starts(mid, chunk_aus):
                        m, r = self._step(mid, tier, start, chunk_aus)
                        found |= m + r > 0
                        moved += m
                        raced += r
                        steps += m > 0
                    if not found:
                        break
            except BaseException:
                if mid in live.maps:
                    live.tiers[mid] = old_policy
                else:
                    live.tiers.pop(mid, None)
                raise
            return {"tier": TIER_NAMES[tier], "moved_aus": moved,
                    "moved_bytes": moved * space.au, "raced_aus": raced, "steps": steps,
                    "seconds": round(time.monotonic() - t0, 3)}

    def _step(self, mid: int, tier: int, start: int, chunk_aus: int) -> tuple[int, int]:
        """One step of ``move``: returns (AUs remapped, AUs rewritten or unmapped meanwhile).
        Under ``step_lock``, which ``check`` takes too: between its locked phases a step's
        refcounts and accounting are in flux."""
        with self.step_lock:
            return self._step_locked(mid, tier, start, chunk_aus)

    def _drain(self, drain: set[int]) -> None:
        """Wait until none of the I/O in ``drain`` is in flight any more."""
        while not drain.isdisjoint(self.space.inflight):
            time.sleep(0.0002)

    def _step_locked(self, mid: int, tier: int, start: int,
                     chunk_aus: int) -> tuple[int, int]:
        live, space = self.live, self.space
        with self.lock:
            live.get(mid)
            count = min(chunk_aus, live.n_vaus(mid) - start)
            if count <= 0:
                return 0, 0
            seg = live.lookup_many(mid, np.arange(start, start + count))
            idx = np.flatnonzero(self._outside(seg, tier))
            if not len(idx):
                return 0, 0
            if len(idx) > space.t_free[tier]:
                raise NoSpace(f"the {TIER_NAMES[tier]} tier filled up during the move "
                              f"(other writes); the vdisk is partly moved, consistent: free "
                              f"space and run the move again")
            vs = idx + start
            olds = seg[idx].copy()
            news = space.alloc(tier, len(idx))
            space.held[news] = 1            # reserved: allocated to no one else
            space.t_free[tier] -= len(news)
            extent_kernels._add_refs(space.refcount, olds, MOVE_BIAS)
            space.biased = olds
            drain = space.inflight.copy()
        ok = False
        try:
            self._drain(drain)     # in-place writers that saw no bias
            buf = memoryview(bytearray(space.au))
            for o, q in zip(olds.tolist(), news.tolist()):
                ofd, opos = space.position(o)
                read_full(ofd, buf, opos)
                fd, pos = space.position(q)
                write_full(fd, [buf], pos)
            if self.move_step_hook is not None:
                self.move_step_hook(mid, vs, olds)
            ok = True
        finally:
            # Remap with the bias still on: the 4 KiB path reads the map and then the
            # refcount without the lock, so a writer that read a vAU's old AU just before the
            # remap must still find it "shared" when it checks (and go round the lock).
            with self.lock:
                keep = np.zeros(len(vs), dtype=bool)
                if ok and mid in live.maps:
                    keep = live.lookup_many(mid, vs) == olds
                kv, kn, ko = vs[keep], news[keep], olds[keep].copy()
                space.held[news] = 0
                if len(kv):
                    space.refcount[kn] = 1
                    live.set_many(mid, kv, kn.astype(np.uint32))
                    space.t_used[tier] += len(kv)
                    self.committer.pending.update(
                        (mid, s) for s in np.unique(kv >> LEAF_BITS).tolist())
                    extent_kernels._add_refs(space.refcount, ko, -1)  # biased: none reaches 0
                    self.committer.last_write = next(space.tokens)
                space.t_free[tier] += int(np.count_nonzero(~keep))
                drain = space.inflight.copy()
            # ... and only once every I/O that may have read the old mapping has finished,
            # the bias goes (an old AU still shared with a snapshot must never look owned to a
            # writer that looked it up before the remap)
            self._drain(drain)
            with self.lock:
                unbias = olds.copy()
                z = extent_kernels._add_refs(space.refcount, unbias, -MOVE_BIAS)
                space.hold(unbias[:z])      # last reference gone: remapped, rewritten, unmapped
                space.biased = None
        self.committer.flush()
        return int(len(kv)), int(np.count_nonzero(~keep))
