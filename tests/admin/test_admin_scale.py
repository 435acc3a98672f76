"""The listing verbs at scale: the reads they make do not grow with the vdisks, their answers
stay what one lookup per vdisk gave, and a CLI command that talks to a server loads no store.

The pool's meta DB handle counts its point reads here (an attribute wrapped on the real
``MetaDB``, which still does the reads); tools/scale measures the times."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vmblock.admin.api import Api
from vmblock.meta import Pool
from vmblock.meta.groups import DEFAULT


class CountingGets:
    """Counts ``MetaDB.get`` calls of one pool while installed."""

    def __init__(self, pool: Pool):
        self.db = pool._db
        self.real = self.db.get
        self.calls = 0

    def __enter__(self):
        def get(key):
            self.calls += 1
            return self.real(key)
        self.db.get = get
        return self

    def __exit__(self, *exc):
        del self.db.get


def fill(pool: Pool, vms: int, per_vm: int, first: int = 0) -> None:
    for i in range(first, first + vms):
        pool.create_vm(f"vm{i}")
        for j in range(per_vm):
            pool.create_vdisk(f"vm{i}-d{j}", 1 << 20, vm=f"vm{i}")


@pytest.fixture
def pool(tmp_path):
    p = Pool(str(tmp_path / "pool"), create=True)
    yield p
    p.close()


@pytest.mark.parametrize("verb", ["vm_list", "vdisk_list", "cache_show", "group_list"])
def test_listing_reads_do_not_grow_with_the_vdisks(pool, verb):
    api = Api(pool)
    call = getattr(api.cache if verb in ("cache_show", "group_list") else api, verb)
    fill(pool, 2, 2)
    call()          # settle anything read once per process
    with CountingGets(pool) as few:
        call()
    fill(pool, 6, 3, first=2)
    with CountingGets(pool) as many:
        call()
    assert many.calls == few.calls


def test_vdisk_list_names_each_vdisk_vm_and_url_as_show_does(pool):
    api = Api(pool)
    fill(pool, 3, 2)
    pool.create_vdisk("loose", 1 << 20)                       # no VM
    pool.create_vdisk("other", 1 << 20, target="iqn.2026-11.io.vmblock:other")
    listed = {d["name"]: d for d in api.vdisk_list()}
    assert len(listed) == 8
    for name, d in listed.items():
        assert d == api.vdisk_show(name=name)
    assert listed["vm2-d1"]["vm"] == "vm2" and listed["loose"]["vm"] is None
    assert listed["other"]["url"].endswith("/iqn.2026-11.io.vmblock:other/0")
    assert [d["name"] for d in api.vdisk_list(vm="vm1")] == ["vm1-d0", "vm1-d1"]


def test_members_follow_the_group_rule_of_each_vdisk(pool):
    fill(pool, 3, 2)
    groups = pool.eviction_groups
    api = Api(pool)
    api.cache.group_create(name="gold", priority=5)
    api.cache.group_create(name="gone")
    api.cache.group_assign(target="vm0", to="gold")           # the whole VM
    api.cache.group_assign(target="vm1-d0", to="gold")        # one vdisk
    api.cache.group_assign(target="vm0-d1", to="gone")        # own group wins over the VM's ...
    api.cache.group_delete(name="gone")                       # ... until it is deleted
    api.cache.vdisk_pin(name="vm2-d1")
    members = groups.members()
    for disk in pool.vdisks():
        assert members[disk.uuid] == (groups.group_of(disk), groups.pinned(disk))
    assert members[pool.vdisk("vm0-d1").uuid] == ("gold", False)
    assert members[pool.vdisk("vm1-d1").uuid] == (DEFAULT, False)
    assert members[pool.vdisk("vm2-d1").uuid] == (DEFAULT, True)
    show = api.cache.cache_show()
    assert show["groups"]["gold"]["vms"] == ["vm0", "vm1"]
    assert show["groups"][DEFAULT]["vms"] == ["vm1", "vm2"]


def test_cli_command_loads_neither_store_nor_numba():
    code = ("import sys; from vmblock.cli import cli; "
            "bad = [m for m in ('numba', 'numpy', 'vmblock.store.pool_store', 'vmblock.native') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_tier_and_promotion_choices_are_still_checked(pool):
    api = Api(pool)
    from vmblock.admin.api import run_verb
    from vmblock.errors import InvalidArgument
    fill(pool, 1, 1)
    with pytest.raises(InvalidArgument, match="capacity, flash"):
        run_verb(api, "vdisk", "move", {"name": "vm0-d0", "tier": "tape"})
    with pytest.raises(InvalidArgument, match="must be one of"):
        run_verb(api, "group", "create", {"name": "g", "promote": "sometimes"})
