"""The verbs of hypervisors: ``hypervisor add|list|show|remove|sync`` and ``vm import``.

Records live in the pool (``vmblock.meta.hypervisors``); a running server follows each one
with a connector (``vmblock.hypervisor``), which these verbs start, stop, ask for a sync or read
the live state of (``Runtime.hypervisors``). Without a server the records change all the same
and the next ``vmblock serve`` connects them; ``sync``, the live state and ``vm import`` need a
server.

``vm import`` is one verb in steps, driven by the CLI, which copies the data itself
(``vmblock.hypervisor.importer.copy_image``) between them: ``prepare`` creates the VM (the
domain's uuid and name) and one vdisk per image disk and records the import
(``vmblock.meta.hypervisors.import_state``), or returns the one under way to resume it;
``copied`` marks a disk done; ``finish`` ends it, with ``switch`` redefining the domain on the
new LUNs; ``abort`` deletes what ``prepare`` made.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Protocol
from urllib.parse import urlsplit

from vmblock.admin.schema import Name, OneOf, Text
from vmblock.admin.verbs import verb
from vmblock.errors import AlreadyExists, InvalidArgument, NotFound, ServerError
from vmblock.hypervisor.connector import libvirt_module
from vmblock.hypervisor.domains import parse_domain
from vmblock.hypervisor.importer import (
    LunAddress,
    define_switched,
    image_disks,
    image_size,
    read_domain,
    secret_usage,
    switched_xml,
)
from vmblock.meta.hypervisors import (
    SOURCE_PREFIX,
    check_uri,
    end_import,
    hypervisor as find_hypervisor,
    import_state,
    put_import_state,
    sync_vm,
    update_vm,
)
from vmblock.units import parse_seconds

if TYPE_CHECKING:
    from vmblock.hypervisor.manager import Hypervisors
    from vmblock.meta import Pool

# A libvirt URI (with an ssh key's or auth.conf's path in its query); an interval like "30s".
Uri = Annotated[str, Text(4096)]
Interval = Annotated[str, Text(32)]
DEFAULT_INTERVAL = "30s"
DomainName = Annotated[str, Text(256)]
ImportStep = Annotated[str, OneOf(("prepare", "copied", "finish", "abort"))]
SECTOR = 512


class Runtime(Protocol):
    """What a running server shows the hypervisor verbs."""

    hypervisors: Hypervisors | None

    def add_target(self, iqn: str) -> None:
        """Serve a new target."""

    def add_vdisk(self, disk) -> None:
        """Serve a new vdisk."""

    def remove_vdisk(self, disk) -> None:
        """Stop serving a vdisk."""

    stores: dict


class Urls(Protocol):
    """What the verbs need of ``Api`` to say where a vdisk is served."""

    def urls(self):
        """``url(vdisk)``: ``iscsi://[user%secret@]host:port/iqn/lun``."""


