"""The management verbs, one method per CLI command, over an open Pool.

The CLI calls an ``Api`` directly when no server runs and an ``AdminClient`` (same methods, over
the admin socket) when one does; the server's subclass also applies each change to the live
targets. Methods take and return plain JSON values so the two paths cannot drift apart.
"""

from __future__ import annotations

from vmblock.cache.manager import CacheApi
from vmblock.errors import InvalidArgument, ServerError
from vmblock.iscsi.chap import ChapSecrets
from vmblock.meta import Pool, Vdisk
from vmblock.meta.pool import Snapshot
from vmblock.settings import format_portal
from vmblock.units import parse_size

# (group, verb) pairs the admin socket serves; the method is ``<group>_<verb>``.
VERBS = (
    ("vm", "create"), ("vm", "list"), ("vm", "show"), ("vm", "set"), ("vm", "delete"),
    ("vm", "snapshot"), ("vm", "clone"), ("vm", "revert"),
    ("vdisk", "create"), ("vdisk", "list"), ("vdisk", "show"), ("vdisk", "delete"),
    ("vdisk", "resize"), ("vdisk", "snapshot"), ("vdisk", "revert"), ("vdisk", "move"),
    ("snapshot", "list"), ("snapshot", "delete"),
    ("config", "get"), ("config", "set"), ("config", "unset"), ("config", "list"),
    ("session", "list"), ("pool", "show"), ("pool", "check"), ("event", "list"),
    ("group", "create"), ("group", "list"), ("group", "show"), ("group", "set"),
    ("group", "delete"), ("group", "assign"), ("vdisk", "pin"), ("vdisk", "unpin"),
    ("cache", "show"), ("cache", "preload"),
)

