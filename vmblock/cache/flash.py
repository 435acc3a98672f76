"""The flash cache in the data path: write-through, the capacity tier stays authoritative.

``FlashCache`` owns the directory (``CacheDirectory``), its lock and the cache region of the
pool's flash tier file (slot ``s`` lives at ``base + s * block_size``). ``CachedStore`` wraps one
vdisk's ``ExtentStore`` and is what its LUN sees.

Cache key: ``(cache vdisk id, virtual block)``: the block number in the vdisk's address space,
not the physical capacity AU (docs/cache.md, "Integration" explains the choice). Every change
to a vdisk's contents passes through ``CachedStore`` (write, UNMAP, WRITE SAME) or is a whole-
vdisk change (revert, resize, delete) that calls ``FlashCache.invalidate_vdisk``.

Per block the data path does (one directory call per command: ``access_one`` or ``access_range``)::

    read:   lock: access(blocks) -> hit & valid: pread flash (under the lock)
                                    slot admitted (or hit but not valid): claim it (epoch += 1)
            unlock; read capacity for every block not served from flash
            lock: for each claimed slot still at our epoch: pwrite flash, valid = 1
    write:  lock: access(blocks, write) -> every slot found/admitted: epoch += 1, valid = 0
            unlock; write capacity (authoritative, first); read the rest of partially written
            newly admitted blocks from capacity
            lock: slot still at our epoch: pwrite flash (whole block, or the piece if the copy
            was valid before), valid = 1; otherwise whoever holds the block now is made invalid
    unmap / write same: capacity first, then remove the blocks from the directory

Why this is safe with reads and writes of one block in flight in several threads (large I/O
runs in the executor): every flash read and write happens under the lock, so a slot's content
and its directory entry change together; a fill or write validates a slot only if no other
operation claimed the slot since it did (the epoch), and a writer whose epoch was overtaken
invalidates the block, because its capacity write may have landed after the other one's.
Partial blocks: a miss fills the *whole* cache block from capacity (one extra read of up to
block_size - request), so a valid slot is valid throughout (docs/cache.md measures this against
a per-sector valid mask).

Restart: the directory lives in RAM only, ``valid`` starts all zero, so a restarted server's
cache is cold and can never return what the flash file held before.
"""

from __future__ import annotations

import logging
import os
import threading
from array import array

import numpy as np

from vmblock.errors import CacheError
from vmblock.store.backend import (AtomicWritable, BackingStore, NowaitReadable,
                                   Remappable)
from vmblock.store.ranges import pieces, units

from .directory import CacheDirectory
from .groups import MAX_GROUPS, GroupSpec
from .split import CacheSplit

MAX_VDISKS = 4096        # vdisk ids of the directory (recycled when a vdisk goes)
BATCH = 256              # cache blocks per directory call (a command is split beyond that)
PRELOAD_BATCH = 64       # cache blocks per directory call of a preload
_UNUSED = ".free-{}"

log = logging.getLogger(__name__)


def unused_group(i: int) -> GroupSpec:
    """The placeholder for directory group ``i`` while no eviction group uses it."""
    return GroupSpec(_UNUSED.format(i), priority=-(1 << 30), min=0.0, max=0.0, promote="never")


def _pread_all(fd: int, buf: memoryview, pos: int) -> None:
    done, n = 0, len(buf)
    while done < n:
        got = os.preadv(fd, [buf[done:]], pos + done)
        if got <= 0:
            buf[done:] = bytes(n - done)
            return
        done += got


def _pwrite_all(fd: int, data: memoryview, pos: int) -> None:
    done, n = 0, len(data)
    while done < n:
        done += os.pwrite(fd, data[done:], pos + done)


