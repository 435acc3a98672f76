"""Eviction groups, assignments and pins in the meta DB, and the cache verbs of the admin API.

Key layout (text keys, JSON values, beside the pool's model tree; one synced WriteBatch per
change)::

    cachegroup/<name>            {"name", "priority", "min", "max", "promote", "pinned", "slot"}
                                 slot: the group's index in the cache directory (stable for
                                 its life, so a live change never renumbers other groups)
    cacheassign/vm/<vm uuid>     "<group name>"   every vdisk of the VM not assigned itself
    cacheassign/vdisk/<uuid>     "<group name>"   wins over its VM's group
    cachepin/<vdisk uuid>        true             the vdisk's cached blocks are never evicted

The ``default`` group (slot 0, priority 0, min 0%, max 100%, promote read) exists without a
key until it is changed. A vdisk's group: its own assignment, else its VM's, else ``default``;
an assignment to a group that is gone counts as ``default``. Everything here works on the pool
directly (no server) and live through the admin socket (``CacheApi`` methods run in the
server, which then applies the new table to the running cache at once).
"""

from __future__ import annotations

from dataclasses import asdict, replace

from vmblock.errors import AlreadyExists, InvalidArgument, NotFound, ServerError

from .directory import COUNTERS
from .errors import CacheError
from .groups import PROMOTE, GroupSpec, validate_groups
from .flash import MAX_GROUPS

DEFAULT = "default"
DEFAULT_SPEC = GroupSpec(DEFAULT, priority=0, min=0.0, max=1.0, promote="read")


def parse_fraction(what: str, text) -> float:
    """'10%', '10', '0.1'? -> fraction. A bare number is a percentage (as in --min 10%)."""
    t = str(text).strip()
    try:
        v = float(t[:-1] if t.endswith("%") else t)
    except ValueError:
        raise CacheError(f"{what} {text!r} is not a percentage (e.g. 10%)") from None
    if not 0.0 <= v <= 100.0:
        raise CacheError(f"{what} {text!r} is not between 0% and 100%")
    return v / 100.0


class GroupTable:
    """The groups, assignments and pins of one open pool."""

    def __init__(self, pool):
        self.pool = pool

    def _db_groups(self) -> dict[str, dict]:
        return dict(self.pool._scan("cachegroup/"))

    def groups(self) -> list[tuple[int, GroupSpec]]:
        """(directory slot, spec) of every group, default first."""
        out = {0: DEFAULT_SPEC}
        for name, v in self._db_groups().items():
            spec = GroupSpec(name, int(v["priority"]), float(v["min"]), float(v["max"]),
                             v["promote"], bool(v["pinned"]))
            out[int(v.get("slot", 0))] = spec
        return sorted(out.items())

    def specs(self) -> dict[str, GroupSpec]:
        return {s.name: s for _, s in self.groups()}

    def spec(self, name: str) -> GroupSpec:
        s = self.specs().get(name)
        if s is None:
            raise NotFound(f"no eviction group {name!r}")
        return s

    def slot_table(self) -> list[GroupSpec | None]:
        table: list[GroupSpec | None] = [None] * MAX_GROUPS
        for slot, s in self.groups():
            table[slot] = s
        return table

    def _put_group(self, batch, spec: GroupSpec, slot: int) -> None:
        self.pool._put(batch, f"cachegroup/{spec.name}", dict(asdict(spec), slot=slot))

    def _check_all(self, specs: list[GroupSpec]) -> None:
        validate_groups(specs)

    def create(self, spec: GroupSpec) -> GroupSpec:
        if spec.name.startswith((".", "-")):
            raise CacheError(f"invalid group name {spec.name!r}")
        spec.check()
        groups = self.groups()
        if spec.name in {s.name for _, s in groups}:
            raise AlreadyExists(f"eviction group {spec.name!r} already exists")
        used = {slot for slot, _ in groups}
        free = [i for i in range(MAX_GROUPS) if i not in used]
        if not free:
            raise CacheError(f"at most {MAX_GROUPS} eviction groups")
        self._check_all([s for _, s in groups] + [spec])
        batch = self.pool._batch()
        self._put_group(batch, spec, free[0])
        self.pool._commit(batch)
        return spec

    def update(self, name: str, **changes) -> GroupSpec:
        groups = self.groups()
        slots = {s.name: slot for slot, s in groups}
        if name not in slots:
            raise NotFound(f"no eviction group {name!r}")
        old = next(s for _, s in groups if s.name == name)
        new = replace(old, **{k: v for k, v in changes.items() if v is not None})
        new.check()
        self._check_all([new if s.name == name else s for _, s in groups])
        batch = self.pool._batch()
        self._put_group(batch, new, slots[name])
        self.pool._commit(batch)
        return new

    def delete(self, name: str) -> list[str]:
        """Delete a group; VMs and vdisks assigned to it go back to ``default``."""
        if name == DEFAULT:
            raise CacheError("the default group cannot be deleted")
        self.spec(name)
        batch = self.pool._batch()
        self.pool._delete(batch, f"cachegroup/{name}")
        moved = []
        for kind in ("vm", "vdisk"):
            for uid, g in self.pool._scan(f"cacheassign/{kind}/"):
                if g == name:
                    self.pool._delete(batch, f"cacheassign/{kind}/{uid}")
                    moved.append(uid)
        self.pool._commit(batch)
        return moved

    def resolve(self, name: str, kind: str | None = None) -> tuple[str, str, str]:
        """(kind, uuid, name) of a VM or vdisk called ``name``; a VM wins if both exist."""
        pool = self.pool
        if kind not in (None, "vm", "vdisk"):
            raise InvalidArgument(f"kind must be vm or vdisk, not {kind!r}")
        if kind in (None, "vm"):
            try:
                return "vm", pool.vm(name).uuid, name
            except NotFound:
                if kind == "vm":
                    raise
        try:
            return "vdisk", pool.vdisk(name).uuid, name
        except NotFound:
            if kind == "vdisk":
                raise
        raise NotFound(f"no VM or vdisk named {name!r}")

    def assign(self, name: str, group: str, kind: str | None = None) -> dict:
        self.spec(group)
        kind, uid, _ = self.resolve(name, kind)
        batch = self.pool._batch()
        key = f"cacheassign/{kind}/{uid}"
        if group == DEFAULT:
            self.pool._delete(batch, key)
        else:
            self.pool._put(batch, key, group)
        self.pool._commit(batch)
        return {"kind": kind, "name": name, "uuid": uid, "group": group}

    def pin(self, vdisk: str, pinned: bool) -> dict:
        disk = self.pool.vdisk(vdisk)
        batch = self.pool._batch()
        if pinned:
            self.pool._put(batch, f"cachepin/{disk.uuid}", True)
        else:
            self.pool._delete(batch, f"cachepin/{disk.uuid}")
        self.pool._commit(batch)
        return {"name": disk.name, "pinned": pinned, "group": self.group_of(disk)}

    def group_of(self, disk, specs: dict | None = None) -> str:
        specs = specs if specs is not None else self.specs()
        for key in (f"cacheassign/vdisk/{disk.uuid}",
                    f"cacheassign/vm/{disk.vm}" if disk.vm else None):
            if key is None:
                continue
            g = self.pool._get(key)
            if g is not None and g in specs:
                return g
        return DEFAULT

    def pinned(self, disk) -> bool:
        return bool(self.pool._get(f"cachepin/{disk.uuid}"))

    def members(self) -> dict[str, tuple[str, bool]]:
        """vdisk uuid -> (group, pinned) for every vdisk of the pool."""
        specs = self.specs()
        return {d.uuid: (self.group_of(d, specs), self.pinned(d)) for d in self.pool.vdisks()}


