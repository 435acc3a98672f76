"""Block traces: readers for three formats, splitting into cache blocks, synthetic generators.

Formats (see ``../shared/traces/README.md``):

* ``oracleGeneral`` (libCacheSim binary): packed little-endian records
  ``<u4 time, <u8 obj_id, <u4 size, <i8 next_access_vtime>`` (24 bytes). As libCacheSim takes it:
  ``obj_id`` is the block and each record one access (reads; the format carries no op).
* ``csv`` (CloudPhysics): header ``version,time,op,size,lbn``; op is the SCSI opcode in hex, size
  in bytes, lbn in 512-byte sectors.
* ``vscsi`` (VMware vscsiStats binary, layout as libCacheSim's reader): version 1 records are
  32 bytes ``<u4 sn, u4 len, u4 nSG, u2 cmd, u2 ver, u8 lbn, u8 ts>``, version 2 records 40 bytes
  ``<u2 cmd, u2 ver, u4 sn, u4 len, u4 nSG, u8 lbn, u8 ts, u8 rt>``; ``ver >> 8`` of the first two
  records tells which. ``len`` in bytes, ``lbn`` in sectors, ``ts / 1e6`` the time.

CSV and vscsi requests are split into the ``block_size`` blocks they cover; commands other than
READ/WRITE (6/10/12/16) and zero-length requests carry no data and are skipped.
Synthetic traces: ``zipf:alpha=1.0,blocks=N,requests=R[,seed=S]`` (rank 1 most popular, ranks
shuffled over the block range) and ``scan:blocks=N,requests=R[,start=B]`` (sequential, wrapping);
both take ``rate=X`` (X requests per time unit, default 1) for interleaving with other traces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from vmblock.errors import InvalidArgument, TraceError
from vmblock.units import parse_kv_list

SECTOR = 512
ORACLE_DTYPE = np.dtype([("time", "<u4"), ("obj_id", "<u8"), ("size", "<u4"), ("next", "<i8")])
VSCSI1_DTYPE = np.dtype([("sn", "<u4"), ("len", "<u4"), ("nsg", "<u4"), ("cmd", "<u2"),
                         ("ver", "<u2"), ("lbn", "<u8"), ("ts", "<u8")])
VSCSI2_DTYPE = np.dtype([("cmd", "<u2"), ("ver", "<u2"), ("sn", "<u4"), ("len", "<u4"),
                         ("nsg", "<u4"), ("lbn", "<u8"), ("ts", "<u8"), ("rt", "<u8")])
READ_OPS = (0x08, 0x28, 0xA8, 0x88)
WRITE_OPS = (0x0A, 0x2A, 0xAA, 0x8A)
FORMATS = ("oracleGeneral", "csv", "vscsi")


@dataclass
class Blocks:
    """A trace as block accesses: relative time, block number, write flag (numpy arrays)."""
    time: np.ndarray        # float64, starting at 0
    block: np.ndarray       # int64
    is_write: np.ndarray    # bool
    records: int            # requests in the source trace

    def __len__(self) -> int:
        return self.block.shape[0]


def detect_format(path: str) -> str:
    """The trace format from the file name (.csv, .vscsi, .bin / oracleGeneral); raises
    TraceError when the name does not tell, so the caller asks for --format."""
    name = os.path.basename(path).lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".vscsi"):
        return "vscsi"
    if "oraclegeneral" in name or name.endswith(".bin"):
        return "oracleGeneral"
    raise TraceError(f"{path}: cannot tell the trace format from the name; pass --format")


def _split(time, lba_bytes, size, is_write, block_size, records) -> Blocks:
    keep = size > 0
    time, lba_bytes, size, is_write = time[keep], lba_bytes[keep], size[keep], is_write[keep]
    first = lba_bytes // block_size
    last = (lba_bytes + size - 1) // block_size
    count = last - first + 1
    total = int(count.sum())
    idx = np.repeat(np.arange(first.shape[0]), count)
    starts = np.cumsum(count) - count
    block = first[idx] + (np.arange(total) - starts[idx])
    t = time[idx].astype(np.float64)
    if t.shape[0]:
        t -= t[0]
    return Blocks(t, block.astype(np.int64), is_write[idx], records)


def _ops(path: str, op: np.ndarray):
    is_read = np.isin(op, READ_OPS)
    is_write = np.isin(op, WRITE_OPS)
    return is_read | is_write, is_write


def read_oracle(path: str) -> Blocks:
    """An oracleGeneral file as block accesses: one per record, ``obj_id`` the block, all reads
    (the format has no op). Raises TraceError on a truncated or corrupt file."""
    size = _file_size(path)
    if size % ORACLE_DTYPE.itemsize:
        raise TraceError(f"{path}: truncated oracleGeneral trace ({size} bytes is not a multiple "
                         f"of the {ORACLE_DTYPE.itemsize}-byte record)")
    rec = np.fromfile(path, dtype=ORACLE_DTYPE)
    if rec.shape[0] == 0:
        raise TraceError(f"{path}: empty trace")
    ids = rec["obj_id"]
    if int(ids.max()) >= 1 << 62:
        raise TraceError(f"{path}: corrupt oracleGeneral trace (object id {int(ids.max())} "
                         "out of range)")
    t = rec["time"].astype(np.float64)
    if np.any(np.diff(t) < 0):
        raise TraceError(f"{path}: corrupt oracleGeneral trace (time goes backwards)")
    return Blocks(t - t[0], ids.astype(np.int64), np.zeros(rec.shape[0], np.bool_), rec.shape[0])


def read_vscsi(path: str, block_size: int) -> Blocks:
    """A vscsiStats trace (record version from the first two records) split into
    ``block_size`` blocks; non-READ/WRITE commands are skipped. Raises TraceError when corrupt."""
    size = _file_size(path)
    if size < 2 * VSCSI2_DTYPE.itemsize:
        raise TraceError(f"{path}: vscsi trace too small to hold a header ({size} bytes)")
    with open(path, "rb") as f:
        head = f.read(2 * VSCSI2_DTYPE.itemsize)
    v2 = np.frombuffer(head, VSCSI2_DTYPE, count=2)
    v1 = np.frombuffer(head, VSCSI1_DTYPE, count=2)
    if np.all(v2["ver"] >> 8 == 2):
        dtype = VSCSI2_DTYPE
    elif np.all(v1["ver"] >> 8 == 1):
        dtype = VSCSI1_DTYPE
    else:
        raise TraceError(f"{path}: not a vscsi trace (unknown record version)")
    if size % dtype.itemsize:
        raise TraceError(f"{path}: truncated vscsi trace ({size} bytes is not a multiple of the "
                         f"{dtype.itemsize}-byte record)")
    rec = np.fromfile(path, dtype=dtype)
    if np.any(rec["ver"] != rec["ver"][0]):
        bad = int(np.flatnonzero(rec["ver"] != rec["ver"][0])[0])
        raise TraceError(f"{path}: corrupt vscsi trace (record {bad} has version "
                         f"{int(rec['ver'][bad]) >> 8})")
    data, is_write = _ops(path, rec["cmd"])
    lbn = rec["lbn"]
    if int(lbn.max()) >= (1 << 62) // SECTOR:
        raise TraceError(f"{path}: corrupt vscsi trace (sector number out of range)")
    t = (rec["ts"] // 1_000_000).astype(np.float64)
    return _split(t[data], lbn[data].astype(np.int64) * SECTOR, rec["len"][data].astype(np.int64),
                  is_write[data], block_size, rec.shape[0])


def read_csv(path: str, block_size: int) -> Blocks:
    """A CloudPhysics CSV trace split into ``block_size`` blocks; non-READ/WRITE commands are
    skipped. Raises TraceError on a missing header, binary data or a bad row."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise TraceError(f"{path}: not a CSV trace (binary data)") from None
    except OSError as e:
        raise TraceError(f"{path}: {e.strerror}") from None
    if not lines or [c.strip() for c in lines[0].split(",")] != \
            ["version", "time", "op", "size", "lbn"]:
        raise TraceError(f"{path}: not a CloudPhysics CSV trace "
                         "(expected header version,time,op,size,lbn)")
    n = len(lines) - 1
    time = np.empty(n, np.int64)
    op = np.empty(n, np.int64)
    size = np.empty(n, np.int64)
    lbn = np.empty(n, np.int64)
    k = 0
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split(",")
        if len(f) != 5:
            raise TraceError(f"{path}:{lineno}: expected 5 fields, got {len(f)}")
        try:
            time[k], op[k], size[k], lbn[k] = int(f[1]), int(f[2], 16), int(f[3]), int(f[4])
        except ValueError:
            raise TraceError(f"{path}:{lineno}: malformed record {line[:60]!r}") from None
        if size[k] < 0 or lbn[k] < 0 or lbn[k] >= (1 << 62) // SECTOR or size[k] >= 1 << 32:
            raise TraceError(f"{path}:{lineno}: size or lbn out of range")
        k += 1
    if k == 0:
        raise TraceError(f"{path}: empty trace")
    time, op, size, lbn = time[:k], op[:k], size[:k], lbn[:k]
    data, is_write = _ops(path, op)
    return _split(time[data], lbn[data] * SECTOR, size[data], is_write[data], block_size, k)


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError as e:
        raise TraceError(f"{path}: {e.strerror}") from None


