"""Mode pages (SPC-4 7.5, SBC-3 6.4) and the MODE SENSE / MODE SELECT data around them.

Each page is built from the LU for one page control (current, changeable, default); the
changeable image doubles as the mask MODE SELECT checks new values against. Only WCE in the
caching page and SWP in the control page are changeable; saved pages are not implemented.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Callable

from vmblock.scsi.constants import ModePage, PageControl
from vmblock.scsi.sense import ScsiError, SenseReason

if TYPE_CHECKING:
    from vmblock.scsi.lu import LogicalUnit

# SBC-3 6.4.5: caching page.
CACHING_WCE = 0x04
CACHING_PAGE_LEN = 0x12
# SPC-4 7.5.8: control page; QUEUE ALGORITHM MODIFIER 1 = unrestricted reordering allowed,
# since large I/O completes in a thread pool out of submission order.
CONTROL_PAGE_LEN = 0x0A
CONTROL_QAM_UNRESTRICTED = 0x10
CONTROL_SWP = 0x08          # byte 4: software write protect (the LU refuses writes)
# SPC-4 7.5.11: informational exceptions control page, exceptions disabled (DEXCPT).
IEC_PAGE_LEN = 0x0A
IEC_DEXCPT = 0x08
# SPC-4 7.5.5: disconnect-reconnect page; no field applies to iSCSI, all zero.
DISCONNECT_PAGE_LEN = 0x0E
# SBC-3 6.4.2: DEVICE-SPECIFIC PARAMETER, DPOFUA = DPO and FUA bits supported.
DSP_DPOFUA = 0x10
DSP_WP = 0x80               # the medium is write protected
# SPC-4 7.5.6: block descriptors.
SHORT_BLOCK_DESCRIPTOR_LEN = 8
LONG_BLOCK_DESCRIPTOR_LEN = 16
LONGLBA = 0x01


def _blank_page(code: ModePage, length: int) -> bytearray:
    """A mode page with its header (PAGE CODE, PAGE LENGTH) and ``length`` zero bytes of
    parameters (SPC-4 7.5.7)."""
    page = bytearray(2 + length)
    page[0] = code
    page[1] = length
    return page


def _caching(lu: LogicalUnit, pc: int) -> bytes:
    page = _blank_page(ModePage.CACHING, CACHING_PAGE_LEN)
    if pc == PageControl.CHANGEABLE:
        page[2] = CACHING_WCE
    elif (lu.write_cache if pc == PageControl.CURRENT else lu.default_write_cache):
        page[2] = CACHING_WCE
    return bytes(page)


def _control(lu: LogicalUnit, pc: int) -> bytes:
    page = _blank_page(ModePage.CONTROL, CONTROL_PAGE_LEN)
    if pc == PageControl.CHANGEABLE:
        page[4] = CONTROL_SWP
        return bytes(page)
    page[3] = CONTROL_QAM_UNRESTRICTED
    if pc == PageControl.CURRENT and lu.software_write_protect:
        page[4] = CONTROL_SWP
    page[8:10] = b"\xff\xff"        # BUSY TIMEOUT PERIOD: unlimited
    return bytes(page)


def _informational_exceptions(lu: LogicalUnit, pc: int) -> bytes:
    page = _blank_page(ModePage.INFORMATIONAL_EXCEPTIONS_CONTROL, IEC_PAGE_LEN)
    if pc != PageControl.CHANGEABLE:
        page[2] = IEC_DEXCPT
    return bytes(page)


def _disconnect_reconnect(lu: LogicalUnit, pc: int) -> bytes:
    return bytes(_blank_page(ModePage.DISCONNECT_RECONNECT, DISCONNECT_PAGE_LEN))


# page code -> builder, in ascending order as returned for 3Fh (SPC-4 6.11.1)
PAGES: dict[int, Callable[[LogicalUnit, int], bytes]] = {
    ModePage.DISCONNECT_RECONNECT: _disconnect_reconnect,
    ModePage.CACHING: _caching,
    ModePage.CONTROL: _control,
    ModePage.INFORMATIONAL_EXCEPTIONS_CONTROL: _informational_exceptions,
}
ALL_SUBPAGES = 0xFF


def mode_sense(lu: LogicalUnit, cdb, ten: bool) -> bytes:
    """MODE SENSE(6)/(10) parameter data (SPC-4 6.11, 6.12), untruncated."""
    dbd = bool(cdb[1] & 0x08)
    llbaa = ten and bool(cdb[1] & 0x10)
    pc, page_code, subpage = cdb[2] >> 6, cdb[2] & 0x3F, cdb[3]
    if pc == PageControl.SAVED:
        raise ScsiError(SenseReason.SAVING_PARAMETERS_NOT_SUPPORTED)
    if page_code == ModePage.RETURN_ALL_PAGES:
        if subpage not in (0, ALL_SUBPAGES):
            raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(3, None))
        pages = b"".join(build(lu, pc) for build in PAGES.values())
    else:
        build = PAGES.get(page_code)
        if build is None or subpage != 0:
            raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB,
                            field=(2, 5) if build is None else (3, None))
        pages = build(lu, pc)
    if dbd:
        desc = b""
    elif llbaa:
        desc = struct.pack(">Q4xI", lu.num_blocks, lu.block_size)
    else:
        desc = struct.pack(">II", min(lu.num_blocks, 0xFFFFFFFF), lu.block_size & 0xFFFFFF)
    dsp = DSP_DPOFUA | (DSP_WP if lu.write_protected else 0)
    if ten:
        body = struct.pack(">xBBxH", dsp, LONGLBA if llbaa and desc else 0, len(desc))
        data = body + desc + pages
        return struct.pack(">H", len(data)) + data
    data = struct.pack(">xBB", dsp, len(desc)) + desc + pages
    return bytes([len(data)]) + data


def mode_select(lu: LogicalUnit, cdb, param, ten: bool) -> bool:
    """Apply MODE SELECT(6)/(10) data (SPC-4 6.9, 6.10); True when a parameter changed."""
    if not param:
        return False
    if cdb[1] & 0x01:        # SP: no saved pages
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(1, 0))
    if not cdb[1] & 0x10:    # PF=0: vendor-specific page format, which we have none of
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(1, 4))
    hdr_len = 8 if ten else 4
    if len(param) < hdr_len:
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    desc_len = struct.unpack_from(">H", param, 6)[0] if ten else param[3]
    pos = hdr_len + desc_len
    if pos > len(param):
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    _check_block_descriptors(lu, param, hdr_len, desc_len, ten and bool(param[4] & LONGLBA))
    new_wce, new_swp = lu.write_cache, lu.software_write_protect
    while pos < len(param):
        if pos + 2 > len(param):
            raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
        code, length = param[pos] & 0x3F, param[pos + 1]
        build = PAGES.get(code)
        if build is None or param[pos] & 0x40:      # unknown page or a subpage format
            raise _bad_param(pos)
        current = build(lu, PageControl.CURRENT)
        mask = build(lu, PageControl.CHANGEABLE)
        if length != len(current) - 2 or pos + 2 + length > len(param):
            raise _bad_param(pos + 1)
        page = param[pos:pos + 2 + length]
        for i in range(2, len(current)):
            if (page[i] ^ current[i]) & ~mask[i]:
                raise _bad_param(pos + i)
        if code == ModePage.CACHING:
            new_wce = bool(page[2] & CACHING_WCE)
        elif code == ModePage.CONTROL:
            new_swp = bool(page[4] & CONTROL_SWP)
        pos += 2 + length
    changed = new_wce != lu.write_cache or new_swp != lu.software_write_protect
    lu.write_cache = new_wce
    if new_swp != lu.software_write_protect:
        lu.software_write_protect = new_swp
        lu.state_changed()
    return changed


def _check_block_descriptors(lu: LogicalUnit, param, start: int, length: int,
                             long_lba: bool) -> None:
    # SPC-4 7.5.6: the block size cannot change; NUMBER OF BLOCKS 0 means "unchanged".
    size = LONG_BLOCK_DESCRIPTOR_LEN if long_lba else SHORT_BLOCK_DESCRIPTOR_LEN
    if length % size:
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    for pos in range(start, start + length, size):
        if long_lba:
            blocks, block_len = struct.unpack_from(">Q4xI", param, pos)
        else:
            blocks, block_len = struct.unpack_from(">II", param, pos)
            block_len &= 0xFFFFFF
            if blocks == 0xFFFFFFFF:
                blocks = lu.num_blocks
        if block_len != lu.block_size:
            raise _bad_param(pos + size - 3)
        if blocks not in (0, lu.num_blocks):
            raise _bad_param(pos)


def _bad_param(byte: int) -> ScsiError:
    return ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(byte, None),
                     in_cdb=False)
