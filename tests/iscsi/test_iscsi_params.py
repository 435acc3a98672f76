"""Key negotiation from one table (RFC 7143 6, 13): rules, ranges, unknown and repeated keys."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vmblock.iscsi import params
from vmblock.iscsi.params import (IRRELEVANT, NOT_UNDERSTOOD, REJECT, Negotiation, NegotiationError,
                                  TARGET_OFFER)


def neg(discovery=False, **overrides) -> Negotiation:
    return Negotiation(params.validate_offer(overrides), discovery)


# ---- MIN / MAX -------------------------------------------------------------------------
def test_min_rule_answers_the_smaller_value():
    n = neg()
    assert n.respond("MaxBurstLength", "4096", "L") == "4096"
    assert n.number("MaxBurstLength") == 4096


def test_min_rule_caps_the_initiator_at_our_offer():
    n = neg(MaxBurstLength="65536", FirstBurstLength="65536")
    assert n.respond("MaxBurstLength", "16777215", "L") == "65536"


def test_max_rule_answers_the_larger_value():
    n = neg()
    assert n.respond("DefaultTime2Wait", "0", "L") == "2"
    assert n.respond("DefaultTime2Retain", "5", "L") == "0"   # Time2Retain is MIN


def test_numbers_may_be_given_in_hex():
    assert neg().respond("MaxBurstLength", "0x1000", "L") == "4096"


@pytest.mark.parametrize("key,value", [
    ("MaxBurstLength", "511"), ("MaxBurstLength", "16777216"), ("FirstBurstLength", "0"),
    ("MaxConnections", "0"), ("ErrorRecoveryLevel", "3"), ("DefaultTime2Wait", "3601"),
    ("MaxOutstandingR2T", "65536"), ("MaxBurstLength", "lots"), ("MaxBurstLength", ""),
    ("MaxBurstLength", "0x"), ("MaxBurstLength", "-1"), ("MaxBurstLength", "1e6"),
])
def test_number_out_of_range_or_malformed_is_rejected(key, value):
    n = neg()
    assert n.respond(key, value, "L") == REJECT
    assert n.value(key) == params.KEYS[key].default


def test_declared_mrdsl_is_recorded_and_not_answered():
    n = neg()
    assert n.respond("MaxRecvDataSegmentLength", "65536", "L") is None
    assert n.number("MaxRecvDataSegmentLength") == 65536


def test_declared_mrdsl_out_of_range_is_rejected():
    assert neg().respond("MaxRecvDataSegmentLength", "100", "L") == REJECT


# ---- OR / AND --------------------------------------------------------------------------
def test_or_rule_is_yes_when_either_side_says_yes():
    n = neg(InitialR2T="No")
    assert n.respond("InitialR2T", "Yes", "L") == "Yes"
    n = neg(InitialR2T="No")
    assert n.respond("InitialR2T", "No", "L") == "No"


def test_and_rule_is_no_when_either_side_says_no():
    n = neg(ImmediateData="Yes")
    assert n.respond("ImmediateData", "No", "L") == "No"
    n = neg(ImmediateData="No")
    assert n.respond("ImmediateData", "Yes", "L") == "No"
    n = neg(ImmediateData="Yes")
    assert n.respond("ImmediateData", "Yes", "L") == "Yes"


@pytest.mark.parametrize("value", ["yes", "True", "", "Yes,No"])
def test_boolean_other_than_yes_or_no_is_rejected(value):
    assert neg().respond("InitialR2T", value, "L") == REJECT


# ---- LIST ------------------------------------------------------------------------------
def test_list_rule_picks_the_first_offered_value_we_support():
    n = neg()
    assert n.respond("HeaderDigest", "CRC32C,None", "L") == "CRC32C"
    assert n.value("HeaderDigest") == "CRC32C"
    assert neg().respond("DataDigest", "None,CRC32C", "L") == "None"


def test_list_rule_skips_values_we_do_not_support():
    assert neg().respond("HeaderDigest", "SHA1,None", "L") == "None"


def test_list_rule_with_nothing_in_common_is_rejected():
    assert neg(HeaderDigest="None").respond("HeaderDigest", "CRC32C", "L") == REJECT


# ---- unknown, irrelevant, repeated, phase ------------------------------------------------
@pytest.mark.parametrize("key", ["X-com.example.Foo", "FooBar", "maxburstlength"])
def test_unknown_key_is_not_understood(key):
    assert neg().respond(key, "1", "L") == NOT_UNDERSTOOD


def test_marker_interval_keys_are_irrelevant():
    assert neg().respond("OFMarkInt", "1", "L") == IRRELEVANT


def test_session_keys_are_irrelevant_in_a_discovery_session():
    n = neg(discovery=True)
    assert n.respond("MaxBurstLength", "4096", "L") == IRRELEVANT
    assert n.value("MaxBurstLength") == params.KEYS["MaxBurstLength"].default


def test_key_negotiated_twice_during_login_is_an_error():
    n = neg()
    n.respond("MaxBurstLength", "4096", "L")
    with pytest.raises(NegotiationError):
        n.respond("MaxBurstLength", "8192", "L")


def test_login_only_key_in_full_feature_phase_is_an_error():
    with pytest.raises(NegotiationError):
        neg().respond("MaxBurstLength", "4096", "F")


def test_mrdsl_may_be_renegotiated_in_full_feature_phase():
    n = neg()
    n.respond("MaxRecvDataSegmentLength", "8192", "L")
    assert n.respond("MaxRecvDataSegmentLength", "16384", "F") is None
    assert n.number("MaxRecvDataSegmentLength") == 16384


def test_target_declares_its_mrdsl_exactly_once():
    n = neg(MaxRecvDataSegmentLength="65536")
    assert n.declarations() == [("MaxRecvDataSegmentLength", "65536")]
    assert n.declarations() == []
    assert n.target_mrdsl == 65536


# ---- FirstBurstLength <= MaxBurstLength (RFC 7143 13.14) -------------------------------
def test_finish_caps_first_burst_at_max_burst():
    n = neg()
    n.respond("MaxBurstLength", "4096", "L")
    n.respond("FirstBurstLength", "65536", "L")
    n.finish()
    assert n.number("FirstBurstLength") <= n.number("MaxBurstLength") == 4096


def test_first_burst_answer_never_exceeds_max_burst_answer():
    n = neg()
    answers = {}
    for key, value in (("MaxBurstLength", "4096"), ("FirstBurstLength", "65536")):
        answers[key] = n.respond(key, value, "L")
    assert int(answers["FirstBurstLength"]) <= int(answers["MaxBurstLength"])


def test_validate_offer_refuses_first_burst_above_max_burst():
    with pytest.raises(ValueError):
        params.validate_offer({"FirstBurstLength": "1048576", "MaxBurstLength": "65536"})


@pytest.mark.parametrize("overrides", [{"NoSuchKey": "1"}, {"MaxBurstLength": "100"},
                                       {"InitialR2T": "maybe"}])
def test_validate_offer_refuses_bad_overrides(overrides):
    with pytest.raises(ValueError):
        params.validate_offer(overrides)


@pytest.mark.parametrize("key,value", [
    ("ErrorRecoveryLevel", "1"), ("ErrorRecoveryLevel", "2"), ("DataPDUInOrder", "No"),
    ("DataSequenceInOrder", "No"), ("IFMarker", "Yes"), ("OFMarker", "Yes"),
    ("HeaderDigest", "CRC32C,SHA1"), ("DataDigest", "None,"), ("TaskReporting", "FastAbort"),
    ("iSCSIProtocolLevel", "2"),
])
def test_validate_offer_refuses_what_the_target_cannot_honour(key, value):
    """ERL 0 only, in-order Data-Out only, no markers, CRC32C digests: an offer past that
    would be agreed to at login and then broken."""
    with pytest.raises(ValueError, match="not supported"):
        params.validate_offer({key: value})


@pytest.mark.parametrize("key,value", [
    ("ErrorRecoveryLevel", "0"), ("HeaderDigest", "CRC32C"), ("DataDigest", "None,CRC32C"),
    ("DataPDUInOrder", "Yes"), ("iSCSIProtocolLevel", "0"), ("MaxConnections", "4"),
])
def test_validate_offer_keeps_what_the_target_can_honour(key, value):
    assert params.validate_offer({key: value})[key] == value


@pytest.mark.parametrize("key,value,answer", [
    ("ErrorRecoveryLevel", "2", "0"), ("ErrorRecoveryLevel", "1", "0"),
    ("DataPDUInOrder", "No", "Yes"), ("DataSequenceInOrder", "No", "Yes"),
    ("IFMarker", "Yes", "No"), ("iSCSIProtocolLevel", "31", "1"),
])
def test_initiator_asking_for_more_than_the_target_honours_gets_what_it_can(key, value, answer):
    n = neg()
    assert n.respond(key, value, "L") == answer
    assert n.value(key) == answer


def test_validate_offer_does_not_edit_the_spec_defaults():
    before = dict(TARGET_OFFER)
    params.validate_offer({"MaxBurstLength": "65536", "FirstBurstLength": "4096"})
    assert TARGET_OFFER == before


# ---- text format ---------------------------------------------------------------------------
def test_parse_text_splits_nul_terminated_pairs():
    assert params.parse_text(b"A=1\0B=x=y\0C=\0") == [("A", "1"), ("B", "x=y"), ("C", "")]


def test_parse_text_accepts_a_missing_final_nul():
    assert params.parse_text(b"A=1") == [("A", "1")]


@pytest.mark.parametrize("raw", [b"NoEquals\0", b"=value\0", b"A=1\0junk", b"\xff\xfe=1\0",
                                 b"K" * 64 + b"=1\0", b"K=" + b"v" * 8193 + b"\0"])
def test_parse_text_refuses_malformed_pairs(raw):
    with pytest.raises(NegotiationError):
        params.parse_text(raw)


def test_encode_text_inverts_parse_text():
    pairs = [("HeaderDigest", "None"), ("TargetAlias", "a b")]
    assert params.parse_text(params.encode_text(pairs)) == pairs


# ---- the same limits through the CLI ------------------------------------------------------
def _vmblock(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "vmblock", "--pool", str(tmp_path / "pool"), *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("key,value", [("iscsi.ErrorRecoveryLevel", "2"),
                                       ("iscsi.DataSequenceInOrder", "No")])
def test_config_set_of_a_value_the_target_cannot_honour_is_one_line_exit_2(tmp_path, key, value):
    p = _vmblock(tmp_path, "config", "set", key, value)
    assert p.returncode == 2
    assert p.stderr.startswith("vmblock: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "not supported" in p.stderr
    assert value not in _vmblock(tmp_path, "config", "get", key).stdout


def test_serve_with_a_config_file_asking_for_erl_2_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "erl.toml"
    cfg.write_text("[iscsi]\nErrorRecoveryLevel = 2\n")
    p = _vmblock(tmp_path, "serve", "--portal", "127.0.0.1:0", "--config", str(cfg))
    assert p.returncode == 2
    assert p.stderr.startswith("vmblock: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "ErrorRecoveryLevel=2 is not supported" in p.stderr


@pytest.mark.parametrize("key,value,why", [
    ("iscsi.max_connections", "0", "whole number from 1"),
    ("iscsi.max_connections_per_host", "lots", "whole number from 1"),
    ("iscsi.first_pdu_timeout", "0", "above 0"),
    ("iscsi.login_timeout", "never", "above 0"),
    ("iscsi.data_budget", "1M", "at least 16M"),
    ("iscsi.data_budget_per_host", "512M", "must not exceed iscsi.data_budget"),
    ("iscsi.max_login_connections", "300", "must not exceed iscsi.max_connections"),
    ("iscsi.first_pdu_timeout", "60", "must not exceed iscsi.login_timeout"),
])
def test_config_set_of_a_bad_fabric_limit_is_one_line_exit_2(tmp_path, key, value, why):
    p = _vmblock(tmp_path, "config", "set", key, value)
    assert p.returncode == 2
    assert p.stderr.startswith("vmblock: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert why in p.stderr


def test_config_set_of_fabric_limits_is_stored(tmp_path):
    for key, value in (("iscsi.data_budget", "1G"), ("iscsi.max_connections", "512"),
                       ("iscsi.first_pdu_timeout", "2.5")):
        assert _vmblock(tmp_path, "config", "set", key, value).returncode == 0
        assert value in _vmblock(tmp_path, "config", "get", key).stdout
