"""The pool's statistics as the verbs show them: this run's counters (``LiveStats``) on top
of the stored cumulative rows, sampled into the history, rolled up per VM, eviction group
and pool, with the flash cache's and the store's figures beside them.

A running server holds one ``PoolStats`` with ``live`` set (``Server.start``); without a
server the verbs build one with ``live`` None and show what the last run stored.
"""

from __future__ import annotations

import time

import numpy as np

from vmblock.errors import NotFound
from vmblock.meta.stats_history import StatsHistory, space_of
from vmblock.stats import figures
from vmblock.stats import layout as L

POOL_SERIES = "pool"


def vd_series(uuid: str) -> str:
    """The history series of a vdisk."""
    return f"vd:{uuid}"


def vm_series(uuid: str) -> str:
    """The history series of a VM."""
    return f"vm:{uuid}"


class PoolStats:
    """Statistics of one pool (module docstring)."""

    def __init__(self, pool, live=None, cache=None, interval: float = 10.0):
        self.pool = pool
        self.live = live            # vmblock.stats.live.LiveStats of the running server
        self.cache = cache          # vmblock.cache.flash.FlashCache, None when off
        self.history = StatsHistory(pool)
        self.interval = interval
        self.bases: dict[str, np.ndarray] = {}      # vdisk uuid -> cumulative row at start
        self.last: dict[str, dict] = {}             # series -> the last sample's entry

    # --- running server ---------------------------------------------------------------------

    def start(self) -> None:
        """Read every vdisk's stored cumulative row: this run counts on top of them."""
        self.bases = {d.uuid: self.history.base(vd_series(d.uuid)) for d in self.pool.vdisks()}
        self.history.start(time.time(), self.cumulative()[0])

    def lu_rows(self, disk, store=None):
        """The ``LuRows`` a served vdisk's LU counts in (``store``: its CachedStore, whose
        capacity reads tell a flash miss)."""
        if disk.uuid not in self.bases:
            self.bases[disk.uuid] = self.history.base(vd_series(disk.uuid))
        probe = store if hasattr(store, "capacity_reads") else None
        return self.live.lu_rows(disk.uuid, probe)

    def cumulative(self, disks=None) -> tuple[dict[str, np.ndarray], dict]:
        """Cumulative rows by series (every vdisk, VM and the pool) and the vdisks' VMs."""
        disks = self.pool.vdisks() if disks is None else disks
        uuids = [d.uuid for d in disks]
        rows = (self.live.totals(uuids) if self.live is not None
                else np.zeros((len(uuids), L.WIDTH), np.int64))
        out: dict[str, np.ndarray] = {}
        by_vm: dict[str, list[np.ndarray]] = {}
        for d, row in zip(disks, rows):
            base = self.bases.get(d.uuid)
            if base is None:
                base = self.bases[d.uuid] = self.history.base(vd_series(d.uuid))
            cum = row + base
            cum[list(L.MAX_COLUMNS)] = np.maximum(row, base)[list(L.MAX_COLUMNS)]
            out[vd_series(d.uuid)] = cum
            if d.vm:
                by_vm.setdefault(d.vm, []).append(cum)
        for vm in self.pool.vms():
            out[vm_series(vm.uuid)] = figures.combine(np.array(by_vm.get(vm.uuid, [])))
        out[POOL_SERIES] = figures.combine(np.array([out[vd_series(u)] for u in uuids]))
        return out, {d.uuid: d.vm for d in disks}

    def sample(self, t: float | None = None) -> dict[str, dict]:
        """Take one sample now (the server's timer, ``stats sample``)."""
        disks = self.pool.vdisks()
        cum, owners = self.cumulative(disks)
        space = self._space(disks, owners)
        self.last = self.history.sample(time.time() if t is None else t, cum, space)
        return self.last

    def forget(self, disk) -> None:
        """A deleted vdisk: its stored counters and history go (its VM's history stays)."""
        self.bases.pop(disk.uuid, None)
        self.last.pop(vd_series(disk.uuid), None)
        self.history.prev.pop(vd_series(disk.uuid), None)
        self.history.forget(vd_series(disk.uuid))

    def stop(self) -> None:
        """Store the cumulative rows (the counts since the last sample survive a restart)."""
        self.history.persist(self.cumulative()[0])

    def _space(self, disks, owners) -> dict[str, tuple[int, int]]:
        per = space_of(self.pool, disks, self.pool.snapshots())
        out = {vd_series(u): (s[0], s[1]) for u, s in per.items()}
        by_vm: dict[str, list] = {}
        for u, s in per.items():
            if owners.get(u):
                by_vm.setdefault(owners[u], []).append(s)
        for vm, parts in by_vm.items():
            out[vm_series(vm)] = (sum(p[0] for p in parts), sum(p[1] for p in parts))
        out[POOL_SERIES] = (sum(s[0] for s in per.values()), sum(s[1] for s in per.values()))
        return out

    # --- the report ---------------------------------------------------------------------------

    def report(self, vm: str | None = None, vdisk: str | None = None,
               group: str | None = None, since: float | None = None) -> dict:
        """``vmblock stats`` (docs/stats.md): the current figures of the VMs, vdisks and
        groups selected (all by default) and the pool; with ``since`` (seconds back), each
        row's history."""
        all_disks = self.pool.vdisks()
        vms = {v.uuid: v for v in self.pool.vms()}
        members = self.pool.eviction_groups.members()
        disks = all_disks
        if vm is not None:
            v = self.pool.vm(vm)
            disks = [d for d in all_disks if d.vm == v.uuid]
        if vdisk is not None:
            d0 = self.pool.vdisk(vdisk)
            disks = [d for d in all_disks if d.uuid == d0.uuid]
        if group is not None:
            if group not in {g for g, _ in members.values()} and group not in \
                    self.pool.eviction_groups.specs():
                raise NotFound(f"no eviction group {group!r}")
            disks = [d for d in disks if members.get(d.uuid, ("default",))[0] == group]
        cum, owners = self.cumulative(all_disks)
        per = space_of(self.pool, all_disks, self.pool.snapshots())
        cache = self._cache_rows()
        now = time.time()
        sel_vms = ([vms[d.vm] for d in disks if d.vm] if (vdisk or group) else
                   [self.pool.vm(vm)] if vm else list(vms.values()))
        sel_vms = list({v.uuid: v for v in sel_vms}.values())

        def row_json(series: str, parts: list[str], name: str) -> dict:
            c = cum[series]
            out = {"name": name}
            out.update(figures.figures(c))
            last = self.last.get(series)
            if last is not None and last["dt"] > 0:
                out.update(figures.rates(_delta_row(last), last["dt"]))
                out["interval_latency_p99_us"] = {"read": last["read_p99_us"],
                                                  "write": last["write_p99_us"]}
            else:
                out.update(figures.rates(np.zeros(L.WIDTH, np.int64), 1.0))
            used = sum(per[u][0] for u in parts if u in per)
            out["used_bytes"] = used
            out["snapshot_bytes"] = sum(per[u][1] for u in parts if u in per)
            out["shared_bytes"] = sum(per[u][2] for u in parts if u in per)
            out["tier_bytes"] = _tier_bytes(self.pool, [d for d in all_disks if d.uuid in parts])
            fl = [cache[u] for u in parts if u in cache]
            out["cached_bytes"] = sum(f["cached_bytes"] for f in fl)
            out["promotions"] = sum(f["promotions"] for f in fl)
            out["evictions"] = sum(f["evictions"] for f in fl)
            if since is not None:
                out["history"] = self._history(series, parts, now - since, now)
            return out

        vdisk_rows = []
        for d in disks:
            r = row_json(vd_series(d.uuid), [d.uuid], d.name)
            r["vm"] = vms[d.vm].name if d.vm in vms else None
            r["group"] = members.get(d.uuid, ("default",))[0]
            vdisk_rows.append(r)
        vm_rows = [row_json(vm_series(v.uuid), [d.uuid for d in all_disks if d.vm == v.uuid],
                            v.name) for v in sel_vms]
        group_names = sorted({members.get(d.uuid, ("default",))[0] for d in disks})
        group_rows = []
        for g in group_names:
            parts = [d.uuid for d in all_disks if members.get(d.uuid, ("default",))[0] == g]
            series = f"group:{g}"
            cum[series] = figures.combine(np.array([cum[vd_series(u)] for u in parts]))
            group_rows.append(row_json(series, parts, g))
        pool_row = row_json(POOL_SERIES, [d.uuid for d in all_disks], "pool")
        pool_row["tiers"] = self.pool.store.usage()["tiers"]
        return {"interval_s": self.interval, "time": now, "running": self.live is not None,
                "vms": vm_rows, "vdisks": vdisk_rows, "groups": group_rows, "pool": pool_row}

    def _history(self, series: str, parts: list[str], since: float, now: float) -> list[dict]:
        if not series.startswith("group:"):
            return self.history.history(series, since, now)
        by_t: dict[float, list[dict]] = {}
        for u in parts:
            for e in self.history.history(vd_series(u), since, now):
                by_t.setdefault(e["t"], []).append(e)
        out = []
        for t in sorted(by_t):
            es = by_t[t]
            m = dict(es[0])
            for k in m:
                if k not in ("t", "dt", "gap"):
                    m[k] = (max(e[k] for e in es) if k.endswith("p99_us")
                            else sum(e[k] for e in es))
            out.append(m)
        return out

    def _cache_rows(self) -> dict[str, dict]:
        """Per vdisk uuid: cached bytes, promotions, evictions, from the flash cache."""
        if self.cache is None:
            return {}
        from vmblock.cache.directory import COUNTERS
        snap = self.cache.snapshot()
        out = {}
        for uuid, vid in self.cache.ids.items():
            cnt = dict(zip(COUNTERS, (int(x) for x in snap["vd_cnt"][vid])))
            out[uuid] = {"cached_bytes": int(snap["vd_used"][vid]) * self.cache.bs,
                         "promotions": cnt["promotions"], "evictions": cnt["evictions"]}
        return out


def _delta_row(entry: dict) -> np.ndarray:
    row = np.zeros(L.WIDTH, np.int64)
    row[L.READ_OPS] = entry["read_ops"]
    row[L.WRITE_OPS] = entry["write_ops"]
    row[L.READ_BYTES] = entry["read_bytes"]
    row[L.WRITE_BYTES] = entry["write_bytes"]
    return row


def _tier_bytes(pool, disks) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in disks:
        for tier, n in pool.tier_bytes(d).items():
            out[tier] = out.get(tier, 0) + n
    return out
