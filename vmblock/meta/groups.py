"""Eviction groups, their members and pins: the part of the model tree the flash cache reads.

Key layout (text keys, JSON values, beside the pool's model tree; one synced WriteBatch per
change, written through ``Pool.write_records``)::

    cachegroup/<name>            {"name", "priority", "min", "max", "promote", "pinned", "slot"}
                                 slot: the group's index in the cache directory (stable for
                                 its life, so a live change never renumbers other groups)
    cacheassign/vm/<vm uuid>     "<group name>"   every vdisk of the VM not assigned itself
    cacheassign/vdisk/<uuid>     "<group name>"   wins over its VM's group
    cachepin/<vdisk uuid>        true             the vdisk's cached blocks are never evicted

The ``default`` group (slot 0, priority 0, min 0%, max 100%, promote read) exists without a
key until it is changed. A vdisk's group: its own assignment, else its VM's, else ``default``;
an assignment to a group that is gone counts as ``default``. The policy of a group (what its
settings mean to the cache) is ``vmblock.cache.groups``; this module only keeps them.
"""

from __future__ import annotations

from dataclasses import asdict, replace

from vmblock.cache.groups import MAX_GROUPS, GroupSpec, validate_groups
from vmblock.errors import AlreadyExists, CacheError, InvalidArgument, NotFound
from vmblock.meta import datastores

DEFAULT = "default"
DEFAULT_SPEC = GroupSpec(DEFAULT, priority=0, min=0.0, max=1.0, promote="read")
GROUP_PREFIX = "cachegroup/"
ASSIGN_PREFIX = "cacheassign/"
PIN_PREFIX = "cachepin/"
KINDS = ("vm", "vdisk")


