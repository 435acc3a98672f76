#!/usr/bin/env python3
"""Data path with the flash cache on vs off: 4K QD32 reads of a working set that fits in flash.

usage: tools/bench_flash.py [--rounds 3] [--working-set 192M] [--record]

For each of cache off (cache.size 0) and on (cache.size 50% of the 1 GiB flash tier): start
`vmblock serve` on a scratch pool (tools/harness.py) with one thin vdisk, write the working set
(qemu-img bench -w, 4 MiB requests), read it once to warm the cache, then time `rounds` passes of
`qemu-img bench -c N -d 32 -s 4096` (sequential 4 KiB reads over the working set, O_DIRECT in
QEMU). Prints median IOPS per configuration, the ratio, and the cache's read hit ratio of the
timed passes from `vmblock cache show --json` (counted in the data path). Numba compile time is
not in the figures: the server warms its kernels before the ready line. --record appends the
table to docs/benchmarks.md.
"""

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import REPO, machine, start_vmblock, stop

sys.path.insert(0, str(REPO / "tools"))




def bench(url: str, args: list[str]) -> float:
    p = subprocess.run(["qemu-img", "bench", "-f", "raw", "-t", "none", *args, url],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        sys.exit(f"qemu-img bench failed: {p.stderr.strip()}")
    for line in p.stdout.splitlines():
        if line.startswith("Run completed in"):
            return float(line.split()[3])
    sys.exit(f"qemu-img bench: no timing in {p.stdout!r}")


def cache_show(pool: Path) -> dict:
    p = subprocess.run([sys.executable, "-m", "vmblock", "--pool", str(pool), "cache", "show",
                        "--json"], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def drop_capacity(pool: Path) -> None:
    """Evict the capacity tier file from the page cache (the flash file stays): capacity
    reads then go to the disk, as on a real capacity device slower than flash."""
    import os
    os.sync()
    fd = os.open(pool / "capacity", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run(work: Path, name: str, cache_size: str, ws: int, rounds: int,
        cold_capacity: bool = False) -> dict:
    pool = work / name
    subprocess.run([sys.executable, "-m", "vmblock", "--pool", str(pool), "config", "set",
                    "cache.size", cache_size], check=True, capture_output=True)
    server, url = start_vmblock(pool, work / f"{name}.log", "bench", "1G")
    try:
        bench(url, ["-w", "-c", str(ws // (4 << 20)), "-d", "8", "-s", "4M"])
        n = ws // 4096
        read = ["-c", str(n), "-d", "32", "-s", "4096"]
        bench(url, read)                                   # warm-up pass (fills the cache)
        before = cache_show(pool)["totals"]
        times = []
        for _ in range(rounds):
            if cold_capacity:
                drop_capacity(pool)
            times.append(bench(url, read))
        after = cache_show(pool)["totals"]
        wtimes = [bench(url, ["-w"] + read) for _ in range(rounds)]   # 4K writes, QD32
        wafter = cache_show(pool)["totals"]
    finally:
        stop(server)
    hits = after["read_hits"] - before["read_hits"]
    reads = hits + after["read_misses"] - before["read_misses"]
    return {"iops": [n / t for t in times], "hit_ratio": hits / reads if reads else None,
            "reads": reads, "wiops": [n / t for t in wtimes],
            "write_hits": wafter["write_hits"] - after["write_hits"]}


def fill_costs(work: Path, n: int = 20000, repeats: int = 5) -> str:
    """Per admitted 4 KiB miss, in process on page-cache files: no fill, a valid-mask fill
    (4 KiB read + 4 KiB write) and the whole-block fill the cache does (64 KiB read, 4 KiB
    copy, 64 KiB write). Median of ``repeats`` loops over ``n`` random blocks."""
    import os
    import random
    cap = os.open(work / "cap", os.O_RDWR | os.O_CREAT, 0o600)
    fl = os.open(work / "flash", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(cap, b"x" * (64 << 20), 0)
        os.pwrite(fl, b"y" * (64 << 20), 0)
        m4, m64 = memoryview(bytearray(4096)), memoryview(bytearray(65536))
        offs = [random.randrange(1024) * 65536 for _ in range(n)]

        def none(o):
            os.preadv(cap, [m4], o)

        def mask(o):
            os.preadv(cap, [m4], o)
            os.pwrite(fl, m4, o)

        def whole(o):
            os.preadv(cap, [m64], o)
            m4[:] = m64[:4096]
            os.pwrite(fl, m64, o)

        rows = []
        for name, fn in (("no fill (cache off): pread 4K", none),
                         ("valid mask: pread 4K + pwrite 4K", mask),
                         ("whole block: pread 64K + copy 4K + pwrite 64K", whole)):
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                for o in offs:
                    fn(o)
                times.append((time.perf_counter() - t) / n * 1e6)
            rows.append(f"{name:<48} {statistics.median(times):6.2f} us per miss")
        return "\n".join(rows)
    finally:
        os.close(cap)
        os.close(fl)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--working-set", default="192M")
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--cold-capacity", action="store_true",
                    help="Drop the capacity file from the page cache before each timed pass.")
    ap.add_argument("--fill", action="store_true",
                    help="Only measure the partial-block fill alternatives in process.")
    a = ap.parse_args()
    if a.fill:
        with tempfile.TemporaryDirectory(prefix="vmblock-bench-fill-") as tmp:
            table = fill_costs(Path(tmp))
        print(table)
        if a.record:
            when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
            with open(REPO / "docs" / "benchmarks.md", "a") as f:
                f.write(f"\n### Flash cache: partial-block fill, {when}\n\nMachine: "
                        f"{machine()}. `tools/bench_flash.py --fill` (20,000 random 64 KiB "
                        f"blocks of 64 MiB page-cache files, median of 5).\n\n```\n"
                        f"{table}\n```\n")
        return 0
    ws = int(a.working_set.rstrip("M")) << 20
    with tempfile.TemporaryDirectory(prefix="vmblock-bench-flash-") as tmp:
        work = Path(tmp)
        off = run(work, "off", "0", ws, a.rounds, a.cold_capacity)
        on = run(work, "on", "50%", ws, a.rounds, a.cold_capacity)
    m_off, m_on = statistics.median(off["iops"]), statistics.median(on["iops"])
    cold = (" capacity file dropped from the page cache before each pass;"
            if a.cold_capacity else " both tier files in the page cache;")
    table = (f"workload:{cold} qemu-img bench 4 KiB reads, QD32, sequential over a "
             f"{ws >> 20} MiB working set (written first, one warm-up pass), "
             f"{a.rounds} timed passes\n"
             f"cache off: median {m_off:8.0f} IOPS  (passes: "
             f"{', '.join(f'{x:.0f}' for x in off['iops'])})\n"
             f"cache on : median {m_on:8.0f} IOPS  (passes: "
             f"{', '.join(f'{x:.0f}' for x in on['iops'])}), read hit ratio "
             f"{on['hit_ratio']:.4f} over {on['reads']} reads (cache show)\n"
             f"on/off   : {m_on / m_off:.2f}\n"
             f"then 4 KiB writes, QD32, over the same (cached) working set, {a.rounds} passes:\n"
             f"cache off: median {statistics.median(off['wiops']):8.0f} IOPS\n"
             f"cache on : median {statistics.median(on['wiops']):8.0f} IOPS, "
             f"{on['write_hits']} write hits (each updates the flash copy: write-through)\n"
             f"on/off   : {statistics.median(on['wiops']) / statistics.median(off['wiops']):.2f}")
    print(table)
    if a.record:
        when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        with open(REPO / "docs" / "benchmarks.md", "a") as f:
            f.write(f"\n### Flash cache in the data path, on vs off, {when}\n\n"
                    f"Machine: {machine()}. `tools/bench_flash.py --rounds {a.rounds} "
                    f"--working-set {a.working_set}"
                    f"{' --cold-capacity' if a.cold_capacity else ''}`.\n\n```\n{table}\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
