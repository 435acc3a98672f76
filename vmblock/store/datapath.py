"""The data path of every live map: read, write (in place or allocating), unmap, write same,
LBA status.

``lock`` guards the in-memory state; data I/O on AUs that are mapped and owned runs outside
it, registered in ``Allocator.inflight`` *before* the lookup, so a free retired after the
lookup waits for the I/O. A write that needs new AUs (first write, copy-on-write) runs under
the lock throughout: allocation, data I/O, then the map update, so no one sees a mapping
before its data. ``ExtentStore`` inlines the one-AU cases and comes here for the rest.
"""

from __future__ import annotations

import time

import numpy as np

from vmblock.native import extent as extent_kernels
from vmblock.native.extent import LEAF_BITS, LEAF_MASK
from vmblock.store.alloc import Allocator
from vmblock.store.backend import SpaceExhausted
from vmblock.store.commit import Committer
from vmblock.store.events import StoreEvents
from vmblock.store.layout import TIER_NAMES, UNMAPPED
from vmblock.store.maps import LiveMaps
from vmblock.store.quota import Quotas
from vmblock.store.ranges import pieces, units
from vmblock.store.tier import read_full, write_full

# AUs handled under the lock in one step (scratch arrays are this long): 256 MiB.
CHUNK_AUS = 4096
ZERO_BYTES = 1 << 20
IOV_MAX = 1024
# How long an allocating write waits for held frees to become reusable before it fails.
RECLAIM_WAIT = 2.0


