"""Which disks are this server's LUNs (``vmblock.hypervisor.mapping``), one rule per test:
iSCSI network disks by target and portal, block disks by the names udev gives the kernel
initiator's disks, and what a remote hypervisor's loopback address means."""

from __future__ import annotations

from vmblock.hypervisor.domains import Disk, parse_domain
from vmblock.hypervisor.mapping import Served, map_disk

IQN = "iqn.2026-11.io.vmblock:default"
NAA = "67a6d62" + "0" * 24 + "1"
SERVED = Served([("127.0.0.1", 3260)], {(IQN, 0): "vd0", (IQN, 3): "vd3"}, {NAA: "vd0"})
WILDCARD = Served([("0.0.0.0", 3260)], SERVED.luns, SERVED.by_naa)


def iscsi(name: str, host: str = "127.0.0.1", port: str | None = "3260") -> Disk:
    h = {"name": host} | ({"port": port} if port else {})
    return Disk("vda", "network", "disk", {"protocol": "iscsi", "name": name, "hosts": [h]})


def block(path: str) -> Disk:
    return Disk("vdb", "block", "disk", {"dev": path})


def test_iscsi_disk_on_our_portal_maps():
    assert map_disk(iscsi(f"{IQN}/3"), SERVED, local=True) == ("vd3", "")


def test_iscsi_disk_without_port_uses_3260():
    assert map_disk(iscsi(f"{IQN}/0", port=None), SERVED, local=True)[0] == "vd0"


def test_wildcard_portal_takes_any_local_address():
    assert map_disk(iscsi(f"{IQN}/0", host="localhost"), WILDCARD, local=True)[0] == "vd0"


def test_loopback_of_a_remote_hypervisor_is_not_us():
    vdisk, why = map_disk(iscsi(f"{IQN}/0"), SERVED, local=False)
    assert vdisk is None and "not this server's" in why


def test_unserved_lun_and_bad_names_say_why():
    assert "LUN 9 is not served" in map_disk(iscsi(f"{IQN}/9"), SERVED, True)[1]
    assert "not IQN/LUN" in map_disk(iscsi(IQN), SERVED, True)[1]
    assert "not this server's" in map_disk(iscsi(f"{IQN}/0", port="3261"), SERVED, True)[1]


def test_block_disk_by_wwn_and_scsi_id_maps():
    for path in (f"/dev/disk/by-id/wwn-0x{NAA}", f"/dev/disk/by-id/scsi-3{NAA}"):
        assert map_disk(block(path), SERVED, local=False) == ("vd0", "")


def test_block_disk_by_iscsi_path_maps():
    path = f"/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-{IQN}-lun-3"
    assert map_disk(block(path), SERVED, local=True) == ("vd3", "")


def test_block_disk_of_another_wwn_or_a_plain_device_does_not_map():
    assert "no vdisk here has that NAA" in map_disk(
        block("/dev/disk/by-id/wwn-0x600a0b80001234"), SERVED, False)[1]
    assert "names no LUN" in map_disk(block("/dev/sdq"), SERVED, local=False)[1]
    assert "does not exist" in map_disk(block("/dev/no-such-disk"), SERVED, local=True)[1]


def test_odd_disks_parse_and_do_not_map():
    dom = parse_domain(
        "<domain><name>x</name><uuid>AB1C2D3E-0000-4000-8000-000000000000</uuid><devices>"
        "<disk type='file' device='cdrom'><target dev='hdc'/></disk>"
        "<disk type='volume' device='disk'><source pool='p' volume='v'/></disk>"
        "<disk device='floppy'/></devices></domain>", 5)
    assert dom.uuid == "ab1c2d3e-0000-4000-8000-000000000000" and not dom.active
    reasons = [map_disk(d, SERVED, True)[1] for d in dom.disks]
    assert reasons[0] == "no source (an empty drive)" and "volume disk" in reasons[1]
    assert reasons[2] == "no source (an empty drive)"
