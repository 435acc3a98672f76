#!/usr/bin/env python3
"""The flash cache where flash really is faster: capacity on a throttled device, flash on tmpfs.

usage: tools/bench_slow_capacity.py [--iops 2000] [--bps 100M] [--size 192M] [--flash 512M]
                                    [--seconds 8] [--passes 3] [--rounds 2] [--record]

Needs root (loop devices, the blkio cgroup). The capacity tier is a loop device (over a file
in the temp directory, --direct-io=on) whose reads the cgroup-v1 blkio controller holds to
--iops reads and --bps bytes per second for the server (blkio.throttle.read_iops_device and
read_bps_device, the server moved into its own blkio cgroup after its vdisk is written): a
disk or network volume with an IOPS and a bandwidth limit. The flash tier is a file on
/dev/shm (tmpfs: RAM, always fast). Both pools use
`cache.size` auto (the default: on, as the tiers are on different devices) or `0`; the rounds
alternate off, on, off, on ... each on a new pool.

The page cache would keep the working set in RAM and hide the slow disk (it is the faster
cache on any machine whose RAM holds the working set): the tool drops the capacity device's
page cache every DROP_INTERVAL seconds (posix_fadvise DONTNEED), which stands for a working set
larger than the RAM the host can give it. Workload: `iscsi-perf` random 4 KiB reads, QD32, over
the whole --size vdisk, written whole first, then read once sequentially (1 MiB reads: the
working set was read before; the cache admits it on these read misses), then --passes timed
passes of --seconds. Printed: median IOPS per configuration, reads that reached the
capacity device per pass (blkio.throttle.io_serviced), the cache's hit ratio.
"""

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

from harness import REPO, machine, start_vmblock, stop

BLKIO = Path("/sys/fs/cgroup/blkio")
SHM = Path("/dev/shm")
DROP_INTERVAL = 0.1
DOC = REPO / "docs" / "benchmarks.md"
MARK = "<!-- tools/bench_slow_capacity.py -->"
END_MARK = "<!-- end tools/bench_slow_capacity.py -->"


def sh(*cmd: str) -> str:
    """Run a command that must succeed; its stdout."""
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