def read_trace(path: str, block_size: int, fmt: str | None = None) -> Blocks:
    """Read a trace file as block accesses (``block_size`` applies to sector-addressed formats)."""
    fmt = fmt or detect_format(path)
    if fmt == "oracleGeneral":
        return read_oracle(path)
    if fmt == "csv":
        return read_csv(path, block_size)
    if fmt == "vscsi":
        return read_vscsi(path, block_size)
    raise TraceError(f"unknown trace format {fmt!r} (known: {', '.join(FORMATS)})")


# -- synthetic -------------------------------------------------------------------------------------

_SYNTH = {"zipf": {"alpha": float, "blocks": int, "requests": int, "seed": int, "rate": float},
          "scan": {"blocks": int, "requests": int, "start": int, "rate": float}}


def is_synthetic(spec: str) -> bool:
    """Whether ``spec`` names a synthetic trace (``zipf:...``, ``scan:...``), not a file."""
    return spec.split(":", 1)[0] in _SYNTH and ":" in spec


def synthetic(spec: str) -> Blocks:
    """``zipf:alpha=A,blocks=N,requests=R[,seed=S]`` or ``scan:blocks=N,requests=R[,start=B]``."""
    kind, _, rest = spec.partition(":")
    if kind not in _SYNTH:
        raise TraceError(f"unknown synthetic trace {kind!r} (known: {', '.join(_SYNTH)})")
    kinds = _SYNTH[kind]
    try:
        items = parse_kv_list(rest, kind, tuple(kinds))
    except InvalidArgument as e:
        raise TraceError(str(e)) from None
    kw: dict = {"seed": 1, "start": 0, "alpha": 1.0, "rate": 1.0}
    for key, value in items.items():
        try:
            kw[key] = kinds[key](float(value) if kinds[key] is int else value)
        except ValueError:
            raise TraceError(f"{kind}: {key}={value!r} is not a number") from None
    for key in ("blocks", "requests"):
        if key not in kw or not 0 < kw[key] <= 1 << 34:
            raise TraceError(f"{kind}: {key}= must be given, between 1 and 2^34")
    n, r = kw["blocks"], kw["requests"]
    if not 0 < kw["rate"] <= 1e6:
        raise TraceError(f"{kind}: rate must be in (0, 1e6]")
    if kind == "zipf":
        if not 0 < kw["alpha"] <= 5:
            raise TraceError("zipf: alpha must be in (0, 5]")
        rng = np.random.default_rng(kw["seed"])
        cdf = np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64) ** kw["alpha"])
        cdf /= cdf[-1]
        rank = np.searchsorted(cdf, rng.random(r), side="right")
        np.minimum(rank, n - 1, out=rank)
        block = rng.permutation(n).astype(np.int64)[rank]
    else:
        block = kw["start"] + np.arange(r, dtype=np.int64) % n
    return Blocks(np.arange(r, dtype=np.float64) / kw["rate"], block, np.zeros(r, np.bool_), r)


def write_oracle(path: str, ids: np.ndarray, obj_size: int) -> None:
    """Write block accesses as an oracleGeneral trace (one record per access, time = index)."""
    rec = np.empty(ids.shape[0], ORACLE_DTYPE)
    rec["time"] = np.arange(ids.shape[0], dtype=np.uint64).astype(np.uint32)
    rec["obj_id"] = ids
    rec["size"] = obj_size
    rec["next"] = -1
    rec.tofile(path)
