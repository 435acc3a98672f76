#!/usr/bin/env python3
"""The cost of per-VM statistics: 4K QD32 reads and writes with ``stats.enabled`` Yes and No.

usage: tools/bench_stats.py [--rounds 5] [--workers 0] [--count 20000]
                            [--fabric-commands 100000] [--fabric-only]

First the fabric alone (tools/bench_fabric.py's harness: a logged-in ConnectionMachine and a
RAM LUN, no sockets), stats on and off: the CPU the accounting adds per command, precisely;
and stats on over an LU split by range (an LVM datastore's sub-vdisks): what a command on such
an LU pays more (an LU without a split pays nothing for the feature). Then the Python
bytecodes a command runs with stats on and off, by function (``sys.settrace`` counting
opcodes): the one figure here that no neighbour on the machine moves.

Two servers on their own scratch pools, the same configuration but ``stats.enabled`` (and
``server.workers`` when given), each with one 1 GiB thin vdisk written whole first (1 MiB
writes, so reads hit mapped data and writes overwrite in place). Then, alternating the two
servers workload by workload, round by round (which one goes first alternates too): qemu-img bench 4K QD32 read and write (one
session, ``--count`` commands). Prints each server's median IOPS and the ratio stats on /
stats off (issue 11 asks >= 0.97): of the medians, and paired (the median of each round's
on / off, the two runs of a round back to back, so a slow drift of the machine cancels),
and the median CPU time the server's processes spent per
command, whose ratio off / on is the same question asked of the CPU alone: on a shared,
loaded machine the IOPS of single runs swing with the neighbours, the CPU per command much
less. The statistics sampler runs at its default interval in the
"on" server throughout. Numba's compile time is outside every figure (both servers are
started and warmed before the first round).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tools"))

import bench_fabric  # noqa: E402
from bench_workers import LUN_BYTES, cpu_seconds, iops  # noqa: E402
from harness import workers_of  # noqa: E402
from support.server import VmblockServer, run_cli  # noqa: E402

from vmblock.collector import settle_gc  # noqa: E402
from vmblock.native import stats as stats_kernels  # noqa: E402
from vmblock.stats.live import LiveStats  # noqa: E402


# the fabric runs: stats on (no split), on with the LU split in three ranges, off
FABRIC_MODES = ("on", "split", "off")


def logged_in(counted: bool):
    """tools/bench_fabric.py's logged-in machine; ``counted``: its LUN 0 counts into the row
    "bench" of a new LiveStats (returned; None when not counted)."""
    machine, io, ini = bench_fabric.logged_in()
    live = None
    if counted:
        live = LiveStats()
        machine.stats = live.recorder
        machine.session.target.scsi.stats_rows[0] = live.lu_rows("bench")
    return machine, io, ini, live


def fabric(commands: int, repeat: int) -> None:
    """The fabric and SCSI core without sockets (tools/bench_fabric.py's harness), stats on,
    on over an LU with a range split (an LVM datastore's: a third of the LU each to the
    vdisk, VM a, VM b) and off, alternately: process CPU microseconds per 4 KiB command,
    medians."""
    settle_gc()
    stats_kernels.warm()
    print(f"fabric without sockets (tools/bench_fabric.py), batches of 32, {commands} commands, "
          f"{repeat} runs each: CPU us per command, medians")
    blocks = bench_fabric.LUN_BYTES // bench_fabric.BLOCK
    for name, write in (("read 4K", False), ("write 4K", True)):
        per = {m: [] for m in FABRIC_MODES}
        machines = {}
        for mode in FABRIC_MODES:
            machine, io, ini, live = logged_in(counted=mode != "off")
            if mode == "split":
                lu_rows = machine.session.target.scsi.stats_rows[0]
                lu_rows.split([0, blocks // 3, 2 * blocks // 3],
                              [lu_rows.row, live.row_of("a"), live.row_of("b")])
            bench_fabric.run(machine, io, bench_fabric.batches(ini, write, commands // 4, 32))
            machines[mode] = (machine, io, ini)
        for r in range(repeat):
            for i in range(len(FABRIC_MODES)):      # who goes first rotates
                mode = FABRIC_MODES[(r + i) % len(FABRIC_MODES)]
                machine, io, ini = machines[mode]
                bufs = bench_fabric.batches(ini, write, commands, 32)
                per[mode].append(bench_fabric.run(machine, io, bufs) / commands * 1e6)
        on, split, off = (statistics.median(per[m]) for m in FABRIC_MODES)
        print(f"  {name:<9} stats on {on:6.2f}  off {off:6.2f}  off/on {off / on:.3f}  "
              f"(+{on - off:.2f} us)   on, LU split in 3 ranges {split:6.2f}  "
              f"on/split {on / split:.3f} (+{split - on:.2f} us)")


def opcodes(commands: int = 320) -> None:
    """Bytecodes per 4 KiB command through the fabric harness, stats on and off, and the
    functions that run more of them with stats on."""
    print(f"bytecodes per command (sys.settrace opcode events, {commands} commands)")
    for name, write in (("read 4K", False), ("write 4K", True)):
        per = {}
        for mode in ("on", "off"):
            machine, io, ini, _ = logged_in(counted=mode == "on")
            bench_fabric.run(machine, io, bench_fabric.batches(ini, write, 10 * commands, 32))
            bufs = bench_fabric.batches(ini, write, commands, 32)
            per[mode] = counted_opcodes(lambda: bench_fabric.run(machine, io, bufs))
        on, off = (sum(per[m].values()) / commands for m in ("on", "off"))
        more = sorted(((per["on"].get(f, 0) - per["off"].get(f, 0)) / commands, f)
                      for f in per["on"].keys() | per["off"].keys())
        print(f"  {name:<9} stats on {on:7.1f}  off {off:7.1f}  (+{on - off:.1f}): "
              + ", ".join(f"{f} {d:+.1f}" for d, f in reversed(more) if abs(d) >= 0.05))


def counted_opcodes(work) -> dict[str, int]:
    """Opcodes each function ran during ``work()``."""
    counts: dict[str, int] = {}

    def trace(frame, event, arg):
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        return local

    def local(frame, event, arg):
        if event == "opcode":
            name = frame.f_code.co_name
            counts[name] = counts.get(name, 0) + 1
        return local

    sys.settrace(trace)
    try:
        work()
    finally:
        sys.settrace(None)
    return counts


def workloads(count: int) -> dict[str, list[str]]:
    """qemu-img bench arguments of the two workloads."""
    return {"read4k_qd32": ["-c", str(count), "-d", "32", "-s", "4096"],
            "write4k_qd32": ["-w", "-c", str(count), "-d", "32", "-s", "4096"]}


def start(work: Path, name: str, enabled: bool, workers: int) -> VmblockServer:
    """A server on a new pool with statistics on or off, its bench vdisk written whole."""
    pool = work / name / "pool"
    pool.parent.mkdir(parents=True)
    run_cli(pool, "config", "set", "stats.enabled", "Yes" if enabled else "No")
    run_cli(pool, "config", "set", "server.workers", str(workers))
    server = VmblockServer(pool, ("--insecure",))
    server.cli("vdisk", "create", "bench", "--size", str(LUN_BYTES))
    lun = json.loads(server.cli("vdisk", "show", "bench", "--json").stdout)["lun"]
    server.bench_url = server.url(lun)
    iops(server.bench_url, ["-w", "-c", str(LUN_BYTES >> 20), "-d", "8", "-s", "1048576",
                            "-S", "1048576", "--pattern", "90"])
    return server


def measure(server: VmblockServer, args: list[str]) -> tuple[float, float]:
    """(IOPS, CPU seconds of the server's processes) of one qemu-img bench run."""
    pids = [server.proc.pid, *workers_of(server.proc.pid)]
    before = sum(map(cpu_seconds, pids))
    rate = iops(server.bench_url, args)
    return rate, sum(map(cpu_seconds, pids)) - before


def main() -> int:
    """Run the rounds and print the table (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--fabric-commands", type=int, default=100_000)
    ap.add_argument("--fabric-only", action="store_true", help="skip the qemu-img part")
    a = ap.parse_args()
    fabric(a.fabric_commands, a.rounds)
    opcodes()
    if a.fabric_only:
        return 0
    loads = workloads(a.count)
    with tempfile.TemporaryDirectory(prefix="vmblock-bench-stats-") as tmp:
        work = Path(tmp)
        servers = {}
        try:
            for enabled in (True, False):
                servers[enabled] = start(work, f"stats-{enabled}", enabled, a.workers)
            results = {(n, e): [] for n in loads for e in servers}
            for r in range(a.rounds):
                for name, args in loads.items():
                    # who goes first alternates: neither side always follows the other
                    for enabled in ((True, False) if r % 2 == 0 else (False, True)):
                        results[(name, enabled)].append(measure(servers[enabled], args))
            print(f"server.workers {a.workers}, {a.rounds} rounds of {a.count} commands, "
                  f"medians; CPU: the server's (owner + workers) CPU microseconds per command")
            print(f"{'workload':<16}{'IOPS on':>9}{'IOPS off':>10}{'ratio':>7}{'paired':>8}"
                  f"{'CPU us on':>11}{'CPU us off':>11}{'off/on':>8}   IOPS rounds (on/off)")
            for name in loads:
                on = statistics.median(x[0] for x in results[(name, True)])
                off = statistics.median(x[0] for x in results[(name, False)])
                c_on = statistics.median(x[1] for x in results[(name, True)]) / a.count * 1e6
                c_off = statistics.median(x[1] for x in results[(name, False)]) / a.count * 1e6
                pairs = list(zip(results[(name, True)], results[(name, False)]))
                paired = statistics.median(x[0] / y[0] for x, y in pairs)
                runs = " ".join(f"{x[0]:.0f}/{y[0]:.0f}" for x, y in pairs)
                print(f"{name:<16}{on:>9.0f}{off:>10.0f}{on / off:>7.3f}{paired:>8.3f}{c_on:>11.1f}"
                      f"{c_off:>11.1f}{c_off / c_on:>8.3f}   {runs}")
        finally:
            for server in servers.values():
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