class SlowDevice:
    """A loop device over ``backing`` and a blkio cgroup holding its reads to ``iops``."""

    def __init__(self, backing: Path, size: int, iops: int, bps: int):
        backing.write_bytes(b"")
        os.truncate(backing, size)
        self.dev = sh("losetup", "--direct-io=on", "-f", "--show", str(backing))
        st = os.stat(self.dev)
        self.majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        self.cgroup = BLKIO / f"vmblock-bench-{uuid.uuid4().hex[:8]}"
        self.cgroup.mkdir()
        (self.cgroup / "blkio.throttle.read_iops_device").write_text(f"{self.majmin} {iops}")
        (self.cgroup / "blkio.throttle.read_bps_device").write_text(f"{self.majmin} {bps}")
        self.fd = os.open(self.dev, os.O_RDONLY)

    def throttle(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the throttled cgroup."""
        (self.cgroup / "cgroup.procs").write_text(str(pid))

    def reads(self) -> int:
        """Reads the throttled cgroup has sent to the device so far."""
        for line in (self.cgroup / "blkio.throttle.io_serviced").read_text().splitlines():
            f = line.split()
            if len(f) == 3 and f[0] == self.majmin and f[1] == "Read":
                return int(f[2])
        return 0

    def drop_cache(self) -> None:
        """Forget the device's pages in the page cache."""
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Detach the loop device and remove the cgroup (its processes are gone by now)."""
        os.close(self.fd)
        subprocess.run(["losetup", "-d", self.dev], check=False)
        try:
            self.cgroup.rmdir()
        except OSError as e:
            print(f"bench_slow_capacity: cannot remove {self.cgroup}: {e}", file=sys.stderr)


class Dropper(threading.Thread):
    """Drops the device's page cache every DROP_INTERVAL seconds until ``stop``."""

    def __init__(self, device: SlowDevice):
        super().__init__(daemon=True)
        self.device = device
        self.done = threading.Event()

    def run(self) -> None:
        """Drop, wait, drop ... until ``stop``."""
        while not self.done.wait(DROP_INTERVAL):
            self.device.drop_cache()

    def stop(self) -> None:
        """End the loop and wait for it."""
        self.done.set()
        self.join()


def randread(url: str, seconds: float) -> float:
    """iscsi-perf random 4 KiB reads at QD32 over the whole LUN for ``seconds``: its IOPS."""
    p = subprocess.run(["timeout", "-s", "INT", str(seconds), "iscsi-perf", "-m", "32", "-b",
                        "8", "-r", url], capture_output=True, text=True)
    avgs = re.findall(r"iops average (\d+)", p.stdout + p.stderr)
    if not avgs:
        sys.exit(f"iscsi-perf gave no figure: {(p.stdout + p.stderr)[-300:]}")
    return float(avgs[-1])


def one_round(work: Path, device: SlowDevice, flash: Path, cache: str, a) -> dict:
    """A new pool on the slow device; write the vdisk, warm up, time the passes."""
    pool = work / f"pool-{uuid.uuid4().hex[:6]}"
    config = {"store.capacity_path": device.dev, "store.capacity_size": a.capacity,
              "store.flash_path": str(flash), "store.flash_size": a.flash}
    if cache:
        config["cache.size"] = cache
    if flash.exists():
        flash.unlink()
    server, url = start_vmblock(pool, work / "server.log", "slow", a.size, (), config)
    vmblock = [sys.executable, "-m", "vmblock", "--pool", str(pool)]
    try:
        mib = int(sh("numfmt", "--from=iec", a.size)) >> 20
        sh("qemu-img", "bench", "-f", "raw", "-t", "none", "-w", "-c", str(mib), "-d", "8",
           "-s", "1M", "-S", "1M", "--pattern", "90", url)
        device.throttle(server.pid)
        dropper = Dropper(device)
        dropper.start()
        try:
            device.drop_cache()
            sh("qemu-img", "bench", "-f", "raw", "-t", "none", "-c", str(mib), "-d", "8",
               "-s", "1M", "-S", "1M", url)           # the working set read once
            iops, reads = [], []
            for _ in range(a.passes):
                r0 = device.reads()
                iops.append(randread(url, a.seconds))
                reads.append(device.reads() - r0)
        finally:
            dropper.stop()
        shown = json.loads(sh(*vmblock, "cache", "show", "--json"))
        totals = shown.get("totals", {})
        hits, misses = totals.get("read_hits", 0), totals.get("read_misses", 0)
        return {"enabled": shown["enabled"], "iops": iops, "reads": reads,
                "hit_ratio": hits / (hits + misses) if hits + misses else None}
    finally:
        stop(server)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--iops", type=int, default=2000, help="capacity device reads per second")
    ap.add_argument("--bps", default="100M", help="capacity device read bytes per second")
    ap.add_argument("--size", default="192M", help="the vdisk (the working set)")
    ap.add_argument("--capacity", default="1G", help="the loop device (capacity tier)")
    ap.add_argument("--flash", default="512M", help="the tmpfs flash tier (cache: 50%% of it)")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--record", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0 or not BLKIO.is_dir():
        sys.exit("bench_slow_capacity: needs root and the cgroup-v1 blkio controller")
    capacity_bytes = int(sh("numfmt", "--from=iec", a.capacity))
    flash = SHM / f"vmblock-bench-flash-{uuid.uuid4().hex[:8]}"
    results = {"0": [], "": []}
    with tempfile.TemporaryDirectory(prefix="vmblock-slowcap-") as tmp:
        work = Path(tmp)
        device = SlowDevice(work / "capacity.img", capacity_bytes, a.iops,
                            int(sh("numfmt", "--from=iec", a.bps)))
        try:
            for _ in range(a.rounds):
                for cache in ("0", ""):
                    results[cache].append(one_round(work, device, flash, cache, a))
        finally:
            device.close()
            if flash.exists():
                flash.unlink()
    lines = [f"capacity: loop device, reads held to {a.iops}/s and {a.bps}B/s (blkio), its page "
             f"cache dropped every {DROP_INTERVAL:g} s; flash: tmpfs {a.flash}; vdisk {a.size} "
             f"written whole, then read once; iscsi-perf random 4 KiB reads QD32, "
             f"{a.seconds:g} s passes, "
             f"{a.passes} passes x {a.rounds} alternating rounds",
             f"{'configuration':<40} {'median IOPS':>11} {'capacity reads/pass':>20} "
             f"{'hit ratio':>9}"]
    medians = {}
    for cache, label in (("0", "cache.size 0 (off)"),
                         ("", "cache.size auto (default; flash on tmpfs: on)")):
        rows = results[cache]
        iops = [x for r in rows for x in r["iops"]]
        reads = [x for r in rows for x in r["reads"]]
        ratios = [r["hit_ratio"] for r in rows if r["hit_ratio"] is not None]
        medians[cache] = statistics.median(iops)
        hit = f"{statistics.median(ratios):.3f}" if ratios else "-"
        lines.append(f"{label:<40} {medians[cache]:>11.0f} {statistics.median(reads):>20.0f} "
                     f"{hit:>9}")
    lines.append(f"cache on / off: {medians[''] / medians['0']:.2f}")
    print("\n".join(lines))
    if a.record:
        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        block = "\n".join([MARK, f"#### The cache where flash is faster, {when}", "",
                           f"`tools/bench_slow_capacity.py --iops {a.iops} --bps {a.bps} "
                           f"--size {a.size} --flash {a.flash} --rounds {a.rounds}`. "
                           f"Machine: {machine()}.",
                           "", "```", *lines, "```", END_MARK])
        text = DOC.read_text()
        start = text.find(MARK)
        if start >= 0:
            end = text.find("\n", text.find(END_MARK, start))
            text = text[:start] + block + (text[end:] if end >= 0 else "\n")
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
