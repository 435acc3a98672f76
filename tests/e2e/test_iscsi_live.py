"""Login and CHAP against a live ``vmblock serve``, with the raw-socket initiator and libiscsi."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from support.server import VmblockServer
from support.iscsi_client import INITIATOR, IscsiClient, read10, tur, write10
from vmblock import DEFAULT_TARGET
from vmblock.iscsi import pdu

pytestmark = pytest.mark.timeout(120)

USER, SECRET = "alice", "secretsecret1"
M_USER, M_SECRET = "vmblock", "mutualsecret1"
OPEN_TARGET = "iqn.2026-11.io.vmblock:open"


def set_chap(server, iqn=DEFAULT_TARGET, mutual=False):
    prefix = f"auth.target.{iqn}."
    server.cli("config", "set", prefix + "chap_user", USER)
    server.cli("config", "set", prefix + "chap_secret", SECRET)
    if mutual:
        server.cli("config", "set", prefix + "mutual_user", M_USER)
        server.cli("config", "set", prefix + "mutual_secret", M_SECRET)


def client(server) -> IscsiClient:
    return IscsiClient(server.host, server.port)


def libiscsi(tool, url, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([tool, *args, url], capture_output=True, text=True, timeout=30, env=env)


def test_login_with_the_new_pools_credentials_reaches_full_feature_and_reads(vmblock_server):
    with client(vmblock_server) as c:
        assert c.login(DEFAULT_TARGET, chap=vmblock_server.chap()).login_status == 0
        c.scsi(tur())                                   # may carry the power-on unit attention
        r = c.scsi(read10(0, 8), read_len=4096)
        assert r.status == 0 and r.data == bytes(4096)


def test_unknown_target_login_is_0203(vmblock_server):
    with client(vmblock_server) as c:
        rsp = c.login("iqn.2026-11.io.vmblock:nosuchtarget")
        assert rsp.login_status == 0x0203
        assert c.closed_by_peer()


def test_missing_initiator_name_login_is_0207(vmblock_server):
    with client(vmblock_server) as c:
        rsp = c.login_exchange({"TargetName": DEFAULT_TARGET, "AuthMethod": "None"}, 0, 1)
        assert rsp.login_status == 0x0207


def test_wrong_chap_secret_login_is_0201(vmblock_server):
    set_chap(vmblock_server)
    with client(vmblock_server) as c:
        rsp = c.login(DEFAULT_TARGET, chap=(USER, "not-the-secret"))
        assert rsp.login_status == 0x0201
        assert c.closed_by_peer()


def set_discovery_chap(server):
    server.cli("config", "set", "auth.discovery.chap_user", USER)
    server.cli("config", "set", "auth.discovery.chap_secret", SECRET)


def test_discovery_chap_refuses_a_wrong_secret_and_a_missing_one(vmblock_server):
    set_discovery_chap(vmblock_server)
    with client(vmblock_server) as c:
        assert c.login(None, chap=(USER, "not-the-secret"),
                       session_type="Discovery").login_status == 0x0201
    with client(vmblock_server) as c:
        assert c.login(None, session_type="Discovery").login_status == 0x0201


def test_discovery_chap_with_the_right_secret_lists_targets(vmblock_server):
    set_discovery_chap(vmblock_server)
    with client(vmblock_server) as c:
        assert c.login(None, chap=(USER, SECRET), session_type="Discovery").login_status == 0
        assert DEFAULT_TARGET in c.text({"SendTargets": "All"}).text.get("TargetName", "")
    portal = f"{vmblock_server.host}:{vmblock_server.port}"
    p = subprocess.run(["iscsi-ls", f"iscsi://{USER}%{SECRET}@{portal}"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and DEFAULT_TARGET in p.stdout, p.stdout + p.stderr
    p = subprocess.run(["iscsi-ls", f"iscsi://{USER}%wrong-secret@{portal}"], capture_output=True,
                       text=True, timeout=30)
    assert DEFAULT_TARGET not in p.stdout


def test_right_chap_secret_login_succeeds(vmblock_server):
    set_chap(vmblock_server)
    with client(vmblock_server) as c:
        assert c.login(DEFAULT_TARGET, chap=(USER, SECRET)).login_status == 0
        c.scsi(tur())
        assert c.scsi(read10(0, 1), read_len=512).status == 0


def test_login_without_chap_on_a_chap_target_is_0201(vmblock_server):
    set_chap(vmblock_server)
    with client(vmblock_server) as c:
        assert c.login(DEFAULT_TARGET).login_status == 0x0201


def test_mutual_chap_login_proves_the_target(vmblock_server):
    set_chap(vmblock_server, mutual=True)
    with client(vmblock_server) as c:
        # the client raises if the target's CHAP_N/CHAP_R do not prove M_SECRET
        assert c.login(DEFAULT_TARGET, chap=(USER, SECRET), mutual=(M_USER, M_SECRET)).login_status == 0


def test_acl_refuses_other_initiators_with_0202(vmblock_server):
    vmblock_server.cli("config", "set", f"acl.{DEFAULT_TARGET}", "iqn.2026-11.io.vmblock.test:only")
    with client(vmblock_server) as c:
        assert c.login(DEFAULT_TARGET).login_status == 0x0202


# ---- libiscsi -------------------------------------------------------------------------------
def test_libiscsi_inq_with_right_chap_secret_succeeds(vmblock_server):
    set_chap(vmblock_server)
    url = f"iscsi://{USER}%{SECRET}@{vmblock_server.portal}/{DEFAULT_TARGET}/0"
    p = libiscsi("iscsi-inq", url)
    assert p.returncode == 0, p.stderr
    assert "VMBLOCK" in p.stdout


def test_libiscsi_inq_with_wrong_chap_secret_fails(vmblock_server):
    set_chap(vmblock_server)
    url = f"iscsi://{USER}%wrongsecret9@{vmblock_server.portal}/{DEFAULT_TARGET}/0"
    p = libiscsi("iscsi-inq", url)
    assert p.returncode != 0 and "VMBLOCK" not in p.stdout


def test_libiscsi_inq_without_credentials_on_a_chap_target_fails(vmblock_server):
    set_chap(vmblock_server)
    p = libiscsi("iscsi-inq", f"iscsi://{vmblock_server.portal}/{DEFAULT_TARGET}/0")
    assert p.returncode != 0


def test_libiscsi_ls_lists_luns_with_chap(vmblock_server):
    set_chap(vmblock_server)
    p = libiscsi("iscsi-ls", f"iscsi://{USER}%{SECRET}@{vmblock_server.portal}", "-s")
    assert p.returncode == 0, p.stderr
    assert DEFAULT_TARGET in p.stdout and "Lun:0" in p.stdout


def test_libiscsi_mutual_chap_via_url_arguments_succeeds(vmblock_server):
    set_chap(vmblock_server, mutual=True)
    url = (f"iscsi://{USER}%{SECRET}@{vmblock_server.portal}/{DEFAULT_TARGET}/0"
           f"?target_user={M_USER}&target_password={M_SECRET}")
    p = libiscsi("iscsi-inq", url)
    assert p.returncode == 0, p.stderr


def test_libiscsi_mutual_chap_refuses_a_target_with_another_secret(vmblock_server):
    set_chap(vmblock_server, mutual=True)
    url = (f"iscsi://{USER}%{SECRET}@{vmblock_server.portal}/{DEFAULT_TARGET}/0"
           f"?target_user={M_USER}&target_password=notwhatitknows")
    p = libiscsi("iscsi-inq", url)
    assert p.returncode != 0


def test_libiscsi_mutual_chap_via_environment_succeeds(vmblock_server):
    import os
    set_chap(vmblock_server, mutual=True)
    env = dict(os.environ, LIBISCSI_CHAP_USERNAME=USER, LIBISCSI_CHAP_PASSWORD=SECRET,
               LIBISCSI_CHAP_TARGET_USERNAME=M_USER, LIBISCSI_CHAP_TARGET_PASSWORD=M_SECRET)
    p = libiscsi("iscsi-inq", f"iscsi://{vmblock_server.portal}/{DEFAULT_TARGET}/0", env=env)
    assert p.returncode == 0, p.stderr


# ---- joining a session through another door ------------------------------------------------
def _victim_and_open_target(server):
    server.cli("vdisk", "create", "opendisk", "--size", "16M", "--target", OPEN_TARGET)
    set_chap(server)
    victim = client(server)
    assert victim.login(DEFAULT_TARGET, chap=(USER, SECRET)).login_status == 0
    victim.scsi(tur())
    return victim


def test_login_to_an_open_target_cannot_take_over_a_chap_session(vmblock_server):
    victim = _victim_and_open_target(vmblock_server)
    with victim, client(vmblock_server) as attacker:
        attacker.isid, attacker.tsih = victim.isid, victim.tsih
        rsp = attacker.login(OPEN_TARGET, initiator=INITIATOR)
        assert rsp.login_status != 0


def test_discovery_login_cannot_take_over_a_chap_session(vmblock_server):
    victim = _victim_and_open_target(vmblock_server)
    with victim, client(vmblock_server) as attacker:
        attacker.isid, attacker.tsih = victim.isid, victim.tsih
        rsp = attacker.login(None, initiator=INITIATOR, session_type="Discovery")
        assert rsp.login_status != 0


# ---- digests (CRC32C, least-significant byte first on the wire) -----------------------------
DIGESTS = {"HeaderDigest": "CRC32C,None", "DataDigest": "CRC32C,None"}


def test_crc32c_digests_are_negotiated_and_correct_both_ways(vmblock_server):
    with client(vmblock_server) as c:
        rsp = c.login(DEFAULT_TARGET, chap=vmblock_server.chap(), operational=DIGESTS)
        assert rsp.login_status == 0
        assert c.header_digest and c.data_digest
        assert c.nop(b"digest me").data == b"digest me"
        c.scsi(tur())
        assert c.scsi(write10(64, 3), write=b"\x5A" * 1536).status == 0
        r = c.scsi(read10(64, 3), read_len=1536)
        assert r.status == 0 and r.data == b"\x5A" * 1536
        assert c.bad_digests == 0


def test_bad_header_digest_drops_the_connection(vmblock_server):
    with client(vmblock_server) as c:
        rsp = c.login(DEFAULT_TARGET, chap=vmblock_server.chap(), operational=DIGESTS)
        assert rsp.login_status == 0
        raw = bytearray(c.framed(pdu.build_initiator_pdu(
            pdu.Opcode.NOP_OUT, pdu.FLAG_FINAL, immediate=True, itt=c.next_itt(),
            words=(pdu.RSVD_TAG, c.cmdsn, c.exp_statsn, 0, 0, 0, 0))))
        raw[pdu.BHS_LEN] ^= 0xFF
        c.send_raw(bytes(raw))
        assert c.closed_by_peer()


def test_bad_data_digest_gets_a_reject(vmblock_server):
    with client(vmblock_server) as c:
        rsp = c.login(DEFAULT_TARGET, chap=vmblock_server.chap(), operational=DIGESTS)
        assert rsp.login_status == 0
        raw = bytearray(c.framed(pdu.build_initiator_pdu(
            pdu.Opcode.NOP_OUT, pdu.FLAG_FINAL, immediate=True, itt=c.next_itt(), dlen=8,
            words=(pdu.RSVD_TAG, c.cmdsn, c.exp_statsn, 0, 0, 0, 0)), b"payload!"))
        raw[-1] ^= 0xFF
        c.send_raw(bytes(raw))
        rsp = c.recv_pdu()
        assert rsp.opcode == pdu.Opcode.REJECT and rsp.b2 == pdu.RejectReason.DATA_DIGEST_ERROR


def test_libiscsi_with_header_digest(vmblock_server):
    p = libiscsi("iscsi-inq", vmblock_server.url() + "?header_digest=crc32c")
    assert p.returncode == 0, p.stderr
    assert "VMBLOCK" in p.stdout


# ---- resources held before login ------------------------------------------------------------
def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _sockets(pid: int) -> int:
    """Sockets the process holds open."""
    fds = os.listdir(f"/proc/{pid}/fd")
    return sum(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
               for fd in fds if os.path.exists(f"/proc/{pid}/fd/{fd}"))


@pytest.fixture
def roomy_server(tmp_path):
    """A server that keeps 100 connections from one address that have not logged in, for as
    long as the test needs (the defaults keep 64 and close them after 5 s)."""
    cfg = tmp_path / "roomy.toml"
    cfg.write_text("[iscsi]\nmax_connections_per_host = 128\nmax_login_connections = 128\n"
                   "first_pdu_timeout = 600\nlogin_timeout = 600\n")
    server = VmblockServer(tmp_path / "pool", ("--config", str(cfg)))
    try:
        yield server
    finally:
        server.stop()


def test_idle_connections_before_login_hold_little_memory(roomy_server):
    """RSS is read once the server has accepted all 100 connections (it holds their sockets),
    not after a guessed pause: on a loaded machine it may not have accepted them yet."""
    pid = roomy_server.proc.pid
    before, held = _rss_mib(pid), _sockets(pid)
    socks = [socket.create_connection((roomy_server.host, roomy_server.port)) for _ in range(100)]
    try:
        deadline = time.monotonic() + 60        # a safety net: it returns once they are held
        while _sockets(pid) < held + 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sockets(pid) >= held + 100, "the server did not accept 100 connections"
        grown = _rss_mib(pid) - before
    finally:
        for s in socks:
            s.close()
    assert grown < 16, f"100 idle connections grew the server by {grown:.0f} MiB"
