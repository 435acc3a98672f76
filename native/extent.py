"""Extent-map kernels: per-vdisk AU -> physical AU lookups, run lengths, allocation scans.

A live vdisk's extent map is kept in memory as a dense ``uint32`` array indexed by virtual
allocation unit (vAU); each entry is the physical AU on the capacity tier or ``UNMAPPED``.
That costs 4 bytes per 64 KiB of *virtual* size (64 MiB per TiB of vdisk) and makes a lookup
one indexed load, so the batched path is limited by memory bandwidth, not by a binary search
(see docs/store.md for the trade-off against sorted run-length extents).

Reference counts per physical AU are a ``uint32`` array over the tier; ``held`` (``uint8``)
marks AUs freed by a change that is not yet durable or still visible to an I/O in flight,
which the allocator must skip.

Kernels are compiled with ``numba.jit(**JIT)`` (``native/jit.py``: nopython, cache, nogil),
which is ``njit`` without its "nopython is redundant" warning (the test suite makes warnings
errors). Every kernel is private (leading underscore) and takes only numpy arrays and integers; the
public wrappers below check shapes and dtypes once and call it. ``tests/store/naive.py`` holds a
plain-Python twin of each kernel and the tests compare the two on the same input.
"""

from __future__ import annotations

import numpy as np
from numba import jit

from .jit import JIT

UNMAPPED = np.uint32(0xFFFFFFFF)
MAP_DTYPE = np.uint32
REF_DTYPE = np.uint32

# kinds written by _classify
KIND_UNMAPPED = 0
KIND_OWNED = 1      # mapped and referenced once: overwrite in place
KIND_SHARED = 2     # mapped and shared with a snapshot or clone: copy on write


# --- kernels ---------------------------------------------------------------------------------

@jit(**JIT)
def _lookup_batch(amap, vaus, out):
    n = amap.shape[0]
    for i in range(vaus.shape[0]):
        v = vaus[i]
        if v >= 0 and v < n:
            out[i] = amap[v]
        else:
            out[i] = 0xFFFFFFFF
    return vaus.shape[0]


@jit(**JIT)
def _lookup_one(amap, vau):
    if vau >= 0 and vau < amap.shape[0]:
        return amap[vau]
    return np.uint32(0xFFFFFFFF)


@jit(**JIT)
def _classify(amap, refcount, first, count, paus, kinds):
    """Physical AU and kind of ``count`` vAUs from ``first``; returns how many need a new AU."""
    need = 0
    for i in range(count):
        p = amap[first + i]
        paus[i] = p
        if p == 0xFFFFFFFF:
            kinds[i] = 0
            need += 1
        elif refcount[p] == 1:
            kinds[i] = 1
        else:
            kinds[i] = 2
            need += 1
    return need


@jit(**JIT)
def _run_length(amap, start, end):
    """Length of the run of vAUs from ``start`` (< ``end``) that are all mapped or all not."""
    mapped = amap[start] != 0xFFFFFFFF
    i = start + 1
    while i < end and (amap[i] != 0xFFFFFFFF) == mapped:
        i += 1
    return i - start


@jit(**JIT)
def _count_mapped(amap):
    c = 0
    for i in range(amap.shape[0]):
        if amap[i] != 0xFFFFFFFF:
            c += 1
    return c


@jit(**JIT)
def _alloc_scan(refcount, held, cursor, count, out):
    """Next-fit: the first ``count`` AUs with refcount 0 and not held, scanning from ``cursor``
    and wrapping once. Writes them to ``out``; returns (found, cursor after the last one)."""
    n = refcount.shape[0]
    found = 0
    i = cursor
    if count <= 0 or count > out.shape[0]:
        return 0, cursor
    for _ in range(n):
        if i >= n:
            i = 0
        if refcount[i] == 0 and held[i] == 0:
            out[found] = i
            found += 1
            if found == count:
                return found, i + 1
        i += 1
    return found, i


@jit(**JIT)
def _add_refs(refcount, paus, delta):
    """refcount[p] += delta for every mapped p; with delta < 0 returns how many reached 0 and
    moves those AUs to the front of ``paus`` (in order), so the caller can hold them."""
    zeroed = 0
    for i in range(paus.shape[0]):
        p = paus[i]
        if p == 0xFFFFFFFF:
            continue
        if delta < 0:
            refcount[p] -= np.uint32(-delta)
            if refcount[p] == 0:
                paus[zeroed] = p
                zeroed += 1
        else:
            refcount[p] += np.uint32(delta)
    return zeroed


