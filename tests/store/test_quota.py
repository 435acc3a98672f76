"""Space quotas where the store allocates: a VM's writes that need new AUs beyond its quota
fail with QuotaExceeded (an ENOSPC: 27h/07h), nothing else does; snapshot-held AUs count."""

import pytest

from vmblock.meta import policies
from support.stores import read, small_pool, store_of
from vmblock.store.quota import QuotaExceeded

AU = 64 << 10


@pytest.fixture
def pool(tmp_path):
    pool = small_pool(tmp_path / "p", {}, {"d1": 64 << 20, "d2": 64 << 20})
    pool.create_vm("other")
    pool.create_vdisk("o1", 64 << 20, vm="other")
    yield pool
    pool.close()


def test_write_needing_an_au_beyond_the_quota_fails_and_nothing_else_does(pool):
    policies.set_policies(pool, "vm1", {"space_quota": str(4 * AU)})
    d1, d2, o1 = store_of(pool, "d1"), store_of(pool, "d2"), store_of(pool, "o1")
    d1.write(0, memoryview(b"a" * (3 * AU)))
    d2.write(0, memoryview(b"b" * AU))                 # the VM's 4th AU: on its other vdisk
    with pytest.raises(QuotaExceeded):
        d1.write(3 * AU, memoryview(b"c" * 512))
    assert read(d1, 3 * AU, 512) == bytes(512)        # nothing mapped
    d1.write(AU, memoryview(b"x" * 4096))              # overwrite of an owned AU: in place
    assert read(d1, AU, 4096) == b"x" * 4096
    o1.write(0, memoryview(b"o" * (8 * AU)))           # another VM: unaffected
    d1.unmap(0, AU)                                    # frees one AU of the charge
    d1.write(3 * AU, memoryview(b"c" * 512))
    assert read(d1, 3 * AU, 512) == b"c" * 512
    events = [e for e in pool.events() if e["kind"] == "vm_quota"]
    assert len(events) == 1 and events[0]["vm"] == "vm1"     # once per crossing
    assert events[0]["severity"] == "error" and "advice" in events[0]


def test_snapshot_held_aus_count_so_copy_on_write_needs_room(pool):
    d1 = store_of(pool, "d1")
    d1.write(0, memoryview(b"a" * (2 * AU)))
    policies.set_policies(pool, "vm1", {"space_quota": str(3 * AU)})
    pool.snapshot_vm("vm1", "s1")
    d1.write(0, memoryview(b"b" * 512))               # copy-on-write: the 3rd AU
    with pytest.raises(QuotaExceeded):
        d1.write(AU, memoryview(b"b" * 512))          # would be a 4th: the snapshot holds 2
    assert policies.show(pool, pool.vm("vm1"))["policies"]["space_charged_bytes"] == 3 * AU
    pool.delete_snapshot("s1", vm="vm1")              # the snapshot's AU goes back
    d1.write(AU, memoryview(b"b" * 512))


def test_quota_below_current_use_keeps_data_and_overwrites(pool):
    d1 = store_of(pool, "d1")
    d1.write(0, memoryview(b"a" * (4 * AU)))
    policies.set_policies(pool, "vm1", {"space_quota": str(2 * AU)})
    shown = policies.show(pool, pool.vm("vm1"))["policies"]
    assert shown["space_charged_bytes"] == 4 * AU and shown["space_quota_reached"]
    d1.write(0, memoryview(b"z" * AU))
    assert read(d1, 0, AU) == b"z" * AU and read(d1, 3 * AU, 4) == b"aaaa"
    with pytest.raises(QuotaExceeded):
        d1.write(10 * AU, memoryview(b"q"))
    policies.set_policies(pool, "vm1", {"space_quota": "none"})
    d1.write(10 * AU, memoryview(b"q"))


def test_clone_inherits_the_quota_and_is_charged_for_what_it_shares(pool):
    store_of(pool, "d1").write(0, memoryview(b"a" * (2 * AU)))
    policies.set_policies(pool, "vm1", {"space_quota": str(3 * AU)})
    vm, disks, _ = pool.clone_vm("vm1", "c1", live=True)
    assert vm.policies["space_quota"] == 3 * AU
    c = pool.open_store(disks[0])
    c.write(0, memoryview(b"c" * 512))                 # CoW: 3rd AU of the clone
    with pytest.raises(QuotaExceeded):
        c.write(5 * AU, memoryview(b"c"))
