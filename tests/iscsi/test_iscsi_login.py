"""The login state machine (RFC 7143 6.3, 11.12, 11.13), driven with crafted Login Request PDUs.

No sockets: ``LoginNegotiator.step`` takes parsed PDUs and returns the Login Response to send.
The service is a real ``IscsiService`` (not started) and the registry a real ``SessionRegistry``.
"""

from __future__ import annotations

import hashlib

import pytest

from vmblock.iscsi import login, params, pdu
from vmblock.iscsi.chap import ChapSecrets
from vmblock.iscsi.portal import IscsiConfig, IscsiService, TargetEntry
from vmblock.iscsi.session import Session

TARGET = "iqn.2026-11.io.vmblock:t1"
SECURE = "iqn.2026-11.io.vmblock:secure"
OPEN = "iqn.2026-11.io.vmblock:open"
INITIATOR = "iqn.2026-11.io.vmblock.test:init"
ISID = 0x400000123456
CREDS = ChapSecrets("alice", "secretsecret")
MUTUAL = ChapSecrets("alice", "secretsecret", "tgt", "tgtsecret123")


def service(**kw) -> IscsiService:
    targets = {TARGET: TargetEntry(TARGET, scsi=None, alias="disk one"),
               SECURE: TargetEntry(SECURE, scsi=None, chap=kw.pop("chap", CREDS),
                                   acl=kw.pop("acl", [])),
               OPEN: TargetEntry(OPEN, scsi=None)}
    return IscsiService(targets, IscsiConfig(**kw))


def request(keys=None, csg=0, nsg=1, transit=True, cont=False, isid=ISID, tsih=0, cid=0,
            vmax=0, vmin=0, raw=None):
    data = raw if raw is not None else params.encode_text((keys or {}).items())
    flags = (pdu.LOGIN_FLAG_TRANSIT if transit else 0) | (pdu.LOGIN_FLAG_CONTINUE if cont else 0) \
        | (csg << 2) | (nsg if transit else 0)
    hdr = pdu.build_initiator_pdu(pdu.Opcode.LOGIN_REQ, flags, immediate=True, b2=vmax, b3=vmin,
                                dlen=len(data), lun=(isid << 16) | tsih, itt=1,
                                words=(cid << 16, 1, 0, 0, 0, 0, 0))
    return pdu.parse_bhs(hdr), data


def first_keys(target=TARGET, auth="None", **extra):
    keys = {"InitiatorName": INITIATOR, "SessionType": "Normal", "TargetName": target,
            "AuthMethod": auth}
    keys.update(extra)
    return {k: v for k, v in keys.items() if v is not None}


def negotiator(svc=None) -> login.LoginNegotiator:
    svc = svc or service()
    return login.LoginNegotiator(svc, svc.registry)


def text(reply) -> dict:
    return dict(reply.text)


def chap_login(lg, creds, mutual_challenge=None):
    """Run the security stage with CHAP; returns the reply to CHAP_N/CHAP_R."""
    r = lg.step(*request(first_keys(SECURE, "CHAP,None")))
    assert r.status == 0 and text(r)["AuthMethod"] == "CHAP" and not r.flags & pdu.LOGIN_FLAG_TRANSIT
    r = lg.step(*request({"CHAP_A": "5"}, transit=False))
    t = text(r)
    ident, challenge = int(t["CHAP_I"]), bytes.fromhex(t["CHAP_C"][2:])
    resp = hashlib.md5(bytes([ident]) + creds.secret.encode() + challenge).hexdigest()
    keys = {"CHAP_N": creds.user, "CHAP_R": "0x" + resp}
    if mutual_challenge is not None:
        keys.update(CHAP_I="9", CHAP_C="0x" + mutual_challenge.hex())
    return lg.step(*request(keys))


# ---- successful paths and stage transitions ----------------------------------------------
def test_security_to_operational_to_full_feature_without_auth():
    lg = negotiator()
    r = lg.step(*request(first_keys()))
    assert r.status == login.LoginStatus.SUCCESS and not r.done
    assert r.flags == pdu.LOGIN_FLAG_TRANSIT | (0 << 2) | 1          # T, CSG=0, NSG=1
    t = text(r)
    assert t["AuthMethod"] == "None" and t["TargetPortalGroupTag"] == "1"
    assert t["TargetAlias"] == "disk one"
    r = lg.step(*request({"HeaderDigest": "None", "MaxBurstLength": "65536"}, csg=1, nsg=3))
    assert r.status == 0 and r.done
    assert r.flags == pdu.LOGIN_FLAG_TRANSIT | (1 << 2) | 3
    t = text(r)
    assert t["HeaderDigest"] == "None" and t["MaxBurstLength"] == "65536"
    assert "MaxRecvDataSegmentLength" in t                          # target declares its own


def test_operational_stage_may_be_skipped_straight_to_full_feature():
    lg = negotiator()
    r = lg.step(*request(first_keys(), csg=0, nsg=3))
    assert r.status == 0 and r.done and r.flags & 3 == 3


