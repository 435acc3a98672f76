"""The management verbs, one method per CLI command, over an open Pool.

The CLI calls an ``Api`` directly when no server runs and an ``AdminClient`` (same methods, over
the admin socket) when one does; the server's subclass also applies each change to the live
targets. Methods take and return plain JSON values so the two paths cannot drift apart.
"""

from __future__ import annotations

from vmblock.config import format_portal, parse_size, portals_of
from vmblock.errors import ServerError
from vmblock.meta import Pool, Vdisk

# (group, verb) pairs the admin socket serves; the method is ``<group>_<verb>``.
VERBS = (
    ("vm", "create"), ("vm", "list"), ("vm", "show"), ("vm", "delete"),
    ("vdisk", "create"), ("vdisk", "list"), ("vdisk", "show"), ("vdisk", "delete"),
    ("config", "get"), ("config", "set"), ("config", "unset"), ("config", "list"),
    ("session", "list"), ("pool", "show"),
)

_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class Api:
    """Management verbs on a pool opened by this process."""

    def __init__(self, pool: Pool):
        self.pool = pool

    def portals(self) -> list[tuple[str, int]]:
        """Where initiators reach the targets; without a server, what the next one will use."""
        return portals_of(self.pool.config())

    def url(self, disk: Vdisk) -> str:
        host, port = self.portals()[0]
        return f"iscsi://{format_portal(_WILDCARD.get(host, host), port)}/{disk.target}/{disk.lun}"

    # What a running server must also do after a change; nothing runs to be told without one.

    def vdisk_created(self, disk: Vdisk, new_target: bool) -> None:
        pass

    def vdisk_deleted(self, disk: Vdisk) -> None:
        pass

    def config_changed(self, key: str) -> bool:
        """Apply a changed key to what runs; False when it takes effect at the next start."""
        return False

    def _vdisk_json(self, disk: Vdisk) -> dict:
        d = disk.dump()
        d["vm"] = self.pool.vm_by_uuid(disk.vm).name if disk.vm else None
        d["url"] = self.url(disk)
        d["allocated_bytes"] = self.pool.allocated_bytes(disk)
        return d

    def vm_create(self, name: str, guest_os: str = "") -> dict:
        return self.pool.create_vm(name, guest_os).dump()

    def vm_list(self) -> list[dict]:
        disks: dict[str, list[str]] = {}
        for d in self.pool.vdisks():
            if d.vm:
                disks.setdefault(d.vm, []).append(d.name)
        return [dict(vm.dump(), vdisks=disks.get(vm.uuid, [])) for vm in self.pool.vms()]

    def vm_show(self, name: str) -> dict:
        vm = self.pool.vm(name)
        return dict(vm.dump(), vdisks=[
            {"name": d.name, "uuid": d.uuid, "url": self.url(d), "size_bytes": d.size_bytes,
             "lun": d.lun, "target": d.target} for d in self.pool.vdisks(vm=name)])

    def vm_delete(self, name: str) -> dict:
        return self.pool.delete_vm(name).dump()

    def vdisk_create(self, name: str, size: str | int, vm: str | None = None,
                     target: str | None = None) -> dict:
        disk, new_target = self.pool.create_vdisk(name, parse_size(size), vm=vm, target=target)
        self.vdisk_created(disk, new_target)
        return self._vdisk_json(disk)

    def vdisk_list(self, vm: str | None = None) -> list[dict]:
        return [self._vdisk_json(d) for d in self.pool.vdisks(vm=vm)]

    def vdisk_show(self, name: str) -> dict:
        return self._vdisk_json(self.pool.vdisk(name))

    def vdisk_delete(self, name: str) -> dict:
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
