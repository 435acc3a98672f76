"""Sessions, connections, NOP, SendTargets, logout and task management against a live
``vmblock serve`` (RFC 7143), with real initiators (QEMU's ``qemu-io``, libiscsi's ``iscsi-ls``)
and the raw-socket initiator for what only a protocol-level client can see.

Each test starts its own server and pins one behaviour. Every wait is bounded: sockets time out,
subprocesses have a timeout, and the NOP tests run with ``nop_interval = 1``/``nop_timeout = 2``
from a ``--config`` file so the whole file stays well under a minute.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time

import pytest

from support.iscsi_client import INITIATOR, IscsiClient, read10, tur, write10
from vmblock import DEFAULT_TARGET
from vmblock.iscsi import pdu

pytestmark = pytest.mark.timeout(60)

KiB, MiB = 1 << 10, 1 << 20
OTHER = "iqn.2026-11.io.vmblock.test:other"
HIDDEN = "iqn.2026-11.io.vmblock:hidden"
NOP_INTERVAL, NOP_TIMEOUT = 1.0, 2.0
# Longest wait for sessions to show up in or leave ``session list``: a safety net (the polls end
# as soon as they do), long enough for logins and logouts on a loaded machine.
SESSION_WAIT = 60

# RFC 7143 11.5.1 / 11.6.1 (TMF), 11.14.1 / 11.15.1 (logout), 11.13.5 (login status)
ABORT_TASK, LUN_RESET = 1, 5
TMF_COMPLETE, TMF_NO_TASK, TMF_NO_LUN = 0, 1, 2
LOGOUT_SESSION, LOGOUT_CONNECTION = 0, 1
LOGOUT_OK, LOGOUT_CID_NOT_FOUND = 0, 1
LOGIN_TOO_MANY_CONNECTIONS, LOGIN_SESSION_DOES_NOT_EXIST = 0x0206, 0x020A


# --- helpers -----------------------------------------------------------------------------------

@pytest.fixture
def nop_server(start_server, tmp_path):
    """A server that pings idle initiators every second and gives them 2 s to answer."""
    cfg = tmp_path / "nop.toml"
    cfg.write_text(f"[iscsi]\nnop_interval = {NOP_INTERVAL:g}\nnop_timeout = {NOP_TIMEOUT:g}\n")
    return start_server("--config", str(cfg))


class CidClient(IscsiClient):
    """The raw initiator logging in with a chosen CID (the base client always uses 0)."""

    def __init__(self, host: str, port: int, cid: int = 0):
        super().__init__(host, port)
        self.cid = cid

    def login_pdu(self, pairs, csg, nsg, transit=True, cont=False, raw=None, version=(0, 0), cid=0):
        super().login_pdu(pairs, csg, nsg, transit, cont, raw, version, cid or self.cid)


def client(server, cid: int = 0) -> CidClient:
    return CidClient(server.host, server.port, cid)


def logged_in(server, **kw) -> CidClient:
    c = client(server)
    assert c.login(DEFAULT_TARGET, chap=server.chap(), **kw).login_status == 0
    c.scsi(tur())                       # takes the power-on unit attention, if any
    return c


def assert_reads(c: IscsiClient, lba: int = 0, data: bytes | None = None) -> None:
    """TEST UNIT READY and a 4 KiB READ on ``c`` succeed (and return ``data`` when given)."""
    assert c.scsi(tur()).status == 0
    r = c.scsi(read10(lba, 8), read_len=4096)
    assert r.status == 0
    if data is not None:
        assert r.data == data


def text_pairs(data: bytes) -> list[tuple[str, str]]:
    """key=value pairs in order, repeats kept (SendTargets repeats TargetAddress)."""
    out = []
    for item in data.split(b"\0"):
        if item:
            k, _, v = item.decode().partition("=")
            out.append((k, v))
    return out


def targets_of(pairs) -> dict[str, list[str]]:
    """SendTargets answer as {TargetName: [TargetAddress, ...]}."""
    out: dict[str, list[str]] = {}
    name = None
    for k, v in pairs:
        if k == "TargetName":
            name = v
            out[name] = []
        elif k == "TargetAddress":
            assert name is not None, f"TargetAddress before any TargetName: {pairs}"
            out[name].append(v)
    return out


def portals_of(server) -> list[str]:
    """Every HOST:PORT of the server's ready line."""
    m = re.search(r"^vmblock: serving .* on (.+)$", server.log(), re.MULTILINE)
    return m.group(1).split(", ")


