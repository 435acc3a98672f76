"""The slow twin of ``native/cache.py``: the same grouped S3-FIFO and arbiter in plain Python.

Written from the algorithm in ``vmblock/cache/directory.py``'s docstring with dicts and
OrderedDicts (newest at the end), no hash table, no arrays. Tests run both on the same input and
require identical hits, slots and counters.
"""

from __future__ import annotations

from collections import OrderedDict

from vmblock.cache.directory import COUNTERS
from vmblock.cache.groups import PROMOTE
from vmblock.cache.params import parse_params

C = {name: i for i, name in enumerate(COUNTERS)}


class NaiveCache:
    def __init__(self, nslots, groups, nvdisks=1, params=None, block_size=4096):
        p = parse_params(params)
        self.small_ratio = p["small-size-ratio"]
        self.ghost_ratio = p["ghost-size-ratio"]
        self.threshold = p["move-to-main-threshold"]
        self.window = p["idle-window"] or nslots
        self.n = nslots
        self.block_size = block_size
        self.ng = len(groups)
        self.ghost_pool = int(self.ghost_ratio * nslots) + self.ng + 1
        self.prio = [g.priority for g in groups]
        self.min = [int(g.min * nslots + 1e-9) for g in groups]
        self.max = [(max(1, int(g.max * nslots + 1e-9)) if g.max > 0 else 0) for g in groups]
        self.promote = [PROMOTE[g.promote] for g in groups]
        self.pinned = [g.pinned for g in groups]
        self.evicted = [False] * self.ng
        self.last = [-1] * self.ng
        self.clock = 0
        self.small = [OrderedDict() for _ in groups]
        self.main = [OrderedDict() for _ in groups]
        self.ghost = [OrderedDict() for _ in groups]     # (vd, key) -> None
        self.where = {}                                  # (vd, key) -> slot
        self.ghost_of = {}                               # (vd, key) -> group
        self.info = {}                                   # slot -> [vd, key, group, is_main, freq]
        self.free = list(range(nslots - 1, -1, -1))      # stack, top at the end
        self.vd_group = [0] * nvdisks
        self.vd_pinned = [False] * nvdisks
        self.vd_cnt = [[0] * len(COUNTERS) for _ in range(nvdisks)]
        self.grp_cnt = [[0] * len(COUNTERS) for _ in groups]

    def used(self, g):
        return len(self.small[g]) + len(self.main[g])

    def _count(self, vd, g, name, n=1):
        self.vd_cnt[vd][C[name]] += n
        self.grp_cnt[g][C[name]] += n

    def _victim(self, g):
        if self.used(g) >= self.max[g]:
            return g if not self.pinned[g] and self.used(g) > 0 else None
        if self.free:
            return "free"
        over = [(self.used(h) - self.max[h], -h) for h in range(self.ng)
                if not self.pinned[h] and self.used(h) > self.max[h]]
        if over:
            return -max(over)[1]
        cands = []
        for h in range(self.ng):
            if self.pinned[h]:
                continue
            demand = self.last[h] >= 0 and self.clock - self.last[h] <= self.window
            excess = self.used(h) - (self.min[h] if demand else 0)
            if excess > 0:
                cands.append((self.prio[h], -excess, h))
        if cands:
            return min(cands)[2]
        return g if not self.pinned[g] and self.used(g) > 0 else None

    def _ghost_add(self, v, used, vd, key):
        cap = int(self.ghost_ratio * used)
        if cap <= 0:
            return False
        while len(self.ghost[v]) >= cap:
            self._ghost_pop(v)
        if sum(len(x) for x in self.ghost) >= self.ghost_pool:
            worst = None
            for h in range(self.ng):
                if not self.ghost[h]:
                    continue
                ex = len(self.ghost[h]) - int(self.ghost_ratio * self.used(h))
                if worst is None or ex > worst[0]:
                    worst = (ex, h)
            self._ghost_pop(worst[1])
        self.ghost[v][(vd, key)] = None
        self.ghost_of[(vd, key)] = v
        return True

    def _ghost_pop(self, h):
        k, _ = self.ghost[h].popitem(last=False)
        del self.ghost_of[k]

    def _free_slot(self, s, v):
        vd = self.info[s][0]
        del self.info[s]
        self.free.append(s)
        self._count(vd, v, "evictions")

    def _evict(self, v):
        self.evicted[v] = True
        used = self.used(v)
        small_cap = int(self.small_ratio * used)
        for _ in range(4 * used + 4):
            S, M = self.small[v], self.main[v]
            if S and (len(S) >= small_cap or not M):
                s = next(iter(S))
                del S[s]
                vd, key, _, _, freq = self.info[s]
                if freq >= self.threshold or self.vd_pinned[vd]:
                    self.info[s][3] = True
                    self.info[s][4] = 0
                    M[s] = None
                    self._count(vd, v, "moves")
                    continue
                del self.where[(vd, key)]
                self._ghost_add(v, used, vd, key)
                self._free_slot(s, v)
                return True
            if not M:
                return False
            s = next(iter(M))
            del M[s]
            vd, key, _, _, freq = self.info[s]
            if freq > 0 or self.vd_pinned[vd]:
                if freq > 0:
                    self.info[s][4] = freq - 1
                M[s] = None
                continue
            del self.where[(vd, key)]
            self._free_slot(s, v)
            return True
        return False

    def access(self, keys, vds, writes, nbytes=None):
        hits, slots = [], []
        for i, (key, vd, w) in enumerate(zip(keys, vds, writes)):
            key, vd, w = int(key), int(vd), bool(w)
            nb = self.block_size if nbytes is None else int(nbytes[i])
            g = self.vd_group[vd]
            self.clock += 1
            self.last[g] = self.clock
            k = (vd, key)
            op = "write" if w else "read"
            if k in self.where:
                s = self.where[k]
                self.info[s][4] = min(self.info[s][4] + 1, 3)
                hg = self.info[s][2]
                self._count(vd, hg, f"{op}_hits")
                self._count(vd, hg, f"{op}_hit_bytes", nb)
                hits.append(True)
                slots.append(s)
                continue
            hits.append(False)
            slots.append(-1)
            self._count(vd, g, f"{op}_misses")
            self._count(vd, g, f"{op}_miss_bytes", nb)
            pol = self.promote[g]
            if pol == 0 or (pol == 1 and w):
                continue
            victim = self._victim(g)
            if victim is None:
                self._count(vd, g, "bypasses")
                continue
            ghost_hit = k in self.ghost_of
            if ghost_hit:
                del self.ghost[self.ghost_of.pop(k)][k]
                self._count(vd, g, "ghost_hits")
            if victim != "free" and not self._evict(victim):
                self._count(vd, g, "bypasses")
                continue
            s = self.free.pop()
            to_main = ghost_hit or (not self.evicted[g] and
                                    len(self.small[g]) >= int(self.small_ratio * self.max[g]))
            (self.main if to_main else self.small)[g][s] = None
            self.info[s] = [vd, key, g, to_main, 0]
            self.where[k] = s
            slots[-1] = s
            self._count(vd, g, "promotions")
        return hits, slots

    def remove(self, keys, vds):
        n = 0
        for key, vd in zip(keys, vds):
            k = (int(vd), int(key))
            if k in self.where:
                s = self.where.pop(k)
                _, _, g, is_main, _ = self.info.pop(s)
                del (self.main if is_main else self.small)[g][s]
                self.free.append(s)
                self._count(k[0], g, "removals")
                n += 1
            elif k in self.ghost_of:
                del self.ghost[self.ghost_of.pop(k)][k]
        return n

    def pin_vdisk(self, vd, pinned=True):
        self.vd_pinned[vd] = pinned

    def assign(self, vd, g):
        self.vd_group[vd] = g
        for h in range(self.ng):
            if h == g:
                continue
            for is_main, lists in ((False, self.small), (True, self.main)):
                for s in [s for s in lists[h] if self.info[s][0] == vd]:
                    del lists[h][s]
                    (self.main if is_main else self.small)[g][s] = None
                    self.info[s][2] = g
        self.shrink()

    def shrink(self):
        for g in range(self.ng):
            if self.pinned[g]:
                continue
            while self.used(g) > self.max[g]:
                if not self._evict(g):
                    break
