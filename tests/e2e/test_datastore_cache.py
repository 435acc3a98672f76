"""The flash cache's eviction groups and pins on the LVs of an LVM2 datastore on one LUN
(issue 13): each LV is cached under a cache vdisk of its own, in its VM's group, so
``group assign 100 gold`` promotes VM 100's LVs, ``group assign web01 cold`` (promote never)
keeps web01's LV out of flash, ``vdisk pin pve/db-web01`` pins one LV; ``cache show --json``
has a row per sub-vdisk (the LUN's row is the rest of its bytes), and ``stats --json`` and
``stats --group`` agree. The data stays right
through the cache when the VG changes under it (an LV added through the LUN: every cached
block of the LU is dropped before the new split) and after writes into cached LVs. qemu-io
drives the LUN; exact counts, never rates."""

from __future__ import annotations

import pytest
from support.clients import cli_json, qemu_io
from support.lvm import (EXTENT, HOST_VM, IO_TIMEOUT, LIVE_MARKS, MiB,
                         datastore_on_a_lun, wait_event, write_runs)

pytestmark = LIVE_MARKS

BLOCK = 64 * 1024               # cache.block_size's default
SPAN = 4 * BLOCK                # each phase reads 256 KiB in 4 KiB commands


def read_4k(url: str, first: int, pattern: int) -> None:
    """SPAN bytes from ``first`` in 4 KiB reads, each checked against ``pattern``."""
    qemu_io(url, *[f"read -P {pattern:#x} {off} 4k" for off in range(first, first + SPAN, 4096)],
            cache="none", timeout=IO_TIMEOUT)


def show(server) -> dict:
    return cli_json(server, "cache", "show")


@pytest.mark.timeout(300)
def test_each_lv_is_cached_by_its_vms_group_and_pin(start_server, tmp_path, pve_images):
    v1, v2, v1_path = pve_images
    server, url, _ = datastore_on_a_lun(start_server, tmp_path / "pool", v1_path,
                                        {"cache.size": "50%"})
    # data in each LV to read back through the cache
    qemu_io(url, f"write -P 0x61 {9 * MiB} {SPAN}", f"write -P 0x62 {13 * MiB} {SPAN}",
            cache="none", timeout=IO_TIMEOUT)
    server.cli("group", "create", "gold", "--promote", "read")
    server.cli("group", "create", "cold", "--promote", "never")
    server.cli("group", "assign", "100", "gold")
    server.cli("group", "assign", "web01", "cold")
    rows = show(server)["vdisks"]
    rows.pop("demo")            # the new pool's demo vdisk
    assert {n: (r["group"], r["vm"], r.get("sub_vdisk", False)) for n, r in rows.items()} == {
        "pve-lun": ("default", HOST_VM, False),
        "pve/vm-100-disk-0": ("gold", "100", True), "pve/vm-100-disk-1": ("gold", "100", True),
        "pve/db-web01": ("cold", "web01", True)}

    read_4k(url, 9 * MiB, 0x61)                 # vm-100-disk-1: misses, promoted into gold
    read_4k(url, 9 * MiB, 0x61)                 # again: from flash
    read_4k(url, 13 * MiB, 0x62)                # db-web01: cold promotes nothing
    c = show(server)
    lv = c["vdisks"]["pve/vm-100-disk-1"]
    assert lv["read_bytes"] == 2 * SPAN
    assert lv["read_misses"] == SPAN // BLOCK and lv["promotions"] == SPAN // BLOCK
    assert lv["cached_bytes"] == SPAN
    assert lv["read_hits"] == 2 * SPAN // 4096 - SPAN // BLOCK
    web = c["vdisks"]["pve/db-web01"]
    assert web["read_bytes"] == SPAN and web["promotions"] == 0 and web["cached_blocks"] == 0
    assert c["vdisks"]["pve-lun"]["read_bytes"] == 0      # no read of the LUN's own bytes
    assert c["groups"]["gold"]["cached_bytes"] == SPAN
    assert c["groups"]["gold"]["vdisks"] == ["pve/vm-100-disk-0", "pve/vm-100-disk-1"]
    assert c["groups"]["cold"]["cached_blocks"] == 0
    assert c["vms"]["100"]["cached_bytes"] == SPAN and c["vms"]["100"]["read_bytes"] == 2 * SPAN
    # the statistics agree: the LVs in their VMs' groups, with their cached bytes
    st = cli_json(server, "stats")
    sub = {r["name"]: r for r in st["vdisks"]}
    assert (sub["pve/vm-100-disk-1"]["group"], sub["pve/vm-100-disk-1"]["cached_bytes"]) == \
        ("gold", SPAN)
    assert sub["pve/db-web01"]["group"] == "cold"
    assert {r["name"]: r for r in st["vms"]}["100"]["cached_bytes"] == SPAN
    gold = cli_json(server, "stats", "--group", "gold")
    assert sorted(r["name"] for r in gold["vdisks"]) == ["pve/vm-100-disk-0",
                                                          "pve/vm-100-disk-1"]
    assert [(g["name"], g["read_ops"], g["cached_bytes"]) for g in gold["groups"]] == \
        [("gold", 2 * SPAN // 4096, SPAN)]

    # a pin on one LV; an LV's own assignment wins over its VM's
    server.cli("vdisk", "pin", "pve/db-web01")
    server.cli("group", "assign", "pve/vm-100-disk-0", "cold", "--vdisk")
    rows = show(server)["vdisks"]
    assert rows["pve/db-web01"]["pinned"] and not rows["pve/vm-100-disk-1"]["pinned"]
    assert (rows["pve/vm-100-disk-0"]["group"], rows["pve/vm-100-disk-1"]["group"]) == \
        ("cold", "gold")

    # a write into the cached LV, then the VG changes under the cache: the data stays right
    qemu_io(url, f"write -P 0x71 {9 * MiB} {BLOCK}", cache="none", timeout=IO_TIMEOUT)
    write_runs(url, v1, v2, tmp_path)
    wait_event(server, "datastore_changed", 2)
    c = show(server)
    assert c["vdisks"]["pve/vm-102-disk-0"]["vm"] == "102"
    assert c["groups"]["gold"]["cached_blocks"] == 0     # the LU's blocks dropped on the change
    qemu_io(url, f"read -P 0x71 {9 * MiB} {BLOCK}",
            f"read -P 0x61 {9 * MiB + BLOCK} {SPAN - BLOCK}", cache="none", timeout=IO_TIMEOUT)
    read_4k(url, 13 * MiB, 0x62)
    qemu_io(url, f"read -P 0 {MiB + 9 * EXTENT} {SPAN}", cache="none", timeout=IO_TIMEOUT)
    assert show(server)["vdisks"]["pve/vm-100-disk-1"]["cached_bytes"] == SPAN

    # the LUN deleted: its sub-vdisks' cache ids go with it
    server.cli("vdisk", "delete", "pve-lun", "--force")
    assert not [n for n, r in show(server)["vdisks"].items() if r.get("sub_vdisk")]
