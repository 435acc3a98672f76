"""tools/replay.py end to end: the three trace formats, multi-VM groups, JSON report, and bad
input (corrupt or truncated traces, invalid groups) as one line on stderr with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmblock.cache.trace import ORACLE_DTYPE

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO.parent / "shared" / "traces"
REPLAY = [sys.executable, str(REPO / "tools" / "replay.py")]


def replay(*args, ok=True):
    p = subprocess.run(REPLAY + list(args), capture_output=True, text=True, timeout=120)
    if ok:
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)
    return p


def need_traces():
    if not (TRACES / "cloudPhysicsIO.csv").exists():
        pytest.skip("shared traces not present")


@pytest.mark.parametrize("suffix,requests", [("csv", 1141869), ("vscsi", 1141869),
                                             ("oracleGeneral.bin", 113872)])
def test_replay_each_format(suffix, requests):
    need_traces()
    out = replay("--trace", str(TRACES / f"cloudPhysicsIO.{suffix}"), "--cache-size", "0.01",
                 "--json")
    assert out["requests"] == requests
    assert out["trace_records"] == 113872
    assert 0.8 < out["miss_ratio"] < 0.9
    assert out["seconds"] > 0
    assert set(out["vdisks"]) == {"vd0"} and "hit_ratio" in out["vdisks"]["vd0"]


def test_cache_size_in_bytes_and_fraction():
    out = replay("--synthetic", "scan:blocks=1000,requests=5000", "--cache-size", "1M", "--json")
    assert out["cache_blocks"] == 256 and out["footprint_blocks"] == 1000
    out = replay("--synthetic", "scan:blocks=1000,requests=5000", "--cache-size", "10%", "--json")
    assert out["cache_blocks"] == 100


def test_multi_vm_groups_protect_the_high_priority_vdisk():
    common = ["--trace", "zipf:alpha=1.0,blocks=20000,requests=200000", "--vdisk", "A",
              "--cache-size", "8M", "--json"]
    alone = replay(*common)
    scan = ["--trace", "scan:blocks=20000,requests=200000", "--vdisk", "B"]
    shared = replay(*common, *scan)
    grouped = replay(*common, *scan, "--group", "gold:priority=10,min=50%,max=100%",
                     "--group", "bulk:priority=0,min=5%,max=100%",
                     "--assign", "A=gold", "--assign", "B=bulk")
    a = alone["vdisks"]["A"]["hit_ratio"]
    assert grouped["vdisks"]["A"]["hit_ratio"] > a - 0.05
    assert grouped["vdisks"]["A"]["hit_ratio"] > shared["vdisks"]["A"]["hit_ratio"]
    assert grouped["groups"]["bulk"]["cached_blocks"] <= 0.06 * grouped["cache_blocks"] + 1


def test_write_trace_round_trips(tmp_path):
    f = tmp_path / "z.oracleGeneral.bin"
    a = replay("--synthetic", "zipf:alpha=0.8,blocks=5000,requests=20000", "--cache-size",
               "0.1", "--write-trace", str(f), "--json")
    b = replay("--trace", str(f), "--cache-size", "0.1", "--json")
    assert a["miss_ratio"] == b["miss_ratio"] and a["requests"] == b["requests"]


def test_compare_runs_libcachesim():
    pytest.importorskip("libcachesim")
    out = replay("--synthetic", "zipf:alpha=1.0,blocks=20000,requests=100000",
                 "--cache-size", "0.1", "--compare", "--json")
    assert set(out["compare"]) == {"S3FIFO", "LRU", "ARC", "Sieve"}
    assert abs(out["compare"]["S3FIFO"]["miss_ratio"] - out["miss_ratio"]) < 0.005


def _bad(tmp_path, name, data):
    f = tmp_path / name
    f.write_bytes(data)
    return str(f)


def _rec(n):
    r = np.zeros(n, ORACLE_DTYPE)
    r["obj_id"] = np.arange(n)
    r["time"] = np.arange(n)
    return r.tobytes()


@pytest.mark.parametrize("make,message", [
    (lambda t: ["--trace", _bad(t, "x.oracleGeneral.bin", _rec(10)[:-5])], "truncated"),
    (lambda t: ["--trace", _bad(t, "x.vscsi", b"\x07" * 96)], "not a vscsi"),
    (lambda t: ["--trace", _bad(t, "x.vscsi",
                                (TRACES / "cloudPhysicsIO.vscsi").read_bytes()[:1000])],
     "truncated"),
    (lambda t: ["--trace", _bad(t, "x.csv", b"version,time,op,size,lbn\n1,2,2a,512\n")],
     "expected 5 fields"),
    (lambda t: ["--trace", _bad(t, "x.csv", b"version,time,op,size,lbn\n1,2,zz,512,7\n")],
     "malformed"),
    (lambda t: ["--trace", _bad(t, "x.csv", b"\x00\xff\xfe garbage")], "CSV"),
    (lambda t: ["--trace", str(t / "missing.csv")], "No such file"),
    (lambda t: ["--trace", _bad(t, "x.oracleGeneral.bin", b"")], "empty"),
    (lambda t: ["--synthetic", "scan:blocks=10,requests=10", "--group", "g:min=60%,max=50%"],
     "above max"),
    (lambda t: ["--synthetic", "scan:blocks=10,requests=10", "--group", "g:min=60%",
                "--group", "h:min=50%"], "over 100%"),
    (lambda t: ["--synthetic", "scan:blocks=10,requests=10", "--vdisk", "A", "--group", "g",
                "--assign", "B=g"], "unknown vdisk"),
    (lambda t: ["--synthetic", "scan:blocks=10,requests=10", "--group", "g:speed=3"],
     "unknown key"),
    (lambda t: ["--synthetic", "scan:blocks=10,requests=10", "--cache-size", "2.5"], "fraction"),
    (lambda t: ["--synthetic", "zipf:alpha=1,blocks=10"], "requests"),
    (lambda t: ["--synthetic", "scan:blocks=10,requests=10", "--block-size", "1000"],
     "power of two"),
    (lambda t: ["--synthetic", "scan:blocks=10,requests=10", "--nonsense"], "unrecognized"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, make, message):
    if "cloudPhysicsIO" in message or not TRACES.exists():
        need_traces()
    try:
        args = make(tmp_path)
    except FileNotFoundError:
        pytest.skip("shared traces not present")
    p = replay(*args, "--json", ok=False)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], p.stderr
