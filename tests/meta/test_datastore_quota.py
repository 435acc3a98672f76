"""Space quotas of VMs whose disks are LVs on a shared datastore LUN (issue 13), on a real pool
without a server: a VG written by the real lvm2 tools (support.lvm) into a vdisk of VM
``host`` and scanned; ``space_quota`` of VM 100 caps the new AUs written into its LVs'
ranges of that LUN and nothing else (the other VM's LV, the LUN's free extents); a write
spanning two LVs charges each its part; an UNMAP in the range gives the charge back; the
LUN's own VM's quota still covers all of its vdisk; a copy on write after a snapshot of the
LUN is not charged to the LV's VM. ``vm show``'s ``sub_vdisks`` say how
much space each LV holds."""

from __future__ import annotations

import pytest
from support.lvm import EXTENT, MiB, pv_image
from support.stores import read, small_pool

from vmblock.meta import datastores, policies
from vmblock.store.quota import QuotaExceeded

SIZE = 64 * MiB
# pe_start 1 MiB: vm-100-disk-1 at 9-13 MiB, db-web01 at 13-25 MiB
LVS = {"vm-100-disk-0": [(0, 2), (6, 1)], "vm-100-disk-1": [(2, 1)], "db-web01": [(3, 3)]}
DISK1 = MiB + 2 * EXTENT
WEB = MiB + 3 * EXTENT
FREE = MiB + 8 * EXTENT


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    return pv_image(tmp_path_factory, SIZE, LVS)


@pytest.fixture
def pool(tmp_path, image):
    pool = small_pool(tmp_path / "p", {"datastore.lvm.vm_pattern": "^db-(?P<vm>.+)$"}, {})
    pool.create_vm("host")
    disk, _ = pool.create_vdisk("lun", SIZE, vm="host")
    store = pool.open_store(disk)
    store.write(0, memoryview(image[:MiB]))            # label and metadata: before pe_start
    datastores.scan_vdisk(pool, disk, datastores.store_reader(store))
    yield pool
    pool.close()


def charged(pool, vm: str) -> int:
    return policies.show(pool, pool.vm(vm))["policies"]["space_charged_bytes"]


def test_a_vms_quota_caps_its_lvs_on_the_shared_lun_and_nothing_else(pool):
    au = pool.store.au
    policies.set_policies(pool, "100", {"space_quota": str(4 * au)})
    assert charged(pool, "100") == 0                   # its LVs hold no AU yet
    lun = pool.open_store(pool.vdisk("lun"))
    lun.write(DISK1, memoryview(b"a" * (3 * au)))
    lun.write(DISK1 + 3 * au - 512, memoryview(b"b" * 1024))   # its 4th AU
    with pytest.raises(QuotaExceeded):
        lun.write(DISK1 + 4 * au, memoryview(b"c" * 512))
    assert read(lun, DISK1 + 4 * au, 512) == bytes(512)        # nothing mapped
    lun.write(DISK1, memoryview(b"x" * 4096))          # an overwrite in place needs no AU
    lun.write(WEB, memoryview(b"w" * (8 * au)))        # web01's LV: not VM 100's quota
    lun.write(FREE, memoryview(b"f" * (8 * au)))       # free extents: the LUN's VM's
    assert charged(pool, "100") == 4 * au
    # a write spanning vm-100-disk-1 | db-web01: VM 100's part refused, so all of it
    with pytest.raises(QuotaExceeded):
        lun.write(WEB - au, memoryview(b"s" * (2 * au)))
    lun.unmap(DISK1, au)                               # gives one AU back
    lun.write(WEB - au, memoryview(b"s" * (2 * au)))   # its part of the span: that AU
    assert read(lun, WEB - au, 2 * au) == b"s" * (2 * au)
    assert charged(pool, "100") == 4 * au
    # vm show's sub_vdisks: the space each LV holds on the LUN
    used = {v["name"]: v["used_bytes"] for v in datastores.sub_vdisks(pool, pool.vm("100"))}
    assert used == {"pve/vm-100-disk-0": 0, "pve/vm-100-disk-1": 4 * au}
    assert [v["used_bytes"] for v in datastores.sub_vdisks(pool, pool.vm("web01"))] == [8 * au]
    events = [e for e in pool.events() if e["kind"] == "vm_quota"]
    assert [e["vm"] for e in events] == ["100"]


def test_the_luns_own_vm_quota_still_covers_its_whole_vdisk(pool):
    au = pool.store.au
    used = pool.used_bytes(pool.vdisk("lun"))
    policies.set_policies(pool, "host", {"space_quota": str(used + 2 * au)})
    lun = pool.open_store(pool.vdisk("lun"))
    lun.write(DISK1, memoryview(b"a" * (2 * au)))      # VM 100's LV, on host's vdisk
    with pytest.raises(QuotaExceeded):
        lun.write(FREE, memoryview(b"f" * 512))
    assert charged(pool, "host") == used + 2 * au


def test_a_copy_on_write_in_the_lv_after_a_snapshot_of_the_lun_is_not_charged(pool):
    """The range counts the LUN's live AUs: a copy on write replaces one by another."""
    au = pool.store.au
    policies.set_policies(pool, "100", {"space_quota": str(2 * au)})
    lun = pool.open_store(pool.vdisk("lun"))
    lun.write(DISK1, memoryview(b"a" * (2 * au)))      # at its quota
    pool.snapshot_vm("host", "s1")                     # the LUN's VM snapshots the LUN
    lun.write(DISK1, memoryview(b"b" * (2 * au)))      # copy on write of both AUs
    assert read(lun, DISK1, 2 * au) == b"b" * (2 * au)
    assert charged(pool, "100") == 2 * au
    with pytest.raises(QuotaExceeded):
        lun.write(DISK1 + 2 * au, memoryview(b"c" * 512))
