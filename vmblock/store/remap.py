"""Copying a range between live maps of one pool by sharing its allocation units (EXTENDED COPY).

``share_range`` copies ``length`` bytes of one live map to another (or the same) map: the
whole AUs in the middle become shared — the destination's leaves point at the source's AUs,
whose reference counts go up, exactly as a snapshot or a clone shares them, so a later write
to either side copies on write — and only the unaligned head and tail are copied as data.
When the two offsets are not equally placed inside an AU nothing can be shared and the
whole range is copied.

Crash safety: the remap is one locked step that changes the destination's in-memory leaves
and marks them dirty; the next commit (the caller flushes before it answers) fdatasyncs the
tiers, then writes those leaves in one synced batch. A crash before leaves the destination's
old mapping durable (its replaced AUs are held, never reused before that batch); a crash after
finds the destination sharing the source's AUs, whose data was written before they were
mapped anywhere. Reference counts are rebuilt from the leaves at open, so there is nothing
else to keep consistent.

Writes in flight: an in-place write (the lock-free one-AU path, or a worker process's fast
path) that saw a source AU owned before the remap may still land in it; ``share_range`` waits
for every such write (the in-flight tokens, the worker fence) before it returns, so a write
the initiator issues after the copy's status sees the AU shared and copies on write.
"""

from __future__ import annotations

import time

import numpy as np

from vmblock.native import extent as extent_kernels
from vmblock.native.extent import LEAF_BITS, MAP_DTYPE
from vmblock.store.layout import UNMAPPED, copy_key

# Bytes read and written per step when a range is copied as data.
COPY_CHUNK = 1 << 20
# How often a remap polls for the in-place writes it waits for.
DRAIN_POLL = 0.0002


def copy_bytes(read_into, write, src_offset: int, offset: int, length: int,
               chunk: int = COPY_CHUNK) -> None:
    """Copy ``length`` bytes as data, ``chunk`` at a time, with the two stores' calls; from
    the end backwards when the destination starts inside the source (the same store), so
    an overlapping copy reads every byte before it is overwritten (memmove)."""
    buf = memoryview(bytearray(min(chunk, length)))
    starts = list(range(0, length, len(buf))) if length else []
    if src_offset < offset < src_offset + length:
        starts.reverse()
    for done in starts:
        k = min(len(buf), length - done)
        read_into(src_offset + done, buf[:k])
        write(offset + done, buf[:k])


def share_range(pool, src_mid: int, src_offset: int, dst_mid: int, offset: int,
                length: int) -> int:
    """Copy ``length`` bytes from live map ``src_mid`` at ``src_offset`` to live map
    ``dst_mid`` at ``offset`` (``pool`` is the ``PoolStore``), sharing whole AUs; returns the
    bytes shared rather than copied. Durable at the next commit."""
    au = pool.au
    data = pool.data

    def read(o, buf):
        data.read(src_mid, o, buf)

    def write(o, buf):
        data.write(dst_mid, o, buf)

    if not length:
        return 0
    overlap = src_mid == dst_mid and offset < src_offset + length and src_offset < offset + length
    if (src_offset - offset) % au or overlap:
        # an overlapping copy inside one vdisk goes as data, in the safe direction: the
        # head and tail copies around a remap would read what the remap already changed
        copy_bytes(read, write, src_offset, offset, length)
        return 0
    end = offset + length
    head_end = min(-(-offset // au) * au, end)
    tail_start = max((end // au) * au, head_end)
    if head_end > offset:
        copy_bytes(read, write, src_offset, offset, head_end - offset)
    shift = src_offset - offset
    shared = 0
    if tail_start > head_end:
        if _share_aus(pool, src_mid, (head_end + shift) // au, dst_mid, head_end // au,
                      (tail_start - head_end) // au):
            shared = tail_start - head_end
        else:
            copy_bytes(read, write, head_end + shift, head_end, tail_start - head_end)
    if end > tail_start:
        copy_bytes(read, write, tail_start + shift, tail_start, end - tail_start)
    return shared


def _share_aus(pool, src_mid: int, src_first: int, dst_mid: int, first: int,
               count: int) -> bool:
    """Point vAUs [first, first + count) of ``dst_mid`` at the AUs of ``src_mid`` from
    ``src_first`` (unmapped where the source is); False, changing nothing, while a tier move
    holds biased reference counts (the caller copies the data instead)."""
    committer, live, space = pool.committer, pool.live, pool.space
    committer.check_writable(False)
    with committer.lock:
        if space.biased is not None:
            return False
        live.get(src_mid)
        live.get(dst_mid)
        vaus = np.arange(first, first + count, dtype=np.int64)
        src = live.lookup_many(src_mid, vaus + (src_first - first))
        old = live.lookup_many(dst_mid, vaus)
        mapped = src != UNMAPPED
        # the new references first: an AU both sides already share never reaches zero
        new = np.ascontiguousarray(src[mapped], dtype=MAP_DTYPE)
        extent_kernels.add_refs(space.refcount, new.copy(), 1)
        live.set_many(dst_mid, vaus[mapped], new)
        replaced = np.ascontiguousarray(old[mapped & (old != UNMAPPED)], dtype=MAP_DTYPE)
        slots = set((vaus[mapped] >> LEAF_BITS).tolist())
        # where the source is unmapped the destination becomes unmapped, run by run
        gone = ~mapped & (old != UNMAPPED)
        dropped = [replaced]
        if gone.any():
            edges = np.flatnonzero(np.diff(np.concatenate(([0], gone.view(np.int8), [0]))))
            for a, b in zip(edges[0::2].tolist(), edges[1::2].tolist()):
                _, paus, changed = live.unmap_range(dst_mid, first + a, b - a)
                dropped.append(np.ascontiguousarray(paus, dtype=MAP_DTYPE))
                slots.update(changed.tolist())
        for paus in dropped:
            if len(paus):
                zeroed = extent_kernels.add_refs(space.refcount, paus, -1)
                space.hold(paus[:zeroed].copy())
        committer.pending.update((dst_mid, s) for s in slots)
        if src_mid != dst_mid and len(new):
            # in the same batch as the leaves: ``pool check`` lets these two maps share
            committer.pending_puts[copy_key(src_mid, dst_mid)] = b""
        inflight = set(space.inflight)
    mark = space.mark()
    while not inflight.isdisjoint(space.inflight) or not space.passed(mark):
        time.sleep(DRAIN_POLL)
    return True
