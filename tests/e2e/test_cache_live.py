"""The flash cache behind a live ``vmblock serve``, driven by QEMU's iSCSI driver: re-reads served
from flash with exact accounting, live group changes, byte-identical data through the cache
(overwrites and UNMAP after caching), a cold and correct cache after kill -9, bad group input."""

from __future__ import annotations

import os
import shutil
import signal

from support import clients
import pytest
from support.clients import cli_json as js
from support.server import run_cli

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"),
                                reason="needs qemu-io (qemu-utils, qemu-block-extra)")


@pytest.fixture
def vmblock_server(tmp_path, start_server):
    """A server with the flash cache on: both tiers are files under tmp_path, one device,
    where the default (cache.size auto) leaves the cache off, so these tests ask for 50%."""
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "cache.size", "50%")
    return start_server(pool=pool)


def qemu_io(url: str, *cmds: str, check: bool = True) -> str:
    return clients.qemu_io(url, *cmds, cache="none", check=check)


def make_vdisk(s, name: str, size: str = "64M", vm: str | None = None) -> str:
    s.cli("vdisk", "create", name, "--size", size, *(["--vm", vm] if vm else []))
    return js(s, "vdisk", "show", name)["url"]


def reads_4k(url: str, start: int, length: int, pattern: int) -> list[str]:
    """One qemu-io command per 4 KiB read: the cache sees 4 KiB requests, not one big one."""
    return [f"read -P {pattern:#x} {off} 4k" for off in range(start, start + length, 4096)]


@pytest.mark.timeout(120)
def test_working_set_is_served_from_flash_with_exact_counts(vmblock_server):
    s = vmblock_server
    s.cli("vm", "create", "db")
    url = make_vdisk(s, "db-data", vm="db")
    qemu_io(url, "write -P 0xa5 0 4M")
    before = js(s, "cache", "show")
    assert before["enabled"] and before["vdisks"]["db-data"]["write_misses"] > 0
    qemu_io(url, *reads_4k(url, 0, 4 * MiB, 0xa5))           # first pass: misses, promoted
    first = js(s, "cache", "show")["vdisks"]["db-data"]
    assert first["read_bytes"] == 4 * MiB                     # exactly the I/O issued
    assert first["read_misses"] == 64                         # one per 64 KiB cache block
    assert first["read_hits"] == 1024 - 64
    assert first["promotions"] == 64 and first["cached_bytes"] == 4 * MiB
    qemu_io(url, *reads_4k(url, 0, 4 * MiB, 0xa5))           # second pass: all from flash
    c = js(s, "cache", "show")
    second = c["vdisks"]["db-data"]
    hits = second["read_hits"] - first["read_hits"]
    reads = hits + second["read_misses"] - first["read_misses"]
    assert reads == 1024 and hits / reads > 0.9
    assert second["read_hit_bytes"] - first["read_hit_bytes"] == 4 * MiB
    vm, grp = c["vms"]["db"], c["groups"]["default"]
    assert vm["read_hits"] == second["read_hits"] and vm["cached_blocks"] == 64
    assert grp["read_hits"] == second["read_hits"] and "db-data" in grp["vdisks"]
    assert grp["cached_blocks"] == c["used_blocks"] == 64
    assert c["totals"]["read_hits"] == second["read_hits"]


