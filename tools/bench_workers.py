#!/usr/bin/env python3
"""The cost (or gain) of worker processes: the same workloads against ``server.workers`` 0, N, ...

usage: tools/bench_workers.py [--workers 2[,1...]] [--cache SIZE] [--rounds 3] [--sessions 8]
                              [--only NAME]

One server per worker count on its own scratch pool (the README's default configuration, plus
``server.workers`` and, with ``--cache``, ``cache.size``: ``--cache 0`` is the workers' fast
path), each with one 1 GiB thin vdisk written whole first (1 MiB writes, so reads hit mapped
data and writes overwrite in place). Then, alternating the servers workload by workload, round
by round: qemu-img bench 4K QD1 and QD32 sequential read and write (one session), and N
sessions at once (``--sessions`` qemu-img bench processes of 4K QD8 reads, then writes: the
aggregate IOPS). Prints the median IOPS of each server, each one's ratio to workers=0, and
where the servers' CPU time went: the owner's and the workers' seconds of CPU per round, which
says whether the work spread over the cores. Numba's compile time is outside every figure (the
servers are started and warmed before the first round).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness import workers_of  # noqa: E402
from support.server import VmblockServer, run_cli  # noqa: E402

LUN_BYTES = 1 << 30
CLK_TCK = 100        # os.sysconf("SC_CLK_TCK") on Linux
WORKLOADS = {
    "read4k_qd1": ["-c", "5000", "-d", "1", "-s", "4096"],
    "write4k_qd1": ["-w", "-c", "5000", "-d", "1", "-s", "4096"],
    "read4k_qd32": ["-c", "40000", "-d", "32", "-s", "4096"],
    "write4k_qd32": ["-w", "-c", "20000", "-d", "32", "-s", "4096"],
}
SESSIONS = {
    "sessions_read4k_qd8": ["-c", "6000", "-d", "8", "-s", "4096"],
    "sessions_write4k_qd8": ["-w", "-c", "4000", "-d", "8", "-s", "4096"],
}


def bench_cmd(url: str, args: list[str]) -> list[str]:
    """qemu-img bench's command line (no host cache) against ``url``."""
    return ["qemu-img", "bench", "-f", "raw", "-t", "none", *args, url]


def iops(url: str, args: list[str]) -> float:
    """Commands per second of one qemu-img bench run."""
    p = subprocess.run(bench_cmd(url, args), capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip() or p.stdout.strip())
    return int(args[args.index("-c") + 1]) / float(
        re.search(r"completed in ([\d.]+) seconds", p.stdout).group(1))


def sessions_iops(url: str, n: int, args: list[str]) -> float:
    """Aggregate commands per second of ``n`` qemu-img bench processes at once; each starts
    at its own offset (``-o``), so writers do not overwrite each other's blocks."""
    start = time.monotonic()
    count = int(args[args.index("-c") + 1])
    procs = [subprocess.Popen(bench_cmd(url, [*args, "-o", str(i * count * 4096)]),
                              stdout=subprocess.DEVNULL) for i in range(n)]
    for p in procs:
        if p.wait(600) != 0:
            raise RuntimeError("qemu-img bench failed")
    return n * count / (time.monotonic() - start)


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start(work: Path, name: str, workers: int, cache: str | None) -> VmblockServer:
    """A server on a new pool under ``work`` with ``workers`` (and ``cache.size`` when not
    None), its bench vdisk written whole."""
    pool = work / name / "pool"
    pool.parent.mkdir(parents=True)
    run_cli(pool, "config", "set", "server.workers", str(workers))
    if cache is not None:
        run_cli(pool, "config", "set", "cache.size", cache)
    server = VmblockServer(pool, ("--insecure",))
    server.cli("vdisk", "create", "bench", "--size", str(LUN_BYTES))
    lun = json.loads(server.cli("vdisk", "show", "bench", "--json").stdout)["lun"]
    server.bench_url = server.url(lun)
    iops(server.bench_url, ["-w", "-c", str(LUN_BYTES >> 20), "-d", "8", "-s", "1048576",
                            "-S", "1048576", "--pattern", "90"])
    return server


def measure(server: VmblockServer, name: str, sessions: int) -> tuple[float, float, float]:
    """(IOPS, owner CPU seconds, workers' CPU seconds) of one run."""
    pids = workers_of(server.proc.pid)
    before = cpu_seconds(server.proc.pid), sum(map(cpu_seconds, pids))
    if name in SESSIONS:
        rate = sessions_iops(server.bench_url, sessions, SESSIONS[name])
    else:
        rate = iops(server.bench_url, WORKLOADS[name])
    after = cpu_seconds(server.proc.pid), sum(map(cpu_seconds, pids))
    return rate, after[0] - before[0], after[1] - before[1]


def main() -> int:
    """Run the rounds and print the table (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default="2", help="worker counts beside 0, comma-separated")
    ap.add_argument("--cache", default=None, help="cache.size of every server (0: none)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    counts = [0, *(int(w) for w in a.workers.split(",") if int(w))]
    names = [n for n in [*WORKLOADS, *SESSIONS] if not a.only or a.only in n]
    with tempfile.TemporaryDirectory(prefix="vmblock-bench-workers-") as tmp:
        work = Path(tmp)
        servers = {}
        try:
            for w in counts:
                servers[w] = start(work, f"workers{w}", w, a.cache)
            results = {(n, w): [] for n in names for w in servers}
            for r in range(a.rounds):
                for name in names:
                    for w, server in servers.items():
                        results[(name, w)].append(measure(server, name, a.sessions))
            print(f"cache.size {a.cache if a.cache is not None else 'default'}, "
                  f"{a.rounds} rounds, medians; CPU s/round as owner+workers")
            print(f"{'workload':<22}" + "".join(f"{f'workers={w}':>12}{'ratio':>7}{'CPU':>11}"
                                                for w in counts))
            for name in names:
                base = statistics.median(x[0] for x in results[(name, 0)])
                row = f"{name:<22}"
                for w in counts:
                    got = results[(name, w)]
                    rate = statistics.median(x[0] for x in got)
                    owner = statistics.median(x[1] for x in got)
                    wcpu = statistics.median(x[2] for x in got)
                    row += f"{rate:>12.0f}{rate / base:>7.2f}{f'{owner:.1f}+{wcpu:.1f}':>11}"
                print(row)
        finally:
            for server in servers.values():
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
