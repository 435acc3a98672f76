"""The fabric under hostile initiators, against a live ``vmblock serve``: answers that must be
split, connections that never log in, and sessions that try to pin the server's memory.

Every wait is bounded and waits for an event (a PDU, a close), never for time to pass.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess

import pytest

from support.server import VmblockServer
from support.iscsi_client import INITIATOR, IscsiClient, inquiry, read10, text_bytes, tur, write10
from vmblock import DEFAULT_TARGET
from vmblock.iscsi import pdu

pytestmark = pytest.mark.timeout(120)

LOGIN_MRDSL = 8192                  # RFC 7143 13.12: Login PDUs carry at most this much text


# ---- a login answer longer than a Login PDU may carry ----------------------------------------
def test_login_answer_longer_than_8192_bytes_comes_in_continued_responses(start_server):
    """1000 unknown keys each get NotUnderstood: ~38 KB of answer. RFC 7143 11.13.3: it comes
    in Login Responses of at most 8192 bytes, C set and T clear on all but the last; the
    initiator asks for each next piece with an empty Login Request; the login then completes.
    (``--insecure``: the exchange is written without a security stage.)"""
    s = start_server("--insecure")
    with IscsiClient(s.host, s.port) as c:
        rsp = c.login_exchange({"InitiatorName": INITIATOR, "SessionType": "Normal",
                                "TargetName": DEFAULT_TARGET, "AuthMethod": "None"}, 0, 1)
        assert rsp.login_status == 0 and rsp.flags & pdu.LOGIN_FLAG_TRANSIT
        unknown = [(f"X-vmblock-test-unknown-{i:04d}", "1") for i in range(1000)]
        ops = [("HeaderDigest", "None"), ("DataDigest", "None"), ("ErrorRecoveryLevel", "2"),
               ("MaxRecvDataSegmentLength", "262144")] + unknown
        request = text_bytes(ops)
        assert len(request) > LOGIN_MRDSL
        pieces = [request[i:i + 4096] for i in range(0, len(request), 4096)]
        for piece in pieces[:-1]:            # the request goes in pieces too (C bit)
            c.login_pdu(None, 1, 3, transit=False, cont=True, raw=piece)
            rsp = c.recv_pdu()
            assert rsp.opcode == pdu.Opcode.LOGIN_RSP and rsp.login_status == 0 and rsp.dlen == 0
            c.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
        c.login_pdu(None, 1, 3, raw=pieces[-1])
        answers = []
        for _ in range(64):
            rsp = c.recv_pdu()
            assert rsp.opcode == pdu.Opcode.LOGIN_RSP and rsp.login_status == 0
            c.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
            assert rsp.dlen <= LOGIN_MRDSL, f"Login Response of {rsp.dlen} bytes"
            answers.append(rsp)
            if not rsp.flags & pdu.LOGIN_FLAG_CONTINUE:
                break
            assert not rsp.flags & pdu.LOGIN_FLAG_TRANSIT, "C and T set together"
            c.login_pdu(None, 1, 3, raw=b"")          # next piece, please
        assert len(answers) >= 5, [r.dlen for r in answers]
        last = answers[-1]
        assert last.flags & pdu.LOGIN_FLAG_TRANSIT and last.flags & 3 == 3
        body = b"".join(r.data for r in answers)
        pairs = dict(item.decode().split("=", 1) for item in body.split(b"\0") if item)
        assert all(pairs[k] == "NotUnderstood" for k, _ in unknown)
        assert pairs["ErrorRecoveryLevel"] == "0"      # asked for 2, the target offers only 0
        c.tsih, c.cmdsn = last.lun & 0xFFFF, last.exp_cmdsn
        assert b"VMBLOCK" in c.scsi(inquiry(), read_len=96).data
        c.scsi(tur())                                   # may report the power-on unit attention
        assert c.scsi(tur()).status == 0


# ---- connections that never log in ------------------------------------------------------------
def serve_with(tmp_path, start, **iscsi) -> VmblockServer:
    """A server whose [iscsi] table has ``iscsi`` (through ``serve --config``); ``--insecure``,
    as these tests are about limits, not authentication (a hostile initiator may well hold
    the credentials)."""
    cfg = tmp_path / "hostile.toml"
    cfg.write_text("[iscsi]\n" + "".join(f"{k} = {v!r}\n" for k, v in iscsi.items()))
    return start("--config", str(cfg), "--insecure")


def idle_connections(server, sources: list[str], each: int) -> list[socket.socket]:
    out = []
    for src in sources:
        for _ in range(each):
            out.append(socket.create_connection((server.host, server.port), timeout=30,
                                                source_address=(src, 0)))
    return out


def closed_by_server(sock: socket.socket, within: float = 0.0) -> bool:
    """Whether the server closes ``sock`` (it never sent anything on these) within ``within``
    seconds; 0: whether it has closed it already, without waiting."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except (BlockingIOError, TimeoutError):
        return False
    except ConnectionError:
        return True


