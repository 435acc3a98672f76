"""Offline trace replay through the cache kernels, side by side with libCacheSim.

Used by ``tools/replay.py`` (the command line) and the benchmarks. A replay reads one or more
traces (one per vdisk, interleaved by time since each trace's start), splits them into cache
blocks, builds a ``CacheDirectory`` with the requested eviction groups and runs the whole block
stream through ``CacheDirectory.access``. ``seconds`` times that call only: trace loading and JIT
compilation (a warm-up call) are outside it. ``--compare`` writes the same block stream to a
temporary oracleGeneral file (``obj_id = vdisk << 48 | block``, one record per access) and runs
libcachesim's caches on it with the same capacity, timing ``process_trace`` alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from vmblock.errors import CacheError, InvalidArgument, TraceError, VmblockError
from vmblock.units import parse_fraction, parse_size

from .directory import CacheDirectory
from .groups import GroupSpec, parse_group, validate_groups
from .trace import FORMATS, Blocks, is_synthetic, read_trace, synthetic, write_oracle

COMPARE = ("S3FIFO", "LRU", "ARC", "Sieve")
VDISK_SHIFT = 48


@dataclass
class Workload:
    """The merged block stream of all vdisks, ready for ``access``."""
    names: list[str]
    keys: np.ndarray        # int64 block numbers
    vdisk: np.ndarray       # int32 vdisk index
    is_write: np.ndarray    # bool
    records: int            # trace records read

    @property
    def footprint(self) -> int:
        """Distinct (vdisk, block) pairs."""
        return int(np.unique(self.combined_ids()).shape[0])

    def combined_ids(self) -> np.ndarray:
        """One int64 per access, ``vdisk << 48 | block``: the key a cache sees and the
        ``obj_id`` written to an oracleGeneral trace."""
        return (self.vdisk.astype(np.int64) << VDISK_SHIFT) | self.keys


def load(traces: list[str], names: list[str], block_size: int, fmt: str | None) -> Workload:
    """Read every trace (file or synthetic spec) and merge them by relative time into one
    ``Workload``; trace ``i`` becomes vdisk index ``i``. Raises TraceError on an empty trace or
    a block number that does not fit below ``VDISK_SHIFT``."""
    parts: list[Blocks] = []
    for t in traces:
        parts.append(synthetic(t) if is_synthetic(t) else read_trace(t, block_size, fmt))
    for p, t in zip(parts, traces):
        if len(p) == 0:
            raise TraceError(f"{t}: no block accesses in the trace")
        if int(p.block.max()) >= 1 << VDISK_SHIFT or int(p.block.min()) < 0:
            raise TraceError(f"{t}: block number out of range")
    if len(parts) == 1:
        p = parts[0]
        return Workload(names, p.block, np.zeros(len(p), np.int32), p.is_write, p.records)
    t = np.concatenate([p.time for p in parts])
    order = np.argsort(t, kind="stable")
    return Workload(
        names,
        np.concatenate([p.block for p in parts])[order],
        np.concatenate([np.full(len(p), i, np.int32) for i, p in enumerate(parts)])[order],
        np.concatenate([p.is_write for p in parts])[order],
        sum(p.records for p in parts))


def parse_cache_size(text: str, footprint: int, block_size: int) -> int:
    """Cache size in blocks: a fraction of the footprint (``0.01`` or ``1%``, as
    ``vmblock.units.parse_fraction`` reads them; above 0) or bytes (``512M``, ``4G``: whole
    numbers are sizes)."""
    t = text.strip()
    if t.endswith("%") or "." in t:
        try:
            frac = parse_fraction(t, "--cache-size fraction")
        except InvalidArgument as e:
            raise CacheError(str(e)) from None
        if frac == 0.0:
            raise CacheError(f"--cache-size {text}: a fraction must be in (0, 1]")
        return max(1, int(frac * footprint))
    try:
        n = parse_size(t, "--cache-size")
    except InvalidArgument:
        raise CacheError(f"--cache-size {text!r} is not a size (e.g. 512M) or a fraction "
                         f"(0.01)") from None
    if n < block_size:
        raise CacheError(f"--cache-size {text} is smaller than one {block_size}-byte block")
    return n // block_size


def build_groups(group_args: list[str], assign_args: list[str], names: list[str]):
    """Group specs and the group index of each vdisk; unassigned vdisks go to ``default``."""
    specs = [parse_group(g) for g in group_args]
    index = {s.name: i for i, s in enumerate(specs)}
    assignment: dict[str, str] = {}
    for a in assign_args:
        vd, sep, grp = a.partition("=")
        if not sep:
            raise CacheError(f"--assign {a!r} is not VDISK=GROUP")
        if vd not in names:
            raise CacheError(f"--assign {a}: unknown vdisk {vd!r} (vdisks: {', '.join(names)})")
        if grp not in index:
            raise CacheError(f"--assign {a}: unknown group {grp!r}")
        assignment[vd] = grp
    if any(n not in assignment for n in names) and "default" not in index:
        index["default"] = len(specs)
        specs.append(GroupSpec("default"))
    validate_groups(specs)
    return specs, [index[assignment.get(n, "default")] for n in names]


def replay(wl: Workload, nslots: int, block_size: int, specs: list[GroupSpec],
           vdisk_groups: list[int], params: str | None = None) -> dict:
    """Run the block stream through a fresh directory; figures for the JSON report."""
    def make():
        d = CacheDirectory(nslots, specs, len(wl.names), params, block_size)
        for v, g in enumerate(vdisk_groups):
            d.assign(v, g)
        return d
    warm = make()                       # JIT compile / load from cache, outside the timing
    warm.access(wl.keys[:64], wl.vdisk[:64], wl.is_write[:64])
    d = make()
    n = wl.keys.shape[0]
    hits = np.empty(n, np.bool_)
    slots = np.empty(n, np.int32)
    t0 = time.perf_counter()
    d.access(wl.keys, wl.vdisk, wl.is_write, hits=hits, slots=slots)
    seconds = time.perf_counter() - t0
    d.check()
    n_hits = int(np.count_nonzero(hits))
    out = {
        "requests": n,
        "miss_ratio": 1.0 - n_hits / n,
        "seconds": seconds,
        "requests_per_second": n / seconds if seconds > 0 else None,
        "cache_blocks": nslots,
        "block_size": block_size,
        "directory_bytes": d.nbytes,
        "vdisks": {},
        "groups": {},
    }
    for v, name in enumerate(wl.names):
        out["vdisks"][name] = d.vdisk_stats(v)
    for i, s in enumerate(d.groups):
        out["groups"][s.name] = d.group_stats(i)
    return out


def libcachesim_run(lcs, path: str, name: str, nslots: int, block_size: int
                    ) -> tuple[float, float]:
    """(miss ratio, seconds) of libcachesim's ``name`` policy (module ``lcs``), ``nslots``
    blocks of ``block_size`` bytes, over the oracleGeneral trace at ``path``."""
    reader = lcs.TraceReader(path, lcs.TraceType.ORACLE_GENERAL_TRACE,
                             lcs.ReaderInitParam(ignore_obj_size=False))
    cache = getattr(lcs, name)(nslots * block_size)
    t0 = time.perf_counter()
    mr = cache.process_trace(reader)
    seconds = time.perf_counter() - t0
    return float(mr[0] if isinstance(mr, (tuple, list)) else mr), seconds


def compare(wl: Workload, nslots: int, block_size: int, algos=COMPARE) -> dict:
    """libcachesim on the same block stream and capacity: miss ratio, replay seconds."""
    try:
        import libcachesim as lcs
    except ImportError:
        raise CacheError("--compare needs libcachesim (pip install libcachesim)") from None
    out = {}
    fd, path = tempfile.mkstemp(prefix="vmblock-replay-", suffix=".oracleGeneral.bin")
    os.close(fd)
    try:
        write_oracle(path, wl.combined_ids(), block_size)
        for name in algos:
            ratio, seconds = libcachesim_run(lcs, path, name, nslots, block_size)
            out[name] = {"miss_ratio": ratio, "seconds": seconds,
                         "requests_per_second": wl.keys.shape[0] / seconds}
    finally:
        os.unlink(path)
    return out


class _Parser(argparse.ArgumentParser):
    def error(self, message):            # one line, exit 2 (DESIGN rule 3)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The ``replay`` command line (``tools/replay.py``); errors print one line and exit 2."""
    p = _Parser(prog="replay", description="Replay block traces through vmblock's cache kernels.")
    p.add_argument("--trace", action="append", default=[], metavar="FILE|SPEC",
                   help="trace file (oracleGeneral .bin, CloudPhysics .csv, .vscsi) or a synthetic "
                        "spec zipf:alpha=1.0,blocks=N,requests=R / scan:blocks=N,requests=R; repeat "
                        "for several vdisks")
    p.add_argument("--synthetic", action="append", default=[], metavar="SPEC",
                   help="same as --trace with a synthetic spec")
    p.add_argument("--vdisk", action="append", default=[], metavar="NAME",
                   help="name of the vdisk of the matching --trace (default vd0, vd1, ...)")
    p.add_argument("--format", choices=FORMATS, help="trace format (default: from the file name)")
    p.add_argument("--block-size", type=int, default=4096, help="cache block size in bytes")
    p.add_argument("--cache-size", default="0.1",
                   help="bytes (512M, 4G) or a fraction of the footprint (0.01, 10%%)")
    p.add_argument("--group", action="append", default=[], metavar="NAME:priority=P,min=F,max=F",
                   help="eviction group (also promote=read|write|never, pinned=1)")
    p.add_argument("--assign", action="append", default=[], metavar="VDISK=GROUP")
    p.add_argument("--params", default=None, help="S3-FIFO parameters, key=value,...")
    p.add_argument("--compare", action="store_true",
                   help="also run libcachesim's S3FIFO, LRU, ARC and Sieve on the same blocks")
    p.add_argument("--write-trace", metavar="FILE",
                   help="write the merged block stream as an oracleGeneral trace")
    p.add_argument("--json", action="store_true", help="one line of JSON")
    return p


