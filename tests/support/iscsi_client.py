"""A tiny raw-socket iSCSI initiator for tests: login (with CHAP and mutual CHAP), SCSI commands,
NOP, logout, and raw PDUs for fuzzing. Written from RFC 7143, independent of the target's code
except for the header packers in ``vmblock.iscsi.pdu`` (which the codec unit tests pin).

Only what the tests need: one connection, ERL 0, no digests, in-order data.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from dataclasses import dataclass, field

from vmblock.iscsi import pdu

INITIATOR = "iqn.2026-11.io.vmblock.test:raw"
_RSP = struct.Struct(">BBBBIQI7I")

# SCSI opcodes the tests send (SPC-4, SBC-3)
TEST_UNIT_READY = 0x00
INQUIRY = 0x12
READ_10 = 0x28
WRITE_10 = 0x2A
READ_CAPACITY_10 = 0x25


class ClientError(Exception):
    """The target answered something a well-behaved target would not (or closed the socket)."""


@dataclass
class TargetPdu:
    opcode: int
    flags: int
    b2: int
    b3: int
    ahs_len: int
    dlen: int
    lun: int
    itt: int
    words: tuple                    # the seven words at offsets 20..44
    data: bytes = b""

    @property
    def login_status(self) -> int:   # Login Response Status-Class/Detail (11.13.5)
        return self.words[4] >> 16

    @property
    def statsn(self) -> int:
        return self.words[1]

    @property
    def exp_cmdsn(self) -> int:
        return self.words[2]

    @property
    def max_cmdsn(self) -> int:
        return self.words[3]

    @property
    def ttt(self) -> int:
        return self.words[0]

    @property
    def text(self) -> dict:
        out = {}
        for item in self.data.split(b"\0"):
            if item:
                k, _, v = item.decode("utf-8", "replace").partition("=")
                out[k] = v
        return out


@dataclass
class ScsiResult:
    status: int
    data: bytes = b""
    sense: bytes = b""
    response: int = 0
    pdus: list = field(default_factory=list)


def chap_md5(ident: int, secret: str, challenge: bytes) -> bytes:
    """RFC 1994 4.1: MD5 over identifier, secret, challenge."""
    return hashlib.md5(bytes([ident]) + secret.encode() + challenge).digest()


def text_bytes(pairs) -> bytes:
    if isinstance(pairs, dict):
        pairs = pairs.items()
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


class IscsiClient:
    def __init__(self, host: str, port: int, timeout: float = 10.0, source: str | None = None):
        """``source``: the local address to connect from (e.g. another 127.x address)."""
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.isid = 0x400000000000 | int.from_bytes(os.urandom(3), "big")
        self.tsih = 0
        self.cmdsn = 1
        self.exp_statsn = 0
        self.itt = 0x100
        self.params: dict[str, str] = {}
        self.target_mrdsl = 8192
        self.header_digest = self.data_digest = False     # CRC32C, once in full feature phase
        self.bad_digests = 0                              # target PDUs whose digests were wrong
        self.stray: list[TargetPdu] = []                  # PDUs ``tmf`` read past

    # ---- raw I/O ----------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_pdu(self, header: bytes, data: bytes = b"") -> None:
        self.sock.sendall(self.framed(header, data))

    def framed(self, header: bytes, data: bytes = b"") -> bytes:
        """Header [+ CRC32C], data, padding [+ CRC32C]; digests least-significant byte first."""
        out = header
        if self.header_digest:
            out += struct.pack("<I", pdu.crc32c(header))
        if data:
            padded = data + b"\0" * pdu.pad_len(len(data))
            out += padded
            if self.data_digest:
                out += struct.pack("<I", pdu.crc32c(padded))
        return out

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ClientError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def recv_pdu(self) -> TargetPdu:
        hdr = self._recv_exact(pdu.BHS_LEN)
        (b0, flags, b2, b3, ahs_dlen, lun, itt, *words) = _RSP.unpack(hdr)
        ahs_len = (ahs_dlen >> 24) * 4
        dlen = ahs_dlen & 0xFFFFFF
        ahs = self._recv_exact(ahs_len) if ahs_len else b""
        if self.header_digest:
            (crc,) = struct.unpack("<I", self._recv_exact(4))
            self.bad_digests += crc != pdu.crc32c(hdr + ahs)
        padded = self._recv_exact(dlen + pdu.pad_len(dlen)) if dlen else b""
        if dlen and self.data_digest:
            (crc,) = struct.unpack("<I", self._recv_exact(4))
            self.bad_digests += crc != pdu.crc32c(padded)
        data = padded[:dlen]
        return TargetPdu(b0 & pdu.OPCODE_MASK, flags, b2, b3, ahs_len, dlen, lun, itt, tuple(words),
                         data)

    def recv_skip_nops(self) -> TargetPdu:
        """Next PDU that is not a NOP-In ping (pings are answered)."""
        while True:
            rsp = self.recv_pdu()
            if rsp.opcode == pdu.Opcode.NOP_IN and rsp.itt == pdu.RSVD_TAG:
                if rsp.ttt != pdu.RSVD_TAG:
                    self.send_pdu(pdu.build_initiator_pdu(
                        pdu.Opcode.NOP_OUT, pdu.FLAG_FINAL, immediate=True, lun=rsp.lun, itt=pdu.RSVD_TAG,
                        words=(rsp.ttt, self.cmdsn, self.exp_statsn, 0, 0, 0, 0)))
                continue
            return rsp

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True once the target has closed the connection (reading and discarding until EOF)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except (socket.timeout, TimeoutError):
            return False

    def next_itt(self) -> int:
        self.itt = (self.itt + 1) & 0x7FFFFFFF
        return self.itt

    # ---- login ------------------------------------------------------------------------
    def login_pdu(self, pairs, csg: int, nsg: int, transit: bool = True, cont: bool = False,
                  raw: bytes | None = None, version: tuple[int, int] = (0, 0), cid: int = 0) -> None:
        data = raw if raw is not None else text_bytes(pairs)
        flags = (pdu.LOGIN_FLAG_TRANSIT if transit else 0) | (pdu.LOGIN_FLAG_CONTINUE if cont else 0) \
            | (csg << 2) | (nsg if transit else 0)
        hdr = pdu.build_initiator_pdu(pdu.Opcode.LOGIN_REQ, flags, immediate=True, b2=version[0],
                                    b3=version[1], dlen=len(data),
                                    lun=(self.isid << 16) | self.tsih, itt=self.itt,
                                    words=(cid << 16, self.cmdsn, self.exp_statsn, 0, 0, 0, 0))
        self.send_pdu(hdr, data)

    def login_exchange(self, pairs, csg: int, nsg: int, transit: bool = True) -> TargetPdu:
        self.login_pdu(pairs, csg, nsg, transit)
        rsp = self.recv_pdu()
        if rsp.opcode != pdu.Opcode.LOGIN_RSP:
            raise ClientError(f"expected a Login Response, got opcode {rsp.opcode:#x}")
        self.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
        return rsp

    def login(self, target: str | None, initiator: str = INITIATOR, chap: tuple[str, str] | None = None,
              mutual: tuple[str, str] | None = None, operational: dict | None = None,
              session_type: str = "Normal") -> TargetPdu:
        """Log in; returns the last Login Response (check ``login_status``; 0 = in full feature).

        ``chap`` is (user, secret) to answer the target's challenge; ``mutual`` is the
        (user, secret) we expect the target to prove it knows.
        """
        first = {"InitiatorName": initiator, "SessionType": session_type}
        if target is not None:
            first["TargetName"] = target
        first["AuthMethod"] = "CHAP,None" if chap else "None"
        rsp = self.login_exchange(first, 0, 1)
        if rsp.login_status:
            return rsp
        if not rsp.flags & pdu.LOGIN_FLAG_TRANSIT:
            if rsp.text.get("AuthMethod") != "CHAP":
                raise ClientError(f"target stayed in security stage without CHAP: {rsp.text}")
            if chap is None:
                raise ClientError("target wants CHAP")
            rsp = self.login_exchange({"CHAP_A": "5"}, 0, 1, transit=False)
            if rsp.login_status:
                return rsp
            t = rsp.text
            ident, challenge = int(t["CHAP_I"]), bytes.fromhex(t["CHAP_C"][2:])
            answer = {"CHAP_N": chap[0], "CHAP_R": "0x" + chap_md5(ident, chap[1], challenge).hex()}
            my_ident, my_challenge = 0x5A, os.urandom(16)
            if mutual is not None:
                answer.update(CHAP_I=str(my_ident), CHAP_C="0x" + my_challenge.hex())
            rsp = self.login_exchange(answer, 0, 1)
            if rsp.login_status:
                return rsp
            if mutual is not None:
                got = rsp.text
                want = chap_md5(my_ident, mutual[1], my_challenge)
                if got.get("CHAP_N") != mutual[0] or got.get("CHAP_R", "")[2:] != want.hex():
                    raise ClientError(f"target failed mutual CHAP: {got}")
            if not rsp.flags & pdu.LOGIN_FLAG_TRANSIT:
                raise ClientError("target did not let us leave the security stage")
        ops = {"HeaderDigest": "None", "DataDigest": "None", "ErrorRecoveryLevel": "0",
               "MaxRecvDataSegmentLength": "262144", "DefaultTime2Wait": "0",
               "DefaultTime2Retain": "0", "IFMarker": "No", "OFMarker": "No"}
        if session_type == "Normal":
            ops.update({"InitialR2T": "Yes", "ImmediateData": "Yes", "MaxBurstLength": "262144",
                        "FirstBurstLength": "65536", "MaxOutstandingR2T": "1",
                        "MaxConnections": "1", "DataPDUInOrder": "Yes",
                        "DataSequenceInOrder": "Yes"})
        ops.update(operational or {})
        rsp = self.login_exchange(ops, 1, 3)
        if rsp.login_status:
            return rsp
        if not rsp.flags & pdu.LOGIN_FLAG_TRANSIT or rsp.flags & 3 != 3:
            raise ClientError(f"login did not reach full feature phase (flags {rsp.flags:#x})")
        self.params = rsp.text
        self.target_mrdsl = int(self.params.get("MaxRecvDataSegmentLength", "8192"))
        self.tsih = rsp.lun & 0xFFFF
        self.cmdsn = rsp.exp_cmdsn
        self.header_digest = self.params.get("HeaderDigest") == "CRC32C"
        self.data_digest = self.params.get("DataDigest") == "CRC32C"
        return rsp

    # ---- full feature phase -----------------------------------------------------------
    def scsi(self, cdb: bytes, read_len: int = 0, write: bytes = b"", lun: int = 0,
             edtl: int | None = None) -> ScsiResult:
        itt = self.next_itt()
        flags = pdu.FLAG_FINAL | (pdu.CMD_FLAG_READ if read_len else 0) | (pdu.CMD_FLAG_WRITE if write else 0) \
            | 1
        imm = write[:min(len(write), self.target_mrdsl, 65536)]
        length = edtl if edtl is not None else (read_len or len(write))
        hdr = pdu.build_scsi_cmd(flags, pdu.encode_lun(lun), itt, length, self.cmdsn, self.exp_statsn,
                               cdb, dlen=len(imm))
        self.cmdsn = (self.cmdsn + 1) & 0xFFFFFFFF
        self.send_pdu(hdr, imm)
        data = bytearray()
        result = ScsiResult(status=-1)
        while True:
            rsp = self.recv_skip_nops()
            result.pdus.append(rsp.opcode)
            if rsp.itt != itt and rsp.opcode != pdu.Opcode.REJECT:
                raise ClientError(f"PDU for ITT {rsp.itt:#x} while waiting for {itt:#x}")
            if rsp.opcode == pdu.Opcode.DATA_IN:
                data += rsp.data
                if rsp.flags & pdu.DATA_IN_FLAG_STATUS:
                    self.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
                    result.status = rsp.b3
                    break
            elif rsp.opcode == pdu.Opcode.R2T:
                off, want = rsp.words[5], rsp.words[6]
                ttt = rsp.ttt
                sent, datasn = 0, 0
                while sent < want:
                    n = min(want - sent, self.target_mrdsl)
                    final = pdu.FLAG_FINAL if sent + n == want else 0
                    self.send_pdu(pdu.build_initiator_pdu(
                        pdu.Opcode.DATA_OUT, final, dlen=n, lun=pdu.encode_lun(lun), itt=itt,
                        words=(ttt, 0, self.exp_statsn, 0, datasn, off + sent, 0)),
                        write[off + sent:off + sent + n])
                    sent += n
                    datasn += 1
            elif rsp.opcode == pdu.Opcode.SCSI_RSP:
                self.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
                result.status, result.response = rsp.b3, rsp.b2
                if rsp.data:
                    n = int.from_bytes(rsp.data[:2], "big")
                    result.sense = rsp.data[2:2 + n]
                break
            elif rsp.opcode == pdu.Opcode.REJECT:
                raise ClientError(f"target rejected the command: reason {rsp.b2:#x}")
            else:
                raise ClientError(f"unexpected opcode {rsp.opcode:#x} during a SCSI command")
        result.data = bytes(data)
        return result

    def nop(self, payload: bytes = b"") -> TargetPdu:
        itt = self.next_itt()
        self.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.NOP_OUT, pdu.FLAG_FINAL, immediate=True,
                                            dlen=len(payload), itt=itt,
                                            words=(pdu.RSVD_TAG, self.cmdsn, self.exp_statsn,
                                                   0, 0, 0, 0)), payload)
        rsp = self.recv_skip_nops()
        if rsp.opcode != pdu.Opcode.NOP_IN or rsp.itt != itt:
            raise ClientError(f"expected NOP-In for {itt:#x}, got opcode {rsp.opcode:#x}")
        self.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
        return rsp

    def text(self, pairs) -> TargetPdu:
        itt = self.next_itt()
        data = text_bytes(pairs)
        self.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.TEXT_REQ, pdu.FLAG_FINAL, dlen=len(data), itt=itt,
                                            words=(pdu.RSVD_TAG, self.cmdsn, self.exp_statsn,
                                                   0, 0, 0, 0)), data)
        self.cmdsn = (self.cmdsn + 1) & 0xFFFFFFFF
        rsp = self.recv_skip_nops()
        self.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
        return rsp

    def logout(self) -> TargetPdu:
        itt = self.next_itt()
        self.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.LOGOUT_REQ, pdu.FLAG_FINAL, immediate=True, itt=itt,
                                            words=(0, self.cmdsn, self.exp_statsn, 0, 0, 0, 0)))
        return self.recv_skip_nops()

    def text_all(self, pairs) -> list[TargetPdu]:
        """A Text Request and its continuations: while the target answers with the C bit, send
        an empty Text Request with the same ITT and the target's TTT (RFC 7143 11.10.2, 11.11.4).
        Returns every Text Response, in order; the caller joins their data."""
        itt = self.next_itt()
        data, ttt, out = text_bytes(pairs), pdu.RSVD_TAG, []
        for _ in range(1024):                        # bound a target that never stops
            self.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.TEXT_REQ, pdu.FLAG_FINAL, dlen=len(data), itt=itt,
                                                words=(ttt, self.cmdsn, self.exp_statsn,
                                                       0, 0, 0, 0)), data)
            self.cmdsn = (self.cmdsn + 1) & 0xFFFFFFFF
            rsp = self.recv_skip_nops()
            if rsp.opcode != pdu.Opcode.TEXT_RSP or rsp.itt != itt:
                raise ClientError(f"expected a Text Response for {itt:#x}, got opcode {rsp.opcode:#x}")
            self.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
            out.append(rsp)
            if not rsp.flags & pdu.TEXT_FLAG_CONTINUE:
                return out
            data, ttt = b"", rsp.ttt
        raise ClientError("Text Response continued more than 1024 times")

    def tmf(self, function: int, ref_itt: int = pdu.RSVD_TAG, ref_cmdsn: int = 0,
            lun: int = 0) -> TargetPdu:
        """Send an immediate Task Management Function Request (RFC 7143 11.5) and return its
        response; PDUs for other ITTs that arrive first are kept in ``self.stray``."""
        itt = self.next_itt()
        self.send_pdu(pdu.build_initiator_pdu(pdu.Opcode.TMF_REQ, pdu.FLAG_FINAL | function, immediate=True,
                                            lun=pdu.encode_lun(lun), itt=itt,
                                            words=(ref_itt, self.cmdsn, self.exp_statsn, ref_cmdsn,
                                                   0, 0, 0)))
        while True:
            rsp = self.recv_skip_nops()
            if rsp.opcode == pdu.Opcode.TMF_RSP and rsp.itt == itt:
                self.exp_statsn = (rsp.statsn + 1) & 0xFFFFFFFF
                return rsp
            self.stray.append(rsp)


def read10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", READ_10, 0, lba, 0, blocks, 0)


def write10(lba: int, blocks: int) -> bytes:
    return struct.pack(">BBIBHB", WRITE_10, 0, lba, 0, blocks, 0)


def inquiry(alloc: int = 96) -> bytes:
    return struct.pack(">BBBHB", INQUIRY, 0, 0, alloc, 0)


def tur() -> bytes:
    return bytes(6)
