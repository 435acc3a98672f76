"""CHAP for the login security stage (RFC 7143 12.1.3, RFC 1994): target side, incl. mutual."""

from __future__ import annotations

import base64
import hashlib

import pytest

from vmblock.iscsi import chap
from vmblock.iscsi.chap import ChapAuthenticator, ChapError, ChapSecrets

USER, SECRET = "alice", "secretsecret"
M_USER, M_SECRET = "target", "othersecret1"

# Known answer computed independently (openssl dgst -md5 / -sha256 over 0x2a || secret || 00..0f).
KA_IDENT, KA_CHALLENGE = 0x2A, bytes(range(16))
KA_MD5 = "54d49338a27b0c1dd5e935c21ab005a3"
KA_SHA256 = "2076dab09b25dfe7f89cdb79aa854cf8af88246b80126a0856a426662b39d903"


def test_md5_response_matches_rfc1994_known_answer():
    assert chap.chap_response(chap.CHAP_MD5, KA_IDENT, SECRET, KA_CHALLENGE).hex() == KA_MD5


def test_sha256_response_matches_known_answer():
    assert chap.chap_response(chap.CHAP_SHA256, KA_IDENT, SECRET, KA_CHALLENGE).hex() == KA_SHA256


def started(creds=ChapSecrets(USER, SECRET), offered="5") -> ChapAuthenticator:
    auth = ChapAuthenticator(creds)
    auth.select(offered)
    return auth


def answer(auth, secret=SECRET, user=USER, encode="hex") -> dict:
    digest = hashlib.md5(bytes([auth.ident]) + secret.encode() + auth.challenge).digest()
    value = "0x" + digest.hex() if encode == "hex" else "0b" + base64.b64encode(digest).decode()
    return {"CHAP_N": user, "CHAP_R": value}


def test_select_answers_algorithm_identifier_and_hex_challenge():
    auth = ChapAuthenticator(ChapSecrets(USER, SECRET))
    keys = dict(auth.select("5"))
    assert keys["CHAP_A"] == "5"
    assert 0 <= int(keys["CHAP_I"]) <= 255
    assert keys["CHAP_C"].startswith("0x") and bytes.fromhex(keys["CHAP_C"][2:]) == auth.challenge
    assert len(auth.challenge) >= 16


def test_select_takes_the_first_supported_algorithm_in_the_initiator_order():
    assert dict(ChapAuthenticator(ChapSecrets(USER, SECRET)).select("6,7,5"))["CHAP_A"] == "7"


@pytest.mark.parametrize("offered", ["6", "", "md5", "5;7"])
def test_select_refuses_unsupported_or_malformed_algorithms(offered):
    with pytest.raises(ChapError):
        ChapAuthenticator(ChapSecrets(USER, SECRET)).select(offered)


def test_challenges_differ_between_exchanges():
    assert started().challenge != started().challenge


def test_right_secret_in_hex_authenticates():
    auth = started()
    assert auth.verify(answer(auth)) == []


def test_right_secret_in_base64_authenticates():
    auth = started()
    assert auth.verify(answer(auth, encode="b64")) == []


def test_wrong_secret_fails():
    auth = started()
    with pytest.raises(ChapError):
        auth.verify(answer(auth, secret="wrongsecret1"))


def test_wrong_user_name_fails():
    auth = started()
    with pytest.raises(ChapError):
        auth.verify(answer(auth, user="mallory"))


@pytest.mark.parametrize("resp", ["", "0x", "0xzz", "deadbeef", "0b!!!", "0x" + "00" * 2000])
def test_malformed_response_fails(resp):
    auth = started()
    with pytest.raises(ChapError):
        auth.verify({"CHAP_N": USER, "CHAP_R": resp})


def test_response_before_challenge_fails():
    with pytest.raises(ChapError):
        ChapAuthenticator(ChapSecrets(USER, SECRET)).verify({"CHAP_N": USER, "CHAP_R": "0x00"})


def test_missing_name_fails():
    auth = started()
    with pytest.raises(ChapError):
        auth.verify({"CHAP_R": answer(auth)["CHAP_R"]})


def test_mutual_chap_answers_the_initiator_challenge_with_the_mutual_secret():
    auth = started(ChapSecrets(USER, SECRET, M_USER, M_SECRET))
    challenge = bytes(range(100, 116))
    keys = dict(auth.verify({**answer(auth), "CHAP_I": "77", "CHAP_C": "0x" + challenge.hex()}))
    assert keys["CHAP_N"] == M_USER
    assert keys["CHAP_R"] == "0x" + hashlib.md5(bytes([77]) + M_SECRET.encode() + challenge).hexdigest()


def test_mutual_chap_accepts_a_base64_challenge():
    auth = started(ChapSecrets(USER, SECRET, M_USER, M_SECRET))
    challenge = b"0123456789abcdef"
    keys = dict(auth.verify({**answer(auth), "CHAP_I": "1",
                             "CHAP_C": "0b" + base64.b64encode(challenge).decode()}))
    assert keys["CHAP_R"] == "0x" + hashlib.md5(b"\x01" + M_SECRET.encode() + challenge).hexdigest()


def test_mutual_chap_without_mutual_secrets_configured_fails():
    auth = started()
    with pytest.raises(ChapError):
        auth.verify({**answer(auth), "CHAP_I": "1", "CHAP_C": "0x" + "11" * 16})


def test_reflected_challenge_is_refused():
    auth = started(ChapSecrets(USER, SECRET, M_USER, M_SECRET))
    with pytest.raises(ChapError):
        auth.verify({**answer(auth), "CHAP_I": "3", "CHAP_C": "0x" + auth.challenge.hex()})


@pytest.mark.parametrize("extra", [{"CHAP_I": "1"}, {"CHAP_C": "0x1122"},
                                   {"CHAP_I": "256", "CHAP_C": "0x1122"},
                                   {"CHAP_I": "one", "CHAP_C": "0x1122"},
                                   {"CHAP_I": "1", "CHAP_C": "0x"}])
def test_malformed_mutual_challenge_fails(extra):
    auth = started(ChapSecrets(USER, SECRET, M_USER, M_SECRET))
    with pytest.raises(ChapError):
        auth.verify({**answer(auth), **extra})


def test_mutual_answer_is_withheld_when_the_initiator_fails():
    auth = started(ChapSecrets(USER, SECRET, M_USER, M_SECRET))
    with pytest.raises(ChapError):
        auth.verify({**answer(auth, secret="wrongsecret1"), "CHAP_I": "1", "CHAP_C": "0x" + "22" * 16})


@pytest.mark.parametrize("value,raw", [("0x0102ff", b"\x01\x02\xff"), ("0X0A", b"\x0a"),
                                       ("0x102", b"\x01\x02"),
                                       ("0b" + base64.b64encode(b"hello").decode(), b"hello"),
                                       ("0B" + base64.b64encode(b"\0\1").decode(), b"\0\1")])
def test_decode_binary_reads_hex_and_base64(value, raw):
    assert chap.decode_binary(value) == raw


@pytest.mark.parametrize("value", ["0102", "0xGG", "0bnot base64", "0x" + "ab" * 1025])
def test_decode_binary_refuses_malformed_or_oversized_values(value):
    with pytest.raises(ChapError):
        chap.decode_binary(value)
