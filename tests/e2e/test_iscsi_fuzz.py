"""Hostile input against a live ``vmblock serve`` (DESIGN rule 3): malformed, truncated and
oversized PDUs and login texts, before and after login.

After every example: the server is alive, a fresh session logs in and does TEST UNIT READY and
READ, a bystander session held open the whole run still answers NOP and READ with its data
intact, and the server's RSS stays within a fixed budget. Derandomized, so CI sees the same
examples every run.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from support.iscsi_client import (IscsiClient, read10, text_bytes, tur, write10)
from vmblock import DEFAULT_TARGET
from vmblock.iscsi import pdu
from vmblock.settings import Settings

pytestmark = pytest.mark.timeout(240)

RSS_BUDGET_MIB = 64
SLACK_MIB = 16                      # allocator and interpreter noise on top of a data bound
BYSTANDER = "iqn.2026-11.io.vmblock.test:bystander"
FUZZER = "iqn.2026-11.io.vmblock.test:fuzzer"
PROBE = "iqn.2026-11.io.vmblock.test:probe"
DRAIN_SECONDS = 0.15
PATTERN = bytes(range(256)) * 2            # the bystander's block 1000, checked after each example

U32 = st.integers(0, 0xFFFFFFFF)
U8 = st.integers(0, 255)
SMALL_DATA = st.binary(max_size=600)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# ---- PDU strategies -----------------------------------------------------------------------
@st.composite
def random_header(draw, opcode=None, dlen=None):
    """A BHS with arbitrary fields (opcode optionally fixed), plus a data segment that may be
    shorter than it claims (truncated) or absent."""
    op = draw(st.integers(0, 0x3F)) if opcode is None else opcode
    words = draw(st.tuples(*[U32] * 7))
    data = draw(SMALL_DATA)
    claimed = draw(st.one_of(st.just(len(data)), st.integers(0, 0xFFFFFF))) if dlen is None else dlen
    hdr = bytearray(pdu.build_initiator_pdu(op, draw(U8), immediate=draw(st.booleans()), b2=draw(U8),
                                          b3=draw(U8), dlen=claimed, lun=draw(st.integers(0, 2**64 - 1)),
                                          itt=draw(U32), words=words))
    hdr[4] = draw(st.sampled_from([0, 0, 0, 1, 4, 0xFF]))        # TotalAHSLength, sometimes huge
    ahs = draw(st.binary(min_size=0, max_size=64)) if hdr[4] else b""
    return bytes(hdr) + ahs + data + b"\0" * pdu.pad_len(len(data))


def scsi_cmd(draw):
    """SCSI Command with hostile EDTL, flags and CDB; sometimes immediate data."""
    cdb_kind = draw(st.sampled_from(["read", "write", "random", "tur"]))
    lba = draw(st.sampled_from([0, 1, 0xFFFFFFFF, (8 << 30) // 512 - 1, 2000]))
    blocks = draw(st.sampled_from([0, 1, 8, 0xFFFF, 16384]))
    if cdb_kind == "read":
        cdb = read10(lba, blocks)
    elif cdb_kind == "write":
        cdb = write10(lba + 4096, blocks)      # keep clear of the bystander's block 1000
    elif cdb_kind == "tur":
        cdb = tur()
    else:
        cdb = draw(st.binary(min_size=16, max_size=16))
        if cdb[0] in (0x2A, 0x8A, 0xAA, 0x0A, 0x41, 0x93, 0x89, 0x8E, 0x42, 0x83):   # no random writes
            cdb = b"\x12" + cdb[1:]
    edtl = draw(st.sampled_from([0, 512, 4096, 0xFFFFFFFF, 8 << 20, 0x7FFFFFFF]))
    flags = draw(st.sampled_from([pdu.FLAG_FINAL | pdu.CMD_FLAG_READ, pdu.FLAG_FINAL | pdu.CMD_FLAG_WRITE,
                                  pdu.CMD_FLAG_WRITE, pdu.FLAG_FINAL | 0x60, pdu.FLAG_FINAL, 0x07, 0xFF]))
    imm = draw(st.sampled_from([b"", b"\xAB" * 512, b"\xCD" * 70000]))
    return cdb, edtl, flags, imm


@st.composite
def ffp_action(draw):
    """One hostile thing done in full feature phase; returns bytes to send given the client."""
    kind = draw(st.sampled_from(["scsi", "data_out", "nop", "oversize", "ahs", "text", "text_c",
                                 "tmf", "logout", "random", "snack", "login_again", "cmdsn"]))
    if kind == "scsi":
        cdb, edtl, flags, imm = scsi_cmd(draw)
        itt = draw(st.sampled_from([None, pdu.RSVD_TAG, 0]))
        return kind, (cdb, edtl, flags, imm, itt)
    if kind == "data_out":
        return kind, (draw(st.sampled_from(["unknown_itt", "beyond_edtl", "bad_ttt", "after_write"])),
                      draw(st.integers(0, 0xFFFFFFFF)), draw(st.sampled_from([1, 512, 4096])),
                      draw(st.booleans()))
    if kind == "nop":
        return kind, (draw(U8), draw(st.sampled_from([pdu.RSVD_TAG, 0, 1, 0x7FFFFFFF])),
                      draw(st.sampled_from([pdu.RSVD_TAG, 0, 5])), draw(st.booleans()), draw(SMALL_DATA))
    if kind == "oversize":
        return kind, draw(st.sampled_from([262145, 1 << 20, 0xFFFFFF]))
    if kind == "ahs":
        return kind, draw(st.binary(min_size=0, max_size=1020))
    if kind in ("text", "text_c"):
        return kind, draw(st.one_of(
            st.binary(max_size=400),
            st.lists(st.tuples(st.text(max_size=20), st.text(max_size=40)), max_size=8).map(
                lambda kv: b"".join(f"{k}{'=' if i % 3 else ''}{v}".encode("utf-8", "replace") + b"\0"
                                    for i, (k, v) in enumerate(kv))),
            st.sampled_from([b"SendTargets=All\0", b"SendTargets=\0", b"MaxRecvDataSegmentLength=512\0",
                             b"MaxRecvDataSegmentLength=0\0", b"HeaderDigest=CRC32C\0",
                             b"NoEqualsSign\0", b"InitiatorName=x\0"])))
    if kind == "tmf":
        return kind, (draw(st.integers(0, 0x7F)), draw(U32), draw(st.integers(0, 2**64 - 1)))
    if kind == "logout":
        return kind, (draw(st.integers(0, 0x7F)), draw(st.integers(0, 0xFFFF)))
    if kind == "random":
        return kind, draw(random_header(dlen=None))
    if kind == "snack":
        return kind, draw(random_header(opcode=pdu.Opcode.SNACK))
    if kind == "cmdsn":
        return kind, (draw(st.sampled_from([0, 1, 127, 128, 1 << 31, 0xFFFFFFFF])), draw(st.integers(1, 40)))
    return kind, draw(random_header(opcode=pdu.Opcode.LOGIN_REQ))


@st.composite
def prelogin_action(draw):
    kind = draw(st.sampled_from(["bytes", "header", "login_text", "big_text", "no_equals",
                                 "truncated", "non_login", "bad_stage", "many_pdus"]))
    if kind == "bytes":
        return kind, draw(st.binary(min_size=1, max_size=500))
    if kind == "header":
        return kind, draw(random_header(opcode=pdu.Opcode.LOGIN_REQ))
    if kind == "login_text":
        keys = draw(st.dictionaries(st.sampled_from(
            ["InitiatorName", "TargetName", "SessionType", "AuthMethod", "CHAP_A", "CHAP_N", "CHAP_R",
             "CHAP_I", "CHAP_C", "MaxBurstLength", "FirstBurstLength", "HeaderDigest",
             "MaxRecvDataSegmentLength", "ErrorRecoveryLevel", "X-junk", ""]),
            st.one_of(st.text(max_size=30), st.sampled_from(["0x", "0b", "99999999999999999999",
                                                             "CRC32C,None", "Discovery", "5"])),
            max_size=10))
        return kind, (keys, draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.booleans()),
                      draw(st.booleans()))
    if kind == "big_text":
        return kind, draw(st.sampled_from([70 * 1024, 66 * 1024, 200 * 1024]))
    if kind == "no_equals":
        return kind, draw(st.binary(min_size=1, max_size=200).filter(lambda b: b"=" not in b))
    if kind == "truncated":
        return kind, draw(st.integers(1, 47))
    if kind == "non_login":
        return kind, draw(random_header(opcode=draw(st.sampled_from(
            [pdu.Opcode.SCSI_CMD, pdu.Opcode.NOP_OUT, pdu.Opcode.TEXT_REQ, pdu.Opcode.DATA_OUT, pdu.Opcode.LOGOUT_REQ, pdu.Opcode.TMF_REQ]))))
    if kind == "bad_stage":
        return kind, draw(U8)
    return kind, draw(st.integers(60, 70))


# ---- driving one example ------------------------------------------------------------------
def drain(c: IscsiClient, seconds: float = DRAIN_SECONDS) -> None:
    """Read whatever the target says (or until it closes) for a short while."""
    c.sock.settimeout(seconds)
    deadline = time.monotonic() + seconds * 4
    try:
        while time.monotonic() < deadline:
            if not c.sock.recv(1 << 20):
                return
    except (OSError, socket.timeout):
        return


def send_quietly(c: IscsiClient, data: bytes) -> None:
    try:
        c.send_raw(data)
    except OSError:
        pass


def do_prelogin(server, action) -> None:
    kind, arg = action
    with IscsiClient(server.host, server.port, timeout=5) as c:
        if kind in ("bytes", "header"):
            send_quietly(c, arg)
        elif kind == "login_text":
            keys, csg, nsg, transit, cont = arg
            c.login_pdu(None, csg, nsg, transit, cont, raw=text_bytes(keys))
        elif kind == "big_text":
            text = b"InitiatorName=" + FUZZER.encode() + b"\0X-pad=" + b"p" * arg + b"\0"
            for off in range(0, len(text), 8192):
                chunk = text[off:off + 8192]
                last = off + 8192 >= len(text)
                try:
                    c.login_pdu(None, 0, 1, transit=last, cont=not last, raw=chunk)
                except OSError:
                    break
        elif kind == "no_equals":
            c.login_pdu(None, 0, 1, raw=b"InitiatorName=" + FUZZER.encode() + b"\0" + arg + b"\0")
        elif kind == "truncated":
            hdr = pdu.build_initiator_pdu(pdu.Opcode.LOGIN_REQ, 0x81, immediate=True, dlen=100)
            send_quietly(c, hdr[:arg])
        elif kind == "non_login":
            send_quietly(c, arg)
        elif kind == "bad_stage":
            c.login_pdu(None, 0, 0, raw=text_bytes({"InitiatorName": FUZZER,
                                                    "TargetName": DEFAULT_TARGET}))
            hdr = bytearray(pdu.build_initiator_pdu(pdu.Opcode.LOGIN_REQ, arg, immediate=True))
            send_quietly(c, bytes(hdr))
        else:                                      # more login PDUs than the bound
            c.login_pdu(None, 0, 1, transit=False, raw=text_bytes({"InitiatorName": FUZZER,
                                                                   "TargetName": DEFAULT_TARGET}))
            for _ in range(arg):
                try:
                    c.login_pdu(None, 0, 1, transit=False, raw=b"")
                except OSError:
                    break
        drain(c)


def do_ffp(server, actions, chap: tuple[str, str]) -> None:
    with IscsiClient(server.host, server.port, timeout=5) as c:
        rsp = c.login(DEFAULT_TARGET, initiator=FUZZER, chap=chap)
        assert rsp.login_status == 0
        for kind, arg in actions:
            try:
                ffp_send(c, kind, arg)
            except OSError:
                break
            drain(c, 0.05)
        drain(c)


def ffp_send(c: IscsiClient, kind: str, arg) -> None:
    lun0 = pdu.encode_lun(0)
    if kind == "scsi":
        cdb, edtl, flags, imm, itt = arg
        itt = c.next_itt() if itt is None else itt
        c.send_pdu(pdu.build_scsi_cmd(flags | 1, lun0, itt, edtl, c.cmdsn, c.exp_statsn, cdb,
                                    dlen=len(imm)), imm)
        c.cmdsn = (c.cmdsn + 1) & 0xFFFFFFFF
    elif kind == "data_out":
        what, off, n, final = arg
        itt = c.next_itt()
        if what in ("beyond_edtl", "bad_ttt", "after_write"):
            # a 1-block WRITE that waits for R2T'd data
            c.send_pdu(pdu.build_scsi_cmd(pdu.FLAG_FINAL | pdu.CMD_FLAG_WRITE, lun0, itt, 512, c.cmdsn,
                                        c.exp_statsn, write10(5000, 1)))
            c.cmdsn = (c.cmdsn + 1) & 0xFFFFFFFF
        ttt = pdu.RSVD_TAG if what != "bad_ttt" else 0x1234
        if what == "beyond_edtl":
            off = max(off, 1)
        target_itt = itt if what != "unknown_itt" else 0x7EEEEEEE
        for _ in range(2 if what == "after_write" else 1):
            c.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.DATA_OUT, pdu.FLAG_FINAL if final else 0, dlen=n,
                                             lun=lun0, itt=target_itt,
                                             words=(ttt, 0, c.exp_statsn, 0, 0, off, 0)), b"\xEE" * n)
    elif kind == "nop":
        flags, itt, ttt, immediate, data = arg
        c.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.NOP_OUT, flags, immediate=immediate, dlen=len(data),
                                         itt=itt, words=(ttt, c.cmdsn, c.exp_statsn, 0, 0, 0, 0)),
                   data)
    elif kind == "oversize":
        hdr = pdu.build_initiator_pdu(pdu.Opcode.NOP_OUT, pdu.FLAG_FINAL, immediate=True, dlen=arg,
                                    itt=c.next_itt(), words=(pdu.RSVD_TAG, c.cmdsn, c.exp_statsn, 0, 0, 0, 0))
        c.send_raw(hdr + b"\0" * 4096)
    elif kind == "ahs":
        ahs = arg + b"\0" * pdu.pad_len(len(arg))
        hdr = bytearray(pdu.build_scsi_cmd(pdu.FLAG_FINAL | pdu.CMD_FLAG_READ | 1, lun0, c.next_itt(), 512,
                                         c.cmdsn, c.exp_statsn, read10(0, 1)))
        hdr[4] = len(ahs) // 4
        c.cmdsn = (c.cmdsn + 1) & 0xFFFFFFFF
        c.send_raw(bytes(hdr) + ahs)
    elif kind in ("text", "text_c"):
        flags = pdu.FLAG_FINAL if kind == "text" else pdu.TEXT_FLAG_CONTINUE
        for _ in range(1 if kind == "text" else 12):
            c.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.TEXT_REQ, flags, dlen=len(arg), itt=c.next_itt(),
                                             words=(pdu.RSVD_TAG, c.cmdsn, c.exp_statsn, 0, 0, 0, 0)), arg)
            c.cmdsn = (c.cmdsn + 1) & 0xFFFFFFFF
    elif kind == "tmf":
        func, rtt, lun = arg
        c.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.TMF_REQ, 0x80 | func, immediate=True, lun=lun,
                                         itt=c.next_itt(),
                                         words=(rtt, c.cmdsn, c.exp_statsn, c.cmdsn, 0, 0, 0)))
    elif kind == "logout":
        reason, cid = arg
        c.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.LOGOUT_REQ, 0x80 | reason, immediate=True,
                                         itt=c.next_itt(),
                                         words=(cid << 16, c.cmdsn, c.exp_statsn, 0, 0, 0, 0)))
    elif kind == "cmdsn":
        start, count = arg
        for i in range(count):          # commands outside / ahead of the window
            c.send_pdu(pdu.build_scsi_cmd(pdu.FLAG_FINAL | pdu.CMD_FLAG_READ | 1, lun0, c.next_itt(), 512,
                                        (c.cmdsn + start + i) & 0xFFFFFFFF, c.exp_statsn,
                                        read10(0, 1)))
    else:
        c.send_raw(arg)


def assert_no_internal_errors(server) -> None:
    """Hostile input may get a Reject or a closed connection, never an exception in the fabric."""
    log = server.log()
    at = max(log.find("Traceback"), log.find("internal error"))
    assert at < 0, log[max(0, at - 1000):at + 3000]


class Watch:
    """The health checks run after every example."""

    def __init__(self, server):
        self.server = server
        self.pid = server.proc.pid
        self.chap = server.chap()       # read once: the pool's CLI is too slow per example
        self.bystander = IscsiClient(server.host, server.port, timeout=10)
        rsp = self.bystander.login(DEFAULT_TARGET, initiator=BYSTANDER, chap=self.chap)
        assert rsp.login_status == 0
        self.bystander.scsi(tur())                          # eat the power-on unit attention
        assert self.bystander.scsi(write10(1000, 1), write=PATTERN).status == 0
        self.examples = 0
        self.probe()
        self.rss0 = rss_mib(self.pid)
        self.rss_max = self.rss0

    def probe(self) -> None:
        with IscsiClient(self.server.host, self.server.port, timeout=10) as c:
            assert c.login(DEFAULT_TARGET, initiator=PROBE, chap=self.chap).login_status == 0
            for _ in range(2):                              # first may carry a unit attention
                if c.scsi(tur()).status == 0:
                    break
            else:
                raise AssertionError("TEST UNIT READY never GOOD on a fresh session")
            r = c.scsi(read10(0, 8), read_len=4096)
            assert r.status == 0 and len(r.data) == 4096

    def check(self) -> None:
        self.examples += 1
        assert self.server.proc.poll() is None, "server died"
        self.probe()
        b = self.bystander
        assert b.nop(b"still there").data == b"still there"
        r = b.scsi(read10(1000, 1), read_len=512)
        assert r.status == 0 and r.data == PATTERN, "bystander session disturbed"
        rss = rss_mib(self.pid)
        self.rss_max = max(self.rss_max, rss)
        assert rss - self.rss0 < RSS_BUDGET_MIB, f"RSS grew {rss - self.rss0:.0f} MiB"


FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture
def watch(vmblock_server):
    w = Watch(vmblock_server)
    yield w
    w.bystander.close()


def test_fuzz_prelogin_pdus_leave_the_server_healthy(vmblock_server, watch):
    @FUZZ
    @given(action=prelogin_action())
    def run(action):
        do_prelogin(vmblock_server, action)
        watch.check()

    run()
    assert watch.examples > 50
    assert_no_internal_errors(vmblock_server)


def test_fuzz_full_feature_pdus_leave_the_server_healthy(vmblock_server, watch):
    @FUZZ
    @given(actions=st.lists(ffp_action(), min_size=1, max_size=4))
    def run(actions):
        do_ffp(vmblock_server, actions, watch.chap)
        watch.check()

    run()
    assert watch.examples > 50
    assert_no_internal_errors(vmblock_server)
    p = subprocess.run(["iscsi-inq", vmblock_server.url()], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr


def test_outstanding_writes_without_data_do_not_grow_memory(vmblock_server):
    pid = vmblock_server.proc.pid
    with IscsiClient(vmblock_server.host, vmblock_server.port) as c:
        assert c.login(DEFAULT_TARGET, initiator=FUZZER,
                       chap=vmblock_server.chap()).login_status == 0
        c.scsi(tur())
        before = rss_mib(pid)
        for i in range(32):                 # 32 x 8 MiB WRITE(10), no data ever sent
            c.send_pdu(pdu.build_scsi_cmd(pdu.FLAG_FINAL | pdu.CMD_FLAG_WRITE | 1, 0, c.next_itt(), 8 << 20,
                                        c.cmdsn, c.exp_statsn, write10(i * 16384, 16384)))
            c.cmdsn += 1
        drain(c, 0.5)
        grown = rss_mib(pid) - before
    # their buffers come from the data budget of one source address (iscsi.data_budget_per_host)
    bound = (Settings({}).get("iscsi.data_budget_per_host") >> 20) + SLACK_MIB
    assert grown < bound, f"RSS grew {grown:.0f} MiB for 32 WRITEs that sent no data"