def _ratio(hits: int, total: int) -> float:
    return round(hits / total, 6) if total else 0.0


def _counters(row) -> dict:
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


class CacheApi:
    """The cache and group verbs; mixed into ``vmblock.admin.api.Api``."""

    def _flash_cache(self):
        server = getattr(self, "server", None)
        return getattr(server, "cache", None)

    def _groups(self) -> GroupTable:
        return GroupTable(self.pool)

    def _apply_groups(self) -> int:
        """Push the pool's group table to the running cache (live); blocks evicted."""
        cache = self._flash_cache()
        if cache is None:
            return 0
        t = self._groups()
        return cache.set_groups(t.slot_table(), t.members())

    def group_create(self, name: str, priority: int = 0, min: str = "0%", max: str = "100%",
                     promote: str = "read", pinned: bool = False) -> dict:
        if promote not in PROMOTE:
            raise CacheError(f"promote must be one of {', '.join(PROMOTE)}, not {promote!r}")
        spec = GroupSpec(name, int(priority), parse_fraction("--min", min),
                         parse_fraction("--max", max), promote, bool(pinned))
        self._groups().create(spec)
        self._apply_groups()
        return self.group_show(name)

    def group_set(self, name: str, priority: int | None = None, min: str | None = None,
                  max: str | None = None, promote: str | None = None,
                  pinned: bool | None = None) -> dict:
        if promote is not None and promote not in PROMOTE:
            raise CacheError(f"promote must be one of {', '.join(PROMOTE)}, not {promote!r}")
        self._groups().update(
            name, priority=None if priority is None else int(priority),
            min=None if min is None else parse_fraction("--min", min),
            max=None if max is None else parse_fraction("--max", max),
            promote=promote, pinned=None if pinned is None else bool(pinned))
        evicted = self._apply_groups()
        return dict(self.group_show(name), evicted=evicted)

    def group_delete(self, name: str) -> dict:
        moved = self._groups().delete(name)
        self._apply_groups()
        return {"name": name, "reassigned": len(moved)}

    def group_assign(self, target: str, to: str, kind: str | None = None) -> dict:
        r = self._groups().assign(target, to, kind)
        self._apply_groups()
        return r

    def vdisk_pin(self, name: str) -> dict:
        r = self._groups().pin(name, True)
        self._apply_groups()
        return r

    def vdisk_unpin(self, name: str) -> dict:
        r = self._groups().pin(name, False)
        self._apply_groups()
        return r

    def group_list(self) -> list[dict]:
        show = self.cache_show()
        return [show["groups"][s.name] for _, s in self._groups().groups()]

    def group_show(self, name: str) -> dict:
        self._groups().spec(name)
        return self.cache_show()["groups"][name]

    def cache_preload(self, vdisk: str) -> dict:
        cache = self._flash_cache()
        disk = self.pool.vdisk(vdisk)
        if disk.tier == "flash":
            raise InvalidArgument(f"vdisk {vdisk} lives on the flash tier; the cache skips it")
        if cache is None:
            raise ServerError("cache preload needs a running server (the cache lives in it)"
                              if getattr(self, "server", None) is None else
                              "the flash cache is off (cache.size is 0)")
        store = self.server.stores.get(disk.uuid)
        if store is None or not hasattr(store, "preload"):
            raise ServerError(f"vdisk {vdisk} is not served")
        return self._preload(store, vdisk, cache.bs)

    async def _preload(self, store, vdisk: str, bs: int) -> dict:
        import asyncio

        # capacity reads: in the executor, the event loop keeps serving I/O meanwhile
        blocks = await asyncio.get_running_loop().run_in_executor(None, store.preload)
        return {"name": vdisk, "cached_blocks": blocks, "cached_bytes": blocks * bs}

    def cache_show(self) -> dict:
        """Configuration, occupancy and hit accounting per vdisk, per VM and per group."""
        t = self._groups()
        groups = t.groups()
        disks = self.pool.vdisks()
        members = t.members()
        vm_names = {vm.uuid: vm.name for vm in self.pool.vms()}
        cache = self._flash_cache()
        snap = cache.snapshot() if cache is not None else None
        zero = [0] * len(COUNTERS)
        bs = cache.bs if cache is not None else 0
        nslots = cache.nslots if cache is not None else 0
        out = {"running": getattr(self, "server", None) is not None,
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
        for disk in disks:
            vid = ids.get(disk.uuid)
            row = snap["vd_cnt"][vid] if (snap is not None and vid is not None) else zero
            d = _counters(row)
            cached = int(snap["vd_used"][vid]) if (snap is not None and vid is not None) else 0
            group, pinned = members.get(disk.uuid, (DEFAULT, False))
            vm = vm_names.get(disk.vm) if disk.vm else None
            d.update(name=disk.name, vm=vm, group=group, pinned=pinned, cached_blocks=cached,
                     cached_bytes=cached * bs,
                     preloaded_blocks=int(snap["preloaded"][vid]) if (snap is not None and
                                                                      vid is not None) else 0)
            out["vdisks"][disk.name] = d
            by_group.setdefault(group, []).append(disk.name)
            if vm is not None:
                acc = out["vms"].setdefault(vm, {"name": vm, "vdisks": [], "_row": [0] * len(
                    COUNTERS), "cached_blocks": 0})
                acc["vdisks"].append(disk.name)
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
                     vms=sorted(vm for vm, a in out["vms"].items()
                                if any(members.get(d.uuid, (DEFAULT,))[0] == spec.name
                                       for d in disks if d.name in a["vdisks"])))
            out["groups"][spec.name] = g
        out["totals"] = _counters(snap["grp_cnt"].sum(axis=0) if snap is not None else zero)
        return out


