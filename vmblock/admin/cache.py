"""The verbs of eviction groups and the flash cache: ``group ...``, ``cache ...``, ``vdisk pin``.

They change the pool's group model (``Pool.eviction_groups``) and, when a server runs, push the
new table to its cache at once; the counters they show are counted in the data path. What they
see of a running server is the small ``Runtime`` interface, so without one (the CLI on a pool)
the same verbs work on the pool alone and the next server starts with what they stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from vmblock.admin.schema import GroupName, MemberKind, Name, Priority, Promotion, Share
from vmblock.admin.verbs import verb
from vmblock.errors import InvalidArgument, ServerError

# The cache, the group model and the store bring numpy and Numba: the verbs import them when
# they run, so the verb table (which every CLI command loads, also one that only talks to a
# running server) does not.
if TYPE_CHECKING:
    from vmblock.cache.flash import CachedStore, FlashCache
    from vmblock.cache.groups import GroupSpec
    from vmblock.meta import Pool
    from vmblock.store.backend import BackingStore


class Runtime(Protocol):
    """What a running server shows the cache verbs."""

    cache: FlashCache | None        # None when cache.size is 0

    def store_of(self, vdisk_uuid: str) -> BackingStore | None:
        """The store a served vdisk's LUN uses (a ``CachedStore`` when the cache is on)."""


def _ratio(hits: int, total: int) -> float:
    return round(hits / total, 6) if total else 0.0


def _counters(row) -> dict:
    from vmblock.cache.directory import COUNTERS
    d = dict(zip(COUNTERS, (int(x) for x in row)))
    reads = d["read_hits"] + d["read_misses"]
    writes = d["write_hits"] + d["write_misses"]
    d["requests"] = reads + writes
    d["hit_ratio"] = _ratio(d["read_hits"] + d["write_hits"], reads + writes)
    d["read_hit_ratio"] = _ratio(d["read_hits"], reads)
    d["read_bytes"] = d["read_hit_bytes"] + d["read_miss_bytes"]
    d["write_bytes"] = d["write_hit_bytes"] + d["write_miss_bytes"]
    return d


def _spec_json(spec: GroupSpec) -> dict:
    return {"name": spec.name, "priority": spec.priority, "min_pct": round(spec.min * 100, 4),
            "max_pct": round(spec.max * 100, 4), "promote": spec.promote,
            "pinned": spec.pinned}


