"""Golden miss counts on the committed CloudPhysics trace (../shared/traces/).

The numbers were produced by this cache (S3-FIFO defaults, 4 KiB blocks) and agree with
libcachesim's S3FIFO on the same block stream to within 0.0002 of miss ratio (see
docs/benchmarks.md). A change to any of them is a change of algorithm and must be explained.
"""

from pathlib import Path

import numpy as np
import pytest

from vmblock.cache import CacheDirectory
from vmblock.cache.trace import read_trace

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"
CP = "cloudPhysicsIO"

# (file suffix, cache blocks) -> (block accesses, read misses, write misses)
GOLDEN = {
    ("csv", 2692): (1141869, 450192, 570620),
    ("csv", 26921): (1141869, 407381, 528025),
    ("vscsi", 2692): (1141869, 450192, 570620),
    ("vscsi", 26921): (1141869, 407381, 528025),
    ("oracleGeneral.bin", 489): (113872, 94569, 0),
    ("oracleGeneral.bin", 4897): (113872, 86006, 0),
}


@pytest.mark.parametrize("suffix,nslots", sorted(GOLDEN))
def test_golden_miss_counts(suffix, nslots):
    path = TRACES / f"{CP}.{suffix}"
    if not path.exists():
        pytest.skip(f"{path} not present")
    b = read_trace(str(path), 4096)
    d = CacheDirectory(nslots, block_size=4096)
    hits = d.access(b.block, np.zeros(len(b), np.int32), b.is_write)
    requests, read_misses, write_misses = GOLDEN[(suffix, nslots)]
    assert len(b) == requests
    assert int(d.vd_cnt[0, 2]) == read_misses
    assert int(d.vd_cnt[0, 3]) == write_misses
    assert int((~hits).sum()) == read_misses + write_misses


def test_csv_and_vscsi_give_the_same_blocks():
    if not (TRACES / f"{CP}.csv").exists():
        pytest.skip("traces not present")
    a = read_trace(str(TRACES / f"{CP}.csv"), 4096)
    b = read_trace(str(TRACES / f"{CP}.vscsi"), 4096)
    assert np.array_equal(a.block, b.block)
    assert np.array_equal(a.is_write, b.is_write)
