"""Per-VM statistics of the LVs of an LVM2 datastore on one LUN (issues 11 and 13): a VG made
by the real lvm2 tools on a loop device (support.lvm) and copied onto the LUN; qemu-io I/O into
each LV's byte range counts to the LV's sub-vdisk row and its VM in ``stats --json``, the rest
of the LUN to the vdisk and its own VM, an I/O spanning two LVs splits its bytes (its command
counts in the first), and after an LV is added through the LUN (the server re-reads the VG)
new I/O counts to the new LV. One process and two worker processes.

No sleeps for correctness: each phase waits for the ``datastore_changed`` event (polled up to
a deadline); the split is installed in the same loop callback that records it, and every
qemu-io run is a new session, handed to a worker with the LU's rows as they are then."""

from __future__ import annotations

import socket
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.clients import cli_json, qemu_io
from support.iscsi_client import IscsiClient, tur, write10
from support.lvm import (EXTENT, HOST_VM, IO_TIMEOUT, LIVE_MARKS, PVE_SIZE, PVE_V1, PVE_V2, MiB,
                         datastore_on_a_lun, wait_event, write_runs)
from support.server import run_cli

from vmblock import DEFAULT_TARGET
from vmblock.meta import Pool

pytestmark = LIVE_MARKS

KiB = 1024
SIZE = PVE_SIZE
# three LVs (vm-100-disk-0 in two segments) of two VMs: 100 (Proxmox names), web01 (pattern);
# V2: one LV added by a host
V1, V2 = PVE_V1, PVE_V2
OWNER = {"vm-100-disk-0": "100", "vm-100-disk-1": "100", "db-web01": "web01",
         "vm-102-disk-0": "102"}


def lv_ranges(lvs: dict) -> list[tuple[int, int, str]]:
    """(first byte, end byte, LV) sorted: pe_start (1 MiB) + extent * 4 MiB."""
    return sorted((MiB + pe * EXTENT, MiB + (pe + n) * EXTENT, name)
                  for name, segs in lvs.items() for pe, n in segs)


def expect(ios: list[tuple[str, int, int]], lvs: dict) -> dict[str, dict[str, int]]:
    """Per LV (or None: the rest of the LUN), the ops and bytes ``ios`` ((op, offset,
    length), each one command) should count: its command in the range of its first byte,
    its bytes in each range they fall in."""
    ranges = lv_ranges(lvs)

    def owner(off: int) -> tuple[str | None, int]:
        """The LV holding byte ``off`` (None: none) and where that run ends."""
        nxt = SIZE
        for lo, hi, name in ranges:
            if lo <= off < hi:
                return name, hi
            if lo > off:
                nxt = min(nxt, lo)
        return None, nxt

    out: dict = {}
    for op, off, n in ios:
        first = True
        while n:
            name, end = owner(off)
            part = min(n, end - off)
            row = out.setdefault(name, {"read_ops": 0, "write_ops": 0, "read_bytes": 0,
                                        "write_bytes": 0})
            row[f"{op}_ops"] += first
            row[f"{op}_bytes"] += part
            first, off, n = False, off + part, n - part
    return out


def run_ios(url: str, ios: list[tuple[str, int, int]]) -> None:
    """Each I/O one SCSI command (64 KiB at most), no cache in between."""
    qemu_io(url, *[f"{op} {'-P 0x3c ' if op == 'write' else ''}{off} {n}"
                   for op, off, n in ios], cache="none", timeout=IO_TIMEOUT)


# 4 KiB aligned, at most 64 KiB each; byte offsets into the LUN
IOS_V1 = (
    [("write", 2 * MiB + i * 64 * KiB, 64 * KiB) for i in range(3)]       # vm-100-disk-0, seg 1
    + [("read", 2 * MiB + i * 4 * KiB, 4 * KiB) for i in range(2)]
    + [("write", 26 * MiB + i * 64 * KiB, 64 * KiB) for i in range(2)]    # vm-100-disk-0, seg 2
    + [("read", 26 * MiB, 4 * KiB)]
    + [("write", 10 * MiB + i * 4 * KiB, 4 * KiB) for i in range(4)]      # vm-100-disk-1
    + [("read", 10 * MiB + i * 8 * KiB, 8 * KiB) for i in range(5)]
    + [("write", 14 * MiB + i * 16 * KiB, 16 * KiB) for i in range(7)]    # db-web01
    + [("read", 14 * MiB + i * 64 * KiB, 64 * KiB) for i in range(2)]
    + [("write", 40 * MiB + i * 4 * KiB, 4 * KiB) for i in range(3)]      # free extents
    + [("read", 40 * MiB, 4 * KiB)]
    + [("write", 13 * MiB - 16 * KiB, 64 * KiB)]    # vm-100-disk-1 | db-web01: VMs 100, web01
    + [("read", 9 * MiB - 4 * KiB, 8 * KiB)]        # vm-100-disk-0 | vm-100-disk-1
)
IOS_V2 = ([("write", 37 * MiB + i * 32 * KiB, 32 * KiB) for i in range(5)]   # vm-102-disk-0
          + [("read", 37 * MiB, 4 * KiB)]
          + [("write", 41 * MiB - 8 * KiB, 16 * KiB)])   # vm-102-disk-0 | free: 8 KiB each
