"""The VM-aware extent store: tiers, allocator, per-vdisk extent maps, crash-safe commit order.

One ``PoolStore`` per pool owns the tier files (``capacity``, ``flash``), the reference counts of
the capacity tier's allocation units (AUs, 64 KiB), every live vdisk's extent map (a dense
``uint32`` array vAU -> physical AU, see ``vmblock.native.extent``) and the not-yet-durable
part of the metadata. ``ExtentStore`` is the ``BackingStore`` one LUN sees: a view of one map.

Key layout in the meta DB (binary keys, beside the pool's lowercase JSON keys, so ``M`` cannot
collide with them; big-endian numbers so one map's keys sort by vAU)::

    b"M" + map_id:u32be + vau:u32be   ->  struct "<IB": physical AU, flags (bits 0-1: tier)
    b"T"                               ->  16 random bytes: the last transaction's marker

A *map id* names one extent map: the live map of a vdisk (``map_id`` in its JSON record) or the
frozen map of a snapshot (``map_id`` of each disk in a snapshot record). Every key is tagged
with its map, so with the vdisk and VM that own it. Reference counts and free space are not
stored: ``PoolStore.open`` rebuilds them from the maps (an AU is used iff some map points at
it), which is crash-consistent by construction: there is no second structure to disagree.

Commit order (DESIGN rules 1 and 2):

* A write to an unmapped AU allocates a new AU, writes the *whole* AU (data plus zeros around
  it), updates the in-memory map at once (reads see it) and queues the map key in ``pending``.
* ``flush`` (SYNCHRONIZE CACHE, FUA, the periodic commit, any metadata change) takes the
  pending keys, ``fdatasync``s the tier and only then writes them in one synced WriteBatch: a
  mapping never becomes durable before its data. After a crash an AU whose mapping was not
  committed is simply free again; it is rewritten whole before it is ever mapped again.
* An overwrite of a mapped AU referenced once goes in place; an AU shared with a snapshot or
  clone (refcount > 1) is copied to a new AU first (copy-on-write), the old one keeps its data.
* A freed AU (UNMAP, snapshot or vdisk deletion, COW of the last reference) is *held*: not
  reusable until the batch that frees it is durable *and* every I/O that could still have looked
  it up has finished (a generation count of in-flight I/O). Otherwise a crash could bring back
  the old mapping over another VM's data, or a racing read could return it.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import logging
import os
import stat
import struct
import threading
import time
from collections import deque
from contextlib import contextmanager

import numpy as np
from rocksdict import WriteBatch

from vmblock.errors import InvalidArgument, NoSpace, PoolError, io_failure
from vmblock.native import extent as kx
from vmblock.store.backend import (
    BackingStore,
    LbaStatus,
    SpaceExhausted,
    Unmappable,
    WriteRefused,
    WriteSameable,
)

log = logging.getLogger(__name__)

AU_SIZE = 64 * 1024
TIER_CAPACITY = 0
TIER_FLASH = 1
TIER_NAMES = ("capacity", "flash")
UNMAPPED = int(kx.UNMAPPED)

KEY_MAP = b"M"
KEY_TXN = b"T"      # a random marker, rewritten by every transaction (see _resolve_txn)
_KEY = struct.Struct(">cII")
_VAL = struct.Struct("<IB")
_KEY_DT = np.dtype([("p", "S1"), ("mid", ">u4"), ("vau", ">u4")])
_VAL_DT = np.dtype([("pau", "<u4"), ("flags", "u1")])

# Pending map keys after which a writer commits by itself (bounds memory and replay loss).
PENDING_LIMIT = 16384
# AUs handled under the lock in one step (scratch arrays are this long): 256 MiB.
CHUNK_AUS = 4096
ZERO_BYTES = 1 << 20
IOV_MAX = 1024
# vdisk move: AUs copied per step (one commit each), and the reference-count bias that holds
# a step's old AUs: in-place writes see them as shared and take the locked path.
MOVE_CHUNK_AUS = 128
MOVE_BIAS = 1 << 28


def _byte_range(text: str | None) -> tuple[int, int] | None:
    """``"OFFSET:LENGTH"`` (bytes) -> (start, end), or None when unset."""
    if not text:
        return None
    offset, length = (int(x) for x in text.split(":"))
    return offset, offset + length


# Tests only: "OFFSET:LENGTH" in bytes of a vdisk. A move step that moves AUs of that range
# waits between its copy and its remap until a write has landed in one of them (it took the
# copy-on-write path: the race a move must survive happens for sure, on any machine speed).
MOVE_AWAIT_WRITE = _byte_range(os.environ.get("VMBLOCK_TEST_MOVE_AWAIT_WRITE"))
# ... and gives up waiting after this long (a safety net: the test then sees no race).
MOVE_AWAIT_TIMEOUT = 60.0
RECLAIM_WAIT = 2.0

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int
_PUNCH = 0x02 | 0x01   # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def map_key(mid: int, vau: int) -> bytes:
    return _KEY.pack(KEY_MAP, mid, vau)


def map_prefix(mid: int) -> bytes:
    return KEY_MAP + mid.to_bytes(4, "big")


def map_value(pau: int, tier: int = TIER_CAPACITY) -> bytes:
    return _VAL.pack(pau, tier)


def scan_maps(db, mid: int | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(map ids, vAUs, physical AUs in their tier, tiers) of every map key, or of one map's,
    in key order."""
    prefix = KEY_MAP if mid is None else map_prefix(mid)
    items = db.scan(prefix)
    if not items:
        e = np.empty(0, dtype=np.uint32)
        return e, e.copy(), e.copy(), np.empty(0, dtype=np.uint8)
    kb, vb = b"".join(k for k, _ in items), b"".join(v for _, v in items)
    if len(kb) != len(items) * _KEY_DT.itemsize or len(vb) != len(items) * _VAL_DT.itemsize:
        raise PoolError("meta DB holds extent-map records of the wrong size")
    k = np.frombuffer(kb, dtype=_KEY_DT)
    v = np.frombuffer(vb, dtype=_VAL_DT)
    return (k["mid"].astype(np.uint32), k["vau"].astype(np.uint32),
            v["pau"].astype(np.uint32), (v["flags"] & 3).astype(np.uint8))


