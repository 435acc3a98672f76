"""RFC 7143 PDU codec: the 48-byte Basic Header Segment, built and parsed with one struct each.

Sans-IO: nothing here touches a socket. Initiator PDUs are parsed into ``Pdu`` objects by
``parse_bhs``; target PDUs are built by the ``build_*`` functions, which return the header bytes
(the caller appends the data segment, padding and digests via ``frame``).
"""

from __future__ import annotations

import struct

import crc32c as _crc32c

BHS_LEN = 48
DIGEST_LEN = 4
RSVD_TAG = 0xFFFFFFFF

# Initiator opcodes (RFC 7143 11.1.1)
OP_NOP_OUT = 0x00
OP_SCSI_CMD = 0x01
OP_TMF_REQ = 0x02
OP_LOGIN_REQ = 0x03
OP_TEXT_REQ = 0x04
OP_DATA_OUT = 0x05
OP_LOGOUT_REQ = 0x06
OP_SNACK = 0x10
# Target opcodes
OP_NOP_IN = 0x20
OP_SCSI_RSP = 0x21
OP_TMF_RSP = 0x22
OP_LOGIN_RSP = 0x23
OP_TEXT_RSP = 0x24
OP_DATA_IN = 0x25
OP_LOGOUT_RSP = 0x26
OP_R2T = 0x31
OP_ASYNC_MSG = 0x32
OP_REJECT = 0x3F

OPCODE_MASK = 0x3F
IMMEDIATE_BIT = 0x40
FLAG_FINAL = 0x80

# SCSI Command flags (11.3.1)
CMD_FLAG_READ = 0x40
CMD_FLAG_WRITE = 0x20
CMD_ATTR_MASK = 0x07
# Data-In flags (11.7.1)
DATA_IN_FLAG_ACK = 0x40
DATA_IN_FLAG_OVERFLOW = 0x04
DATA_IN_FLAG_UNDERFLOW = 0x02
DATA_IN_FLAG_STATUS = 0x01
# SCSI Response flags (11.4.5)
RSP_FLAG_OVERFLOW = 0x04
RSP_FLAG_UNDERFLOW = 0x02
ISCSI_RSP_COMPLETED = 0x00
ISCSI_RSP_TARGET_FAILURE = 0x01
# Login flags (11.12.1)
LOGIN_FLAG_TRANSIT = 0x80
LOGIN_FLAG_CONTINUE = 0x40
TEXT_FLAG_CONTINUE = 0x40

# Reject reasons (11.17.1)
REJECT_DATA_DIGEST_ERROR = 0x02
REJECT_SNACK_REJECT = 0x03
REJECT_PROTOCOL_ERROR = 0x04
REJECT_CMD_NOT_SUPPORTED = 0x05
REJECT_IMM_CMD_REJECT = 0x06
REJECT_TASK_IN_PROGRESS = 0x07
REJECT_INVALID_DATA_ACK = 0x08
REJECT_INVALID_PDU_FIELD = 0x09
REJECT_OUT_OF_RESOURCES = 0x0A
REJECT_NEGOTIATION_RESET = 0x0B
REJECT_WAITING_FOR_LOGOUT = 0x0C

# Async events (11.9.1)
ASYNC_EVENT_LOGOUT_REQUEST = 1
ASYNC_EVENT_DROP_ALL = 3

# Generic header of every initiator PDU: byte0, flags, bytes 2-3, AHS|DSL word, LUN/ISID, ITT,
# then 28 opcode-specific bytes.
_BHS = struct.Struct(">BBHIQI7I")
# SCSI Command: ... EDTL, CmdSN, ExpStatSN, CDB.
_SCSI_CMD = struct.Struct(">BBHIQIIII16s")
# Every target PDU fits this shape: byte0..3, AHS|DSL, LUN/ISID-TSIH, ITT, and 7 words.
_RSP = struct.Struct(">BBBBIQI7I")
_DIGEST = struct.Struct("<I")


def crc32c(data, value: int = 0) -> int:
    return _crc32c.crc32c(data, value)


def pad_len(n: int) -> int:
    return -n & 3