OLD_SESSION_IO = ("write", 39 * MiB, 4 * KiB)                # vm-102-disk-0
FIELDS = ("read_ops", "write_ops", "read_bytes", "write_bytes")


def counts(server) -> tuple[dict, dict]:
    """(VM name -> row, vdisk or sub-vdisk name -> row) of ``stats --json``."""
    r = cli_json(server, "stats")
    return {v["name"]: v for v in r["vms"]}, {v["name"]: v for v in r["vdisks"]}


def delta(after: dict, before: dict, name: str) -> dict[str, int]:
    b = before.get(name, dict.fromkeys(FIELDS, 0))
    return {f: after[name][f] - b[f] for f in FIELDS}


def check(server, before: tuple[dict, dict], ios, lvs: dict) -> tuple[dict, dict]:
    """The counts since ``before`` are exactly those ``ios`` make, per sub-vdisk, vdisk, VM."""
    vms, vdisks = after = counts(server)
    want = expect(ios, lvs)
    zero = dict.fromkeys(FIELDS, 0)
    for lv in lvs:
        row = vdisks[f"pve/{lv}"]
        assert (row["vm"], row["vdisk"], row["sub_vdisk"]) == (OWNER[lv], "pve-lun", True)
        assert delta(vdisks, before[1], f"pve/{lv}") == want.get(lv, zero), lv
    assert delta(vdisks, before[1], "pve-lun") == want.get(None, zero)
    assert vdisks["pve-lun"]["vm"] == HOST_VM
    for vm in set(OWNER[lv] for lv in lvs) | {HOST_VM}:
        mine = [want.get(lv, zero) for lv in lvs if OWNER[lv] == vm]
        if vm == HOST_VM:
            mine.append(want.get(None, zero))
        assert delta(vms, before[0], vm) == {f: sum(m[f] for m in mine) for f in FIELDS}, vm
    pool = cli_json(server, "stats")["pool"]
    assert pool["write_ops"] == sum(r["write_ops"] for r in vdisks.values())
    return after


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "workers"])
def test_io_into_each_lv_counts_to_its_vm(start_server, tmp_path, pve_images, workers):
    v1, v2, v1_path = pve_images
    pool = tmp_path / "pool"
    server, url, event = datastore_on_a_lun(start_server, pool, v1_path,
                                            {"server.workers": str(workers)})
    assert event["added"] == sorted(V1)
    before = counts(server)
    assert {n for n, r in before[1].items() if r.get("sub_vdisk")} == {f"pve/{lv}" for lv in V1}

    run_ios(url, IOS_V1)
    after_v1 = check(server, before, IOS_V1, V1)
    vm100 = cli_json(server, "stats", "--vm", "100")
    assert [r["name"] for r in vm100["vdisks"]] == ["pve/vm-100-disk-0", "pve/vm-100-disk-1"]
    assert vm100["vms"][0]["write_ops"] == after_v1[0]["100"]["write_ops"] > 0

    # a host adds an LV (only the sectors lvm2 wrote, through the LUN): re-read, new split;
    # a session logged in before (with workers: in a worker) counts by the new split too
    lun = cli_json(server, "vdisk", "show", "pve-lun")["lun"]
    with IscsiClient(server.host, server.port) as c:
        assert c.login(DEFAULT_TARGET, chap=server.chap()).login_status == 0
        while c.scsi(tur(), lun=lun).status:        # the unit attentions of a new nexus
            pass
        write_runs(url, v1, v2, tmp_path)
        assert wait_event(server, "datastore_changed", 2)["added"] == ["vm-102-disk-0"]
        # (the stats verb's STATS_FLUSH follows the split's LUNS message on each worker's
        # channel: once it answers, every worker counts by the new split)
        before = counts(server)
        run_ios(url, IOS_V2)
        assert c.scsi(write10(OLD_SESSION_IO[1] // 512, OLD_SESSION_IO[2] // 512),
                      write=bytes(OLD_SESSION_IO[2]), lun=lun).status == 0
        c.logout()
    after = check(server, before, IOS_V2 + [OLD_SESSION_IO], V2)
    assert after[0]["102"]["write_bytes"] == 5 * 32 * KiB + 8 * KiB + 4 * KiB

    # the history holds the sub-vdisk's series and the VM's roll-up of it
    server.cli("stats-sample")
    hist = cli_json(server, "stats", "--vm", "102", "--since", "1h")
    sub = {r["name"]: r for r in hist["vdisks"]}["pve/vm-102-disk-0"]
    assert sum(h["write_ops"] for h in sub["history"]) == after[1]["pve/vm-102-disk-0"][
        "write_ops"] == 7
    assert sum(h["write_bytes"] for h in hist["vms"][0]["history"]) == \
        after[0]["102"]["write_bytes"]
    server.stop()
    # what the run stored: the sub-vdisk rows survive it (read without a server)
    vms, vdisks = counts(server)
    assert vdisks["pve/vm-100-disk-0"]["write_bytes"] == \
        after[1]["pve/vm-100-disk-0"]["write_bytes"]
    assert vms["web01"]["write_ops"] == after[0]["web01"]["write_ops"]
    # a restarted server counts on top of them, by the split it installs when serving
    server = start_server(pool=pool)
    again = counts(server)
    for rows, stored in zip(again, (vms, vdisks)):
        assert {n: [r[f] for f in FIELDS] for n, r in rows.items()} == \
            {n: [r[f] for f in FIELDS] for n, r in stored.items()}
    run_ios(server.url(lun), [("write", 14 * MiB, 4 * KiB)])
    check(server, (vms, vdisks), [("write", 14 * MiB, 4 * KiB)], V2)


@pytest.mark.timeout(180)
def test_metrics_and_top_show_sub_vdisks(start_server, tmp_path, pve_images):
    """/metrics has a series per sub-vdisk and its VM's roll-up; top lists the LVM VMs."""
    _, _, v1_path = pve_images
    pool = tmp_path / "pool"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    run_cli(pool, "config", "set", "datastore.lvm.rescan_delay", "0.1")
    server = start_server("--metrics", f"127.0.0.1:{port}", pool=pool)
    server.cli("vdisk", "create", "pve-lun", "--size", "64M")
    url = server.url(cli_json(server, "vdisk", "show", "pve-lun")["lun"])
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(v1_path), url],
                   check=True, timeout=IO_TIMEOUT, capture_output=True)
    wait_event(server, "datastore_changed", 1)
    ios = [("write", 14 * MiB + i * 4 * KiB, 4 * KiB) for i in range(9)]   # db-web01: no VM
    ios += [("write", 10 * MiB + i * 4 * KiB, 4 * KiB) for i in range(4)]  # vm-100-disk-1
    run_ios(url, ios)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text.decode())
               for s in fam.samples}
    assert samples[("vmblock_vdisk_ops_total", (("op", "write"), ("vdisk", "pve/db-web01"),
                                                ("vm", "")))] == 9
    assert samples[("vmblock_vdisk_bytes_total", (("op", "write"),
                                                  ("vdisk", "pve/vm-100-disk-1"),
                                                  ("vm", "100")))] == 4 * 4 * KiB
    assert samples[("vmblock_vm_ops_total", (("op", "write"), ("vm", "100")))] == 4
    server.cli("stats-sample")
    run_ios(url, ios[9:])
    server.cli("stats-sample")
    out = server.cli("top", "--once", "--sort", "iops").stdout
    names = [line.split("│")[1].strip() for line in out.splitlines()
             if line.startswith("│") and line.split("│")[1].strip()]
    assert "100" in names           # found by LVM, its only I/O into its LV
    png = tmp_path / "100.png"
    r = server.cli("report", "--vm", "100", "--since", "1h", "--png", str(png))
    assert "2 intervals plotted" in r.stdout and png.read_bytes()[:4] == b"\x89PNG"
    hist = cli_json(server, "stats", "--vm", "100", "--since", "1h")["vms"][0]["history"]
    assert [h["write_ops"] for h in hist] == [4, 4]

    # the vdisk deleted: its sub-vdisks' rows and stored series go with it
    server.cli("vdisk", "delete", "pve-lun", "--force")
    assert not [r for r in cli_json(server, "stats")["vdisks"] if r.get("sub_vdisk")]
    server.stop()
    pool_db = Pool(str(pool))
    try:
        assert list(pool_db.records("stats/c/sv:")) == []
    finally:
        pool_db.close()
