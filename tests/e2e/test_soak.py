"""tools/soak as a test: many sessions against a real server, every read verified, RSS bounded.

The full soak (64 initiators x 4 LUNs = 256 sessions, QD4 each) runs for a minute and is marked
slow (``tools/test.sh -m slow``). The fast cases pin the tool's own verification: a clean short
run passes, and a read whose data the ``--corrupt-read`` hook damages is reported (the hook
counts reads, so which read is damaged does not depend on timing; the final read-back of every
region makes sure that read happens).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "soak"


def run_soak(tmp_path, timeout: float, *args: str) -> tuple[int, str, dict]:
    """Run the tool; (exit status, its output, its JSON summary)."""
    p = subprocess.run([sys.executable, str(TOOL), "--workdir", str(tmp_path / "soak"), *args],
                       capture_output=True, text=True, timeout=timeout)
    lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no summary:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p.returncode, p.stdout + p.stderr, json.loads(lines[-1])


@pytest.mark.timeout(120)
def test_soak_short_run_verifies_every_read(tmp_path):
    rc, out, summary = run_soak(tmp_path, 100, "--initiators", "2", "--luns", "2",
                                "--minutes", "0")
    assert rc == 0, out
    assert summary["sessions"] == 4
    assert summary["mismatches"] == 0 and summary["errors"] == 0
    # the fill writes and the final read-back cover every region: 4 x 1 MiB
    assert summary["verified_mib"] >= 4
    assert summary["reads"] > 0 and summary["writes"] > 0


@pytest.mark.timeout(120)
def test_soak_catches_a_corrupted_read(tmp_path):
    rc, out, summary = run_soak(tmp_path, 100, "--initiators", "2", "--luns", "2",
                                "--minutes", "0", "--corrupt-read", "3")
    assert rc == 1, out
    assert summary["mismatches"] == 1, out
    assert "FAIL: LUN" in out and "not what was last written" in out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak_256_sessions_for_a_minute(tmp_path):
    rc, out, summary = run_soak(tmp_path, 800, "--minutes", "1")
    assert rc == 0, out
    assert summary["sessions"] == 256
    assert summary["mismatches"] == 0 and summary["errors"] == 0
    assert summary["rss_peak_mib"] <= 1024