class DataPath:
    """Reads and writes of byte ranges of live maps; thread-safe."""

    def __init__(self, live: LiveMaps, space: Allocator, committer: Committer,
                 events: StoreEvents):
        self.live = live
        self.space = space
        self.committer = committer
        self.events = events
        self.lock = committer.lock
        self.au = au = space.au
        # space quotas per VM, checked before every allocation (vmblock.store.quota)
        self.quotas = Quotas(live, events, self.lock, au)
        self.zeros = memoryview(bytes(max(ZERO_BYTES, au)))
        self._paus = np.empty(CHUNK_AUS + 1, dtype=np.uint32)
        self._kinds = np.empty(CHUNK_AUS + 1, dtype=np.uint8)
        self._starts = np.empty(CHUNK_AUS + 1, dtype=np.int64)
        self._lens = np.empty(CHUNK_AUS + 1, dtype=np.int64)

    def _plan(self, count: int) -> list[tuple[int, int, int]]:
        """Runs of the looked-up ``self._paus``, split where a run would cross from the last
        capacity AU to the first flash AU (global numbers are contiguous there, files not)."""
        runs = extent_kernels._phys_runs(self._paus, count, self._starts, self._lens)
        ncap = self.space.ncap
        plan = []
        for r in range(runs):
            s, length = int(self._starts[r]), int(self._lens[r])
            p = int(self._paus[s])
            if p < ncap < p + length and p != UNMAPPED:
                k = ncap - p
                plan.append((s, k, p))
                plan.append((s + k, length - k, ncap))
            else:
                plan.append((s, length, p))
        return plan

    def _chunks(self, offset: int, n: int):
        """(start, end) in the caller's buffer, first AU and AU count of each chunk of the
        ``n`` bytes at ``offset`` that the lock handles in one step (at most CHUNK_AUS)."""
        if not n:
            return ()
        first, count = units(offset, n, self.au)
        if count <= CHUNK_AUS:
            return ((0, n, first, count),)
        return [(a, b, *units(offset + a, b - a, self.au))
                for a, b in pieces(offset, n, self.au, CHUNK_AUS)]

    def _runs(self, plan: list[tuple[int, int, int]], first: int, offset: int, n: int):
        """(start, end) in the caller's buffer, global AU and byte position in its tier file
        of each run of ``plan`` (the bytes [offset, offset + n) from AU ``first``)."""
        au = self.au
        base = first * au
        position = self.space.position
        for s, length, p in plan:
            a = max(offset, base + s * au) - offset
            b = min(offset + n, base + (s + length) * au) - offset
            if p == UNMAPPED:
                yield a, b, p, None, 0
            else:
                fd, pos = position(p)
                yield a, b, p, fd, pos + (a + offset - (base + s * au))

    def read(self, mid: int, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset`` of map ``mid``; unmapped ones are zeros."""
        for a, b, first, count in self._chunks(offset, len(buf)):
            self._read_chunk(mid, offset + a, buf[a:b], first, count)

    def _read_chunk(self, mid: int, offset: int, buf: memoryview, first: int,
                    count: int) -> None:
        n = len(buf)
        space = self.space
        tok = next(space.tokens)
        space.inflight.add(tok)     # before the lookup: a free retired after it waits for us
        try:
            with self.lock:
                l1 = self.live.get(mid)
                leaves = self.live.leaves
                if count == 1:
                    p = leaves.item((l1.item(first >> LEAF_BITS) << LEAF_BITS)
                                    | (first & LEAF_MASK))
                    plan = None
                else:
                    # kernels called directly: the arrays are ours, checked when made
                    extent_kernels._lookup_range(l1, leaves, first, count, self._paus)
                    plan = self._plan(count)
            if plan is None:
                if p == UNMAPPED:
                    self._zero_fill(buf, 0, n)
                else:
                    fd, pos = space.position(p)
                    read_full(fd, buf, pos + offset - first * self.au)
                return
            for a, b, p, fd, pos in self._runs(plan, first, offset, n):
                if p == UNMAPPED:
                    self._zero_fill(buf, a, b)
                else:
                    read_full(fd, buf[a:b], pos)
        finally:
            space.inflight.discard(tok)

    def _zero_fill(self, buf: memoryview, a: int, b: int) -> None:
        z = self.zeros
        while a < b:
            k = min(len(z), b - a)
            buf[a:a + k] = z[:k]
            a += k

    def write(self, mid: int, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` of map ``mid``: in place where the AUs are mapped and
        owned, else through the allocating path."""
        for a, b, first, count in self._chunks(offset, len(data)):
            self._write_chunk(mid, offset + a, data[a:b], first, count)

    def _write_chunk(self, mid: int, offset: int, data: memoryview, first: int,
                     count: int) -> None:
        n = len(data)
        committer = self.committer
        if committer.fault is not None:
            committer.check_writable(False)
        space = self.space
        tok = next(space.tokens)
        space.inflight.add(tok)     # before the lookup: a free retired after it waits for us
        try:
            with self.lock:
                l1 = self.live.get(mid)
                leaves = self.live.leaves
                if count == 1:
                    p = leaves.item((l1.item(first >> LEAF_BITS) << LEAF_BITS)
                                    | (first & LEAF_MASK))
                    fast = p != UNMAPPED and space.refcount.item(p) == 1
                    plan = None
                else:
                    need = extent_kernels._classify(l1, leaves, space.refcount, first, count,
                                                    self._paus, self._kinds)
                    fast = need == 0
                    if fast:
                        plan = self._plan(count)
            if fast:
                if plan is None:
                    fd, pos = space.position(p)
                    write_full(fd, [data], pos + offset - first * self.au)
                else:
                    for a, b, _, fd, pos in self._runs(plan, first, offset, n):
                        write_full(fd, [data[a:b]], pos)
                committer.last_write = tok
        finally:
            space.inflight.discard(tok)
        if not fast:
            self._write_alloc(mid, offset, data)

    def _write_alloc(self, mid: int, offset: int, data: memoryview) -> None:
        """Write that needs new AUs (first write or copy-on-write), under the lock throughout:
        allocation, data I/O, then map update, so no one sees a mapping before its data."""
        committer = self.committer
        committer.check_writable(True)
        deadline = None
        while True:
            with self.lock:
                if self._write_alloc_locked(mid, offset, data):
                    commit = committer.over_limit()
                    break
                space = self.space
                reclaimable = bool(space.frees or space.waiting)
                if not reclaimable or (deadline is not None and time.monotonic() > deadline):
                    t = self.live.tier(mid)
                    lo, hi = space.bounds[t]
                    self.events.tier_full(t)
                    raise SpaceExhausted(f"{TIER_NAMES[t]} tier full ({hi - lo} AUs)")
            if deadline is None:
                deadline = time.monotonic() + RECLAIM_WAIT
                committer.flush()     # frees become reusable once durable and drained
            else:
                time.sleep(0.01)
                with self.lock:
                    self.space.release()
        if commit:
            committer.flush()

    def write_atomic(self, mid: int, offset: int, data: memoryview) -> None:
        """Write ``data`` (at most ``CHUNK_AUS`` AUs) as one unit: every AU it touches, owned
        ones too, is copied on write to a new AU and all are remapped in one locked step, so
        a reader (its lookups are one locked step too) and a commit (it takes the pending map
        keys under the same lock, after the data is durable) see all of it or none of it. The
        old AUs are freed once no I/O that looked them up is in flight."""
        committer = self.committer
        committer.check_writable(True)
        with self.lock:
            if not self._write_alloc_locked(mid, offset, data, fresh=True):
                t = self.live.tier(mid)
                self.events.tier_full(t)
                raise SpaceExhausted(f"{TIER_NAMES[t]} tier full")
            commit = committer.over_limit()
        if commit:
            committer.flush()

    def _write_alloc_locked(self, mid: int, offset: int, data: memoryview,
                            fresh: bool = False) -> bool:
        au = self.au
        n = len(data)
        first, count = units(offset, n, au)
        live = self.live
        l1 = live.get(mid)
        space = self.space
        paus, kinds = self._paus, self._kinds
        need = extent_kernels._classify(l1, live.leaves, space.refcount, first, count, paus,
                                        kinds)
        if fresh:       # owned AUs too get new ones: copied on write, as if shared
            owned = kinds[:count] == extent_kernels.KIND_OWNED
            kinds[:count][owned] = extent_kernels.KIND_SHARED
            need += int(owned.sum())
        t = self.live.tier(mid)
        if need > space.t_free[t]:
            return False
        if need:
            self.quotas.admit(mid, need, first, kinds[:count])   # QuotaExceeded: no change
        new = space.alloc(t, need)
        z = self.zeros
        position = space.position
        segs: list[tuple[int, int, list]] = []   # (fd, offset, buffers), merged when adjacent
        changes = []
        j = 0
        end = offset + n
        for i in range(count):
            v = first + i
            lo, hi = v * au, (v + 1) * au
            a, b = max(offset, lo), min(end, hi)
            piece = data[a - offset:b - offset]
            kind = int(kinds[i])
            if kind == extent_kernels.KIND_OWNED:
                fd, pos = position(int(paus[i]))
                pos, bufs = pos + (a - lo), [piece]
            elif kind == extent_kernels.KIND_UNMAPPED:
                q = int(new[j])
                j += 1
                bufs = [b_ for b_ in (z[:a - lo], piece, z[:hi - b]) if len(b_)]
                fd, pos = position(q)
                changes.append((v, q, UNMAPPED))
            else:   # shared: copy the old AU, lay the new data over it
                q = int(new[j])
                j += 1
                old = bytearray(au)
                ofd, opos = position(int(paus[i]))
                read_full(ofd, memoryview(old), opos)
                old[a - lo:b - lo] = piece
                bufs = [memoryview(old)]
                fd, pos = position(q)
                changes.append((v, q, int(paus[i])))
            if segs and segs[-1][0] == fd \
                    and segs[-1][1] + sum(len(x) for x in segs[-1][2]) == pos \
                    and len(segs[-1][2]) + len(bufs) <= IOV_MAX:
                segs[-1][2].extend(bufs)
            else:
                segs.append((fd, pos, bufs))
        for fd, pos, bufs in segs:
            write_full(fd, bufs, pos)
        # the data is written (not yet durable): now the map, refcounts and pending keys
        refcount, pending = space.refcount, self.committer.pending
        for v, q, old in changes:
            live.set(mid, v, q)
            refcount[q] = 1
            if old != UNMAPPED:
                refcount[old] -= 1
                if refcount[old] == 0:   # cannot happen for a shared AU; keep it exact
                    space.hold(np.array([old], dtype=np.uint32))
            pending.add((mid, v >> LEAF_BITS))
        space.t_free[t] -= need
        space.t_used[t] += need
        self.committer.last_write = next(space.tokens)
        if need:
            self.events.check_level()
        self.events.full = False
        return True

    def unmap(self, mid: int, offset: int, length: int) -> None:
        """Deallocate whole AUs; zero the partial AUs at the ends if they are mapped."""
        au = self.au
        end = offset + length
        lo_full = -(-offset // au)
        hi_full = end // au
        if hi_full <= lo_full:   # inside one AU (or two partial ones)
            self._zero_if_mapped(mid, offset, end)
            return
        if offset < lo_full * au:
            self._zero_if_mapped(mid, offset, lo_full * au)
        if end > hi_full * au:
            self._zero_if_mapped(mid, hi_full * au, end)
        committer = self.committer
        committer.check_writable(True)
        with self.lock:
            self.live.get(mid)
            _, paus, slots = self.live.unmap_range(mid, lo_full, hi_full - lo_full)
            if not len(paus):
                return
            committer.pending.update((mid, s) for s in slots.tolist())
            self.quotas.touched(mid)
            zeroed = extent_kernels._add_refs(self.space.refcount, paus, -1)
            self.space.hold(paus[:zeroed])
            commit = committer.over_limit()
        if commit:
            committer.flush()

    def _zero_if_mapped(self, mid: int, a: int, b: int) -> None:
        au = self.au
        while a < b:
            nxt = min(b, (a // au + 1) * au)
            with self.lock:
                mapped = self.live.lookup(mid, a // au) != UNMAPPED
            if mapped:
                self.write(mid, a, self.zeros[:nxt - a])
            a = nxt

    def write_same(self, mid: int, offset: int, length: int, block: memoryview) -> None:
        """Write ``block`` over and over from ``offset`` for ``length`` bytes."""
        bs = len(block)
        reps = max(1, min(length, ZERO_BYTES) // bs)
        pattern = memoryview(bytes(block) * reps)
        end = offset + length
        while offset < end:
            k = min(len(pattern), end - offset)
            self.write(mid, offset, pattern[:k])
            offset += k

    def lba_status(self, mid: int, offset: int, size: int) -> tuple[bool, int]:
        """(mapped, bytes from ``offset`` with that state, at most up to ``size``)."""
        au = self.au
        with self.lock:
            l1 = self.live.get(mid)
            v = offset // au
            mapped, run = extent_kernels.run_length(l1, self.live.leaves, v,
                                                    self.live.n_vaus(mid))
        return mapped, min((v + run) * au, size) - offset
