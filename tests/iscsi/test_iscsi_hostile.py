"""The fabric under hostile initiators, against a live ``vmblock serve``: answers that must be
split, connections that never log in, and sessions that try to pin the server's memory.

Every wait is bounded and waits for an event (a PDU, a close), never for time to pass.
"""

from __future__ import annotations

import pytest

from conftest import VmblockServer
from iscsi_client import INITIATOR, IscsiClient, inquiry, text_bytes, tur
from vmblock import DEFAULT_TARGET
from vmblock.iscsi import pdu as P

pytestmark = pytest.mark.timeout(120)

LOGIN_MRDSL = 8192                  # RFC 7143 13.12: Login PDUs carry at most this much text


# ---- a login answer longer than a Login PDU may carry ----------------------------------------
def test_login_answer_longer_than_8192_bytes_comes_in_continued_responses(vmblock_server):
    """1000 unknown keys each get NotUnderstood: ~38 KB of answer. RFC 7143 11.13.3: it comes
    in Login Responses of at most 8192 bytes, C set and T clear on all but the last; the
    initiator asks for each next piece with an empty Login Request; the login then completes."""
    s = vmblock_server
    with IscsiClient(s.host, s.port) as c:
        rsp = c.login_exchange({"InitiatorName": INITIATOR, "SessionType": "Normal",
                                "TargetName": DEFAULT_TARGET, "AuthMethod": "None"}, 0, 1)
        assert rsp.login_status == 0 and rsp.flags & P.LOGIN_FLAG_TRANSIT
        unknown = [(f"X-vmblock-test-unknown-{i:04d}", "1") for i in range(1000)]
        ops = [("HeaderDigest", "None"), ("DataDigest", "None"), ("ErrorRecoveryLevel", "2"),
               ("MaxRecvDataSegmentLength", "262144")] + unknown
        request = text_bytes(ops)
        assert len(request) > LOGIN_MRDSL
        pieces = [request[i:i + 4096] for i in range(0, len(request), 4096)]
        for piece in pieces[:-1]:            # the request goes in pieces too (C bit)
            c.login_pdu(None, 1, 3, transit=False, cont=True, raw=piece)
            rsp = c.recv_pdu()
            assert rsp.opcode == P.OP_LOGIN_RSP and rsp.login_status == 0 and rsp.dlen == 0
            c.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
        c.login_pdu(None, 1, 3, raw=pieces[-1])
        answers = []
        for _ in range(64):
            rsp = c.recv_pdu()
            assert rsp.opcode == P.OP_LOGIN_RSP and rsp.login_status == 0
            c.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
            assert rsp.dlen <= LOGIN_MRDSL, f"Login Response of {rsp.dlen} bytes"
            answers.append(rsp)
            if not rsp.flags & P.LOGIN_FLAG_CONTINUE:
                break
            assert not rsp.flags & P.LOGIN_FLAG_TRANSIT, "C and T set together"
            c.login_pdu(None, 1, 3, raw=b"")          # next piece, please
        assert len(answers) >= 5, [r.dlen for r in answers]
        last = answers[-1]
        assert last.flags & P.LOGIN_FLAG_TRANSIT and last.flags & 3 == 3
        body = b"".join(r.data for r in answers)
        pairs = dict(item.decode().split("=", 1) for item in body.split(b"\0") if item)
        assert all(pairs[k] == "NotUnderstood" for k, _ in unknown)
        assert pairs["ErrorRecoveryLevel"] == "0"      # asked for 2, the target offers only 0
        c.tsih, c.cmdsn = last.lun & 0xFFFF, last.exp_cmdsn
        assert b"VMBLOCK" in c.scsi(inquiry(), read_len=96).data
        c.scsi(tur())                                   # may report the power-on unit attention
        assert c.scsi(tur()).status == 0