def open_cache(pool, settings: dict[str, str]):
    """The server's ``FlashCache`` over the pool's flash tier, or None when cache.size is 0.

    The cache takes the first ``cache.size`` bytes of the flash tier (slot s at s * block
    size); the rest of the tier is left for flash-tier AUs of the extent store."""
    from vmblock.config import cache_bytes_wanted, cache_settings, parse_size

    from .flash import FlashCache

    cs = cache_settings(settings)
    flash = pool.store.flash
    total = flash.size_bytes
    size = cache_bytes_wanted(settings, total)
    if size > total:
        raise InvalidArgument(f"cache.size {cs['size'].strip()} is larger than the flash tier "
                              f"({total} bytes, store.flash_size)")
    # the extent store owns the split: its flash-tier AUs start at cache_bytes
    size = min(size, pool.store.cache_bytes)
    bs = parse_size(cs["block_size"])
    nslots = size // bs
    if nslots == 0:
        return None
    cache = FlashCache(flash.fd, 0, nslots, bs)
    cache.set_groups(GroupTable(pool).slot_table(), {})
    return cache


def cached_store(cache, pool, disk, store):
    """Put the cache in front of one vdisk's store, in its group with its pin."""
    from .flash import CachedStore

    vm = pool.vm_by_uuid(disk.vm).name if disk.vm else None
    vid = cache.attach(disk.uuid, disk.name, vm)
    t = GroupTable(pool)
    cache.set_groups(t.slot_table(), {disk.uuid: (t.group_of(disk), t.pinned(disk))})
    return CachedStore(cache, store, vid)
