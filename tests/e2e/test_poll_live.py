"""``iscsi.poll_window`` on a live server, set while it runs: an initiator at queue depth 1
finds the serving process awake (polling), not asleep in ``epoll_wait``, and a window of 0
puts it back to sleeping between commands. Measured by the serving thread's voluntary context
switches, which a process polls without making: one per command asleep, next to none awake.

The initiator waits ``GAP_MS`` after each answer before it sends the next command, so that a
server that does not poll has always gone to sleep by then: back to back, a fast client's
next command is often there before the server is back in ``epoll_wait``, and it then does
not sleep whether it polls or not. The windows are far from that gap (0 and 10 ms against
2 ms), and the server runs with ``NEVER_TAKEN_ENV``: a process that polls gives its CPU up for a while when
a yield lets another process run there, which a busy machine (or a client on the same CPU)
makes it do at any time; that rule is tested in tests/iscsi/test_idle_poll.py, this one
tests that the process polls, whatever else runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from support.server import run_cli
from vmblock.iscsi.poll import NEVER_TAKEN_ENV

COMMANDS = 200
GAP_MS = 2


def voluntary_switches(tid: int) -> int:
    status = Path(f"/proc/{tid}/task/{tid}/status").read_text()
    return int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))


def serving_thread(server, workers: int) -> int:
    """The thread that runs the session's commands: the server's main thread, or its one
    worker's."""
    if not workers:
        return server.proc.pid
    task = Path(f"/proc/{server.proc.pid}/task")
    kids = [int(p) for t in task.iterdir() for p in (t / "children").read_text().split()]
    assert len(kids) == 1, kids
    return kids[0]


def switches_per_command(server, tid: int) -> float:
    """qemu-io reads COMMANDS times 4 KiB at queue depth 1 (one session), GAP_MS apart; the
    serving thread's voluntary context switches per command meanwhile."""
    script = []
    for n in range(COMMANDS):
        script += ["-c", f"read {n * 4096} 4k", "-c", f"sleep {GAP_MS}"]
    before = voluntary_switches(tid)
    subprocess.run(["qemu-io", "-f", "raw", "-t", "none", *script, server.url()],
                   check=True, capture_output=True, timeout=120)
    return (voluntary_switches(tid) - before) / COMMANDS


@pytest.mark.parametrize("workers", [0, 1])
def test_poll_window_keeps_the_serving_process_awake_between_qd1_commands(tmp_path, start_server,
                                                                          monkeypatch, workers):
    monkeypatch.setenv(NEVER_TAKEN_ENV, "1")    # the server and its workers inherit it
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", str(workers))
    run_cli(pool, "config", "set", "iscsi.poll_window", "0")
    server = start_server(pool=pool)
    tid = serving_thread(server, workers)
    asleep = switches_per_command(server, tid)
    server.cli("config", "set", "iscsi.poll_window", "10ms")     # live, to the worker too
    awake = switches_per_command(server, tid)
    server.cli("config", "set", "iscsi.poll_window", "0")
    asleep_again = switches_per_command(server, tid)
    assert asleep >= 0.5 and asleep_again >= 0.5, (asleep, asleep_again)
    assert awake < min(asleep, asleep_again) / 3, (asleep, awake, asleep_again)