class EvictionGroups:
    """The groups, assignments and pins of one open pool (``Pool.eviction_groups``)."""

    def __init__(self, pool):
        self.pool = pool

    def slots(self) -> list[tuple[int, GroupSpec]]:
        """(directory slot, spec) of every group, default first."""
        out = {0: DEFAULT_SPEC}
        for name, v in self.pool.records(GROUP_PREFIX):
            spec = GroupSpec(name, int(v["priority"]), float(v["min"]), float(v["max"]),
                             v["promote"], bool(v["pinned"]))
            out[int(v.get("slot", 0))] = spec
        return sorted(out.items())

    def specs(self) -> dict[str, GroupSpec]:
        """Every group by name."""
        return {s.name: s for _, s in self.slots()}

    def spec(self, name: str) -> GroupSpec:
        """The group called ``name``; NotFound if there is none."""
        s = self.specs().get(name)
        if s is None:
            raise NotFound(f"no eviction group {name!r}")
        return s

    def slot_table(self) -> list[GroupSpec | None]:
        """The groups as the cache directory numbers them (None: an unused slot)."""
        table: list[GroupSpec | None] = [None] * MAX_GROUPS
        for slot, s in self.slots():
            table[slot] = s
        return table

    def _put_group(self, spec: GroupSpec, slot: int) -> None:
        self.pool.write_records({GROUP_PREFIX + spec.name: dict(asdict(spec), slot=slot)})

    def create(self, spec: GroupSpec) -> GroupSpec:
        """Store a new group in the lowest free directory slot, checked with the others."""
        if spec.name.startswith((".", "-")):
            raise CacheError(f"invalid group name {spec.name!r}")
        spec.check()
        groups = self.slots()
        if spec.name in {s.name for _, s in groups}:
            raise AlreadyExists(f"eviction group {spec.name!r} already exists")
        used = {slot for slot, _ in groups}
        free = [i for i in range(MAX_GROUPS) if i not in used]
        if not free:
            raise CacheError(f"at most {MAX_GROUPS} eviction groups")
        validate_groups([s for _, s in groups] + [spec])
        self._put_group(spec, free[0])
        return spec

    def update(self, name: str, **changes) -> GroupSpec:
        """Change a group's settings (a None value keeps that setting), checked with the others."""
        groups = self.slots()
        slots = {s.name: slot for slot, s in groups}
        if name not in slots:
            raise NotFound(f"no eviction group {name!r}")
        old = next(s for _, s in groups if s.name == name)
        new = replace(old, **{k: v for k, v in changes.items() if v is not None})
        new.check()
        validate_groups([new if s.name == name else s for _, s in groups])
        self._put_group(new, slots[name])
        return new

    def delete(self, name: str) -> list[str]:
        """Delete a group; VMs and vdisks assigned to it go back to ``default`` (their uuids
        are returned)."""
        if name == DEFAULT:
            raise CacheError("the default group cannot be deleted")
        self.spec(name)
        gone = [GROUP_PREFIX + name]
        moved = []
        for kind in KINDS:
            for uid, g in self.pool.records(f"{ASSIGN_PREFIX}{kind}/"):
                if g == name:
                    gone.append(f"{ASSIGN_PREFIX}{kind}/{uid}")
                    moved.append(uid)
        self.pool.write_records({}, gone)
        return moved

    def resolve(self, name: str, kind: str | None = None) -> tuple[str, str, str]:
        """(kind, uuid, name) of a VM or vdisk called ``name``; a VM wins if both exist. A
        sub-vdisk (``<vg>/<lv>``, an LV on a datastore LUN) is a vdisk whose uuid is
        ``<vdisk uuid>/<vg>/<lv>`` (docs/datastores.md)."""
        pool = self.pool
        if kind not in (None, *KINDS):
            raise InvalidArgument(f"kind must be vm or vdisk, not {kind!r}")
        if "/" in name and kind != "vm":
            return "vdisk", datastores.find_sub_vdisk(pool, name)[0], name
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
        """Put a VM or vdisk in ``group`` (``default``: drop its assignment)."""
        self.spec(group)
        kind, uid, _ = self.resolve(name, kind)
        key = f"{ASSIGN_PREFIX}{kind}/{uid}"
        if group == DEFAULT:
            self.pool.write_records({}, [key])
        else:
            self.pool.write_records({key: group})
        return {"kind": kind, "name": name, "uuid": uid, "group": group}

    def pin(self, vdisk: str, pinned: bool) -> dict:
        """Pin (or unpin) a vdisk's (or sub-vdisk's) cached blocks."""
        if "/" in vdisk:
            key = datastores.find_sub_vdisk(self.pool, vdisk)[0]
            if pinned:
                self.pool.write_records({PIN_PREFIX + key: True})
            else:
                self.pool.write_records({}, [PIN_PREFIX + key])
            return {"name": vdisk, "pinned": pinned, "group": self.members()[key][0]}
        disk = self.pool.vdisk(vdisk)
        if pinned:
            self.pool.write_records({PIN_PREFIX + disk.uuid: True})
        else:
            self.pool.write_records({}, [PIN_PREFIX + disk.uuid])
        return {"name": disk.name, "pinned": pinned, "group": self.group_of(disk)}

    def group_of(self, disk, specs: dict | None = None) -> str:
        """The group a vdisk is in: its own assignment, else its VM's, else ``default``."""
        specs = specs if specs is not None else self.specs()
        for key in (f"{ASSIGN_PREFIX}vdisk/{disk.uuid}",
                    f"{ASSIGN_PREFIX}vm/{disk.vm}" if disk.vm else None):
            if key is None:
                continue
            g = self.pool.record(key)
            if g is not None and g in specs:
                return g
        return DEFAULT

    def pinned(self, disk) -> bool:
        """Whether a vdisk's cached blocks are pinned."""
        return bool(self.pool.record(PIN_PREFIX + disk.uuid))

    def members(self) -> dict[str, tuple[str, bool]]:
        """vdisk uuid (``<uuid>/<vg>/<lv>`` for a sub-vdisk) -> (group, pinned) for every vdisk
        and sub-vdisk of the pool: the rule of ``group_of``
        from one scan of each key family, not three reads per vdisk."""
        specs = self.specs()
        by_vdisk = dict(self.pool.records(f"{ASSIGN_PREFIX}vdisk/"))
        by_vm = dict(self.pool.records(f"{ASSIGN_PREFIX}vm/"))
        pins = {uid for uid, v in self.pool.records(PIN_PREFIX) if v}
        out = {}
        for d in self.pool.vdisks():
            group = DEFAULT
            for g in (by_vdisk.get(d.uuid), by_vm.get(d.vm) if d.vm else None):
                if g is not None and g in specs:
                    group = g
                    break
            out[d.uuid] = (group, d.uuid in pins)
        # sub-vdisks (LVs on datastore LUNs, cached under ids of their own): their own
        # assignment, else their VM's, else their LUN's group; pinned by their own pin or
        # their LUN's
        for uid, sub, vm in datastores.sub_vdisk_owners(self.pool):
            lun = out.get(uid)
            if lun is None:
                continue
            key = f"{uid}/{sub}"
            group = lun[0]
            for g in (by_vdisk.get(key), by_vm.get(vm) if vm else None):
                if g is not None and g in specs:
                    group = g
                    break
            out[key] = (group, lun[1] or key in pins)
        return out

    def dump(self) -> dict:
        """Groups (with their slots), assignments by VM and vdisk uuid, and pinned vdisks, as
        stored; for ``Pool.dump``."""
        return {"groups": [dict(asdict(s), slot=slot) for slot, s in self.slots()],
                "assigned": {kind: dict(self.pool.records(f"{ASSIGN_PREFIX}{kind}/"))
                             for kind in KINDS},
                "pinned": [uid for uid, _ in self.pool.records(PIN_PREFIX)]}
