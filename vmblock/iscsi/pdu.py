"""RFC 7143 PDU codec: the 48-byte Basic Header Segment, built and parsed with one struct each.

Sans-IO: nothing here touches a socket. Initiator PDUs are parsed into ``Pdu`` objects by
``parse_bhs``; target PDUs are built by the ``build_*`` functions, which return the header bytes
(the caller appends the data segment, padding and digests via ``frame``).
"""

from __future__ import annotations

import enum
import struct

import crc32c as _crc32c

BHS_LEN = 48
DIGEST_LEN = 4
RSVD_TAG = 0xFFFFFFFF



class Opcode(enum.IntEnum):
    """PDU opcodes (RFC 7143 11.1.1): initiator opcodes below 0x20, target opcodes above."""

    NOP_OUT = 0x00
    SCSI_CMD = 0x01
    TMF_REQ = 0x02
    LOGIN_REQ = 0x03
    TEXT_REQ = 0x04
    DATA_OUT = 0x05
    LOGOUT_REQ = 0x06
    SNACK = 0x10
    NOP_IN = 0x20
    SCSI_RSP = 0x21
    TMF_RSP = 0x22
    LOGIN_RSP = 0x23
    TEXT_RSP = 0x24
    DATA_IN = 0x25
    LOGOUT_RSP = 0x26
    R2T = 0x31
    ASYNC_MSG = 0x32
    REJECT = 0x3F


# A plain int for parse_bhs, which runs for every PDU: reading an IntEnum member costs more.
_SCSI_CMD = int(Opcode.SCSI_CMD)
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



class RejectReason(enum.IntEnum):
    """Reason code of a Reject PDU (RFC 7143 11.17.1)."""

    DATA_DIGEST_ERROR = 0x02
    SNACK_REJECT = 0x03
    PROTOCOL_ERROR = 0x04
    CMD_NOT_SUPPORTED = 0x05
    IMM_CMD_REJECT = 0x06
    TASK_IN_PROGRESS = 0x07
    INVALID_DATA_ACK = 0x08
    INVALID_PDU_FIELD = 0x09
    OUT_OF_RESOURCES = 0x0A
    NEGOTIATION_RESET = 0x0B
    WAITING_FOR_LOGOUT = 0x0C


class TmfFunction(enum.IntEnum):
    """Task Management Function Request, byte 1 low 7 bits (RFC 7143 11.5.1)."""

    ABORT_TASK = 1
    ABORT_TASK_SET = 2
    CLEAR_ACA = 3
    CLEAR_TASK_SET = 4
    LUN_RESET = 5
    TARGET_WARM_RESET = 6
    TARGET_COLD_RESET = 7
    TASK_REASSIGN = 8


class TmfResponse(enum.IntEnum):
    """Task Management Function Response, byte 2 (RFC 7143 11.6.1)."""

    COMPLETE = 0
    NO_TASK = 1
    NO_LUN = 2
    TASK_STILL_ALLEGIANT = 3
    REASSIGN_UNSUPPORTED = 4
    NOT_SUPPORTED = 5
    AUTHORIZATION_FAILED = 6
    REJECTED = 255


class LogoutReason(enum.IntEnum):
    """Logout Request reason code, byte 1 low 7 bits (RFC 7143 11.14.1)."""

    CLOSE_SESSION = 0
    CLOSE_CONNECTION = 1
    REMOVE_FOR_RECOVERY = 2


class LogoutResponse(enum.IntEnum):
    """Logout Response, byte 2 (RFC 7143 11.15.1)."""

    SUCCESS = 0
    CID_NOT_FOUND = 1
    RECOVERY_UNSUPPORTED = 2
    CLEANUP_FAILED = 3


# Generic header of every initiator PDU: byte0, flags, bytes 2-3, AHS|DSL word, LUN/ISID, ITT,
# then 28 opcode-specific bytes.
_BHS = struct.Struct(">BBHIQI7I")
# The same, bytes 2 and 3 apart (what parse_bhs wants: no shift and mask per PDU).
_BHS_PARSE = struct.Struct(">BBBBIQI7I")
# SCSI Command: ... EDTL, CmdSN, ExpStatSN, CDB.
_SCSI_CMD_BHS = struct.Struct(">BBHIQIIII16s")
# Every target PDU fits this shape: byte0..3, AHS|DSL, LUN/ISID-TSIH, ITT, and 7 words.
_RSP = struct.Struct(">BBBBIQI7I")
# The 16 CDB bytes at offset 32 of a SCSI Command, as bytes in one call.
_CDB = struct.Struct("16s")
_DIGEST = struct.Struct("<I")


