"""Mapping AUs of a live map without writing their data (``PoolStore.preallocate``).

Benchmarks and scale tests build pools of millions of mapped AUs with it, through the store's
own API instead of writing every byte. The no-leak rule holds: each new AU is first zeroed
cheaply (a hole punched in a file tier, zeros written on a block device), made durable
(fsync), and only then mapped and committed (its leaves in one synced batch per chunk). An AU that was freed before and
still holds another vdisk's bytes therefore reads as zeros once it is preallocated.
"""

from __future__ import annotations

import numpy as np
from vmblock.errors import InvalidArgument, NoSpace
from vmblock.native.extent import LEAF_BITS
from vmblock.store.commit import Committer
from vmblock.store.layout import TIER_NAMES, UNMAPPED

# vAUs mapped per transaction (4 GiB of 64 KiB AUs).
PREALLOC_CHUNK_AUS = 1 << 16


def preallocate(committer: Committer, zeros: memoryview, mid: int, first_vau: int,
                count: int, chunk_aus: int = PREALLOC_CHUNK_AUS) -> None:
    """Map ``count`` fresh, zeroed AUs from vAU ``first_vau`` of the live map ``mid`` (on its
    tier), leaving already mapped vAUs alone; one commit per ``chunk_aus`` vAUs.

    Per chunk, under ``flush_lock`` (no other commit or metadata change runs meanwhile):
    reserve free AUs (held, so nobody else allocates them), zero them durably outside the
    store lock, map them in memory where the vAU is still unmapped (a write may have mapped
    it meanwhile; that AU goes back to the free ones, it was never durable), then commit: the
    leaves are written in one synced batch like any write's."""
    live = committer.live
    with committer.lock:
        size_aus = live.n_vaus(mid) if mid in live.maps else None
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
        with committer.lock:
            seg = live.lookup_many(mid, np.arange(first, first + count))
            vs = np.flatnonzero(seg == UNMAPPED).astype(np.int64) + first
            if not len(vs):
                return
            t = live.tier(mid)
            if len(vs) > space.t_free[t]:
                space.release()
            if len(vs) > space.t_free[t]:
                raise NoSpace(f"the {TIER_NAMES[t]} tier has {space.t_free[t]} free AUs, "
                              f"preallocating needs {len(vs)}")
            new = space.alloc(t, len(vs)).astype(np.uint32)
            space.held[new] = 1           # reserved: allocated to no one else
            space.t_free[t] -= len(new)
        ok = np.zeros(len(vs), dtype=bool)
        try:
            on_cap = new < space.ncap
            space.capacity.zero(new[on_cap], zeros)
            space.flash.zero((new[~on_cap].astype(np.int64) - space.fshift), zeros)
            with committer.lock:
                if mid in live.maps:
                    ok = live.lookup_many(mid, vs) == UNMAPPED
                    live.set_many(mid, vs[ok], new[ok])
                    space.refcount[new[ok]] = 1
                    space.t_used[t] += int(np.count_nonzero(ok))
                    committer.pending.update(
                        (mid, s) for s in np.unique(vs[ok] >> LEAF_BITS).tolist())
                    committer.events.check_level()
        finally:
            with committer.lock:
                space.held[new] = 0
                space.t_free[t] += int(np.count_nonzero(~ok))
        committer.commit()
