"""The libvirt connector against libvirt's test driver (``test:///FILE``), in-process: domains'
disks mapped to vdisks, odd disks listed with their reason, lifecycle events into the VM
records, orphans, two hypervisors claiming one vdisk, an unreachable URI.

The test driver reads FILE at each connect and keeps its domains in memory per connection, so
changes are made through the connector's own connection (``Connector.run_on``); libvirt sends
the same lifecycle events for them as for any other client. Resync intervals are an hour, so
every change seen here came by event; each wait polls a condition with a deadline."""

from __future__ import annotations

import socket
import sys
import uuid as uuidlib
from functools import partial

import pytest
from support.hvloop import run
from support.stores import small_pool
from support.waiting import until_async

from vmblock import DEFAULT_TARGET
from vmblock.cache.groups import GroupSpec
from vmblock.hypervisor.manager import Hypervisors
from vmblock.meta.hypervisors import SOURCE_PREFIX

pytest.importorskip("libvirt")

PORTAL = ("127.0.0.1", 3260)
HOUR = "3600"
DEADLINE = 20.0
until = partial(until_async, bound=DEADLINE)
OS_ID = "http://debian.org/debian/12"
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


def network_disk(dev: str, name: str, host: str = "127.0.0.1", port: int = 3260,
                 protocol: str = "iscsi") -> str:
    return (f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            f"<source protocol='{protocol}' name='{name}'><host name='{host}' port='{port}'/>"
            f"</source><target dev='{dev}' bus='virtio'/></disk>")


def block_disk(dev: str, path: str) -> str:
    return (f"<disk type='block' device='disk'><source dev='{path}'/>"
            f"<target dev='{dev}' bus='virtio'/></disk>")


ODD_DISKS = (
    "<disk type='file' device='cdrom'><source file='/srv/debian.iso'/>"
    "<target dev='hdc' bus='ide'/><readonly/></disk>"
    "<disk type='file' device='cdrom'><target dev='hdd' bus='ide'/><readonly/></disk>"
    "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
    "<source file='/var/lib/libvirt/images/x.qcow2'/><target dev='vdx' bus='virtio'/></disk>"
    + network_disk("vdy", f"{DEFAULT_TARGET}/0", port=3261)
    + network_disk("vdz", f"{DEFAULT_TARGET}/7")
    + network_disk("vdw", "iqn.2000-01.com.example:other/0")
    + network_disk("vdv", "export", protocol="nbd")
)


def domain_xml(name: str, uid: str, disks: str, os_id: str = "") -> str:
    meta = (f"<metadata><libosinfo:libosinfo xmlns:libosinfo="
            f"'http://libosinfo.org/xmlns/libvirt/domain/1.0'><libosinfo:os id='{os_id}'/>"
            f"</libosinfo:libosinfo></metadata>") if os_id else ""
    return (f"<domain type='test'><name>{name}</name><uuid>{uid}</uuid>"
            f"<memory>65536</memory><os><type>hvm</type></os>{meta}"
            f"<devices>{disks}</devices></domain>")


def write_node(path, *domains: str) -> str:
    path.write_text("<node>" + "".join(domains) + "</node>")
    return f"test://{path}"


@pytest.fixture
def pool(tmp_path):
    p = small_pool(tmp_path / "pool", {"hypervisor.call_timeout": "5"},
                   {"d1": 64 << 20, "d2": 64 << 20})
    yield p
    p.close()


def vm_by_uuid(pool, uid):
    return next((v for v in pool.vms() if v.uuid == uid), None)


def events(pool, kind):
    return [e for e in pool.events(0) if e["kind"] == kind]


async def started(pool, **uris) -> Hypervisors:
    for name, uri in uris.items():
        pool.add_hypervisor(name, uri, float(HOUR))
    hv = Hypervisors(pool, lambda: [PORTAL], pool.settings().get("hypervisor.call_timeout"))
    await hv.start()
    return hv


