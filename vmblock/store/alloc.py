"""The allocator: physical AUs of both tiers, their reference counts, free space and held frees.

Physical AUs are numbered in one *global* space in memory: capacity AU ``p`` is ``p``, flash AU
``f`` (its AU index in the flash tier file) is ``f + fshift``. The flash tier's AUs start at
``flash_lo``: after the cache's slots (``cache_bytes``, rounded up to an AU), or lower if a flash
AU below that is already mapped (the cache then gets less: it must never overlap data). The
meta DB stores (AU in its tier, tier). The reference counts live in shared memory
(``SharedArray``, ``refcount_fd``) for processes that look them up read-only.

A freed AU (UNMAP, snapshot or vdisk deletion, COW of the last reference) is *held*: not
reusable until the batch that frees it is durable *and* every I/O that could still have looked
it up has finished (a generation count of in-flight I/O, and the worker processes' fence).
Otherwise a crash could bring back the old mapping over another VM's data, or a racing read
could return it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque

import numpy as np

from vmblock.errors import PoolError
from vmblock.native import extent as extent_kernels
from vmblock.store.layout import TIER_FLASH, TIER_NAMES
from vmblock.store.shm import SharedArray
from vmblock.store.tier import Tier

log = logging.getLogger(__name__)

# vdisk move: the reference-count bias that holds a step's old AUs: in-place writes see them
# as shared and take the locked path (see TierMover).
MOVE_BIAS = 1 << 28


class Allocator:
    """Global AU numbers, reference counts, free space per tier, held frees, in-flight I/O.

    Methods said to run "under the lock" expect the store's ``lock`` held by the caller.
    """

    def __init__(self, capacity: Tier, flash: Tier, au: int, lock: threading.Lock,
                 file_aus: np.ndarray, tiers: np.ndarray, cache_bytes: int):
        """Rebuild reference counts and free space from every map entry's (AU in its tier,
        tier) -- 1-d arrays, UNMAPPED entries allowed -- in one kernel pass, and fix the flash
        split; a configured tier size that would cut off a mapped AU is not applied.
        ``loaded_aus`` is then the global AU of every entry given (UNMAPPED kept), for the
        caller to load its maps from."""
        self.capacity = capacity
        self.flash = flash
        self.au = au
        self.lock = lock
        self.fd = capacity.fd
        self.ffd = flash.fd
        if len(tiers) and int(tiers.max()) > TIER_FLASH:
            raise PoolError("meta DB holds extent-map records with an unknown tier")
        top, fl_min, ftop = extent_kernels.tier_bounds(file_aus, tiers)
        if top > capacity.n_aus:
            raise PoolError(f"capacity tier {capacity.path} is smaller than its maps "
                            f"(AU {top - 1} is mapped)")
        if capacity.want_aus != capacity.n_aus:
            if top > capacity.want_aus:
                log.warning("capacity tier: AUs up to %d are in use, cannot shrink to %d "
                            "bytes; keeping %d", top, capacity.want_aus * au, top * au)
            capacity.set_aus(max(top, capacity.want_aus))
        if ftop > flash.n_aus:
            raise PoolError(f"flash tier {flash.path} is smaller than its maps "
                            f"(AU {ftop - 1} is mapped)")
        if flash.want_aus != flash.n_aus:     # as the capacity tier
            if ftop > flash.want_aus:
                log.warning("flash tier: AUs up to %d are in use, cannot shrink to %d bytes",
                            ftop, flash.want_aus * au)
            flash.set_aus(max(ftop, flash.want_aus))
        nf = flash.n_aus
        lo = min(-(-max(cache_bytes, 0) // au), nf)
        if fl_min < lo:
            log.warning("flash tier: AU %d is mapped, the cache gets %d bytes, not %d",
                        fl_min, fl_min * au, cache_bytes)
            lo = fl_min
        self.flash_lo = lo
        self.cache_bytes = min(max(cache_bytes, 0), lo * au)
        self.ncap = ncap = capacity.n_aus
        self.fshift = ncap - lo
        n = ncap + nf - lo
        self.bounds = ((0, ncap), (ncap, n))
        # in shared memory, for worker processes that look reference counts up read-only
        self.shared_refs = SharedArray("vmblock-refcount", extent_kernels.REF_DTYPE, n)
        self.shared_refs.ensure(n)
        self.refcount = self.shared_refs.array
        self.held = np.zeros(n, dtype=np.uint8)
        self.loaded_aus, _ = extent_kernels.count_refs(self.refcount, file_aus, tiers,
                                                       self.fshift)
        used = self.refcount != 0
        self.t_used = [int(np.count_nonzero(used[:ncap])), int(np.count_nonzero(used[ncap:]))]
        self.t_free = [ncap - self.t_used[0], n - ncap - self.t_used[1]]
        self.cursors = [0, 0]
        # AUs whose last reference went in not-yet-durable metadata (see hold), and durably
        # freed ones waiting for the I/O that was in flight when they were retired
        self.frees: list[np.ndarray] = []
        self.waiting: deque[tuple[set[int], np.ndarray, int]] = deque()
        # Data I/O in progress outside the lock, by unique token (itertools.count and set
        # add/discard are atomic in CPython, so the 4 KiB path takes no lock at all).
        self.tokens = itertools.count(1)
        self.inflight: set[int] = set()
        self.biased: np.ndarray | None = None     # the old AUs a move step holds (MOVE_BIAS)
        # Worker processes reading the shared maps (vmblock.worker.shared.Fence), or None:
        # ``mark()`` when something is retired, ``passed(mark)`` once no worker can still use it.
        self.fence = None

    def mark(self) -> int:
        """The fence mark of something retired now (0 without worker processes)."""
        return self.fence.mark() if self.fence is not None else 0

    def passed(self, mark: int) -> bool:
        """No worker process can still be using what was retired at ``mark``."""
        return self.fence is None or self.fence.passed(mark)

    @property
    def refcount_fd(self) -> int:
        """The memfd of the reference counts (``n_aus`` uint32)."""
        return self.shared_refs.fd

    # --- global AU numbers <-> (tier, AU in the tier file) ------------------------------------

    @property
    def n_aus(self) -> int:
        """AUs of both tiers in the global numbering (the cache's slots are not among them)."""
        return self.bounds[1][1]

    def position(self, p: int) -> tuple[int, int]:
        """(fd, byte offset) of global AU ``p``."""
        if p < self.ncap:
            return self.fd, p * self.au
        return self.ffd, (p - self.fshift) * self.au

    def global_rows(self, file_aus: np.ndarray, tiers: np.ndarray) -> np.ndarray:
        """Global AU numbers of (AU in its tier, tier) pairs as the meta DB stores them
        (UNMAPPED stays UNMAPPED)."""
        paus = file_aus.astype(np.int64)
        paus[tiers == TIER_FLASH] += self.fshift
        paus[file_aus == extent_kernels.UNMAPPED] = extent_kernels.UNMAPPED
        return paus.astype(np.uint32)

    def file_rows(self, paus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(AUs in their tier files, tiers) of global AUs ``paus`` (UNMAPPED stays)."""
        flash = (paus != extent_kernels.UNMAPPED) & (paus >= self.ncap)
        file_aus = paus.astype(np.int64)
        file_aus[flash] -= self.fshift
        return file_aus.astype(np.uint32), flash.astype(np.uint8)

    def split_tiers(self, paus: np.ndarray) -> tuple[int, int]:
        """How many of ``paus`` are capacity AUs, how many flash AUs."""
        nf = int(np.count_nonzero(paus >= self.ncap))
        return len(paus) - nf, nf

    def used_pct(self, t: int) -> float:
        """Percentage of tier ``t``'s AUs in use."""
        lo, hi = self.bounds[t]
        return 100.0 * self.t_used[t] / max(hi - lo, 1)

    def refs(self) -> np.ndarray:
        """Reference counts without a running move's hold on its AUs (under the lock)."""
        if self.biased is None:
            return self.refcount
        refs = self.refcount.astype(np.int64)
        np.subtract.at(refs, self.biased.astype(np.int64), MOVE_BIAS)
        return refs

    # --- allocate, hold, retire, release ------------------------------------------------------

    def alloc(self, t: int, need: int) -> np.ndarray:
        """``need`` free AUs of tier ``t`` (global numbers), next-fit; the caller checked
        ``t_free`` and accounts for them (under lock)."""
        new = np.empty(need, dtype=np.int64)
        if not need:
            return new
        lo, hi = self.bounds[t]
        found, self.cursors[t] = extent_kernels._alloc_scan(
            self.refcount[lo:hi], self.held[lo:hi], self.cursors[t], need, new)
        if found < need:    # t_free said otherwise: accounting bug, refuse to write
            raise PoolError(f"allocator found {found} of {need} free AUs on the "
                            f"{TIER_NAMES[t]} tier")
        new += lo
        return new

    def hold(self, paus: np.ndarray) -> None:
        """AUs whose last reference went away in not-yet-durable metadata (under lock)."""
        if len(paus):
            self.held[paus] = 1
            c, f = self.split_tiers(paus)
            self.t_used[0] -= c
            self.t_used[1] -= f
            self.frees.append(paus.astype(np.uint32))

    def take_frees(self) -> list[np.ndarray]:
        """The held frees a commit is about to make durable (under lock)."""
        frees, self.frees = self.frees, []
        return frees

    def put_back_frees(self, frees: list[np.ndarray]) -> None:
        """Frees of a commit that failed: the next one makes them durable (under lock)."""
        self.frees[:0] = frees

    def release(self) -> None:
        """Make durably freed AUs allocatable once every I/O that was in flight when they were
        retired has finished (it may have looked them up before they were unmapped).
        Called under the lock."""
        while (self.waiting and self.waiting[0][0].isdisjoint(self.inflight)
               and self.passed(self.waiting[0][2])):
            _, paus, _ = self.waiting.popleft()
            self.held[paus] = 0
            c, f = self.split_tiers(paus)
            self.t_free[0] += c
            self.t_free[1] += f

    def retire(self, paus: np.ndarray) -> None:
        """Durably freed AUs: punch them, then release them once older I/O has drained."""
        on_cap = paus < self.ncap
        self.capacity.punch(paus[on_cap])
        self.flash.punch((paus[~on_cap].astype(np.int64) - self.fshift).astype(np.uint32))
        with self.lock:
            self.waiting.append((self.inflight.copy(), paus, self.mark()))
            self.release()
