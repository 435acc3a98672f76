"""A full or failing disk under a live server: sense to the initiator, nothing acknowledged as
durable lost, recovery without a restart.

The file systems are real: a small tmpfs mounted by the test (ENOSPC as the kernel gives it),
and faultfs (tests/support/faultfs.py: a FUSE pass-through whose files fail with EIO on command, the
``faultfs`` fixture), since this kernel has no device-mapper error/flakey targets.
The raw initiator shows the exact status and sense of every command, so a transport failure
(iSCSI response 0x01) cannot pass for a CHECK CONDITION.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess

import pytest
from support.clients import cli_json as js
from support.iscsi_client import IscsiClient, read10, write10
from support.server import VmblockServer

from vmblock import DEFAULT_TARGET

MiB = 1 << 20
BLOCK = 512
SAM_STAT_GOOD = 0x00
SAM_STAT_CHECK_CONDITION = 0x02
SENSE_KEY_UNIT_ATTENTION = 0x06
SPACE_ALLOCATION_FAILED = (0x07, 0x27, 0x07)     # DATA PROTECT, 27h/07h (SBC-3 4.7.3.7)
WRITE_ERROR = (0x03, 0x0C, 0x00)                 # MEDIUM ERROR, WRITE ERROR
SYNCHRONIZE_CACHE_10 = bytes([0x35]) + bytes(9)


@pytest.fixture
def tmpfs(tmp_path):
    """A 16 MiB tmpfs mounted for the test (root only), always unmounted."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs) -> str:
    """Fill ``fs`` to the last page; returns the filler's path (delete it to free the space)."""
    path = os.path.join(fs, "filler")
    chunk = bytes(MiB)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError:
                break
        for size in (65536, 4096, 512):     # then whatever smaller pieces still fit
            while True:
                try:
                    f.write(chunk[:size])
                except OSError:
                    break
    return path