def test_login_may_start_in_the_operational_stage_when_no_auth_is_needed():
    lg = negotiator()
    keys = first_keys()
    del keys["AuthMethod"]
    r = lg.step(*request(keys, csg=1, nsg=3))
    assert r.status == 0 and r.done


def test_target_stays_in_stage_while_the_initiator_does_not_transit():
    lg = negotiator()
    r = lg.step(*request(first_keys(), transit=False))
    assert r.status == 0 and not r.flags & pdu.LOGIN_FLAG_TRANSIT and not r.done


def test_continued_login_text_is_joined_before_parsing():
    lg = negotiator()
    raw = params.encode_text(first_keys().items())
    r = lg.step(*request(raw=raw[:10], transit=False, cont=True))
    assert r.status == 0 and r.text == [] and not r.flags & pdu.LOGIN_FLAG_TRANSIT
    r = lg.step(*request(raw=raw[10:]))
    assert r.status == 0 and text(r)["AuthMethod"] == "None"


def test_discovery_session_needs_no_target_name():
    lg = negotiator()
    r = lg.step(*request({"InitiatorName": INITIATOR, "SessionType": "Discovery",
                          "AuthMethod": "None"}, csg=0, nsg=3))
    assert r.status == 0 and r.done and lg.discovery


def test_unknown_operational_key_is_answered_not_understood():
    lg = negotiator()
    lg.step(*request(first_keys()))
    r = lg.step(*request({"X-com.example.Thing": "1"}, csg=1, nsg=3))
    assert r.status == 0 and text(r)["X-com.example.Thing"] == "NotUnderstood"


# ---- status codes ------------------------------------------------------------------------
def test_missing_initiator_name_is_0207():
    r = negotiator().step(*request(first_keys(InitiatorName=None)))
    assert r.status == login.LoginStatus.MISSING_PARAMETER == 0x0207


def test_missing_target_name_in_normal_session_is_0207():
    r = negotiator().step(*request(first_keys(TargetName=None)))
    assert r.status == 0x0207


def test_unknown_target_is_0203():
    r = negotiator().step(*request(first_keys("iqn.2026-11.io.vmblock:nope")))
    assert r.status == login.LoginStatus.TARGET_NOT_FOUND == 0x0203


def test_initiator_outside_the_acl_is_0202():
    lg = negotiator(service(acl=["iqn.2026-11.io.vmblock.test:other"]))
    r = lg.step(*request(first_keys(SECURE, "CHAP")))
    assert r.status == login.LoginStatus.AUTHORIZATION_FAILURE == 0x0202


def test_initiator_in_the_acl_gets_in():
    lg = negotiator(service(acl=[INITIATOR]))
    assert chap_login(lg, CREDS).status == 0


@pytest.mark.parametrize("vmax,vmin", [(0x01, 0x01), (0xFF, 0x02)])
def test_unsupported_version_is_0205(vmax, vmin):
    r = negotiator().step(*request(first_keys(), vmax=vmax, vmin=vmin))
    assert r.status == login.LoginStatus.UNSUPPORTED_VERSION == 0x0205


def test_version_range_including_zero_is_accepted():
    assert negotiator().step(*request(first_keys(), vmax=0x10, vmin=0)).status == 0


def test_unknown_session_type_is_0209():
    r = negotiator().step(*request(first_keys(SessionType="Weird")))
    assert r.status == login.LoginStatus.SESSION_TYPE_UNSUPPORTED == 0x0209


def test_joining_a_session_that_does_not_exist_is_020a():
    r = negotiator().step(*request(first_keys(), tsih=77))
    assert r.status == login.LoginStatus.SESSION_DOES_NOT_EXIST == 0x020A


@pytest.mark.parametrize("raw", [b"InitiatorName\0", b"\xff\xff\0", b"=x\0"])
def test_malformed_login_text_is_initiator_error_0200(raw):
    assert negotiator().step(*request(raw=raw)).status == login.LoginStatus.INITIATOR_ERROR


def test_key_repeated_in_one_request_is_0200():
    raw = params.encode_text(list(first_keys().items()) + [("InitiatorName", INITIATOR)])
    assert negotiator().step(*request(raw=raw)).status == 0x0200


def test_key_renegotiated_in_a_later_request_is_0200():
    lg = negotiator()
    lg.step(*request(first_keys(), transit=False))
    lg.step(*request({"MaxBurstLength": "4096"}, transit=False))
    assert lg.step(*request({"MaxBurstLength": "8192"})).status == 0x0200


def test_transit_and_continue_together_is_0200():
    r = negotiator().step(*request(first_keys(), transit=True, cont=True))
    assert r.status == 0x0200


@pytest.mark.parametrize("csg,nsg", [(0, 0), (1, 1), (1, 0), (0, 2), (3, 3), (2, 3)])
def test_bad_stage_transition_is_0200(csg, nsg):
    keys = first_keys()
    del keys["AuthMethod"]
    assert negotiator().step(*request(keys, csg=csg, nsg=nsg)).status == 0x0200


def test_going_back_to_security_after_operational_is_0200():
    lg = negotiator()
    lg.step(*request(first_keys()))
    lg.step(*request({"MaxBurstLength": "4096"}, csg=1, transit=False))
    assert lg.step(*request({}, csg=0, nsg=1)).status == 0x0200


