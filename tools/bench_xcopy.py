#!/usr/bin/env python3
"""EXTENDED COPY inside a pool (a remap of shared AUs) vs the same copy as READ+WRITE.

usage: tools/bench_xcopy.py [--gib 8] [--rounds 3] [--segment-mib 16] [--pool DIR] [--keep]

A scratch pool with one VM and four vdisks of N GiB on one target: ``src`` is written whole
with a pattern (qemu-io), then each round copies it three ways, the order rotating:

* **xcopy**: a raw initiator sends EXTENDED COPY(LID1) to ``src``'s LUN, 64 block-to-block
  segments of ``--segment-mib`` MiB per command (16 MiB is ESXi's largest
  DataMover.MaxHWTransferSize), then SYNCHRONIZE CACHE; into ``dst-x``;
* **qemu-img -C**: ``qemu-img convert -C`` (copy offload: QEMU's iSCSI driver sends EXTENDED
  COPY itself, one segment per request) into ``dst-c``;
* **qemu-img**: ``qemu-img convert -n -t none`` from ``src``'s URL to ``dst-q``'s (READ +
  WRITE through the initiator, what a host does without the offload), then a flush.

Before each round both destinations are discarded whole (UNMAP through qemu-io). Reported per
copy: seconds, GiB/s, the bytes the server process wrote (``/proc/PID/io`` write_bytes: the
tier files and the meta DB), the pool's growth in used bytes, and that the destination reads
back equal (qemu-io ``read -P``). Medians over the rounds and the ratio to qemu-img in the same
run; the machine may be shared, so the figures are noisy, the ratio less so.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from support.iscsi_client import IscsiClient  # noqa: E402

SECTOR = 512
GiB, MiB = 1 << 30, 1 << 20
PATTERN = 0xA7
SEGMENTS_PER_COMMAND = 64


def vmblock(pool: Path, *args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "vmblock", "--pool", str(pool), *args],
                       capture_output=True, text=True, timeout=600)
    if p.returncode:
        raise RuntimeError(f"vmblock {' '.join(args)}: {p.stderr.strip()}")
    return p.stdout


def qemu_io(url: str, *cmds: str, timeout: float = 3600) -> None:
    args = ["qemu-io", "-f", "raw", "-t", "none"]
    for c in cmds:
        args += ["-c", c]
    p = subprocess.run(args + [url], capture_output=True, text=True, timeout=timeout)
    out = p.stdout + p.stderr
    if p.returncode or "fail" in out.lower() or "error" in out.lower():
        raise RuntimeError(f"qemu-io {cmds}: {out[-2000:]}")


def written(pid: int) -> int:
    text = Path(f"/proc/{pid}/io").read_text()
    return int(re.search(r"^write_bytes: (\d+)", text, re.M).group(1))


def used(pool: Path) -> int:
    return json.loads(vmblock(pool, "pool", "show", "--json"))["store"]["used_bytes"]


class Copier:
    """A raw initiator session on the target (EXTENDED COPY, SYNCHRONIZE CACHE)."""

    def __init__(self, url: str):
        m = re.match(r"iscsi://(?:([^%@]+)%([^@]+)@)?([^:/]+):(\d+)/([^/]+)/", url)
        self.c = IscsiClient(m.group(3), int(m.group(4)), timeout=600)
        chap = (m.group(1), m.group(2)) if m.group(1) else None
        if self.c.login(m.group(5), chap=chap).login_status:
            raise RuntimeError("login failed")

    def command(self, cdb: bytes, lun: int, param: bytes = b"") -> None:
        for _ in range(4):
            r = self.c.scsi(cdb, write=param, lun=lun)
            if not (r.status == 0x02 and (r.sense[2] & 0x0F) == 0x06):
                break
        if r.status:
            raise RuntimeError(f"status {r.status:#x} sense {r.sense.hex()}")

    def xcopy(self, src: dict, dst: dict, size: int, segment: int) -> None:
        cscds = b""
        for d in (src, dst):
            naa = bytes.fromhex(d["naa"])
            desc = bytearray(32)
            desc[0], desc[4], desc[5], desc[7] = 0xE4, 0x01, 0x03, len(naa)
            desc[8:8 + len(naa)] = naa
            desc[29:32] = SECTOR.to_bytes(3, "big")
            cscds += bytes(desc)
        blocks = segment // SECTOR
        offsets = list(range(0, size, segment))
        for i in range(0, len(offsets), SEGMENTS_PER_COMMAND):
            segs = b"".join(struct.pack(">BBHHH2xHQQ", 0x02, 0, 0x18, 0, 1,
                                        min(blocks, (size - o) // SECTOR), o // SECTOR,
                                        o // SECTOR)
                            for o in offsets[i:i + SEGMENTS_PER_COMMAND])
            param = struct.pack(">BBH4xII", 0, 0b11 << 3, len(cscds), len(segs), 0) \
                + cscds + segs
            cdb = bytes([0x83, 0]) + bytes(8) + struct.pack(">I", len(param)) + bytes(2)
            self.command(cdb, src["lun"], param)
        self.command(bytes([0x35]) + bytes(9), dst["lun"])

    def close(self) -> None:
        self.c.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--gib", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--segment-mib", type=int, default=16)
    ap.add_argument("--pool", default="")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.segment_mib * MiB // SECTOR > 0xFFFF:
        ap.error("a 02h segment descriptor holds at most 65535 blocks (32 MiB - 512)")
    size = a.gib * GiB
    work = Path(a.pool) if a.pool else Path(tempfile.mkdtemp(prefix="vmblock-xcopy-"))
    pool = work / "pool"
    vmblock(pool, "config", "set", "store.capacity_size", f"{4 * a.gib + 1}G")
    vmblock(pool, "config", "set", "cache.size", "0")
    vmblock(pool, "vm", "create", "bench")
    for name in ("src", "dst-x", "dst-c", "dst-q"):
        vmblock(pool, "vdisk", "create", name, "--size", f"{a.gib}G", "--vm", "bench")
    log = open(work / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "vmblock", "--pool", str(pool), "serve",
                               "--portal", "127.0.0.1:0"], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not re.search(rb"^vmblock: serving", (work / "server.log").read_bytes(), re.M):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "server.log").read_text()[-3000:])
            time.sleep(0.1)
        disks = {d["name"]: d for d in json.loads(vmblock(pool, "vdisk", "list", "--json"))}
        src, dx, dc, dq = disks["src"], disks["dst-x"], disks["dst-c"], disks["dst-q"]
        t = time.monotonic()
        qemu_io(src["url"], *[f"write -P {PATTERN:#04x} {o} {GiB}" for o in range(0, size, GiB)])
        print(f"bench_xcopy: src filled ({a.gib} GiB) in {time.monotonic() - t:.1f} s; "
              f"{a.rounds} rounds, segments of {a.segment_mib} MiB", flush=True)
        results: dict[str, list[tuple[float, int, int]]] = {"xcopy": [], "qemu-img -C": [],
                                                             "qemu-img": []}

        def run_xcopy():
            c = Copier(src["url"])
            try:
                c.xcopy(src, dx, size, a.segment_mib * MiB)
            finally:
                c.close()
            return dx

        def run_convert():
            subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", "-t", "none",
                            "-T", "none", src["url"], dq["url"]], check=True,
                           capture_output=True, timeout=3600)
            return dq

        def run_offload():
            subprocess.run(["qemu-img", "convert", "-C", "-n", "-f", "raw", "-O", "raw",
                            src["url"], dc["url"]], check=True, capture_output=True,
                           timeout=3600)
            return dc

        for r in range(a.rounds):
            for d in (dx, dc, dq):
                qemu_io(d["url"], *[f"discard {o} {GiB}" for o in range(0, size, GiB)])
            vmblock(pool, "pool", "check")
            order = [("xcopy", run_xcopy), ("qemu-img -C", run_offload),
                     ("qemu-img", run_convert)]
            order = order[r % 3:] + order[:r % 3]
            for name, fn in order:
                w0, u0, t0 = written(server.pid), used(pool), time.monotonic()
                d = fn()
                secs = time.monotonic() - t0
                results[name].append((secs, written(server.pid) - w0, used(pool) - u0))
                qemu_io(d["url"], f"read -P {PATTERN:#04x} 0 {min(size, GiB)}",
                        f"read -P {PATTERN:#04x} {size - GiB} {GiB}")
                print(f"  round {r + 1} {name:11s}: {secs:7.2f} s, {size / secs / GiB:6.2f} GiB/s, "
                      f"server wrote {results[name][-1][1] / MiB:9.1f} MiB, pool used "
                      f"+{results[name][-1][2] / MiB:8.1f} MiB", flush=True)
        check = json.loads(vmblock(pool, "pool", "check", "--json"))
        med = {k: [statistics.median(x[i] for x in v) for i in range(3)]
               for k, v in results.items()}
        print(f"bench_xcopy: {a.gib} GiB, medians of {a.rounds}: "
              + "; ".join(f"{k} {m[0]:.2f} s ({size / m[0] / GiB:.2f} GiB/s), server wrote "
                          f"{m[1] / MiB:.1f} MiB, pool +{m[2] / MiB:.1f} MiB"
                          for k, m in med.items())
              + f"; xcopy takes {med['xcopy'][0] / med['qemu-img'][0]:.4f}x the time of "
              f"qemu-img, qemu-img -C {med['qemu-img -C'][0] / med['qemu-img'][0]:.4f}x; "
              f"pool check {'clean' if check['ok'] else check['errors']}")
        return 0 if check["ok"] else 1
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
