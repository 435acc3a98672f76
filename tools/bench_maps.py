#!/usr/bin/env python3
"""Extent-map scale figures of the store, in process: build, open, memory, snapshot stalls.

usage: tools/bench_maps.py [--aus 16777216] [--snap-aus 1048576] [--vdisks 0] [--dir DIR]

1. A scratch pool whose capacity file holds --aus + --snap-aus AUs (a sparse file); one vdisk
   gets --aus AUs mapped through ``PoolStore.preallocate`` (zeroed by hole punching, mapped
   and committed chunk by chunk), one more gets --snap-aus. Figures: build time.
2. Close and reopen: the time to open the pool and its store (leaves read, refcounts rebuilt,
   live maps loaded), the process's RSS growth, and the maps' bytes per mapped AU (leaf arena
   plus L1s in use, divided by the mapped AUs).
3. While a reader thread reads 4 KiB at random from the big vdisk at QD1 (one AU: the lockless
   path) and another 128 KiB (two AUs: through the store lock), and a probe thread measures
   how long the store lock takes to acquire: a snapshot of the --snap-aus vdisk, a clone of
   it and a live clone; then revert and deleting the snapshot. Figures per operation: its
   time, the longest wait for the lock, and the readers' p99 and max latency.
4. With --vdisks N: N thin 100 GiB vdisks more, then reopen: RSS and open time.

Compile time is kept out: the kernels are warmed first. Results are printed, not recorded.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vmblock.meta import Pool  # noqa: E402
from vmblock.native import extent as extent_kernels  # noqa: E402
from vmblock.store.layout import AU_SIZE  # noqa: E402


def rss() -> int:
    """Resident bytes of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def map_bytes(store) -> tuple[int, int]:
    """(bytes of leaves and L1 entries in use, mapped AUs of live maps)."""
    live = store.live
    l1 = sum(len(a) for a in live.maps.values()) * 4
    return live.leaf_count() * extent_kernels.LEAF_AUS * 4 + l1, sum(live.mapped.values())


