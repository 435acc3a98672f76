"""A space quota on a VM whose disks are LVs of an LVM2 datastore on one LUN (issue 13),
through a live server and qemu-io: ``vm set 100 --space-quota`` refuses the writes into VM
100's LV that need space beyond it (ENOSPC, 27h/07h) and nothing else on the LUN; an UNMAP
in the LV gives the space back; ``vm show --json`` charges VM 100 and lists its LVs'
``used_bytes``. The rules in detail: tests/meta/test_datastore_quota.py."""

from __future__ import annotations

import pytest
from support.clients import cli_json, qemu_io
from support.lvm import LIVE_MARKS, MiB, datastore_on_a_lun

pytestmark = LIVE_MARKS


@pytest.mark.timeout(300)
def test_a_vms_space_quota_caps_its_lv_on_the_shared_lun(start_server, tmp_path, pve_images):
    server, url, _ = datastore_on_a_lun(start_server, tmp_path / "pool", pve_images[2])
    qemu_io(url, f"discard {MiB} {24 * MiB}", cache="none")      # the LVs hold no space
    shown = cli_json(server, "vm", "set", "100", "--space-quota", "2M")
    assert shown["policies"]["space_charged_bytes"] == 0

    qemu_io(url, f"write -P 1 {9 * MiB} 2M", cache="none")            # vm-100-disk-1
    out = qemu_io(url, f"write -P 2 {11 * MiB} 64K", cache="none", check=False)
    assert "No space left on device" in out, out
    qemu_io(url, f"write -P 3 {9 * MiB} 64K", f"read -P 3 {9 * MiB} 64K",   # in place
            f"write -P 4 {13 * MiB} 8M", f"read -P 4 {13 * MiB} 8M",       # web01's LV
            f"write -P 5 {40 * MiB} 4M", cache="none")                      # free extents
    shown = cli_json(server, "vm", "show", "100")
    assert shown["policies"]["space_charged_bytes"] == 2 * MiB
    assert shown["policies"]["space_quota_reached"] is True
    assert {s["name"]: s["used_bytes"] for s in shown["sub_vdisks"]} == {
        "pve/vm-100-disk-0": 0, "pve/vm-100-disk-1": 2 * MiB}
    qemu_io(url, f"discard {9 * MiB} 1M", cache="none")               # gives 1 MiB back
    qemu_io(url, f"write -P 2 {11 * MiB} 64K", f"read -P 2 {11 * MiB} 64K", cache="none")
    quota = [e for e in cli_json(server, "events") if e["kind"] == "vm_quota"]
    assert [e["vm"] for e in quota] == ["100"]