def test_isid_changed_mid_login_is_0200():
    lg = negotiator()
    lg.step(*request(first_keys(), transit=False))
    assert lg.step(*request({}, isid=ISID + 1)).status == 0x0200


def test_login_text_beyond_the_bound_is_0200():
    lg = negotiator()
    chunk = b"X-pad=" + b"a" * 8000 + b"\0"
    status = 0
    for _ in range(10):
        status = lg.step(*request(raw=chunk, transit=False, cont=True)).status
        if status:
            break
    assert status == 0x0200


def test_more_than_max_login_pdus_is_0200():
    lg = negotiator()
    lg.step(*request(first_keys(), transit=False))
    statuses = [lg.step(*request({}, transit=False)).status for _ in range(login.MAX_LOGIN_PDUS)]
    assert statuses[-1] == 0x0200 and set(statuses[:-1]) == {0}


# ---- CHAP --------------------------------------------------------------------------------
def test_right_chap_secret_lets_the_initiator_transit():
    lg = negotiator()
    r = chap_login(lg, CREDS)
    assert r.status == 0 and r.flags & pdu.LOGIN_FLAG_TRANSIT and lg.authenticated


def test_wrong_chap_secret_is_0201():
    r = chap_login(negotiator(), ChapSecrets("alice", "notthesecret"))
    assert r.status == login.LoginStatus.AUTH_FAILED == 0x0201


def test_wrong_chap_user_is_0201():
    assert chap_login(negotiator(), ChapSecrets("bob", "secretsecret")).status == 0x0201


def test_initiator_refusing_chap_on_a_chap_target_is_0201():
    assert negotiator().step(*request(first_keys(SECURE, "None"))).status == 0x0201


def test_skipping_security_on_a_chap_target_is_0201():
    keys = first_keys(SECURE)
    del keys["AuthMethod"]
    assert negotiator().step(*request(keys, csg=1, nsg=3)).status == 0x0201


def test_transit_without_authenticating_does_not_leave_security():
    lg = negotiator()
    r = lg.step(*request(first_keys(SECURE, "CHAP")))
    assert r.status == 0 and not r.flags & pdu.LOGIN_FLAG_TRANSIT
    r = lg.step(*request({"CHAP_A": "5"}))        # T=1 but no response yet
    assert r.status == 0 and not r.flags & pdu.LOGIN_FLAG_TRANSIT
    assert lg.step(*request({}, csg=1, nsg=3)).status == 0x0201


def test_chap_keys_on_a_target_without_chap_are_0200():
    lg = negotiator()
    assert lg.step(*request({**first_keys(), "CHAP_A": "5"})).status == 0x0200


def test_mutual_chap_returns_the_target_proof():
    lg = negotiator(service(chap=MUTUAL))
    challenge = bytes(range(16))
    r = chap_login(lg, MUTUAL, mutual_challenge=challenge)
    assert r.status == 0
    want = hashlib.md5(bytes([9]) + MUTUAL.mutual_secret.encode() + challenge).hexdigest()
    assert text(r) == {"CHAP_N": "tgt", "CHAP_R": "0x" + want}


def test_mutual_chap_request_without_mutual_config_is_0201():
    r = chap_login(negotiator(), CREDS, mutual_challenge=bytes(16))
    assert r.status == 0x0201


# ---- joining an existing session (TSIH != 0) ----------------------------------------------
def _victim(svc, target=SECURE, cid=0) -> Session:
    """A logged-in session on ``target`` as the registry would hold it."""
    lg = negotiator(svc)
    lg.target = svc.targets[target]
    lg.isid, lg.initiator, lg.cid = ISID, INITIATOR, cid
    lg.neg = params.Negotiation(svc.offer, False)
    sess = Session(1, lg, lg.target)
    sess.connections[cid] = object()
    svc.registry.by_tsih[1] = sess
    svc.registry.by_key[sess.key] = sess
    return sess


def test_second_connection_beyond_max_connections_is_0206():
    svc = service()
    _victim(svc, TARGET)
    r = negotiator(svc).step(*request(first_keys(TARGET), tsih=1, cid=1))
    assert r.status == login.LoginStatus.TOO_MANY_CONNECTIONS == 0x0206


def test_joining_with_another_isid_is_refused():
    svc = service()
    _victim(svc, TARGET)
    r = negotiator(svc).step(*request(first_keys(TARGET), tsih=1, isid=ISID + 1))
    assert r.status != 0


def test_joining_a_session_of_another_target_is_refused():
    svc = service()
    _victim(svc, SECURE)
    lg = negotiator(svc)
    r = lg.step(*request(first_keys(OPEN), tsih=1, csg=0, nsg=3))
    assert r.status != 0


def test_discovery_login_cannot_join_a_normal_session():
    svc = service()
    _victim(svc, SECURE)
    r = negotiator(svc).step(*request({"InitiatorName": INITIATOR, "SessionType": "Discovery",
                                       "AuthMethod": "None"}, tsih=1, csg=0, nsg=3))
    assert r.status != 0
