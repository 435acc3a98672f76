"""End to end with a real libvirtd (``qemu:///system``) and a real QEMU on a vmblock LUN:
the domain becomes a VM under its libvirt name and uuid; destroy, rename, libvirtd killed and
back, undefine, each seen by the server through libvirt's lifecycle events (the resync
interval is an hour). Each wait polls the admin API with a generous deadline; the time the
destroy took to show is printed (the issue asks for 2 s; measured, not asserted: the machine
is shared)."""

from __future__ import annotations

import subprocess
import time
import uuid as uuidlib

import pytest
from support import libvirtd as lv
from support.clients import cli_json
from support.waiting import until

from vmblock import DEFAULT_TARGET

pytest.importorskip("libvirt")


@pytest.fixture
def libvirtd(tmp_path):
    why = lv.missing()
    if why:
        pytest.skip(why)
    daemon = lv.Libvirtd(tmp_path)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()




def domain_xml(name: str, uid: str, host: str, port: int, virt: str) -> str:
    return (f"<domain type='{virt}'><name>{name}</name><uuid>{uid}</uuid>"
            f"<memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>"
            f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            f"<source protocol='iscsi' name='{DEFAULT_TARGET}/0'>"
            f"<host name='{host}' port='{port}'/></source>"
            f"<target dev='vda' bus='virtio'/></disk></devices></domain>")


def define_and_start(libvirtd, tmp_path, name, uid, host, port) -> str:
    """Define and start the domain with KVM, or with TCG when KVM cannot start it."""
    for virt in ("kvm", "qemu"):
        xml = tmp_path / f"{virt}.xml"
        xml.write_text(domain_xml(name, uid, host, port, virt))
        lv.virsh("define", str(xml))
        if lv.virsh("start", name, check=False).returncode == 0:
            return virt
    pytest.fail(f"domain {name} starts neither with KVM nor TCG")


def test_real_domain_is_followed(start_server, libvirtd, tmp_path):
    s = start_server("--insecure")
    uid, name = str(uuidlib.uuid4()), f"vmb-e2e-{uuidlib.uuid4().hex[:6]}"
    libvirtd.domains += [uid]
    define_and_start(libvirtd, tmp_path, name, uid, s.host, s.port)
    sessions = until("QEMU logged in to vmblock", lambda: cli_json(s, "session", "list"))
    s.cli("hypervisor", "add", "kvm", "--uri", lv.URI, "--interval", "1h")

    def vm():
        return next((v for v in cli_json(s, "vm", "list") if v["uuid"] == uid), None)
    v = until("the domain's VM", vm)
    assert (v["name"], v["active"], v["hypervisor"], v["vdisks"]) == (name, True, "kvm", ["demo"])
    # the vdisk's VM re-keyed to the domain without touching the LUN: QEMU's session goes on
    assert [x["tsih"] for x in cli_json(s, "session", "list")] == [x["tsih"] for x in sessions]

    lv.virsh("destroy", name)
    t0 = time.monotonic()
    until("inactive after destroy", lambda: vm()["active"] is False)
    print(f"destroy seen as active: false after {time.monotonic() - t0:.2f} s")

    lv.virsh("domrename", name, name + "-renamed")
    until("renamed", lambda: vm()["name"] == name + "-renamed")

    libvirtd.kill()
    until("meta_stale when libvirtd is gone", lambda: vm()["meta_stale"] is True)
    events = [e for e in cli_json(s, "events") if e["kind"] == "hypervisor_unreachable"]
    assert events and events[-1]["hypervisor"] == "kvm"
    libvirtd.start()
    until("meta_stale cleared when it is back", lambda: vm()["meta_stale"] is False)
    assert any(e["kind"] == "hypervisor_reachable" for e in cli_json(s, "events"))

    lv.virsh("undefine", uid)
    v = until("orphaned after undefine", lambda: (v := vm())["orphaned"] and v)
    assert v["active"] is False and v["vdisks"] == ["demo"]
    assert any(e["kind"] == "vm_orphaned" and e["vm"] == name + "-renamed"
               for e in cli_json(s, "events"))


def test_import_switch_then_boot_from_the_lun(start_server, libvirtd, tmp_path):
    """A shut-off domain on a raw image is imported with --switch into a CHAP target: its
    disk becomes an iSCSI disk with a libvirt secret, and QEMU starts on the new LUN."""
    s = start_server()
    image = tmp_path / "disk.raw"
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 1M 64k", str(image)],
                   check=True, capture_output=True)
    uid, name = str(uuidlib.uuid4()), f"vmb-imp-{uuidlib.uuid4().hex[:6]}"
    libvirtd.domains += [uid]
    libvirtd.secrets += [f"vmblock-{DEFAULT_TARGET}"]
    xml = tmp_path / "dom.xml"
    xml.write_text(domain_xml(name, uid, s.host, s.port, "kvm").replace(
        "<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='iscsi' name='{DEFAULT_TARGET}/0'>"
        f"<host name='{s.host}' port='{s.port}'/></source>",
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{image}'/>"))
    lv.virsh("define", str(xml))
    s.cli("hypervisor", "add", "kvm", "--uri", lv.URI, "--interval", "1h")
    out = s.cli("vm", "import", "--from", "kvm", name, "--switch").stdout
    assert f"imported domain {name} as VM {name}" in out
    assert cli_json(s, "vm", "show", name)["vdisks"][0]["used_bytes"] == 64 * 1024
    dumped = lv.virsh("dumpxml", name).stdout
    assert "protocol='iscsi'" in dumped and f"usage='vmblock-{DEFAULT_TARGET}'" in dumped
    for virt in ("kvm", "qemu"):
        if lv.virsh("start", name, check=False).returncode == 0:
            break
        xml2 = lv.virsh("dumpxml", name).stdout.replace("type='kvm'", "type='qemu'", 1)
        (tmp_path / "tcg.xml").write_text(xml2)
        lv.virsh("define", str(tmp_path / "tcg.xml"))
    else:
        pytest.fail("the switched domain did not start")
    until("QEMU logged in with CHAP", lambda: cli_json(s, "session", "list"))
    until("the VM active", lambda: cli_json(s, "vm", "show", name)["active"] is True)
