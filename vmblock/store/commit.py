"""Commit order: data durable before the map keys that point at it; faults; transactions.

* A write to an unmapped AU allocates a new AU, writes the *whole* AU (data plus zeros around
  it), updates the in-memory map at once (reads see it) and marks the map's leaf (the unit of
  the meta DB's map keys, ``vmblock.store.layout``) dirty in ``pending``.
* ``flush`` (SYNCHRONIZE CACHE, FUA, the periodic commit, any metadata change) takes the dirty
  leaves and, under the store lock, copies them from memory -- where a mapping appears only
  once its data write has completed -- then ``fdatasync``s the tiers and only then writes
  them in one synced WriteBatch: a mapping never becomes durable before its data. A write
  that completes after the copy dirties its leaf again for the next commit. After a crash an
  AU whose mapping was not committed is simply free again; it is rewritten whole before it
  is ever mapped again.
* An overwrite of a mapped AU referenced once goes in place; an AU shared with a snapshot or
  clone (refcount > 1) is copied to a new AU first (copy-on-write), the old one keeps its data.
* Freed AUs are held until the batch that frees them is durable (see ``vmblock.store.alloc``).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from contextlib import contextmanager

import numpy as np
from rocksdict import WriteBatch

from vmblock.errors import io_failure
from vmblock.native import extent as extent_kernels
from vmblock.store.alloc import Allocator
from vmblock.store.backend import WriteRefused
from vmblock.store.events import StoreEvents
from vmblock.native.extent import LEAF_AUS
from vmblock.store.layout import KEY_TXN, UNMAPPED, leaf_key, leaf_prefix, n_vaus, put_event
from vmblock.store.maps import LiveMaps

log = logging.getLogger(__name__)

# Dirty leaves after which a writer commits by itself (bounds the copy a commit makes under
# the lock, 1 KiB a leaf, and replay loss).
PENDING_LIMIT = 4096


class StoreFault:
    """Where a commit failed (``meta`` or a tier name), the latest error, and since when."""

    __slots__ = ("where", "error", "since")

    def __init__(self, where: str, error: OSError):
        self.where = where
        self.error = error
        self.since = time.time()


class Committer:
    """The not-yet-durable part of the metadata and the order that makes it durable.

    ``pending`` holds the leaves changed in memory, as (map id, L1 entry), under the store
    lock; ``flush_lock`` orders commits and metadata changes.
    """

    def __init__(self, db, space: Allocator, live: LiveMaps, events: StoreEvents,
                 lock: threading.Lock):
        self.db = db
        self.space = space
        self.live = live
        self.events = events
        self.lock = lock
        self.flush_lock = threading.Lock()
        self.pending: set[tuple[int, int]] = set()
        # other keys the next commit writes with the leaves (EXTENDED COPY's sharing records)
        self.pending_puts: dict[bytes, bytes] = {}
        # the commit that failed and is not recovered from yet (see StoreFault)
        self.fault: StoreFault | None = None
        # (marker, MapTxn, events) of a transaction whose synced write failed
        self.in_doubt: tuple[bytes, MapTxn, list[dict]] | None = None
        # Written-but-maybe-not-synced: a completed write stores its token here; a commit
        # fdatasyncs when it differs from the token its last sync saw.
        self.last_write = 0
        self.synced = 0
        self.commits = 0
        # called after each metadata transaction (flush lock held, store lock not): the
        # quotas' owner re-reads which maps each quota covers
        self.txn_hooks: list = []

    def over_limit(self) -> bool:
        """Enough leaves are dirty that the writer should commit by itself (under lock)."""
        return len(self.pending) > PENDING_LIMIT

    def flush(self) -> None:
        """Make every completed write durable: data (fdatasync) first, then the map keys."""
        with self.flush_lock:
            self.commit()

    def commit(self) -> None:
        """One commit; the caller holds ``flush_lock``."""
        space, live = self.space, self.live
        with self.lock:
            pending, self.pending = self.pending, set()
            puts, self.pending_puts = self.pending_puts, {}
            # the leaves as they are now: every mapping in them has its data written
            keys, rows = live.rows_at(sorted(pending))
            frees = space.take_frees()
            events = self.events.take()
            # one load: a later write changes it again; with worker processes, their in-place
            # writes too (the fence counts them)
            written = (self.last_write if space.fence is None
                       else (self.last_write, space.fence.written()))
            # a pending flash mapping is counted in t_used[1]; without flash AUs in use the
            # flash file holds only cache slots, which need no durability
            flash = space.t_used[1] > 0
            if space.waiting:
                space.release()
            live.reclaim()
        where = "meta"
        try:
            if written != self.synced or pending or self.fault is not None:
                where = "capacity"
                os.fdatasync(space.capacity.fd)
                if flash:
                    where = "flash"
                    os.fdatasync(space.flash.fd)
                self.synced = written
            where = "meta"
            if keys or events or puts:
                batch = WriteBatch(raw_mode=True)
                for k, v in puts.items():
                    batch.put(k, v)
                if keys:
                    values = live.values(rows)
                    empty = (rows == UNMAPPED).all(axis=1).tolist()
                    for (mid, slot), val, gone in zip(keys, values, empty):
                        if gone:
                            batch.delete(leaf_key(mid, slot))
                        else:
                            batch.put(leaf_key(mid, slot), val.tobytes())
                for ev in events:
                    put_event(batch, ev)
                self.db.write(batch)
        except BaseException as e:
            with self.lock:     # keep everything for the next attempt
                self.pending |= pending
                self.pending_puts.update(puts)
                space.put_back_frees(frees)
                self.events.put_back(events)
                if isinstance(e, OSError):
                    self.fault_seen(where, e)
            if where == "meta" and not pending and isinstance(e, OSError):
                return      # only events waited: every completed write is durable anyway
            raise
        self.commits += 1
        if events:
            self.events.committed(events)
        if self.in_doubt is not None:
            self.resolve_txn()
        if self.fault is not None:
            self.fault_cleared()
        if frees:
            space.retire(np.concatenate(frees))

    # --- faults: a commit that failed ---------------------------------------------------------

    def fault_seen(self, where: str, err: OSError) -> None:
        """A commit failed on ``where`` (the meta DB or a tier): refuse the writes that could
        not be made durable until a commit succeeds again (under the lock)."""
        if self.fault is not None:
            self.fault.error = err
            return
        self.fault = StoreFault(where, err)
        kind = "meta_fault" if where == "meta" else "tier_fault"
        self.events.record(kind, where=where,
                           errno=errno.errorcode.get(err.errno, str(err.errno)),
                           error=str(err.strerror or err))
        log.error("%s commit failed, refusing writes that need it until it works again: %s",
                  where, err.strerror or err)

    def fault_cleared(self) -> None:
        """A commit succeeded after a fault: writes resume."""
        with self.lock:
            fault, self.fault = self.fault, None
            if fault is None:
                return
            kind = "meta_recovered" if fault.where == "meta" else "tier_recovered"
            self.events.record(kind, where=fault.where,
                               fault_s=round(time.time() - fault.since, 3))
        log.warning("%s works again after %.1f s: commits and writes resume", fault.where,
                    time.time() - fault.since)

    def check_writable(self, allocating: bool) -> None:
        """Raise the fault's error for a write that cannot be made durable now: every write
        while a tier cannot sync; with a meta DB fault, only writes that change maps."""
        fault = self.fault
        if fault is not None and (allocating or fault.where != "meta"):
            raise WriteRefused(fault.error.errno, f"{fault.where}: {fault.error.strerror} "
                               f"(since {time.time() - fault.since:.0f} s; retried every "
                               f"commit)")

    # --- metadata transactions ----------------------------------------------------------------

    @contextmanager
    def transaction(self, batch: WriteBatch):
        """A metadata change as one synced batch, after every pending write is durable.

        The caller adds its records to ``batch`` and map operations through the yielded
        ``MapTxn``; on a clean exit the batch is written and the in-memory state follows.
        """
        with self.flush_lock:
            try:
                self.commit()
            except OSError as e:
                raise io_failure(e) from None
            txn = MapTxn(self, batch)
            try:
                yield txn
            except BaseException:
                txn.undo()
                raise
            with self.lock:
                events = self.events.take()
            for ev in events:
                put_event(batch, ev)
            marker = os.urandom(16)
            batch.put(KEY_TXN, marker)
            try:
                self.db.write(batch)
            except OSError as e:
                with self.lock:
                    self.events.put_back(events)
                    self.fault_seen("meta", e)
                    # A write whose WAL record landed but whose sync failed comes back
                    # when RocksDB reopens: the first good commit looks (resolve_txn).
                    self.in_doubt = (marker, txn, events)
                raise io_failure(e) from None
            txn.apply()
            txn.drain()
            if events:
                self.events.committed(events)
            for hook in list(self.txn_hooks):
                try:
                    hook()
                except Exception:   # the change is durable; a hook must not undo its answer
                    log.exception("after a metadata transaction: %s failed", hook)

    def resolve_txn(self) -> None:
        """After a good commit: apply the in-memory side of a failed transaction if its batch
        came back with the reopened meta DB (its marker is there), else undo what it did
        ahead (the references its copies took)."""
        marker, txn, events = self.in_doubt
        self.in_doubt = None
        if self.db.get(KEY_TXN) != marker:
            txn.undo()
            return
        log.warning("a metadata change reported as failed was committed after all "
                    "(its WAL record survived the failed sync); applying it")
        with self.lock:
            self.events.queue = [ev for ev in self.events.queue
                                 if not any(ev is e for e in events)]
        txn.apply()


class MapTxn:
    """Map operations of one metadata transaction. Copies take their references at once, under
    the store lock, in the same step as they read the source map (a write after that sees the
    AUs shared and copies them, so the copy stays frozen); the rest is applied in memory after
    the batch is durable (so a failed write leaves memory as it was, and ``undo`` gives the
    copies' references back).

    The store lock is held only for the in-memory steps (reading leaves, the reference-count
    kernel, installing or dropping a live map); building the leaf values and the synced
    RocksDB write run without it, so the data path of every vdisk goes on meanwhile."""

    def __init__(self, committer: Committer, batch: WriteBatch):
        self.committer = committer
        self.live = committer.live
        self.au = committer.space.au
        self.batch = batch
        self.bumped: list[np.ndarray] = []      # AUs whose count a copy raised already
        self.ref_sub: list[np.ndarray] = []     # AUs of dropped frozen maps
        self.new_live: dict[int, tuple[int, np.ndarray | None, np.ndarray | None]] = {}
        self.drop_live: set[int] = set()
        self.dropped: set[int] = set()
        self.resized: dict[int, int] = {}
        self.new_tiers: dict[int, int] = {}
        self.inflight: set[int] = set()         # I/O in flight when a live map was copied

    def set_tier(self, mid: int, tier: int) -> None:
        """The tier new allocations of live map ``mid`` go to."""
        self.new_tiers[mid] = tier

    def copy_map(self, src: int, dst: int, dst_size: int | None = None) -> int:
        """Copy map ``src`` to the new map ``dst`` leaf by leaf; with ``dst_size`` it becomes a
        live vdisk map of that size. Returns the bytes mapped in the copy."""
        return self.copy_maps([(src, dst, dst_size)])[0]

    def copy_maps(self, copies: list[tuple[int, int, int | None]]) -> list[int]:
        """``copy_map`` of every (src, dst, dst_size), the live sources all read in one
        locked step: a VM snapshot is one point in time across its vdisks."""
        live, committer = self.live, self.committer
        frozen = {src: live.frozen_rows(src) for src, _, _ in copies if src not in live.maps}
        taken = []
        with committer.lock:
            for src, _, dst_size in copies:
                if src in frozen:
                    slots, rows = frozen[src]
                else:
                    live.get(src)
                    slots, rows = live.leaf_rows(src)
                    self.inflight |= committer.space.inflight
                if dst_size is not None:
                    nv = n_vaus(dst_size, self.au)
                    keep = slots < -(-nv // LEAF_AUS)
                    slots, rows = slots[keep], rows[keep]
                    if nv % LEAF_AUS and len(slots) and slots[-1] == nv // LEAF_AUS:
                        rows = rows.copy()
                        rows[-1, nv % LEAF_AUS:] = UNMAPPED
                flat = np.ascontiguousarray(rows).reshape(-1)
                extent_kernels.add_refs(committer.space.refcount, flat, 1)
                self.bumped.append(flat)
                taken.append((slots, rows, flat))
        done = []
        put = self.batch.put
        for (_, dst, dst_size), (slots, rows, flat) in zip(copies, taken):
            for s, val in zip(slots.tolist(), live.values(rows)):
                put(leaf_key(dst, s), val.tobytes())
            if dst_size is not None:
                self.new_live[dst] = (dst_size, slots, rows)
            done.append(int(np.count_nonzero(flat != UNMAPPED)) * self.au)
        return done

    def drop_map(self, mid: int) -> None:
        """Delete map ``mid`` (live or frozen); its AUs lose a reference each."""
        if mid in self.dropped:
            return
        self.dropped.add(mid)
        self.batch.delete_range(leaf_prefix(mid), leaf_prefix(mid + 1))
        if mid in self.live.maps:
            self.drop_live.add(mid)
        else:
            _, rows = self.live.frozen_rows(mid)
            self.ref_sub.append(rows[rows != UNMAPPED])

    def new_empty(self, mid: int, size: int) -> None:
        """A new live map with nothing mapped."""
        self.new_live[mid] = (size, None, None)

    def resize(self, mid: int, size: int) -> None:
        """Grow a live map (shrinking is refused by the caller)."""
        self.resized[mid] = size

    def apply(self) -> None:
        """The in-memory side, once the batch is durable: maps, refcounts, held frees."""
        committer, live, space = self.committer, self.live, self.committer.space
        zeroed_all = []
        with committer.lock:
            subs = list(self.ref_sub)
            for mid in self.drop_live:
                if mid in live.maps:
                    subs.append(live.drop(mid))
                if mid not in self.new_live:
                    live.tiers.pop(mid, None)
                committer.pending.difference_update(
                    [k for k in committer.pending if k[0] == mid])
            for paus in subs:
                p = paus.astype(np.uint32)
                z = extent_kernels.add_refs(space.refcount, p, -1)
                if z:
                    zeroed_all.append(p[:z].copy())
            for mid, (size, slots, rows) in self.new_live.items():
                live.create(mid, size, slots, rows)
            for mid, size in self.resized.items():
                if mid in live.maps:
                    live.resize(mid, size)
            live.tiers.update(self.new_tiers)
            if zeroed_all:
                z = np.concatenate(zeroed_all)
                space.held[z] = 1
                c, f = space.split_tiers(z)
                space.t_used[0] -= c
                space.t_used[1] -= f
            committer.events.lower_level()
        self.bumped = []
        if zeroed_all:
            space.retire(np.concatenate(zeroed_all))

    def undo(self) -> None:
        """The transaction did not happen: give back the references its copies took (an AU
        whose last reference that was is held until the next commit, like every free)."""
        if not self.bumped:
            return
        space = self.committer.space
        with self.committer.lock:
            zeroed = []
            for flat in self.bumped:
                p = flat.copy()
                z = extent_kernels.add_refs(space.refcount, p, -1)
                if z:
                    zeroed.append(p[:z].copy())
            self.bumped = []
            if zeroed:
                space.hold(np.concatenate(zeroed))

    def drain(self) -> None:
        """Wait until the I/O that was in flight when a live map was copied has finished:
        an in-place write that looked its AU up before the copy lands before we return."""
        inflight = self.committer.space.inflight
        while not self.inflight.isdisjoint(inflight):
            time.sleep(0.0002)
