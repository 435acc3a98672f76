"""Extent-map kernels: two-level sparse maps vAU -> physical AU, run lengths, allocation scans.

A live vdisk's extent map is two arrays (see ``vmblock.store.maps`` for who owns them):

* ``l1`` (``uint32``, one entry per ``LEAF_AUS`` vAUs): the number of the leaf that holds that
  stretch of the map, or ``NO_LEAF`` (0, ``native/leaf.py``, with the other constants of a
  leaf);
* ``leaves`` (``uint32``, flat): the pool's leaf arena, leaf ``k`` being entries
  ``[k * LEAF_AUS, (k + 1) * LEAF_AUS)``; each entry is a global physical AU or ``UNMAPPED``.
  Leaf 0 is never written and holds only ``UNMAPPED``, so an absent leaf needs no branch:
  the physical AU of vAU ``v`` is always ``leaves[(l1[v >> LEAF_BITS] << LEAF_BITS) |
  (v & LEAF_MASK)]`` -- one L1 load and one leaf load.

Memory is proportional to mapped data: 4 bytes per entry of a used leaf (a leaf is allocated
on the first mapping in its 16 MiB of vdisk) plus 4 bytes of L1 per 16 MiB of vdisk size.

Reference counts per physical AU are a ``uint32`` array over the tiers; ``held`` (``uint8``)
marks AUs freed by a change that is not yet durable or still visible to an I/O in flight,
which the allocator must skip.

Kernels are compiled with ``numba.jit(**JIT)`` (``native/jit.py``: nopython, cache, nogil),
which is ``njit`` without its "nopython is redundant" warning (the test suite makes warnings
errors). Every kernel is private (leading underscore) and takes only numpy arrays and
integers; the public wrappers below check shapes and dtypes once and call it.
``tests/support/naive_extent.py`` holds a plain-Python twin of each kernel and the tests
compare the two on the same input.
"""

from __future__ import annotations

import numpy as np
from numba import jit

from .jit import JIT
from .leaf import LEAF_AUS, LEAF_BITS, LEAF_MASK, UNMAPPED_AU

UNMAPPED = np.uint32(UNMAPPED_AU)
MAP_DTYPE = np.uint32
REF_DTYPE = np.uint32
L1_DTYPE = np.uint32

# kinds written by _classify
KIND_UNMAPPED = 0
KIND_OWNED = 1      # mapped and referenced once: overwrite in place
KIND_SHARED = 2     # mapped and shared with a snapshot or clone: copy on write


# --- kernels ---------------------------------------------------------------------------------

@jit(**JIT)
def _entry(l1, virtual_au):
    """Index in the leaf arena of vAU ``virtual_au`` (which must be inside ``l1``)."""
    return (np.int64(l1[virtual_au >> LEAF_BITS]) << LEAF_BITS) | (virtual_au & LEAF_MASK)


@jit(**JIT)
def _lookup_batch(l1, leaves, virtual_aus, out):
    """Physical AU of every vAU into ``out`` (UNMAPPED when out of range); returns how many."""
    n = np.int64(l1.shape[0]) << LEAF_BITS
    for i in range(virtual_aus.shape[0]):
        v = virtual_aus[i]
        if v >= 0 and v < n:
            out[i] = leaves[_entry(l1, v)]
        else:
            out[i] = 0xFFFFFFFF
    return virtual_aus.shape[0]


@jit(**JIT)
def _lookup_range(l1, leaves, first, count, out):
    """Physical AUs of the ``count`` vAUs from ``first`` (inside ``l1``) into ``out``."""
    for i in range(count):
        out[i] = leaves[_entry(l1, first + i)]
    return count


@jit(**JIT)
def _lookup_one(l1, leaves, virtual_au):
    """Physical AU of one vAU, UNMAPPED when out of range."""
    if virtual_au >= 0 and virtual_au < (np.int64(l1.shape[0]) << LEAF_BITS):
        return leaves[_entry(l1, virtual_au)]
    return np.uint32(0xFFFFFFFF)


