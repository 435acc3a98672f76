"""The target's connection machine piped to a test initiator machine in memory, no socket.

Every expectation is computed here from RFC 7143 (field offsets, sequence numbers, the
negotiated sizes) and read back with the initiator's own parser, so a wrong byte on the target
side fails the test. Time is passed in: a NOP-In is due when the test says the time has come.
SCSI work runs on a private event loop; only the fabric is under test.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from support.initiator_machine import (DATA_IN, FINAL, INITIATOR, LOGIN_RSP, LOGOUT_REQ,
                               LOGOUT_RSP, NOP_IN, NOP_OUT, R2T, REJECT, RSVD_TAG, SCSI_CMD,
                               SCSI_RSP, STATUS, TEXT_REQ, TEXT_RSP, TMF_REQ, TMF_RSP, TRANSIT,
                               InitiatorMachine)
from support.iscsi_client import chap_md5, read10, tur, write10
from support.pipe import (BLOCK, BURST, CMD_WINDOW, CREDS, NOP_INTERVAL, NOP_TIMEOUT,
                          OPERATIONAL, SEGMENT, START, TARGET, Pipe, answer, login, service)


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def pipe(store, loop) -> Pipe:
    return Pipe(service(store), loop)


@pytest.fixture
def ready(pipe: Pipe) -> Pipe:
    """Logged in, the power-on UNIT ATTENTION taken."""
    login(pipe)
    rsp = answer(pipe.send(pipe.initiator.command(tur())), SCSI_RSP)
    sense = rsp.data[2:]
    assert rsp.b3 == 0x02 and sense[2] & 0x0F == 0x06 and sense[12] == 0x29   # SPC-4: 29h/00h
    return pipe


# ---- login --------------------------------------------------------------------------------

def test_login_without_chap_walks_security_operational_full_feature(pipe):
    ini = pipe.initiator
    first = {"InitiatorName": INITIATOR, "TargetName": TARGET, "AuthMethod": "None"}
    rsp = answer(pipe.send(ini.login(first, 0, 1)), LOGIN_RSP)
    assert rsp.flags == TRANSIT | (0 << 2) | 1
    assert rsp.login_status == 0 and rsp.itt == ini.itt
    assert rsp.lun == ini.isid << 16                       # ISID echoed, no TSIH yet
    assert (rsp.statsn, rsp.exp_cmdsn, rsp.max_cmdsn) == (0, 1, 2)
    assert rsp.text == {"AuthMethod": "None", "TargetPortalGroupTag": "1"}
    ini.exp_statsn = 1
    rsp = answer(pipe.send(ini.login(OPERATIONAL, 1, 3)), LOGIN_RSP)
    assert rsp.flags == TRANSIT | (1 << 2) | 3 and rsp.login_status == 0
    assert rsp.lun >> 16 == ini.isid and rsp.lun & 0xFFFF != 0
    assert (rsp.statsn, rsp.exp_cmdsn, rsp.max_cmdsn) == (1, 1, CMD_WINDOW)
    assert rsp.text == {"InitialR2T": "Yes", "ImmediateData": "Yes", "FirstBurstLength": "8192",
                        "MaxBurstLength": "16384", "MaxOutstandingR2T": "1",
                        "HeaderDigest": "None", "DataDigest": "None",
                        "MaxRecvDataSegmentLength": "262144"}
    assert pipe.deadline == START + NOP_INTERVAL and not pipe.closed


def chap_pipe(store, loop, secret: str) -> tuple[Pipe, object]:
    pipe = Pipe(service(store, chap=CREDS), loop)
    ini = pipe.initiator
    first = {"InitiatorName": INITIATOR, "TargetName": TARGET, "AuthMethod": "CHAP,None"}
    rsp = answer(pipe.send(ini.login(first, 0, 1)), LOGIN_RSP)
    assert rsp.flags == 0 and rsp.text["AuthMethod"] == "CHAP"    # no T: stays in security
    rsp = answer(pipe.send(ini.login({"CHAP_A": "5"}, 0, 1, transit=False)), LOGIN_RSP)
    assert rsp.text["CHAP_A"] == "5"
    ident, challenge = int(rsp.text["CHAP_I"]), bytes.fromhex(rsp.text["CHAP_C"][2:])
    proof = {"CHAP_N": CREDS.user, "CHAP_R": "0x" + chap_md5(ident, secret, challenge).hex()}
    return pipe, answer(pipe.send(ini.login(proof, 0, 1)), LOGIN_RSP)


def test_login_with_the_right_chap_answer_transits_to_operational(store, loop):
    pipe, rsp = chap_pipe(store, loop, CREDS.secret)
    assert rsp.login_status == 0 and rsp.flags == TRANSIT | 1
    rsp = answer(pipe.send(pipe.initiator.login(OPERATIONAL, 1, 3)), LOGIN_RSP)
    assert rsp.login_status == 0 and rsp.flags == TRANSIT | (1 << 2) | 3


def test_login_with_a_wrong_chap_answer_is_0201_and_closes(store, loop):
    pipe, rsp = chap_pipe(store, loop, "not-the-secret")
    assert rsp.login_status == 0x0201 and pipe.closed == "close"
    assert pipe.machine.session is None


def test_first_pdu_deadline_drops_a_connection_that_never_logs_in(pipe):
    assert pipe.deadline == START + pipe.svc.config.first_pdu_timeout
    pipe.wait(pipe.svc.config.first_pdu_timeout)
    assert pipe.closed == "abort"


def test_a_request_before_login_closes_the_connection_without_an_answer(pipe):
    assert pipe.send(pipe.initiator.command(tur())) == [] and pipe.closed == "close"


# ---- READ and WRITE -----------------------------------------------------------------------

def test_read_is_split_at_the_initiator_mrdsl_with_status_in_the_last_data_in(ready, store):
    store.data[:4 * SEGMENT] = os.urandom(4 * SEGMENT)
    ini = ready.initiator
    cmdsn, statsn = ini.cmdsn, ini.exp_statsn
    rsps = ready.send(ini.command(read10(0, 4 * SEGMENT // BLOCK), read=4 * SEGMENT))
    assert [r.opcode for r in rsps] == [DATA_IN] * 4
    assert [r.words[4] for r in rsps] == [0, 1, 2, 3]                       # DataSN
    assert [r.words[5] for r in rsps] == [0, SEGMENT, 2 * SEGMENT, 3 * SEGMENT]  # offsets
    # F at every MaxBurstLength boundary (11.7.1); S and the status only in the last
    assert [r.flags for r in rsps] == [0, FINAL, 0, FINAL | STATUS]
    assert all(r.itt == ini.itt and r.ttt == RSVD_TAG for r in rsps)
    assert b"".join(r.data for r in rsps) == store.data[:4 * SEGMENT]
    last = rsps[-1]
    assert (last.b3, last.statsn, last.exp_cmdsn, last.words[6]) == (0, statsn, cmdsn + 1, 0)


def test_write_sends_immediate_data_then_answers_an_r2t_for_the_rest(ready, store):
    payload = os.urandom(BURST)
    ini = ready.initiator
    first = SEGMENT // 2
    cmdsn, statsn = ini.cmdsn, ini.exp_statsn
    r2t = answer(ready.send(ini.command(write10(8, BURST // BLOCK), write=BURST,
                                        data=payload[:first])), R2T)
    itt = ini.itt
    assert r2t.itt == itt and r2t.ttt != RSVD_TAG and r2t.flags == FINAL
    # R2TSN 0, the rest from where the immediate data ended, within MaxBurstLength
    assert (r2t.words[4], r2t.words[5], r2t.words[6]) == (0, first, BURST - first)
    assert (r2t.statsn, r2t.exp_cmdsn) == (statsn, cmdsn + 1)
    rest = payload[first:]
    assert ready.send(ini.data_out(itt, r2t.ttt, first, rest[:SEGMENT], 0, final=False)) == []
    rsp = answer(ready.send(ini.data_out(itt, r2t.ttt, first + SEGMENT, rest[SEGMENT:], 1)),
                 SCSI_RSP)
    assert (rsp.b2, rsp.b3, rsp.statsn, rsp.itt) == (0, 0, statsn, itt)
    assert store.data[8 * BLOCK:8 * BLOCK + BURST] == payload


def test_data_out_at_a_wrong_offset_ends_the_task_with_check_condition(ready):
    ini = ready.initiator
    r2t = answer(ready.send(ini.command(write10(0, 8), write=8 * BLOCK)), R2T)
    rsp = answer(ready.send(ini.data_out(ini.itt, r2t.ttt, BLOCK, bytes(8 * BLOCK))), SCSI_RSP)
    assert rsp.b3 == 0x02 and not ready.closed         # ERL 0: the task ends, not the connection


# ---- command window -----------------------------------------------------------------------

def test_a_command_after_a_cmdsn_gap_waits_for_the_gap_and_beyond_the_window_is_dropped(ready):
    ini = ready.initiator
    cmdsn = ini.cmdsn
    assert ready.send(ini.command(tur(), cmdsn=cmdsn + 1)) == []
    late = ini.itt
    assert ready.send(ini.command(tur(), cmdsn=cmdsn + CMD_WINDOW + 5)) == []
    rsps = ready.send(ini.command(tur(), cmdsn=cmdsn))
    assert [(r.opcode, r.itt) for r in rsps] == [(SCSI_RSP, ini.itt), (SCSI_RSP, late)]
    assert [r.exp_cmdsn for r in rsps] == [cmdsn + 1, cmdsn + 2]     # each as it ran
    assert rsps[1].statsn == rsps[0].statsn + 1


def test_a_lost_connection_gives_back_the_budget_of_commands_parked_behind_a_gap(ready):
    ini = ready.initiator
    used = ready.svc.budget.used
    data = os.urandom(BLOCK)
    assert ready.send(ini.command(write10(0, 1), write=BLOCK, data=data,
                                  cmdsn=ini.cmdsn + 1)) == []
    assert ready.svc.budget.used == used + BLOCK        # parked with its immediate data
    ready.machine.connection_lost()                     # the session goes with its last one
    assert ready.svc.budget.used == used


def test_max_cmdsn_stays_put_while_a_task_is_outstanding(ready):
    ini = ready.initiator
    r2t = answer(ready.send(ini.command(write10(0, 1), write=BLOCK)), R2T)
    # one task open: the window would shrink by one, but MaxCmdSN never goes back
    rsp = answer(ready.send(ini.command(tur())), SCSI_RSP)
    assert rsp.max_cmdsn == r2t.max_cmdsn + 1


# ---- task management ----------------------------------------------------------------------

def test_abort_task_of_a_write_waiting_for_data_completes_and_the_write_never_answers(ready):
    ini = ready.initiator
    write_cmdsn = ini.cmdsn
    r2t = answer(ready.send(ini.command(write10(0, 8), write=8 * BLOCK)), R2T)
    victim = ini.itt
    tmf = ini.immediate(TMF_REQ, FINAL | 1, words20=victim, ref_cmdsn=write_cmdsn)   # ABORT TASK
    rsp = answer(ready.send(tmf), TMF_RSP)
    assert rsp.b2 == 0 and rsp.itt == ini.itt                                     # complete
    assert ready.send(ini.data_out(victim, r2t.ttt, 0, bytes(8 * BLOCK))) == []
    assert answer(ready.send(ini.command(tur())), SCSI_RSP).b3 == 0


def test_abort_task_of_an_unknown_task_not_before_the_tmf_is_task_does_not_exist(ready):
    ini = ready.initiator
    tmf = ini.immediate(TMF_REQ, FINAL | 1, words20=0x7777, ref_cmdsn=ini.cmdsn)
    assert answer(ready.send(tmf), TMF_RSP).b2 == 1


def test_lun_reset_of_a_lun_that_does_not_exist_is_lun_does_not_exist(ready):
    ini = ready.initiator
    tmf = ini.header(TMF_REQ, FINAL | 5, immediate=True, lun=7 << 48,
                     words=(RSVD_TAG, ini.cmdsn, ini.exp_statsn, 0, 0, 0, 0))
    assert answer(ready.send(tmf), TMF_RSP).b2 == 2


# ---- NOP ----------------------------------------------------------------------------------

def test_an_idle_connection_is_pinged_and_dropped_when_the_ping_goes_unanswered(ready):
    assert ready.wait(NOP_INTERVAL - 1) == []
    ping = answer(ready.wait(1), NOP_IN)
    assert ping.itt == RSVD_TAG and ping.ttt != RSVD_TAG and ping.flags == FINAL
    assert ready.deadline == ready.now + NOP_TIMEOUT
    ini = ready.initiator
    assert ready.send(ini.immediate(NOP_OUT, FINAL, words20=ping.ttt, itt=RSVD_TAG)) == []
    again = answer(ready.wait(NOP_INTERVAL), NOP_IN)         # answered: pinged again when idle
    assert again.ttt != ping.ttt and not ready.closed
    assert ready.wait(NOP_TIMEOUT) == [] and ready.closed == "abort"


def test_traffic_puts_the_ping_off(ready):
    ready.wait(NOP_INTERVAL / 2)
    answer(ready.send(ready.initiator.command(tur())), SCSI_RSP)
    assert ready.wait(NOP_INTERVAL / 2) == []                 # idle for half the interval only
    assert ready.deadline == ready.now + NOP_INTERVAL / 2


def test_nop_out_with_an_itt_is_echoed_with_its_data(ready):
    ini = ready.initiator
    rsp = answer(ready.send(ini.immediate(NOP_OUT, FINAL, b"echo me")), NOP_IN)
    assert (rsp.itt, rsp.ttt, rsp.data) == (ini.itt, RSVD_TAG, b"echo me")


# ---- Text, Logout -------------------------------------------------------------------------

def test_send_targets_in_a_discovery_session_lists_the_target_and_its_portal(pipe):
    login(pipe, {"MaxRecvDataSegmentLength": "8192"}, session_type="Discovery")
    ini = pipe.initiator
    rsp = answer(pipe.send(ini.immediate(TEXT_REQ, FINAL, b"SendTargets=All\0")), TEXT_RSP)
    assert rsp.flags == FINAL and rsp.ttt == RSVD_TAG and rsp.itt == ini.itt
    assert rsp.data == f"TargetName={TARGET}\0TargetAddress=192.0.2.10:3260,1\0".encode()


def test_a_scsi_command_in_a_discovery_session_is_rejected_and_closes(pipe):
    login(pipe, {"MaxRecvDataSegmentLength": "8192"}, session_type="Discovery")
    rsp = answer(pipe.send(pipe.initiator.command(tur())), REJECT)
    assert rsp.b2 == 0x04 and pipe.closed == "close"


def test_logout_of_the_session_answers_success_with_the_times_and_closes(ready):
    ini = ready.initiator
    rsp = answer(ready.send(ini.immediate(LOGOUT_REQ, FINAL | 0, words20=0)), LOGOUT_RSP)
    # neither time was negotiated: the RFC 7143 13.15/13.16 defaults, Time2Wait 2, Retain 20
    assert rsp.b2 == 0 and rsp.words[5] == (2 << 16) | 20 and rsp.itt == ini.itt
    assert ready.closed == "close"
    ready.machine.connection_lost()
    assert ready.svc.registry.all() == []


def test_logout_of_an_unknown_cid_answers_cid_not_found_and_keeps_the_connection(ready):
    rsp = answer(ready.send(ready.initiator.immediate(LOGOUT_REQ, FINAL | 1, words20=9 << 16)),
                 LOGOUT_RSP)
    assert rsp.b2 == 1 and not ready.closed


# ---- hostile input ------------------------------------------------------------------------

def test_an_unknown_opcode_is_rejected_with_its_header_and_the_connection_goes_on(ready):
    ini = ready.initiator
    header = ini.header(0x1C, FINAL, immediate=True)
    rsp = answer(ready.send(header), REJECT)
    assert (rsp.b2, rsp.data, rsp.itt) == (0x05, header, RSVD_TAG)
    assert not ready.closed
    assert answer(ready.send(ini.command(tur())), SCSI_RSP).b3 == 0


def test_a_data_segment_beyond_the_target_mrdsl_is_rejected_before_it_arrives(ready):
    ini = ready.initiator
    header = bytearray(ini.header(NOP_OUT, FINAL, immediate=True))
    header[5:8] = (262144 + 1).to_bytes(3, "big")        # DataSegmentLength, no data follows
    rsp = answer(ready.send(bytes(header)), REJECT)
    assert rsp.b2 == 0x04 and rsp.data == bytes(header) and ready.closed == "close"


def test_late_data_out_of_an_unknown_task_is_ignored(ready):
    ini = ready.initiator
    assert ready.send(ini.data_out(0x4242, 0x99, 0, bytes(BLOCK))) == []
    assert not ready.closed


DIGESTS = dict(OPERATIONAL, HeaderDigest="CRC32C", DataDigest="CRC32C")


def digest_session(pipe: Pipe) -> InitiatorMachine:
    rsp = login(pipe, DIGESTS)
    assert rsp.text["HeaderDigest"] == rsp.text["DataDigest"] == "CRC32C"
    ini = pipe.initiator
    ini.header_digest = ini.data_digest = True
    return ini


def test_digests_are_checked_and_sent_once_negotiated(pipe):
    ini = digest_session(pipe)
    rsp = answer(pipe.send(ini.immediate(NOP_OUT, FINAL, b"abc")), NOP_IN)   # digests checked
    assert rsp.data == b"abc"


def test_a_bad_header_digest_is_a_protocol_error_without_the_header_and_closes(pipe):
    ini = digest_session(pipe)
    raw = bytearray(ini.immediate(NOP_OUT, FINAL))
    raw[48] ^= 0xFF
    rsp = answer(pipe.send(bytes(raw)), REJECT)     # the header cannot be trusted: not echoed
    assert (rsp.b2, rsp.data) == (0x04, b"") and pipe.closed == "close"


def test_a_bad_data_digest_is_rejected_and_closes(pipe):
    ini = digest_session(pipe)
    raw = bytearray(ini.immediate(NOP_OUT, FINAL, b"payload!"))
    raw[-1] ^= 0xFF
    rsp = answer(pipe.send(bytes(raw)), REJECT)
    assert rsp.b2 == 0x02 and rsp.data == bytes(raw[:48]) and pipe.closed == "close"


def test_a_reserved_itt_on_a_scsi_command_is_rejected(ready):
    ini = ready.initiator
    rsp = answer(ready.send(ini.command(tur(), itt=RSVD_TAG)), REJECT)
    assert rsp.b2 == 0x09 and rsp.data[:1] == bytes([SCSI_CMD])

