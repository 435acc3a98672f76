#!/usr/bin/env python3
"""Snapshot stalls on a live server: a 4 KiB QD1 reader of one VM while another VM with many
mapped AUs is snapshotted and cloned.

usage: tools/snapshot_stall.py [--aus 1048576] [--idle 2] [--candidate REV]

Builds a scratch pool offline with this checkout: VM ``src`` with one vdisk of --aus mapped
AUs (through ``PoolStore.preallocate``) and VM ``reader`` with a 64 MiB vdisk written once
(rewritten in the old one-key-per-AU format when --candidate is given). Starts
``vmblock serve`` on it (this checkout, or a worktree of --candidate REV, e.g. the commit
before two-level maps, for the "before" figures), logs in with the raw test initiator
(tests/support/iscsi_client.py) and reads 4 KiB at random offsets of the reader's vdisk, one
at a time, timing each. Meanwhile, through the CLI (the admin socket): ``vm snapshot src``,
then ``vm clone src --snapshot``, then ``vm clone src --live``, --idle seconds apart. Prints,
per operation, its CLI time and the reader's p99 and max latency while it ran, and the same
for the idle stretches. Numba compile time is out: the server warms its kernels first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from harness import REPO, free_port, stop  # noqa: E402
from support.iscsi_client import IscsiClient, read10  # noqa: E402

BUILD = """
import sys
from vmblock.meta import Pool
from vmblock.store.layout import AU_SIZE
path, aus = sys.argv[1], int(sys.argv[2])
p = Pool(path, create=True)
p.config_set("store.capacity_size", str((aus + 2048) * AU_SIZE))
p.create_vm("src")
p.create_vdisk("src-d0", aus * AU_SIZE, vm="src")
p.create_vm("reader")
p.create_vdisk("reader-d0", 64 << 20, vm="reader")
p.store.preallocate(p.vdisk("src-d0").map_id, 0, aus)
s = p.open_store(p.vdisk("reader-d0"))
s.write(0, memoryview(bytes(range(256)) * (256 << 10)))
p.close()
"""

# For a --candidate from before leaf keys: the same pool in the old one-key-per-AU format.
TO_AU_KEYS = """
import sys
import numpy as np
from rocksdict import WriteBatch
from vmblock.meta import Pool
from vmblock.store.layout import KEY_LEAF, LEAF_AUS, map_key, map_value, scan_leaves
p = Pool(sys.argv[1])
mids, slots, file_aus, tiers = scan_leaves(p._db)
batch = WriteBatch(raw_mode=True)
for mid, slot, frow, trow in zip(mids.tolist(), slots.tolist(), file_aus, tiers):
    for j in np.flatnonzero(frow != 0xFFFFFFFF).tolist():
        batch.put(map_key(mid, slot * LEAF_AUS + j), map_value(int(frow[j]), int(trow[j])))
batch.delete_range(KEY_LEAF, bytes([KEY_LEAF[0] + 1]))
p._db.write(batch)
p.close()
"""


class Reader(threading.Thread):
    """QD1 4 KiB reads; (start time, latency) of each."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port
        self.iqn, self.lun = u.path.strip("/").split("/")
        # libiscsi's form: iscsi://USER%SECRET@HOST:PORT/IQN/LUN
        self.chap = tuple(unquote(x) for x in u.username.split("%", 1)) if u.username else None
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        """Log in, then read until stopped (a unit attention is answered by reading again)."""
        c = IscsiClient(self.host, self.port)
        c.login(self.iqn, chap=self.chap)
        for _ in range(4):      # the unit attentions of a new nexus (power on, reset)
            if c.scsi(bytes(6), lun=int(self.lun)).status == 0:
                break
        rng = np.random.default_rng(1)
        while not self.stop.is_set():
            lba = int(rng.integers(0, (64 << 20) // 512 - 8)) & ~7
            t = time.perf_counter()
            r = c.scsi(read10(lba, 8), read_len=4096, lun=int(self.lun))
            if r.status == 2 and r.sense[2:3] == b"\x06":   # a unit attention (new LUNs)
                r = c.scsi(read10(lba, 8), read_len=4096, lun=int(self.lun))
            self.samples.append((t, time.perf_counter() - t))
            if r.status != 0:
                raise RuntimeError(f"read failed: status {r.status}")
        c.logout()
        c.close()

    def window(self, a: float, b: float) -> str:
        """p99 and max latency of the reads started between ``a`` and ``b``."""
        lat = [d for t, d in self.samples if a <= t <= b]
        if not lat:
            return "no reads"
        return (f"p99 {np.percentile(lat, 99) * 1e3:6.2f} ms, max {max(lat) * 1e3:7.1f} ms "
                f"({len(lat)} reads)")


def main() -> None:
    """Build the pool, serve it, read, snapshot and clone, print (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aus", type=int, default=1 << 20)
    ap.add_argument("--idle", type=float, default=2.0)
    ap.add_argument("--candidate", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vmblock-stall-") as tmp:
        work = Path(tmp)
        tree = REPO
        if a.candidate:
            tree = work / "tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree),
                            a.candidate], check=True, capture_output=True)
            # vmblock.native of that tree, not the editable install's (a path entry wins)
            (tree / "vmblock" / "native").symlink_to("../native")
        env = {"PYTHONPATH": str(tree)}
        pool = work / "pool"
        py = [sys.executable]
        run_env = dict(__import__("os").environ, **env)
        subprocess.run(py + ["-c", BUILD, str(pool), str(a.aus)], check=True, cwd=REPO)
        if a.candidate:
            subprocess.run(py + ["-c", TO_AU_KEYS, str(pool)], check=True, cwd=REPO)
        cli = py + ["-m", "vmblock", "--pool", str(pool)]
        port = free_port()
        log = work / "serve.log"
        proc = subprocess.Popen(cli + ["serve", "--portal", f"127.0.0.1:{port}"],
                                stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True, env=run_env, cwd=tree)
        reader = None
        try:
            deadline = time.monotonic() + 120
            while "vmblock: serving" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"server did not start:\n{log.read_text(errors='replace')}")
                time.sleep(0.1)
            shown = subprocess.run(cli + ["vdisk", "show", "reader-d0", "--json"], check=True,
                                   capture_output=True, text=True, env=run_env, cwd=tree)
            reader = Reader(__import__("json").loads(shown.stdout)["url"])
            reader.start()
            time.sleep(a.idle)
            steps = [("snapshot", ["vm", "snapshot", "src", "--name", "s1"]),
                     ("clone of the snapshot", ["vm", "clone", "src", "--snapshot", "s1",
                                                "--name", "c1"]),
                     ("live clone", ["vm", "clone", "src", "--live", "--name", "c2"])]
            print(f"{a.aus} mapped AUs in src; tree {a.candidate or 'this checkout'}")
            t0 = time.perf_counter()
            time.sleep(a.idle)
            print(f"{'idle':<24} {'':>8}   reader {reader.window(t0, time.perf_counter())}")
            for what, args in steps:
                t = time.perf_counter()
                subprocess.run(cli + args, check=True, capture_output=True, env=run_env,
                               cwd=tree)
                e = time.perf_counter()
                print(f"{what:<24} {e - t:6.3f} s   reader {reader.window(t, e)}", flush=True)
                time.sleep(a.idle)
        finally:
            if reader is not None:
                reader.stop.set()
                reader.join(10)
            stop(proc)
            if a.candidate:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                                str(tree)], capture_output=True)


if __name__ == "__main__":
    main()
