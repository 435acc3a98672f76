"""A sans-IO iSCSI initiator for tests: builds initiator PDUs and parses target PDUs from bytes.

Written from RFC 7143 with ``struct`` and ``crc32c`` alone, independent of ``vmblock.iscsi``:
what it reads back is checked against the standard, not against the target's own codec. It
keeps the initiator's sequence numbers (CmdSN, ExpStatSN) and tags; the caller decides what to
send when, so tests can also send what a well-behaved initiator would not.
"""

from __future__ import annotations

import struct

import crc32c

from support.iscsi_client import TargetPdu, text_bytes

INITIATOR = "iqn.2026-11.io.vmblock.test:machine"
RSVD_TAG = 0xFFFFFFFF
BHS = struct.Struct(">BBBBIQI7I")        # byte 0..3, AHS length | DSL, LUN, ITT, words 20..44
DIGEST = struct.Struct("<I")            # CRC32C, least significant byte first (RFC 7143 B.4)

# Opcodes (RFC 7143 11.1.1)
NOP_OUT, SCSI_CMD, TMF_REQ, LOGIN_REQ, TEXT_REQ, DATA_OUT, LOGOUT_REQ = 0, 1, 2, 3, 4, 5, 6
NOP_IN, SCSI_RSP, TMF_RSP, LOGIN_RSP, TEXT_RSP, DATA_IN, LOGOUT_RSP = (
    0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26)
R2T, REJECT = 0x31, 0x3F
IMMEDIATE, FINAL, READ, WRITE, TRANSIT, CONTINUE = 0x40, 0x80, 0x40, 0x20, 0x80, 0x40
STATUS = 0x01                           # Data-In S bit


def crc(data: bytes) -> int:
    return crc32c.crc32c(data)


class InitiatorMachine:
    """One initiator connection: ``send_*`` return the bytes to give the target,
    ``receive_data`` takes the target's bytes and ``next_pdu`` returns each whole PDU."""

    def __init__(self, isid: int = 0x400000ABCDEF, cmdsn: int = 1, exp_statsn: int = 0):
        self.isid = isid
        self.tsih = 0
        self.cmdsn = cmdsn
        self.exp_statsn = exp_statsn
        self.itt = 0x10
        self.header_digest = self.data_digest = False
        self.inbox = bytearray()

    # ---- output ------------------------------------------------------------------------
    def frame(self, header: bytes, data: bytes = b"") -> bytes:
        out = header
        if self.header_digest:
            out += DIGEST.pack(crc(header))
        if data:
            padded = data + bytes(-len(data) & 3)
            out += padded
            if self.data_digest:
                out += DIGEST.pack(crc(padded))
        return out

    def header(self, opcode: int, flags: int, data: bytes = b"", *, immediate: bool = False,
               lun: int = 0, itt: int | None = None, words=(0,) * 7, b2: int = 0,
               b3: int = 0) -> bytes:
        """The 48-byte BHS; ``words`` are the seven words at offsets 20..44."""
        if itt is None:
            itt = self.next_itt()
        return BHS.pack(opcode | (IMMEDIATE if immediate else 0), flags, b2, b3, len(data), lun,
                        itt, *words)

    def pdu(self, opcode: int, flags: int, data: bytes = b"", **kw) -> bytes:
        return self.frame(self.header(opcode, flags, data, **kw), data)

    def next_itt(self) -> int:
        self.itt += 1
        return self.itt

    def login(self, pairs, csg: int, nsg: int, transit: bool = True, cid: int = 0) -> bytes:
        """A Login Request (RFC 7143 11.12); its CmdSN is the session's first."""
        data = text_bytes(pairs)
        flags = (TRANSIT | (csg << 2) | nsg) if transit else csg << 2
        return self.pdu(LOGIN_REQ, flags, data, immediate=True,
                        lun=(self.isid << 16) | self.tsih,
                        words=(cid << 16, self.cmdsn, self.exp_statsn, 0, 0, 0, 0))

    def command(self, cdb: bytes, *, read: int = 0, write: int = 0, data: bytes = b"",
                final: bool = True, lun: int = 0, cmdsn: int | None = None,
                itt: int | None = None) -> bytes:
        """A SCSI Command (11.3) with ``data`` as immediate data; it takes the next CmdSN
        unless ``cmdsn`` is given."""
        if cmdsn is None:
            cmdsn, self.cmdsn = self.cmdsn, (self.cmdsn + 1) & 0xFFFFFFFF
        flags = (FINAL if final else 0) | (READ if read else 0) | (WRITE if write else 0)
        cdb_words = struct.unpack(">4I", cdb.ljust(16, b"\0"))
        return self.pdu(SCSI_CMD, flags, data, lun=lun << 48, itt=itt,
                        words=(read or write, cmdsn, self.exp_statsn, *cdb_words))

    def data_out(self, itt: int, ttt: int, offset: int, data: bytes, datasn: int = 0,
                 final: bool = True) -> bytes:
        """A SCSI Data-Out (11.7)."""
        return self.pdu(DATA_OUT, FINAL if final else 0, data, itt=itt,
                        words=(ttt, 0, self.exp_statsn, 0, datasn, offset, 0))

    def immediate(self, opcode: int, flags: int, data: bytes = b"", words20: int = RSVD_TAG,
                  ref_cmdsn: int = 0, itt: int | None = None) -> bytes:
        """An immediate request (NOP-Out, TMF, Text, Logout): it carries CmdSN, not taking it."""
        return self.pdu(opcode, flags, data, immediate=True, itt=itt,
                        words=(words20, self.cmdsn, self.exp_statsn, ref_cmdsn, 0, 0, 0))

    # ---- input -------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        self.inbox += data

    def next_pdu(self) -> TargetPdu | None:
        """The next whole target PDU, or None when more bytes are needed. A wrong digest
        raises AssertionError: the target must never send one."""
        hd = 4 if self.header_digest else 0
        if len(self.inbox) < 48 + hd:
            return None
        b0, flags, b2, b3, ahs_dlen, lun, itt, *words = BHS.unpack_from(self.inbox)
        dlen = ahs_dlen & 0xFFFFFF
        ahs_len = (ahs_dlen >> 24) * 4
        padded = dlen + (-dlen & 3)
        dd = 4 if self.data_digest and dlen else 0
        total = 48 + ahs_len + hd + padded + dd
        if len(self.inbox) < total:
            return None
        raw = bytes(self.inbox[:total])
        del self.inbox[:total]
        if hd:
            assert DIGEST.unpack_from(raw, 48 + ahs_len)[0] == crc(raw[:48 + ahs_len])
        start = 48 + ahs_len + hd
        if dd:
            assert DIGEST.unpack_from(raw, start + padded)[0] == crc(raw[start:start + padded])
        rsp = TargetPdu(b0 & 0x3F, flags, b2, b3, ahs_len, dlen, lun, itt, tuple(words),
                        raw[start:start + dlen])
        no_status = (rsp.opcode == R2T or rsp.opcode == DATA_IN and not rsp.flags & STATUS
                     or rsp.opcode == NOP_IN and rsp.itt == RSVD_TAG)
        if not no_status:
            self.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
        return rsp

    def pdus(self) -> list[TargetPdu]:
        """Every whole PDU received so far."""
        out = []
        while (rsp := self.next_pdu()) is not None:
            out.append(rsp)
        return out
