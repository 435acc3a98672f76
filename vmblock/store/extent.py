"""``ExtentStore``: the ``BackingStore`` one LUN sees, a view of one live map of a ``PoolStore``.

The pool's parts (allocator, maps, commit order, data path, tier moves, fsck) are in the
modules ``vmblock.store.pool_store`` lists.
"""

from __future__ import annotations

import errno
import os

import numpy as np

from vmblock.errors import PoolError
from vmblock.native.extent import LEAF_BITS, LEAF_MASK
from vmblock.store.backend import (
    AtomicWritable,
    BackingStore,
    LbaStatus,
    NowaitReadable,
    Remappable,
    Unmappable,
    WriteSameable,
)
from vmblock.store.layout import UNMAPPED
from vmblock.store.pool_store import PoolStore
from vmblock.store.remap import share_range
from vmblock.store.tier import read_full, write_full


class ExtentStore(BackingStore):
    """One vdisk's blocks: a view of one live extent map of a ``PoolStore``."""

    abilities = frozenset({Unmappable, WriteSameable, LbaStatus, NowaitReadable, Remappable,
                           AtomicWritable})

    def __init__(self, pool: PoolStore, map_id: int, block_size: int = 512):
        if map_id not in pool.live.maps:
            raise PoolError(f"no live extent map {map_id}")
        self.pool = pool
        self.map_id = map_id
        self.block_size = block_size
        self.unmap_granularity = pool.au
        self.au = pool.au       # the allocation unit mapped_aus counts in
        # what the hot path reads, one attribute away (none of these objects is replaced)
        self._au = pool.au
        self._space = pool.space
        self._committer = pool.committer
        self._maps = pool.live.maps
        self._leaves = pool.live.leaves
        self._zeros = pool.data.zeros
        self._read = pool.data.read
        self._write = pool.data.write
        self._nowait = True     # until the file system refuses RWF_NOWAIT

    @property
    def size_bytes(self) -> int:
        """The vdisk's size."""
        return self.pool.live.sizes[self.map_id]

    @property
    def used_bytes(self) -> int:
        """Bytes of the vdisk that are mapped."""
        return self.pool.map_used_bytes(self.map_id)

    # The one-AU cases (every 4 KiB I/O) inline and without the pool lock: one L1 load and
    # one leaf load (each atomic under the GIL), the in-flight token that keeps a concurrently freed AU from
    # being reused under us, one syscall. Everything else goes through DataPath, which splits
    # the range with vmblock.store.ranges; the one-AU test here is ranges.units(...)[1] == 1
    # spelled inline (a call would add to every I/O).

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from ``offset``."""
        if not self._read_in_one_au(offset, buf, 0):
            self._read(self.map_id, offset, buf)

    def read_nowait(self, offset: int, buf: memoryview) -> bool:
        """Fill ``buf`` from ``offset`` if that needs no wait for the device: True when done;
        False (``buf`` undefined) when the data is not all in the page cache (preadv2 with
        RWF_NOWAIT), so the caller reads it with ``read_into`` off the event loop. A range
        over two or more AUs (a 4 KiB read at an LBA not aligned to 4 KiB crosses an AU
        boundary once in 128) is read one AU at a time: an executor hop costs far more."""
        if not self._nowait:
            return False
        try:
            if self._read_in_one_au(offset, buf, os.RWF_NOWAIT):
                return True
            n = len(buf)
            au = self._au
            if not n or (offset + n - 1) // au == offset // au:
                return False        # in one AU, not all cached (or the map is gone)
            pos = 0
            while pos < n:
                end = min(n, ((offset + pos) // au + 1) * au - offset)
                if not self._read_in_one_au(offset + pos, buf[pos:end], os.RWF_NOWAIT):
                    return False
                pos = end
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno != errno.EOPNOTSUPP:
                raise
            self._nowait = False    # this file system cannot tell: every read off the loop
            return False

    def _read_in_one_au(self, offset: int, buf: memoryview, flags: int) -> bool:
        """Read a range inside one AU: one L1 load, one leaf load and one ``preadv2`` with
        ``flags``; False when the range spans AUs, the map is gone (``read_into``'s slow path
        says so) or, with RWF_NOWAIT, only part of it was cached."""
        n = len(buf)
        au = self._au
        first = offset // au
        if not n or (offset + n - 1) // au != first:
            return False
        space = self._space
        tok = next(space.tokens)
        inflight = space.inflight
        inflight.add(tok)
        try:
            l1 = self._maps.get(self.map_id)
            if l1 is None:
                return False
            p = self._leaves.item((l1.item(first >> LEAF_BITS) << LEAF_BITS)
                                  | (first & LEAF_MASK))
            if p == UNMAPPED:
                buf[:] = self._zeros[:n]
                return True
            if p < space.ncap:
                fd, pos = space.fd, (p - first) * au + offset
            else:
                fd, pos = space.ffd, (p - space.fshift - first) * au + offset
            if os.preadv(fd, [buf], pos, flags) != n:
                if flags:
                    return False
                read_full(fd, buf, pos)
            return True
        finally:
            inflight.discard(tok)

    def write(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` (durable at the next flush)."""
        n = len(data)
        au = self._au
        first = offset // au
        committer = self._committer
        if n and (offset + n - 1) // au == first and committer.fault is None:
            space = self._space
            tok = next(space.tokens)
            inflight = space.inflight
            inflight.add(tok)
            try:
                l1 = self._maps.get(self.map_id)
                if l1 is not None:
                    leaves = self._leaves
                    i = (l1.item(first >> LEAF_BITS) << LEAF_BITS) | (first & LEAF_MASK)
                    p = leaves.item(i)
                    # owned: in place. The map is read again after the refcount: a
                    # copy-on-write (or a move) remaps first and drops the old AU's count
                    # after, so a count of 1 read after that drop comes with the new map.
                    # (A leaf is reused only once this I/O is over: its token is in flight.)
                    if p != UNMAPPED and space.refcount.item(p) == 1 \
                            and leaves.item(i) == p:
                        if p < space.ncap:
                            fd, pos = space.fd, (p - first) * au + offset
                        else:
                            fd, pos = space.ffd, (p - space.fshift - first) * au + offset
                        if os.pwrite(fd, data, pos) != n:
                            write_full(fd, [data], pos)
                        committer.last_write = tok
                        return
            finally:
                inflight.discard(tok)
        self._write(self.map_id, offset, data)

    def write_atomic(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` all or nothing: out of place, one remap (WRITE ATOMIC)."""
        self.pool.data.write_atomic(self.map_id, offset, data)

    def flush(self) -> None:
        """Make every completed write of the pool durable."""
        self.pool.flush()

    def unmap(self, offset: int, length: int) -> None:
        """Deallocate the range (partial AUs at its ends are zeroed)."""
        self.pool.data.unmap(self.map_id, offset, length)

    def write_same(self, offset: int, length: int, block: memoryview) -> None:
        """Write ``block`` repeatedly over the range."""
        self.pool.data.write_same(self.map_id, offset, length, block)

    def lba_status(self, offset: int) -> tuple[bool, int]:
        """(mapped, bytes from ``offset`` in that state)."""
        return self.pool.data.lba_status(self.map_id, offset, self.size_bytes)

    def remap_from(self, source: BackingStore, src_offset: int, offset: int,
                   length: int) -> bool:
        """Copy from another vdisk (or this one) of the same pool by sharing whole AUs
        (``vmblock.store.remap``); False when ``source`` is not an extent store of this pool."""
        if not isinstance(source, ExtentStore) or source.pool is not self.pool:
            return False
        share_range(self.pool, source.map_id, src_offset, self.map_id, offset, length)
        return True

    def mapped_aus(self) -> np.ndarray:
        """The vAU numbers of this vdisk that are mapped (what a cache preload reads)."""
        with self.pool.lock:
            if self.map_id not in self._maps:
                return np.empty(0, np.int64)
            return self.pool.live.entries(self.map_id)[0].astype(np.int64)

    def close(self) -> None:
        """The pool's tiers stay open for the other vdisks; nothing per vdisk to release."""