class HypervisorVerbs:
    """The hypervisor verbs of one pool, live on ``runtime`` when a server runs."""

    def __init__(self, pool: Pool, runtime: Runtime | None = None, api: Urls | None = None):
        self.pool = pool
        self.runtime = runtime
        self.api = api

    def _live(self) -> Hypervisors | None:
        return getattr(self.runtime, "hypervisors", None)

    def _vms_of(self, name: str) -> list[dict]:
        return [{"name": vm.name, "uuid": vm.uuid, "active": vm.active,
                 "orphaned": vm.orphaned, "meta_stale": vm.meta_stale}
                for vm in self.pool.vms() if vm.hypervisor == name]

    @verb
    def hypervisor_add(self, name: Name, uri: Uri, interval: Interval = DEFAULT_INTERVAL
                       ) -> dict:
        """Follow a libvirt hypervisor (its domains' disks on this server's LUNs become VMs),
        resynced fully every ``interval``."""
        libvirt_module()            # a clear message now rather than a silent record
        check_uri(uri)
        hv = self.pool.add_hypervisor(name, uri, parse_seconds(interval))
        live = self._live()
        if live is not None:
            live.connect(hv)
        return hv.dump()

    @verb
    def hypervisor_list(self) -> list[dict]:
        """Every hypervisor with its connection state (``not connected`` without a server)."""
        live = self._live()
        out = []
        for hv in self.pool.hypervisors():
            c = live.connectors.get(hv.name) if live is not None else None
            out.append(dict(hv.dump(), state=c.state if c else "not connected",
                            error=c.error if c else "", vms=len(self._vms_of(hv.name))))
        return out

    @verb
    def hypervisor_show(self, name: Name) -> dict:
        """One hypervisor: record, connection state, its domains with the vdisks they use,
        the disks that are no LUN of this server (``unmapped_disks``, with the reason) and
        its VMs."""
        hv = find_hypervisor(self.pool, name)
        live = self._live()
        state = live.show(name) if live is not None else {
            "state": "not connected", "reachable": False, "domains": [], "unmapped_disks": []}
        return dict(hv.dump(), **state, vms=self._vms_of(name))

    @verb
    def hypervisor_remove(self, name: Name) -> dict:
        """Stop following a hypervisor; its VMs and their vdisks stay (marked meta_stale)."""
        hv = self.pool.remove_hypervisor(name)
        live = self._live()
        if live is None:
            for vm in self.pool.vms():
                if vm.hypervisor == name:
                    update_vm(self.pool, vm.uuid, meta_stale=True)
            return hv.dump()

        async def disconnect() -> dict:
            await live.disconnect(name)
            return hv.dump()
        return disconnect()

    @verb
    def hypervisor_sync(self, name: Name) -> dict:
        """Read every domain of a hypervisor now (a reconnect attempt when it is unreachable);
        answers ``hypervisor show``."""
        find_hypervisor(self.pool, name)
        live = self._live()
        if live is None:
            raise ServerError(f"no server is running on pool {self.pool.path}; hypervisors "
                              f"are followed only while `vmblock serve` runs")

        async def sync() -> dict:
            await live.sync(name)
            return self.hypervisor_show(name)
        return sync()

    # --- vm import ----------------------------------------------------------------------------

    @verb
    def vm_import(self, hypervisor: Name, domain: DomainName, step: ImportStep = "prepare",
                  disk: Name | None = None, switch: bool = False) -> dict:
        """Import a domain whose disks are raw or qcow2 image files: one step of it (prepare
        [switch: refused unless shut off], copied DISK, finish [switch], abort); the CLI
        copies between them."""
        find_hypervisor(self.pool, hypervisor)
        live = self._live()
        if live is None:
            raise ServerError(f"no server is running on pool {self.pool.path}; vm import "
                              f"copies through the server's LUNs: start `vmblock serve`")
        c = live.connectors.get(hypervisor)
        if c is None:
            raise ServerError(f"hypervisor {hypervisor} is not followed by this server")
        return self._import(c, domain, step, disk, switch)

    async def _import(self, c, domain: str, step: str, disk: str | None, switch: bool) -> dict:
        xml, state = await c.run_on(read_domain, domain)
        dom = parse_domain(xml, state)
        st = import_state(self.pool, dom.uuid)
        if step == "prepare":
            if st is not None:
                return self._plan(st, resumed=True)
            return self._plan(await self._prepare(c, dom, switch), resumed=False)
        if st is None:
            raise NotFound(f"no import of domain {dom.name} is under way")
        if step == "copied":
            for d in st["disks"]:
                if d["target"] == disk:
                    d["done"] = True
                    put_import_state(self.pool, dom.uuid, st)
                    return self._plan(st, resumed=False)
            raise NotFound(f"the import of {dom.name} has no disk {disk!r}")
        if step == "abort":
            return self._undo(st)
        left = [d["target"] for d in st["disks"] if not d["done"]]
        if left:
            raise InvalidArgument(f"disks {', '.join(left)} of {dom.name} are not copied yet")
        if switch:
            if dom.active:
                raise InvalidArgument(f"domain {dom.name} is {dom.state}: --switch needs it "
                                      f"shut off")
            luns = {d["target"]: self._lun(d["vdisk"]) for d in st["disks"]}
            secrets = {secret_usage(lun.iqn): (lun.iqn, lun.chap_secret)
                       for lun in luns.values() if lun.chap_user}
            await c.run_on(define_switched, switched_xml(xml, luns), secrets)
        end_import(self.pool, dom.uuid)
        return dict(self._plan(st, resumed=False), finished=True, switched=switch)

    async def _prepare(self, c, dom, switch: bool) -> dict:
        if dom.active and switch:
            raise InvalidArgument(f"domain {dom.name} is {dom.state}: --switch needs it shut "
                                  f"off (shut it down, then import)")
        if not c.local:
            raise InvalidArgument(f"hypervisor {c.name} runs on {c.host}, not here: vm import "
                                  f"reads the image files where vmblock runs; copy them here "
                                  f"(or run the import on that host)")
        images, skipped = image_disks(dom)
        if not images:
            why = "; ".join(f"{s['target']}: {s['reason']}" for s in skipped) or "no disks"
            raise InvalidArgument(f"domain {dom.name} has no raw or qcow2 image disk to "
                                  f"import ({why})")
        if self.pool.record(f"vm/{dom.uuid}") is not None:
            raise AlreadyExists(f"a VM with the uuid of domain {dom.name} ({dom.uuid}) exists "
                                f"already")
        loop = asyncio.get_running_loop()
        sizes = [await loop.run_in_executor(None, image_size, d.source["file"],
                                            d.format or "raw") for d in images]
        vm, _ = sync_vm(self.pool, dom.uuid, {
            "name": dom.name, "guest_os": dom.guest_os, "active": False, "location": c.host,
            "hypervisor": c.name, "source": SOURCE_PREFIX + c.name}, [])
        # a running guest writes its images while they are copied: read them all the same
        # (qemu-img -U, past QEMU's lock), and say the copy is not consistent
        warning = (f"domain {dom.name} is {dom.state}: its disks change while they are "
                   f"copied, so the copy is not consistent; shut it down and import again "
                   f"for one that is") if dom.active else ""
        st = {"hypervisor": c.name, "domain": dom.name, "uuid": dom.uuid, "disks": [],
              "skipped": skipped, "warning": warning}
        try:
            for d, size in zip(images, sizes):
                name = self._vdisk_name(f"{vm.name}-{d.target}", dom.uuid)
                made, new_target = self.pool.create_vdisk(name, -(-size // SECTOR) * SECTOR,
                                                           vm=vm.name)
                if new_target:
                    self.runtime.add_target(made.target)
                self.runtime.add_vdisk(made)
                st["disks"].append({"target": d.target, "path": d.source["file"],
                                    "format": d.format or "raw", "vdisk": name,
                                    "size_bytes": size, "done": False,
                                    "shared": dom.active})
            put_import_state(self.pool, dom.uuid, st)
        except BaseException:
            self._undo(st)
            raise
        return st

    def _vdisk_name(self, wanted: str, uid: str) -> str:
        name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in wanted)[:120]
        if self.pool.record(f"vdiskname/{name}") is None:
            return name
        return f"{name[:111]}-{uid[:8]}"

    def _undo(self, st: dict) -> dict:
        """Delete the vdisks and the VM an import made; forget the import."""
        deleted = []
        for d in st["disks"]:
            try:
                disk = self.pool.vdisk(d["vdisk"])
            except NotFound:
                continue
            if disk.uuid in self.runtime.stores:
                self.runtime.remove_vdisk(disk)
            self.pool.delete_vdisk(disk.name)
            deleted.append(disk.name)
        try:
            vm = self.pool.vm_by_uuid(st["uuid"])
            self.pool.delete_vm(vm.name)
        except NotFound:
            pass
        end_import(self.pool, st["uuid"])
        return {"domain": st["domain"], "undone": True, "vdisks_deleted": deleted}

    def _lun(self, vdisk: str) -> LunAddress:
        url = urlsplit(self.api.urls()(self.pool.vdisk(vdisk)))
        user, _, secret = (url.username or "").partition("%")
        iqn, _, lun = url.path.lstrip("/").rpartition("/")
        return LunAddress(url.hostname, url.port, iqn, int(lun), user, secret)

    def _plan(self, st: dict, resumed: bool) -> dict:
        disks = [dict(d, lun=vars(self._lun(d["vdisk"]))) for d in st["disks"]]
        vm = self.pool.vm_by_uuid(st["uuid"])
        return {"vm": vm.name, "uuid": vm.uuid, "domain": st["domain"],
                "hypervisor": st["hypervisor"], "resumed": resumed, "disks": disks,
                "skipped": st["skipped"], "warning": st.get("warning", "")}
