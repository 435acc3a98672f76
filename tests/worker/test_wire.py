"""The owner-worker messages: every head packs and unpacks to the same fields, payloads keep
their bytes (``vmblock.worker.wire``)."""

from __future__ import annotations

from vmblock.worker import wire
from vmblock.worker.wire import HEADER, Msg


def joined(parts) -> bytes:
    return b"".join(bytes(p) for p in parts)


def test_frame_header_counts_the_payload_of_every_part():
    parts = wire.frame(Msg.COMMAND, b"abc", memoryview(b"defg"))
    assert HEADER.unpack(parts[0]) == (7, Msg.COMMAND)
    assert joined(parts[1:]) == b"abcdefg"


def test_command_round_trip_with_data_out():
    cdb = bytes([0x2A, 0, 0, 0, 0, 100, 0, 0, 8, 0])
    data = bytes(range(256)) * 16
    payload = joined(wire.pack_command(7, 3, 0x1234, 2, 4096, 1, wire.CMD_WRITE, cdb,
                                       memoryview(data)))
    tag, tsih, itt, lun, edtl, attr, flags, got_cdb, got_data = wire.unpack_command(payload)
    assert (tag, tsih, itt, lun, edtl, attr, flags) == (7, 3, 0x1234, 2, 4096, 1, wire.CMD_WRITE)
    assert got_cdb == cdb and bytes(got_data) == data


def test_result_keeps_none_apart_from_empty_data_in():
    none = joined(wire.pack_result(1, 0x02, 0, 512, b"\x70" + bytes(17), None))
    assert wire.unpack_result(none) == (1, 0x02, 0, 512, b"\x70" + bytes(17), None, 0.0)
    empty = wire.unpack_result(joined(wire.pack_result(2, 0, wire.RESULT_DATA_IN, 0, None, b"",
                                                       1234.5)))
    assert empty[4] is None and bytes(empty[5]) == b"" and empty[6] == 1234.5


def test_handoff_carries_description_and_pending_bytes():
    info = {"tsih": 5, "luns": [0, 1], "offer": {"MaxBurstLength": "262144"}}
    assert wire.unpack_handoff(joined(wire.pack_handoff(info, b"\x01\x02"))) == (info, b"\x01\x02")


def test_tmf_and_connection_heads():
    assert wire.TMF.unpack(wire.TMF.pack(9, 4, 5, wire.NO_LUN)) == (9, 4, 5, wire.NO_LUN)
    assert wire.CONNECTION.unpack(wire.CONNECTION.pack(65535, 2)) == (65535, 2)
    assert wire.CLOSED.unpack(wire.CLOSED.pack(65535, 2, 0xFFFFFFFF)) == (65535, 2, 0xFFFFFFFF)