class CacheVerbs:
    """The group and cache verbs of one pool, live on ``runtime`` when a server runs."""

    def __init__(self, pool: Pool, runtime: Runtime | None = None):
        self.pool = pool
        self.runtime = runtime

    def _flash_cache(self) -> FlashCache | None:
        return self.runtime.cache if self.runtime is not None else None

    def _apply_groups(self) -> int:
        """Push the pool's group table to the running cache (live); blocks evicted."""
        cache = self._flash_cache()
        if cache is None:
            return 0
        groups = self.pool.eviction_groups
        return cache.set_groups(groups.slot_table(), groups.members())

    @verb
    def group_create(self, name: GroupName, priority: Priority = 0, min: Share = "0%",
                     max: Share = "100%", promote: Promotion = "read",
                     pinned: bool = False) -> dict:
        """Create an eviction group; ``min`` and ``max`` are shares of the cache ('10%' or
        '0.1')."""
        from vmblock.cache.groups import GroupSpec, parse_share
        spec = GroupSpec(name, int(priority), parse_share(min, "--min"),
                         parse_share(max, "--max"), promote, bool(pinned))
        self.pool.eviction_groups.create(spec)
        self._apply_groups()
        return self.group_show(name)

    @verb
    def group_set(self, name: GroupName, priority: Priority | None = None,
                  min: Share | None = None, max: Share | None = None,
                  promote: Promotion | None = None, pinned: bool | None = None) -> dict:
        """Change a group's settings (None keeps one); ``evicted``: blocks the running cache
        gave up at once to fit a lowered maximum."""
        from vmblock.cache.groups import parse_share
        self.pool.eviction_groups.update(
            name, priority=None if priority is None else int(priority),
            min=None if min is None else parse_share(min, "--min"),
            max=None if max is None else parse_share(max, "--max"),
            promote=promote, pinned=None if pinned is None else bool(pinned))
        evicted = self._apply_groups()
        return dict(self.group_show(name), evicted=evicted)

    @verb
    def group_delete(self, name: GroupName) -> dict:
        """Delete a group; its VMs and vdisks go back to the default group."""
        moved = self.pool.eviction_groups.delete(name)
        self._apply_groups()
        return {"name": name, "reassigned": len(moved)}

    @verb
    def group_assign(self, target: Name, to: GroupName, kind: MemberKind | None = None) -> dict:
        """Put a VM (all its vdisks) or one vdisk in a group; a VM wins if ``kind`` is not
        given and both are called ``target``."""
        r = self.pool.eviction_groups.assign(target, to, kind)
        self._apply_groups()
        return r

    @verb
    def vdisk_pin(self, name: Name) -> dict:
        """Never evict this vdisk's cached blocks."""
        r = self.pool.eviction_groups.pin(name, True)
        self._apply_groups()
        return r

    @verb
    def vdisk_unpin(self, name: Name) -> dict:
        """Let this vdisk's cached blocks be evicted again."""
        r = self.pool.eviction_groups.pin(name, False)
        self._apply_groups()
        return r

    @verb
    def group_list(self) -> list[dict]:
        """Every group with its settings, occupancy and counters, default first."""
        show = self.cache_show()
        return [show["groups"][s.name] for _, s in self.pool.eviction_groups.slots()]

    @verb
    def group_show(self, name: GroupName) -> dict:
        """One group with its settings, occupancy and counters."""
        self.pool.eviction_groups.spec(name)
        return self.cache_show()["groups"][name]

    @verb
    def cache_preload(self, vdisk: Name):
        """Read a vdisk's mapped extents into the running cache (an awaitable: the reads run
        in the executor while the event loop keeps serving I/O)."""
        from vmblock.cache.flash import CachedStore
        cache = self._flash_cache()
        disk = self.pool.vdisk(vdisk)
        if disk.tier == "flash":
            raise InvalidArgument(f"vdisk {vdisk} lives on the flash tier; the cache skips it")
        if cache is None:
            raise ServerError("cache preload needs a running server (the cache lives in it)"
                              if self.runtime is None else
                              "the flash cache is off (cache.size 0, or auto with both "
                              "tiers on one device)")
        store = self.runtime.store_of(disk.uuid)
        if not isinstance(store, CachedStore):
            raise ServerError(f"vdisk {vdisk} is not served")
        return self._preload(store, vdisk, cache.bs)

    async def _preload(self, store: CachedStore, vdisk: str, bs: int) -> dict:
        import asyncio      # only the server runs this: a CLI command need not load asyncio
        blocks = await asyncio.get_running_loop().run_in_executor(None, store.preload)
        return {"name": vdisk, "cached_blocks": blocks, "cached_bytes": blocks * bs}

    @verb
    def cache_show(self) -> dict:
        """Configuration, occupancy and hit accounting per vdisk, per VM and per group."""
        from vmblock.cache.directory import COUNTERS
        from vmblock.meta import datastores
        from vmblock.meta.groups import DEFAULT
        t = self.pool.eviction_groups
        groups = t.slots()
        disks = self.pool.vdisks()
        members = t.members()
        vm_names = {vm.uuid: vm.name for vm in self.pool.vms()}
        cache = self._flash_cache()
        snap = cache.snapshot() if cache is not None else None
        zero = [0] * len(COUNTERS)
        bs = cache.bs if cache is not None else 0
        nslots = cache.nslots if cache is not None else 0
        out = {"running": self.runtime is not None,
               "enabled": cache is not None, "block_size": bs, "slots": nslots,
               "size_bytes": nslots * bs,
               "used_blocks": snap["used"] if snap else 0,
               "used_bytes": (snap["used"] if snap else 0) * bs,
               "occupancy": _ratio(snap["used"], nslots) if snap else 0.0,
               "directory_bytes": snap["directory_bytes"] if snap else 0,
               "flash_base": cache.base if cache is not None else 0,
               "groups": {}, "vdisks": {}, "vms": {}}
        ids = cache.ids if cache is not None else {}
        by_group: dict[str, list] = {s.name: [] for _, s in groups}
        vm_groups: dict[str, set[str]] = {}      # VM name -> the groups of its vdisks
        # every vdisk, then the sub-vdisks (LVs on datastore LUNs, cached under ids of their
        # own: docs/datastores.md; the LUN's row is then the rest of its bytes)
        rows = [(disk.uuid, disk.name, disk.vm, False) for disk in disks]
        rows += [(f"{uid}/{sub}", sub, vm, True)
                 for uid, sub, vm in datastores.sub_vdisk_owners(self.pool)]
        for key, name, vm_uuid, sub in rows:
            vid = ids.get(key)
            row = snap["vd_cnt"][vid] if (snap is not None and vid is not None) else zero
            d = _counters(row)
            cached = int(snap["vd_used"][vid]) if (snap is not None and vid is not None) else 0
            group, pinned = members.get(key, (DEFAULT, False))
            vm = vm_names.get(vm_uuid) if vm_uuid else None
            d.update(name=name, vm=vm, group=group, pinned=pinned, cached_blocks=cached,
                     cached_bytes=cached * bs,
                     preloaded_blocks=int(snap["preloaded"][vid]) if (snap is not None and
                                                                      vid is not None) else 0)
            if sub:
                d["sub_vdisk"] = True
            out["vdisks"][name] = d
            by_group.setdefault(group, []).append(name)
            if vm is not None:
                vm_groups.setdefault(vm, set()).add(group)
                acc = out["vms"].setdefault(vm, {"name": vm, "vdisks": [], "_row": [0] * len(
                    COUNTERS), "cached_blocks": 0})
                acc["vdisks"].append(name)
                acc["_row"] = [a + int(b) for a, b in zip(acc["_row"], row)]
                acc["cached_blocks"] += cached
        for vm, acc in out["vms"].items():
            row = acc.pop("_row")
            acc.update(_counters(row))
            acc["cached_bytes"] = acc["cached_blocks"] * bs
        for slot, spec in groups:
            if snap is not None:
                row = snap["grp_cnt"][slot]
                cached = int(snap["grp_used"][slot])
            else:
                row, cached = zero, 0
            g = _counters(row)
            g.update(_spec_json(spec))
            g.update(cached_blocks=cached, cached_bytes=cached * bs,
                     occupancy=_ratio(cached, nslots),
                     vdisks=sorted(by_group.get(spec.name, [])),
                     vms=sorted(vm for vm in out["vms"] if spec.name in vm_groups[vm]))
            out["groups"][spec.name] = g
        out["totals"] = _counters(snap["grp_cnt"].sum(axis=0) if snap is not None else zero)
        return out