def discovery(server, operational: dict | None = None) -> CidClient:
    c = client(server)
    assert c.login(None, session_type="Discovery", operational=operational).login_status == 0
    return c


def send_targets(server, value: str = "All", initiator: str = INITIATOR) -> dict[str, list[str]]:
    c = client(server)
    with c:
        assert c.login(None, initiator=initiator, session_type="Discovery").login_status == 0
        rsps = c.text_all({"SendTargets": value})
        return targets_of(text_pairs(b"".join(r.data for r in rsps)))


def nop_out_answer(c: IscsiClient, ping) -> None:
    """Answer a target NOP-In ping: NOP-Out, ITT 0xffffffff, its TTT and LUN, immediate."""
    c.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.NOP_OUT, pdu.FLAG_FINAL, immediate=True, lun=ping.lun,
                                     itt=pdu.RSVD_TAG,
                                     words=(ping.ttt, c.cmdsn, c.exp_statsn, 0, 0, 0, 0)))


def logout(c: IscsiClient, reason: int, cid: int = 0):
    itt = c.next_itt()
    c.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.LOGOUT_REQ, pdu.FLAG_FINAL | reason, immediate=True,
                                     itt=itt, words=(cid << 16, c.cmdsn, c.exp_statsn, 0, 0, 0, 0)))
    rsp = c.recv_skip_nops()
    assert rsp.opcode == pdu.Opcode.LOGOUT_RSP and rsp.itt == itt, rsp
    c.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
    return rsp


def quiet_for(c: IscsiClient, seconds: float) -> list:
    """Every PDU the target sends within ``seconds`` (none expected)."""
    got = []
    c.sock.settimeout(seconds)
    try:
        while True:
            got.append(c.recv_pdu())
    except (socket.timeout, TimeoutError):
        return got
    finally:
        c.sock.settimeout(10.0)


def sessions(server) -> list[dict]:
    return json.loads(server.cli("session", "list", "--json").stdout)


# --- 1. several sessions and initiators at once ------------------------------------------------

QEMU_IO_TIMEOUT = 30
needs_qemu = pytest.mark.skipif(not shutil.which("qemu-io"), reason="needs qemu-io (qemu-utils)")


def qemu_opts(server, initiator: str) -> str:
    user, secret = server.chap()
    return (f"driver=iscsi,transport=tcp,portal={server.portal},target={DEFAULT_TARGET},lun=0,"
            f"initiator-name={initiator},user={user},password={secret}")