class FlashCache:
    """The pool's flash cache: directory + lock + slot region of the flash tier."""

    def __init__(self, flash_fd: int, base: int, nslots: int, block_size: int,
                 groups: list[GroupSpec] | None = None, max_vdisks: int = MAX_VDISKS,
                 params: str | None = None):
        specs = list(groups or [GroupSpec("default", promote="read")])
        if len(specs) > MAX_GROUPS:
            raise CacheError(f"at most {MAX_GROUPS} eviction groups")
        self.dir = CacheDirectory(nslots, groups=specs + [unused_group(i) for i in
                                                          range(len(specs), MAX_GROUPS)],
                                  nvdisks=max_vdisks, params=params, block_size=block_size)
        self.fd = flash_fd
        self.base = base
        self.nslots = nslots
        self.bs = block_size
        self.lock = threading.Lock()
        self.valid = bytearray(nslots)
        self.epoch = array("q", bytes(8 * nslots))
        self.admit_seq = 0              # bumped whenever a batch admitted a block
        self.free_ids = list(range(max_vdisks - 1, -1, -1))
        self.ids: dict[str, int] = {}          # vdisk uuid -> cache vdisk id
        self.names: dict[int, tuple[str, str | None]] = {}   # id -> (vdisk name, VM name)
        self.preloaded = np.zeros(max_vdisks, np.int64)
        self.invalid_hits = 0
        self.flash_errors = 0       # flash reads/writes that failed (the I/O went to capacity)
        self._local = threading.local()

    # --- vdisks ---------------------------------------------------------------------------------

    def attach(self, uuid: str, name: str, vm: str | None) -> int:
        """The cache vdisk id of a vdisk (a new one, with clean counters, on first sight)."""
        with self.lock:
            vid = self.ids.get(uuid)
            if vid is None:
                if not self.free_ids:
                    raise CacheError(f"the cache serves at most {len(self.names)} vdisks")
                vid = self.free_ids.pop()
                self.dir.reset_vdisk(vid)
                self.preloaded[vid] = 0
                self.ids[uuid] = vid
            self.names[vid] = (name, vm)
            return vid

    def _ids_of(self, uuid: str) -> list[str]:
        """The keys of a vdisk: its own and those of its sub-vdisks (``<uuid>/<vg>/<lv>``,
        vmblock.cache.split)."""
        sub = uuid + "/"
        return [k for k in self.ids if k == uuid or k.startswith(sub)]

    def detach(self, uuid: str) -> None:
        """The vdisk (or one sub-vdisk key) is gone: drop its blocks and counters (its
        sub-vdisks' too), recycle the ids."""
        with self.lock:
            for key in self._ids_of(uuid):
                vid = self.ids.pop(key)
                self.dir.reset_vdisk(vid)
                self.names.pop(vid, None)
                self.free_ids.append(vid)

    def invalidate_vdisk(self, uuid: str) -> int:
        """The vdisk's contents changed as a whole (revert, resize): drop its cached blocks,
        its sub-vdisks' too."""
        with self.lock:
            return sum(self.dir.remove_vdisk(self.ids[k]) for k in self._ids_of(uuid))

    def set_groups(self, specs: list[GroupSpec], members: dict[str, tuple[str, bool]]) -> int:
        """Live: the pool's groups (in slot order; None = unused) and each attached vdisk's
        (group name, pinned). Returns blocks evicted to honour lowered maximums."""
        full = [s if s is not None else unused_group(i) for i, s in enumerate(specs)]
        full += [unused_group(i) for i in range(len(full), MAX_GROUPS)]
        with self.lock:
            d = self.dir
            evicted = d.set_groups(full)
            for uuid, (group, pinned) in members.items():
                vid = self.ids.get(uuid)
                if vid is None:
                    continue
                d.move_vdisk(vid, group)
                d.pin_vdisk(vid, pinned)
            return evicted + d.shrink()

    # --- the slots under the lock ---------------------------------------------------------------

    def _claim(self, vid: int, s: int, hit: bool, valid_hit: bool, nbytes: int,
               write: bool) -> int:
        """Take slot ``s`` for a fill or a write (under the lock): a hit on a slot whose data
        is not (yet) valid counts as a miss, an admission bumps ``admit_seq``; the slot stays
        invalid until the data of the epoch returned is in."""
        if not hit:
            self.admit_seq += 1
        elif not valid_hit:
            self.dir.recount_hit_as_miss(vid, s, nbytes, write)
            self.invalid_hits += 1
        self.epoch[s] += 1
        self.valid[s] = 0
        return self.epoch[s]

    def _put_slot(self, s: int, data: memoryview, pos: int) -> bool:
        """Write ``data`` into slot ``s`` at flash offset ``pos`` and mark it valid (under
        the lock). A flash write that fails leaves the slot invalid: the command has its
        data from the capacity tier already, so the cache is skipped, never the I/O."""
        try:
            _pwrite_all(self.fd, data, pos)
        except OSError as e:
            self._flash_failed(e)
            return False
        self.valid[s] = 1
        return True

    def _get_slot(self, s: int, buf: memoryview, pos: int) -> bool:
        """Read a valid slot (under the lock); on a flash read error the slot is dropped
        and the caller reads the capacity tier instead."""
        try:
            _pread_all(self.fd, buf, pos)
        except OSError as e:
            self._flash_failed(e)
            self.valid[s] = 0
            self.epoch[s] += 1
            return False
        return True

    def _flash_failed(self, e: OSError) -> None:
        if not self.flash_errors:
            log.error("flash cache I/O failed, serving from the capacity tier: %s", e)
        self.flash_errors += 1

    def _scratch(self, i: int) -> memoryview:
        """A block-sized buffer of this thread (two: the first and last block of a command)."""
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            bufs = self._local.bufs = (memoryview(bytearray(self.bs)),
                                       memoryview(bytearray(self.bs)))
        return bufs[i]

    # --- data path ------------------------------------------------------------------------------

    def read(self, vid: int, inner, size: int, offset: int, buf: memoryview) -> None:
        """Read ``buf`` at ``offset`` of vdisk ``vid``: valid cached blocks from flash, the rest
        with ``inner(offset, buf)`` from capacity, filling admitted blocks on the way."""
        n = len(buf)
        if not n:
            return
        bs = self.bs
        first, count = units(offset, n, bs)
        if count > BATCH:
            for start, end in pieces(offset, n, bs, BATCH):
                self.read(vid, inner, size, offset + start, buf[start:end])
            return
        base, valid, epoch = self.base, self.valid, self.epoch
        if count == 1:      # the common case, without the general path's lists
            with self.lock:
                code = self.dir.access_one(first, vid, False, n)
                hit = code >= 0
                s = code if hit else -2 - code
                if hit and valid[s] and self._get_slot(s, buf, base + s * bs + offset
                                                       - first * bs):
                    return
                if s >= 0:
                    e = self._claim(vid, s, hit, False, n, False)
            if s < 0:
                inner(offset, buf)
                return
            start = first * bs
            end = min(start + bs, size)
            if offset == start and n == end - start:
                data = buf
                inner(offset, buf)
            else:       # fill the whole block: one capacity read, the piece copied out
                data = self._scratch(0)[:end - start]
                inner(start, data)
                buf[:] = data[offset - start:offset - start + n]
            with self.lock:
                if epoch[s] == e:
                    self._put_slot(s, data, base + s * bs)
            return
        claims = None
        cap = None
        with self.lock:
            codes = self.dir.access_range(vid, offset, n, False)
            for i in range(count):
                hit = codes[i] >= 0
                s = codes[i] if hit else -2 - codes[i]
                lo = max(offset, (first + i) * bs)
                hi = min(offset + n, (first + i + 1) * bs)
                if hit and valid[s] and self._get_slot(s, buf[lo - offset:hi - offset],
                                                       base + s * bs + lo % bs):
                    continue
                if cap is None:
                    cap = []
                if cap and cap[-1][1] == lo:
                    cap[-1][1] = hi
                else:
                    cap.append([lo, hi])
                if s >= 0:
                    if claims is None:
                        claims = []
                    claims.append((s, self._claim(vid, s, hit, False, hi - lo, False), first + i,
                                   lo, hi))
        if cap is None:
            return
        for lo, hi in cap:
            inner(lo, buf[lo - offset:hi - offset])
        if claims is None:
            return
        fills = []
        for j, (s, e, blk, lo, hi) in enumerate(claims):
            start = blk * bs
            end = min(start + bs, size)
            if lo == start and hi == end:
                fills.append((s, e, buf[lo - offset:hi - offset]))
            else:
                scratch = self._scratch(0 if j == 0 else 1)[:end - start]
                inner(start, scratch)
                fills.append((s, e, scratch))
        with self.lock:
            for s, e, data in fills:
                if epoch[s] == e:
                    self._put_slot(s, data, base + s * bs)

    def write(self, vid: int, inner_write, inner_read, size: int, offset: int,
              data: memoryview) -> None:
        """Write ``data`` at ``offset`` of vdisk ``vid`` with ``inner_write`` to capacity
        first, then into the cached (or admitted) blocks, which ``inner_read`` completes."""
        n = len(data)
        if not n:
            return
        bs = self.bs
        first, count = units(offset, n, bs)
        if count > BATCH:
            for start, end in pieces(offset, n, bs, BATCH):
                self.write(vid, inner_write, inner_read, size, offset + start, data[start:end])
            return
        valid, epoch = self.valid, self.epoch
        if count == 1:      # the common case, same steps as below without the lists
            with self.lock:
                code = self.dir.access_one(first, vid, True, n)
                if code != -1:
                    hit = code >= 0
                    s = code if hit else -2 - code
                    was_valid = hit and valid[s]
                    e = self._claim(vid, s, hit, was_valid, n, True)
                seq = self.admit_seq
            inner_write(offset, data)
            if code == -1:
                if self.admit_seq != seq:     # someone admitted meanwhile: maybe this block
                    with self.lock:
                        self._invalidate_locked(vid, first, first + 1)
                return
            start = first * bs
            end = min(start + bs, size)
            at = 0
            if offset == start and n == end - start:
                piece = data
            elif was_valid:
                piece, at = data, offset - start
            else:
                piece = self._scratch(0)[:end - start]
                inner_read(start, piece)
            with self.lock:
                if epoch[s] == e:
                    self._put_slot(s, piece, self.base + s * bs + at)
                else:
                    self._invalidate_locked(vid, first, first + 1)
            return
        regs = []
        with self.lock:
            codes = self.dir.access_range(vid, offset, n, True)
            for i in range(count):
                hit = codes[i] >= 0
                s = codes[i] if hit else -2 - codes[i]
                if s < 0:
                    continue
                lo = max(offset, (first + i) * bs)
                hi = min(offset + n, (first + i + 1) * bs)
                was_valid = bool(hit and valid[s])
                regs.append((s, self._claim(vid, s, hit, was_valid, hi - lo, True), first + i,
                             lo, hi, was_valid))
            seq = self.admit_seq
        inner_write(offset, data)          # the capacity tier first: it is authoritative
        if not regs and self.admit_seq == seq:
            return
        updates = []
        for j, (s, e, blk, lo, hi, was_valid) in enumerate(regs):
            start = blk * bs
            end = min(start + bs, size)
            if lo == start and hi == end:
                updates.append((s, e, blk, data[lo - offset:hi - offset], 0))
            elif was_valid:
                updates.append((s, e, blk, data[lo - offset:hi - offset], lo - start))
            else:   # newly admitted, written in part: the rest of the block from capacity
                scratch = self._scratch(0 if j == 0 else 1)[:end - start]
                inner_read(start, scratch)
                updates.append((s, e, blk, scratch, 0))
        base = self.base
        with self.lock:
            done = set()
            for s, e, blk, piece, at in updates:
                done.add(blk)
                if epoch[s] == e:
                    self._put_slot(s, piece, base + s * bs + at)
                else:
                    self._invalidate_locked(vid, blk, blk + 1)
            if self.admit_seq != seq and len(done) < count:
                for blk in range(first, first + count):
                    if blk not in done:
                        self._invalidate_locked(vid, blk, blk + 1)

    def _invalidate_locked(self, vid: int, lo_blk: int, hi_blk: int) -> int:
        """Whoever caches blocks lo..hi-1 of ``vid`` now: not valid any more, and removed."""
        removed = 0
        for a in range(lo_blk, hi_blk, BATCH):
            b = min(hi_blk, a + BATCH)
            keys = np.arange(a, b, dtype=np.int64)
            vds = np.full(b - a, vid, np.int32)
            found = self.dir.find(keys, vds)
            for s in found[found >= 0].tolist():
                self.valid[s] = 0
                self.epoch[s] += 1
            removed += self.dir.remove(keys, vds)
        return removed

    def invalidate(self, vid: int, offset: int, length: int) -> int:
        """Blocks overlapping [offset, offset + length) changed in capacity (UNMAP, WRITE SAME)."""
        if length <= 0:
            return 0
        first, count = units(offset, length, self.bs)
        with self.lock:
            return self._invalidate_locked(vid, first, first + count)

    # --- preload --------------------------------------------------------------------------------

    def preload(self, vid: int, inner, size: int, blocks: np.ndarray) -> int:
        """Read ``blocks`` of a vdisk from capacity into the cache whatever its group's promotion
        policy; not counted as I/O (only as promotions). Returns blocks now cached."""
        bs = self.bs
        buf = memoryview(bytearray(bs * PRELOAD_BATCH))
        slots = np.empty(PRELOAD_BATCH, np.int32)
        loaded = 0
        for a in range(0, len(blocks), PRELOAD_BATCH):
            chunk = blocks[a:a + PRELOAD_BATCH]
            claims = []
            with self.lock:
                chunk_slots = slots[:len(chunk)]
                hits = self.dir.preload(chunk, vid, chunk_slots)
                for blk, h, s in zip(chunk.tolist(), hits.tolist(), chunk_slots.tolist()):
                    if s < 0:
                        continue
                    if h and self.valid[s]:
                        loaded += 1
                        continue
                    self.admit_seq += 1
                    self.epoch[s] += 1
                    self.valid[s] = 0
                    claims.append((s, self.epoch[s], blk))
            fills = []
            for j, (s, e, blk) in enumerate(claims):
                start = blk * bs
                end = min(start + bs, size)
                piece = buf[j * bs:j * bs + end - start]
                inner(start, piece)
                fills.append((s, e, piece))
            with self.lock:
                for s, e, piece in fills:
                    if self.epoch[s] == e and self._put_slot(s, piece, self.base + s * bs):
                        loaded += 1
                        self.preloaded[vid] += 1
        return loaded

    # --- accounting -----------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Counters and occupancy, copied under the lock: (directory stats, names)."""
        with self.lock:
            snap = self.dir.snapshot()
            snap.update(names=dict(self.names), preloaded=self.preloaded.copy(),
                        invalid_hits=self.invalid_hits, flash_errors=self.flash_errors)
            return snap


