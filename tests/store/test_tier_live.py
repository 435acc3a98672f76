"""``vmblock vdisk move`` on a running server, through QEMU's iSCSI driver: patterns written
before the move and by a qemu-io that keeps writing during it all read back after it, the
vdisk's blocks are on the new tier (``vdisk show``/``pool show``), its cached blocks are gone
and it bypasses the cache while on flash, ``pool check`` is clean, and the move back works the
same way. A move that does not fit is refused with nothing changed."""

from __future__ import annotations

import shutil
import subprocess
import time

import clients
import pytest


def qemu_io_args(url: str, cmds: list[str]) -> list[str]:
    return clients.qemu_io_args(url, cmds, cache="none")


def qemu_io(url: str, *cmds: str) -> str:
    return clients.qemu_io(url, *cmds, cache="none", timeout=180)


def js(server, *args):
    return clients.cli_json(server, *args, timeout=180)

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"),
                                reason="needs qemu-io (qemu-utils, qemu-block-extra)")


@pytest.fixture
def server(tmp_path, request, monkeypatch):
    """A server whose move steps pause 50 ms between copy and remap (VMBLOCK_TEST_MOVE_PAUSE),
    so the racing qemu-io surely writes into AUs that are being moved."""
    monkeypatch.setenv("VMBLOCK_TEST_MOVE_PAUSE", "0.05")
    VmblockServer = next(p.VmblockServer for p in request.config.pluginmanager.get_plugins()
                         if hasattr(p, "VmblockServer"))
    s = VmblockServer(tmp_path / "pool")
    try:
        yield s
    finally:
        s.stop()


BASE = [(0, 24 * MiB, 0x11), (24 * MiB, 64 * 1024, 0x22), (30 * MiB, 3 * MiB + 4096, 0x33)]


RACE = (40 * MiB, 8 * MiB)     # rewritten 4 KiB at a time, in scattered order, during moves


def racing_writes(pattern: int) -> list[str]:
    """One 4 KiB write to every 4 KiB of RACE, in a scattered order: afterwards the whole
    range holds ``pattern``; a write lost in a move leaves the old pattern there."""
    base, size = RACE
    n = size // 4096
    cmds = []
    for i in range(n):      # ~3 s in all, so the whole move happens while it writes
        cmds.append(f"write -P {pattern:#x} {base + (i * 7919 % n) * 4096} 4096")
        cmds.append("sleep 1")
    return cmds


def wait_until_sending(pid: int, nbytes: int) -> None:
    """Until the process has written ``nbytes`` to its sockets (qemu-io is past its login and
    writing data): /proc/PID/io counts every byte of write/send calls."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/io") as f:
            io = dict(line.split(": ") for line in f.read().splitlines())
        if int(io["wchar"]) >= nbytes:
            return
        time.sleep(0.01)
    raise AssertionError("qemu-io did not start writing")


def verify(url: str, race_pattern: int) -> None:
    qemu_io(url, *[f"read -P {p:#x} {o} {n}" for o, n, p in BASE],
            f"read -P {race_pattern:#x} {RACE[0]} {RACE[1]}")


def move_while_writing(s, url: str, tier: str, old: int, pattern: int) -> dict:
    """``vdisk move`` while a qemu-io rewrites RACE (its AUs are mapped and owned: the writes
    go in place on the lock-free path, the hazard a move has to handle)."""
    verify(url, old)
    w = subprocess.Popen(qemu_io_args(url, racing_writes(pattern)), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    wait_until_sending(w.pid, 256 * 1024)
    r = js(s, "vdisk", "move", "d", "--tier", tier)
    still_writing = w.poll() is None
    out, _ = w.communicate(timeout=180)
    assert w.returncode == 0 and "fail" not in out.lower(), out
    assert r["tier"] == tier and r["move"]["moved_bytes"] > 0, r
    assert still_writing, "the writer ended before the move did: nothing raced"
    # writes into AUs being moved took the locked copy-on-write path to the new tier
    assert r["move"]["raced_aus"] > 0, r
    verify(url, pattern)
    return r


@pytest.mark.timeout(300)
def test_move_to_flash_and_back_while_qemu_io_writes(server):
    s = server
    s.cli("vdisk", "create", "d", "--size", "64M")
    url = js(s, "vdisk", "show", "d")["url"]
    qemu_io(url, *[f"write -P {p:#x} {o} {n}" for o, n, p in BASE],
            f"write -P 0x77 {RACE[0]} {RACE[1]}")
    qemu_io(url, *[f"read -P 0x11 {o} 4k" for o in range(0, MiB, 4096)])    # cached
    assert js(s, "cache", "show")["vdisks"]["d"]["cached_bytes"] > 0
    used = js(s, "vdisk", "show", "d")["used_bytes"]

    r = move_while_writing(s, url, "flash", 0x77, 0x44)
    d = js(s, "vdisk", "show", "d")
    assert d["tier"] == "flash" and d["tier_bytes"]["capacity"] == 0
    assert d["tier_bytes"]["flash"] == d["used_bytes"] >= used
    st = js(s, "pool", "show")["store"]["tiers"]
    assert st["flash"]["used_bytes"] == d["used_bytes"]
    assert st["flash"]["au_offset_bytes"] >= st["flash"]["cache_bytes"] > 0
    c = js(s, "cache", "show")["vdisks"]["d"]
    assert c["cached_bytes"] == 0
    hits = c["read_hits"] + c["read_misses"]
    qemu_io(url, *[f"read -P 0x11 {o} 4k" for o in range(0, MiB, 4096)])
    c = js(s, "cache", "show")["vdisks"]["d"]
    assert c["read_hits"] + c["read_misses"] == hits and c["cached_bytes"] == 0  # bypassed
    assert js(s, "pool", "check")["ok"]

    move_while_writing(s, url, "capacity", 0x44, 0x55)
    d = js(s, "vdisk", "show", "d")
    assert d["tier"] == "capacity" and d["tier_bytes"]["flash"] == 0
    assert js(s, "pool", "show")["store"]["tiers"]["flash"]["used_bytes"] == 0
    qemu_io(url, *[f"read -P 0x11 {o} 4k" for o in range(0, MiB, 4096)])
    assert js(s, "cache", "show")["vdisks"]["d"]["cached_bytes"] > 0     # cached again
    chk = js(s, "pool", "check")
    assert chk["ok"], chk["errors"]
    assert r["move"]["steps"] >= 1


@pytest.mark.timeout(120)
def test_move_that_does_not_fit_is_refused(vmblock_server):
    s = vmblock_server
    s.cli("config", "set", "store.flash_size", "64M")     # next start; this one: 1G
    s.cli("vdisk", "create", "big", "--size", "1G")
    url = js(s, "vdisk", "show", "big")["url"]
    qemu_io(url, "write -P 0x66 0 600M")
    p = s.cli("vdisk", "move", "big", "--tier", "flash", check=False, timeout=180)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "not enough free space on the flash tier" in p.stderr and "nothing was moved" \
        in p.stderr
    d = js(s, "vdisk", "show", "big")
    assert d["tier"] == "capacity" and d["tier_bytes"]["flash"] == 0
    qemu_io(url, "read -P 0x66 0 1M", "read -P 0x66 599M 1M")
    assert js(s, "pool", "check")["ok"]
