"""Per-VM QoS on the LVs of an LVM2 datastore on one LUN (issue 13): ``vm set 100 --max-iops``
for a VM found by LVM holds the commands into VM 100's LVs, and only those: the other VM's LV
and the rest of the LUN (the vdisk's own VM) on the same LU are not held. A VM's wait shows as
the ``queue`` part of its latency split in ``stats --json``, as in tests/e2e/test_qos_live.py;
counts and the presence of the wait are checked, never a rate. After the VG changes through
the LUN (an LV added, the server re-reads it) the new LV's VM's limit holds for it too. One
process and two worker processes (the workers' gates get the split in the QOS message)."""

from __future__ import annotations

import pytest
from support.clients import cli_json, qemu_io
from support.lvm import (EXTENT, HOST_VM, IO_TIMEOUT, LIVE_MARKS, MiB, datastore_on_a_lun,
                         wait_event, write_runs)

pytestmark = LIVE_MARKS

READS = 20          # at 50 IOPS the last waits 0.4 s


def reads_at(url: str, first: int) -> None:
    """READS reads of 4 KiB from byte ``first``, one command at a time, no cache between."""
    qemu_io(url, *[f"read {first + i * 4096} 4k" for i in range(READS)], cache="none",
            timeout=IO_TIMEOUT)


def vm_rows(server) -> dict[str, dict]:
    return {r["name"]: r for r in cli_json(server, "stats")["vms"]}


def queue_added(before: dict, after: dict) -> float:
    """The queue microseconds a VM's commands added between two rows, 0 within the rounding of
    the averages ``stats`` shows (0.1 us per command)."""
    def total(row):
        ops = row["read_ops"] + row["write_ops"]
        return row["latency_split_us"]["queue"] * ops, ops
    (a, n), (b, m) = total(before), total(after)
    return 0.0 if abs(b - a) <= 0.05 * (n + m) else b - a


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [0, 2], ids=["one-process", "workers"])
def test_a_vms_limit_holds_its_lvs_and_nothing_else_on_the_lun(start_server, tmp_path,
                                                               pve_images, workers):
    v1, v2, v1_path = pve_images
    server, url, _ = datastore_on_a_lun(start_server, tmp_path / "pool", v1_path,
                                        {"server.workers": str(workers)})
    assert cli_json(server, "vm", "set", "100", "--max-iops", "50")["qos"] == {"max_iops": 50}

    host = vm_rows(server)[HOST_VM]     # its queue so far: the image's large writes' wait
    reads_at(url, 9 * MiB)                      # vm-100-disk-1: VM 100, held by its limit
    reads_at(url, 13 * MiB)                     # db-web01: VM web01, no QoS
    reads_at(url, 45 * MiB)                     # free extents: the LUN's own VM, no QoS
    rows = vm_rows(server)
    assert rows["100"]["read_ops"] == rows["web01"]["read_ops"] == READS
    assert rows[HOST_VM]["read_ops"] - host["read_ops"] == READS
    assert rows["100"]["latency_split_us"]["queue"] > 0
    assert rows["web01"]["latency_split_us"]["queue"] == 0
    assert queue_added(host, rows[HOST_VM]) == 0

    # a host adds vm-102-disk-0 through the LUN; VM 102 is created by the re-read and limited
    write_runs(url, v1, v2, tmp_path)
    wait_event(server, "datastore_changed", 2)
    server.cli("vm", "set", "102", "--max-iops", "50")
    reads_at(url, MiB + 9 * EXTENT)            # vm-102-disk-0
    reads_at(url, 14 * MiB)                     # db-web01 again
    rows = vm_rows(server)
    assert rows["102"]["read_ops"] == READS and rows["102"]["latency_split_us"]["queue"] > 0
    assert rows["web01"]["read_ops"] == 2 * READS
    assert rows["web01"]["latency_split_us"]["queue"] == 0

    # the limit cleared: VM 100's LV is not held any more
    server.cli("vm", "set", "100", "--max-iops", "none")
    before = rows["100"]["latency_split_us"]["queue"] * rows["100"]["read_ops"]
    reads_at(url, 9 * MiB)
    row = vm_rows(server)["100"]
    assert row["read_ops"] == 2 * READS
    assert row["latency_split_us"]["queue"] * row["read_ops"] == pytest.approx(before, rel=0.05)