def run(argv: list[str] | None = None) -> dict:
    """Parse ``argv`` and replay; the report as a dict (``--json`` prints exactly this)."""
    return _run(build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> dict:
    traces = args.trace + args.synthetic
    if not traces:
        raise CacheError("no trace: give --trace FILE or --synthetic SPEC")
    if args.vdisk and len(args.vdisk) != len(traces):
        raise CacheError(f"{len(args.vdisk)} --vdisk names for {len(traces)} traces")
    names = args.vdisk or [f"vd{i}" for i in range(len(traces))]
    if len(set(names)) != len(names):
        raise CacheError("vdisk names must be unique")
    if args.block_size < 512 or args.block_size & (args.block_size - 1):
        raise CacheError(f"--block-size {args.block_size} is not a power of two >= 512")
    specs, vdisk_groups = build_groups(args.group, args.assign, names)
    wl = load(traces, names, args.block_size, args.format)
    footprint = wl.footprint
    nslots = parse_cache_size(args.cache_size, footprint, args.block_size)
    if args.write_trace:
        write_oracle(args.write_trace, wl.combined_ids(), args.block_size)
    out = replay(wl, nslots, args.block_size, specs, vdisk_groups, args.params)
    out["trace_records"] = wl.records
    out["footprint_blocks"] = footprint
    if args.compare:
        out["compare"] = compare(wl, nslots, args.block_size)
    return out


def _human(out: dict) -> str:
    lines = [f"requests {out['requests']} (from {out['trace_records']} trace records), footprint "
             f"{out['footprint_blocks']} blocks, cache {out['cache_blocks']} blocks of "
             f"{out['block_size']} B",
             f"vmblock S3-FIFO  miss ratio {out['miss_ratio']:.4f}  "
             f"{out['requests_per_second'] / 1e6:.2f} M req/s"]
    for name, r in out.get("compare", {}).items():
        lines.append(f"libcachesim {name:<6} miss ratio {r['miss_ratio']:.4f}  "
                     f"{r['requests_per_second'] / 1e6:.2f} M req/s")
    for name, v in out["vdisks"].items():
        lines.append(f"  vdisk {name} ({v['group']}): hit ratio {v['hit_ratio']:.4f}, "
                     f"{v['requests']} requests, {v['cached_blocks']} blocks cached")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/replay.py``: replay, print the report (human or ``--json``);
    0 on success, 2 on a vmblock error (usage errors exit 2 in the parser)."""
    args = build_parser().parse_args(argv)
    try:
        out = _run(args)
    except VmblockError as e:
        sys.stderr.write(f"replay: error: {e}\n")
        return 2
    print(json.dumps(out, separators=(",", ":")) if args.json else _human(out))
    return 0