@pytest.mark.timeout(120)
def test_live_group_changes_take_effect_without_restart(vmblock_server):
    s = vmblock_server
    url = make_vdisk(s, "scan")
    qemu_io(url, "write -P 0x3c 0 2M")
    s.cli("group", "create", "bulk", "--priority", "1", "--max", "50%", "--promote", "never")
    s.cli("group", "assign", "scan", "bulk")
    qemu_io(url, "read -P 0x3c 0 2M")
    d = js(s, "cache", "show")["vdisks"]["scan"]
    assert d["group"] == "bulk" and d["promotions"] == 0 and d["cached_blocks"] == 0
    s.cli("group", "set", "bulk", "--promote", "read")       # live: next reads promote
    qemu_io(url, "read -P 0x3c 0 2M")
    d = js(s, "cache", "show")["vdisks"]["scan"]
    assert d["promotions"] == 32 and d["cached_blocks"] == 32
    qemu_io(url, "read -P 0x3c 0 2M")
    assert js(s, "cache", "show")["vdisks"]["scan"]["read_hits"] == d["read_hits"] + 32
    slots = js(s, "cache", "show")["slots"]
    s.cli("group", "set", "bulk", "--max", f"{100 * 8 / slots}%")   # 8 blocks
    g = js(s, "group", "show", "bulk")
    assert g["cached_blocks"] <= 8 and g["evictions"] >= 24
    qemu_io(url, "read -P 0x3c 0 2M")                         # still correct, capped at max
    assert js(s, "group", "show", "bulk")["cached_blocks"] <= 8
    s.cli("group", "delete", "bulk")                          # back to default, live
    assert js(s, "cache", "show")["vdisks"]["scan"]["group"] == "default"


@pytest.mark.timeout(120)
def test_data_through_the_cache_is_what_was_written(vmblock_server):
    s = vmblock_server
    url = make_vdisk(s, "data", size="32M")
    qemu_io(url, "write -P 0x11 0 1M", "write -P 0x22 1M 1M")
    qemu_io(url, "read -P 0x11 0 1M", "read -P 0x22 1M 1M")        # cached now
    # overwrite cached blocks: whole blocks, part of a block, across a block boundary
    qemu_io(url, "write -P 0x33 0 64k", "write -P 0x44 70k 4k", "write -P 0x55 124k 8k",
            "write -P 0x66 1048064 1k")
    qemu_io(url, "read -P 0x33 0 64k", "read -P 0x11 64k 6k", "read -P 0x44 70k 4k",
            "read -P 0x11 74k 50k", "read -P 0x55 124k 8k", "read -P 0x11 132k 100k",
            "read -P 0x66 1048064 1k", "read -P 0x22 1049088 100k")
    c = js(s, "cache", "show")["vdisks"]["data"]
    assert c["write_hits"] > 0 and c["read_hits"] > 0
    # UNMAP after caching reads zeros; so does WRITE SAME with UNMAP and write zeroes
    qemu_io(url, "discard 1M 512k")
    qemu_io(url, "read -P 0 1M 512k", "read -P 0x22 1536k 512k")
    qemu_io(url, "write -z -u 256k 128k", "write -z 512k 64k")
    qemu_io(url, "read -P 0 256k 128k", "read -P 0 512k 64k", "read -P 0x11 384k 128k")
    # a write to a block nobody cached, read twice (miss then hit)
    qemu_io(url, "write -P 0x77 20M 8k", "read -P 0x77 20M 8k", "read -P 0x77 20M 8k",
            "read -P 0 20979712 56k")
    assert js(s, "cache", "show")["vdisks"]["data"]["removals"] > 0


@pytest.mark.timeout(180)
def test_restart_after_kill_is_cold_and_never_stale(vmblock_server, tmp_path):
    s = vmblock_server
    url = make_vdisk(s, "vol")
    qemu_io(url, "write -P 0xa1 0 1M")
    qemu_io(url, "read -P 0xa1 0 1M")
    assert js(s, "cache", "show")["vdisks"]["vol"]["cached_blocks"] == 16
    qemu_io(url, "write -P 0xb2 0 512k", "read -P 0xb2 0 512k")   # cached copy updated
    os.killpg(s.proc.pid, signal.SIGKILL)                     # the flash file keeps 0xa1/0xb2
    s.proc.wait()
    # overwrite through another path: a server without the cache
    nocache = tmp_path / "nocache.toml"
    nocache.write_text('[cache]\nsize = "0"\n')
    other = type(s)(s.pool, ("--config", str(nocache)))
    try:
        assert not js(other, "cache", "show")["enabled"]
        qemu_io(other.url(1), "write -P 0xc3 0 256k", "write -P 0xc3 768k 256k")
    finally:
        other.stop()
    again = type(s)(s.pool)
    try:
        c = js(again, "cache", "show")
        assert c["enabled"] and c["used_blocks"] == 0 and c["vdisks"]["vol"]["requests"] == 0
        for _ in range(2):                                    # miss, then hit
            qemu_io(again.url(1), "read -P 0xc3 0 256k", "read -P 0xb2 256k 256k",
                    "read -P 0xa1 512k 256k", "read -P 0xc3 768k 256k")
        assert js(again, "cache", "show")["vdisks"]["vol"]["read_hits"] >= 4
    finally:
        again.stop()


