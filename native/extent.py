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
def _lookup_batch(extent_map, virtual_aus, out):
    """Physical AU of every vAU into ``out`` (UNMAPPED when out of range); returns how many."""
    n = extent_map.shape[0]
    for i in range(virtual_aus.shape[0]):
        v = virtual_aus[i]
        if v >= 0 and v < n:
            out[i] = extent_map[v]
        else:
            out[i] = 0xFFFFFFFF
    return virtual_aus.shape[0]


@jit(**JIT)
def _lookup_one(extent_map, virtual_au):
    """Physical AU of one vAU, UNMAPPED when out of range."""
    if virtual_au >= 0 and virtual_au < extent_map.shape[0]:
        return extent_map[virtual_au]
    return np.uint32(0xFFFFFFFF)


@jit(**JIT)
def _classify(extent_map, refcounts, first, count, physical_aus, kinds):
    """Physical AU and kind of ``count`` vAUs from ``first``; returns how many need a new AU."""
    need = 0
    for i in range(count):
        p = extent_map[first + i]
        physical_aus[i] = p
        if p == 0xFFFFFFFF:
            kinds[i] = 0
            need += 1
        elif refcounts[p] == 1:
            kinds[i] = 1
        else:
            kinds[i] = 2
            need += 1
    return need


@jit(**JIT)
def _run_length(extent_map, start, end):
    """Length of the run of vAUs from ``start`` (< ``end``) that are all mapped or all not."""
    mapped = extent_map[start] != 0xFFFFFFFF
    i = start + 1
    while i < end and (extent_map[i] != 0xFFFFFFFF) == mapped:
        i += 1
    return i - start


@jit(**JIT)
def _count_mapped(extent_map):
    """vAUs of the map that are mapped."""
    c = 0
    for i in range(extent_map.shape[0]):
        if extent_map[i] != 0xFFFFFFFF:
            c += 1
    return c


@jit(**JIT)
def _alloc_scan(refcounts, held, cursor, count, out):
    """Next-fit: the first ``count`` AUs with reference count 0 and not held, scanning from
    ``cursor`` and wrapping once. Writes them to ``out``; returns (found, cursor after the last
    one)."""
    n = refcounts.shape[0]
    found = 0
    i = cursor
    if count <= 0 or count > out.shape[0]:
        return 0, cursor
    for _ in range(n):
        if i >= n:
            i = 0
        if refcounts[i] == 0 and held[i] == 0:
            out[found] = i
            found += 1
            if found == count:
                return found, i + 1
        i += 1
    return found, i


@jit(**JIT)
def _add_refs(refcounts, physical_aus, delta):
    """refcounts[p] += delta for every mapped p; with delta < 0 returns how many reached 0 and
    moves those AUs to the front of ``physical_aus`` (in order), so the caller can hold them."""
    zeroed = 0
    for i in range(physical_aus.shape[0]):
        p = physical_aus[i]
        if p == 0xFFFFFFFF:
            continue
        if delta < 0:
            refcounts[p] -= np.uint32(-delta)
            if refcounts[p] == 0:
                physical_aus[zeroed] = p
                zeroed += 1
        else:
            refcounts[p] += np.uint32(delta)
    return zeroed


@jit(**JIT)
def _phys_runs(physical_aus, count, run_starts, run_lengths):
    """Split ``count`` looked-up AUs into runs that are contiguous on the tier (or all
    unmapped): run_starts[k] = index of the run's first AU, run_lengths[k] = AUs in it.
    Returns the number of runs."""
    runs = 0
    i = 0
    while i < count:
        j = i + 1
        p = physical_aus[i]
        if p == 0xFFFFFFFF:
            while j < count and physical_aus[j] == 0xFFFFFFFF:
                j += 1
        else:
            while j < count and physical_aus[j] == p + (j - i):
                j += 1
        run_starts[runs] = i
        run_lengths[runs] = j - i
        runs += 1
        i = j
    return runs


# --- validating wrappers ---------------------------------------------------------------------

def _check_map(extent_map: np.ndarray) -> None:
    if not isinstance(extent_map, np.ndarray) or extent_map.dtype != MAP_DTYPE \
            or extent_map.ndim != 1:
        raise TypeError("extent map must be a 1-d uint32 numpy array")


def new_map(n_virtual_aus: int) -> np.ndarray:
    """An extent map of ``n_virtual_aus`` unmapped AUs."""
    if n_virtual_aus < 0:
        raise ValueError("negative map length")
    return np.full(n_virtual_aus, UNMAPPED, dtype=MAP_DTYPE)