class CachedStore(BackingStore):
    """One vdisk's LUN store with the flash cache in front of its ``ExtentStore``."""

    def __init__(self, cache: FlashCache, inner, vid: int):
        self.cache = cache
        self.inner = inner
        self.vid = vid
        self.block_size = inner.block_size
        # it can do what the store it wraps can, except read around the cache without waiting
        # and remap (EXTENDED COPY would bypass the cached blocks: it copies with I/O instead);
        # no atomic writes through the cache: WRITE ATOMIC is then an ordinary write
        self.abilities = inner.abilities - {NowaitReadable, Remappable, AtomicWritable}
        self.unmap_granularity = inner.unmap_granularity
        # True while the vdisk lives on the flash tier (or moves there): its data is already
        # on flash, so every call goes straight to the extent store (docs/cache.md)
        self.bypass = False
        # reads that went to the capacity tier (a miss, or part of one): the statistics tell
        # a flash hit from a miss by it (vmblock.stats.recorder)
        self.capacity_reads = 0
        # a shared datastore LU: the cache vdisk id of each LV's bytes (vmblock.cache.split)
        self.split: CacheSplit | None = None

    @property
    def size_bytes(self) -> int:
        """The wrapped store's capacity in bytes; the cache does not change it."""
        return self.inner.size_bytes

    @property
    def used_bytes(self) -> int:
        """Mapped bytes of the wrapped store; cached copies on flash are not counted."""
        return self.inner.used_bytes

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from ``offset``: valid cached blocks from flash, the rest from the store
        (admitted blocks are filled on the way); bypassed, straight from the store."""
        inner = self.inner
        if self.bypass:
            return inner.read_into(offset, buf)
        split = self.split
        if split is not None:
            for vid, a, b in split.pieces(offset, len(buf)):
                self.cache.read(vid, self._read_capacity, inner.size_bytes, offset + a,
                                buf[a:b])
            return
        self.cache.read(self.vid, self._read_capacity, inner.size_bytes, offset, buf)

    def _read_capacity(self, offset: int, buf: memoryview) -> None:
        self.capacity_reads += 1
        self.inner.read_into(offset, buf)

    def write(self, offset: int, data: memoryview) -> None:
        """Write to the store first, then into the range's cached (or admitted) blocks, so the
        cache never holds older data than the store; bypassed, to the store only."""
        inner = self.inner
        if self.bypass:
            return inner.write(offset, data)
        split = self.split
        if split is not None:
            for vid, a, b in split.pieces(offset, len(data)):
                self.cache.write(vid, inner.write, inner.read_into, inner.size_bytes,
                                 offset + a, data[a:b])
            return
        self.cache.write(self.vid, inner.write, inner.read_into, inner.size_bytes, offset,
                         data)

    def flush(self) -> None:
        """Make the store's completed writes durable; nothing on flash needs it."""
        self.inner.flush()      # write-through: the flash copy needs no durability

    def unmap(self, offset: int, length: int) -> None:
        """Deallocate in the store and drop the range's cached blocks, which would be stale."""
        self.inner.unmap(offset, length)
        if not self.bypass:
            self._invalidate(offset, length)

    def write_same(self, offset: int, length: int, block: memoryview) -> None:
        """WRITE SAME on the store; the range's cached blocks are dropped, not updated."""
        self.inner.write_same(offset, length, block)
        if not self.bypass:
            self._invalidate(offset, length)

    def _invalidate(self, offset: int, length: int) -> None:
        split = self.split
        if split is None:
            self.cache.invalidate(self.vid, offset, length)
            return
        for vid, a, b in split.pieces(offset, length):
            self.cache.invalidate(vid, offset + a, b - a)

    def lba_status(self, offset: int) -> tuple[bool, int]:
        """The store's (mapped, length in bytes) from ``offset``; the cache has no say in it."""
        return self.inner.lba_status(offset)

    def close(self) -> None:
        """Close the wrapped store; the shared ``FlashCache`` stays open for other vdisks."""
        self.inner.close()

    def preload(self) -> int:
        """Every mapped AU of the vdisk into the cache (``vmblock cache preload``)."""
        inner = self.inner
        vaus = inner.mapped_aus()
        bs = self.cache.bs
        au = inner.au
        if bs >= au:
            blocks = np.unique(vaus * au // bs)
        else:
            per = au // bs
            blocks = (vaus[:, None] * per + np.arange(per)[None, :]).ravel()
        blocks = blocks.astype(np.int64)
        split = self.split
        if split is None:
            return self.cache.preload(self.vid, inner.read_into, inner.size_bytes, blocks)
        return sum(self.cache.preload(vid, inner.read_into, inner.size_bytes, part)
                   for vid, part in split.blocks_by_vid(blocks, bs).items())


def warm() -> None:
    """Compile (or load from Numba's cache) every directory kernel before the first I/O."""
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        c = FlashCache(fd, 0, 4, 4096, [GroupSpec("default", promote="write")], max_vdisks=2)
        c.attach("u", "v", None)
        c.dir.access(np.arange(6), np.zeros(6, np.int32), np.zeros(6, np.bool_))
        c.dir.access_range(0, 0, 8192, False)
        c.dir.access_one(0, 0, False, 4096)
        c.dir.find(np.arange(2), np.zeros(2, np.int32))
        c.dir.remove(np.arange(1), np.zeros(1, np.int32))
        c.dir.assign(0, 1)
        c.set_groups([GroupSpec("default", promote="read")], {"u": ("default", True)})
        c.detach("u")
    finally:
        os.close(fd)
