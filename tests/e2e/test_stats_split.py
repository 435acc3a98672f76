"""Where the time went, live: a raw initiator that holds its Data-Out back after the R2T
shows the wait under network/host, not storage; a cold read through the flash cache shows
as flash_miss and the re-read as flash, in one process and with worker processes."""

from __future__ import annotations

import shutil
import time

import pytest
from support import clients
from support.clients import cli_json as js
from support.iscsi_client import IscsiClient, tur
from support.server import run_cli

from vmblock import DEFAULT_TARGET
from vmblock.iscsi import pdu

HOLD = 0.5          # seconds the initiator keeps its Data-Out back after each R2T
WRITES = 3


def write10(lba: int, blocks: int) -> bytes:
    return bytes([0x2A, 0]) + lba.to_bytes(4, "big") + bytes([0]) + blocks.to_bytes(2, "big") \
        + bytes(1)


def slow_write(c: IscsiClient, lun: int, lba: int, data: bytes) -> int:
    """WRITE(10) with no immediate data; the Data-Out leaves ``HOLD`` s after the R2T."""
    itt = c.next_itt()
    hdr = pdu.build_scsi_cmd(pdu.FLAG_FINAL | pdu.CMD_FLAG_WRITE | 1, pdu.encode_lun(lun), itt,
                             len(data), c.cmdsn, c.exp_statsn, write10(lba, len(data) // 512))
    c.cmdsn = (c.cmdsn + 1) & 0xFFFFFFFF
    c.send_pdu(hdr)
    r2t = c.recv_skip_nops()
    assert r2t.opcode == pdu.Opcode.R2T
    time.sleep(HOLD)        # the initiator's doing: no data can reach the target sooner
    c.send_pdu(pdu.build_initiator_pdu(
        pdu.Opcode.DATA_OUT, pdu.FLAG_FINAL, dlen=len(data), lun=pdu.encode_lun(lun), itt=itt,
        words=(r2t.ttt, 0, c.exp_statsn, 0, 0, 0, 0)), data)
    rsp = c.recv_skip_nops()
    assert rsp.opcode == pdu.Opcode.SCSI_RSP
    c.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
    return rsp.b3


@pytest.mark.timeout(120)
def test_delayed_data_out_is_network_time_not_storage(vmblock_server):
    s = vmblock_server
    s.cli("vm", "create", "slow")
    s.cli("vdisk", "create", "slow-disk", "--size", "16M", "--vm", "slow")
    lun = js(s, "vdisk", "show", "slow-disk")["lun"]
    with IscsiClient(s.host, s.port) as c:
        assert c.login(DEFAULT_TARGET, chap=s.chap(),
                       operational={"ImmediateData": "No"}).login_status == 0
        while c.scsi(tur(), lun=lun).status:        # the unit attentions of a new nexus
            pass
        for i in range(WRITES):
            assert slow_write(c, lun, i * 8, bytes([i + 1]) * 4096) == 0
        c.logout()
    vm = js(s, "stats", "--vm", "slow")["vms"][0]
    assert vm["write_ops"] == WRITES and vm["write_bytes"] == WRITES * 4096
    split = vm["latency_split_us"]          # per command, microseconds
    assert split["network"] >= HOLD * 1e6
    assert split["storage"] < split["network"] and split["queue"] < split["network"]
    assert vm["latency_us"]["write"]["avg"] >= HOLD * 1e6
    assert vm["latency_us"]["write"]["max"] >= HOLD * 1e6


@pytest.mark.timeout(120)
@pytest.mark.skipif(not shutil.which("qemu-io"), reason="needs qemu-io")
@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "workers"])
def test_cold_read_is_a_flash_miss_and_the_reread_a_hit(tmp_path, start_server, workers):
    """With workers every command is forwarded to the owner (the cache is there); the
    owner's RESULT carries the class, so the worker's record splits the same way."""
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "cache.size", "50%")
    run_cli(pool, "config", "set", "server.workers", str(workers))
    s = start_server(pool=pool)
    s.cli("vm", "create", "cold")
    s.cli("vdisk", "create", "cold-disk", "--size", "16M", "--vm", "cold")
    url = js(s, "vdisk", "show", "cold-disk")["url"]
    blocks = 16                     # one 64 KiB cache block each
    clients.qemu_io(url, *[f"write -P 0x33 {i * 65536} 64k" for i in range(blocks)],
                    cache="none")
    clients.qemu_io(url, *[f"read -P 0x33 {i * 65536} 4k" for i in range(blocks)], cache="none")
    vm = js(s, "stats", "--vm", "cold")["vms"][0]
    assert vm["flash_miss_ops"] == blocks and vm["flash_ops"] == 0
    assert vm["latency_split_us"]["flash_miss"] > 0 and vm["flash_hit_ratio"] == 0
    clients.qemu_io(url, *[f"read -P 0x33 {i * 65536} 4k" for i in range(blocks)], cache="none")
    vm = js(s, "stats", "--vm", "cold")["vms"][0]
    assert vm["flash_miss_ops"] == blocks and vm["flash_ops"] == blocks
    assert vm["flash_hit_ratio"] == 0.5 and vm["latency_split_us"]["flash"] > 0
    group = js(s, "stats", "--group", "default")["groups"][0]
    assert group["flash_ops"] == blocks and group["cached_bytes"] > 0
    assert vm["cached_bytes"] == blocks * 65536 and vm["promotions"] == blocks


@pytest.mark.timeout(120)
@pytest.mark.skipif(not shutil.which("qemu-io"), reason="needs qemu-io")
@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "workers"])
def test_a_reads_wait_for_an_executor_thread_is_queue(tmp_path, start_server, workers):
    """Reads larger than the SCSI core serves on the loop go to an executor thread; the wait
    for the thread is ``queue`` (``ScsiTask.t_io``), also when a worker forwarded them to the
    owner (the flash cache on: every command is forwarded; its RESULT carries the stamp)."""
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "cache.size", "50%" if workers else "0")
    run_cli(pool, "config", "set", "server.workers", str(workers))
    s = start_server(pool=pool)
    s.cli("vm", "create", "big")
    s.cli("vdisk", "create", "big-disk", "--size", "16M", "--vm", "big")
    url = js(s, "vdisk", "show", "big-disk")["url"]
    # 64 KiB writes: served on the loop (no executor), so the queue starts at 0
    clients.qemu_io(url, *[f"write -P 0x5a {i << 16} 64k" for i in range(128)], cache="none")
    before = js(s, "stats", "--vm", "big")["vms"][0]
    clients.qemu_io(url, *[f"read -P 0x5a {i << 20} 1M" for i in range(8)], cache="none")
    vm = js(s, "stats", "--vm", "big")["vms"][0]
    assert vm["read_ops"] - before["read_ops"] == 8
    assert vm["latency_split_us"]["queue"] > 0      # no write waited: the reads' threads
    assert before["latency_split_us"]["queue"] == 0
