"""The datastore model (vmblock.meta.datastores) on a real pool, no server: a VG written by
the real lvm2 tools (support.lvm) into a vdisk, scanned; VMs made, ranges for the per-VM
layers, sub-vdisks of a VM, what a wiped label, a deleted VM or vdisk leave."""

from __future__ import annotations

import re

import pytest
from support.lvm import EXTENT, MiB, pv_image
from support.stores import small_pool

from vmblock.meta import datastores
from vmblock.meta.datastores import Range, owner_name

SIZE = 64 * MiB
LVS = {"vm-100-disk-0": [(0, 2), (6, 1)], "vm-100-disk-1": [(2, 1)], "db-web01": [(3, 3)],
       "scratch": [(9, 1)]}


@pytest.mark.parametrize("lv, pattern, vm", [
    ("vm-100-disk-0", None, "100"), ("base-9000-disk-1", None, "9000"),
    ("vm-100-cloudinit", None, "100"), ("vm-100-state-before", None, "100"),
    ("vm-0100-disk-0", None, None), ("vm-100-disk-x", None, None), ("db-web01", None, None),
    ("db-web01", r"^db-(?P<vm>.+)$", "web01"), ("vm-7-disk-0", r"^(?P<vm>.+)$", "7"),
])
def test_owner_names(lv, pattern, vm):
    assert owner_name(lv, re.compile(pattern) if pattern else None) == vm


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return pv_image(tmp_path_factory, SIZE, LVS)


@pytest.fixture
def pool(tmp_path):
    pool = small_pool(tmp_path / "p", {"datastore.lvm.vm_pattern": "^db-(?P<vm>.+)$"},
                      {"lun": SIZE, "plain": MiB})
    yield pool
    pool.close()


def put(pool, name: str, data: bytes, at: int = 0) -> None:
    store = pool.open_store(pool.vdisk(name))
    store.write(at, memoryview(data))


def scan(pool, name: str):
    disk = pool.vdisk(name)
    return datastores.scan_vdisk(pool, disk, datastores.store_reader(pool.open_store(disk)))


def test_scan_maps_each_lv_to_its_vm(pool, image):
    put(pool, "lun", image[:2 * MiB])
    watch = scan(pool, "lun")
    assert watch[0] == (0, 2048) and watch[1][0] == 4096
    vms = {vm.name: vm for vm in pool.vms()}
    assert vms["100"].source == vms["web01"].source == "lvm:pve" and vms["vm1"].source == ""
    ranges = datastores.lu_ranges(pool)
    assert list(ranges) == [pool.vdisk("lun").uuid]
    start = MiB
    assert ranges[pool.vdisk("lun").uuid] == [
        Range(start, start + 2 * EXTENT, vms["100"].uuid, "pve/vm-100-disk-0"),
        Range(start + 2 * EXTENT, start + 3 * EXTENT, vms["100"].uuid, "pve/vm-100-disk-1"),
        Range(start + 3 * EXTENT, start + 6 * EXTENT, vms["web01"].uuid, "pve/db-web01"),
        Range(start + 6 * EXTENT, start + 7 * EXTENT, vms["100"].uuid, "pve/vm-100-disk-0"),
        Range(start + 9 * EXTENT, start + 10 * EXTENT, None, "pve/scratch")]
    subs = datastores.sub_vdisks(pool, vms["100"])
    assert [(s["name"], s["size_bytes"]) for s in subs] == [
        ("pve/vm-100-disk-0", 3 * EXTENT), ("pve/vm-100-disk-1", EXTENT)]
    evs = pool.events()
    assert [e["kind"] for e in evs] == ["datastore_changed"]
    assert evs[0]["vms_created"] == ["100", "web01"] and evs[0]["added"] == sorted(LVS)
    assert pool.dump()["datastores"][pool.vdisk("lun").uuid]["vg"] == "pve"
    # the same bytes again: nothing written, no event; a plain vdisk: nothing at all
    scan(pool, "lun")
    scan(pool, "plain")
    assert len(pool.events()) == 1 and datastores.record(pool, pool.vdisk("plain")) is None


def test_a_deleted_vm_shows_unassigned_until_the_next_scan(pool, image):
    put(pool, "lun", image[:2 * MiB])
    scan(pool, "lun")
    pool.delete_vm("web01")
    vols = {v["name"]: v for v in datastores.datastore_json(pool, pool.vdisk("lun"))["volumes"]}
    assert vols["db-web01"]["vm"] is None and vols["vm-100-disk-0"]["vm"] == "100"


def test_a_wiped_label_removes_the_datastore(pool, image):
    put(pool, "lun", image[:2 * MiB])
    scan(pool, "lun")
    put(pool, "lun", bytes(2048))
    assert scan(pool, "lun") == [(0, 2048)]
    assert datastores.record(pool, pool.vdisk("lun")) is None
    last = pool.events()[-1]
    assert last["kind"] == "datastore_changed" and "no longer holds" in last["message"]
    assert last["removed"] == sorted(LVS)
    assert datastores.lu_ranges(pool) == {}


def test_deleting_the_vdisk_deletes_its_record(pool, image):
    put(pool, "lun", image[:2 * MiB])
    scan(pool, "lun")
    disk = pool.vdisk("lun")
    pool.delete_vdisk("lun")
    assert pool.record(f"datastore/{disk.uuid}") is None


def test_a_new_pattern_reassigns_on_the_next_scan(pool, image):
    put(pool, "lun", image[:2 * MiB])
    scan(pool, "lun")
    pool.config_set("datastore.lvm.vm_pattern", "^(?P<vm>scratch)$")
    scan(pool, "lun")
    vols = {v["name"]: v["vm"] for v in
            datastores.datastore_json(pool, pool.vdisk("lun"))["volumes"]}
    assert vols == {"vm-100-disk-0": "100", "vm-100-disk-1": "100", "db-web01": None,
                    "scratch": "scratch"}
    assert pool.events()[-1]["changed"] == ["db-web01", "scratch"]


def test_a_bad_pattern_is_refused(pool):
    from vmblock.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="named group"):
        pool.config_set("datastore.lvm.vm_pattern", "^db-(.+)$")
    with pytest.raises(InvalidArgument, match="not a regular expression"):
        pool.config_set("datastore.lvm.vm_pattern", "^db-(")
