"""``vmblock vdisk move`` on a running server, through QEMU's iSCSI driver: patterns written
before the move and by a qemu-io that keeps writing during it all read back after it, the
vdisk's blocks are on the new tier (``vdisk show``/``pool show``), its cached blocks are gone
and it bypasses the cache while on flash, ``pool check`` is clean, and the move back works the
same way. A move that does not fit is refused with nothing changed."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading

import pytest
import uvloop
from support import clients
from support.server import run_cli

from vmblock.meta import Pool
from vmblock.server import Server
from vmblock.store.layout import AU_SIZE


def qemu_io_args(url: str, cmds: list[str]) -> list[str]:
    return clients.qemu_io_args(url, cmds, cache="none")


def qemu_io(url: str, *cmds: str) -> str:
    return clients.qemu_io(url, *cmds, cache="none", timeout=180)


def js(server, *args):
    return clients.cli_json(server, *args, timeout=180)


MiB = 1 << 20

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"),
                                reason="needs qemu-io (qemu-utils, qemu-block-extra)")


RACE = (40 * MiB, 8 * MiB)     # rewritten 4 KiB at a time, in scattered order, during moves


class InProcessServer:
    """The server of ``vmblock serve`` run in this process (its event loop in a thread), so a
    test can install hooks on its store; the CLI and qemu-io reach it as they reach any."""

    def __init__(self, pool_dir):
        self.pool_dir = pool_dir
        self.pool = Pool(str(pool_dir), create=True)
        # both tiers are files on one device: cache.size auto would leave the cache off
        self.pool.config_set("cache.size", "50%")
        self.pool.config_set("server.workers", "0")     # one process, as support.server pins
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = Server(self.pool, [("127.0.0.1", 0)])
        try:
            self._run(self.server.start())
        except BaseException:
            self.stop()
            raise

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def cli(self, *args: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``vmblock --pool POOL ARGS...``; with ``check`` a non-zero exit fails the test."""
        return run_cli(self.pool_dir, *args, check=check, timeout=timeout)

    def stop(self) -> None:
        try:
            self._run(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(60)
            self.loop.close()
            self.pool.close()


class WriteInEachMove:
    """A move-step hook: the first step of each move that moves AUs of RACE waits, between its
    copy and its remap, for a qemu-io write into one of them (which has to go round the
    step's bias to the new tier): a write races the move for sure, at any machine speed."""

    def __init__(self, url: str):
        self.url = url
        self.pattern = None     # the pattern the current move's racing writes use
        self.done = False

    def arm(self, pattern: int) -> None:
        self.pattern = pattern
        self.done = False

    def __call__(self, mid, vaus, old_aus):
        inside = vaus[(vaus * AU_SIZE >= RACE[0]) & (vaus * AU_SIZE < RACE[0] + RACE[1])]
        if self.done or not len(inside):
            return
        self.done = True
        qemu_io(self.url, f"write -P {self.pattern:#x} {int(inside[0]) * AU_SIZE} 4096")


@pytest.fixture
def server(tmp_path):
    s = InProcessServer(tmp_path / "pool")
    try:
        yield s
    finally:
        s.stop()


BASE = [(0, 24 * MiB, 0x11), (24 * MiB, 64 * 1024, 0x22), (30 * MiB, 3 * MiB + 4096, 0x33)]


def racing_pass(pattern: int) -> str:
    """One 4 KiB write to every 4 KiB of RACE, in a scattered order, as qemu-io commands:
    afterwards the whole range holds ``pattern``; a write lost in a move leaves the old one."""
    base, size = RACE
    n = size // 4096
    return "".join(f"write -P {pattern:#x} {base + (i * 7919 % n) * 4096} 4096\n"
                   for i in range(n))


class RacingWriter:
    """An interactive qemu-io that rewrites RACE with ``pattern``, pass after pass, until
    ``finish``: it writes for as long as the move runs, whatever either's speed."""

    def __init__(self, url: str, pattern: int):
        self.proc = subprocess.Popen(
            ["qemu-io", "-f", "raw", "-t", "none", url], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.stop = threading.Event()
        self.passes = 0
        self.out = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.feeder = threading.Thread(target=self._feed, args=(racing_pass(pattern),),
                                       daemon=True)
        self.reader.start()
        self.feeder.start()

    def _read(self) -> None:
        with self.proc.stdout:
            self.out = self.proc.stdout.read()

    def _feed(self, commands: str) -> None:
        try:
            while not self.stop.is_set():       # the first pass always goes in whole
                self.proc.stdin.write(commands)
                self.proc.stdin.flush()
                self.passes += 1
        finally:
            self.proc.stdin.close()     # qemu-io runs what it has read, then quits

    def finish(self) -> str:
        self.stop.set()
        self.feeder.join(180)
        self.proc.wait(180)
        self.reader.join(180)
        assert self.proc.returncode == 0 and self.passes >= 1, self.out[-2000:]
        low = self.out.lower()
        assert "fail" not in low and "error" not in low, self.out[-2000:]
        return self.out


def verify(url: str, race_pattern: int) -> None:
    qemu_io(url, *[f"read -P {p:#x} {o} {n}" for o, n, p in BASE],
            f"read -P {race_pattern:#x} {RACE[0]} {RACE[1]}")


def move_while_writing(s, url: str, tier: str, old: int, pattern: int,
                       hook: WriteInEachMove) -> dict:
    """``vdisk move`` while a qemu-io rewrites RACE (its AUs are mapped and owned: the writes
    go in place on the lock-free path, the hazard a move has to handle)."""
    verify(url, old)
    hook.arm(pattern)
    w = RacingWriter(url, pattern)
    try:
        r = js(s, "vdisk", "move", "d", "--tier", tier)
    finally:
        w.finish()
    assert r["tier"] == tier and r["move"]["moved_bytes"] > 0, r
    # the first step moving RACE waited for a write into its AUs: it took the locked
    # copy-on-write path to the new tier
    assert hook.done and r["move"]["raced_aus"] > 0, r
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
    hook = WriteInEachMove(url)
    s.pool.store.mover.move_step_hook = hook

    r = move_while_writing(s, url, "flash", 0x77, 0x44, hook)
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

    move_while_writing(s, url, "capacity", 0x44, 0x55, hook)
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
