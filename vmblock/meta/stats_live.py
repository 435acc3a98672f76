"""The pool's statistics as the verbs show them: this run's counters (``LiveStats``) on top
of the stored cumulative rows, sampled into the history, rolled up per VM, eviction group
and pool, with the flash cache's and the store's figures beside them.

A running server holds one ``PoolStats`` with ``live`` set (``Server.start``); without a
server the verbs build one with ``live`` None and show what the last run stored.

Sub-vdisks (the LVs of an LVM2 datastore on a vdisk, ``vmblock.meta.datastores``) have rows
of their own: the server installs the range split of each datastore LU (``split_lu``), the
sub-vdisk's series is ``sv:<vdisk uuid>/<vg>/<lv>``, and it rolls up into the VM that owns
the LV (not the vdisk's VM, which keeps the bytes in no LV) and the vdisk's group and pool.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

from vmblock.errors import NotFound
from vmblock.meta import datastores
from vmblock.meta.stats_history import PREFIX as HISTORY_PREFIX
from vmblock.meta.stats_history import StatsHistory, space_of
from vmblock.stats import figures
from vmblock.stats import layout as L
from vmblock.stats.rows import split_by_ranges

POOL_SERIES = "pool"
# A running server walks the extent maps for the space figures at most this often, in the
# executor (the sampler); reports in between show the last walk's figures
SPACE_INTERVAL = 60.0


def vd_series(uuid: str) -> str:
    """The history series of a vdisk."""
    return f"vd:{uuid}"


def vm_series(uuid: str) -> str:
    """The history series of a VM."""
    return f"vm:{uuid}"


SUB_SERIES = "sv:"


class Sub(NamedTuple):
    """A sub-vdisk's stats row: ``key`` (the live row's, ``<vdisk uuid>/<vg>/<lv>``), its
    history series, its name ``<vg>/<lv>``, the vdisk holding it and the owning VM's uuid."""

    key: str
    series: str
    name: str
    vdisk: object
    vm: str | None