class Pdu:
    """A parsed initiator PDU. Words w20..w44 are the opcode-specific 32-bit fields."""

    __slots__ = ("opcode", "immediate", "flags", "b2", "b3", "ahs_len", "dlen", "lun", "itt",
                 "w20", "w24", "w28", "w32", "w36", "w40", "w44", "cdb", "ahs", "data")

    @property
    def final(self) -> bool:
        return bool(self.flags & FLAG_FINAL)

    # Field names shared by several initiator PDUs (RFC 7143 section 11).
    @property
    def cmdsn(self) -> int:
        return self.w24

    @property
    def exp_statsn(self) -> int:
        return self.w28

    @property
    def ttt(self) -> int:
        return self.w20


def parse_bhs(buf, off: int = 0) -> Pdu:
    """Parse the 48-byte BHS at ``buf[off:]``; AHS and data are attached by the caller."""
    p = Pdu()
    (b0, p.flags, b23, ahs_dlen, p.lun, p.itt,
     p.w20, p.w24, p.w28, p.w32, p.w36, p.w40, p.w44) = _BHS.unpack_from(buf, off)
    p.opcode = b0 & OPCODE_MASK
    p.immediate = bool(b0 & IMMEDIATE_BIT)
    p.b2 = b23 >> 8
    p.b3 = b23 & 0xFF
    p.ahs_len = (ahs_dlen >> 24) * 4
    p.dlen = ahs_dlen & 0xFFFFFF
    p.cdb = bytes(buf[off + 32:off + 48]) if p.opcode == OP_SCSI_CMD else b""
    p.ahs = b""
    p.data = b""
    return p


def build_bhs(opcode: int, flags: int, b2: int = 0, b3: int = 0, dlen: int = 0, lun: int = 0,
              itt: int = RSVD_TAG, w20: int = 0, statsn: int = 0, exp_cmdsn: int = 0,
              max_cmdsn: int = 0, w36: int = 0, w40: int = 0, w44: int = 0) -> bytes:
    """Build a target PDU header. Words 24/28/32 are StatSN/ExpCmdSN/MaxCmdSN in every target PDU."""
    return _RSP.pack(opcode, flags, b2, b3, dlen, lun, itt, w20, statsn, exp_cmdsn, max_cmdsn,
                     w36, w40, w44)


def build_scsi_cmd(flags: int, lun: int, itt: int, edtl: int, cmdsn: int, exp_statsn: int,
                   cdb: bytes, dlen: int = 0, immediate: bool = False) -> bytes:
    """An initiator SCSI Command header; used by tests and tools that play the initiator."""
    b0 = OP_SCSI_CMD | (IMMEDIATE_BIT if immediate else 0)
    return _SCSI_CMD.pack(b0, flags, 0, dlen, lun, itt, edtl, cmdsn, exp_statsn, cdb.ljust(16, b"\0"))


def build_initiator_pdu(opcode: int, flags: int, *, immediate: bool = False, b2: int = 0, b3: int = 0,
                        dlen: int = 0, lun: int = 0, itt: int = 0, words=(0,) * 7) -> bytes:
    """Any initiator header from raw fields; used by tests and fuzzers."""
    b0 = opcode | (IMMEDIATE_BIT if immediate else 0)
    return _BHS.pack(b0, flags, (b2 << 8) | b3, dlen, lun, itt, *words)


def frame(header: bytes, data=b"", header_digest: bool = False, data_digest: bool = False) -> list:
    """The buffers of one PDU on the wire: header [+digest], data, pad [+digest]."""
    out = [header]
    if header_digest:
        out.append(_DIGEST.pack(crc32c(header)))
    if data:
        out.append(data)
        pad = pad_len(len(data))
        if pad:
            out.append(b"\0" * pad)
        if data_digest:
            crc = crc32c(data)
            if pad:
                crc = crc32c(b"\0" * pad, crc)
            out.append(_DIGEST.pack(crc))
    return out


def digest_of(*parts) -> int:
    crc = 0
    for part in parts:
        crc = crc32c(part, crc)
    return crc


def read_digest(buf, off: int) -> int:
    return _DIGEST.unpack_from(buf, off)[0]


def encode_lun(lun: int) -> int:
    """SAM-5 LUN field: peripheral addressing below 256, flat space addressing above."""
    if lun < 256:
        return lun << 48
    return (0x4000 | lun) << 48


def decode_lun(field: int) -> int:
    """Inverse of ``encode_lun``; an unsupported addressing method yields -1 (no such LUN)."""
    first = field >> 48
    method = first >> 14
    if method == 0:                       # peripheral device addressing, bus 0
        return first & 0xFF if first >> 8 == 0 else -1
    if method == 1:                       # flat space addressing
        return first & 0x3FFF
    return -1