@jit(**JIT)
def _classify(l1, leaves, refcounts, first, count, physical_aus, kinds):
    """Physical AU and kind of ``count`` vAUs from ``first``; returns how many need a new AU."""
    need = 0
    for i in range(count):
        p = leaves[_entry(l1, first + i)]
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
def _run_length(l1, leaves, start, end):
    """Length of the run of vAUs from ``start`` (< ``end``) that are all mapped or all not;
    absent leaves are skipped whole."""
    mapped = leaves[_entry(l1, start)] != 0xFFFFFFFF
    i = start + 1
    while i < end:
        if (i & LEAF_MASK) == 0 and l1[i >> LEAF_BITS] == 0:
            if mapped:
                break
            i += LEAF_AUS
            continue
        if (leaves[_entry(l1, i)] != 0xFFFFFFFF) != mapped:
            break
        i += 1
    return min(i, end) - start


@jit(**JIT)
def _count_mapped(l1, leaves):
    """vAUs of the map that are mapped (only present leaves are read)."""
    c = 0
    for s in range(l1.shape[0]):
        leaf = np.int64(l1[s])
        if leaf == 0:
            continue
        base = leaf << LEAF_BITS
        for j in range(LEAF_AUS):
            if leaves[base + j] != 0xFFFFFFFF:
                c += 1
    return c


@jit(**JIT)
def _mapped_entries(l1, leaves, virtual_aus, physical_aus):
    """(vAU, physical AU) of every mapped vAU, in vAU order, into the two arrays (each as
    long as the present leaves have entries); returns how many."""
    c = 0
    for s in range(l1.shape[0]):
        leaf = np.int64(l1[s])
        if leaf == 0:
            continue
        base = leaf << LEAF_BITS
        for j in range(LEAF_AUS):
            p = leaves[base + j]
            if p != 0xFFFFFFFF:
                virtual_aus[c] = (np.int64(s) << LEAF_BITS) | j
                physical_aus[c] = p
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
def _tier_bounds(file_aus, tiers):
    """(1 + the highest capacity AU, the lowest flash AU, 1 + the highest flash AU) among the
    mapped entries of (AU in its tier file, tier) pairs; (0, 2**32, 0) when there are none."""
    cap_top = 0
    fl_lo = np.int64(1) << 32
    fl_top = 0
    for i in range(file_aus.shape[0]):
        f = np.int64(file_aus[i])
        if f == 0xFFFFFFFF:
            continue
        if tiers[i] == 0:
            if f + 1 > cap_top:
                cap_top = f + 1
        else:
            if f < fl_lo:
                fl_lo = f
            if f + 1 > fl_top:
                fl_top = f + 1
    return cap_top, fl_lo, fl_top


@jit(**JIT)
def _count_refs(refcounts, file_aus, tiers, fshift, global_aus):
    """Global AU of every (AU in its tier file, tier) pair into ``global_aus`` (flash AUs
    shifted by ``fshift``, UNMAPPED kept) and one reference each into ``refcounts``; returns
    how many entries are mapped."""
    c = 0
    for i in range(file_aus.shape[0]):
        f = file_aus[i]
        if f == 0xFFFFFFFF:
            global_aus[i] = f
            continue
        g = np.int64(f) + fshift if tiers[i] != 0 else np.int64(f)
        global_aus[i] = g
        refcounts[g] += 1
        c += 1
    return c


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

def _check_map(l1: np.ndarray, leaves: np.ndarray) -> None:
    for a, what in ((l1, "l1"), (leaves, "leaves")):
        if not isinstance(a, np.ndarray) or a.dtype != MAP_DTYPE or a.ndim != 1:
            raise TypeError(f"{what} must be a 1-d uint32 numpy array")
    if leaves.shape[0] < LEAF_AUS:
        raise ValueError("the leaf arena must hold at least leaf 0")


