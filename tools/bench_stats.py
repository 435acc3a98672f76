#!/usr/bin/env python3
"""The cost of per-VM statistics: 4K QD32 reads and writes with ``stats.enabled`` Yes and No.

usage: tools/bench_stats.py [--rounds 5] [--blocks 2] [--workers 0] [--count 20000]
                            [--fabric-commands 100000] [--fabric-only | --live-only]
                            [--null]

First the fabric alone (tools/bench_fabric.py's harness: a logged-in ConnectionMachine and a
RAM LUN, no sockets), stats on and off: the CPU the accounting adds per command, precisely;
and stats on over an LU split by range (an LVM datastore's sub-vdisks): what a command on such
an LU pays more (an LU without a split pays nothing for the feature). Then the Python
bytecodes a command runs with stats on and off, by function (``sys.settrace`` counting
opcodes): the one figure here that no neighbour on the machine moves.

Two servers on their own scratch pools, the same configuration but ``stats.enabled`` (and
``server.workers`` when given), each with one 1 GiB thin vdisk written whole first (1 MiB
writes, so reads hit mapped data and writes overwrite in place). Two servers are not alike even
with the same settings: with statistics off on both, the one set up first ran 0.958x the
other's 4K QD32 write IOPS (2026-11-30, an A/A run; it was always the "on" one here before),
and one server process against the next, restarted on the same pool, moves single figures by as
much as a quarter on this machine. So the rounds run in ``--blocks`` blocks: each starts both
servers (pool A first), pool A counting in even blocks and B in odd ones, runs its share of the
rounds and stops them. What belongs to one setup (its pool's files, its place in the start
order) lands on each side equally often, and what belongs to one process is one block's among
many. Within a block the runs alternate workload by workload, round by round, and which server
goes first alternates too: qemu-img bench 4K QD32 read and write (one session, ``--count``
commands). A block's figure is paired: the median of its rounds' on / off, the two runs of a
round back to back, so a slow drift of the machine cancels. The figure issue 11 asks about
(>= 0.97) is the median over blocks; the medians of the blocks where A and where B counts are
printed too (their quotient is the setups' own difference). CPU is the median time the server's
processes spent per command, whose ratio off / on asks the same question of the CPU alone. The
statistics sampler runs at its default interval in the "on" server throughout. Numba's compile
time is outside every figure (every server is started and warmed before its block's rounds).
``--null`` runs the same with statistics off on both sides, labels unchanged: the figures the
method gives when nothing differs.
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


def start(pool: Path, enabled: bool, workers: int) -> VmblockServer:
    """A server on ``pool`` with statistics on or off; a new pool gets its bench vdisk,
    written whole."""
    new = not pool.exists()
    pool.parent.mkdir(parents=True, exist_ok=True)
    run_cli(pool, "config", "set", "stats.enabled", "Yes" if enabled else "No")
    run_cli(pool, "config", "set", "server.workers", str(workers))
    server = VmblockServer(pool, ("--insecure",))
    if new:
        server.cli("vdisk", "create", "bench", "--size", str(LUN_BYTES))
    lun = json.loads(server.cli("vdisk", "show", "bench", "--json").stdout)["lun"]
    server.bench_url = server.url(lun)
    if new:
        iops(server.bench_url, ["-w", "-c", str(LUN_BYTES >> 20), "-d", "8", "-s", "1048576",
                                "-S", "1048576", "--pattern", "90"])
    return server


def measure(server: VmblockServer, args: list[str]) -> tuple[float, float]:
    """(IOPS, CPU seconds of the server's processes) of one qemu-img bench run."""
    pids = [server.proc.pid, *workers_of(server.proc.pid)]
    before = sum(map(cpu_seconds, pids))
    rate = iops(server.bench_url, args)
    return rate, sum(map(cpu_seconds, pids)) - before


def report(results: dict, loads: dict, a) -> None:
    """Print each workload's figures over all blocks (module docstring)."""
    print(f"server.workers {a.workers}, {a.rounds} rounds of {a.count} commands in {a.blocks} "
          f"blocks (both servers restarted for each, pool A counting in even blocks, B in odd "
          f"ones); medians; CPU: the server's (owner + workers) CPU microseconds per command")
    print(f"{'workload':<16}{'IOPS on':>9}{'IOPS off':>10}{'ratio':>7}{'blocks':>8}"
          f"{'A on':>7}{'B on':>7}{'CPU us on':>11}{'CPU us off':>11}{'off/on':>8}"
          f"   paired ratio of each block")
    for name in loads:
        rounds = [x for b in range(a.blocks) for x in results[(name, b)]]
        on, off = (statistics.median(x[i][0] for x in rounds) for i in (0, 1))
        c_on, c_off = (statistics.median(x[i][1] for x in rounds) / a.count * 1e6
                       for i in (0, 1))
        paired = [statistics.median(x[0][0] / x[1][0] for x in results[(name, b)])
                  for b in range(a.blocks) if results[(name, b)]]
        sides = [statistics.median(paired[side::2]) if paired[side::2] else float("nan")
                 for side in (0, 1)]
        print(f"{name:<16}{on:>9.0f}{off:>10.0f}{on / off:>7.3f}{statistics.median(paired):>8.3f}"
              f"{sides[0]:>7.3f}{sides[1]:>7.3f}{c_on:>11.1f}{c_off:>11.1f}{c_off / c_on:>8.3f}"
              f"   {' '.join(f'{p:.3f}' for p in paired)}")


def main() -> int:
    """Run the rounds and print the table (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--blocks", type=int, default=2,
                    help="server restarts, the counting pool alternating (module docstring)")
    ap.add_argument("--fabric-commands", type=int, default=100_000)
    ap.add_argument("--fabric-only", action="store_true", help="skip the qemu-img part")
    ap.add_argument("--live-only", action="store_true", help="only the qemu-img part")
    ap.add_argument("--null", action="store_true",
                    help="statistics off on both sides: what the method shows for no change")
    a = ap.parse_args()
    if a.blocks < 1 or a.rounds < a.blocks:
        ap.error("--blocks must be at least 1 and at most --rounds")
    if not a.live_only:
        fabric(a.fabric_commands, a.rounds)
        opcodes()
    if a.fabric_only:
        return 0
    loads = workloads(a.count)
    # results[(workload, block)]: [(on (IOPS, CPU s), off (IOPS, CPU s))] a round
    results = {(n, b): [] for n in loads for b in range(a.blocks)}
    with tempfile.TemporaryDirectory(prefix="vmblock-bench-stats-") as tmp:
        pools = (Path(tmp) / "a" / "pool", Path(tmp) / "b" / "pool")
        for block in range(a.blocks):
            counting = pools[block % 2]     # A counts in even blocks, B in odd ones
            servers = {}
            try:
                for pool in pools:          # always A first (module docstring)
                    servers[pool == counting] = start(pool, pool == counting and not a.null,
                                                      a.workers)
                # its share of the rounds: every --blocks-th, from its own number
                for i, _ in enumerate(range(block, a.rounds, a.blocks)):
                    for name, args in loads.items():
                        # who goes first alternates round by round, and from one pair of
                        # blocks to the next: neither side always follows the other
                        first = (i + block // 2) % 2 == 0
                        got = {e: measure(servers[e], args) for e in (first, not first)}
                        results[(name, block)].append((got[True], got[False]))
            finally:
                for server in servers.values():
                    server.stop()
    report(results, loads, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
