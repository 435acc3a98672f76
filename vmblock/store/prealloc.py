"""Mapping AUs of a live map without writing their data (``PoolStore.preallocate``).

Benchmarks and scale tests build pools of millions of mapped AUs with it, through the store's
own API instead of writing every byte. The no-leak rule holds: each new AU is first zeroed
cheaply (a hole punched in a file tier, zeros written on a block device), made durable
(fsync), and only then mapped, one synced batch per chunk. An AU that was freed before and
still holds another vdisk's bytes therefore reads as zeros once it is preallocated.
"""

from __future__ import annotations

import numpy as np
from rocksdict import WriteBatch

from vmblock.errors import InvalidArgument, NoSpace
from vmblock.store.commit import Committer
from vmblock.store.layout import TIER_NAMES, UNMAPPED, map_key, n_vaus

# vAUs mapped per transaction (4 GiB of 64 KiB AUs).
PREALLOC_CHUNK_AUS = 1 << 16


def preallocate(committer: Committer, zeros: memoryview, mid: int, first_vau: int,
                count: int, chunk_aus: int = PREALLOC_CHUNK_AUS) -> None:
    """Map ``count`` fresh, zeroed AUs from vAU ``first_vau`` of the live map ``mid`` (on its
    tier), leaving already mapped vAUs alone; one transaction per ``chunk_aus`` vAUs.

    Per chunk, under ``flush_lock`` (no commit or metadata change runs meanwhile): reserve
    free AUs (held, so nobody else allocates them), zero them outside the store lock, write
    their mappings in one synced batch, then map them in memory. A vAU that a write mapped
    meanwhile keeps that write's AU; the reserved one is freed like any AU whose mapping goes
    (held until the write's key is durable). If the batch fails its AUs stay reserved until
    the pool is reopened (the batch may have landed after all)."""
    live, space = committer.live, committer.space
    with committer.lock:
        size_aus = n_vaus(live.sizes[mid], space.au) if mid in live.sizes else None
    if size_aus is None:
        raise InvalidArgument(f"no live extent map {mid}")
    if first_vau < 0 or count < 0 or first_vau + count > size_aus:
        raise InvalidArgument(f"vAUs {first_vau}+{count} are outside map {mid} "
                              f"({size_aus} AUs)")
    for a in range(first_vau, first_vau + count, chunk_aus):
        _chunk(committer, zeros, mid, a, min(chunk_aus, first_vau + count - a))


def _chunk(committer: Committer, zeros: memoryview, mid: int, first: int, count: int) -> None:
    live, space = committer.live, committer.space
    with committer.flush_lock:
        committer.commit()
        with committer.lock:
            seg = live.get(mid)[first:first + count]
            vs = np.flatnonzero(seg == UNMAPPED).astype(np.int64) + first
            t = live.tier(mid)
            if len(vs) > space.t_free[t]:
                space.release()
            if len(vs) > space.t_free[t]:
                raise NoSpace(f"the {TIER_NAMES[t]} tier has {space.t_free[t]} free AUs, "
                              f"preallocating needs {len(vs)}")
            new = space.alloc(t, len(vs)).astype(np.uint32)
            space.held[new] = 1           # reserved: allocated to no one else
            space.t_free[t] -= len(new)
        if not len(vs):
            return
        try:
            on_cap = new < space.ncap
            space.capacity.zero(new[on_cap], zeros)
            space.flash.zero((new[~on_cap].astype(np.int64) - space.fshift), zeros)
        except BaseException:
            with committer.lock:
                space.held[new] = 0
                space.t_free[t] += len(new)
            raise
        batch = WriteBatch(raw_mode=True)
        value = space.value
        for v, q in zip(vs.tolist(), new.tolist()):
            batch.put(map_key(mid, v), value(q))
        committer.db.write(batch)
        with committer.lock:
            amap = live.get(mid)
            ok = amap[vs] == UNMAPPED
            amap[vs[ok]] = new[ok]
            space.refcount[new] = 1
            space.held[new] = 0
            space.t_used[t] += len(new)
            lost = new[~ok]       # a write mapped the vAU meanwhile: its key is pending
            if len(lost):
                space.refcount[lost] = 0
                space.hold(lost)
            committer.events.check_level()