def crc32c(data, value: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing ``value``: the header and data digest."""
    return _crc32c.crc32c(data, value)


def pad_len(n: int) -> int:
    """Bytes of padding after an ``n``-byte data segment to reach a 4-byte boundary."""
    return -n & 3


class Pdu:
    """A parsed initiator PDU with its opcode-specific words under their RFC 7143 names.

    Each word at offsets 20..44 is one slot; the names it has in other opcodes are aliases of
    that slot (below the class), so a named field reads as fast as a plain attribute.
    """

    __slots__ = ("opcode", "immediate", "flags", "b2", "b3", "ahs_len", "dlen", "lun", "itt",
                 "ttt", "cmdsn", "exp_statsn", "ref_cmdsn", "datasn", "buffer_offset",
                 "run_length", "cdb", "ahs", "data")

    @property
    def final(self) -> bool:
        """The F bit: this PDU ends its sequence (last Data-Out of a burst, last Text PDU)."""
        return bool(self.flags & FLAG_FINAL)

    @property
    def cid(self) -> int:
        """Login and Logout Requests: the connection ID in bytes 20-21."""
        return self.ttt >> 16

    @property
    def isid(self) -> int:
        """Login Request: the 6-byte ISID in bytes 8-13."""
        return self.lun >> 16

    @property
    def tsih(self) -> int:
        """Login Request: the TSIH in bytes 14-15."""
        return self.lun & 0xFFFF


# RFC 7143 section 11: other names of the words at 20 (Expected Data Transfer Length of a SCSI
# Command, Referenced Task Tag of a TMF request) and 36 (ExpDataSN of a TMF request).
Pdu.edtl = Pdu.ref_task_tag = Pdu.ttt
Pdu.exp_datasn = Pdu.datasn


def parse_bhs(buf, off: int = 0) -> Pdu:
    """Parse the 48-byte BHS at ``buf[off:]``; AHS and data are attached by the caller."""
    p = Pdu()
    (b0, p.flags, p.b2, p.b3, ahs_dlen, p.lun, p.itt, p.ttt, p.cmdsn, p.exp_statsn, p.ref_cmdsn,
     p.datasn, p.buffer_offset, p.run_length) = _BHS_PARSE.unpack_from(buf, off)
    p.opcode = op = b0 & OPCODE_MASK
    p.immediate = b0 & IMMEDIATE_BIT != 0
    p.ahs_len = (ahs_dlen >> 24) * 4
    p.dlen = ahs_dlen & 0xFFFFFF
    p.cdb = _CDB.unpack_from(buf, off + 32)[0] if op == _SCSI_CMD else b""
    p.ahs = b""
    p.data = b""
    return p


def build_bhs(opcode: int, flags: int, b2: int = 0, b3: int = 0, dlen: int = 0, lun: int = 0,
              itt: int = RSVD_TAG, ttt: int = 0, statsn: int = 0, exp_cmdsn: int = 0,
              max_cmdsn: int = 0, datasn: int = 0, buffer_offset: int = 0,
              residual: int = 0) -> bytes:
    """Build a target PDU header. Words 24/28/32 are StatSN/ExpCmdSN/MaxCmdSN in every target
    PDU; the others by their Data-In names (RFC 7143 11.7.1): ``datasn`` is also an R2T's R2TSN,
    a SCSI Response's ExpDataSN and a Login Response's status (11.13.5); ``buffer_offset`` also
    holds a Logout Response's Time2Wait/Time2Retain (11.15); ``residual`` is also an R2T's
    Desired Data Transfer Length."""
    return _RSP.pack(opcode, flags, b2, b3, dlen, lun, itt, ttt, statsn, exp_cmdsn, max_cmdsn,
                     datasn, buffer_offset, residual)


# ``build_bhs`` with all fourteen fields given, without a Python frame: the per-command
# responses (one-PDU Data-In, SCSI Response) use it.
pack_bhs = _RSP.pack


def build_scsi_cmd(flags: int, lun: int, itt: int, edtl: int, cmdsn: int, exp_statsn: int,
                   cdb: bytes, dlen: int = 0, immediate: bool = False) -> bytes:
    """An initiator SCSI Command header; used by tests and tools that play the initiator."""
    b0 = Opcode.SCSI_CMD | (IMMEDIATE_BIT if immediate else 0)
    return _SCSI_CMD_BHS.pack(b0, flags, 0, dlen, lun, itt, edtl, cmdsn, exp_statsn, cdb.ljust(16, b"\0"))


def build_initiator_pdu(opcode: int, flags: int, *, immediate: bool = False, b2: int = 0, b3: int = 0,
                        dlen: int = 0, lun: int = 0, itt: int = 0, words=(0,) * 7) -> bytes:
    """Any initiator header from raw fields; used by tests and fuzzers."""
    b0 = opcode | (IMMEDIATE_BIT if immediate else 0)
    return _BHS.pack(b0, flags, (b2 << 8) | b3, dlen, lun, itt, *words)


# PADDING[n]: the n zero bytes that pad a data segment to a 4-byte boundary (RFC 7143 11.1).
PADDING = tuple(b"\0" * n for n in range(4))


def frame(header: bytes, data=b"", header_digest: bool = False, data_digest: bool = False) -> list:
    """The buffers of one PDU on the wire: header [+digest], data, pad [+digest]."""
    out = [header]
    if header_digest:
        out.append(_DIGEST.pack(crc32c(header)))
    if data:
        out.append(data)
        pad = PADDING[pad_len(len(data))]
        if pad:
            out.append(pad)
        if data_digest:
            crc = crc32c(data)
            if pad:
                crc = crc32c(pad, crc)
            out.append(_DIGEST.pack(crc))
    return out


def digest_of(*parts) -> int:
    """CRC32C over ``parts`` in order, to check a received header or data digest."""
    crc = 0
    for part in parts:
        crc = crc32c(part, crc)
    return crc


def read_digest(buf, off: int) -> int:
    """The 4-byte digest at ``off`` in ``buf`` (little-endian, as ``frame`` writes it)."""
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
