"""Snapshots, revert and clones: frozen copies of extent maps and the VMs made from them.

A snapshot (``snapshot/<uuid>``, named by ``snapname/<scope>/<name>``; see
``vmblock.meta.model``) holds, per vdisk, a frozen map that shares every AU of the live map it
was copied from; revert copies a frozen map back over the live one, a clone copies it (or a
live map) to a new vdisk. Each change is one batch in one store transaction, metadata only;
the maps are copied leaf by leaf, and the store lock is held only while the live maps are read
and their references taken -- all of a VM's vdisks in one locked step, so the snapshot is one
point in time across them -- never for the meta DB write (``vmblock.store.commit.MapTxn``).

These are functions of an open ``Pool``: it keeps the meta DB, the store and the records of
VMs, vdisks and targets they read and write, and its public methods of the same names
delegate here, so callers hold only the pool. ``drop_snapshot`` needs no pool: deleting a VM
or a vdisk drops its snapshots in the pool's own batch.
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import asdict

from rocksdict import WriteBatch

from vmblock import DEFAULT_TARGET
from vmblock.errors import AlreadyExists, InvalidArgument, NotFound
from vmblock.meta.model import (
    BLOCK_SIZE,
    Snapshot,
    Target,
    Vdisk,
    Vm,
    check_name,
    delete_record,
    new_batch,
    now,
    put_record,
    put_vdisk,
)
from vmblock.meta.policies import inherited_vdisk_qos
from vmblock.store.layout import TIER_NAMES


def snapshots(pool, vm: str | None = None) -> list[Snapshot]:
    """Every snapshot, or those of the VM named ``vm`` (its VM and one-vdisk snapshots),
    oldest first."""
    snaps = [Snapshot(**v) for _, v in pool.records("snapshot/")]
    if vm is not None:
        owner = pool.vm(vm).uuid
        snaps = [s for s in snaps if s.vm == owner]
    return sorted(snaps, key=lambda s: (s.created, s.name))


def snapshot(pool, name: str, vm: str | None = None, vdisk: str | None = None) -> Snapshot:
    """A snapshot by name within its VM (VM snapshots) or vdisk (one-vdisk snapshots)."""
    if (vm is None) == (vdisk is None):
        raise InvalidArgument("name the snapshot's VM or vdisk (exactly one)")
    scope = pool.vm(vm).uuid if vm is not None else pool.vdisk(vdisk).uuid
    uid = pool.record(f"snapname/{scope}/{name}")
    if uid is None:
        raise NotFound(f"no snapshot {name!r} of {'VM' if vm else 'vdisk'} "
                       f"{vm or vdisk!r}")
    return Snapshot(**pool.record(f"snapshot/{uid}"))


def _snapshot_disks(disks: list[Vdisk], mids: list[int]) -> list[dict]:
    return [{"vdisk": d.uuid, "name": d.name, "map_id": m, "src_map": d.map_id,
             "size_bytes": d.size_bytes, "used_bytes": 0} for d, m in zip(disks, mids)]


def _take_snapshot(pool, name: str, vm: Vm | None, vdisk: Vdisk | None,
                   disks: list[Vdisk]) -> Snapshot:
    check_name("snapshot", name)
    scope = vdisk.uuid if vdisk is not None else vm.uuid
    if pool.record(f"snapname/{scope}/{name}") is not None:
        raise AlreadyExists(f"a snapshot named {name!r} already exists there")
    batch = new_batch()
    with pool.store.transaction(batch) as txn:
        # again inside: transactions run one at a time, so two takers cannot both pass
        # (a server may run this verb off its event loop)
        if pool.record(f"snapname/{scope}/{name}") is not None:
            raise AlreadyExists(f"a snapshot named {name!r} already exists there")
        mids = pool.next_map_ids(batch, len(disks))
        snap = Snapshot(str(uuidlib.uuid4()), name, vm.uuid if vm else None,
                        vdisk.uuid if vdisk else None,
                        _snapshot_disks(disks, mids), created=now())
        used = txn.copy_maps([(d.map_id, entry["map_id"], None)
                              for d, entry in zip(disks, snap.disks)])
        for entry, n in zip(snap.disks, used):
            entry["used_bytes"] = n
        put_record(batch, f"snapshot/{snap.uuid}", snap.dump())
        put_record(batch, f"snapname/{scope}/{name}", snap.uuid)
    return snap


def snapshot_vm(pool, vm_name: str, name: str) -> Snapshot:
    """Freeze every vdisk of a VM in one batch (the server drains their writes first)."""
    vm = pool.vm(vm_name)
    disks = pool.vdisks(vm=vm_name)
    if not disks:
        raise InvalidArgument(f"VM {vm_name!r} has no vdisks to snapshot")
    return _take_snapshot(pool, name, vm, None, disks)


def snapshot_vdisk(pool, vdisk_name: str, name: str) -> Snapshot:
    """Freeze one vdisk in a snapshot named within that vdisk (metadata only, one batch)."""
    disk = pool.vdisk(vdisk_name)
    vm = pool.vm_by_uuid(disk.vm) if disk.vm else None
    return _take_snapshot(pool, name, vm, disk, [disk])


def drop_snapshot(batch: WriteBatch, txn, snap: Snapshot) -> None:
    """A snapshot's records and frozen maps, dropped in ``batch`` and the store transaction
    ``txn`` (a ``MapTxn``)."""
    for d in snap.disks:
        txn.drop_map(d["map_id"])
    delete_record(batch, f"snapshot/{snap.uuid}")
    delete_record(batch, f"snapname/{snap.scope}/{snap.name}")


def delete_snapshot(pool, name: str, vm: str | None = None,
                    vdisk: str | None = None) -> Snapshot:
    """Delete a snapshot and its frozen maps in one batch; AUs nothing else shares are freed."""
    snap = snapshot(pool, name, vm=vm, vdisk=vdisk)
    batch = new_batch()
    with pool.store.transaction(batch) as txn:
        drop_snapshot(batch, txn, snap)
    return snap


def revert(pool, snap: Snapshot) -> list[tuple[Vdisk, bool]]:
    """Make each still-existing vdisk of ``snap`` its frozen map again, in one batch.
    Returns (vdisk, size changed) per reverted vdisk."""
    done = []
    batch = new_batch()
    with pool.store.transaction(batch) as txn:
        for entry in snap.disks:
            raw = pool.record(f"vdisk/{entry['vdisk']}")
            if raw is None:
                continue     # deleted since: a clone of the snapshot can bring it back
            disk = Vdisk(**raw)
            changed = disk.size_bytes != entry["size_bytes"]
            disk.size_bytes = entry["size_bytes"]
            txn.drop_map(disk.map_id)
            txn.copy_map(entry["map_id"], disk.map_id, dst_size=disk.size_bytes)
            put_record(batch, f"vdisk/{disk.uuid}", asdict(disk))
            done.append((disk, changed))
    return done


def clone_name(src_vm: str, new_vm: str, vdisk_name: str) -> str:
    """The name of a clone's vdisk: ``src_vm`` prefix swapped for ``new_vm`` (web-disk0 ->
    web2-disk0), else ``new_vm`` prepended, so clones of one VM do not collide."""
    if vdisk_name == src_vm or vdisk_name.startswith(src_vm + "-"):
        return new_vm + vdisk_name[len(src_vm):]
    return f"{new_vm}-{vdisk_name}"


def clone_vm(pool, src_name: str, new_name: str, snapshot_name: str | None = None,
             live: bool = False, inherit: bool = True) -> tuple[Vm, list[Vdisk], list[str]]:
    """A new VM whose vdisks share every AU of a snapshot of ``src_name`` (or of its
    live vdisks: the server drains them first), as new LUNs of the same targets; metadata
    only, one batch; with the source's policies unless not ``inherit``. Returns the VM, its
    vdisks and the targets that had to be created."""
    if (snapshot_name is None) == (not live):
        raise InvalidArgument("clone from --snapshot NAME or --live (exactly one)")
    check_name("VM", new_name)
    src = pool.vm(src_name)
    if pool.record(f"vmname/{new_name}") is not None:
        raise AlreadyExists(f"a VM named {new_name!r} already exists")
    if live:
        snap = None
        sources = [{"vdisk": d.uuid, "name": d.name, "map_id": d.map_id,
                    "size_bytes": d.size_bytes, "target": d.target,
                    "block_size": d.block_size, "tier": d.tier}
                   for d in pool.vdisks(vm=src_name)]
    else:
        snap = snapshot(pool, snapshot_name, vm=src_name)
        sources = []
        for entry in snap.disks:
            raw = pool.record(f"vdisk/{entry['vdisk']}")
            sources.append(dict(entry, target=raw["target"] if raw else DEFAULT_TARGET,
                                block_size=raw["block_size"] if raw else BLOCK_SIZE,
                                tier=raw.get("tier", "capacity") if raw else "capacity"))
    names = [clone_name(src_name, new_name, s["name"]) for s in sources]
    for n in names:
        check_name("vdisk", n)
        if pool.record(f"vdiskname/{n}") is not None:
            raise AlreadyExists(f"a vdisk named {n!r} already exists")
    luns: dict[str, list[int]] = {}
    for s in sources:
        luns.setdefault(s["target"], [])
    for iqn in luns:
        luns[iqn] = pool.free_luns(iqn, sum(1 for s in sources if s["target"] == iqn))
    new_targets = [iqn for iqn in luns if pool.record(f"target/{iqn}") is None]
    when = now()
    lineage = {"vm": src.uuid, "vm_name": src.name, "live": live, "created": when,
               "snapshot": snap.uuid if snap else None,
               "snapshot_name": snap.name if snap else None}
    # a clone inherits its source's policies (quota, snapshot schedule, QoS): docs/events.md
    vm = Vm(str(uuidlib.uuid4()), new_name, guest_os=src.guest_os, created=when,
            parent=lineage, policies=dict(src.policies) if inherit else {})
    disks = []
    copies = []
    batch = new_batch()
    with pool.store.transaction(batch) as txn:
        mids = pool.next_map_ids(batch, len(sources))
        for iqn in new_targets:
            pool.put_target(batch, Target(iqn, created=when))
        put_record(batch, f"vm/{vm.uuid}", vm.dump())
        put_record(batch, f"vmname/{new_name}", vm.uuid)
        for s, n, mid in zip(sources, names, mids):
            disk = Vdisk(str(uuidlib.uuid4()), n, vm.uuid, s["size_bytes"], s["target"],
                         luns[s["target"]].pop(0), block_size=s["block_size"],
                         created=when, map_id=mid,
                         parent={"vdisk": s["vdisk"], "vdisk_name": s["name"],
                                 "map_id": s["map_id"], "live": live,
                                 "snapshot": snap.uuid if snap else None,
                                 "snapshot_name": snap.name if snap else None},
                         tier=s["tier"],
                         qos=inherited_vdisk_qos(pool, s["vdisk"]) if inherit else {})
            copies.append((s["map_id"], mid, disk.size_bytes))
            txn.set_tier(mid, TIER_NAMES.index(disk.tier))
            put_vdisk(batch, disk)
            disks.append(disk)
        txn.copy_maps(copies)       # a live clone: one point in time across the vdisks
    return vm, disks, new_targets
