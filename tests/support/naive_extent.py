"""Plain-Python twins of the kernels in native/extent.py (STYLE rule 12): the same inputs and
outputs, written for obviousness, so tests can compare the jitted kernels against them.

A map is (l1, leaves): vAU ``v`` lives in leaf ``l1[v // LEAF]`` at ``v % LEAF``; leaf 0
holds only UNMAPPED."""

from __future__ import annotations

UNMAPPED = 0xFFFFFFFF
LEAF = 256


def entry(l1, leaves, v):
    return int(leaves[int(l1[v // LEAF]) * LEAF + v % LEAF])


def lookup_batch(l1, leaves, vaus):
    n = len(l1) * LEAF
    return [entry(l1, leaves, v) if 0 <= v < n else UNMAPPED for v in vaus]


def classify(l1, leaves, refcount, first, count):
    paus, kinds, need = [], [], 0
    for v in range(first, first + count):
        p = entry(l1, leaves, v)
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


def run_length(l1, leaves, start, end):
    mapped = entry(l1, leaves, start) != UNMAPPED
    n = 0
    for v in range(start, end):
        if (entry(l1, leaves, v) != UNMAPPED) != mapped:
            break
        n += 1
    return bool(mapped), n


def count_mapped(l1, leaves):
    return sum(1 for v in range(len(l1) * LEAF) if entry(l1, leaves, v) != UNMAPPED)


def mapped_entries(l1, leaves):
    out = [(v, entry(l1, leaves, v)) for v in range(len(l1) * LEAF)]
    return [v for v, p in out if p != UNMAPPED], [p for _, p in out if p != UNMAPPED]


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


def tier_bounds(file_aus, tiers):
    cap = [f for f, t in zip(file_aus, tiers) if f != UNMAPPED and t == 0]
    fl = [f for f, t in zip(file_aus, tiers) if f != UNMAPPED and t != 0]
    return (max(cap) + 1 if cap else 0, min(fl) if fl else 1 << 32, max(fl) + 1 if fl else 0)


def count_refs(refcount, file_aus, tiers, fshift):
    out = []
    for f, t in zip(file_aus, tiers):
        if f == UNMAPPED:
            out.append(UNMAPPED)
            continue
        g = f + fshift if t else f
        out.append(g)
        refcount[g] += 1
    return out, sum(1 for f in file_aus if f != UNMAPPED)
