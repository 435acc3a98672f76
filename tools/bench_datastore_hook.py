#!/usr/bin/env python3
"""What the datastore write hook costs on the owner's data path (docs/datastores.md).

Every served vdisk's store is a ``WatchedStore``: an ``ExtentStore`` whose write does one range
check after the store's own work. This times in-place 4 KiB overwrites (every AU allocated
first, so no allocation and no commit inside the timed loop) through a plain ``ExtentStore``
and through a ``WatchedStore`` over the same map, in one process, rounds interleaved, and
prints the medians and their ratio. Writes go outside the watched ranges (the common case).

    .venv/bin/python tools/bench_datastore_hook.py [--writes 20000] [--rounds 21]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vmblock.datastore.watch import WatchedStore  # noqa: E402
from vmblock.meta import Pool  # noqa: E402
from vmblock.store.extent import ExtentStore  # noqa: E402

MiB = 1 << 20
SIZE = 64 * MiB
BLOCK = 4096
FIRST = 2 * MiB          # past the label and the first metadata area a PV would have


def main() -> None:
    """Time both stores and print the medians (microseconds per write) and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        pool = Pool(os.path.join(d, "p"), create=True)
        try:
            disk = pool.create_vdisk("d1", SIZE)[0]
            plain = ExtentStore(pool.store, disk.map_id, disk.block_size)
            watched = WatchedStore(pool.store, disk.map_id, disk.block_size, lambda: None)
            buf = memoryview(bytearray(BLOCK))
            for off in range(0, SIZE, pool.store.au):
                plain.write(off, buf)
            pool.store.flush()
            slots = (SIZE - FIRST) // BLOCK
            offsets = [FIRST + (i * 7919 % slots) * BLOCK for i in range(args.writes)]
            times: dict[str, list[float]] = {"ExtentStore": [], "WatchedStore": []}
            for _ in range(args.rounds):
                for name, store in (("ExtentStore", plain), ("WatchedStore", watched)):
                    write = store.write
                    t = time.perf_counter()
                    for off in offsets:
                        write(off, buf)
                    times[name].append((time.perf_counter() - t) / args.writes * 1e6)
        finally:
            pool.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, m in med.items():
        print(f"{name:13} {m:6.2f} us per 4 KiB overwrite (median of {args.rounds})")
    print(f"ratio WatchedStore / ExtentStore: {med['WatchedStore'] / med['ExtentStore']:.3f}")


if __name__ == "__main__":
    main()