_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class Api(CacheApi):
    """Management verbs on a pool opened by this process (cache verbs: ``CacheApi``)."""

    def __init__(self, pool: Pool):
        self.pool = pool

    def portals(self) -> list[tuple[str, int]]:
        """Where initiators reach the targets; without a server, what the next one will use."""
        return self.pool.settings().get("iscsi.portals")

    def chap(self, iqn: str) -> ChapSecrets | None:
        """The CHAP credentials an initiator must give ``iqn``; without a server, those the
        pool stores (the server's subclass answers what the running target asks)."""
        settings = self.pool.settings()
        user = settings.get(f"auth.target.{iqn}.chap_user")
        secret = settings.get(f"auth.target.{iqn}.chap_secret")
        return ChapSecrets(user, secret) if user and secret else None

    def url(self, disk: Vdisk) -> str:
        """``iscsi://[user%secret@]host:port/iqn/lun``, libiscsi's syntax (QEMU's too), so
        the URL works as it is; the settings' CHAP check keeps out what it cannot carry."""
        host, port = self.portals()[0]
        chap = self.chap(disk.target)
        creds = f"{chap.user}%{chap.secret}@" if chap else ""
        return (f"iscsi://{creds}{format_portal(_WILDCARD.get(host, host), port)}/"
                f"{disk.target}/{disk.lun}")

    # What a running server must also do after a change; nothing runs to be told without one.

    def vdisk_created(self, disk: Vdisk, new_target: bool) -> None:
        pass

    def vdisk_deleted(self, disk: Vdisk) -> None:
        pass

    def vdisk_resized(self, disk: Vdisk) -> None:
        pass

    def config_changed(self, key: str) -> bool:
        """Apply a changed key to what runs; False when it takes effect at the next start."""
        return False

    def _vdisk_json(self, disk: Vdisk) -> dict:
        d = disk.dump()
        d["vm"] = self.pool.vm_by_uuid(disk.vm).name if disk.vm else None
        d["url"] = self.url(disk)
        d["used_bytes"] = d["allocated_bytes"] = self.pool.used_bytes(disk)
        d["tier_bytes"] = self.pool.tier_bytes(disk)    # used bytes on each tier
        return d

    def _snapshot_json(self, snap: Snapshot) -> dict:
        d = snap.dump()
        d["kind"] = "vdisk" if snap.vdisk else "vm"
        try:
            d["vm_name"] = self.pool.vm_by_uuid(snap.vm).name if snap.vm else None
        except Exception:   # the VM is gone (its snapshots normally go with it)
            d["vm_name"] = None
        d["vdisk_name"] = snap.disks[0]["name"] if snap.vdisk else None
        d["used_bytes"] = sum(e["used_bytes"] for e in snap.disks)
        return d

    def vm_create(self, name: str, guest_os: str = "", location: str = "") -> dict:
        return self.pool.create_vm(name, guest_os, location).dump()

    def vm_set(self, name: str, guest_os: str | None = None, location: str | None = None,
               active: bool | None = None) -> dict:
        fields = {k: v for k, v in (("guest_os", guest_os), ("location", location),
                                    ("active", active)) if v is not None}
        return self.pool.update_vm(name, **fields).dump()

    def vm_list(self) -> list[dict]:
        disks: dict[str, list[str]] = {}
        used: dict[str, int] = {}
        for d in self.pool.vdisks():
            if d.vm:
                disks.setdefault(d.vm, []).append(d.name)
                used[d.vm] = used.get(d.vm, 0) + self.pool.used_bytes(d)
        return [dict(vm.dump(), vdisks=disks.get(vm.uuid, []), used_bytes=used.get(vm.uuid, 0))
                for vm in self.pool.vms()]

    def vm_show(self, name: str) -> dict:
        """The VM with its vdisks (name, url, size, used), snapshots and lineage."""
        vm = self.pool.vm(name)
        disks = [{"name": d.name, "uuid": d.uuid, "url": self.url(d),
                  "size_bytes": d.size_bytes, "used_bytes": self.pool.used_bytes(d),
                  "lun": d.lun, "target": d.target, "parent": d.parent}
                 for d in self.pool.vdisks(vm=name)]
        clones = [{"name": v.name, "uuid": v.uuid, "snapshot": v.parent.get("snapshot_name"),
                   "live": v.parent.get("live")}
                  for v in self.pool.vms() if v.parent and v.parent.get("vm") == vm.uuid]
        return dict(vm.dump(), vdisks=disks,
                    used_bytes=sum(d["used_bytes"] for d in disks),
                    snapshots=[self._snapshot_json(s) for s in self.pool.snapshots(vm=name)],
                    lineage={"parent": vm.parent, "clones": clones})

    def vm_delete(self, name: str, purge: bool = False, force: bool = False) -> dict:
        """``force``: purge even while iSCSI sessions use the vdisks (only a server has any)."""
        vm, disks = self.pool.delete_vm(name, purge=purge)
        for disk in disks:
            self.vdisk_deleted(disk)
        return dict(vm.dump(), vdisks_deleted=[d.name for d in disks])

    def vm_snapshot(self, name: str, snapshot: str) -> dict:
        return self._snapshot_json(self.pool.snapshot_vm(name, snapshot))

    def vm_clone(self, name: str, new_name: str, snapshot: str | None = None,
                 live: bool = False) -> dict:
        vm, disks, new_targets = self.pool.clone_vm(name, new_name, snapshot=snapshot,
                                                    live=live)
        for disk in disks:
            self.vdisk_created(disk, disk.target in new_targets)
            if disk.target in new_targets:
                new_targets.remove(disk.target)
        return self.vm_show(vm.name)

    def _revert_json(self, snap: Snapshot, done: list) -> dict:
        return {"snapshot": self._snapshot_json(snap),
                "vdisks": [{"name": d.name, "size_bytes": d.size_bytes,
                            "size_changed": changed} for d, changed in done]}

    def vm_revert(self, name: str, snapshot: str, force: bool = False) -> dict:
        snap = self.pool.snapshot(snapshot, vm=name)
        if snap.vdisk is not None:
            raise InvalidArgument(f"{snapshot!r} is a snapshot of vdisk "
                                  f"{snap.disks[0]['name']}; use vdisk revert")
        return self._revert_json(snap, self.pool.revert(snap))

    def vdisk_snapshot(self, name: str, snapshot: str) -> dict:
        return self._snapshot_json(self.pool.snapshot_vdisk(name, snapshot))

    def vdisk_revert(self, name: str, snapshot: str, force: bool = False) -> dict:
        snap = self.pool.snapshot(snapshot, vdisk=name)
        return self._revert_json(snap, self.pool.revert(snap))

    def vdisk_resize(self, name: str, size: str | int) -> dict:
        disk = self.pool.resize_vdisk(name, parse_size(size))
        self.vdisk_resized(disk)
        return self._vdisk_json(disk)

    def vdisk_move(self, name: str, tier: str) -> dict:
        r = self.pool.move_vdisk(name, tier)
        return dict(self._vdisk_json(self.pool.vdisk(name)), move=r)

    def snapshot_list(self, vm: str | None = None) -> list[dict]:
        return [self._snapshot_json(s) for s in self.pool.snapshots(vm=vm)]

    def snapshot_delete(self, name: str, vm: str | None = None,
                        vdisk: str | None = None) -> dict:
        return self._snapshot_json(self.pool.delete_snapshot(name, vm=vm, vdisk=vdisk))

    def pool_check(self) -> dict:
        return self.pool.check()

    def event_list(self, limit: int = 100) -> list[dict]:
        return self.pool.events(limit)

    def vdisk_create(self, name: str, size: str | int, vm: str | None = None,
                     target: str | None = None) -> dict:
        disk, new_target = self.pool.create_vdisk(name, parse_size(size), vm=vm, target=target)
        self.vdisk_created(disk, new_target)
        return self._vdisk_json(disk)

    def vdisk_list(self, vm: str | None = None) -> list[dict]:
        return [self._vdisk_json(d) for d in self.pool.vdisks(vm=vm)]

    def vdisk_show(self, name: str) -> dict:
        return self._vdisk_json(self.pool.vdisk(name))

    def vdisk_delete(self, name: str, force: bool = False) -> dict:
        """``force``: delete even while iSCSI sessions use it (only a server has any)."""
        disk = self.pool.delete_vdisk(name)
        self.vdisk_deleted(disk)
        return disk.dump()

    def config_get(self, key: str) -> dict:
        return {"key": key, "value": self.pool.config_get(key)}

    def config_set(self, key: str, value: str) -> dict:
        self.pool.config_set(key, value)
        return {"key": key, "value": value, "live": self.config_changed(key)}

    def config_unset(self, key: str) -> dict:
        self.pool.config_unset(key)
        return {"key": key, "live": self.config_changed(key)}

    def config_list(self) -> dict:
        return self.pool.config()

    def session_list(self) -> list[dict]:
        raise ServerError(f"no server is running on pool {self.pool.path}; "
                          f"sessions exist only while `vmblock serve` runs")

    def pool_show(self) -> dict:
        return self.pool.dump()
