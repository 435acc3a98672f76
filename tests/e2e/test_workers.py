"""Worker processes (``server.workers 2``) against a live ``vmblock serve``: sessions placed
on different workers share one target (data, persistent reservations, LUN reset unit
attentions), a worker killed with SIGKILL loses no acknowledged write and is started again,
the owner killed with SIGKILL leaves no worker behind, SIGTERM stops them all cleanly.

The raw initiator (``support.iscsi_client``) holds sessions open, so which worker runs each is
known from ``session list --json``; qemu-io checks the data with a real initiator. Every wait
is a bounded poll for a state, never a sleep that a race could beat.
"""

from __future__ import annotations

import os
import re
import signal
import struct
from pathlib import Path

import pytest

from support.clients import cli_json, qemu_io
from support.iscsi_client import IscsiClient, read10, tur, write10
from support.server import run_cli
from support.waiting import until
from vmblock import DEFAULT_TARGET
from vmblock.iscsi import pdu
from vmblock.settings import auto_workers
from vmblock.worker.publish import HOOK_ENV

pytestmark = pytest.mark.timeout(120)

WORKERS = 2
A_INITIATOR = "iqn.2026-11.io.vmblock.test:worker-a"
B_INITIATOR = "iqn.2026-11.io.vmblock.test:worker-b"
BLOCK = 512
# SPC-4 6.16 / 6.17: PERSISTENT RESERVE IN / OUT, their service actions, WRITE EXCLUSIVE
PR_IN, READ_KEYS = 0x5E, 0x00
PR_OUT, REGISTER, RESERVE, RELEASE, WRITE_EXCLUSIVE = 0x5F, 0x00, 0x01, 0x02, 0x01
GOOD, CHECK_CONDITION, RESERVATION_CONFLICT = 0x00, 0x02, 0x18
UNIT_ATTENTION = 0x6
LUN_RESET = 5               # RFC 7143 11.5.1
RESERVE_6 = bytes([0x16, 0, 0, 0, 0, 0])     # SPC-2 7.21
FUA = 0x08                  # SBC-3 WRITE(10) byte 1


@pytest.fixture
def workers_server(tmp_path, start_server):
    """A server with ``server.workers 2`` on a new pool."""
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", str(WORKERS))
    return start_server(pool=pool)




def login(server, initiator: str) -> IscsiClient:
    """A session of ``initiator`` whose power-on unit attention is taken."""
    c = IscsiClient(server.host, server.port)
    assert c.login(DEFAULT_TARGET, initiator=initiator, chap=server.chap()).login_status == 0
    while c.scsi(tur()).status != GOOD:
        pass
    return c


def placement(server) -> dict[int, tuple[int, int]]:
    """TSIH -> (worker index, worker pid) of every session already handed to a worker."""
    out = {}
    for s in cli_json(server, "session", "list"):
        for conn in s["connections"]:
            if "worker" in conn:
                out[s["tsih"]] = (conn["worker"], conn["worker_pid"])
    return out


def placed(server, *clients: IscsiClient) -> list[tuple[int, int]]:
    """(worker index, pid) of each client's session, once every one is in a worker."""
    where = until("the sessions in workers",
                     lambda: (p := placement(server)) and all(c.tsih in p for c in clients) and p)
    return [where[c.tsih] for c in clients]


def pattern(seed: int, blocks: int) -> bytes:
    """``blocks`` blocks of bytes counting up from ``seed``."""
    return bytes((seed + i) & 0xFF for i in range(blocks * BLOCK))


def pr_out(action: int, key: int, sa_key: int = 0, rtype: int = 0) -> tuple[bytes, bytes]:
    """PERSISTENT RESERVE OUT CDB and its 24-byte parameter list (SPC-4 6.17.3)."""
    params = struct.pack(">QQ8x", key, sa_key)
    return struct.pack(">BBBxxIB", PR_OUT, action, rtype, len(params), 0), params


def read_keys(c: IscsiClient) -> list[int]:
    """The registered keys, by PERSISTENT RESERVE IN READ KEYS (SPC-4 6.16.2)."""
    r = c.scsi(struct.pack(">BB5xHB", PR_IN, READ_KEYS, 1024, 0), read_len=1024)
    assert r.status == GOOD
    n = struct.unpack_from(">I", r.data, 4)[0]
    return [struct.unpack_from(">Q", r.data, 8 + i)[0] for i in range(0, n, 8)]