@needs_qemu
def test_four_qemu_initiators_write_and_read_their_own_regions_at_once(vmblock_server):
    """Four qemu-io processes, four initiator names, four sessions open together (seen in
    ``vmblock session list``); each writes its own pattern to its own 768 KiB region and reads
    it back; afterwards a fifth session sees all four regions and zeros between them."""
    names = [f"iqn.2026-11.io.vmblock.test:qemu{i}" for i in range(4)]
    regions = [(i * 4 * MiB + 512, 768 * KiB, 0x11 * (i + 1)) for i in range(4)]
    procs = []
    try:
        for name, (off, n, pat) in zip(names, regions):
            p = subprocess.Popen(["qemu-io", "--image-opts", qemu_opts(vmblock_server, name)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
            procs.append(p)
            p.stdin.write(f"write -P {pat:#04x} {off} {n}\n")
            p.stdin.flush()
        seen, deadline = [], time.monotonic() + SESSION_WAIT
        while time.monotonic() < deadline:
            seen = [s for s in sessions(vmblock_server) if s["type"] == "normal"]
            if sorted(s["initiator"] for s in seen) == names:
                break
            time.sleep(0.1)
        outs = [p.communicate(f"read -P {pat:#04x} {off} {n}\nquit\n", timeout=QEMU_IO_TIMEOUT)[0]
                for p, (off, n, pat) in zip(procs, regions)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sorted(s["initiator"] for s in seen) == names, seen
    assert len({s["tsih"] for s in seen}) == 4 and all(s["target"] == DEFAULT_TARGET for s in seen)
    for p, out, (off, n, _) in zip(procs, outs, regions):
        assert p.returncode == 0, out
        assert "Pattern verification failed" not in out and "error" not in out.lower(), out
        assert f"wrote {n}/{n} bytes at offset {off}" in out, out
        assert f"read {n}/{n} bytes at offset {off}" in out, out

    cmd = ["qemu-io", "--image-opts", qemu_opts(vmblock_server, "iqn.2026-11.io.vmblock.test:check")]
    for off, n, pat in regions:
        cmd += ["-c", f"read -P {pat:#04x} {off} {n}", "-c", f"read -P 0 {off + n} 512",
                "-c", f"read -P 0 {off - 512} 512"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=QEMU_IO_TIMEOUT,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "Pattern verification failed" not in p.stdout, p.stdout + p.stderr
    assert p.stdout.count("read ") == 3 * len(regions), p.stdout
    deadline = time.monotonic() + SESSION_WAIT
    while [s for s in sessions(vmblock_server) if s["type"] == "normal"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [s for s in sessions(vmblock_server) if s["type"] == "normal"]


# --- 2. session reinstatement ------------------------------------------------------------------

def test_login_with_same_isid_and_tsih_0_reinstates_the_session(vmblock_server):
    """RFC 7143 6.3.5: a new login from the same initiator with the same ISID and TSIH 0 ends
    the old session (its connection is closed) and the new one works."""
    old = logged_in(vmblock_server)
    with old, client(vmblock_server) as new:
        new.isid = old.isid
        assert new.login(DEFAULT_TARGET, chap=vmblock_server.chap()).login_status == 0
        assert new.tsih != old.tsih
        assert old.closed_by_peer(timeout=5)
        new.scsi(tur())
        assert_reads(new, data=bytes(4096))
        live = [s for s in sessions(vmblock_server) if s["type"] == "normal"]
        assert [(s["tsih"], s["isid"]) for s in live] == [(new.tsih, f"{old.isid:012x}")]


def test_same_isid_from_another_initiator_is_a_separate_session(vmblock_server):
    """The session key is (initiator, ISID, target): another initiator name with the same ISID
    is not a reinstatement, both sessions keep working."""
    first = logged_in(vmblock_server)
    with first, client(vmblock_server) as second:
        second.isid = first.isid
        rsp = second.login(DEFAULT_TARGET, initiator=OTHER, chap=vmblock_server.chap())
        assert rsp.login_status == 0
        second.scsi(tur())
        assert_reads(second)
        assert_reads(first)


# --- 3. connection reinstatement and joining ---------------------------------------------------

def test_login_with_same_tsih_and_cid_reinstates_the_connection(vmblock_server):
    """RFC 7143 6.3.4: a login naming the session's TSIH and an existing CID replaces that
    connection: the old one is closed, the session (same TSIH) goes on over the new one."""
    old = logged_in(vmblock_server)
    with old, client(vmblock_server, cid=0) as new:
        new.isid, new.tsih = old.isid, old.tsih
        assert new.login(DEFAULT_TARGET, chap=vmblock_server.chap()).login_status == 0
        assert new.tsih == old.tsih
        assert old.closed_by_peer(timeout=5)
        assert_reads(new)
        live = [s for s in sessions(vmblock_server) if s["type"] == "normal"]
        assert len(live) == 1 and live[0]["tsih"] == old.tsih and len(live[0]["connections"]) == 1


def test_second_cid_beyond_max_connections_1_is_0206(vmblock_server):
    """With MaxConnections=1 a connection with another CID cannot join: 0x0206, and the
    session's own connection is untouched."""
    first = logged_in(vmblock_server)
    with first, client(vmblock_server, cid=1) as extra:
        extra.isid, extra.tsih = first.isid, first.tsih
        rsp = extra.login(DEFAULT_TARGET, chap=vmblock_server.chap())
        assert rsp.login_status == LOGIN_TOO_MANY_CONNECTIONS
        assert extra.closed_by_peer(timeout=5)
        assert_reads(first)


def test_joining_a_tsih_that_does_not_exist_is_020a(vmblock_server):
    with client(vmblock_server) as c:
        c.tsih = 0x7A5A
        rsp = c.login(DEFAULT_TARGET, chap=vmblock_server.chap())
        assert rsp.login_status == LOGIN_SESSION_DOES_NOT_EXIST
        assert c.closed_by_peer(timeout=5)


# --- 4. NOP ------------------------------------------------------------------------------------

def wait_ping(c: IscsiClient, within: float):
    """The next PDU, which must be a target NOP-In ping, within ``within`` seconds."""
    c.sock.settimeout(within)
    try:
        ping = c.recv_pdu()
    finally:
        c.sock.settimeout(10.0)
    assert ping.opcode == pdu.Opcode.NOP_IN, ping
    return ping


def test_target_pings_an_idle_initiator_with_nop_in(nop_server):
    """RFC 7143 11.19: a target ping has ITT 0xffffffff, a TTT other than 0xffffffff, no data,
    and carries the next StatSN without advancing it."""
    with logged_in(nop_server) as c:
        ping = wait_ping(c, NOP_INTERVAL + 0.5)          # on time, not an interval late
        assert ping.itt == pdu.RSVD_TAG and ping.ttt != pdu.RSVD_TAG
        assert ping.flags & pdu.FLAG_FINAL and ping.dlen == 0
        assert ping.statsn == c.exp_statsn
        nop_out_answer(c, ping)
        assert c.nop(b"after").statsn == ping.statsn      # the ping did not use that StatSN


def test_answered_pings_keep_the_connection(nop_server):
    """Answering each ping keeps an idle connection past NopInterval + NopTimeout, twice over."""
    with logged_in(nop_server) as c:
        pings, deadline = [], time.monotonic() + 2 * (NOP_INTERVAL + NOP_TIMEOUT) + 0.5
        while time.monotonic() < deadline:
            ping = wait_ping(c, NOP_INTERVAL + 1.5)
            assert ping.itt == pdu.RSVD_TAG and ping.ttt != pdu.RSVD_TAG
            pings.append(ping.ttt)
            nop_out_answer(c, ping)
        assert len(pings) >= 3
        assert_reads(c)


def test_unanswered_ping_closes_the_connection(nop_server):
    """An initiator that does not answer is dropped NopTimeout after the ping, and within
    NopInterval + NopTimeout + 1 s of going idle."""
    with logged_in(nop_server) as c:
        idle = time.monotonic()
        wait_ping(c, NOP_INTERVAL + 1.5)
        pinged = time.monotonic()
        assert c.closed_by_peer(timeout=NOP_TIMEOUT + 2)
        closed = time.monotonic()
        assert closed - pinged >= NOP_TIMEOUT - 0.5, "dropped before NopTimeout ran out"
        assert closed - pinged <= NOP_TIMEOUT + 0.5, f"dropped {closed - pinged:.2f} s after the ping"
        assert closed - idle <= NOP_INTERVAL + NOP_TIMEOUT + 1, f"dropped after {closed - idle:.2f} s"


def test_nop_interval_set_to_0_through_the_cli_stops_pings_on_open_connections(vmblock_server):
    """``vmblock config set iscsi.nop_interval`` reaches the running server: logins after it
    are pinged, and setting it back to 0 ("no pings") silences connections already open.
    A ping the server sent before the change reached it (the CLI takes its time on a loaded
    machine) is answered by the NOP round trip that follows the change (NopTimeout 30 s: that
    ping waits for its answer however long the CLI takes); from then on, none."""
    vmblock_server.cli("config", "set", "iscsi.nop_timeout", "30")
    vmblock_server.cli("config", "set", "iscsi.nop_interval", "2")
    with logged_in(vmblock_server) as c:
        nop_out_answer(c, wait_ping(c, 30))        # pinged (30 s: a safety net, not a bound)
        vmblock_server.cli("config", "set", "iscsi.nop_interval", "0")
        c.nop(b"after the change")      # answers any ping sent before it, in TCP order
        got = quiet_for(c, 3.0)
        assert not got, [(hex(p.opcode), hex(p.itt)) for p in got]
        assert_reads(c)


def test_initiator_nop_out_ping_is_echoed_with_its_itt_and_data(vmblock_server):
    with logged_in(vmblock_server) as c:
        payload = bytes(range(256)) * 3 + b"odd"          # 771 bytes: padded on the wire
        itt = c.itt + 1
        rsp = c.nop(payload)
        assert rsp.itt == itt and rsp.ttt == pdu.RSVD_TAG and rsp.data == payload
        assert c.nop().data == b""


# --- 5. SendTargets ----------------------------------------------------------------------------

@pytest.fixture
def two_portals(start_server):
    """A server listening on 127.0.0.1 and 127.0.0.2 (each on a free port)."""
    server = start_server("--portal", "127.0.0.2:0")
    portals = portals_of(server)
    assert len(portals) == 2 and portals[1].startswith("127.0.0.2:"), portals
    return server, portals


def iscsi_ls(server, *args: str) -> subprocess.CompletedProcess:
    """libiscsi's discovery (a SendTargets=All discovery session) against the first portal."""
    return subprocess.run(["iscsi-ls", *args, f"iscsi://{server.portal}"], capture_output=True,
                          text=True, timeout=20, stdin=subprocess.DEVNULL)


def test_send_targets_all_lists_every_portal_of_every_target(two_portals):
    server, portals = two_portals
    server.cli("vdisk", "create", "second", "--size", "1M", "--target", HIDDEN)
    want = sorted(f"{p},1" for p in portals)
    found = send_targets(server, "All")
    assert sorted(found) == sorted([DEFAULT_TARGET, HIDDEN])
    assert all(sorted(addrs) == want for addrs in found.values()), found


def test_iscsi_ls_shows_both_portals(two_portals):
    server, portals = two_portals
    p = iscsi_ls(server)
    assert p.returncode == 0, p.stderr
    for portal in portals:
        assert f"Target:{DEFAULT_TARGET} Portal:{portal},1" in p.stdout, p.stdout


def test_send_targets_with_a_name_lists_only_that_target(two_portals):
    server, portals = two_portals
    server.cli("vdisk", "create", "second", "--size", "1M", "--target", HIDDEN)
    assert send_targets(server, HIDDEN) == {HIDDEN: [f"{p},1" for p in portals]}
    assert send_targets(server, "iqn.2026-11.io.vmblock:nosuchtarget") == {}


def test_send_targets_hides_targets_whose_acl_excludes_the_initiator(two_portals):
    server, _ = two_portals
    server.cli("vdisk", "create", "second", "--size", "1M", "--target", HIDDEN)
    server.cli("config", "set", f"acl.{HIDDEN}", OTHER)
    assert sorted(send_targets(server, "All")) == [DEFAULT_TARGET]
    assert send_targets(server, HIDDEN) == {}
    assert sorted(send_targets(server, "All", initiator=OTHER)) == sorted([DEFAULT_TARGET, HIDDEN])
    mine, theirs = iscsi_ls(server, "-i", INITIATOR), iscsi_ls(server, "-i", OTHER)
    assert mine.returncode == 0 and theirs.returncode == 0, mine.stderr + theirs.stderr
    assert HIDDEN not in mine.stdout and DEFAULT_TARGET in mine.stdout, mine.stdout
    assert HIDDEN in theirs.stdout, theirs.stdout


def test_long_send_targets_answer_is_split_at_the_initiator_mrdsl(two_portals):
    """RFC 7143 11.11: an answer longer than the initiator's MaxRecvDataSegmentLength comes in
    several Text Responses: C bit and a TTT on all but the last, which has F and TTT 0xffffffff;
    the initiator fetches each with an empty Text Request carrying that TTT."""
    server, portals = two_portals
    names = [f"iqn.2026-11.io.vmblock:long{i}-" + "x" * 180 for i in range(4)]
    for i, name in enumerate(names):
        server.cli("vdisk", "create", f"long{i}", "--size", "1M", "--target", name)
    with discovery(server, operational={"MaxRecvDataSegmentLength": "512"}) as c:
        rsps = c.text_all({"SendTargets": "All"})
        assert len(rsps) >= 3, [r.dlen for r in rsps]
        for r in rsps[:-1]:
            assert r.flags & pdu.TEXT_FLAG_CONTINUE and not r.flags & pdu.FLAG_FINAL, hex(r.flags)
            assert r.ttt != pdu.RSVD_TAG and 0 < r.dlen <= 512
        last = rsps[-1]
        assert last.flags & pdu.FLAG_FINAL and not last.flags & pdu.TEXT_FLAG_CONTINUE
        assert last.ttt == pdu.RSVD_TAG and last.dlen <= 512
        found = targets_of(text_pairs(b"".join(r.data for r in rsps)))
        assert sorted(found) == sorted(names + [DEFAULT_TARGET])
        assert all(sorted(a) == sorted(f"{p},1" for p in portals) for a in found.values()), found
        # the session goes on: a short answer fits in one response again
        again = c.text_all({"SendTargets": DEFAULT_TARGET})
        assert len(again) == 1 and targets_of(text_pairs(again[0].data)).keys() == {DEFAULT_TARGET}


# --- 6. logout ---------------------------------------------------------------------------------

def test_logout_closing_the_session_answers_0_and_closes_the_connection(vmblock_server):
    with logged_in(vmblock_server) as c:
        rsp = logout(c, LOGOUT_SESSION)
        assert rsp.b2 == LOGOUT_OK and rsp.flags & pdu.FLAG_FINAL
        assert c.closed_by_peer(timeout=5)
    deadline = time.monotonic() + SESSION_WAIT
    while [s for s in sessions(vmblock_server) if s["type"] == "normal"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [s for s in sessions(vmblock_server) if s["type"] == "normal"]


def test_logout_of_an_unknown_cid_answers_1_and_keeps_the_connection(vmblock_server):
    with logged_in(vmblock_server) as c:
        rsp = logout(c, LOGOUT_CONNECTION, cid=7)
        assert rsp.b2 == LOGOUT_CID_NOT_FOUND
        assert c.nop(b"still here").data == b"still here"
        assert_reads(c)


def test_logout_of_its_own_cid_answers_0_and_closes_the_connection(vmblock_server):
    with logged_in(vmblock_server) as c:
        assert logout(c, LOGOUT_CONNECTION, cid=0).b2 == LOGOUT_OK
        assert c.closed_by_peer(timeout=5)


# --- 7. task management ------------------------------------------------------------------------

def test_abort_task_of_a_write_waiting_for_data_out_completes_and_it_never_answers(vmblock_server):
    """A WRITE sent without data gets an R2T; ABORT TASK on it answers Function Complete, no
    SCSI Response for it ever comes (not even after its late Data-Out), and the blocks are not
    written."""
    lba, block = 2048, b"\xA5" * 4096
    with logged_in(vmblock_server) as c:
        itt, cmdsn = c.next_itt(), c.cmdsn
        c.send_pdu(pdu.build_scsi_cmd(pdu.FLAG_FINAL | pdu.CMD_FLAG_WRITE | 1, pdu.encode_lun(0), itt,
                                    len(block), cmdsn, c.exp_statsn, write10(lba, 8)))
        c.cmdsn = (c.cmdsn + 1) & 0xFFFFFFFF
        r2t = c.recv_skip_nops()
        assert r2t.opcode == pdu.Opcode.R2T and r2t.itt == itt, r2t
        rsp = c.tmf(ABORT_TASK, ref_itt=itt, ref_cmdsn=cmdsn)
        assert rsp.b2 == TMF_COMPLETE and not c.stray, c.stray
        # the Data-Out the R2T asked for arrives late: the target must drop it silently
        c.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.DATA_OUT, pdu.FLAG_FINAL, dlen=len(block),
                                         lun=pdu.encode_lun(0), itt=itt,
                                         words=(r2t.ttt, 0, c.exp_statsn, 0, 0, 0, 0)), block)
        assert c.nop(b"sync").data == b"sync"
        late = quiet_for(c, 0.5)
        assert not late, [(hex(p.opcode), hex(p.itt)) for p in late]
        assert_reads(c, lba, bytes(4096))


def test_abort_task_of_an_unknown_itt_with_a_done_refcmdsn_is_task_does_not_exist(vmblock_server):
    """RFC 7143 11.5.1: RefCmdSN already behind ExpCmdSN and no such task: response 1."""
    with logged_in(vmblock_server) as c:
        done = c.cmdsn
        assert c.scsi(tur()).status == 0
        rsp = c.tmf(ABORT_TASK, ref_itt=0x5EED, ref_cmdsn=done)
        assert rsp.b2 == TMF_NO_TASK and rsp.flags & pdu.FLAG_FINAL
        assert_reads(c)


def test_lun_reset_of_a_lun_that_does_not_exist_is_lun_does_not_exist(vmblock_server):
    with logged_in(vmblock_server) as c:
        rsp = c.tmf(LUN_RESET, lun=42)
        assert rsp.b2 == TMF_NO_LUN
        assert_reads(c)