def test_domain_disks_map_and_odd_disks_are_listed(pool, tmp_path):
    uid = str(uuidlib.uuid4())
    d2 = pool.vdisk("d2")
    disks = (network_disk("vda", f"{DEFAULT_TARGET}/0")
             + block_disk("vdb", f"/dev/disk/by-id/wwn-0x{d2.naa:032x}") + ODD_DISKS)
    uri = write_node(tmp_path / "node.xml", domain_xml("web server", uid, disks, OS_ID))
    # a snapshot and an eviction group go with vm1 when the domain adopts it
    pool.snapshot_vm("vm1", "before")
    pool.eviction_groups.create(GroupSpec("g1", priority=1, min=0.0, max=0.5, promote="read"))
    pool.eviction_groups.assign("vm1", "g1", "vm")

    async def main():
        hv = await started(pool, h1=uri)
        try:
            vm = await until("the domain's VM", lambda: vm_by_uuid(pool, uid))
            shown = hv.show("h1")
        finally:
            await hv.stop()
        return vm, shown
    vm, shown = run(main())
    assert (vm.name, vm.active, vm.guest_os, vm.hypervisor) == ("web_server", True, OS_ID, "h1")
    assert vm.source == SOURCE_PREFIX + "h1" and not vm.orphaned and not vm.meta_stale
    assert {d.name for d in pool.vdisks() if d.vm == uid} == {"d1", "d2"}
    # vm1 owned both vdisks and was made by hand: adopted (re-keyed), not left empty
    assert "vm1" not in {v.name for v in pool.vms()}
    assert events(pool, "vm_discovered")[-1]["adopted"] is True
    reasons = {u["target"]: u["reason"] for u in shown["unmapped_disks"]}
    assert set(reasons) == {"hdc", "hdd", "vdx", "vdy", "vdz", "vdw", "vdv"}
    assert "file" in reasons["hdc"] and "no source" in reasons["hdd"]
    assert "3261" in reasons["vdy"] and "LUN 7 is not served" in reasons["vdz"]
    assert "not served" in reasons["vdw"] and "nbd" in reasons["vdv"]
    assert shown["domains"][0]["vdisks"] == ["d1", "d2"]
    assert [s.name for s in pool.snapshots(vm="web_server")] == ["before"]
    assert pool.eviction_groups.group_of(pool.vdisk("d1")) == "g1"
    check = pool.check()
    assert check["ok"], check["errors"]


def test_lifecycle_events_update_the_vm(pool, tmp_path):
    uid = str(uuidlib.uuid4())
    pool.create_vm("other")
    pool.create_vdisk("d3", 64 << 20, vm="other")
    uri = write_node(tmp_path / "node.xml",
                     domain_xml("web", uid, network_disk("vda", f"{DEFAULT_TARGET}/0")))

    async def main():
        hv = await started(pool, h1=uri)
        c = hv.connectors["h1"]
        try:
            await until("discovered", lambda: vm_by_uuid(pool, uid))
            await c.run_on(lambda conn: conn.lookupByUUIDString(uid).suspend())
            await until("paused", lambda: vm_by_uuid(pool, uid).claims["h1"]["state"] == "paused")
            assert vm_by_uuid(pool, uid).active
            await c.run_on(lambda conn: conn.lookupByUUIDString(uid).destroy())
            await until("inactive", lambda: not vm_by_uuid(pool, uid).active)
            await c.run_on(lambda conn: conn.lookupByUUIDString(uid).rename("web2", 0))
            await until("renamed", lambda: vm_by_uuid(pool, uid).name == "web2")
            await c.run_on(lambda conn: conn.lookupByUUIDString(uid).create())
            await until("started", lambda: vm_by_uuid(pool, uid).active)
            # a new domain on d3 (a hand-made VM's vdisk, VM "other" keeps its other state)
            new = str(uuidlib.uuid4())
            await c.run_on(lambda conn: conn.defineXML(
                domain_xml("db", new, network_disk("vda", f"{DEFAULT_TARGET}/2"))))
            await until("defined", lambda: vm_by_uuid(pool, new))
            await c.run_on(lambda conn: conn.lookupByUUIDString(uid).destroy())
            await c.run_on(lambda conn: conn.lookupByUUIDString(uid).undefine())
            await until("orphaned", lambda: vm_by_uuid(pool, uid).orphaned)
        finally:
            await hv.stop()
        return new
    new = run(main())
    vm = vm_by_uuid(pool, uid)
    assert not vm.active and vm.name == "web2"
    # data kept: d1, and d2 that came with vm1 (adopted by the domain)
    assert {d.name for d in pool.vdisks() if d.vm == uid} == {"d1", "d2"}
    assert events(pool, "vm_orphaned")[-1]["vm"] == "web2"
    assert vm_by_uuid(pool, new).name == "db"


def test_two_hypervisors_claim_one_vdisk(pool, tmp_path):
    uid, other = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    disk = network_disk("vda", f"{DEFAULT_TARGET}/0")
    a = write_node(tmp_path / "a.xml", domain_xml("web", uid, disk))
    intruder = domain_xml("intruder", other, disk).replace(   # shut off: web keeps d1
        "<domain type='test'>", f"<domain type='test' xmlns:test='{TEST_NS}'>").replace(
        "</domain>", "<test:runstate>5</test:runstate></domain>")
    b = write_node(tmp_path / "b.xml", domain_xml("web", uid, disk), intruder)

    async def main():
        hv = await started(pool, a=a, b=b)
        try:
            await until("both claims", lambda: (vm := vm_by_uuid(pool, uid)) is not None
                        and set(vm.claims) == {"a", "b"})
            await until("two conflicts", lambda: len(events(pool, "hypervisor_conflict")) == 2)
        finally:
            await hv.stop()
    run(main())
    conflicts = [e["message"] for e in events(pool, "hypervisor_conflict")]
    assert any("runs on a and b" in m for m in conflicts)
    assert any("d1 is used by 2 domains" in m and "intruder on b" in m for m in conflicts)
    assert pool.vdisk("d1").vm == uid