def sense_key_asc(result) -> tuple[int, int, int]:
    """(sense key, ASC, ASCQ) of fixed-format sense data."""
    s = result.sense
    return s[2] & 0x0F, s[12], s[13]


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s children (/proc, every thread's list)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="auto means no workers on one CPU")
@pytest.mark.parametrize("cache", ["0", "50%"])
def test_workers_auto_runs_none_while_the_flash_cache_is_on(tmp_path, start_server, cache):
    """With the cache on every command would go to the owner's cache: ``auto`` starts no
    worker then (docs/benchmarks.md, "Workers and the flash cache"), and one per CPU without
    it; the sessions are served either way."""
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", "auto")
    run_cli(pool, "config", "set", "cache.size", cache)
    server = start_server(pool=pool)
    expected = 0 if cache != "0" else auto_workers()
    assert len(children(server.proc.pid)) == expected
    assert ("the flash cache is on" in server.log()) == (cache != "0")
    qemu_io(server.url(), "write -P 0x3c 0 64k", "read -P 0x3c 0 64k")


def session_tasks(server, tsih: int) -> int:
    """``session list --json``'s task count of session ``tsih``."""
    return next(s["tasks"] for s in cli_json(server, "session", "list") if s["tsih"] == tsih)


def test_session_list_counts_the_tasks_a_worker_holds(workers_server):
    """A WRITE waiting for its Data-Out (R2T sent) is outstanding in the worker that runs its
    session, and ``session list`` says so, as it does for a session in the owner."""
    c = login(workers_server, A_INITIATOR)
    with c:
        placed(workers_server, c)
        assert session_tasks(workers_server, c.tsih) == 0
        data = pattern(3, 8)
        itt = c.next_itt()
        c.send_pdu(pdu.build_scsi_cmd(pdu.FLAG_FINAL | pdu.CMD_FLAG_WRITE | 1, pdu.encode_lun(0),
                                      itt, len(data), c.cmdsn, c.exp_statsn, write10(40, 8),
                                      dlen=0))
        c.cmdsn += 1
        r2t = c.recv_skip_nops()
        assert r2t.opcode == pdu.Opcode.R2T and r2t.itt == itt
        assert session_tasks(workers_server, c.tsih) == 1
        c.send_pdu(pdu.build_initiator_pdu(
            pdu.Opcode.DATA_OUT, pdu.FLAG_FINAL, dlen=len(data), lun=pdu.encode_lun(0), itt=itt,
            words=(r2t.ttt, 0, c.exp_statsn, 0, 0, 0, 0)), data)
        rsp = c.recv_skip_nops()
        assert rsp.opcode == pdu.Opcode.SCSI_RSP and rsp.b3 == GOOD
        c.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
        assert session_tasks(workers_server, c.tsih) == 0
        assert c.scsi(read10(40, 8), read_len=len(data)).data == data


def test_data_written_in_one_worker_reads_back_in_the_other(workers_server):
    a, b = login(workers_server, A_INITIATOR), login(workers_server, B_INITIATOR)
    with a, b:
        (wa, _), (wb, _) = placed(workers_server, a, b)
        assert wa != wb
        data = pattern(7, 64)
        assert a.scsi(write10(100, 64), write=data).status == GOOD
        r = b.scsi(read10(100, 64), read_len=len(data))
        assert r.status == GOOD and r.data == data
        assert a.scsi(write10(300, 8), write=b"\x5a" * 8 * BLOCK).status == GOOD
    # and a real initiator, logged in after them, reads it too
    out = qemu_io(workers_server.url(), f"read -P 0x5a {300 * BLOCK} {8 * BLOCK}")
    assert "read 4096/4096" in out


def test_persistent_reservation_holds_across_workers(workers_server):
    a, b = login(workers_server, A_INITIATOR), login(workers_server, B_INITIATOR)
    with a, b:
        (wa, _), (wb, _) = placed(workers_server, a, b)
        assert wa != wb
        for action, rtype in ((REGISTER, 0), (RESERVE, WRITE_EXCLUSIVE)):
            cdb, params = pr_out(action, 0xA if action != REGISTER else 0,
                                 0xA if action == REGISTER else 0, rtype)
            assert a.scsi(cdb, write=params).status == GOOD
        assert read_keys(b) == [0xA]
        one = pattern(3, 1)
        assert b.scsi(write10(5, 1), write=one).status == RESERVATION_CONFLICT
        assert b.scsi(read10(5, 1), read_len=BLOCK).status == GOOD    # WRITE EXCLUSIVE
        assert a.scsi(write10(5, 1), write=one).status == GOOD
        cdb, params = pr_out(RELEASE, 0xA, rtype=WRITE_EXCLUSIVE)
        assert a.scsi(cdb, write=params).status == GOOD
        assert b.scsi(write10(5, 1), write=one).status == GOOD


def test_lun_reset_in_one_worker_is_a_unit_attention_in_the_other(workers_server):
    a, b = login(workers_server, A_INITIATOR), login(workers_server, B_INITIATOR)
    with a, b:
        (wa, _), (wb, _) = placed(workers_server, a, b)
        assert wa != wb
        assert a.tmf(LUN_RESET, lun=0).b2 == 0            # function complete
        r = b.scsi(tur())
        assert r.status == CHECK_CONDITION
        assert sense_key_asc(r) == (UNIT_ATTENTION, 0x29, 0x03)   # BUS DEVICE RESET OCCURRED
        assert b.scsi(tur()).status == GOOD


def test_logout_in_a_worker_ends_the_nexus_in_the_owner(workers_server):
    a, b = login(workers_server, A_INITIATOR), login(workers_server, B_INITIATOR)
    with b:
        placed(workers_server, a, b)
        assert a.scsi(RESERVE_6).status == GOOD
        assert b.scsi(write10(9, 1), write=pattern(1, 1)).status == RESERVATION_CONFLICT
        assert a.logout().opcode == pdu.Opcode.LOGOUT_RSP
        a.close()
        # I_T nexus loss releases the RESERVE(6) reservation (SPC-4 5.9.3)
        until("the session gone", lambda: a.tsih not in placement(workers_server))
        assert b.scsi(write10(9, 1), write=pattern(1, 1)).status == GOOD


def test_connection_reinstatement_in_a_worker_keeps_the_session(tmp_path, start_server,
                                                                 monkeypatch):
    """RFC 7143 6.3.4: a login naming the session's TSIH and CID replaces that connection.
    The old connection's CLOSED carries its handoff serial: arriving after the new one (same
    TSIH and CID) was handed over, it must not end the session in the owner (it did: the
    session vanished from ``session list`` and forwarded commands were answered as gone).
    The test-only hook file ``hold-closed`` makes that order certain: the worker sends the
    old connection's CLOSED only once it has taken the new one."""
    hook = tmp_path / "hook"
    hook.mkdir()
    monkeypatch.setenv(HOOK_ENV, str(hook))
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", str(WORKERS))
    server = start_server(pool=pool)
    old = login(server, A_INITIATOR)
    placed(server, old)
    (hook / "hold-closed").touch()
    with old, IscsiClient(server.host, server.port) as new:
        new.isid, new.tsih = old.isid, old.tsih
        assert new.login(DEFAULT_TARGET, initiator=A_INITIATOR,
                         chap=server.chap()).login_status == 0
        assert new.tsih == old.tsih
        assert old.closed_by_peer(timeout=5)
        placed(server, new)
        (hook / "hold-closed").unlink()
        # a forwarded command: behind the old connection's CLOSED when both are one worker's
        assert new.scsi(tur()).status == GOOD
        assert new.scsi(write10(3, 1), write=pattern(3, 1)).status == GOOD
        live = [s for s in cli_json(server, "session", "list") if s["type"] == "normal"]
        assert [(s["tsih"], len(s["connections"])) for s in live] == [(old.tsih, 1)]
        assert new.logout().opcode == pdu.Opcode.LOGOUT_RSP
    until("the session gone", lambda: not cli_json(server, "session", "list"))


def test_killed_worker_loses_no_acknowledged_write_and_comes_back(workers_server):
    a, b = login(workers_server, A_INITIATOR), login(workers_server, B_INITIATOR)
    (wa, pid_a), _ = placed(workers_server, a, b)
    assert a.scsi(RESERVE_6).status == GOOD         # released when the worker's nexus goes
    written = {}
    for i in range(16):                  # FUA: each GOOD is a durable write
        data = pattern(i * 11, 8)
        cdb = bytearray(write10(1000 + 8 * i, 8))
        cdb[1] |= FUA
        assert a.scsi(bytes(cdb), write=data).status == GOOD
        written[1000 + 8 * i] = data
    os.kill(pid_a, signal.SIGKILL)
    assert a.closed_by_peer()
    a.close()
    # the owner ends the session, starts the worker again, and a new session reads it all
    until("the killed worker's session gone", lambda: a.tsih not in placement(workers_server))
    until("the worker started again", lambda: re.search(
        rf"worker {wa} ready: pid (?!{pid_a}\b)\d+", workers_server.log()))
    assert b.scsi(write10(9, 1), write=pattern(1, 1)).status == GOOD
    with b, login(workers_server, A_INITIATOR) as c:
        (wc, pid_c), = placed(workers_server, c)
        assert (wc, pid_c != pid_a) == (wa, True)      # the least loaded: the new worker
        for lba, data in written.items():
            for reader in (b, c):
                r = reader.scsi(read10(lba, 8), read_len=len(data))
                assert r.status == GOOD and r.data == data


def test_owner_killed_leaves_no_worker(workers_server):
    workers = children(workers_server.proc.pid)
    assert len(workers) == WORKERS
    workers_server.proc.send_signal(signal.SIGKILL)
    workers_server.proc.wait()
    until("the workers gone", lambda: not any(alive(p) for p in workers))


def test_sigterm_stops_owner_and_workers(workers_server):
    a = login(workers_server, A_INITIATOR)
    with a:
        placed(workers_server, a)
        workers = children(workers_server.proc.pid)
        assert workers_server.stop() == 0
        assert a.closed_by_peer()
    assert not any(alive(p) for p in workers)
    assert "Traceback" not in workers_server.log()