@jit(**JIT)
def _phys_runs(paus, count, starts, lens):
    """Split ``count`` looked-up AUs into runs that are contiguous on the tier (or all
    unmapped): starts[k] = index of the run's first AU, lens[k] = AUs in it. Returns runs."""
    runs = 0
    i = 0
    while i < count:
        j = i + 1
        p = paus[i]
        if p == 0xFFFFFFFF:
            while j < count and paus[j] == 0xFFFFFFFF:
                j += 1
        else:
            while j < count and paus[j] == p + (j - i):
                j += 1
        starts[runs] = i
        lens[runs] = j - i
        runs += 1
        i = j
    return runs


# --- validating wrappers ---------------------------------------------------------------------

def _check_map(amap: np.ndarray) -> None:
    if not isinstance(amap, np.ndarray) or amap.dtype != MAP_DTYPE or amap.ndim != 1:
        raise TypeError("extent map must be a 1-d uint32 numpy array")


def new_map(n_vaus: int) -> np.ndarray:
    """An extent map of ``n_vaus`` unmapped AUs."""
    if n_vaus < 0:
        raise ValueError("negative map length")
    return np.full(n_vaus, UNMAPPED, dtype=MAP_DTYPE)


def lookup_batch(amap: np.ndarray, vaus, out: np.ndarray | None = None) -> np.ndarray:
    """Physical AU of every vAU in ``vaus`` (UNMAPPED when unmapped or out of range)."""
    _check_map(amap)
    vaus = np.ascontiguousarray(vaus, dtype=np.int64)
    if out is None:
        out = np.empty(vaus.shape[0], dtype=MAP_DTYPE)
    elif out.dtype != MAP_DTYPE or out.shape[0] < vaus.shape[0]:
        raise ValueError("out must be a uint32 array at least as long as vaus")
    _lookup_batch(amap, vaus, out)
    return out


def lookup(amap: np.ndarray, vau: int) -> int:
    """Physical AU of one vAU, or UNMAPPED."""
    _check_map(amap)
    return int(_lookup_one(amap, int(vau)))


def classify(amap: np.ndarray, refcount: np.ndarray, first: int, count: int,
             paus: np.ndarray, kinds: np.ndarray) -> int:
    _check_map(amap)
    if first < 0 or count < 0 or first + count > amap.shape[0]:
        raise ValueError("range outside the map")
    if paus.shape[0] < count or kinds.shape[0] < count:
        raise ValueError("output arrays too short")
    return int(_classify(amap, refcount, first, count, paus, kinds))


def run_length(amap: np.ndarray, start: int, end: int) -> tuple[bool, int]:
    """(mapped, length) of the run of like vAUs starting at ``start``, not past ``end``."""
    _check_map(amap)
    if not 0 <= start < end <= amap.shape[0]:
        raise ValueError("bad run range")
    return bool(amap[start] != UNMAPPED), int(_run_length(amap, start, end))


def count_mapped(amap: np.ndarray) -> int:
    _check_map(amap)
    return int(_count_mapped(amap))


def alloc_scan(refcount: np.ndarray, held: np.ndarray, cursor: int, count: int,
               out: np.ndarray) -> tuple[int, int]:
    if refcount.shape != held.shape or out.shape[0] < count:
        raise ValueError("refcount/held differ in shape or out is too short")
    found, cur = _alloc_scan(refcount, held, int(cursor) % max(refcount.shape[0], 1),
                             int(count), out)
    return int(found), int(cur)


def add_refs(refcount: np.ndarray, paus: np.ndarray, delta: int) -> int:
    if paus.dtype != MAP_DTYPE or refcount.dtype != REF_DTYPE:
        raise TypeError("paus must be uint32, refcount uint32")
    return int(_add_refs(refcount, paus, int(delta)))


def phys_runs(paus: np.ndarray, count: int, starts: np.ndarray, lens: np.ndarray) -> int:
    if paus.shape[0] < count or starts.shape[0] < count or lens.shape[0] < count:
        raise ValueError("arrays shorter than count")
    return int(_phys_runs(paus, count, starts, lens))


def warm() -> None:
    """Compile (or load from the on-disk cache) every kernel, so the first I/O is not slow."""
    amap = new_map(8)
    amap[1] = 3
    refs = np.zeros(8, dtype=REF_DTYPE)
    held = np.zeros(8, dtype=np.uint8)
    refs[3] = 1
    lookup_batch(amap, np.arange(4))
    lookup(amap, 1)
    paus = np.empty(8, dtype=MAP_DTYPE)
    kinds = np.empty(8, dtype=np.uint8)
    classify(amap, refs, 0, 4, paus, kinds)
    run_length(amap, 0, 8)
    count_mapped(amap)
    out = np.empty(2, dtype=np.int64)
    alloc_scan(refs, held, 0, 2, out)
    add_refs(refs, np.array([3], dtype=MAP_DTYPE), 1)
    add_refs(refs, np.array([3], dtype=MAP_DTYPE), -1)
    starts = np.empty(8, dtype=np.int64)
    lens = np.empty(8, dtype=np.int64)
    phys_runs(paus, 4, starts, lens)