def test_unreachable_uri_marks_vms_stale(pool, tmp_path):
    with socket.socket() as s:      # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uid = str(uuidlib.uuid4())
    uri = write_node(tmp_path / "node.xml",
                     domain_xml("web", uid, network_disk("vda", f"{DEFAULT_TARGET}/0")))

    async def main():
        hv = await started(pool, h1=uri)
        try:
            await until("discovered", lambda: vm_by_uuid(pool, uid))
            await hv.disconnect("h1")
            pool.remove_hypervisor("h1")
            pool.add_hypervisor("h1", f"qemu+tcp://127.0.0.1:{port}/system", float(HOUR))
            hv.connect(pool.hypervisors()[0])
            await until("unreachable", lambda: hv.show("h1")["state"] == "unreachable")
            await until("stale", lambda: vm_by_uuid(pool, uid).meta_stale)
        finally:
            await hv.stop()
    run(main())
    ev = events(pool, "hypervisor_unreachable")[-1]
    assert ev["hypervisor"] == "h1" and "Connection refused" in ev["message"]
    assert not vm_by_uuid(pool, uid).orphaned


def test_migration_moves_the_vm_to_where_it_runs(pool, tmp_path):
    uid = str(uuidlib.uuid4())
    disk = network_disk("vda", f"{DEFAULT_TARGET}/0")
    shut_off = domain_xml("web", uid, disk).replace(
        "<domain type='test'>", f"<domain type='test' xmlns:test='{TEST_NS}'>").replace(
        "</domain>", "<test:runstate>5</test:runstate></domain>")
    a = write_node(tmp_path / "a.xml", domain_xml("web", uid, disk))
    b = write_node(tmp_path / "b.xml", shut_off)

    async def main():
        hv = await started(pool, a=a, b=b)
        try:
            await until("on a", lambda: (vm := vm_by_uuid(pool, uid)) is not None
                        and set(vm.claims) == {"a", "b"} and vm.hypervisor == "a")
            # the domain leaves a and starts on b (libvirt's migration, as the hosts see it)
            await hv.connectors["a"].run_on(lambda conn: conn.lookupByUUIDString(uid).destroy())
            await hv.connectors["a"].run_on(lambda conn: conn.lookupByUUIDString(uid).undefine())
            await hv.connectors["b"].run_on(lambda conn: conn.lookupByUUIDString(uid).create())
            await until("on b", lambda: (vm := vm_by_uuid(pool, uid)).hypervisor == "b"
                        and vm.active and set(vm.claims) == {"b"})
        finally:
            await hv.stop()
    run(main())
    vm = vm_by_uuid(pool, uid)
    assert not vm.orphaned and vm.source == SOURCE_PREFIX + "b"
    assert not events(pool, "vm_orphaned")


def test_resync_catches_what_no_event_said(pool, tmp_path):
    uid = str(uuidlib.uuid4())
    uri = write_node(tmp_path / "node.xml",
                     domain_xml("web", uid, network_disk("vda", f"{DEFAULT_TARGET}/0")))

    async def main():
        pool.add_hypervisor("h1", uri, 0.5)         # a full resync every half second
        hv = Hypervisors(pool, lambda: [PORTAL], 5.0)
        await hv.start()
        c = hv.connectors["h1"]
        try:
            await until("discovered", lambda: vm_by_uuid(pool, uid))
            await c.run_on(lambda conn: conn.domainEventDeregisterAny(c.event_id))
            await c.run_on(lambda conn: conn.lookupByUUIDString(uid).destroy())
            await until("inactive by resync alone", lambda: not vm_by_uuid(pool, uid).active)
        finally:
            await hv.stop()
    run(main())


def test_without_libvirt_python_the_server_runs_and_add_says_what_to_install(
        pool, monkeypatch):
    from vmblock.admin.hypervisor import HypervisorVerbs
    from vmblock.errors import InvalidArgument

    pool.add_hypervisor("h1", "qemu:///system", 30.0)
    monkeypatch.setitem(sys.modules, "libvirt", None)     # import libvirt: ImportError

    async def main():
        hv = Hypervisors(pool, lambda: [PORTAL], 5.0)
        await hv.start()                # logs that h1 is not followed, raises nothing
        return hv.show("h1")
    assert run(main())["state"] == "not connected"
    with pytest.raises(InvalidArgument, match=r"pip install 'vmblock\[libvirt\]'"):
        HypervisorVerbs(pool).hypervisor_add("h2", "qemu:///system")
    assert [h.name for h in pool.hypervisors()] == ["h1"]
