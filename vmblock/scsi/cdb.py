"""CDB field decoders: bytes in, ``Decoded`` fields out, ``ScsiError`` on a bad field.

Every decoder has the same shape, ``decode(cdb, lu) -> (lba, blocks, xfer_bytes, options)``,
so the common path in ``ScsiTarget.prepare`` can do the LBA range check, set the transfer
length and store the result without knowing the command:

- ``xfer_bytes`` is what the CDB asks to move: the blocks of a READ or WRITE, the ALLOCATION
  LENGTH of a data-in command, the PARAMETER LIST LENGTH of a parameter-list command;
- ``options`` is a set of ``OPTION_*`` bits, the CDB options the handler carries out (FUA,
  WRITE SAME's UNMAP and NDOB, VERIFY's BYTCHK).

The decoders are made from two tables rather than written out once per CDB size:
``BLOCK_LAYOUTS`` says where the 10/12/16-byte block commands keep their flags, LOGICAL BLOCK
ADDRESS and TRANSFER LENGTH (SBC-3 5.x), and ``length_field(offset, width)`` reads the one
length field of the commands that have nothing else to decode (SPC-4 6.x).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from vmblock.scsi.sense import ScsiError, SenseReason

if TYPE_CHECKING:
    from vmblock.scsi.lu import LogicalUnit

Decoded = tuple[int, int, int, int]
Decoder = Callable[[bytes, "LogicalUnit | None"], Decoded]

# SBC-3 5.x: byte 1 of READ/WRITE(10/12/16) and of the commands shaped like them.
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
UNMAP_ANCHOR = 0x01     # UNMAP byte 1 (SBC-3 5.28)
SANITIZE_IMMED = 0x80   # SANITIZE byte 1 (SBC-3 5.21.1): IMMED, a reserved bit, AUSE
SANITIZE_RESERVED = 0x40
SANITIZE_AUSE = 0x20
SANITIZE_ACTION_MASK = 0x1F
SANITIZE_OVERWRITE = 0x01
SANITIZE_HEADER_LEN = 4     # OVERWRITE parameter list header (SBC-3 5.21.2)
# READ(6)/WRITE(6): LBA in the low five bits of byte 1 and bytes 2-3 (SBC-3 5.12, 5.39).
RW6_LBA_HIGH_MASK = 0x1F

# The options a decoder hands to its handler, one bit each. OPTION_FUA is the CDB's own FUA
# bit, so READ/WRITE pass byte 1 through with one AND.
OPTION_FUA = FUA                  # durable before status (SBC-3 4.15)
OPTION_UNMAP = 0x01               # WRITE SAME: deallocate the range (SBC-3 5.42)
OPTION_NDOB = 0x02                # WRITE SAME(16): no Data-Out, the block is zeros
OPTION_BYTCHK_COMPARE = 0x10      # VERIFY BYTCHK=01b: compare Data-Out with the range
OPTION_BYTCHK_ONE_BLOCK = 0x20    # VERIFY BYTCHK=11b: compare one block with every block
OPTION_IMMED = 0x40               # SANITIZE: status before the medium is sanitized


@dataclass(frozen=True, slots=True)
class BlockLayout:
    """Where a block command of one CDB size keeps its fields."""

    fields: struct.Struct    # from byte 1: flags, LOGICAL BLOCK ADDRESS, TRANSFER LENGTH
    length_byte: int         # first byte of TRANSFER LENGTH, for the sense field pointer


BLOCK_LAYOUTS = {
    10: BlockLayout(struct.Struct(">BIxH"), 7),     # LBA 2-5, group 6, length 7-8
    12: BlockLayout(struct.Struct(">BII"), 6),      # LBA 2-5, length 6-9
    16: BlockLayout(struct.Struct(">BQI"), 10),     # LBA 2-9, length 10-13
}
_LBA_16 = struct.Struct(">Q")
_ATOMIC_16 = struct.Struct(">QHH")      # WRITE ATOMIC(16): LBA, ATOMIC BOUNDARY, length
# unsigned big-endian length fields by width in bytes
_LENGTH_FIELDS = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I")}


def invalid_cdb(byte: int, bit: int | None = None) -> ScsiError:
    """INVALID FIELD IN CDB pointing at ``byte``/``bit`` (SPC-4 4.5.2.4.2)."""
    return ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(byte, bit))


def _check_transfer(lu: LogicalUnit, blocks: int, byte: int) -> None:
    # SBC-3 6.5.3: a TRANSFER LENGTH above MAXIMUM TRANSFER LENGTH -> INVALID FIELD IN CDB.
    if blocks > lu.max_transfer_blocks:
        raise invalid_cdb(byte)


def _check_protect(flags: int) -> None:
    # No protection information: RDPROTECT/WRPROTECT != 0 -> INVALID FIELD IN CDB (SBC-3 5.13).
    if flags & PROTECT_MASK:
        raise invalid_cdb(1, 7)


def rw6(cdb, lu: LogicalUnit) -> Decoded:
    """READ(6)/WRITE(6): a TRANSFER LENGTH of 0 means 256 blocks (SBC-3 5.12, 5.39)."""
    lba = ((cdb[1] & RW6_LBA_HIGH_MASK) << 16) | (cdb[2] << 8) | cdb[3]
    blocks = cdb[4] or 256
    _check_transfer(lu, blocks, 4)
    return lba, blocks, blocks * lu.block_size, 0


def read_write(size: int) -> Decoder:
    """READ/WRITE/ORWRITE(``size``) (SBC-3 5.10-5.14, 5.35-5.39): FUA passes through.

    The hot path: the protection and transfer-length checks are written inline."""
    layout = BLOCK_LAYOUTS[size]
    unpack, length_byte = layout.fields.unpack_from, layout.length_byte

    def decode(cdb, lu: LogicalUnit) -> Decoded:
        flags, lba, blocks = unpack(cdb, 1)
        if flags & PROTECT_MASK:
            raise invalid_cdb(1, 7)
        if blocks > lu.max_transfer_blocks:
            raise invalid_cdb(length_byte)
        return lba, blocks, blocks * lu.block_size, flags & OPTION_FUA
    return decode


def _block_command(size: int,
                   check: Callable[[int, int, int, LogicalUnit, int], Decoded]) -> Decoder:
    """A decoder that reads the fields of ``BLOCK_LAYOUTS[size]`` and leaves the rest to
    ``check(flags, lba, blocks, lu, length_byte)``."""
    layout = BLOCK_LAYOUTS[size]
    unpack, length_byte = layout.fields.unpack_from, layout.length_byte

    def decode(cdb, lu: LogicalUnit) -> Decoded:
        flags, lba, blocks = unpack(cdb, 1)
        return check(flags, lba, blocks, lu, length_byte)
    return decode


def _verify(flags: int, lba: int, blocks: int, lu: LogicalUnit, length_byte: int) -> Decoded:
    _check_protect(flags)
    bytchk = (flags & BYTCHK_MASK) >> BYTCHK_SHIFT
    if bytchk == BYTCHK_NONE:
        return lba, blocks, 0, 0
    if bytchk == BYTCHK_COMPARE:
        _check_transfer(lu, blocks, length_byte)
        return lba, blocks, blocks * lu.block_size, OPTION_BYTCHK_COMPARE
    if bytchk == BYTCHK_ONE_BLOCK:
        return lba, blocks, lu.block_size if blocks else 0, OPTION_BYTCHK_ONE_BLOCK
    raise invalid_cdb(1, 2)


def verify(size: int) -> Decoder:
    """VERIFY(``size``) (SBC-3 5.33): BYTCHK selects whether Data-Out is compared."""
    return _block_command(size, _verify)


def _write_and_verify(flags: int, lba: int, blocks: int, lu: LogicalUnit,
                      length_byte: int) -> Decoded:
    _check_protect(flags)
    _check_transfer(lu, blocks, length_byte)
    return lba, blocks, blocks * lu.block_size, 0


def write_and_verify(size: int) -> Decoder:
    """WRITE AND VERIFY(``size``) (SBC-3 5.41): no FUA bit; BYTCHK only changes what is
    verified."""
    return _block_command(size, _write_and_verify)


def _write_same(flags: int, lba: int, blocks: int, lu: LogicalUnit, length_byte: int,
                ndob_allowed: bool) -> Decoded:
    _check_protect(flags)
    if flags & WRITE_SAME_ANCHOR:       # ANC_SUP is 0 in VPD B2
        raise invalid_cdb(1, 4)
    options = 0
    if flags & WRITE_SAME_UNMAP:
        if not lu.can_unmap:
            raise invalid_cdb(1, 3)
        options |= OPTION_UNMAP
    if ndob_allowed and flags & WRITE_SAME_NDOB:
        options |= OPTION_NDOB
    if blocks == 0:
        # SBC-3 5.42: 0 blocks means from LBA to the last LBA, subject to the limit below.
        blocks = max(lu.num_blocks - lba, 0)
        if lba > lu.num_blocks:
            raise ScsiError(SenseReason.LBA_OUT_OF_RANGE)
    if blocks > lu.max_write_same_blocks:
        raise invalid_cdb(length_byte)
    xfer = 0 if options & OPTION_NDOB else lu.block_size
    return lba, blocks, xfer, options


def write_same(size: int) -> Decoder:
    """WRITE SAME(``size``) (SBC-3 5.42, 5.43): NDOB exists only in the 16-byte CDB."""
    ndob_allowed = size == 16

    def check(flags: int, lba: int, blocks: int, lu: LogicalUnit, length_byte: int) -> Decoded:
        return _write_same(flags, lba, blocks, lu, length_byte, ndob_allowed)
    return _block_command(size, check)


def _block_range(flags: int, lba: int, blocks: int, lu: LogicalUnit,
                 length_byte: int) -> Decoded:
    return lba, blocks, 0, 0


def block_range(size: int) -> Decoder:
    """PRE-FETCH / SYNCHRONIZE CACHE(``size``): LBA and block count, no data."""
    return _block_command(size, _block_range)


def compare_and_write(cdb, lu: LogicalUnit) -> Decoded:
    """COMPARE AND WRITE (SBC-3 5.2): Data-Out is the verify instance then the write instance."""
    flags = cdb[1]
    lba = _LBA_16.unpack_from(cdb, 2)[0]
    blocks = cdb[13]
    _check_protect(flags)
    # SBC-3 6.5.3: NUMBER OF LOGICAL BLOCKS above MAXIMUM COMPARE AND WRITE LENGTH.
    if blocks > lu.max_compare_write_blocks:
        raise invalid_cdb(13)
    return lba, blocks, 2 * blocks * lu.block_size, flags & OPTION_FUA


def length_field(offset: int, width: int) -> Decoder:
    """A command whose one decoded field is the ALLOCATION LENGTH or PARAMETER LIST LENGTH of
    ``width`` bytes at byte ``offset``: that many bytes move (SPC-4 4.2.5.6)."""
    unpack = _LENGTH_FIELDS[width].unpack_from

    def decode(cdb, lu: LogicalUnit | None) -> Decoded:
        return 0, 0, unpack(cdb, offset)[0], 0
    return decode


def unmap(cdb, lu: LogicalUnit) -> Decoded:
    """UNMAP (SBC-3 5.28): ANCHOR unsupported; PARAMETER LIST LENGTH in bytes 7-8, the list
    itself is checked at execute."""
    if cdb[1] & UNMAP_ANCHOR:
        raise invalid_cdb(1, 0)
    return 0, 0, _LENGTH_FIELDS[2].unpack_from(cdb, 7)[0], 0


def get_lba_status(cdb, lu: LogicalUnit) -> Decoded:
    """GET LBA STATUS (SBC-3 5.8): STARTING LBA must lie inside the LU; ALLOCATION LENGTH
    in bytes 10-13."""
    lba = _LBA_16.unpack_from(cdb, 2)[0]
    if lba >= lu.num_blocks:
        raise ScsiError(SenseReason.LBA_OUT_OF_RANGE)
    return lba, 0, _LENGTH_FIELDS[4].unpack_from(cdb, 10)[0], 0


def no_data(cdb, lu: LogicalUnit | None) -> Decoded:
    """Commands that move no data and carry no field we check."""
    return 0, 0, 0, 0


def write_atomic16(cdb, lu: LogicalUnit) -> Decoded:
    """WRITE ATOMIC(16) (SBC-4 5.48): LBA in bytes 2-9, ATOMIC BOUNDARY 10-11 (none is
    supported: it must be 0), TRANSFER LENGTH 12-13 up to MAXIMUM ATOMIC TRANSFER LENGTH. A
    range past the end is LBA OUT OF RANGE before its length is looked at."""
    flags = cdb[1]
    lba, boundary, blocks = _ATOMIC_16.unpack_from(cdb, 2)
    _check_protect(flags)
    if lba + blocks > lu.num_blocks:
        raise ScsiError(SenseReason.LBA_OUT_OF_RANGE)
    if boundary:
        raise invalid_cdb(10)
    if blocks > lu.max_atomic_blocks:
        raise invalid_cdb(12)
    return lba, blocks, blocks * lu.block_size, flags & OPTION_FUA


def sanitize(cdb, lu: LogicalUnit) -> Decoded:
    """SANITIZE (SBC-3 5.21): IMMED in byte 1 (AUSE is looked at by nobody: a SANITIZE here
    never ends in the failure mode), bytes 2-6 reserved, PARAMETER LIST LENGTH in bytes 7-8:
    header and one pattern of at most a block for OVERWRITE, none for the others."""
    if cdb[1] & SANITIZE_RESERVED:
        raise invalid_cdb(1, 6)
    for byte in range(2, 7):
        if cdb[byte]:
            raise invalid_cdb(byte)
    length = _LENGTH_FIELDS[2].unpack_from(cdb, 7)[0]
    if cdb[1] & SANITIZE_ACTION_MASK == SANITIZE_OVERWRITE:
        if not SANITIZE_HEADER_LEN < length <= lu.block_size + SANITIZE_HEADER_LEN:
            raise invalid_cdb(7)
    elif length:
        raise invalid_cdb(7)
    options = OPTION_IMMED if cdb[1] & SANITIZE_IMMED else 0
    return 0, 0, length, options