@pytest.mark.timeout(120)
def test_pin_preload_and_pinned_group(vmblock_server):
    s = vmblock_server
    url = make_vdisk(s, "boot")
    qemu_io(url, "write -P 0x5e 0 1M", "write -P 0x5f 8M 128k")
    s.cli("group", "create", "never", "--promote", "never")
    s.cli("group", "assign", "boot", "never", "--vdisk")
    s.cli("vdisk", "pin", "boot")
    r = s.cli("cache", "preload", "boot")
    assert "18 blocks" in r.stdout
    d = js(s, "cache", "show")["vdisks"]["boot"]
    assert d["pinned"] and d["cached_blocks"] == 18 and d["read_bytes"] == 0
    qemu_io(url, "read -P 0x5e 0 1M", "read -P 0x5f 8M 128k")
    d = js(s, "cache", "show")["vdisks"]["boot"]
    assert d["read_hits"] == 2 * 9 and d["read_misses"] == 0 and d["read_hit_ratio"] == 1.0
    s.cli("group", "set", "never", "--max", "0%")             # pinned blocks stay
    assert js(s, "cache", "show")["vdisks"]["boot"]["cached_blocks"] == 18
    s.cli("vdisk", "unpin", "boot")
    s.cli("group", "set", "never", "--max", "0%")
    assert js(s, "cache", "show")["vdisks"]["boot"]["cached_blocks"] == 0
    s.cli("group", "create", "gold", "--pinned", "--promote", "read")
    assert js(s, "group", "show", "gold")["pinned"] is True


@pytest.mark.timeout(120)
def test_bad_group_input_is_one_line_exit_2(vmblock_server, tmp_path):
    s = vmblock_server
    s.cli("group", "create", "gold", "--min", "60%", "--max", "80%")
    cases = [
        (["group", "create", "x", "--min", "70%", "--max", "60%"], "above max"),
        (["group", "create", "x", "--min", "50%"], "over 100%"),
        (["group", "create", "x", "--max", "140%"], "not between 0 and 1 (0% and 100%)"),
        (["group", "create", "x", "--min", "lots"], "not a fraction (write 10% or 0.1)"),
        (["group", "create", "x", "--min", "10"], "write 10% for a percentage"),
        (["group", "create", "x", "--promote", "always"], "promote must be"),
        (["group", "create", "gold"], "already exists"),
        (["group", "assign", "no-such-vm", "gold"], "no VM or vdisk"),
        (["group", "assign", "demo", "no-such-group"], "no eviction group"),
        (["group", "set", "no-such-group", "--priority", "3"], "no eviction group"),
        (["group", "set", "gold", "--min", "90%"], "above max"),
        (["group", "delete", "default"], "cannot be deleted"),
        (["vdisk", "pin", "nope"], "no vdisk"),
        (["cache", "preload", "nope"], "no vdisk"),
    ]
    for args, words in cases:
        p = s.cli(*args, check=False)
        assert p.returncode == 2, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (args, p.stderr)
    assert [g["name"] for g in js(s, "group", "list")] == ["default", "gold"]
