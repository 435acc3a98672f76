#!/usr/bin/env python3
"""The Python cost of one 4 KiB command through the fabric and the SCSI core, without sockets.

usage: tools/bench_fabric.py [--commands 200000] [--batch 32] [--repeat 5]

One ``ConnectionMachine`` logged in (tests/support's initiator machine), a LUN on a RAM store
(a bytearray: the store's own cost is left out, tools/profile_datapath.py has it), and batches
of --batch READ(10) or WRITE(10) commands (4 KiB, immediate data) handed over as one receive
buffer, as at QD32 over TCP; the answers are written into a list and dropped. Printed: process
CPU microseconds per command, the median of --repeat runs, after a warm-up run; the garbage
collector as the server sets it (``collector.settle_gc``).
"""

import argparse
import statistics
import sys
import time

from harness import REPO

sys.path.insert(0, str(REPO / "tests"))

from support.initiator_machine import InitiatorMachine  # noqa: E402
from support.iscsi_client import read10, write10  # noqa: E402
from vmblock.iscsi.machine import ConnectionMachine  # noqa: E402
from vmblock.iscsi.portal import IscsiConfig, IscsiService, TargetEntry  # noqa: E402
from vmblock.scsi.lu import LogicalUnit  # noqa: E402
from vmblock.scsi.target import ScsiTarget  # noqa: E402
from vmblock.collector import settle_gc  # noqa: E402
from vmblock.store.backend import BackingStore  # noqa: E402

TARGET = "iqn.2026-11.io.vmblock:fabric-bench"
BLOCK = 512
IO = 4096
LUN_BYTES = 64 << 20
OPERATIONAL = {"HeaderDigest": "None", "DataDigest": "None", "InitialR2T": "No",
               "ImmediateData": "Yes", "MaxRecvDataSegmentLength": "262144",
               "FirstBurstLength": "262144", "MaxBurstLength": "1048576"}


class RamStore(BackingStore):
    """A LUN's bytes in a bytearray: reads and writes are one slice copy."""

    abilities = frozenset()
    unmap_granularity = 0

    def __init__(self, size: int):
        self.block_size = BLOCK
        self.data = bytearray(size)

    @property
    def size_bytes(self) -> int:
        """The LUN's size."""
        return len(self.data)

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Copy out."""
        buf[:] = self.data[offset:offset + len(buf)]

    def write(self, offset: int, data: memoryview) -> None:
        """Copy in."""
        self.data[offset:offset + len(data)] = data

    def flush(self) -> None:
        """Nothing to make durable."""

    def close(self) -> None:
        """Nothing to close."""


class Io:
    """The ``ConnectionIo`` of the machine: answers collected, no SCSI work left pending."""

    def __init__(self):
        self.out = []

    def write(self, buffers: list) -> None:
        """Keep the answers (the login's are read back; the benchmark's are dropped)."""
        self.out.append(b"".join(buffers))

    def close(self, abort: bool) -> None:
        """The benchmark never closes."""

    def run(self, st, work) -> None:
        """4 KiB I/O runs inline; nothing ends up here."""
        raise RuntimeError("a 4 KiB command went to the executor")

    def set_timer(self, when) -> None:
        """No timers."""


def logged_in() -> tuple[ConnectionMachine, Io, InitiatorMachine]:
    """A machine in full feature phase with LUN 0 and its power-on UNIT ATTENTION taken."""
    scsi = ScsiTarget(TARGET)
    scsi.add_lun(0, LogicalUnit(RamStore(LUN_BYTES), name="bench", serial="0123456789abcdef",
                                naa=0x6001405A0B1C2D3E))
    svc = IscsiService({TARGET: TargetEntry(TARGET, scsi, chap=None)}, IscsiConfig())
    svc.budget.call_soon = lambda callback: None
    io = Io()
    machine = ConnectionMachine(svc, io, ("192.0.2.1", 40000), ("192.0.2.10", 3260))
    assert svc.admit(machine)
    machine.start(0.0)
    ini = InitiatorMachine()
    first = {"InitiatorName": "iqn.2026-11.io.vmblock:bench-initiator", "SessionType": "Normal",
             "AuthMethod": "None", "TargetName": TARGET}
    machine.receive_data(ini.login(first, 0, 1), 0.0)
    machine.receive_data(ini.login(OPERATIONAL, 1, 3), 0.0)
    ini.receive_data(b"".join(io.out))
    [rsp] = [r for r in ini.pdus() if r.opcode == 0x23][-1:]
    assert rsp.login_status == 0, rsp.login_status
    ini.tsih = rsp.lun & 0xFFFF
    machine.receive_data(ini.command(bytes(6)), 0.0)      # TEST UNIT READY: takes the UA
    io.out.clear()
    return machine, io, ini


def batches(ini: InitiatorMachine, write: bool, commands: int, batch: int) -> list[bytes]:
    """Receive buffers of ``batch`` commands each, sequential 4 KiB over the LUN."""
    blocks = IO // BLOCK
    payload = bytes(range(256)) * (IO // 256)
    out, buf = [], []
    for i in range(commands):
        lba = (i * blocks) % (LUN_BYTES // BLOCK)
        if write:
            buf.append(ini.command(write10(lba, blocks), write=IO, data=payload))
        else:
            buf.append(ini.command(read10(lba, blocks), read=IO))
        if len(buf) == batch:
            out.append(b"".join(buf))
            buf = []
    if buf:
        out.append(b"".join(buf))
    return out


def run(machine: ConnectionMachine, io: Io, bufs: list[bytes]) -> float:
    """Feed the buffers; process CPU seconds."""
    t = time.process_time()
    for b in bufs:
        machine.receive_data(b, 0.0)
        io.out.clear()
    return time.process_time() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--commands", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    settle_gc()
    for name, write in (("read 4K", False), ("write 4K", True)):
        machine, io, ini = logged_in()
        run(machine, io, batches(ini, write, a.commands // 4, a.batch))     # warm-up
        times = []
        for _ in range(a.repeat):
            bufs = batches(ini, write, a.commands, a.batch)
            times.append(run(machine, io, bufs))
        per = sorted(t / a.commands * 1e6 for t in times)
        print(f"{name}, batches of {a.batch}: {statistics.median(per):.2f} us CPU per command "
              f"(runs: {', '.join(f'{x:.2f}' for x in per)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