def sub_key(vdisk_uuid: str, subvdisk: str) -> str:
    """The stats key of sub-vdisk ``<vg>/<lv>`` of a vdisk."""
    return f"{vdisk_uuid}/{subvdisk}"


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
        self.space: dict[str, tuple[int, int, int]] | None = None   # the last walk's, by uuid
        self.space_time = 0.0

    def space_due(self) -> bool:
        """Whether the sampler should walk the maps again before its next sample."""
        return self.space is None or time.monotonic() - self.space_time >= SPACE_INTERVAL

    def refresh_space(self) -> None:
        """Walk the extent maps for the space figures (``space_of``); the sampler runs it in
        the executor."""
        self.space = space_of(self.pool, self.pool.vdisks(), self.pool.snapshots())
        self.space_time = time.monotonic()

    def _space_per_vdisk(self, disks) -> dict[str, tuple[int, int, int]]:
        """The space figures: used bytes now (the store keeps them counted); snapshot-only
        and shared bytes from a running server's last walk (up to ``SPACE_INTERVAL`` old),
        else from a walk now."""
        walk = self.space
        if self.live is None or walk is None:
            walk = space_of(self.pool, disks, self.pool.snapshots())
        return {d.uuid: (self.pool.used_bytes(d), *walk.get(d.uuid, (0, 0, 0))[1:])
                for d in disks}

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

    def split_lu(self, disk, lu_rows) -> bool:
        """Install (or take off) the range split of ``disk``'s LU from its datastore map:
        each LV's blocks count in its sub-vdisk's row, the rest in the vdisk's; whether the
        split changed (the workers then need the LU's rows again)."""
        ranges = datastores.ranges_of(datastores.record(self.pool, disk))
        starts, rows = split_by_ranges(
            [(r.first, r.end, sub_key(disk.uuid, r.subvdisk)) for r in ranges],
            disk.block_size, lu_rows.row, self.live.row_of)
        old = (None if lu_rows.starts is None else
               (lu_rows.starts.tolist(), lu_rows.rows.tolist()))
        if old == (None if starts is None else (starts, rows)):
            return False
        lu_rows.split(starts, rows)
        return True

    def subs(self, disks) -> list[Sub]:
        """The sub-vdisks of ``disks`` as their datastore maps list them now (LVs with
        extents on the vdisk), by vdisk then name."""
        recs = datastores.records_of(self.pool, disks)
        out = []
        for d in disks:
            owners = {r.subvdisk: r.vm for r in datastores.ranges_of(recs.get(d.uuid))}
            for name in sorted(owners):
                key = sub_key(d.uuid, name)
                out.append(Sub(key, SUB_SERIES + key, name, d, owners[name]))
        return out

    def _with_base(self, key: str, series: str, row: np.ndarray) -> np.ndarray:
        base = self.bases.get(key)
        if base is None:
            base = self.bases[key] = self.history.base(series)
        cum = row + base
        cum[list(L.MAX_COLUMNS)] = np.maximum(row, base)[list(L.MAX_COLUMNS)]
        return cum

    def cumulative(self, disks=None, subs=None) -> tuple[dict[str, np.ndarray], dict]:
        """Cumulative rows by series (every vdisk, sub-vdisk, VM and the pool) and the
        vdisks' VMs; ``subs``: ``subs(disks)`` when the caller has it."""
        disks = self.pool.vdisks() if disks is None else disks
        subs = self.subs(disks) if subs is None else subs
        uuids = [d.uuid for d in disks]
        keys = uuids + [s.key for s in subs]
        rows = (self.live.totals(keys) if self.live is not None
                else np.zeros((len(keys), L.WIDTH), np.int64))
        out: dict[str, np.ndarray] = {}
        by_vm: dict[str, list[np.ndarray]] = {}
        for d, row in zip(disks, rows):
            cum = out[vd_series(d.uuid)] = self._with_base(d.uuid, vd_series(d.uuid), row)
            if d.vm:
                by_vm.setdefault(d.vm, []).append(cum)
        for s, row in zip(subs, rows[len(disks):]):
            cum = out[s.series] = self._with_base(s.key, s.series, row)
            if s.vm:
                by_vm.setdefault(s.vm, []).append(cum)
        for vm in self.pool.vms():
            out[vm_series(vm.uuid)] = figures.combine(np.array(by_vm.get(vm.uuid, [])))
        out[POOL_SERIES] = figures.combine(np.array(
            [out[vd_series(u)] for u in uuids] + [out[s.series] for s in subs]))
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
        prefix = f"{HISTORY_PREFIX}c/{SUB_SERIES}{disk.uuid}/"
        for name, _ in list(self.pool.records(prefix)):       # its sub-vdisks' too
            key = sub_key(disk.uuid, name)
            self.bases.pop(key, None)
            self.last.pop(SUB_SERIES + key, None)
            self.history.prev.pop(SUB_SERIES + key, None)
            self.history.forget(SUB_SERIES + key)

    def stop(self) -> None:
        """Store the cumulative rows (the counts since the last sample survive a restart)."""
        self.history.persist(self.cumulative()[0])

    def _space(self, disks, owners) -> dict[str, tuple[int, int]]:
        per = self._space_per_vdisk(disks)
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
        all_subs = self.subs(all_disks)
        cum, owners = self.cumulative(all_disks, all_subs)
        picked = {d.uuid for d in disks}

        def sub_group(s: Sub) -> str:
            """A sub-vdisk's eviction group: its own, its VM's or its LUN's (``members``)."""
            return members.get(s.key, members.get(s.vdisk.uuid, ("default",)))[0]

        if group is not None and vdisk is None:     # the LVs in the group, wherever their LUN
            subs = [s for s in all_subs if sub_group(s) == group
                    and (vm is None or s.vm == v.uuid)]
        else:
            subs = ([s for s in all_subs if s.vm == v.uuid] if vm is not None and vdisk is None
                    else [s for s in all_subs if s.vdisk.uuid in picked])
        per = self._space_per_vdisk(all_disks)
        cache = self._cache_rows()
        now = time.time()
        sel_vms = ([vms[d.vm] for d in disks if d.vm] + [vms[s.vm] for s in subs
                                                          if s.vm in vms]
                   if (vdisk or group) else [self.pool.vm(vm)] if vm else list(vms.values()))
        sel_vms = list({v.uuid: v for v in sel_vms}.values())

        def row_json(series: str, parts: list[str], name: str,
                     group_series: list[str] | None = None) -> dict:
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
            out["used_bytes"] = sum(per[u][0] for u in parts if u in per)
            out["snapshot_bytes"] = sum(per[u][1] for u in parts if u in per)
            out["shared_bytes"] = sum(per[u][2] for u in parts if u in per)
            out["tier_bytes"] = _tier_bytes(self.pool, [d for d in all_disks if d.uuid in parts])
            fl = [cache[u] for u in parts if u in cache]
            out["cached_bytes"] = sum(f["cached_bytes"] for f in fl)
            out["promotions"] = sum(f["promotions"] for f in fl)
            out["evictions"] = sum(f["evictions"] for f in fl)
            if since is not None:
                out["history"] = self._history(series, group_series or [], now - since, now)
            return out

        vdisk_rows = []
        for d in disks:
            r = row_json(vd_series(d.uuid), [d.uuid], d.name)
            r["vm"] = vms[d.vm].name if d.vm in vms else None
            r["group"] = members.get(d.uuid, ("default",))[0]
            vdisk_rows.append(r)
        for s in subs:      # after the vdisks; a sub-vdisk's cache is its own, space the LUN's
            r = row_json(s.series, [s.key], s.name)
            r["vm"] = vms[s.vm].name if s.vm in vms else None
            r["group"] = sub_group(s)
            r["vdisk"] = s.vdisk.name
            r["sub_vdisk"] = True
            vdisk_rows.append(r)
        vm_rows = [row_json(vm_series(v.uuid), [d.uuid for d in all_disks if d.vm == v.uuid]
                            + [s.key for s in all_subs if s.vm == v.uuid], v.name)
                   for v in sel_vms]
        group_names = sorted({members.get(d.uuid, ("default",))[0] for d in disks}
                             | {sub_group(s) for s in subs})
        group_rows = []
        for g in group_names:
            parts = [d.uuid for d in all_disks if members.get(d.uuid, ("default",))[0] == g]
            series = f"group:{g}"
            inside = [s for s in all_subs if sub_group(s) == g]     # its LVs: their own group
            group_series = [vd_series(u) for u in parts] + [s.series for s in inside]
            cum[series] = figures.combine(np.array([cum[m] for m in group_series]))
            group_rows.append(row_json(series, parts + [s.key for s in inside], g,
                                       group_series))
        pool_row = row_json(POOL_SERIES, [d.uuid for d in all_disks], "pool")
        pool_row["tiers"] = self.pool.store.usage()["tiers"]
        return {"interval_s": self.interval, "time": now, "running": self.live is not None,
                "vms": vm_rows, "vdisks": vdisk_rows, "groups": group_rows, "pool": pool_row}

    def _history(self, series: str, members: list[str], since: float, now: float
                 ) -> list[dict]:
        if not series.startswith("group:"):
            return self.history.history(series, since, now)
        by_t: dict[float, list[dict]] = {}
        for m in members:
            for e in self.history.history(m, since, now):
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