def n_vaus(size_bytes: int, au: int = AU_SIZE) -> int:
    return -(-size_bytes // au)


class Tier:
    """One tier's backing file or block device, opened for the pool's life."""

    def __init__(self, name: str, path: str, size_bytes: int, au: int = AU_SIZE):
        self.name = name
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise PoolError(f"cannot open {name} tier {path}: {e.strerror}") from None
        st = os.fstat(self.fd)
        self.is_file = stat.S_ISREG(st.st_mode)
        self.au = au
        self.punch_ok = self.is_file
        if self.is_file:
            # the configured size, applied by PoolStore once it knows the highest used AU
            self.want_aus = size_bytes // au
            self.n_aus = max(st.st_size // au, self.want_aus)
            if st.st_size < self.n_aus * au:
                os.ftruncate(self.fd, self.n_aus * au)
        else:
            self.n_aus = self.want_aus = os.lseek(self.fd, 0, os.SEEK_END) // au

    @property
    def size_bytes(self) -> int:
        return self.n_aus * self.au

    def set_aus(self, n: int) -> None:
        """Shrink or grow a file tier to ``n`` AUs (the caller checked nothing is in use)."""
        if self.is_file:
            os.ftruncate(self.fd, n * self.au)
            self.n_aus = n

    def punch(self, paus: np.ndarray) -> None:
        """Give freed AUs' space back to the host file system (file tiers only)."""
        if not self.punch_ok or not len(paus):
            return
        paus = np.sort(paus)
        breaks = np.flatnonzero(np.diff(paus.astype(np.int64)) != 1) + 1
        for run in np.split(paus, breaks):
            off, n = int(run[0]) * self.au, len(run) * self.au
            if _fallocate(self.fd, _PUNCH, off, n) != 0:
                err = ctypes.get_errno()
                if err in (errno.EOPNOTSUPP, errno.ENOSYS):
                    self.punch_ok = False
                    return
                log.warning("%s: cannot punch %d bytes at %d: %s", self.path, n, off,
                            os.strerror(err))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _pwritev_all(fd: int, bufs: list, pos: int) -> None:
    total = sum(len(b) for b in bufs)
    done = os.pwritev(fd, bufs, pos)
    while done < total:   # short write: finish byte-wise from where it stopped
        flat = memoryview(b"".join(bytes(b) for b in bufs))
        done += os.pwrite(fd, flat[done:], pos + done)


def _preadv_all(fd: int, buf: memoryview, pos: int) -> None:
    done = 0
    n = len(buf)
    while done < n:
        got = os.preadv(fd, [buf[done:]], pos + done)
        if got == 0:
            buf[done:] = bytes(n - done)
            return
        done += got


class StoreFault:
    """Where a commit failed (``meta`` or a tier name), the latest error, and since when."""

    __slots__ = ("where", "error", "since")

    def __init__(self, where: str, error: OSError):
        self.where = where
        self.error = error
        self.since = time.time()


class PoolStore:
    """Allocator, reference counts and live extent maps of one pool; thread-safe.

    ``lock`` guards the in-memory state (maps, refcounts, pending keys); data I/O on AUs that
    are mapped and owned runs outside it. ``flush_lock`` orders commits and metadata changes.
    """

    def __init__(self, db, capacity: Tier, flash: Tier, live: dict[int, int],
                 thresholds: tuple[int, ...] = (80, 90, 95), au: int = AU_SIZE,
                 tiers: dict[int, int] | None = None, cache_bytes: int = 0):
        self.db = db
        self.au = au
        self.capacity = capacity
        self.flash = flash
        self.fd = capacity.fd
        self.ffd = flash.fd
        # new allocations of a live map go to its vdisk's tier (TIER_CAPACITY when absent)
        self.tiers: dict[int, int] = dict(tiers or {})
        self.move_lock = threading.Lock()
        self.step_lock = threading.Lock()
        self._biased: np.ndarray | None = None     # AUs a move holds (see move)
        self.thresholds = tuple(sorted(thresholds))
        self.lock = threading.Lock()
        self.flush_lock = threading.Lock()
        # the commit that failed and is not recovered from yet (see StoreFault)
        self.fault: StoreFault | None = None
        # (marker, MapTxn, events) of a transaction whose synced write failed
        self.in_doubt: tuple[bytes, MapTxn, list[dict]] | None = None
        self.maps: dict[int, np.ndarray] = {}
        self.sizes: dict[int, int] = {}
        self.pending: dict[tuple[int, int], int | None] = {}
        self.frees: list[np.ndarray] = []
        self.waiting: deque[tuple[set[int], np.ndarray]] = deque()
        self.events: list[dict] = []
        # Data I/O in progress outside the lock, by unique token (itertools.count and set
        # add/discard are atomic in CPython, so the 4 KiB path takes no lock at all).
        self.tokens = itertools.count(1)
        self.inflight: set[int] = set()
        # Written-but-maybe-not-synced: a completed write stores its token here; a commit
        # fdatasyncs when it differs from the token its last sync saw.
        self.last_write = 0
        self.synced = 0
        self.closed = False
        self.commits = 0
        self._zero = memoryview(bytes(max(ZERO_BYTES, au)))
        self._paus = np.empty(CHUNK_AUS + 1, dtype=np.uint32)
        self._kinds = np.empty(CHUNK_AUS + 1, dtype=np.uint8)
        self._starts = np.empty(CHUNK_AUS + 1, dtype=np.int64)
        self._lens = np.empty(CHUNK_AUS + 1, dtype=np.int64)
        self._load(live, cache_bytes)

    # --- open: rebuild everything derived from the maps ---------------------------------------

    def _load(self, live: dict[int, int], cache_bytes: int) -> None:
        """Rebuild reference counts and free space from the maps, and fix the flash split.

        Physical AUs are numbered in one *global* space in memory: capacity AU ``p`` is ``p``,
        flash AU ``f`` (its AU index in the flash tier file) is ``f + fshift``. The flash
        tier's AUs start at ``flash_lo``: after the cache's slots (``cache_bytes``, rounded up
        to an AU), or lower if a flash AU below that is already mapped (the cache then gets
        less: it must never overlap data). The meta DB stores (AU in its tier, tier)."""
        mids, vaus, lpaus, tiers = scan_maps(self.db)
        if len(tiers) and int(tiers.max()) > TIER_FLASH:
            raise PoolError("meta DB holds extent-map records with an unknown tier")
        on_cap = tiers == TIER_CAPACITY
        cap_p, fl_p = lpaus[on_cap], lpaus[~on_cap]
        top = int(cap_p.max()) + 1 if len(cap_p) else 0
        if top > self.capacity.n_aus:
            raise PoolError(f"capacity tier {self.capacity.path} is smaller than its maps "
                            f"(AU {top - 1} is mapped)")
        if self.capacity.want_aus != self.capacity.n_aus:
            if top > self.capacity.want_aus:
                log.warning("capacity tier: AUs up to %d are in use, cannot shrink to %d "
                            "bytes; keeping %d", top, self.capacity.want_aus * self.au,
                            top * self.au)
            self.capacity.set_aus(max(top, self.capacity.want_aus))
        ftop = int(fl_p.max()) + 1 if len(fl_p) else 0
        if ftop > self.flash.n_aus:
            raise PoolError(f"flash tier {self.flash.path} is smaller than its maps "
                            f"(AU {ftop - 1} is mapped)")
        if self.flash.want_aus != self.flash.n_aus:     # as the capacity tier
            if ftop > self.flash.want_aus:
                log.warning("flash tier: AUs up to %d are in use, cannot shrink to %d bytes",
                            ftop, self.flash.want_aus * self.au)
            self.flash.set_aus(max(ftop, self.flash.want_aus))
        nf = self.flash.n_aus
        lo = min(-(-max(cache_bytes, 0) // self.au), nf)
        if len(fl_p) and int(fl_p.min()) < lo:
            log.warning("flash tier: AU %d is mapped, the cache gets %d bytes, not %d",
                        int(fl_p.min()), int(fl_p.min()) * self.au, cache_bytes)
            lo = int(fl_p.min())
        self.flash_lo = lo
        self.cache_bytes = min(max(cache_bytes, 0), lo * self.au)
        self.ncap = ncap = self.capacity.n_aus
        self.fshift = ncap - lo
        n = ncap + nf - lo
        self.bounds = ((0, ncap), (ncap, n))
        paus = lpaus.astype(np.int64)
        paus[~on_cap] += self.fshift
        paus = paus.astype(np.uint32)
        self.refcount = np.zeros(n, dtype=kx.REF_DTYPE)
        self.held = np.zeros(n, dtype=np.uint8)
        np.add.at(self.refcount, paus.astype(np.int64), 1)
        for mid, size in live.items():
            amap = kx.new_map(n_vaus(size, self.au))
            sel = mids == mid
            v, p = vaus[sel], paus[sel]
            keep = v < len(amap)
            amap[v[keep]] = p[keep]
            self.maps[mid] = amap
            self.sizes[mid] = size
        used = self.refcount != 0
        self.t_used = [int(np.count_nonzero(used[:ncap])), int(np.count_nonzero(used[ncap:]))]
        self.t_free = [ncap - self.t_used[0], n - ncap - self.t_used[1]]
        self.cursors = [0, 0]
        self.level = self._level()
        self.full = False

    # --- tiers: global AU numbers <-> (tier, AU in the tier file) ------------------------------

    @property
    def used_aus(self) -> int:
        return self.t_used[0] + self.t_used[1]

    @property
    def free_aus(self) -> int:
        return self.t_free[0] + self.t_free[1]

    @property
    def n_aus(self) -> int:
        return self.bounds[1][1]

    def tier_of(self, p: int) -> int:
        return TIER_CAPACITY if p < self.ncap else TIER_FLASH

    def _pos(self, p: int) -> tuple[int, int]:
        """(fd, byte offset) of global AU ``p``."""
        if p < self.ncap:
            return self.fd, p * self.au
        return self.ffd, (p - self.fshift) * self.au

    def _value(self, p: int) -> bytes:
        """The meta DB value of a mapping to global AU ``p``."""
        if p < self.ncap:
            return _VAL.pack(p, TIER_CAPACITY)
        return _VAL.pack(p - self.fshift, TIER_FLASH)

    def _split_tiers(self, paus: np.ndarray) -> tuple[int, int]:
        """How many of ``paus`` are capacity AUs, how many flash AUs."""
        nf = int(np.count_nonzero(paus >= self.ncap))
        return len(paus) - nf, nf

    def _plan(self, count: int) -> list[tuple[int, int, int]]:
        """Runs of the looked-up ``self._paus``, split where a run would cross from the last
        capacity AU to the first flash AU (global numbers are contiguous there, files not)."""
        runs = kx._phys_runs(self._paus, count, self._starts, self._lens)
        ncap = self.ncap
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

    def scan(self, mid: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(map ids, vAUs, global physical AUs) of the meta DB's map keys."""
        mids, vaus, lpaus, tiers = scan_maps(self.db, mid)
        paus = lpaus.astype(np.int64)
        paus[tiers == TIER_FLASH] += self.fshift
        return mids, vaus, paus.astype(np.uint32)

    # --- accounting and events ----------------------------------------------------------------

    # Low-space thresholds and events are about the capacity tier; a full flash tier fails
    # the writes of flash vdisks that need new AUs the same way (27h/07h).

    def _level(self) -> int:
        pct = 100.0 * self.t_used[0] / max(self.ncap, 1)
        return max((t for t in self.thresholds if pct >= t), default=0)

    def _check_level(self) -> None:
        """Record a low-space event when usage crosses a threshold upwards (under lock)."""
        level = self._level()
        if level > self.level:
            pct = 100.0 * self.t_used[0] / max(self.ncap, 1)
            self._event("low_space", threshold_pct=level, used_pct=round(pct, 2))
            log.warning("capacity tier %.1f%% used (threshold %d%%)", pct, level)
        self.level = level

    def _event(self, kind: str, **fields) -> None:
        self.events.append(dict(time=time.time(), kind=kind,
                                used_bytes=self.t_used[0] * self.au,
                                capacity_bytes=self.capacity.size_bytes, **fields))

    def usage(self) -> dict:
        """The capacity tier at the top level (as before flash-tier AUs existed), each tier's
        AUs under ``tiers``."""
        au = self.au
        with self.lock:
            refs = self._refs()
            held = [int(np.count_nonzero(self.held[lo:hi])) for lo, hi in self.bounds]
            tiers = {}
            for t, tier in enumerate((self.capacity, self.flash)):
                lo, hi = self.bounds[t]
                tiers[tier.name] = {
                    "path": tier.path, "size_bytes": tier.size_bytes, "au_count": tier.n_aus,
                    "device": not tier.is_file,
                    "au_bytes": (hi - lo) * au,          # room for AUs of the extent store
                    "used_bytes": self.t_used[t] * au, "free_bytes": self.t_free[t] * au,
                    "held_bytes": held[t] * au,
                    "used_pct": round(100.0 * self.t_used[t] / max(hi - lo, 1), 2),
                    "shared_aus": int(np.count_nonzero(refs[lo:hi] > 1)),
                }
            tiers["flash"]["cache_bytes"] = self.cache_bytes
            tiers["flash"]["au_offset_bytes"] = self.flash_lo * au
            return {
                "au_size": au,
                "capacity_bytes": self.capacity.size_bytes,
                "used_bytes": self.t_used[0] * au,
                "free_bytes": self.t_free[0] * au,
                "held_bytes": held[0] * au,
                "used_pct": round(100.0 * self.t_used[0] / max(self.ncap, 1), 2),
                "shared_aus": int(np.count_nonzero(refs > 1)),
                "pending_keys": len(self.pending),
                "tiers": tiers,
            }

    def _refs(self) -> np.ndarray:
        """Reference counts without a running move's hold on its AUs (under the lock)."""
        if self._biased is None:
            return self.refcount
        refs = self.refcount.astype(np.int64)
        np.subtract.at(refs, self._biased.astype(np.int64), MOVE_BIAS)
        return refs

    def map_used_bytes(self, mid: int) -> int:
        amap = self.maps.get(mid)
        return 0 if amap is None else kx.count_mapped(amap) * self.au

    def map_tier_bytes(self, mid: int) -> dict[str, int]:
        """Bytes a live map holds on each tier."""
        amap = self.maps.get(mid)
        if amap is None:
            return {name: 0 for name in TIER_NAMES}
        mapped = amap != kx.UNMAPPED
        fl = int(np.count_nonzero(mapped & (amap >= self.ncap)))
        return {"capacity": (int(np.count_nonzero(mapped)) - fl) * self.au,
                "flash": fl * self.au}

    # --- held frees ----------------------------------------------------------------------------

    def _release(self) -> None:
        """Make durably freed AUs allocatable once every I/O that was in flight when they were
        retired has finished (it may have looked them up before they were unmapped).
        Called under the lock."""
        while self.waiting and self.waiting[0][0].isdisjoint(self.inflight):
            _, paus = self.waiting.popleft()
            self.held[paus] = 0
            c, f = self._split_tiers(paus)
            self.t_free[0] += c
            self.t_free[1] += f

    # --- data path ----------------------------------------------------------------------------

    def _map(self, mid: int) -> np.ndarray:
        amap = self.maps.get(mid)
        if amap is None:    # the vdisk was deleted under a command already dispatched
            raise OSError(errno.ENODEV, f"extent map {mid} is gone")
        return amap

    def read(self, mid: int, offset: int, buf: memoryview) -> None:
        n = len(buf)
        if not n:
            return
        au = self.au
        first = offset // au
        count = (offset + n - 1) // au - first + 1
        if count > CHUNK_AUS:
            step = CHUNK_AUS * au - offset % au
            self.read(mid, offset, buf[:step])
            self.read(mid, offset + step, buf[step:])
            return
        tok = next(self.tokens)
        self.inflight.add(tok)     # before the lookup: a free retired after it waits for us
        try:
            with self.lock:
                amap = self._map(mid)
                if count == 1:
                    p = amap.item(first)
                    plan = None
                else:
                    # kernels called directly: the arrays are ours, checked when made
                    kx._lookup_batch(amap, np.arange(first, first + count, dtype=np.int64),
                                     self._paus)
                    plan = self._plan(count)
            if plan is None:
                if p == UNMAPPED:
                    self._zero_fill(buf, 0, n)
                else:
                    fd, pos = self._pos(p)
                    _preadv_all(fd, buf, pos + offset - first * au)
                return
            base = first * au
            for s, length, p in plan:
                a = max(offset, base + s * au) - offset
                b = min(offset + n, base + (s + length) * au) - offset
                if p == UNMAPPED:
                    self._zero_fill(buf, a, b)
                else:
                    fd, pos = self._pos(p)
                    _preadv_all(fd, buf[a:b], pos + (a + offset - (base + s * au)))
        finally:
            self.inflight.discard(tok)

    def _zero_fill(self, buf: memoryview, a: int, b: int) -> None:
        z = self._zero
        while a < b:
            k = min(len(z), b - a)
            buf[a:a + k] = z[:k]
            a += k

    def write(self, mid: int, offset: int, data: memoryview) -> None:
        n = len(data)
        if not n:
            return
        if self.fault is not None:
            self.check_writable(False)
        au = self.au
        first = offset // au
        count = (offset + n - 1) // au - first + 1
        if count > CHUNK_AUS:
            step = CHUNK_AUS * au - offset % au
            self.write(mid, offset, data[:step])
            self.write(mid, offset + step, data[step:])
            return
        tok = next(self.tokens)
        self.inflight.add(tok)     # before the lookup: a free retired after it waits for us
        try:
            with self.lock:
                amap = self._map(mid)
                if count == 1:
                    p = amap.item(first)
                    fast = p != UNMAPPED and self.refcount.item(p) == 1
                    plan = None
                else:
                    need = kx._classify(amap, self.refcount, first, count, self._paus,
                                        self._kinds)
                    fast = need == 0
                    if fast:
                        plan = self._plan(count)
            if fast:
                if plan is None:
                    fd, pos = self._pos(p)
                    _pwritev_all(fd, [data], pos + offset - first * au)
                else:
                    base = first * au
                    for s, length, p in plan:
                        a = max(offset, base + s * au) - offset
                        b = min(offset + n, base + (s + length) * au) - offset
                        fd, pos = self._pos(p)
                        _pwritev_all(fd, [data[a:b]], pos + (a + offset - (base + s * au)))
                self.last_write = tok
        finally:
            self.inflight.discard(tok)
        if not fast:
            self._write_alloc(mid, offset, data)

    def _write_alloc(self, mid: int, offset: int, data: memoryview) -> None:
        """Write that needs new AUs (first write or copy-on-write), under the lock throughout:
        allocation, data I/O, then map update, so no one sees a mapping before its data."""
        self.check_writable(True)
        deadline = None
        while True:
            with self.lock:
                if self._write_alloc_locked(mid, offset, data):
                    commit = len(self.pending) > PENDING_LIMIT
                    break
                reclaimable = bool(self.frees or self.waiting)
                if not reclaimable or (deadline is not None and time.monotonic() > deadline):
                    t = self.tiers.get(mid, TIER_CAPACITY)
                    lo, hi = self.bounds[t]
                    if not self.full:
                        self._event("pool_full", threshold_pct=100, tier=TIER_NAMES[t],
                                    used_pct=round(100.0 * self.t_used[t]
                                                   / max(hi - lo, 1), 2))
                        log.warning("%s tier full: failing writes that need space",
                                    TIER_NAMES[t])
                        self.full = True
                    raise SpaceExhausted(f"{TIER_NAMES[t]} tier full ({hi - lo} AUs)")
            if deadline is None:
                deadline = time.monotonic() + RECLAIM_WAIT
                self.flush()     # frees become reusable once durable and drained
            else:
                time.sleep(0.01)
                with self.lock:
                    self._release()
        if commit:
            self.flush()

    def _write_alloc_locked(self, mid: int, offset: int, data: memoryview) -> bool:
        au = self.au
        n = len(data)
        first = offset // au
        count = (offset + n - 1) // au - first + 1
        amap = self._map(mid)
        paus, kinds = self._paus, self._kinds
        need = kx._classify(amap, self.refcount, first, count, paus, kinds)
        t = self.tiers.get(mid, TIER_CAPACITY)
        if need > self.t_free[t]:
            return False
        new = self._alloc(t, need)
        z = self._zero
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
            if kind == kx.KIND_OWNED:
                fd, pos = self._pos(int(paus[i]))
                pos, bufs = pos + (a - lo), [piece]
            elif kind == kx.KIND_UNMAPPED:
                q = int(new[j])
                j += 1
                bufs = [b_ for b_ in (z[:a - lo], piece, z[:hi - b]) if len(b_)]
                fd, pos = self._pos(q)
                changes.append((v, q, UNMAPPED))
            else:   # shared: copy the old AU, lay the new data over it
                q = int(new[j])
                j += 1
                old = bytearray(au)
                ofd, opos = self._pos(int(paus[i]))
                _preadv_all(ofd, memoryview(old), opos)
                old[a - lo:b - lo] = piece
                bufs = [memoryview(old)]
                fd, pos = self._pos(q)
                changes.append((v, q, int(paus[i])))
            if segs and segs[-1][0] == fd \
                    and segs[-1][1] + sum(len(x) for x in segs[-1][2]) == pos \
                    and len(segs[-1][2]) + len(bufs) <= IOV_MAX:
                segs[-1][2].extend(bufs)
            else:
                segs.append((fd, pos, bufs))
        for fd, pos, bufs in segs:
            _pwritev_all(fd, bufs, pos)
        # the data is written (not yet durable): now the map, refcounts and pending keys
        for v, q, old in changes:
            amap[v] = q
            self.refcount[q] = 1
            if old != UNMAPPED:
                self.refcount[old] -= 1
                if self.refcount[old] == 0:   # cannot happen for a shared AU; keep it exact
                    self._hold(np.array([old], dtype=np.uint32))
            self.pending[(mid, v)] = q
        self.t_free[t] -= need
        self.t_used[t] += need
        self.last_write = next(self.tokens)
        if need:
            self._check_level()
        self.full = False
        return True

    def _alloc(self, t: int, need: int) -> np.ndarray:
        """``need`` free AUs of tier ``t`` (global numbers), next-fit; the caller checked
        ``t_free`` and accounts for them (under lock)."""
        new = np.empty(need, dtype=np.int64)
        if not need:
            return new
        lo, hi = self.bounds[t]
        found, self.cursors[t] = kx._alloc_scan(self.refcount[lo:hi], self.held[lo:hi],
                                                self.cursors[t], need, new)
        if found < need:    # t_free said otherwise: accounting bug, refuse to write
            raise PoolError(f"allocator found {found} of {need} free AUs on the "
                            f"{TIER_NAMES[t]} tier")
        new += lo
        return new

    def _hold(self, paus: np.ndarray) -> None:
        """AUs whose last reference went away in not-yet-durable metadata (under lock)."""
        if len(paus):
            self.held[paus] = 1
            c, f = self._split_tiers(paus)
            self.t_used[0] -= c
            self.t_used[1] -= f
            self.frees.append(paus.astype(np.uint32))

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
        self.check_writable(True)
        with self.lock:
            amap = self._map(mid)
            hi = min(hi_full, len(amap))
            seg = amap[lo_full:hi]
            idx = np.flatnonzero(seg != kx.UNMAPPED)
            if not len(idx):
                return
            paus = seg[idx].copy()
            seg[idx] = kx.UNMAPPED
            for v in (idx + lo_full).tolist():
                self.pending[(mid, v)] = None
            zeroed = kx._add_refs(self.refcount, paus, -1)
            self._hold(paus[:zeroed])
            commit = len(self.pending) > PENDING_LIMIT
        if commit:
            self.flush()

    def _zero_if_mapped(self, mid: int, a: int, b: int) -> None:
        au = self.au
        while a < b:
            nxt = min(b, (a // au + 1) * au)
            with self.lock:
                mapped = self._map(mid)[a // au] != kx.UNMAPPED
            if mapped:
                self.write(mid, a, self._zero[:nxt - a])
            a = nxt

    def write_same(self, mid: int, offset: int, length: int, block: memoryview) -> None:
        bs = len(block)
        reps = max(1, min(length, ZERO_BYTES) // bs)
        pattern = memoryview(bytes(block) * reps)
        end = offset + length
        while offset < end:
            k = min(len(pattern), end - offset)
            self.write(mid, offset, pattern[:k])
            offset += k

    def lba_status(self, mid: int, offset: int, size: int) -> tuple[bool, int]:
        au = self.au
        with self.lock:
            amap = self._map(mid)
            v = offset // au
            mapped, run = kx.run_length(amap, v, len(amap))
        return mapped, min((v + run) * au, size) - offset

    # --- commit -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Make every completed write durable: data (fdatasync) first, then the map keys."""
        with self.flush_lock:
            self._commit()

    def _commit(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, {}
            frees, self.frees = self.frees, []
            events, self.events = self.events, []
            written = self.last_write      # one load: a later write changes it again
            # a pending flash mapping is counted in t_used[1]; without flash AUs in use the
            # flash file holds only cache slots, which need no durability
            flash = self.t_used[1] > 0
            if self.waiting:
                self._release()
        where = "meta"
        try:
            if written != self.synced or pending or self.fault is not None:
                where = "capacity"
                os.fdatasync(self.capacity.fd)
                if flash:
                    where = "flash"
                    os.fdatasync(self.flash.fd)
                self.synced = written
            where = "meta"
            if pending or events:
                batch = WriteBatch(raw_mode=True)
                value = self._value
                for (mid, vau), pau in pending.items():
                    if pau is None:
                        batch.delete(map_key(mid, vau))
                    else:
                        batch.put(map_key(mid, vau), value(pau))
                for ev in events:
                    put_event(batch, ev)
                self.db.write(batch)
        except BaseException as e:
            with self.lock:     # keep everything for the next attempt; newer keys win
                for k, val in pending.items():
                    self.pending.setdefault(k, val)
                self.frees[:0] = frees
                self.events[:0] = events
                if isinstance(e, OSError):
                    self._fault_seen(where, e)
            if where == "meta" and not pending and isinstance(e, OSError):
                return      # only events waited: every completed write is durable anyway
            raise
        self.commits += 1
        if self.in_doubt is not None:
            self._resolve_txn()
        if self.fault is not None:
            self._fault_cleared()
        if frees:
            self._retire(np.concatenate(frees))

    # --- faults: a commit that failed ---------------------------------------------------------

    def _fault_seen(self, where: str, err: OSError) -> None:
        """A commit failed on ``where`` (the meta DB or a tier): refuse the writes that could
        not be made durable until a commit succeeds again (under the lock)."""
        if self.fault is not None:
            self.fault.error = err
            return
        self.fault = StoreFault(where, err)
        kind = "meta_fault" if where == "meta" else "tier_fault"
        self._event(kind, where=where, errno=errno.errorcode.get(err.errno, str(err.errno)),
                    error=str(err.strerror or err))
        log.error("%s commit failed, refusing writes that need it until it works again: %s",
                  where, err.strerror or err)

    def _fault_cleared(self) -> None:
        with self.lock:
            fault, self.fault = self.fault, None
            if fault is None:
                return
            kind = "meta_recovered" if fault.where == "meta" else "tier_recovered"
            self._event(kind, where=fault.where, fault_s=round(time.time() - fault.since, 3))
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

    def _retire(self, paus: np.ndarray) -> None:
        """Durably freed AUs: punch them, then release them once older I/O has drained."""
        on_cap = paus < self.ncap
        self.capacity.punch(paus[on_cap])
        self.flash.punch((paus[~on_cap].astype(np.int64) - self.fshift).astype(np.uint32))
        with self.lock:
            self.waiting.append((self.inflight.copy(), paus))
            self._release()

    @contextmanager
    def transaction(self, batch: WriteBatch):
        """A metadata change as one synced batch, after every pending write is durable.

        The caller adds its records to ``batch`` and map operations through the yielded
        ``MapTxn``; on a clean exit the batch is written and the in-memory state follows.
        """
        with self.flush_lock:
            try:
                self._commit()
            except OSError as e:
                raise io_failure(e) from None
            txn = MapTxn(self, batch)
            yield txn
            with self.lock:
                events, self.events = self.events, []
            for ev in events:
                put_event(batch, ev)
            marker = os.urandom(16)
            batch.put(KEY_TXN, marker)
            try:
                self.db.write(batch)
            except OSError as e:
                with self.lock:
                    self.events[:0] = events
                    self._fault_seen("meta", e)
                    # A write whose WAL record landed but whose sync failed comes back
                    # when RocksDB reopens: the first good commit looks (_resolve_txn).
                    self.in_doubt = (marker, txn, events)
                raise io_failure(e) from None
            txn.apply()

    def _resolve_txn(self) -> None:
        """After a good commit: apply the in-memory side of a failed transaction if its batch
        came back with the reopened meta DB (its marker is there), else forget it."""
        marker, txn, events = self.in_doubt
        self.in_doubt = None
        if self.db.get(KEY_TXN) != marker:
            return
        log.warning("a metadata change reported as failed was committed after all "
                    "(its WAL record survived the failed sync); applying it")
        with self.lock:
            self.events = [ev for ev in self.events if not any(ev is e for e in events)]
        txn.apply()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            self.capacity.close()
            self.flash.close()

    # --- moving a live map between tiers (vmblock vdisk move) ---------------------------------

    def _outside(self, amap: np.ndarray, tier: int) -> np.ndarray:
        lo, hi = self.bounds[tier]
        return (amap != kx.UNMAPPED) & ((amap < lo) | (amap >= hi))

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
        with self.move_lock:
            t0 = time.monotonic()
            with self.lock:
                need = int(np.count_nonzero(self._outside(self._map(mid), tier)))
                free = self.t_free[tier]
            if need > free:
                self.flush()     # frees of that tier become free once durable and drained
                with self.lock:
                    self._release()
                    free = self.t_free[tier]
            if need > free:
                raise NoSpace(f"not enough free space on the {TIER_NAMES[tier]} tier: the "
                              f"move needs {need * self.au} bytes ({need} AUs), "
                              f"{free * self.au} are free; nothing was moved")
            old_policy = self.tiers.get(mid, TIER_CAPACITY)
            self.tiers[mid] = tier
            moved = raced = steps = 0
            try:
                for _ in range(3):      # a revert during the move can bring AUs back
                    found = False
                    start = 0
                    while True:
                        with self.lock:
                            amap = self._map(mid)
                            if start >= len(amap):
                                break
                        m, r = self._move_step(mid, tier, start, chunk_aus)
                        found |= m + r > 0
                        moved += m
                        raced += r
                        steps += m > 0
                        start += chunk_aus
                    if not found:
                        break
            except BaseException:
                if mid in self.maps:
                    self.tiers[mid] = old_policy
                else:
                    self.tiers.pop(mid, None)
                raise
            return {"tier": TIER_NAMES[tier], "moved_aus": moved,
                    "moved_bytes": moved * self.au, "raced_aus": raced, "steps": steps,
                    "seconds": round(time.monotonic() - t0, 3)}

    def _move_step(self, mid: int, tier: int, start: int, chunk_aus: int) -> tuple[int, int]:
        """One step of ``move``: returns (AUs remapped, AUs rewritten or unmapped meanwhile).
        Under ``step_lock``, which ``check`` takes too: between its locked phases a step's
        refcounts and accounting are in flux."""
        with self.step_lock:
            return self._move_step_locked(mid, tier, start, chunk_aus)

    def _move_step_locked(self, mid: int, tier: int, start: int,
                          chunk_aus: int) -> tuple[int, int]:
        with self.lock:
            seg = self._map(mid)[start:start + chunk_aus]
            idx = np.flatnonzero(self._outside(seg, tier))
            if not len(idx):
                return 0, 0
            if len(idx) > self.t_free[tier]:
                raise NoSpace(f"the {TIER_NAMES[tier]} tier filled up during the move "
                              f"(other writes); the vdisk is partly moved, consistent: free "
                              f"space and run the move again")
            vs = idx + start
            olds = seg[idx].copy()
            news = self._alloc(tier, len(idx))
            self.held[news] = 1            # reserved: allocated to no one else
            self.t_free[tier] -= len(news)
            kx._add_refs(self.refcount, olds, MOVE_BIAS)
            self._biased = olds
            drain = self.inflight.copy()
        ok = False
        try:
            while not drain.isdisjoint(self.inflight):   # in-place writers that saw no bias
                time.sleep(0.0002)
            buf = memoryview(bytearray(self.au))
            for o, q in zip(olds.tolist(), news.tolist()):
                ofd, opos = self._pos(o)
                _preadv_all(ofd, buf, opos)
                fd, pos = self._pos(q)
                _pwritev_all(fd, [buf], pos)
            if MOVE_AWAIT_WRITE:
                self._await_write_in_step(mid, vs, olds)
            ok = True
        finally:
            # Remap with the bias still on: the 4 KiB path reads the map and then the
            # refcount without the lock, so a writer that read a vAU's old AU just before the
            # remap must still find it "shared" when it checks (and go round the lock).
            with self.lock:
                amap = self.maps.get(mid)
                keep = np.zeros(len(vs), dtype=bool)
                if ok and amap is not None:
                    inside = vs < len(amap)
                    keep[inside] = amap[vs[inside]] == olds[inside]
                kv, kn, ko = vs[keep], news[keep], olds[keep].copy()
                self.held[news] = 0
                if len(kv):
                    self.refcount[kn] = 1
                    amap[kv] = kn
                    self.t_used[tier] += len(kv)
                    for v, q in zip(kv.tolist(), kn.tolist()):
                        self.pending[(mid, v)] = q
                    kx._add_refs(self.refcount, ko, -1)     # biased: none reaches 0 here
                    self.last_write = next(self.tokens)
                self.t_free[tier] += int(np.count_nonzero(~keep))
                drain = self.inflight.copy()
            # ... and only once every I/O that may have read the old mapping has finished,
            # the bias goes (an old AU still shared with a snapshot must never look owned to a
            # writer that looked it up before the remap)
            while not drain.isdisjoint(self.inflight):
                time.sleep(0.0002)
            with self.lock:
                unbias = olds.copy()
                z = kx._add_refs(self.refcount, unbias, -MOVE_BIAS)
                self._hold(unbias[:z])      # last reference gone: remapped, rewritten, unmapped
                self._biased = None
        self.flush()
        return int(len(kv)), int(np.count_nonzero(~keep))

    def _await_write_in_step(self, mid: int, vs: np.ndarray, olds: np.ndarray) -> None:
        """Test hook (``VMBLOCK_TEST_MOVE_AWAIT_WRITE``): block until one of this step's vAUs
        inside the hook's byte range no longer points at its old AU (a write went round the
        bias), or ``MOVE_AWAIT_TIMEOUT``. Steps with no vAU in the range go on at once."""
        lo, hi = MOVE_AWAIT_WRITE
        sel = (vs * self.au < hi) & ((vs + 1) * self.au > lo)
        if not sel.any():
            return
        vs, olds = vs[sel], olds[sel]
        deadline = time.monotonic() + MOVE_AWAIT_TIMEOUT
        while time.monotonic() < deadline:
            with self.lock:
                amap = self.maps.get(mid)
                if amap is None or vs[-1] >= len(amap) or (amap[vs] != olds).any():
                    return
            time.sleep(0.001)
        log.warning("test hook: no write landed in the moving AUs of map %d within %.0f s",
                    mid, MOVE_AWAIT_TIMEOUT)

    # --- maps as a whole (snapshots, clones, revert, delete, resize) --------------------------

    def entries(self, mid: int) -> tuple[np.ndarray, np.ndarray]:
        """(vAUs, physical AUs) of one map: the live array if it is live, else the DB."""
        amap = self.maps.get(mid)
        if amap is not None:
            v = np.flatnonzero(amap != kx.UNMAPPED)
            return v.astype(np.uint32), amap[v].copy()
        _, v, p = self.scan(mid)
        return v, p

    # --- fsck ---------------------------------------------------------------------------------

    def check(self, maps_info: dict[int, dict], families: dict[int, int]) -> dict:
        """Check every map key against the records and the in-memory state.

        ``maps_info``: map id -> {"what": description, "size_bytes": n, "live": bool};
        ``families``: map id -> lineage family id (maps that may share AUs have the same one).
        """
        errors: list[str] = []
        with self.step_lock, self.flush_lock:
            self._commit()
            with self.lock:
                mids, vaus, lpaus, tiers = scan_maps(self.db)
                refcount = self._refs().copy()
                held = self.held.copy()
                live = {m: a.copy() for m, a in self.maps.items()}
                t_free, t_used = list(self.t_free), list(self.t_used)
        n = self.n_aus
        known = np.array(sorted(maps_info), dtype=np.int64)
        orphan = ~np.isin(mids, known)
        if orphan.any():
            errors.append(f"{int(orphan.sum())} map keys belong to no vdisk or snapshot "
                          f"(map ids {sorted(set(mids[orphan].tolist()))[:8]})")
        on_cap = tiers == TIER_CAPACITY
        on_flash = tiers == TIER_FLASH
        bad_tier = ~(on_cap | on_flash)
        if bad_tier.any():
            errors.append(f"{int(bad_tier.sum())} map keys name an unknown tier")
        out = bad_tier | (on_cap & (lpaus >= self.ncap))
        if (on_cap & (lpaus >= self.ncap)).any():
            errors.append(f"{int((on_cap & (lpaus >= self.ncap)).sum())} map keys point past "
                          f"the capacity tier ({self.ncap} AUs)")
        fl_out = on_flash & ((lpaus < self.flash_lo) | (lpaus >= self.flash.n_aus))
        if fl_out.any():
            errors.append(f"{int(fl_out.sum())} map keys point outside the flash tier's AU "
                          f"region (AUs {self.flash_lo}-{self.flash.n_aus - 1}; the cache "
                          f"slots are below)")
        out |= fl_out
        paus = lpaus.astype(np.int64)
        paus[on_flash] += self.fshift
        paus = np.where(out, 0, paus).astype(np.uint32)
        for mid, info in maps_info.items():
            sel = mids == mid
            limit = n_vaus(info["size_bytes"], self.au)
            beyond = vaus[sel] >= limit
            if beyond.any():
                errors.append(f"{info['what']}: {int(beyond.sum())} extents beyond its size")
            p = paus[sel]
            if len(np.unique(p)) != len(p):
                errors.append(f"{info['what']}: a physical AU is mapped twice in one map")
            if info.get("live"):
                arr = live.get(mid)
                want = kx.new_map(limit)
                keep = vaus[sel] < limit
                want[vaus[sel][keep]] = p[keep]
                if arr is None or len(arr) != len(want) or not np.array_equal(arr, want):
                    errors.append(f"{info['what']}: in-memory map differs from the meta DB")
        ok = ~orphan & ~out
        rebuilt = np.zeros(n, dtype=np.int64)
        np.add.at(rebuilt, paus[ok].astype(np.int64), 1)
        diff = np.flatnonzero(rebuilt != refcount.astype(np.int64))
        if len(diff):
            errors.append(f"{len(diff)} AUs have a reference count that differs from their "
                          f"references (e.g. AU {int(diff[0])}: {int(refcount[diff[0]])} vs "
                          f"{int(rebuilt[diff[0]])})")
        bad_held = np.flatnonzero(held.astype(bool) & (rebuilt > 0))
        if len(bad_held):
            errors.append(f"{len(bad_held)} AUs are both referenced and held as freed")
        in_use = int(np.count_nonzero(rebuilt))
        per_tier = {}
        for t, (lo, hi) in enumerate(self.bounds):
            used_t = int(np.count_nonzero(rebuilt[lo:hi]))
            held_t = int(np.count_nonzero(held[lo:hi]))
            per_tier[TIER_NAMES[t]] = {"aus": hi - lo, "used_aus": used_t, "held_aus": held_t}
            if used_t != t_used[t] or t_free[t] + t_used[t] + held_t != hi - lo:
                errors.append(f"space accounting on the {TIER_NAMES[t]} tier: {t_used[t]} "
                              f"used + {t_free[t]} free + {held_t} held != {hi - lo} AUs, or "
                              f"{used_t} referenced != {t_used[t]} used (leak)")
        # sharing only inside one lineage family: no AU of one VM readable from an unrelated one
        fam = np.array([families.get(int(m), -1 - int(m)) for m in mids[ok]], dtype=np.int64)
        order = np.argsort(paus[ok], kind="stable")
        sp, sf = paus[ok][order], fam[order]
        same = sp[1:] == sp[:-1]
        cross = same & (sf[1:] != sf[:-1])
        if cross.any():
            errors.append(f"{int(cross.sum())} AUs are shared between maps with no common "
                          f"lineage (e.g. AU {int(sp[1:][cross][0])})")
        return {
            "ok": not errors,
            "errors": errors,
            "maps": len(maps_info),
            "extents": int(len(mids)),
            "aus": n,
            "used_aus": in_use,
            "shared_aus": int(np.count_nonzero(rebuilt > 1)),
            "held_aus": int(np.count_nonzero(held)),
            "tiers": per_tier,
        }


class MapTxn:
    """Map operations of one metadata transaction; applied in memory after the batch is
    durable (so a failed write leaves memory as it was)."""

    def __init__(self, store: PoolStore, batch: WriteBatch):
        self.store = store
        self.batch = batch
        self.ref_add: list[np.ndarray] = []
        self.ref_sub: list[np.ndarray] = []
        self.new_live: dict[int, tuple[np.ndarray, int]] = {}
        self.drop_live: set[int] = set()
        self.new_tiers: dict[int, int] = {}

    def set_tier(self, mid: int, tier: int) -> None:
        """The tier new allocations of live map ``mid`` go to."""
        self.new_tiers[mid] = tier

    def copy_map(self, src: int, dst: int, dst_size: int | None = None) -> int:
        """Copy map ``src`` to the new map ``dst``; with ``dst_size`` it becomes a live vdisk
        map of that size. Returns the bytes mapped in the copy."""
        vaus, paus = self.store.entries(src)
        if dst_size is not None:
            keep = vaus < n_vaus(dst_size, self.store.au)
            vaus, paus = vaus[keep], paus[keep]
        put = self.batch.put
        value = self.store._value
        for v, p in zip(vaus.tolist(), paus.tolist()):
            put(map_key(dst, v), value(p))
        self.ref_add.append(paus)
        if dst_size is not None:
            amap = kx.new_map(n_vaus(dst_size, self.store.au))
            amap[vaus] = paus
            self.new_live[dst] = (amap, dst_size)
        return len(paus) * self.store.au

    def drop_map(self, mid: int) -> None:
        if mid in self.drop_live:
            return
        vaus, paus = self.store.entries(mid)
        delete = self.batch.delete
        for v in vaus.tolist():
            delete(map_key(mid, v))
        self.ref_sub.append(paus)
        self.drop_live.add(mid)

    def new_empty(self, mid: int, size: int) -> None:
        self.new_live[mid] = (kx.new_map(n_vaus(size, self.store.au)), size)

    def resize(self, mid: int, size: int) -> None:
        """Grow a live map (shrinking is refused by the caller)."""
        old = self.store.maps[mid]
        amap = kx.new_map(n_vaus(size, self.store.au))
        amap[:len(old)] = old
        self.new_live[mid] = (amap, size)

    def apply(self) -> None:
        s = self.store
        zeroed_all = []
        with s.lock:
            for paus in self.ref_add:
                kx.add_refs(s.refcount, paus.astype(np.uint32), 1)
            for paus in self.ref_sub:
                p = paus.astype(np.uint32)
                z = kx.add_refs(s.refcount, p, -1)
                if z:
                    zeroed_all.append(p[:z].copy())
            for mid in self.drop_live:
                s.maps.pop(mid, None)
                s.sizes.pop(mid, None)
                if mid not in self.new_live:
                    s.tiers.pop(mid, None)
                for key in [k for k in s.pending if k[0] == mid]:
                    del s.pending[key]
            for mid, (amap, size) in self.new_live.items():
                s.maps[mid] = amap
                s.sizes[mid] = size
            s.tiers.update(self.new_tiers)
            if zeroed_all:
                z = np.concatenate(zeroed_all)
                s.held[z] = 1
                c, f = s._split_tiers(z)
                s.t_used[0] -= c
                s.t_used[1] -= f
            s.level = min(s.level, s._level())
        if zeroed_all:
            s._retire(np.concatenate(zeroed_all))


def put_event(batch: WriteBatch, event: dict) -> None:
    """``event/<microseconds:020d>/<kind>`` -> JSON, so events list in time order."""
    key = f"event/{int(event['time'] * 1e6):020d}/{event['kind']}"
    batch.put(key.encode(), json.dumps(event).encode())


class ExtentStore(BackingStore):
    """One vdisk's blocks: a view of one live extent map of a ``PoolStore``."""

    abilities = frozenset({Unmappable, WriteSameable, LbaStatus})

    def __init__(self, pool: PoolStore, map_id: int, block_size: int = 512):
        if map_id not in pool.maps:
            raise PoolError(f"no live extent map {map_id}")
        self.pool = pool
        self.map_id = map_id
        self.block_size = block_size
        self.unmap_granularity = pool.au
        # bound methods for the hot path
        self._read = pool.read
        self._write = pool.write

    @property
    def size_bytes(self) -> int:
        return self.pool.sizes[self.map_id]

    @property
    def used_bytes(self) -> int:
        return self.pool.map_used_bytes(self.map_id)

    # The one-AU cases (every 4 KiB I/O) inline and without the pool lock: one array load
    # (atomic under the GIL), the in-flight token that keeps a concurrently freed AU from
    # being reused under us, one syscall. Everything else goes through PoolStore.

    def read_into(self, offset: int, buf: memoryview) -> None:
        pool = self.pool
        n = len(buf)
        au = pool.au
        first = offset // au
        if n and (offset + n - 1) // au == first:
            tok = next(pool.tokens)
            inflight = pool.inflight
            inflight.add(tok)
            try:
                amap = pool.maps.get(self.map_id)
                if amap is not None:
                    p = amap.item(first)
                    if p == UNMAPPED:
                        buf[:] = pool._zero[:n]
                    else:
                        if p < pool.ncap:
                            fd, pos = pool.fd, (p - first) * au + offset
                        else:
                            fd, pos = pool.ffd, (p - pool.fshift - first) * au + offset
                        if os.preadv(fd, [buf], pos) != n:
                            _preadv_all(fd, buf, pos)
                    return
            finally:
                inflight.discard(tok)
        self._read(self.map_id, offset, buf)

    def write(self, offset: int, data: memoryview) -> None:
        pool = self.pool
        n = len(data)
        au = pool.au
        first = offset // au
        if n and (offset + n - 1) // au == first and pool.fault is None:
            tok = next(pool.tokens)
            inflight = pool.inflight
            inflight.add(tok)
            try:
                amap = pool.maps.get(self.map_id)
                if amap is not None:
                    p = amap.item(first)
                    # owned: in place. The map is read again after the refcount: a
                    # copy-on-write (or a move) remaps first and drops the old AU's count
                    # after, so a count of 1 read after that drop comes with the new map.
                    if p != UNMAPPED and pool.refcount.item(p) == 1 \
                            and amap.item(first) == p:
                        if p < pool.ncap:
                            fd, pos = pool.fd, (p - first) * au + offset
                        else:
                            fd, pos = pool.ffd, (p - pool.fshift - first) * au + offset
                        if os.pwrite(fd, data, pos) != n:
                            _pwritev_all(fd, [data], pos)
                        pool.last_write = tok
                        return
            finally:
                inflight.discard(tok)
        self._write(self.map_id, offset, data)

    def flush(self) -> None:
        self.pool.flush()

    def unmap(self, offset: int, length: int) -> None:
        self.pool.unmap(self.map_id, offset, length)

    def write_same(self, offset: int, length: int, block: memoryview) -> None:
        self.pool.write_same(self.map_id, offset, length, block)

    def lba_status(self, offset: int) -> tuple[bool, int]:
        return self.pool.lba_status(self.map_id, offset, self.size_bytes)

    def mapped_aus(self) -> np.ndarray:
        """The vAU numbers of this vdisk that are mapped (what a cache preload reads)."""
        pool = self.pool
        with pool.lock:
            amap = pool.maps.get(self.map_id)
            return np.flatnonzero(amap != UNMAPPED) if amap is not None else np.empty(0, np.int64)

    def resize(self, size_bytes: int) -> None:
        raise InvalidArgument("resize a vdisk through the pool (vmblock vdisk resize)")

    def close(self) -> None:
        """The pool's tiers stay open for the other vdisks; nothing per vdisk to release."""
