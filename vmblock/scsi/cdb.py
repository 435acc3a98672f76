"""CDB field decoders: bytes in, ``Decoded`` fields out, ``ScsiError`` on a bad field.

Every decoder has the same shape, ``decode(cdb, lu) -> (lba, blocks, xfer_bytes, aux)``, so the
common path in ``ScsiTarget.prepare`` can do the LBA range check, set the transfer length and
store the result without knowing the command. ``aux`` carries the one or two flags the handler
needs (FUA, BYTCHK, allocation length...). Layouts follow SBC-3 5.x and SPC-4 6.x.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from vmblock.scsi.sense import ScsiError, SenseReason

if TYPE_CHECKING:
    from vmblock.scsi.lu import LogicalUnit

Decoded = tuple[int, int, int, int]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_RW10 = struct.Struct(">BIxH")      # byte 1 flags, LBA 2-5, group 6, length 7-8
_RW12 = struct.Struct(">BII")       # byte 1 flags, LBA 2-5, length 6-9
_RW16 = struct.Struct(">BQI")       # byte 1 flags, LBA 2-9, length 10-13

# SBC-3 5.x: byte 1 of READ/WRITE(10/12/16).
PROTECT_MASK = 0xE0     # RDPROTECT / WRPROTECT / VRPROTECT
DPO = 0x10
FUA = 0x08
BYTCHK_MASK = 0x06      # VERIFY: BYTCHK (SBC-3 5.33; two bits as in SBC-4)
BYTCHK_SHIFT = 1
BYTCHK_NONE = 0
BYTCHK_COMPARE = 1
BYTCHK_ONE_BLOCK = 3
WRITE_VERIFY_BYTCHK = 0x02   # WRITE AND VERIFY: one BYTCHK bit (SBC-3 5.40)
WRITE_SAME_UNMAP = 0x08
WRITE_SAME_ANCHOR = 0x10
WRITE_SAME_NDOB = 0x01
IMMED = 0x02            # PRE-FETCH / SYNCHRONIZE CACHE

# aux flags of block commands; AUX_FUA is the CDB's own bit so READ/WRITE pass it through
AUX_FUA = FUA
AUX_UNMAP = 0x2
AUX_NDOB = 0x4


def invalid_cdb(byte: int, bit: int | None = None) -> ScsiError:
    """INVALID FIELD IN CDB pointing at ``byte``/``bit`` (SPC-4 4.5.2.4.2)."""
    return ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(byte, bit))


def u16(buf, offset: int) -> int:
    return _U16.unpack_from(buf, offset)[0]


def u32(buf, offset: int) -> int:
    return _U32.unpack_from(buf, offset)[0]


def _check_transfer(lu: LogicalUnit, blocks: int, byte: int) -> None:
    # SBC-3 6.5.3: a TRANSFER LENGTH above MAXIMUM TRANSFER LENGTH -> INVALID FIELD IN CDB.
    if blocks > lu.max_transfer_blocks:
        raise invalid_cdb(byte)


def _rw_flags(flags: int) -> int:
    # No protection information: RDPROTECT/WRPROTECT != 0 -> INVALID FIELD IN CDB (SBC-3 5.13).
    if flags & PROTECT_MASK:
        raise invalid_cdb(1, 7)
    return AUX_FUA if flags & FUA else 0


def rw6(cdb, lu: LogicalUnit) -> Decoded:
    """READ(6)/WRITE(6): a TRANSFER LENGTH of 0 means 256 blocks (SBC-3 5.12, 5.39)."""
    lba = ((cdb[1] & 0x1F) << 16) | (cdb[2] << 8) | cdb[3]
    blocks = cdb[4] or 256
    _check_transfer(lu, blocks, 4)
    return lba, blocks, blocks * lu.block_size, 0


# READ/WRITE(10/12/16) are the hot path: the checks of _rw_flags / _check_transfer inline.
def rw10(cdb, lu: LogicalUnit) -> Decoded:
    flags, lba, blocks = _RW10.unpack_from(cdb, 1)
    if flags & PROTECT_MASK:
        raise invalid_cdb(1, 7)
    if blocks > lu.max_transfer_blocks:
        raise invalid_cdb(7)
    return lba, blocks, blocks * lu.block_size, flags & AUX_FUA


def rw12(cdb, lu: LogicalUnit) -> Decoded:
    flags, lba, blocks = _RW12.unpack_from(cdb, 1)
    if flags & PROTECT_MASK:
        raise invalid_cdb(1, 7)
    if blocks > lu.max_transfer_blocks:
        raise invalid_cdb(6)
    return lba, blocks, blocks * lu.block_size, flags & AUX_FUA


def rw16(cdb, lu: LogicalUnit) -> Decoded:
    flags, lba, blocks = _RW16.unpack_from(cdb, 1)
    if flags & PROTECT_MASK:
        raise invalid_cdb(1, 7)
    if blocks > lu.max_transfer_blocks:
        raise invalid_cdb(10)
    return lba, blocks, blocks * lu.block_size, flags & AUX_FUA


def _verify(flags: int, lba: int, blocks: int, lu: LogicalUnit, len_byte: int) -> Decoded:
    if flags & PROTECT_MASK:
        raise invalid_cdb(1, 7)
    bytchk = (flags & BYTCHK_MASK) >> BYTCHK_SHIFT
    if bytchk == BYTCHK_NONE:
        xfer = 0
    elif bytchk == BYTCHK_COMPARE:
        _check_transfer(lu, blocks, len_byte)
        xfer = blocks * lu.block_size
    elif bytchk == BYTCHK_ONE_BLOCK:
        xfer = lu.block_size if blocks else 0
    else:
        raise invalid_cdb(1, 2)
    return lba, blocks, xfer, bytchk


def verify10(cdb, lu: LogicalUnit) -> Decoded:
    """VERIFY(10) (SBC-3 5.33): BYTCHK selects whether Data-Out is compared."""
    flags, lba, blocks = _RW10.unpack_from(cdb, 1)
    return _verify(flags, lba, blocks, lu, 7)


def verify12(cdb, lu: LogicalUnit) -> Decoded:
    flags, lba, blocks = _RW12.unpack_from(cdb, 1)
    return _verify(flags, lba, blocks, lu, 6)


def verify16(cdb, lu: LogicalUnit) -> Decoded:
    flags, lba, blocks = _RW16.unpack_from(cdb, 1)
    return _verify(flags, lba, blocks, lu, 10)


def _write_verify(flags: int, lba: int, blocks: int, lu: LogicalUnit, len_byte: int) -> Decoded:
    # WRITE AND VERIFY (SBC-3 5.41): no FUA bit; BYTCHK only changes what is verified.
    if flags & PROTECT_MASK:
        raise invalid_cdb(1, 7)
    _check_transfer(lu, blocks, len_byte)
    return lba, blocks, blocks * lu.block_size, 0


def write_verify10(cdb, lu: LogicalUnit) -> Decoded:
    flags, lba, blocks = _RW10.unpack_from(cdb, 1)
    return _write_verify(flags, lba, blocks, lu, 7)


def write_verify12(cdb, lu: LogicalUnit) -> Decoded:
    flags, lba, blocks = _RW12.unpack_from(cdb, 1)
    return _write_verify(flags, lba, blocks, lu, 6)


def write_verify16(cdb, lu: LogicalUnit) -> Decoded:
    flags, lba, blocks = _RW16.unpack_from(cdb, 1)
    return _write_verify(flags, lba, blocks, lu, 10)


def range10(cdb, lu: LogicalUnit) -> Decoded:
    """PRE-FETCH(10) / SYNCHRONIZE CACHE(10): LBA and block count, no data."""
    _flags, lba, blocks = _RW10.unpack_from(cdb, 1)
    return lba, blocks, 0, 0


def range16(cdb, lu: LogicalUnit) -> Decoded:
    _flags, lba, blocks = _RW16.unpack_from(cdb, 1)
    return lba, blocks, 0, 0


def compare_and_write(cdb, lu: LogicalUnit) -> Decoded:
    """COMPARE AND WRITE (SBC-3 5.2): Data-Out is the verify instance then the write instance."""
    flags, lba = struct.unpack_from(">BQ", cdb, 1)
    blocks = cdb[13]
    aux = _rw_flags(flags)
    # SBC-3 6.5.3: NUMBER OF LOGICAL BLOCKS above MAXIMUM COMPARE AND WRITE LENGTH.
    if blocks > lu.max_compare_write_blocks:
        raise invalid_cdb(13)
    return lba, blocks, 2 * blocks * lu.block_size, aux


def _write_same(flags: int, lba: int, blocks: int, lu: LogicalUnit, ndob_ok: bool,
                len_byte: int) -> Decoded:
    # SBC-3 5.42/5.43.
    if flags & PROTECT_MASK:
        raise invalid_cdb(1, 7)
    if flags & WRITE_SAME_ANCHOR:       # ANC_SUP is 0 in VPD B2
        raise invalid_cdb(1, 4)
    aux = 0
    if flags & WRITE_SAME_UNMAP:
        if not lu.can_unmap:
            raise invalid_cdb(1, 3)
        aux |= AUX_UNMAP
    if ndob_ok and flags & WRITE_SAME_NDOB:
        aux |= AUX_NDOB
    if blocks == 0:
        # SBC-3 5.42: 0 blocks means from LBA to the last LBA, subject to the limit below.
        blocks = max(lu.num_blocks - lba, 0)
        if lba > lu.num_blocks:
            raise ScsiError(SenseReason.LBA_OUT_OF_RANGE)
    if blocks > lu.max_write_same_blocks:
        raise invalid_cdb(len_byte)
    xfer = 0 if aux & AUX_NDOB else lu.block_size
    return lba, blocks, xfer, aux


def write_same10(cdb, lu: LogicalUnit) -> Decoded:
    flags, lba, blocks = _RW10.unpack_from(cdb, 1)
    return _write_same(flags, lba, blocks, lu, False, 7)


def write_same16(cdb, lu: LogicalUnit) -> Decoded:
    flags, lba, blocks = _RW16.unpack_from(cdb, 1)
    return _write_same(flags, lba, blocks, lu, True, 10)


def unmap(cdb, lu: LogicalUnit) -> Decoded:
    """UNMAP (SBC-3 5.28): ANCHOR unsupported; the parameter list is checked at execute."""
    if cdb[1] & 0x01:
        raise invalid_cdb(1, 0)
    return 0, 0, u16(cdb, 7), 0


def no_data(cdb, lu: LogicalUnit) -> Decoded:
    """Commands that move no data and carry no field we check."""
    return 0, 0, 0, 0


def alloc16_at3(cdb, lu: LogicalUnit) -> Decoded:
    """INQUIRY (SPC-4 6.4.1): ALLOCATION LENGTH in bytes 3-4."""
    alloc = u16(cdb, 3)
    return 0, 0, alloc, alloc


def alloc8_at4(cdb, lu: LogicalUnit) -> Decoded:
    """REQUEST SENSE, MODE SENSE(6): ALLOCATION LENGTH in byte 4."""
    return 0, 0, cdb[4], cdb[4]


def alloc16_at7(cdb, lu: LogicalUnit) -> Decoded:
    """MODE SENSE(10), PERSISTENT RESERVE IN: ALLOCATION LENGTH in bytes 7-8."""
    alloc = u16(cdb, 7)
    return 0, 0, alloc, alloc


def alloc32_at6(cdb, lu: LogicalUnit) -> Decoded:
    """REPORT LUNS, MAINTENANCE IN: ALLOCATION LENGTH in bytes 6-9."""
    alloc = u32(cdb, 6)
    return 0, 0, alloc, alloc


def alloc32_at10(cdb, lu: LogicalUnit) -> Decoded:
    """SERVICE ACTION IN(16): ALLOCATION LENGTH in bytes 10-13."""
    alloc = u32(cdb, 10)
    return 0, 0, alloc, alloc


def get_lba_status(cdb, lu: LogicalUnit) -> Decoded:
    """GET LBA STATUS (SBC-3 5.8): STARTING LBA must lie inside the LU."""
    lba = struct.unpack_from(">Q", cdb, 2)[0]
    alloc = u32(cdb, 10)
    if lba >= lu.num_blocks:
        raise ScsiError(SenseReason.LBA_OUT_OF_RANGE)
    return lba, 0, alloc, alloc


def param8_at4(cdb, lu: LogicalUnit) -> Decoded:
    """MODE SELECT(6): PARAMETER LIST LENGTH in byte 4."""
    return 0, 0, cdb[4], cdb[4]


def param16_at7(cdb, lu: LogicalUnit) -> Decoded:
    """MODE SELECT(10): PARAMETER LIST LENGTH in bytes 7-8."""
    n = u16(cdb, 7)
    return 0, 0, n, n


def param32_at5(cdb, lu: LogicalUnit) -> Decoded:
    """PERSISTENT RESERVE OUT: PARAMETER LIST LENGTH in bytes 5-8."""
    n = u32(cdb, 5)
    return 0, 0, n, n
