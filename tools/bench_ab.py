#!/usr/bin/env python3
"""Two vmblock trees and tgt in the same minutes: server CPU per command and IOPS.

usage: tools/bench_ab.py [--baseline REV] [--rounds 9] [--workloads qd1,qd32,8sess_qd8]
                         [--no-tgt]

Starts `vmblock serve` of --baseline (default: main) and of this checkout's working tree, each
on a new default pool with a 1 GiB vdisk whose first 256 MiB are written, and tgt (a 1 GiB
file LUN, written the same way), all at once. Then, for --rounds rounds, each workload runs
against each target in turn (the order reversed every other round): qemu-img bench 4 KiB
reads inside the written part, QD1 (15,000 commands), QD32 (60,000) and 8 sessions at QD8
(8 x 12,000, one qemu-img each). Printed per target and workload, medians over the rounds:
the server's CPU microseconds per command from /proc (all and user; for tgt only when this
tool started it) and the IOPS. On a shared machine, figures taken in the same minutes are the
ones to compare; rounds of tools/bench an hour apart are not.

The baseline runs from `git archive REV` in a scratch directory, imported ahead of the
editable install (whose import finder otherwise wins over PYTHONPATH).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO, TGT_PORTAL, TGT_TARGET, start_tgt, start_vmblock, stop

FILL = ["-w", "-c", "256", "-d", "8", "-s", "1M", "-S", "1M", "--pattern", "90"]
WORKLOADS = {       # name -> (qemu-img bench arguments, commands per session, sessions)
    "qd1": (["-d", "1"], 15000, 1),
    "qd32": (["-d", "32"], 60000, 1),
    "8sess_qd8": (["-d", "8"], 12000, 8),
}
SESSION_STRIDE = 24 << 20       # each session reads its own part of the written 256 MiB
def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user + system, user) CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[11]) / tick


def qemu_bench(url: str, args: list[str], count: int, sessions: int) -> float:
    """Run ``sessions`` qemu-img bench processes at once; the wall seconds they took."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(["qemu-img", "bench", "-f", "raw", "-t", "none", *args,
                               "-c", str(count), "-s", "4096", "-o", str(i * SESSION_STRIDE),
                               url], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(sessions)]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(p.stderr.read().decode(errors="replace"))
    return time.monotonic() - t0


def start_tree(tree: Path | None, work: Path, name: str):
    """A server of ``tree`` (None: this checkout) on a new pool; (process, url)."""
    return start_vmblock(work / f"pool-{name}", work / f"{name}.log", "ab", "1G", tree=tree)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default="main")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--no-tgt", action="store_true")
    a = ap.parse_args()
    workloads = {w: WORKLOADS[w] for w in a.workloads.split(",")}
    with tempfile.TemporaryDirectory(prefix="vmblock-bench-ab-") as tmp:
        work = Path(tmp)
        tree = work / "baseline"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", a.baseline],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        targets, started = {}, []
        try:
            for name, src in ((a.baseline, tree), ("this tree", None)):
                proc, url = start_tree(src, work, "base" if src else "this")
                started.append(proc)
                targets[name] = (proc.pid, url)
            if not a.no_tgt:
                tgt = start_tgt(work)
                started.append(tgt)
                targets["tgt"] = (tgt.pid if tgt else None, f"iscsi://{TGT_PORTAL}/{TGT_TARGET}/1")
            for _, url in targets.values():
                subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", *FILL, url],
                               check=True, capture_output=True)
            rows = {(t, w): [] for t in targets for w in workloads}
            for r in range(a.rounds):
                for w, (args, count, sessions) in workloads.items():
                    order = list(targets) if r % 2 == 0 else list(targets)[::-1]
                    for t in order:
                        pid, url = targets[t]
                        c0 = cpu_seconds(pid) if pid else (0.0, 0.0)
                        secs = qemu_bench(url, args, count, sessions)
                        c1 = cpu_seconds(pid) if pid else (0.0, 0.0)
                        n = count * sessions
                        rows[(t, w)].append(((c1[0] - c0[0]) / n * 1e6,
                                             (c1[1] - c0[1]) / n * 1e6, n / secs))
        finally:
            for proc in started:
                stop(proc)
    print(f"median of {a.rounds} rounds; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'target':<12} {'workload':<10} {'CPU us/cmd':>10} {'user':>6} {'IOPS':>8}")
    for w in workloads:
        for t in targets:
            cpu, user, iops = (statistics.median(x[i] for x in rows[(t, w)]) for i in range(3))
            shown = f"{cpu:10.1f} {user:6.1f}" if targets[t][0] else f"{'-':>10} {'-':>6}"
            print(f"{t:<12} {w:<10} {shown} {iops:8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