class Watch:
    """Reader threads at QD1 and a lock probe, while an operation runs."""

    def __init__(self, pool: Pool, disk: str, aus: int):
        self.store = pool.open_store(pool.vdisk(disk))
        self.lock = pool.store.lock
        self.aus = aus
        self.stop = threading.Event()
        self.lat = {"4k": [], "128k": []}
        self.lock_wait: list[float] = []
        self.threads = [threading.Thread(target=self._read, args=("4k", 4096)),
                        threading.Thread(target=self._read, args=("128k", 2 * AU_SIZE)),
                        threading.Thread(target=self._probe)]

    def _read(self, kind: str, n: int) -> None:
        rng = np.random.default_rng(len(kind))
        buf = memoryview(bytearray(n))
        out = self.lat[kind]
        while not self.stop.is_set():
            off = int(rng.integers(0, self.aus - 2)) * AU_SIZE + (AU_SIZE - n // 2 if n > 4096 else 0)
            t = time.perf_counter()
            self.store.read_into(off, buf)
            out.append(time.perf_counter() - t)

    def _probe(self) -> None:
        while not self.stop.is_set():
            t = time.perf_counter()
            with self.lock:
                pass
            self.lock_wait.append(time.perf_counter() - t)
            time.sleep(0.0005)

    def __enter__(self) -> Watch:
        for t in self.threads:
            t.start()
        time.sleep(0.2)
        for v in self.lat.values():
            v.clear()
        self.lock_wait.clear()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(0.1)
        self.stop.set()
        for t in self.threads:
            t.join()

    def figures(self) -> str:
        """The longest lock wait and each reader's p99 and max latency, one line."""
        parts = [f"lock wait max {max(self.lock_wait, default=0) * 1e3:6.1f} ms"]
        for kind, v in self.lat.items():
            if v:
                parts.append(f"{kind} QD1 p99 {np.percentile(v, 99) * 1e3:5.2f} ms "
                             f"max {max(v) * 1e3:6.1f} ms ({len(v)} reads)")
        return "; ".join(parts)


def locked_part(pool: Pool, disk: str) -> None:
    """Time the parts of a snapshot of ``disk``: what holds the store lock (reading the live
    map's leaves and the reference-count kernel), then what does not (leaf values, batch
    puts, the synced write, here of a throw-away map id that is deleted again)."""
    from rocksdict import WriteBatch

    from vmblock.store.layout import leaf_key, leaf_prefix
    store = pool.store
    live, mid = store.live, pool.vdisk(disk).map_id
    t0 = time.perf_counter()
    with store.lock:
        t1 = time.perf_counter()
        slots, rows = live.leaf_rows(mid)
        flat = rows.reshape(-1)
        extent_kernels.add_refs(store.space.refcount, flat, 1)
        t2 = time.perf_counter()
    values = live.values(rows)
    batch = WriteBatch(raw_mode=True)
    for sl, val in zip(slots.tolist(), values):
        batch.put(leaf_key(0xFFFFFFF0, sl), val.tobytes())
    t3 = time.perf_counter()
    store.committer.db.write(batch)
    t4 = time.perf_counter()
    with store.lock:
        extent_kernels.add_refs(store.space.refcount, flat.copy(), -1)
    undo = WriteBatch(raw_mode=True)
    undo.delete_range(leaf_prefix(0xFFFFFFF0), leaf_prefix(0xFFFFFFF1))
    store.committer.db.write(undo)
    print(f"snapshot of {int(np.count_nonzero(flat != extent_kernels.UNMAPPED))} AUs, parts: "
          f"lock held {1e3 * (t2 - t1):.1f} ms (waited {1e3 * (t1 - t0):.1f} ms); "
          f"{len(slots)} leaf values and puts {1e3 * (t3 - t2):.1f} ms; synced write "
          f"{1e3 * (t4 - t3):.1f} ms (both without the lock)", flush=True)


def timed(what: str, fn, watch: Watch | None = None) -> float:
    """Run ``fn``, print how long it took (and ``watch``'s figures); returns the seconds."""
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    print(f"{what:<44} {dt:7.3f} s" + (f"   {watch.figures()}" if watch else ""), flush=True)
    return dt


def main() -> None:
    """Build, open, measure, print (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aus", type=int, default=1 << 24)
    ap.add_argument("--snap-aus", type=int, default=1 << 20)
    ap.add_argument("--vdisks", type=int, default=0)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    extent_kernels.warm()
    work = Path(tempfile.mkdtemp(prefix="vmblock-bench-maps-", dir=a.dir))
    try:
        path = str(work / "pool")
        p = Pool(path, create=True)
        p.config_set("store.capacity_size", str((a.aus + a.snap_aus + 1024) * AU_SIZE))
        p.config_set("store.flash_size", "64M")
        p.create_vm("big")
        p.create_vdisk("big-d0", a.aus * AU_SIZE, vm="big")
        p.create_vm("src")
        p.create_vdisk("src-d0", a.snap_aus * AU_SIZE, vm="src")
        store = p.store
        timed(f"preallocate {a.aus} AUs", lambda: store.preallocate(
            p.vdisk("big-d0").map_id, 0, a.aus))
        timed(f"preallocate {a.snap_aus} AUs", lambda: store.preallocate(
            p.vdisk("src-d0").map_id, 0, a.snap_aus))
        p.close()

        before = rss()
        t = time.perf_counter()
        p = Pool(path)
        store = p.store
        dt = time.perf_counter() - t
        used, mapped = map_bytes(store)
        print(f"open with {mapped} mapped AUs{'':<14} {dt:7.3f} s   RSS +"
              f"{(rss() - before) / 2**20:.0f} MiB; maps {used / 2**20:.1f} MiB = "
              f"{used / max(mapped, 1):.2f} B per mapped AU", flush=True)

        locked_part(p, "src-d0")
        with Watch(p, "big-d0", a.aus) as w:
            time.sleep(1.0)
        print(f"{'(idle, 1 s)':<44} {'':>9} {w.figures()}")
        with Watch(p, "big-d0", a.aus) as w:
            timed(f"snapshot of {a.snap_aus} AUs", lambda: p.snapshot_vm("src", "s1"), w)
        with Watch(p, "big-d0", a.aus) as w:
            timed("clone of that snapshot", lambda: p.clone_vm("src", "c1", snapshot="s1"), w)
        with Watch(p, "big-d0", a.aus) as w:
            timed("live clone", lambda: p.clone_vm("src", "c2", live=True), w)
        with Watch(p, "big-d0", a.aus) as w:
            timed("revert to the snapshot", lambda: p.revert(p.snapshot("s1", vm="src")), w)
        with Watch(p, "big-d0", a.aus) as w:
            timed("delete the snapshot", lambda: p.delete_snapshot("s1", vm="src"), w)
        with Watch(p, "big-d0", a.aus) as w:
            timed("delete a clone", lambda: p.delete_vm("c2", purge=True), w)
        p.close()

        if a.vdisks:
            p = Pool(path)
            t = time.perf_counter()
            for i in range(a.vdisks):
                if i % 4 == 0:
                    p.create_vm(f"vm{i // 4}")
                p.create_vdisk(f"vm{i // 4}-d{i % 4}", 100 << 30, vm=f"vm{i // 4}")
            print(f"created {a.vdisks} thin 100 GiB vdisks in {time.perf_counter() - t:.1f} s")
            p.close()
            before = rss()
            t = time.perf_counter()
            p = Pool(path)
            p.store
            dt = time.perf_counter() - t
            print(f"open with {a.vdisks} more vdisks{'':<17} {dt:7.3f} s   RSS {rss() / 2**20:.0f}"
                  f" MiB (+{(rss() - before) / 2**20:.0f} MiB)")
            p.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
