"""QoS on a live ``vmblock serve`` driven by qemu-io, one process and with worker processes:
``vm set`` and ``vdisk set`` apply to the running sessions, a limited VM's commands wait (the wait counted
in the ``queue`` part of its latency split, an unlimited VM's not at all), clearing it
releases them. What is checked are counts and the presence of the wait, never a rate: the
rates are measured by tools/bench_qos.py."""

from __future__ import annotations

import shutil
import time

import pytest
from support import clients
from support.clients import cli_json as js
from support.iscsi_client import IscsiClient, tur
from support.server import run_cli
from support.waiting import until

from vmblock import DEFAULT_TARGET

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"),
                                reason="needs qemu-io (qemu-utils, qemu-block-extra)")

READS = 20          # at 50 IOPS the last waits 0.4 s: the test takes a second or so


def vm_row(report: dict, name: str) -> dict:
    return next(r for r in report["vms"] if r["name"] == name)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_limit_applies_live_and_its_wait_counts_as_queue(tmp_path, start_server, workers):
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", str(workers))
    s = start_server(pool=pool)
    urls = {}
    for vm in ("slow", "free"):
        s.cli("vm", "create", vm)
        s.cli("vdisk", "create", f"{vm}-0", "--size", "64M", "--vm", vm)
        urls[vm] = js(s, "vdisk", "show", f"{vm}-0")["url"]
    shown = js(s, "vm", "set", "slow", "--max-iops", "50")
    assert shown["qos"] == {"max_iops": 50}
    reads = [f"read {i * 4096} 4k" for i in range(READS)]
    for vm in ("slow", "free"):
        clients.qemu_io(urls[vm], *reads, cache="none")
    report = js(s, "stats")
    slow, free = vm_row(report, "slow"), vm_row(report, "free")
    assert slow["read_ops"] == free["read_ops"] == READS      # every command answered
    # qemu-io sends one at a time: each after the first waits for its limit tag
    assert slow["latency_split_us"]["queue"] > 0
    assert free["latency_split_us"]["queue"] == 0
    s.cli("vm", "set", "slow", "--max-iops", "none")
    assert js(s, "vm", "show", "slow")["qos"] == {}
    clients.qemu_io(urls["slow"], *reads, cache="none")
    assert vm_row(js(s, "stats"), "slow")["read_ops"] == 2 * READS
    # a vdisk's own QoS applies live too: the unlimited VM's vdisk now waits
    assert js(s, "vdisk", "set", "free-0", "--max-iops", "50")["qos"] == {"max_iops": 50}
    clients.qemu_io(urls["free"], *reads, cache="none")
    free = vm_row(js(s, "stats"), "free")
    assert free["read_ops"] == 2 * READS and free["latency_split_us"]["queue"] > 0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 2])
def test_qos_throttled_is_recorded_once_for_a_vm_held_at_its_limit(tmp_path, start_server,
                                                                    workers):
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", str(workers))
    run_cli(pool, "config", "set", "qos.throttled_after", "1")
    s = start_server(pool=pool)
    s.cli("vm", "create", "slow")
    s.cli("vdisk", "create", "slow-0", "--size", "64M", "--vm", "slow")
    url = js(s, "vdisk", "show", "slow-0")["url"]
    s.cli("vm", "set", "slow", "--max-iops", "20")
    # 60 commands at 20 a second: held at the limit for 3 s whatever the machine's load
    clients.qemu_io(url, *[f"read {i * 4096} 4k" for i in range(60)], cache="none")
    deadline = time.monotonic() + 30     # the server checks once a second
    while True:
        events = js(s, "events", "--kind", "qos_throttled")
        if events or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(events) == 1, events
    ev = events[0]
    assert (ev["vm"], ev["severity"], ev["max_iops"]) == ("slow", "info", 20)
    assert "raise its limit" in ev["advice"]


def _session(server, n: int) -> IscsiClient:
    """A raw session of its own initiator on the default target (which serves every VM's
    vdisk), its power-on unit attention taken: it stays open, so its worker is known."""
    c = IscsiClient(server.host, server.port)
    assert c.login(DEFAULT_TARGET, initiator=f"iqn.2026-11.io.vmblock.test:qos-{n}",
                   chap=server.chap()).login_status == 0
    while c.scsi(tur()).status:
        pass
    return c


def _log_out(sessions: list[IscsiClient]) -> None:
    for c in sessions:
        c.logout()
        c.close()


def _workers_of(server, *sessions: IscsiClient) -> list[int]:
    """The worker index of each session, once every one is in a worker."""
    def where():
        out = {s["tsih"]: conn["worker"] for s in js(server, "session", "list")
               for conn in s["connections"] if "worker" in conn}
        return all(c.tsih in out for c in sessions) and [out[c.tsih] for c in sessions]
    return until("the sessions in workers", where)


@pytest.mark.timeout(180)
def test_with_shares_set_every_vm_session_goes_to_one_worker(tmp_path, start_server):
    """Shares and reservations are scheduled per process: while some VM has them, sessions
    serving VM LUs are placed in one worker, so their flows compete in one scheduler; sessions
    placed before are spread, which the server logs; without them, sessions spread again."""
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", "2")
    s = start_server(pool=pool)
    for vm in ("s1", "s2"):
        s.cli("vm", "create", vm)
        s.cli("vdisk", "create", f"{vm}-0", "--size", "16M", "--vm", vm)
    first = [_session(s, n) for n in range(2)]
    assert sorted(_workers_of(s, *first)) == [0, 1]         # least loaded: one each
    s.cli("vm", "set", "s1", "--shares", "3")
    until("the warning about sessions placed before", lambda: "scheduled per worker" in s.log())
    _log_out(first)
    pinned = [_session(s, n) for n in range(2, 5)]
    assert _workers_of(s, *pinned) == [0, 0, 0]
    _log_out(pinned)
    s.cli("vm", "set", "s1", "--shares", "none")
    s.cli("vm", "set", "s2", "--max-iops", "100000")        # a limit alone is shared: no pin
    until("the sessions gone", lambda: not js(s, "session", "list"))
    spread = [_session(s, n) for n in range(5, 7)]
    assert sorted(_workers_of(s, *spread)) == [0, 1]
    _log_out(spread)
