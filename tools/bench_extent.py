#!/usr/bin/env python3
"""Extent store benchmarks: map lookups (in process) and the data path against the sparse-file
store it replaced (two real servers, one run).

usage: tools/bench_extent.py [--lookup] [--datapath] [--rounds 5] [--baseline REV] [--record]

--lookup (default when neither is given): a 1 M-extent map (a live two-level map of 1,048,576
  AUs, every one mapped, physical AUs and leaves shuffled), batched lookups of 1 M random vAUs
  through the public wrapper and through the kernel, and single lookups from Python (wrapper,
  kernel, the data path's two ``.item`` loads); median of --rounds repeats, JIT compile done
  before timing.
--datapath: `vmblock serve` of this checkout (extent store) and of --baseline (default: the
  parent of the commit that introduced the extent store, i.e. the sparse-file store), each on a
  scratch pool with a 1 GiB thin vdisk, same machine, same qemu-img bench workloads as
  ../shared/tools/peer_bench.py (4K QD32 read and write), alternating rounds, medians, ratio.
  Both vdisks are first written once over the benchmarked range, so reads hit data (an
  unwritten extent would read as zeros without any I/O and flatter the extent store).
--candidate REV runs the extent-store server from a worktree of REV instead of this checkout
  (so uncommitted changes in the working tree do not leak into the figures).
--record appends the figures, with the machine, to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import REPO, machine, start_vmblock, stop  # noqa: E402

WORKLOADS = [
    ("read4k_qd32_seq", ["-c", "60000", "-d", "32", "-s", "4096"]),
    ("write4k_qd32_seq", ["-w", "-c", "30000", "-d", "32", "-s", "4096"]),
]




def bench_lookup(rounds: int) -> str:
    from vmblock.native import extent as kx
    n = 1 << 20
    rng = np.random.default_rng(7)
    dense = rng.permutation(n).astype(np.uint32)      # 1 M mapped AUs, scattered physically
    slots = kx.n_leaves(n)
    l1, leaves = kx.sample_map(n, slots)
    l1[:] = rng.permutation(slots) + 1                 # leaves in shuffled arena order
    leaves.reshape(-1, kx.LEAF_AUS)[l1] = dense.reshape(slots, kx.LEAF_AUS)
    vaus = rng.integers(0, n, size=n)
    out = np.empty(n, dtype=np.uint32)
    vaus64 = vaus.astype(np.int64)
    kx.lookup_batch(l1, leaves, vaus64, out)         # compile / load from cache first
    kx._lookup_one(l1, leaves, 5)
    assert np.array_equal(out, dense[vaus])

    def rate(fn) -> float:
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return n / statistics.median(times)

    batched_wrapper = rate(lambda: kx.lookup_batch(l1, leaves, vaus64, out))
    batched_kernel = rate(lambda: kx._lookup_batch(l1, leaves, vaus64, out))

    singles = vaus[:100_000].tolist()

    def per_call(fn) -> float:
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            for v in singles:
                fn(v)
            times.append(time.perf_counter() - t)
        return statistics.median(times) / len(singles) * 1e6

    bits, mask = kx.LEAF_BITS, kx.LEAF_MASK
    single_wrapper = per_call(lambda v: kx.lookup(l1, leaves, v))
    single_kernel = per_call(lambda v: kx._lookup_one(l1, leaves, v))
    single_item = per_call(lambda v: leaves.item((l1.item(v >> bits) << bits) | (v & mask)))
    return (f"map: 1,048,576 extents (one per 64 KiB AU, all mapped; two-level, "
            f"{kx.LEAF_AUS}-entry leaves); median of {rounds}\n"
            f"batched lookup, 1 M random vAUs, lookup_batch() wrapper: "
            f"{batched_wrapper / 1e6:8.1f} M lookups/s\n"
            f"batched lookup, 1 M random vAUs, kernel _lookup_batch:   "
            f"{batched_kernel / 1e6:8.1f} M lookups/s\n"
            f"single lookup from Python, lookup() wrapper:  {single_wrapper:6.3f} us\n"
            f"single lookup from Python, kernel _lookup_one: {single_kernel:6.3f} us\n"
            f"single lookup from Python, l1.item + leaves.item (the 4 KiB data path): "
            f"{single_item:6.3f} us")


def baseline_rev(rev: str | None) -> str:
    if rev:
        return rev
    out = subprocess.run(["git", "-C", str(REPO), "log", "--format=%H", "-1", "--grep",
                          "^store: VM-aware extent store replaces the sparse-file store"],
                         capture_output=True, text=True, check=True).stdout.strip()
    if not out:
        sys.exit("bench_extent: cannot find the extent store's first commit; pass --baseline")
    return out + "^"


def qemu_bench(url: str, args: list[str]) -> float:
    p = subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", *args, url],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip() or p.stdout.strip())
    secs = float(re.search(r"completed in ([\d.]+) seconds", p.stdout).group(1))
    return int(args[args.index("-c") + 1]) / secs


def _start_from(tree: Path | None, pool: Path, log: Path):
    """start_vmblock from ``tree`` (a worktree), or this checkout."""
    return start_vmblock(pool, log, "bench", "1G", tree=tree)


def bench_datapath(rounds: int, rev: str, candidate: str | None = None) -> str:
    with tempfile.TemporaryDirectory(prefix="vmblock-bench-extent-") as tmp:
        work = Path(tmp)
        trees = {"baseline": rev, "candidate": candidate}
        made = []
        servers = []
        try:
            for name, r in trees.items():
                if r:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach",
                                    str(work / name), r], check=True, capture_output=True)
                    made.append(work / name)
            base, base_url = _start_from(work / "baseline", work / "pool-sparse",
                                         work / "sparse.log")
            servers.append(base)
            ours, ours_url = _start_from(work / "candidate" if candidate else None,
                                         work / "pool-extent", work / "extent.log")
            servers.append(ours)
            for url in (base_url, ours_url):     # map / allocate the benchmarked range once
                qemu_bench(url, WORKLOADS[1][1])
            lines = [f"{'workload':<18} {'extent IOPS':>12} {'sparse IOPS':>12} {'ratio':>6}"]
            for name, args in WORKLOADS:
                e, s, r = [], [], []
                for _ in range(rounds):
                    a = qemu_bench(ours_url, args)
                    b = qemu_bench(base_url, args)
                    e.append(a)
                    s.append(b)
                    r.append(a / b)
                lines.append(f"{name:<18} {statistics.median(e):>12.0f} "
                             f"{statistics.median(s):>12.0f} {statistics.median(r):>6.2f}")
        finally:
            for srv in servers:
                stop(srv)
            for tree in made:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(tree)], capture_output=True)
    return (f"baseline {rev} (sparse-file store) vs {candidate or 'this checkout'} (extent "
            f"store); median of {rounds} alternating rounds\n" + "\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lookup", action="store_true")
    ap.add_argument("--datapath", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--candidate", default=None)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    if not (a.lookup or a.datapath):
        a.lookup = True
    parts = []
    if a.lookup:
        parts.append(("Extent map lookups (`tools/bench_extent.py --lookup`)",
                      bench_lookup(a.rounds)))
        print(parts[-1][1], flush=True)
    if a.datapath:
        rev = baseline_rev(a.baseline)
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short",
                               a.candidate or "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        parts.append((f"Data path, extent store ({head}) vs sparse-file store "
                      f"(`tools/bench_extent.py --datapath`)",
                      bench_datapath(a.rounds, rev, a.candidate)))
        print(parts[-1][1], flush=True)
    if a.record:
        when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        with open(REPO / "docs" / "benchmarks.md", "a") as f:
            for title, text in parts:
                f.write(f"\n### {title}, {when}\n\nMachine: {machine()}.\n\n```\n{text}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