def lookup_batch(extent_map: np.ndarray, virtual_aus,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Physical AU of every vAU in ``virtual_aus`` (UNMAPPED when unmapped or out of range)."""
    _check_map(extent_map)
    virtual_aus = np.ascontiguousarray(virtual_aus, dtype=np.int64)
    if out is None:
        out = np.empty(virtual_aus.shape[0], dtype=MAP_DTYPE)
    elif out.dtype != MAP_DTYPE or out.shape[0] < virtual_aus.shape[0]:
        raise ValueError("out must be a uint32 array at least as long as virtual_aus")
    _lookup_batch(extent_map, virtual_aus, out)
    return out


def lookup(extent_map: np.ndarray, virtual_au: int) -> int:
    """Physical AU of one vAU, or UNMAPPED."""
    _check_map(extent_map)
    return int(_lookup_one(extent_map, int(virtual_au)))


def classify(extent_map: np.ndarray, refcounts: np.ndarray, first: int, count: int,
             physical_aus: np.ndarray, kinds: np.ndarray) -> int:
    """Physical AU and kind (KIND_*) of ``count`` vAUs from ``first`` into the two output
    arrays; returns how many of them a write needs a new AU for (unmapped or shared)."""
    _check_map(extent_map)
    if first < 0 or count < 0 or first + count > extent_map.shape[0]:
        raise ValueError("range outside the map")
    if physical_aus.shape[0] < count or kinds.shape[0] < count:
        raise ValueError("output arrays too short")
    return int(_classify(extent_map, refcounts, first, count, physical_aus, kinds))


def run_length(extent_map: np.ndarray, start: int, end: int) -> tuple[bool, int]:
    """(mapped, length) of the run of like vAUs starting at ``start``, not past ``end``."""
    _check_map(extent_map)
    if not 0 <= start < end <= extent_map.shape[0]:
        raise ValueError("bad run range")
    return bool(extent_map[start] != UNMAPPED), int(_run_length(extent_map, start, end))


def count_mapped(extent_map: np.ndarray) -> int:
    """vAUs of the map that are mapped (the vdisk's used AUs)."""
    _check_map(extent_map)
    return int(_count_mapped(extent_map))


def alloc_scan(refcounts: np.ndarray, held: np.ndarray, cursor: int, count: int,
               out: np.ndarray) -> tuple[int, int]:
    """Next-fit allocation scan (``_alloc_scan``) from ``cursor`` wrapped into the tier:
    (AUs found into ``out``, the cursor after the last one)."""
    if refcounts.shape != held.shape or out.shape[0] < count:
        raise ValueError("refcounts/held differ in shape or out is too short")
    found, cur = _alloc_scan(refcounts, held, int(cursor) % max(refcounts.shape[0], 1),
                             int(count), out)
    return int(found), int(cur)


def add_refs(refcounts: np.ndarray, physical_aus: np.ndarray, delta: int) -> int:
    """Add ``delta`` to the reference count of every mapped AU (``_add_refs``); with a
    negative delta, returns how many reached 0, moved to the front of ``physical_aus``."""
    if physical_aus.dtype != MAP_DTYPE or refcounts.dtype != REF_DTYPE:
        raise TypeError("physical_aus must be uint32, refcounts uint32")
    return int(_add_refs(refcounts, physical_aus, int(delta)))


def phys_runs(physical_aus: np.ndarray, count: int, run_starts: np.ndarray,
              run_lengths: np.ndarray) -> int:
    """Runs of AUs contiguous on the tier among the first ``count`` (``_phys_runs``)."""
    if physical_aus.shape[0] < count or run_starts.shape[0] < count \
            or run_lengths.shape[0] < count:
        raise ValueError("arrays shorter than count")
    return int(_phys_runs(physical_aus, count, run_starts, run_lengths))


def warm() -> None:
    """Compile (or load from the on-disk cache) every kernel, so the first I/O is not slow."""
    extent_map = new_map(8)
    extent_map[1] = 3
    refs = np.zeros(8, dtype=REF_DTYPE)
    held = np.zeros(8, dtype=np.uint8)
    refs[3] = 1
    lookup_batch(extent_map, np.arange(4))
    lookup(extent_map, 1)
    physical_aus = np.empty(8, dtype=MAP_DTYPE)
    kinds = np.empty(8, dtype=np.uint8)
    classify(extent_map, refs, 0, 4, physical_aus, kinds)
    run_length(extent_map, 0, 8)
    count_mapped(extent_map)
    out = np.empty(2, dtype=np.int64)
    alloc_scan(refs, held, 0, 2, out)
    add_refs(refs, np.array([3], dtype=MAP_DTYPE), 1)
    add_refs(refs, np.array([3], dtype=MAP_DTYPE), -1)
    run_starts = np.empty(8, dtype=np.int64)
    run_lengths = np.empty(8, dtype=np.int64)
    phys_runs(physical_aus, 4, run_starts, run_lengths)
