#!/usr/bin/env python3
"""Cache benchmarks for docs/benchmarks.md: vmblock's grouped S3-FIFO vs libcachesim, one run.

1. Miss ratio and replay throughput on the CloudPhysics trace (4 KiB blocks) and on a zipf(1.0)
   trace of 10 M requests over 1 M blocks, at 1% and 10% of the footprint: vmblock vs
   libcachesim S3FIFO, LRU, ARC, Sieve. Repeats are interleaved; medians are reported. Timed:
   vmblock's ``access`` call over the whole block stream (JIT warm-up and trace loading
   excluded), libcachesim's ``process_trace`` over the same stream in an oracleGeneral file.
2. Isolation: VM A (zipf working set, high-priority group) shares the cache with VM B (sequential
   scan over 10x the cache at 32 blocks per A request, low-priority group). A's hit ratio alone,
   with groups, in one shared S3-FIFO without groups, and in one shared LRU (libcachesim,
   request by request, to count A's hits).

    .venv/bin/python tools/bench_cache.py [--repeats 5] [--quick] [--json out.json]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import libcachesim  # noqa: E402
import numpy as np  # noqa: E402

from vmblock.cache.groups import GroupSpec  # noqa: E402
from vmblock.cache.replay import libcachesim_run, load, replay  # noqa: E402
from vmblock.cache.trace import write_oracle  # noqa: E402

TRACES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "traces")
ALGOS = ("S3FIFO", "LRU", "ARC", "Sieve")


def machine() -> str:
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import numba
    return (f"{cpu}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
            f"numba {numba.__version__}, numpy {np.__version__}, "
            f"libcachesim {getattr(libcachesim, '__version__', '?')}")


def throughput(label, wl, fractions, repeats, block_size=4096):
    rows = []
    footprint = wl.footprint
    fd, path = tempfile.mkstemp(suffix=".oracleGeneral.bin")
    os.close(fd)
    try:
        write_oracle(path, wl.combined_ids(), block_size)
        n = wl.keys.shape[0]
        for frac in fractions:
            nslots = max(1, int(frac * footprint))
            res = {"vmblock": []} | {a: [] for a in ALGOS}
            for _ in range(repeats):
                out = replay(wl, nslots, block_size, [GroupSpec("default")], [0])
                res["vmblock"].append((out["miss_ratio"], out["seconds"]))
                for a in ALGOS:
                    res[a].append(libcachesim_run(libcachesim, path, a, nslots, block_size))
            row = {"trace": label, "fraction": frac, "cache_blocks": nslots, "requests": n,
                   "footprint_blocks": footprint}
            for k, v in res.items():
                row[k] = {"miss_ratio": v[0][0],
                          "requests_per_second": n / statistics.median(s for _, s in v),
                          "seconds": [s for _, s in v]}
            rows.append(row)
            print(f"{label} {frac:.0%}: " + ", ".join(
                f"{k} {row[k]['miss_ratio']:.4f} {row[k]['requests_per_second'] / 1e6:.2f}M/s"
                for k in res), flush=True)
    finally:
        os.unlink(path)
    return rows


def shared_lru_hits(wl, nslots, block_size):
    """Per-vdisk hit ratio in one libcachesim LRU (request by request, to attribute hits)."""
    import libcachesim as lcs
    cache = lcs.LRU(nslots * block_size)
    req = lcs.Request()
    req.obj_size = block_size
    ids = wl.combined_ids().tolist()
    vds = wl.vdisk.tolist()
    hits = [0] * len(wl.names)
    total = [0] * len(wl.names)
    for oid, v in zip(ids, vds):
        req.obj_id = oid
        total[v] += 1
        if cache.get(req):
            hits[v] += 1
    return {name: hits[i] / total[i] for i, name in enumerate(wl.names)}


def isolation(nslots, a_blocks, requests, scan_rate, block_size=4096):
    a_spec = f"zipf:alpha=1.0,blocks={a_blocks},requests={requests},seed=7"
    b_spec = f"scan:blocks={10 * nslots},requests={requests * scan_rate},rate={scan_rate}"
    alone = load([a_spec], ["A"], block_size, None)
    both = load([a_spec, b_spec], ["A", "B"], block_size, None)
    groups = [GroupSpec("gold", priority=10, min=0.5, max=1.0),
              GroupSpec("bulk", priority=0, min=0.05, max=1.0)]
    r_alone = replay(alone, nslots, block_size, [GroupSpec("default")], [0])
    r_groups = replay(both, nslots, block_size, groups, [0, 1])
    r_flat = replay(both, nslots, block_size, [GroupSpec("default")], [0, 0])
    lru_alone = shared_lru_hits(alone, nslots, block_size)["A"]
    lru = shared_lru_hits(both, nslots, block_size)
    out = {
        "cache_blocks": nslots, "a": a_spec, "b": b_spec,
        "groups": "gold:priority=10,min=50%,max=100% (A), bulk:priority=0,min=5%,max=100% (B)",
        "A_alone_s3fifo": r_alone["vdisks"]["A"]["hit_ratio"],
        "A_groups": r_groups["vdisks"]["A"]["hit_ratio"],
        "B_groups": r_groups["vdisks"]["B"]["hit_ratio"],
        "A_shared_s3fifo_no_groups": r_flat["vdisks"]["A"]["hit_ratio"],
        "A_alone_lru": lru_alone,
        "A_shared_lru": lru["A"],
        "B_cached_blocks_groups": r_groups["groups"]["bulk"]["cached_blocks"],
    }
    print(json.dumps(out, indent=1), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smaller zipf trace (1 M requests)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    print(machine(), flush=True)
    results = {"machine": machine(), "repeats": args.repeats, "throughput": []}
    cp = load([os.path.join(TRACES, "cloudPhysicsIO.csv")], ["cp"], 4096, None)
    results["throughput"] += throughput("CloudPhysics (4 KiB blocks)", cp, (0.01, 0.1),
                                        args.repeats)
    r = 1_000_000 if args.quick else 10_000_000
    zipf = load([f"zipf:alpha=1.0,blocks=1000000,requests={r},seed=1"], ["z"], 4096, None)
    results["throughput"] += throughput(f"zipf(1.0) {r // 1_000_000} M req over 1 M blocks",
                                        zipf, (0.01, 0.1), args.repeats)
    # B streams 32 blocks per A request (a backup reading 128 KiB while A does 4 KiB I/O)
    results["isolation"] = isolation(nslots=20_000, a_blocks=100_000, requests=250_000,
                                     scan_rate=32)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