def test_real_logins_succeed_while_hundreds_of_connections_never_log_in(tmp_path, start_server):
    """300 connections from ten addresses that never send a byte (the deadline for the first
    PDU is far off, so only the limits can make room): iscsi-inq logs in at once, 20 sessions
    log in and stay (more than the 16 slots for connections still logging in: logged-in
    sessions have headroom), and the server keeps at most 16 of the idle ones."""
    server = serve_with(tmp_path, start_server, max_connections=64, max_connections_per_host=24,
                        max_login_connections=16, first_pdu_timeout=600, login_timeout=600)
    idle = idle_connections(server, [f"127.0.0.{i}" for i in range(2, 12)], 30)
    try:
        p = subprocess.run(["iscsi-inq", server.url()], capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        assert p.returncode == 0 and "VMBLOCK" in p.stdout, p.stderr
        sessions = []
        try:
            for _ in range(20):
                c = IscsiClient(server.host, server.port)
                sessions.append(c)
                assert c.login(DEFAULT_TARGET).login_status == 0
            for c in sessions:
                assert c.nop().opcode == pdu.Opcode.NOP_IN
        finally:
            for c in sessions:
                c.close()
        still_open = sum(not closed_by_server(s) for s in idle)
        assert still_open <= 16, f"{still_open} connections that never logged in are kept"
    finally:
        for s in idle:
            s.close()


def test_connections_without_a_login_request_are_closed_at_the_first_pdu_deadline(tmp_path,
                                                                                  start_server):
    server = serve_with(tmp_path, start_server, first_pdu_timeout=1, login_timeout=600)
    idle = idle_connections(server, ["127.0.0.1"], 10)
    partial = socket.create_connection((server.host, server.port), timeout=30)
    partial.sendall(bytes([pdu.Opcode.LOGIN_REQ | 0x40]) + bytes(20))     # a third of a header
    try:
        for s in idle + [partial]:
            assert closed_by_server(s, within=60), "still open after the first-PDU deadline"
        with IscsiClient(server.host, server.port) as c:   # a prompt login is unaffected
            assert c.login(DEFAULT_TARGET).login_status == 0
            assert c.nop().opcode == pdu.Opcode.NOP_IN
    finally:
        for s in idle + [partial]:
            s.close()
    assert "no Login Request in iscsi.first_pdu_timeout" in server.log()


# ---- sessions that try to pin the server's memory --------------------------------------------
MiB = 1 << 20
DATA_BUDGET, DATA_BUDGET_PER_HOST = 32 * MiB, 16 * MiB
TARGET_MRDSL = 262144                   # the target's MaxRecvDataSegmentLength (its offer)
RECEIVE_BUFFER = 2 * (TARGET_MRDSL + 1080 + 65536)   # per logged-in connection (connection.py)
SLACK = 32 * MiB                        # interpreter, allocator and per-session objects
HOSTILE_SESSIONS = 8
WRITE_16, READ_CAPACITY_10 = 0x8A, 0x25


def memory_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, _, v in (line.partition(":") for line in f)
                if k in ("VmRSS", "VmHWM")}


def hostile_login(server) -> IscsiClient:
    c = IscsiClient(server.host, server.port, timeout=30)
    assert c.login(DEFAULT_TARGET, operational={
        "FirstBurstLength": "262144", "MaxBurstLength": "1048576", "InitialR2T": "No",
        "MaxRecvDataSegmentLength": "262144"}).login_status == 0
    c.scsi(tur())                       # takes the power-on unit attention of the new nexus
    return c


def send_cmd(c: IscsiClient, cdb: bytes, edtl: int, cmdsn: int, data: bytes = b"",
             write: bool = True) -> None:
    flags = pdu.FLAG_FINAL | 1 | (pdu.CMD_FLAG_WRITE if write else pdu.CMD_FLAG_READ)
    c.send_pdu(pdu.build_scsi_cmd(flags, 0, c.next_itt(), edtl, cmdsn, c.exp_statsn, cdb,
                                dlen=len(data)), data)


