"""PDU codec: BHS round trips, LUN addressing, padding, framing and CRC32C digests (RFC 7143 11)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from vmblock.iscsi import pdu

U32 = st.integers(0, 0xFFFFFFFF)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(opcode=st.integers(0, 0x3F), immediate=st.booleans(), flags=st.integers(0, 255),
       b2=st.integers(0, 255), b3=st.integers(0, 255), dlen=st.integers(0, 0xFFFFFF),
       lun=st.integers(0, 2**64 - 1), itt=U32, words=st.tuples(*[U32] * 7))
def test_parse_bhs_inverts_build_initiator_pdu(opcode, immediate, flags, b2, b3, dlen, lun, itt, words):
    raw = pdu.build_initiator_pdu(opcode, flags, immediate=immediate, b2=b2, b3=b3, dlen=dlen, lun=lun,
                                itt=itt, words=words)
    assert len(raw) == pdu.BHS_LEN
    p = pdu.parse_bhs(raw)
    assert (p.opcode, p.immediate, p.flags, p.b2, p.b3) == (opcode, immediate, flags, b2, b3)
    assert (p.ahs_len, p.dlen, p.lun, p.itt) == (0, dlen, lun, itt)
    assert (p.ttt, p.cmdsn, p.exp_statsn, p.ref_cmdsn, p.datasn, p.buffer_offset,
            p.run_length) == words


def test_parse_bhs_reads_total_ahs_length_in_words():
    raw = bytearray(pdu.build_initiator_pdu(pdu.Opcode.SCSI_CMD, pdu.FLAG_FINAL, dlen=0x123456))
    raw[4] = 0xFF                                  # TotalAHSLength is in 4-byte words
    p = pdu.parse_bhs(raw)
    assert p.ahs_len == 1020 and p.dlen == 0x123456


def test_parse_bhs_at_offset_inside_a_larger_buffer():
    raw = pdu.build_initiator_pdu(pdu.Opcode.NOP_OUT, pdu.FLAG_FINAL, itt=0xABCD)
    p = pdu.parse_bhs(memoryview(b"\xEE" * 7 + raw + b"\xEE"), 7)
    assert p.opcode == pdu.Opcode.NOP_OUT and p.itt == 0xABCD


def test_scsi_command_fields_land_at_rfc_offsets():
    cdb = bytes([0x28, 0, 0, 0, 0, 0x10, 0, 0, 8, 0])
    raw = pdu.build_scsi_cmd(pdu.FLAG_FINAL | pdu.CMD_FLAG_READ | 1, pdu.encode_lun(3), itt=0x11223344,
                           edtl=4096, cmdsn=7, exp_statsn=9, cdb=cdb, dlen=0, immediate=True)
    assert raw[0] == 0x41 and raw[1] == 0xC1
    assert raw[8:16] == bytes([0, 3, 0, 0, 0, 0, 0, 0])
    assert struct.unpack(">4I", raw[16:32]) == (0x11223344, 4096, 7, 9)
    assert raw[32:48] == cdb.ljust(16, b"\0")
    p = pdu.parse_bhs(raw)
    assert p.cdb == cdb.ljust(16, b"\0") and p.edtl == 4096 and p.cmdsn == 7 and p.exp_statsn == 9


def test_cdb_is_only_kept_for_scsi_commands():
    assert pdu.parse_bhs(pdu.build_initiator_pdu(pdu.Opcode.TEXT_REQ, 0, words=(1,) * 7)).cdb == b""


def test_target_header_packs_statsn_expcmdsn_maxcmdsn_at_24_28_32():
    raw = pdu.build_bhs(pdu.Opcode.SCSI_RSP, pdu.FLAG_FINAL, 0, 2, dlen=18, lun=0, itt=5, ttt=0,
                        statsn=10, exp_cmdsn=11, max_cmdsn=12, datasn=13, buffer_offset=14,
                        residual=15)
    assert len(raw) == pdu.BHS_LEN
    assert raw[:4] == bytes([0x21, 0x80, 0, 2]) and raw[4:8] == bytes([0, 0, 0, 18])
    assert struct.unpack(">7I", raw[20:48]) == (0, 10, 11, 12, 13, 14, 15)


@pytest.mark.parametrize("lun", [0, 1, 7, 255])
def test_lun_below_256_uses_peripheral_addressing(lun):
    assert pdu.encode_lun(lun) == lun << 48
    assert pdu.encode_lun(lun).to_bytes(8, "big")[:2] == bytes([0, lun])


@pytest.mark.parametrize("lun", [256, 1000, 0x3FFF])
def test_lun_from_256_uses_flat_space_addressing(lun):
    field = pdu.encode_lun(lun).to_bytes(8, "big")
    assert field[0] >> 6 == 1                       # SAM-5 4.7.7.1: 01b flat space
    assert ((field[0] & 0x3F) << 8 | field[1]) == lun
    assert field[2:] == bytes(6)


@pytest.mark.parametrize("lun", [0, 1, 255, 256, 4095, 0x3FFF])
def test_lun_round_trips_through_encode_and_decode(lun):
    assert pdu.decode_lun(pdu.encode_lun(lun)) == lun


def test_decode_lun_accepts_flat_addressing_of_a_small_lun():
    assert pdu.decode_lun(0x4005 << 48) == 5


@pytest.mark.parametrize("field", [0x0105 << 48,            # peripheral, bus 1
                                   0x8000 << 48,            # logical unit addressing
                                   0xC000 << 48])           # extended addressing
def test_decode_lun_refuses_unsupported_addressing(field):
    assert pdu.decode_lun(field) == -1


@pytest.mark.parametrize("n,pad", [(0, 0), (1, 3), (2, 2), (3, 1), (4, 0), (5, 3), (8192, 0)])
def test_pad_len_rounds_data_to_four_bytes(n, pad):
    assert pdu.pad_len(n) == pad


# RFC 7143 Appendix B.4 (= RFC 3720 B.4): CRC32C examples, with the bytes as sent on the wire.
# libiscsi's iscsi_queue_pdu stores the digest least-significant byte first, as does the RFC.
RFC_READ10_PDU = bytes.fromhex(
    "01c00000" "00000000" "00000000" "00000000" "14000000" "00000400"
    "00000014" "00000018" "28000000" "00000000" "02000000" "00000000")
CRC_VECTORS = [
    (bytes(32), 0x8A9136AA, "aa36918a"),
    (b"\xff" * 32, 0x62A8AB43, "43aba862"),
    (bytes(range(32)), 0x46DD794E, "4e79dd46"),
    (bytes(range(31, -1, -1)), 0x113FDB5C, "5cdb3f11"),
    (RFC_READ10_PDU, 0xD9963A56, "563a96d9"),
]


@pytest.mark.parametrize("data,value,wire", CRC_VECTORS, ids=["zeros", "ones", "incr", "decr", "read10"])
def test_crc32c_matches_rfc_appendix_b4(data, value, wire):
    assert pdu.crc32c(data) == value
    assert pdu.digest_of(data[:5], data[5:]) == value


@pytest.mark.parametrize("data,value,wire", CRC_VECTORS, ids=["zeros", "ones", "incr", "decr", "read10"])
def test_header_digest_goes_on_the_wire_least_significant_byte_first(data, value, wire):
    if len(data) != pdu.BHS_LEN:
        data = data + bytes(pdu.BHS_LEN - len(data))
        wire = struct.pack("<I", pdu.crc32c(data)).hex()
    out = pdu.frame(data, header_digest=True)
    assert out[1].hex() == wire
    assert pdu.read_digest(out[1], 0) == pdu.crc32c(data)


def test_frame_pads_data_and_digests_data_plus_padding():
    hdr = bytes(48)
    out = pdu.frame(hdr, b"abcde", header_digest=True, data_digest=True)
    assert out[0] == hdr and out[2] == b"abcde" and out[3] == b"\0\0\0"
    assert pdu.read_digest(out[4], 0) == pdu.crc32c(b"abcde\0\0\0")
    assert sum(map(len, out)) == 48 + 4 + 8 + 4


def test_frame_without_data_has_no_data_digest():
    assert pdu.frame(bytes(48), b"", header_digest=False, data_digest=True) == [bytes(48)]


def test_frame_of_aligned_data_has_no_padding():
    assert pdu.frame(bytes(48), b"abcd") == [bytes(48), b"abcd"]
