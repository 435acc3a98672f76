"""The listing commands on a pool no server runs (the CLI opens the pool itself): they load
neither the extent store nor Numba (used bytes come from the leaf keys,
``vmblock.store.census``), and the used bytes they print are the maps' own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.stores import small_pool, store_of

from vmblock.store.layout import AU_SIZE

AU = AU_SIZE
KERNELS = ("numpy", "numba", "vmblock.native.extent", "vmblock.native.cache", "vmblock.store.pool_store")
# the command in a fresh interpreter; then, on stderr, which of KERNELS it loaded
RUN = f"""
import sys
from vmblock.cli import cli
try:
    cli(sys.argv[1:])
finally:
    print([m for m in {KERNELS!r} if m in sys.modules], file=sys.stderr)
"""


@pytest.fixture
def pool_path(tmp_path):
    """A pool with two VMs, one vdisk with data written, unmapped in part and snapshotted,
    one never written; closed (no server)."""
    pool = small_pool(tmp_path / "pool", {"store.capacity_size": "64M"},
                      {"d1": 64 << 20, "d2": 16 << 20})
    try:
        pool.create_vm("vm2")
        pool.create_vdisk("e1", 32 << 20, vm="vm2")
        s = store_of(pool, "d1")
        s.write(0, memoryview(b"\x01" * (5 * AU)))
        s.write(300 * AU, memoryview(b"\x02" * 4096))
        s.unmap(2 * AU, AU)
        pool.snapshot_vm("vm1", "s1")
        s.write(0, memoryview(b"\x03" * 4096))
        expect = {d.name: pool.used_bytes(d) for d in pool.vdisks()}
    finally:
        pool.close()
    assert expect["d1"] == 5 * AU
    return tmp_path / "pool", expect


def offline(path, *args: str) -> object:
    """The JSON a command prints on the pool at ``path``; asserts it loaded no kernel."""
    p = subprocess.run([sys.executable, "-c", RUN, "--pool", str(path), *args, "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip().splitlines()[-1] == "[]", p.stderr
    return json.loads(p.stdout)


def test_vm_list_without_a_server_loads_no_kernels_and_shows_exact_bytes(pool_path):
    path, expect = pool_path
    vms = {v["name"]: v for v in offline(path, "vm", "list")}
    assert vms["vm1"]["used_bytes"] == expect["d1"] + expect["d2"]
    assert vms["vm2"]["used_bytes"] == expect["e1"] == 0


def test_vdisk_list_and_show_without_a_server_load_no_kernels(pool_path):
    path, expect = pool_path
    disks = {d["name"]: d for d in offline(path, "vdisk", "list")}
    assert {n: d["used_bytes"] for n, d in disks.items()} == expect
    assert disks["d1"]["tier_bytes"] == {"capacity": expect["d1"], "flash": 0}
    shown = offline(path, "vm", "show", "vm1")
    assert {d["name"]: d["used_bytes"] for d in shown["vdisks"]} == \
        {"d1": expect["d1"], "d2": expect["d2"]}
