#!/usr/bin/env python3
"""Where the server's time goes per command: cProfile of `vmblock serve` on written data.

usage: tools/profile_datapath.py [--workload read4k_qd32|write4k_qd32|read4k_qd1]
                                 [--count N] [--cache SIZE] [--top 25] [--out FILE] [--cpu]

Starts the server under cProfile on a new pool (default configuration, or `cache.size SIZE`),
writes the first 256 MiB of a 1 GiB vdisk with 1 MiB writes (so reads are of written data),
runs one qemu-img bench workload (4 KiB, sequential) over them, stops the server and prints
the top entries by own time, with microseconds per command. Profiling slows the server ~3x:
the shares matter, not the absolute figures; the fill's commands are in the profile too
(256 of them, against tens of thousands timed).

--cpu runs the server without the profiler and prints, per workload (all three, --repeat
times each, alternating), the server's CPU time per command from /proc (user and system,
microseconds) and the IOPS: the per-command cost without the profiler's distortion.
"""

import argparse
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import start_vmblock, stop

FILL_BYTES = 256 << 20
WORKLOADS = {       # qemu-img bench arguments, all 4 KiB sequential inside the written part
    "read4k_qd32": ["-d", "32"],
    "write4k_qd32": ["-w", "-d", "32"],
    "read4k_qd1": ["-d", "1"],
}


def qemu_bench(url: str, args: list[str]) -> None:
    """One qemu-img bench run against ``url`` (raw, cache=none)."""
    subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", *args, url], check=True,
                   capture_output=True)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of process ``pid`` and all its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_per_command(url: str, pid: int, count: int, repeat: int) -> None:
    """Print the server's user/system microseconds per command and the IOPS, per workload."""
    results = {w: [] for w in WORKLOADS}
    for _ in range(repeat):
        for name, args in WORKLOADS.items():
            n = count if "qd32" in name else count // 5
            u0, s0 = cpu_seconds(pid)
            out = subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", *args,
                                  "-c", str(n), "-s", "4096", url], check=True,
                                 capture_output=True, text=True).stdout
            u1, s1 = cpu_seconds(pid)
            secs = float(out.split("completed in ")[1].split()[0])
            results[name].append(((u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6, n / secs))
    print(f"{'workload':<14} {'user us/cmd':>11} {'sys us/cmd':>10} {'IOPS':>8}  (medians of "
          f"{repeat})")
    for name, rows in results.items():
        u, s, iops = (statistics.median(r[i] for r in rows) for i in range(3))
        print(f"{name:<14} {u:11.1f} {s:10.1f} {iops:8.0f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--workload", choices=sorted(WORKLOADS), default="read4k_qd32")
    ap.add_argument("--count", type=int, default=40000)
    ap.add_argument("--cache", default="", help="cache.size to set (default: nothing set)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default="", help="keep the raw stats in this file")
    ap.add_argument("--cpu", action="store_true", help="CPU per command, no profiler")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    if a.count * 4096 > FILL_BYTES:
        sys.exit(f"profile: --count at most {FILL_BYTES // 4096} (the written part)")
    with tempfile.TemporaryDirectory(prefix="vmblock-profile-") as tmp:
        work = Path(tmp)
        stats = Path(a.out).resolve() if a.out else work / "serve.prof"
        config = {"cache.size": a.cache} if a.cache else {}
        wrap = [] if a.cpu else ["-m", "cProfile", "-o", str(stats)]
        server, url = start_vmblock(work / "pool", work / "server.log", "prof", "1G", wrap,
                                    config)
        try:
            qemu_bench(url, ["-w", "-c", str(FILL_BYTES >> 20), "-d", "8", "-s", "1M",
                             "-S", "1M", "--pattern", "90"])
            if a.cpu:
                cpu_per_command(url, server.pid, a.count, a.repeat)
                return 0
            qemu_bench(url, [*WORKLOADS[a.workload], "-c", str(a.count), "-s", "4096"])
        finally:
            stop(server)
        st = pstats.Stats(str(stats))
        total = st.total_tt
        print(f"{a.workload}, {a.count} commands, cache.size {a.cache or 'default'}: "
              f"{total:.2f} s profiled in all; top {a.top} by own time")
        print(f"{'own s':>7} {'share':>6} {'us/cmd':>7} {'calls':>9}  function")
        rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)
        for (file, line, name), (_, calls, own, _, _) in rows[:a.top]:
            where = f"{Path(file).name}:{line}" if line else file
            print(f"{own:7.3f} {own / total:6.1%} {own / a.count * 1e6:7.2f} {calls:9d}  "
                  f"{name} ({where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
