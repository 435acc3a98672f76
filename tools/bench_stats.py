#!/usr/bin/env python3
"""The cost of per-VM statistics: 4K QD32 reads and writes with ``stats.enabled`` Yes and No.

usage: tools/bench_stats.py [--rounds 5] [--workers 0] [--count 20000]

Two servers on their own scratch pools, the same configuration but ``stats.enabled`` (and
``server.workers`` when given), each with one 1 GiB thin vdisk written whole first (1 MiB
writes, so reads hit mapped data and writes overwrite in place). Then, alternating the two
servers workload by workload, round by round: qemu-img bench 4K QD32 read and write (one
session, ``--count`` commands). Prints each server's median IOPS and the ratio stats on /
stats off (issue 11 asks >= 0.97). The statistics sampler runs at its default interval in the
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

from bench_workers import LUN_BYTES, iops  # noqa: E402
from support.server import VmblockServer, run_cli  # noqa: E402


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


def main() -> int:
    """Run the rounds and print the table (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--count", type=int, default=20000)
    a = ap.parse_args()
    loads = workloads(a.count)
    with tempfile.TemporaryDirectory(prefix="vmblock-bench-stats-") as tmp:
        work = Path(tmp)
        servers = {}
        try:
            for enabled in (True, False):
                servers[enabled] = start(work, f"stats-{enabled}", enabled, a.workers)
            results = {(n, e): [] for n in loads for e in servers}
            for _ in range(a.rounds):
                for name, args in loads.items():
                    for enabled, server in servers.items():
                        results[(name, enabled)].append(iops(server.bench_url, args))
            print(f"server.workers {a.workers}, {a.rounds} rounds of {a.count} commands, "
                  f"median IOPS")
            print(f"{'workload':<16}{'stats on':>10}{'stats off':>11}{'ratio':>8}   rounds (on/off)")
            for name in loads:
                on = statistics.median(results[(name, True)])
                off = statistics.median(results[(name, False)])
                runs = " ".join(f"{x:.0f}/{y:.0f}" for x, y in zip(results[(name, True)],
                                                                    results[(name, False)]))
                print(f"{name:<16}{on:>10.0f}{off:>11.0f}{on / off:>8.3f}   {runs}")
        finally:
            for server in servers.values():
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
