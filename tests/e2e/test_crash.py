"""tools/crashtest as a test: a real server SIGKILLed under qemu-io -t directsync writers.

A few cycles run with the default selection; the full 50 are marked slow
(``tools/test.sh -m slow``). The tool checks every completed write after each restart, that
no sector of one VM holds the other's pattern, and ``vmblock pool check`` after every kill
(offline) and through every restarted server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "crashtest"

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"), reason="needs qemu-io")


def run_crashtest(tmp_path, cycles: int, seed: int, timeout: float, *extra: str):
    p = subprocess.run([sys.executable, str(TOOL), "--cycles", str(cycles), "--seed",
                        str(seed), "--pool", str(tmp_path / "crash"), *extra],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    assert "PASS" in p.stdout
    return p.stdout


@pytest.mark.timeout(240)
def test_a_few_sigkill_cycles_lose_no_completed_write(tmp_path):
    out = run_crashtest(tmp_path, cycles=4, seed=4, timeout=220)
    assert "cycle 4/4" in out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fifty_sigkill_cycles_lose_no_completed_write(tmp_path):
    out = run_crashtest(tmp_path, cycles=50, seed=50, timeout=1750)
    assert "cycle 50/50" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")
@pytest.mark.timeout(300)
def test_full_file_system_cycles_lose_nothing_and_recover_without_restart(tmp_path):
    """``--fault enospc``: the pool's tmpfs is filled while the writers run; writes fail, then
    (in the cycles not killed during the fault) complete again once space is back."""
    out = run_crashtest(tmp_path, 4, 7, 280, "--fault", "enospc")
    assert "cycle 4/4" in out
    m = re.search(r"(\d+) faults \((\d+) recovered without a restart", out)
    assert m and int(m.group(2)) > 0, out[-2000:]


@pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse (faultfs)")
@pytest.mark.timeout(300)
def test_failing_disk_cycles_lose_nothing_and_recover_without_restart(tmp_path):
    """``--fault eio``: the pool on faultfs; the capacity tier's writes or syncs, or the meta
    DB's writes, fail with EIO for a while; completed writes survive every kill."""
    out = run_crashtest(tmp_path, 4, 3, 280, "--fault", "eio")
    assert "cycle 4/4" in out
    m = re.search(r"(\d+) faults \((\d+) recovered without a restart", out)
    assert m and int(m.group(2)) > 0, out[-2000:]