def n_leaves(n_virtual_aus: int) -> int:
    """L1 entries of a map of ``n_virtual_aus`` vAUs."""
    if n_virtual_aus < 0:
        raise ValueError("negative map length")
    return -(-n_virtual_aus // LEAF_AUS)


def lookup_batch(l1: np.ndarray, leaves: np.ndarray, virtual_aus,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Physical AU of every vAU in ``virtual_aus`` (UNMAPPED when unmapped or out of range)."""
    _check_map(l1, leaves)
    virtual_aus = np.ascontiguousarray(virtual_aus, dtype=np.int64)
    if out is None:
        out = np.empty(virtual_aus.shape[0], dtype=MAP_DTYPE)
    elif out.dtype != MAP_DTYPE or out.shape[0] < virtual_aus.shape[0]:
        raise ValueError("out must be a uint32 array at least as long as virtual_aus")
    _lookup_batch(l1, leaves, virtual_aus, out)
    return out


def lookup(l1: np.ndarray, leaves: np.ndarray, virtual_au: int) -> int:
    """Physical AU of one vAU, or UNMAPPED."""
    _check_map(l1, leaves)
    return int(_lookup_one(l1, leaves, int(virtual_au)))


def _check_range(l1: np.ndarray, first: int, count: int) -> None:
    if first < 0 or count < 0 or first + count > l1.shape[0] * LEAF_AUS:
        raise ValueError("range outside the map")


def lookup_range(l1: np.ndarray, leaves: np.ndarray, first: int, count: int,
                 out: np.ndarray) -> np.ndarray:
    """Physical AUs of ``count`` consecutive vAUs from ``first`` into ``out``."""
    _check_map(l1, leaves)
    _check_range(l1, first, count)
    if out.dtype != MAP_DTYPE or out.shape[0] < count:
        raise ValueError("out must be a uint32 array at least count long")
    _lookup_range(l1, leaves, int(first), int(count), out)
    return out[:count]


def classify(l1: np.ndarray, leaves: np.ndarray, refcounts: np.ndarray, first: int,
             count: int, physical_aus: np.ndarray, kinds: np.ndarray) -> int:
    """Physical AU and kind (KIND_*) of ``count`` vAUs from ``first`` into the two output
    arrays; returns how many of them a write needs a new AU for (unmapped or shared)."""
    _check_map(l1, leaves)
    _check_range(l1, first, count)
    if physical_aus.shape[0] < count or kinds.shape[0] < count:
        raise ValueError("output arrays too short")
    return int(_classify(l1, leaves, refcounts, int(first), int(count), physical_aus, kinds))


def run_length(l1: np.ndarray, leaves: np.ndarray, start: int, end: int) -> tuple[bool, int]:
    """(mapped, length) of the run of like vAUs starting at ``start``, not past ``end``."""
    _check_map(l1, leaves)
    if not 0 <= start < end <= l1.shape[0] * LEAF_AUS:
        raise ValueError("bad run range")
    mapped = int(_lookup_one(l1, leaves, int(start))) != int(UNMAPPED)
    return mapped, int(_run_length(l1, leaves, int(start), int(end)))


def count_mapped(l1: np.ndarray, leaves: np.ndarray) -> int:
    """vAUs of the map that are mapped (the vdisk's used AUs)."""
    _check_map(l1, leaves)
    return int(_count_mapped(l1, leaves))


def mapped_entries(l1: np.ndarray, leaves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vAUs as int64, physical AUs) of every mapped vAU of the map, in vAU order."""
    _check_map(l1, leaves)
    room = int(np.count_nonzero(l1)) * LEAF_AUS
    vaus = np.empty(room, dtype=np.int64)
    paus = np.empty(room, dtype=MAP_DTYPE)
    n = int(_mapped_entries(l1, leaves, vaus, paus))
    return vaus[:n], paus[:n]


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
    if physical_aus.dtype != MAP_DTYPE or refcounts.dtype != REF_DTYPE \
            or physical_aus.ndim != 1:
        raise TypeError("physical_aus must be 1-d uint32, refcounts uint32")
    return int(_add_refs(refcounts, physical_aus, int(delta)))


def tier_bounds(file_aus: np.ndarray, tiers: np.ndarray) -> tuple[int, int, int]:
    """(1 + highest capacity AU, lowest flash AU, 1 + highest flash AU) of the mapped entries
    of (AU in its tier file, tier) pairs (``_tier_bounds``); (0, 2**32, 0) when none."""
    if file_aus.shape != tiers.shape or file_aus.dtype != MAP_DTYPE or file_aus.ndim != 1:
        raise TypeError("file_aus must be 1-d uint32, tiers of the same shape")
    a, b, c = _tier_bounds(file_aus, tiers)
    return int(a), int(b), int(c)


def count_refs(refcounts: np.ndarray, file_aus: np.ndarray, tiers: np.ndarray,
               fshift: int) -> tuple[np.ndarray, int]:
    """(global AUs of the pairs, mapped entries), adding a reference to ``refcounts`` for
    each mapped one (``_count_refs``); the caller checked every AU is inside ``refcounts``."""
    if file_aus.shape != tiers.shape or file_aus.dtype != MAP_DTYPE or file_aus.ndim != 1 \
            or refcounts.dtype != REF_DTYPE:
        raise TypeError("file_aus must be 1-d uint32, tiers of the same shape, refcounts "
                        "uint32")
    out = np.empty(file_aus.shape[0], dtype=MAP_DTYPE)
    n = _count_refs(refcounts, file_aus, tiers, int(fshift), out)
    return out, int(n)


def phys_runs(physical_aus: np.ndarray, count: int, run_starts: np.ndarray,
              run_lengths: np.ndarray) -> int:
    """Runs of AUs contiguous on the tier among the first ``count`` (``_phys_runs``)."""
    if physical_aus.shape[0] < count or run_starts.shape[0] < count \
            or run_lengths.shape[0] < count:
        raise ValueError("arrays shorter than count")
    return int(_phys_runs(physical_aus, count, run_starts, run_lengths))


def sample_map(n_virtual_aus: int, leaf_count: int) -> tuple[np.ndarray, np.ndarray]:
    """A standalone (l1, leaves) pair with nothing mapped and room for ``leaf_count`` leaves
    besides leaf 0 (for tests and benchmarks; the store uses its shared arena)."""
    l1 = np.zeros(n_leaves(n_virtual_aus), dtype=L1_DTYPE)
    leaves = np.full((leaf_count + 1) * LEAF_AUS, UNMAPPED, dtype=MAP_DTYPE)
    return l1, leaves


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``, as a worker sees the shared arenas."""
    view = a.view()
    view.flags.writeable = False
    return view


def warm() -> None:
    """Compile (or load from the on-disk cache) every kernel, so the first I/O is not slow."""
    l1, leaves = sample_map(2 * LEAF_AUS, 1)
    l1[1] = 1
    leaves[LEAF_AUS + 1] = 3
    refs = np.zeros(8, dtype=REF_DTYPE)
    held = np.zeros(8, dtype=np.uint8)
    refs[3] = 1
    lookup_batch(l1, leaves, np.arange(4))
    # a worker maps the arenas read-only: to Numba another type, so another compilation
    lookup_batch(read_only(l1), read_only(leaves), np.arange(4))
    lookup(l1, leaves, 1)
    physical_aus = np.empty(8, dtype=MAP_DTYPE)
    kinds = np.empty(8, dtype=np.uint8)
    lookup_range(l1, leaves, 0, 4, physical_aus)
    classify(l1, leaves, refs, 0, 4, physical_aus, kinds)
    run_length(l1, leaves, 0, 2 * LEAF_AUS)
    count_mapped(l1, leaves)
    mapped_entries(l1, leaves)
    out = np.empty(2, dtype=np.int64)
    alloc_scan(refs, held, 0, 2, out)
    add_refs(refs, np.array([3], dtype=MAP_DTYPE), 1)
    add_refs(refs, np.array([3], dtype=MAP_DTYPE), -1)
    run_starts = np.empty(8, dtype=np.int64)
    run_lengths = np.empty(8, dtype=np.int64)
    phys_runs(physical_aus, 4, run_starts, run_lengths)
    fa = np.array([3, 0xFFFFFFFF, 1], dtype=MAP_DTYPE)
    ti = np.array([0, 0, 1], dtype=np.uint8)
    tier_bounds(fa, ti)
    count_refs(np.zeros(8, dtype=REF_DTYPE), fa, ti, 4)