def synced(c: IscsiClient) -> None:
    """An immediate NOP-Out answered: the target has dealt with everything sent before it."""
    itt = c.next_itt()
    c.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.NOP_OUT, pdu.FLAG_FINAL, immediate=True, itt=itt,
                                     words=(pdu.RSVD_TAG, c.cmdsn, c.exp_statsn, 0, 0, 0, 0)))
    for _ in range(10000):
        rsp = c.recv_pdu()
        if rsp.opcode == pdu.Opcode.NOP_IN and rsp.itt == itt:
            return
    raise AssertionError("no NOP-In")


def test_hostile_sessions_cannot_grow_the_server_past_the_data_budget(tmp_path, start_server):
    """Eight sessions each park 127 out-of-order WRITEs with 256 KiB of immediate data (32 MiB
    asked), send six 8 MiB WRITE(16)s and never their Data-Out (48 MiB), and one more asks for
    sixty-four 8 MiB READs and never reads the answers (512 MiB): ~1.1 GiB of initiator data.
    The server's peak RSS stays within what it had before + iscsi.data_budget + a receive
    buffer per connection + slack, and a bystander from another address writes and reads."""
    server = serve_with(tmp_path, start_server, data_budget="32M", data_budget_per_host="16M",
                        FirstBurstLength=262144, MaxRecvDataSegmentLength=TARGET_MRDSL)
    pid = server.proc.pid
    pattern = os.urandom(MiB)
    with IscsiClient(server.host, server.port, source="127.0.0.2") as bystander:
        assert bystander.login(DEFAULT_TARGET).login_status == 0
        bystander.scsi(tur())
        block = int.from_bytes(bystander.scsi(bytes([READ_CAPACITY_10]) + bytes(9),
                                              read_len=8).data[4:8], "big")
        blocks = MiB // block
        assert bystander.scsi(write10(0, blocks), write=pattern).status == 0
        assert bystander.scsi(read10(0, blocks), read_len=MiB).data == pattern
        before = memory_kib(pid)["VmRSS"]
        hostile = []
        try:
            for i in range(HOSTILE_SESSIONS):
                c = hostile_login(server)
                hostile.append(c)
                big = 8 * MiB // block
                for n in range(6):                      # in order, Data-Out never sent
                    lba = (1 + i * 6 + n) * big
                    send_cmd(c, struct.pack(">BBQIBB", WRITE_16, 0, lba, big, 0, 0), 8 * MiB,
                             c.cmdsn)
                    c.cmdsn += 1
                gap = c.cmdsn                           # never sent: the rest waits for it
                imm = os.urandom(256 * 1024)
                for n in range(1, 128):
                    send_cmd(c, write10(n * 512, 256 * 1024 // block), 256 * 1024, gap + n, imm)
                synced(c)
            reader = hostile_login(server)
            hostile.append(reader)
            for n in range(64):                         # answers never read
                send_cmd(reader, read10(n * 16384, 8 * MiB // block), 8 * MiB, reader.cmdsn,
                         write=False)
                reader.cmdsn += 1
            # the bystander still writes and reads back
            other = os.urandom(MiB)
            assert bystander.scsi(write10(blocks, blocks), write=other).status == 0
            assert bystander.scsi(read10(blocks, blocks), read_len=MiB).data == other
            assert bystander.scsi(read10(0, blocks), read_len=MiB).data == pattern
            peak = memory_kib(pid)
        finally:
            for c in hostile:
                c.close()
    conns = HOSTILE_SESSIONS + 2
    bound = DATA_BUDGET + conns * RECEIVE_BUFFER + SLACK
    grown = max(peak["VmHWM"], peak["VmRSS"]) - before
    print(f"RSS before {before / MiB:.0f} MiB, peak {peak['VmHWM'] / MiB:.0f} MiB, "
          f"grew {grown / MiB:.0f} MiB, bound {bound / MiB:.0f} MiB")
    assert grown < bound, f"the server grew {grown / MiB:.0f} MiB (bound {bound / MiB:.0f} MiB)"


TASK_SET_FULL = 0x28
ABORT_TASK = 1


def block_size(c: IscsiClient) -> int:
    return int.from_bytes(c.scsi(bytes([READ_CAPACITY_10]) + bytes(9), read_len=8).data[4:8], "big")


def responses_until_synced(c: IscsiClient) -> list:
    """Every PDU the target sends before answering an immediate NOP-Out."""
    itt = c.next_itt()
    c.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.NOP_OUT, pdu.FLAG_FINAL, immediate=True, itt=itt,
                                     words=(pdu.RSVD_TAG, c.cmdsn, c.exp_statsn, 0, 0, 0, 0)))
    out = []
    while True:
        rsp = c.recv_pdu()
        if rsp.opcode == pdu.Opcode.NOP_IN and rsp.itt == itt:
            return out
        out.append(rsp)


def pin_host_budget(server, block: int) -> IscsiClient:
    """A session from 127.0.0.1 holding all of its address's 16 MiB: two 8 MiB WRITEs whose
    R2Ts it never answers."""
    c = hostile_login(server)
    big = 8 * MiB // block
    for n in range(2):
        send_cmd(c, write10(n * big, big), 8 * MiB, c.cmdsn)
        c.cmdsn += 1
    assert sum(r.opcode == pdu.Opcode.R2T for r in responses_until_synced(c)) == 2
    return c


def test_a_write_without_budget_waits_for_its_r2t_and_immediate_data_gets_task_set_full(
        tmp_path, start_server):
    server = serve_with(tmp_path, start_server, data_budget="32M", data_budget_per_host="16M",
                        FirstBurstLength=262144)
    with hostile_login(server) as c:
        block = block_size(c)
        pinner = pin_host_budget(server, block)
        try:
            # immediate data has nowhere to go: TASK SET FULL, the initiator may retry
            r = c.scsi(write10(0, 65536 // block), write=os.urandom(65536))
            assert r.status == TASK_SET_FULL and not r.sense
            # out of order beyond the budget: answered TASK SET FULL once the gap is filled
            send_cmd(c, write10(0, 65536 // block), 65536, c.cmdsn + 1, os.urandom(65536))
            assert responses_until_synced(c) == []
            assert c.scsi(tur()).status == 0             # fills the gap
            late = c.recv_pdu()
            assert late.opcode == pdu.Opcode.SCSI_RSP and late.b3 == TASK_SET_FULL
            c.cmdsn += 1
            # a WRITE without immediate data waits for budget: no R2T yet
            data = os.urandom(MiB)
            itt = c.itt + 1
            send_cmd(c, write10(64, MiB // block), MiB, c.cmdsn)
            c.cmdsn += 1
            assert responses_until_synced(c) == []
        finally:
            pinner.close()                               # gives its 16 MiB back
        sent = 0
        while True:
            rsp = c.recv_pdu()
            assert rsp.itt == itt, rsp
            if rsp.opcode == pdu.Opcode.SCSI_RSP:
                assert rsp.b3 == 0 and sent == MiB
                break
            assert rsp.opcode == pdu.Opcode.R2T
            off, length = rsp.words[5], rsp.words[6]
            for piece in range(off, off + length, 262144):
                n = min(262144, off + length - piece)
                c.send_pdu(pdu.build_initiator_pdu(
                    pdu.Opcode.DATA_OUT, pdu.FLAG_FINAL if piece + n == off + length else 0, dlen=n,
                    itt=itt, words=(rsp.ttt, 0, c.exp_statsn, 0, (piece - off) // 262144, piece, 0)),
                    data[piece:piece + n])
                sent += n
        assert c.scsi(read10(64, MiB // block), read_len=MiB).data == data


def test_out_of_order_immediate_data_above_first_burst_length_is_refused_before_parking(
        tmp_path, start_server):
    server = serve_with(tmp_path, start_server, FirstBurstLength=65536)
    with hostile_login(server) as c:
        block = block_size(c)
        assert c.params.get("FirstBurstLength") == "65536"
        send_cmd(c, write10(0, 131072 // block), 131072, c.cmdsn + 1, os.urandom(131072))
        rsp = c.recv_pdu()
        assert rsp.opcode == pdu.Opcode.REJECT and rsp.b2 == pdu.RejectReason.PROTOCOL_ERROR
        assert c.closed_by_peer(timeout=30)


def test_an_aborted_write_that_waited_for_budget_does_not_hold_up_later_commands(tmp_path,
                                                                                start_server):
    """A WRITE waiting for budget (nothing charged yet) is aborted; a READ that fits in the
    budget then runs at once instead of queueing behind the aborted WRITE for good."""
    server = serve_with(tmp_path, start_server, data_budget="32M", data_budget_per_host="20M",
                        nop_interval=0)       # no ping drops the pinner and frees its budget
    with hostile_login(server) as c:
        block = block_size(c)
        pinner = pin_host_budget(server, block)          # 16 of the address's 20 MiB
        try:
            itt = c.itt + 1
            send_cmd(c, write10(0, 8 * MiB // block), 8 * MiB, c.cmdsn)
            c.cmdsn += 1
            assert responses_until_synced(c) == []        # waits: no R2T
            assert c.tmf(ABORT_TASK, ref_itt=itt, ref_cmdsn=c.cmdsn - 1).b2 == 0
            r = c.scsi(read10(0, 4096 // block), read_len=4096)
            assert r.status == 0 and len(r.data) == 4096
        finally:
            pinner.close()


def test_an_initiator_that_never_reads_cannot_pile_up_answers(tmp_path, start_server):
    """NOP-Out pings with 256 KiB of data each, and the echoes never read: once its socket is
    full the server stops reading that connection (flow control), so the pings stop going in
    (our send times out) instead of the server queueing up to 512 MiB of echoes."""
    server = serve_with(tmp_path, start_server, MaxRecvDataSegmentLength=TARGET_MRDSL)
    pid = server.proc.pid
    with hostile_login(server) as c:
        before = memory_kib(pid)["VmRSS"]
        payload = os.urandom(256 * 1024)
        c.sock.settimeout(10)
        sent = 0
        with pytest.raises(TimeoutError):
            for _ in range(2048):
                c.send_pdu(pdu.build_initiator_pdu(
                    pdu.Opcode.NOP_OUT, pdu.FLAG_FINAL, immediate=True, dlen=len(payload),
                    itt=c.next_itt(), words=(pdu.RSVD_TAG, c.cmdsn, c.exp_statsn, 0, 0, 0, 0)),
                    payload)
                sent += 1
        grown = max(memory_kib(pid).values()) - before
    assert sent < 2048
    assert grown < RECEIVE_BUFFER + SLACK, f"grew {grown / MiB:.0f} MiB after {sent} pings"


def test_immediate_commands_cannot_grow_a_session_past_its_task_limit(tmp_path, start_server):
    """Immediate commands bypass the CmdSN window (RFC 7143 3.2.2.1): 1000 immediate 8 MiB
    WRITEs whose Data-Out never comes. The session keeps at most 2 x 128 tasks (the window's
    and as many immediate ones); the rest end TASK SET FULL at once."""
    server = serve_with(tmp_path, start_server, data_budget="32M", data_budget_per_host="16M")
    with hostile_login(server) as c:
        block = block_size(c)
        big = 8 * MiB // block
        for n in range(1000):
            c.send_pdu(pdu.build_scsi_cmd(pdu.FLAG_FINAL | pdu.CMD_FLAG_WRITE | 1, 0, c.next_itt(),
                                        8 * MiB, c.cmdsn, c.exp_statsn, write10(n * big, big),
                                        immediate=True))
        answers = responses_until_synced(c)
        full = [r for r in answers if r.opcode == pdu.Opcode.SCSI_RSP and r.b3 == TASK_SET_FULL]
        assert len(full) == 1000 - 256, len(full)
        tasks = json.loads(server.cli("session", "list", "--json").stdout)
        assert [s["tasks"] for s in tasks if s["type"] == "normal"] == [256]


def test_a_flood_of_discovery_sessions_does_not_take_the_room_of_normal_sessions(tmp_path,
                                                                                 start_server):
    """80 discovery sessions (no auth needed, held open) from four addresses: they share the
    16 login slots, the oldest closed for newer ones, and 40 normal sessions still log in."""
    server = serve_with(tmp_path, start_server, max_connections=64, max_connections_per_host=48,
                        max_login_connections=16)
    flood, sessions = [], []
    try:
        for i in range(80):
            c = IscsiClient(server.host, server.port, source=f"127.0.0.{2 + i % 4}")
            flood.append(c)
            assert c.login(None, session_type="Discovery").login_status == 0
        for _ in range(40):
            c = IscsiClient(server.host, server.port)
            sessions.append(c)
            assert c.login(DEFAULT_TARGET).login_status == 0
        for c in sessions:
            assert c.nop().opcode == pdu.Opcode.NOP_IN
        assert sum(not closed_by_server(c.sock) for c in flood) <= 16
    finally:
        for c in flood + sessions:
            c.close()