class Initiator:
    """A logged-in raw initiator that gets past the unit attentions of a new nexus."""

    def __init__(self, server, lun: int):
        self.client = IscsiClient(server.host, server.port)
        assert self.client.login(DEFAULT_TARGET, chap=server.chap()).login_status == 0
        self.lun = lun

    def cmd(self, cdb: bytes, **kw):
        for _ in range(4):
            r = self.client.scsi(cdb, lun=self.lun, **kw)
            if not (r.status == SAM_STAT_CHECK_CONDITION
                    and r.sense[2] & 0x0F == SENSE_KEY_UNIT_ATTENTION):
                return r
        return r

    def write(self, offset: int, data: bytes):
        return self.cmd(write10(offset // BLOCK, len(data) // BLOCK), write=data)

    def read(self, offset: int, n: int) -> bytes:
        r = self.cmd(read10(offset // BLOCK, n // BLOCK), read_len=n)
        assert r.status == SAM_STAT_GOOD, r
        return r.data

    def sync(self):
        return self.cmd(SYNCHRONIZE_CACHE_10)

    def close(self):
        self.client.close()


def kill_and_restart(server, args: tuple[str, ...] = ()):
    """SIGKILL the server (nothing gets flushed on the way out), then serve its pool again."""
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.stop()
    return VmblockServer(server.pool, args)


def sense(r) -> tuple[int, int, int]:
    return r.sense[2] & 0x0F, r.sense[12], r.sense[13]


def good(r) -> bool:
    return r.status == SAM_STAT_GOOD and r.response == 0


def pattern(byte: int, n: int) -> bytes:
    return bytes([byte]) * n


@pytest.mark.timeout(180)
def test_meta_db_full_gives_sense_recovers_without_restart_and_loses_nothing(
        tmp_path, tmpfs):
    """The meta DB on a full file system (tiers elsewhere): the flush that cannot commit and
    the writes that need new mappings get 07/27/07, overwrites in place go on, and once space
    is back the next SYNCHRONIZE CACHE commits everything, with no restart; after kill -9
    every write covered by a GOOD SYNCHRONIZE CACHE reads back."""
    cfg = tmp_path / "tiers.toml"
    cfg.write_text(f'[store]\ncapacity_path = "{tmp_path / "capacity"}"\n'
                   f'flash_path = "{tmp_path / "flash"}"\ncapacity_size = "1G"\n'
                   f'commit_interval = "0"\n')
    pool = tmpfs / "pool"
    s = VmblockServer(pool, ("--config", str(cfg)))
    try:
        s.cli("vdisk", "create", "d", "--size", "256M")
        lun = js(s, "vdisk", "show", "d")["lun"]
        ini = Initiator(s, lun)
        a, b, c = pattern(0x61, MiB), pattern(0x62, 8 * MiB), pattern(0x63, MiB)
        assert good(ini.write(0, a)) and good(ini.sync())          # A: durable
        filler = fill(tmpfs)
        # B: 4 x 8 MiB of new AUs (512 map keys, more than a page of WAL): GOOD, write-back
        for i in range(4):
            assert good(ini.write(16 * MiB + i * 8 * MiB, b))
        r = ini.sync()
        assert r.status == SAM_STAT_CHECK_CONDITION and r.response == 0, r
        assert sense(r) == SPACE_ALLOCATION_FAILED, r.sense
        r = ini.write(128 * MiB, c)                     # needs a mapping: refused, not lost
        assert r.status == SAM_STAT_CHECK_CONDITION and sense(r) == SPACE_ALLOCATION_FAILED
        a2 = pattern(0x71, MiB)
        assert good(ini.write(0, a2))                   # in place: no metadata needed
        assert ini.read(0, MiB) == a2
        assert ini.read(16 * MiB, 8 * MiB) == b
        kinds = [e["kind"] for e in js(s, "events")]
        assert "meta_fault" in kinds, kinds
        p = s.cli("vdisk", "create", "e", "--size", "1G", check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "No space left" in p.stderr, p.stderr
        os.unlink(filler)                               # space is back
        assert good(ini.sync())                         # the pool recovered by itself
        assert good(ini.write(128 * MiB, c)) and good(ini.sync())
        ini.close()
        s = kill_and_restart(s, ("--config", str(cfg)))
        ini = Initiator(s, lun)
        assert ini.read(0, MiB) == a2
        for i in range(4):
            assert ini.read(16 * MiB + i * 8 * MiB, 8 * MiB) == b
        assert ini.read(128 * MiB, MiB) == c
        ini.close()
        kinds = [e["kind"] for e in js(s, "events")]
        assert "meta_fault" in kinds and "meta_recovered" in kinds, kinds
        check = js(s, "pool", "check")
        assert check["ok"], check["errors"]
    finally:
        s.stop()


@pytest.mark.timeout(240)
def test_pool_file_system_full_other_vdisks_go_on_and_nothing_good_is_lost(
        tmp_path, tmpfs):
    """The whole default pool (meta DB, capacity and flash files) on a full file system:
    writes that need space get 07/27/07, overwrites and reads of every vdisk go on, and once
    space is back the next SYNCHRONIZE CACHE commits every write that got GOOD; after kill -9
    they all read back, the refused ones read as zeros, and ``pool check`` is clean."""
    pool = tmpfs / "pool"
    s = VmblockServer(pool)
    try:
        s.cli("vdisk", "create", "d1", "--size", "64M")
        s.cli("vdisk", "create", "d2", "--size", "16M")
        one = Initiator(s, js(s, "vdisk", "show", "d1")["lun"])
        two = Initiator(s, js(s, "vdisk", "show", "d2")["lun"])
        assert good(two.write(0, pattern(0x20, 2 * MiB))) and good(two.sync())
        reserve = os.path.join(tmpfs, "reserve")
        with open(reserve, "wb") as f:                  # the space an admin frees later
            f.write(bytes(4 * MiB))
        acked, refused = {}, []
        for i in range(64):                             # fill the pool through d1
            r = one.write(i * MiB, pattern(0x30 + i % 64, MiB))
            if good(r):
                acked[i] = 0x30 + i % 64
            else:
                assert r.status == SAM_STAT_CHECK_CONDITION, r
                assert sense(r) == SPACE_ALLOCATION_FAILED, r.sense
                refused.append(i)
        assert refused, "the 16 MiB file system never filled"
        r = one.sync()
        assert good(r) or (r.status == SAM_STAT_CHECK_CONDITION and r.response == 0), r
        filler = fill(tmpfs)
        r = one.write(refused[0] * MiB, pattern(0x99, MiB))
        assert r.status == SAM_STAT_CHECK_CONDITION and sense(r) == SPACE_ALLOCATION_FAILED
        assert good(two.write(0, pattern(0x21, MiB)))   # another vdisk, in place: goes on
        assert two.read(0, 2 * MiB) == pattern(0x21, MiB) + pattern(0x20, MiB)
        for i, byte in acked.items():
            assert one.read(i * MiB, MiB) == pattern(byte, MiB)
        os.unlink(reserve)
        os.unlink(filler)                               # space is back
        assert good(one.sync()) and good(two.sync())
        one.close()
        two.close()
        s = kill_and_restart(s)
        one = Initiator(s, js(s, "vdisk", "show", "d1")["lun"])
        two = Initiator(s, js(s, "vdisk", "show", "d2")["lun"])
        for i, byte in acked.items():
            assert one.read(i * MiB, MiB) == pattern(byte, MiB), i
        for i in refused:
            assert one.read(i * MiB, MiB) == bytes(MiB), i
        assert two.read(0, 2 * MiB) == pattern(0x21, MiB) + pattern(0x20, MiB)
        one.close()
        two.close()
        check = js(s, "pool", "check")
        assert check["ok"], check["errors"]
    finally:
        s.stop()


@pytest.mark.timeout(240)
def test_capacity_tier_eio_gives_sense_other_tier_goes_on_and_heals(tmp_path, faultfs):
    """The tiers on faultfs (a FUSE pass-through failing on command): a write the capacity
    file refuses with EIO gets 03/0C/00 and changes nothing, a vdisk on the flash tier keeps
    writing; a failed fdatasync fails SYNCHRONIZE CACHE and refuses writes until a sync
    works again, then everything GOOD is committed; kill -9 and restart lose none of it."""
    cfg = tmp_path / "tiers.toml"
    cfg.write_text(f'[store]\ncapacity_path = "{faultfs.mount / "capacity"}"\n'
                   f'flash_path = "{faultfs.mount / "flash"}"\ncapacity_size = "1G"\n'
                   f'flash_size = "256M"\ncommit_interval = "0"\n')
    pool = tmp_path / "pool"
    s = VmblockServer(pool, ("--config", str(cfg)))
    try:
        s.cli("vdisk", "create", "d1", "--size", "64M")
        s.cli("vdisk", "create", "d2", "--size", "16M")
        s.cli("vdisk", "move", "d2", "--tier", "flash")
        one = Initiator(s, js(s, "vdisk", "show", "d1")["lun"])
        two = Initiator(s, js(s, "vdisk", "show", "d2")["lun"])
        a, x = pattern(0x41, MiB), pattern(0x58, MiB)
        assert good(one.write(0, a)) and good(two.write(0, x)) and good(one.sync())
        faultfs.fail("capacity", "write", errno.EIO)
        for off in (8 * MiB, 0):                        # a new AU, then in place
            r = one.write(off, pattern(0x42, MiB))
            assert r.status == SAM_STAT_CHECK_CONDITION and r.response == 0, r
            assert sense(r) == WRITE_ERROR, r.sense
        assert one.read(0, MiB) == a and one.read(8 * MiB, MiB) == bytes(MiB)
        x2 = pattern(0x59, MiB)
        assert good(two.write(MiB, x2)) and good(two.sync())   # the flash tier goes on
        faultfs.heal()
        faultfs.fail("capacity", "fsync", errno.EIO)
        b = pattern(0x43, MiB)
        assert good(one.write(16 * MiB, b))             # write-back: not yet durable
        r = one.sync()
        assert r.status == SAM_STAT_CHECK_CONDITION and sense(r) == WRITE_ERROR, r
        r = one.write(24 * MiB, b)                      # durability cannot be promised
        assert r.status == SAM_STAT_CHECK_CONDITION and sense(r) == WRITE_ERROR, r
        assert one.read(16 * MiB, MiB) == b
        kinds = [e["kind"] for e in js(s, "events")]
        assert "tier_fault" in kinds, kinds
        faultfs.heal()
        assert good(one.sync())                         # healed: the next commit works
        assert good(one.write(24 * MiB, b)) and good(one.sync())
        one.close()
        two.close()
        s = kill_and_restart(s, ("--config", str(cfg)))
        one = Initiator(s, js(s, "vdisk", "show", "d1")["lun"])
        two = Initiator(s, js(s, "vdisk", "show", "d2")["lun"])
        assert one.read(0, MiB) == a and one.read(8 * MiB, MiB) == bytes(MiB)
        assert one.read(16 * MiB, MiB) == b and one.read(24 * MiB, MiB) == b
        assert two.read(0, 2 * MiB) == x + x2
        one.close()
        two.close()
        kinds = [e["kind"] for e in js(s, "events")]
        assert "tier_fault" in kinds and "tier_recovered" in kinds, kinds
        check = js(s, "pool", "check")
        assert check["ok"], check["errors"]
    finally:
        s.stop()


@pytest.mark.timeout(240)
def test_snapshot_whose_meta_sync_failed_is_resolved_after_recovery(tmp_path, faultfs):
    """The meta DB's fsync fails while a snapshot is taken: the command fails with one line,
    but the WAL record got written, so the batch is back when RocksDB reopens. The first good
    commit finds the transaction's marker and applies it in memory too: the snapshot's AUs
    are shared, a write to the live vdisk copies on write, and ``pool check`` (which compares
    the in-memory reference counts with the meta DB) is clean, before and after a restart."""
    pool = faultfs.mount / "pool"
    s = VmblockServer(pool, ("--config", str(_no_committer(tmp_path))))
    try:
        s.cli("vm", "create", "v")
        s.cli("vdisk", "create", "d", "--size", "16M", "--vm", "v")
        ini = Initiator(s, js(s, "vdisk", "show", "d")["lun"])
        a = pattern(0x51, MiB)
        assert good(ini.write(0, a)) and good(ini.sync())
        faultfs.fail("pool/meta/*", "fsync", errno.EIO)
        p = s.cli("vm", "snapshot", "v", "--name", "s1", check=False)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        faultfs.heal()
        assert good(ini.sync())                         # reopens the meta DB, resolves
        snaps = [x["name"] for x in js(s, "snapshot", "list", "--vm", "v")]
        assert snaps == ["s1"], snaps                   # its WAL record survived
        assert good(ini.write(0, pattern(0x52, MiB))) and good(ini.sync())
        check = js(s, "pool", "check")
        assert check["ok"], check["errors"]
        assert check["shared_aus"] == 0                 # the write copied the shared AUs
        ini.close()
        s = kill_and_restart(s, ("--config", str(_no_committer(tmp_path))))
        s.cli("vm", "clone", "v", "--snapshot", "s1", "--name", "w")
        clone = Initiator(s, js(s, "vdisk", "show", "w-d")["lun"])
        assert clone.read(0, MiB) == a                  # the snapshot kept the old data
        clone.close()
        check = js(s, "pool", "check")
        assert check["ok"], check["errors"]
    finally:
        s.stop()


def _no_committer(tmp_path):
    cfg = tmp_path / "no-committer.toml"
    cfg.write_text('[store]\ncommit_interval = "0"\n')
    return cfg
