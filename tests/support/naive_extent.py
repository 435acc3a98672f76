"""Plain-Python twins of the kernels in native/extent.py (STYLE rule 12): the same inputs and
outputs, written for obviousness, so tests can compare the jitted kernels against them."""

from __future__ import annotations

UNMAPPED = 0xFFFFFFFF


def lookup_batch(amap, vaus):
    return [int(amap[v]) if 0 <= v < len(amap) else UNMAPPED for v in vaus]


def classify(amap, refcount, first, count):
    paus, kinds, need = [], [], 0
    for v in range(first, first + count):
        p = int(amap[v])
        paus.append(p)
        if p == UNMAPPED:
            kinds.append(0)
            need += 1
        elif refcount[p] == 1:
            kinds.append(1)
        else:
            kinds.append(2)
            need += 1
    return paus, kinds, need


def run_length(amap, start, end):
    mapped = amap[start] != UNMAPPED
    n = 0
    for v in range(start, end):
        if (amap[v] != UNMAPPED) != mapped:
            break
        n += 1
    return bool(mapped), n


def count_mapped(amap):
    return sum(1 for p in amap if p != UNMAPPED)


def alloc_scan(refcount, held, cursor, count):
    n = len(refcount)
    out = []
    if count <= 0:
        return out, cursor
    order = list(range(cursor, n)) + list(range(0, cursor))
    last = cursor
    for i in order:
        if refcount[i] == 0 and held[i] == 0:
            out.append(i)
            last = i
            if len(out) == count:
                return out, last + 1
    return out, None


def add_refs(refcount, paus, delta):
    zeroed = []
    for p in paus:
        if p == UNMAPPED:
            continue
        refcount[p] += delta
        if delta < 0 and refcount[p] == 0:
            zeroed.append(p)
    return zeroed


def phys_runs(paus):
    runs = []
    i = 0
    while i < len(paus):
        j = i + 1
        if paus[i] == UNMAPPED:
            while j < len(paus) and paus[j] == UNMAPPED:
                j += 1
        else:
            while j < len(paus) and paus[j] == paus[i] + (j - i):
                j += 1
        runs.append((i, j - i))
        i = j
    return runs
