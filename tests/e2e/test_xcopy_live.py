"""EXTENDED COPY and RECEIVE COPY RESULTS against a live ``vmblock serve``: libiscsi's
ExtendedCopy and ReceiveCopyResults suites, a many-segment copy between two vdisks of one target
checked with qemu-io (data equal, the copy a remap that writes nothing, later writes on either
side not showing on the other, ``pool check`` clean), the refusal of a descriptor naming a LUN
of another target, and the same copy through worker processes (``server.workers 2``)."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess

import pytest
from support.clients import cli_json as js
from support.clients import qemu_io
from support.iscsi_client import IscsiClient
from support.server import run_cli

from vmblock import DEFAULT_TARGET

MiB = 1 << 20
BLOCK = 512
OTHER_TARGET = "iqn.2026-11.io.vmblock.test:other"

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-io") and shutil.which("iscsi-test-cu")),
    reason="needs qemu-io (qemu-utils, qemu-block-extra) and iscsi-test-cu (libiscsi-bin)")


def cscd(naa_hex: str, block_size: int = BLOCK) -> bytes:
    """An identification CSCD descriptor (E4h) naming the LU with this NAA (SPC-4 6.4.5.8)."""
    naa = bytes.fromhex(naa_hex)
    d = bytearray(32)
    d[0] = 0xE4
    d[4], d[5], d[7] = 0x01, 0x03, len(naa)        # binary, LU association, NAA
    d[8:8 + len(naa)] = naa
    d[29:32] = block_size.to_bytes(3, "big")
    return bytes(d)


def segment(src: int, dst: int, blocks: int, src_lba: int, dst_lba: int) -> bytes:
    """A block-to-block segment descriptor (02h, SPC-4 6.4.6.5)."""
    return struct.pack(">BBHHH2xHQQ", 0x02, 0, 0x18, src, dst, blocks, src_lba, dst_lba)


def xcopy_cdb_and_list(cscds: list[bytes], segments: list[bytes],
                       list_id: int = 0, usage: int = 0b11) -> tuple[bytes, bytes]:
    """The EXTENDED COPY(LID1) CDB and parameter list."""
    c, s = b"".join(cscds), b"".join(segments)
    param = struct.pack(">BBH4xII", list_id, usage << 3, len(c), len(s), 0) + c + s
    cdb = bytes([0x83, 0x00]) + bytes(8) + struct.pack(">I", len(param)) + bytes(2)
    return cdb, param


def xcopy(server, lun: int, cscds, segments, target: str = DEFAULT_TARGET, **kw):
    """Send one EXTENDED COPY with the raw initiator (past the session's unit attentions)."""
    cdb, param = xcopy_cdb_and_list(cscds, segments, **kw)
    with IscsiClient(server.host, server.port, timeout=120) as c:
        assert c.login(target, chap=server.chap(target)).login_status == 0
        for _ in range(4):
            r = c.scsi(cdb, write=param, lun=lun)
            if not (r.status == 0x02 and (r.sense[2] & 0x0F) == 0x06):
                return r
    return r


def vdisk(server, name: str) -> dict:
    return js(server, "vdisk", "show", name)


def store_used(server) -> int:
    return js(server, "pool", "show")["store"]["used_bytes"]


def pool_clean(server) -> None:
    check = json.loads(server.cli("pool", "check", "--json").stdout)
    assert check["ok"], check["errors"]


@pytest.mark.timeout(300)
def test_libiscsi_extended_copy_and_receive_copy_results_suites(vmblock_server):
    p = subprocess.run(["iscsi-test-cu", "-d", "-t", "ALL.ExtendedCopy,ALL.ReceiveCopyResults",
                        vmblock_server.url()], capture_output=True, text=True, timeout=240)
    out = p.stdout + p.stderr
    verdicts = re.findall(r"^  Test: (\S+) \.\.\.[\s\S]*?(passed|FAILED)", out, re.MULTILINE)
    assert len(verdicts) == 8, out
    assert all(v == "passed" for _, v in verdicts), out
    assert "[SKIPPED]" not in out, out
    pool_clean(vmblock_server)


@pytest.mark.timeout(300)
def test_copy_between_vdisks_is_a_remap_and_copy_on_write_keeps_them_apart(vmblock_server):
    s = vmblock_server
    s.cli("vm", "create", "web")
    s.cli("vdisk", "create", "src", "--size", "64M", "--vm", "web")
    s.cli("vdisk", "create", "dst", "--size", "64M", "--vm", "web")
    src, dst = vdisk(s, "src"), vdisk(s, "dst")
    qemu_io(src["url"], "write -P 0x5a 0 16M", "write -P 0x6b 16M 1M")
    qemu_io(dst["url"], "write -P 0x11 0 20M")
    before = store_used(s)
    mib = MiB // BLOCK
    # four whole 4 MiB segments, then one that starts and ends inside an AU
    segs = [segment(0, 1, 4 * mib, i * 4 * mib, i * 4 * mib) for i in range(4)]
    segs.append(segment(0, 1, mib - 2, 16 * mib + 1, 16 * mib + 1))
    r = xcopy(s, src["lun"], [cscd(src["naa"]), cscd(dst["naa"])], segs)
    assert r.status == 0, r
    qemu_io(dst["url"], "read -P 0x5a 0 16M", "read -P 0x11 16M 512",
            "read -P 0x6b 16777728 1047552", "read -P 0x11 17M 3M")
    # 16 MiB shared, not written: the pool grew by the replaced AUs' release only
    assert store_used(s) <= before
    assert vdisk(s, "dst")["used_bytes"] == 20 * MiB
    # after the copy, writes to either side stay on that side
    qemu_io(src["url"], "write -P 0x77 1M 64k")
    qemu_io(dst["url"], "write -P 0x88 2M 4k")
    qemu_io(dst["url"], "read -P 0x5a 1M 64k", "read -P 0x88 2M 4k")
    qemu_io(src["url"], "read -P 0x77 1M 64k", "read -P 0x5a 2M 4k")
    pool_clean(s)


@pytest.mark.timeout(180)
def test_a_descriptor_naming_another_targets_lun_is_refused(vmblock_server):
    s = vmblock_server
    s.cli("vm", "create", "other")
    s.cli("vdisk", "create", "secret", "--size", "16M", "--vm", "other",
          "--target", OTHER_TARGET)
    s.cli("vdisk", "create", "mine", "--size", "16M")
    secret, mine = vdisk(s, "secret"), vdisk(s, "mine")
    qemu_io(s.url(secret["lun"], OTHER_TARGET), "write -P 0x42 0 1M")
    # read the other target's LUN into mine, then write mine over it: both refused
    for cscds in ([cscd(secret["naa"]), cscd(mine["naa"])],
                  [cscd(mine["naa"]), cscd(secret["naa"])]):
        r = xcopy(s, mine["lun"], cscds, [segment(0, 1, 2048, 0, 0)])
        assert r.status == 0x02, r
        assert (r.sense[2] & 0x0F, r.sense[12], r.sense[13]) == (0x0A, 0x0D, 0x02), r.sense
    qemu_io(s.url(mine["lun"]), "read -P 0 0 1M")
    qemu_io(s.url(secret["lun"], OTHER_TARGET), "read -P 0x42 0 1M")
    # QEMU's copy offload sends the EXTENDED COPY on the destination's session: from the other
    # target's LUN into mine it names a LUN that session cannot see, is refused, and qemu-img
    # falls back to reading and writing (it holds both targets' credentials): the data
    # arrives, written, not shared
    before = store_used(s)
    subprocess.run(["qemu-img", "convert", "-C", "-n", "-f", "raw", "-O", "raw",
                    s.url(secret["lun"], OTHER_TARGET), s.url(mine["lun"])],
                   check=True, capture_output=True, timeout=120)
    qemu_io(s.url(mine["lun"]), "read -P 0x42 0 1M")
    assert store_used(s) >= before + MiB
    pool_clean(s)


@pytest.fixture
def workers_server(tmp_path, start_server):
    """A server with ``server.workers 2`` on a new pool."""
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", "2")
    return start_server(pool=pool)


@pytest.mark.timeout(300)
def test_the_workers_see_the_remap(workers_server):
    s = workers_server
    s.cli("vdisk", "create", "a", "--size", "32M")
    s.cli("vdisk", "create", "b", "--size", "32M")
    a, b = vdisk(s, "a"), vdisk(s, "b")
    qemu_io(a["url"], "write -P 0x3c 0 8M")
    qemu_io(b["url"], "write -P 0x01 0 8M")       # b's AUs owned: the fast path writes in place
    r = xcopy(s, b["lun"], [cscd(a["naa"]), cscd(b["naa"])],
              [segment(0, 1, 8 * MiB // BLOCK, 0, 0)])
    assert r.status == 0, r
    # several sessions, so reads and writes land on both workers' fast paths
    for _ in range(3):
        qemu_io(b["url"], "read -P 0x3c 0 8M")
    qemu_io(a["url"], "write -P 0x4d 0 1M")       # shared now: forwarded, copied on write
    for _ in range(3):
        qemu_io(b["url"], "read -P 0x3c 0 8M")
        qemu_io(a["url"], "read -P 0x4d 0 1M", "read -P 0x3c 1M 7M")
    pool_clean(s)


@pytest.mark.timeout(180)
def test_a_reservation_on_the_destination_holds_for_the_copy(vmblock_server):
    s = vmblock_server
    s.cli("vdisk", "create", "from", "--size", "16M")
    s.cli("vdisk", "create", "held", "--size", "16M")
    src, dst = vdisk(s, "from"), vdisk(s, "held")
    qemu_io(src["url"], "write -P 0x21 0 1M")
    # another initiator registers and holds WRITE EXCLUSIVE on the destination
    with IscsiClient(s.host, s.port) as c:
        assert c.login(DEFAULT_TARGET, initiator="iqn.2026-11.io.vmblock.test:holder",
                       chap=s.chap()).login_status == 0
        for sa, scope_type, key, sa_key in ((0x00, 0, 0, 0x77), (0x01, 0x01, 0x77, 0)):
            param = struct.pack(">QQ8x", key, sa_key)
            cdb = bytes([0x5F, sa, scope_type, 0, 0]) + struct.pack(">I", len(param)) + b"\0"
            for _ in range(4):
                r = c.scsi(cdb, write=param, lun=dst["lun"])
                if not (r.status == 0x02 and (r.sense[2] & 0x0F) == 0x06):
                    break
            assert r.status == 0, r
        r = xcopy(s, src["lun"], [cscd(src["naa"]), cscd(dst["naa"])],
                  [segment(0, 1, 2048, 0, 0)])
        assert r.status == 0x18, r                  # RESERVATION CONFLICT, nothing copied
    qemu_io(dst["url"], "read -P 0 0 1M")


@pytest.mark.timeout(300)
def test_behind_the_flash_cache_the_copy_is_reads_and_writes(tmp_path, start_server):
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "cache.size", "32M")
    s = start_server(pool=pool)
    s.cli("vdisk", "create", "c-src", "--size", "32M")
    s.cli("vdisk", "create", "c-dst", "--size", "32M")
    src, dst = vdisk(s, "c-src"), vdisk(s, "c-dst")
    qemu_io(src["url"], "write -P 0x31 0 4M")
    qemu_io(dst["url"], "write -P 0x13 0 4M", "read -P 0x13 0 4M")   # cached blocks of dst
    before = store_used(s)
    r = xcopy(s, src["lun"], [cscd(src["naa"]), cscd(dst["naa"])],
              [segment(0, 1, 4 * MiB // BLOCK, 0, 0)])
    assert r.status == 0, r
    qemu_io(dst["url"], "read -P 0x31 0 4M")        # not the stale cached blocks
    assert store_used(s) == before                  # written in place, nothing shared
    qemu_io(src["url"], "write -P 0x41 0 64k")
    qemu_io(dst["url"], "read -P 0x31 0 4M")
    pool_clean(s)


@pytest.mark.timeout(300)
def test_qemu_img_convert_copy_offload_uses_the_remap(vmblock_server):
    """QEMU's iSCSI driver offloads ``qemu-img convert -C`` with EXTENDED COPY (E4h + 02h):
    a real client of its own, whose copy must be a remap that writes nothing."""
    s = vmblock_server
    s.cli("vdisk", "create", "q-src", "--size", "256M")
    s.cli("vdisk", "create", "q-dst", "--size", "256M")
    src, dst = vdisk(s, "q-src"), vdisk(s, "q-dst")
    qemu_io(src["url"], "write -P 0x5c 0 64M", "write -P 0x6d 100M 1M")
    before = store_used(s)
    subprocess.run(["qemu-img", "convert", "-C", "-n", "-f", "raw", "-O", "raw",
                    src["url"], dst["url"]], check=True, capture_output=True, timeout=120)
    assert store_used(s) == before
    qemu_io(dst["url"], "read -P 0x5c 0 64M", "read -P 0 64M 36M", "read -P 0x6d 100M 1M")
    qemu_io(src["url"], "write -P 0x7e 0 1M")
    qemu_io(dst["url"], "read -P 0x5c 0 1M")
    pool_clean(s)
