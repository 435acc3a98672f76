"""SPC-4 command handlers: INQUIRY and its VPD pages, REPORT LUNS, REQUEST SENSE, MODE
SENSE/SELECT, RESERVE/RELEASE, PERSISTENT RESERVE IN/OUT, REPORT SUPPORTED OPERATION CODES and
TASK MANAGEMENT FUNCTIONS, REPORT TARGET PORT GROUPS, TEST UNIT READY.

Every handler has the signature ``(target, lu, task, lba, blocks, options)`` of
``CommandSpec.execute``; no SPC command has ``cdb.OPTION_*`` bits, and the ALLOCATION LENGTH
of the data-in commands is ``task.cdb_xfer_len``, where the decoder put it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from vmblock.scsi import modepages, pr, xcopy
from vmblock.scsi.command_spec import CommandSpec, CommandTable, Handler, supported_specs
from vmblock.scsi.constants import (
    ASSOCIATION_LU,
    ASSOCIATION_TARGET_DEVICE,
    ASSOCIATION_TARGET_PORT,
    CODE_SET_ASCII,
    CODE_SET_BINARY,
    CODE_SET_UTF8,
    DESIGNATOR_NAA,
    DESIGNATOR_RELATIVE_TARGET_PORT,
    DESIGNATOR_SCSI_NAME_STRING,
    DESIGNATOR_T10_VENDOR_ID,
    DESIGNATOR_TARGET_PORT_GROUP,
    ALUA_STATE_ACTIVE_OPTIMIZED,
    ALUA_SUPPORTS_ACTIVE_OPTIMIZED,
    INQUIRY_RMB,
    INQUIRY_TPGS_IMPLICIT,
    INQUIRY_RESPONSE_DATA_FORMAT,
    INQUIRY_VERSION_SPC4,
    PERIPHERAL_DEVICE_TYPE_DISK,
    PERIPHERAL_NO_LUN,
    PROTOCOL_ID_ISCSI,
    PROVISIONING_TYPE_FULL,
    PROVISIONING_TYPE_THIN,
    RSOC_ALL,
    RSOC_ONE_EITHER,
    RSOC_ONE_OPCODE,
    RSOC_ONE_SERVICE_ACTION,
    SELECT_REPORT_ALL,
    SELECT_REPORT_ALL_LOGICAL_UNITS,
    SELECT_REPORT_WELL_KNOWN,
    VERSION_DESCRIPTOR_ISCSI,
    VERSION_DESCRIPTOR_SAM5,
    VERSION_DESCRIPTOR_SBC3,
    VERSION_DESCRIPTOR_SPC4,
    VpdPage,
)
from vmblock.scsi.sense import ScsiError, SenseReason, build_sense
from vmblock.scsi.task import ScsiTask

if TYPE_CHECKING:
    from vmblock.scsi.lu import LogicalUnit
    from vmblock.scsi.target import ScsiTarget

# SPC-4 6.4.2 standard INQUIRY data.
STANDARD_INQUIRY_LEN = 74           # through the eight VERSION DESCRIPTOR fields (bytes 58-73)
INQUIRY_HISUP = 0x10
INQUIRY_CMDQUE = 0x02
VERSION_DESCRIPTORS = (VERSION_DESCRIPTOR_SAM5, VERSION_DESCRIPTOR_ISCSI,
                       VERSION_DESCRIPTOR_SPC4, VERSION_DESCRIPTOR_SBC3)
INQUIRY_EVPD = 0x01
INQUIRY_CMDDT = 0x02
# SPC-4 7.8.6.1: PIV bit of a designation descriptor.
PIV = 0x80
# SPC-4 7.8.7: extended INQUIRY data; SIMPSUP = simple task attribute, V_SUP = volatile cache.
EXTENDED_INQUIRY_SIMPSUP = 0x01
EXTENDED_INQUIRY_V_SUP = 0x01
VPD_PAGE_LEN_3C = 0x3C
# SBC-3 6.5.2: medium rotation rate 0001h = non-rotating medium (solid state).
NON_ROTATING_MEDIUM = 0x0001
# SBC-4 6.6.2 byte 7: WABEREQ 01b, a read after SANITIZE BLOCK ERASE returns GOOD (zeros).
WABEREQ_READS_GOOD = 0x40
# SPC-4 6.37: REPORT TARGET PORT GROUPS, PARAMETER DATA FORMAT 001b (extended header).
RTPG_EXTENDED = 0x20
RTPG_FORMAT_MASK = 0xE0
RTPG_EXTENDED_HEADER = 0x10
# SBC-3 6.5.4: logical block provisioning flags.
LBPU = 0x80
LBPWS = 0x40
LBPWS10 = 0x20
LBPRZ = 0x04
# SPC-4 6.35.1: byte 2 of the REPORT SUPPORTED OPERATION CODES CDB.
RCTD = 0x80
RSOC_REPORTING_OPTIONS_MASK = 0x07
# SPC-4 6.35.2: command descriptor flags.
CTDP = 0x02
SERVACTV = 0x01
# SPC-4 6.35.3: one_command parameter data, byte 1: CTDP and SUPPORT.
ONE_COMMAND_CTDP = 0x80
SUPPORT_NOT_SUPPORTED = 0x1
SUPPORT_STANDARD = 0x3
TIMEOUTS_DESCRIPTOR_LEN = 0x0A
# SPC-4 6.36: REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: ABORT TASK, ABORT TASK SET,
# CLEAR TASK SET, LOGICAL UNIT RESET, TARGET RESET: what the iSCSI fabric carries out.
TMF_ATS = 0x80
TMF_ATSS = 0x40
TMF_CTSS = 0x10
TMF_LURS = 0x08
TMF_TRS = 0x02
# SPC-4 6.27: minimum ALLOCATION LENGTH of REPORT LUNS.
REPORT_LUNS_MIN_ALLOC = 16


def _truncate(task: ScsiTask, data: bytes | bytearray) -> None:
    """Return at most ALLOCATION LENGTH bytes (SPC-4 4.2.5.6)."""
    alloc = task.cdb_xfer_len
    task.data_in = data if len(data) <= alloc else data[:alloc]


def _ascii(text: str, width: int) -> bytes:
    return text.encode("ascii", "replace")[:width].ljust(width)


# -- TEST UNIT READY (SPC-4 6.37)
def test_unit_ready(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks, options) -> None:
    """GOOD once the UA, reservation and medium checks of ``ScsiTarget.prepare`` passed."""


# -- INQUIRY (SPC-4 6.4)
def inquiry(t: ScsiTarget, lu: LogicalUnit | None, task: ScsiTask, lba, blocks, options) -> None:
    """Standard INQUIRY data, or the VPD page asked for with EVPD=1."""
    cdb = task.cdb
    if cdb[1] & INQUIRY_CMDDT:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(1, 1))
    if not cdb[1] & INQUIRY_EVPD:
        if cdb[2]:
            # SPC-4 6.4.1: EVPD=0 with a PAGE CODE -> INVALID FIELD IN CDB.
            raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(2, None))
        _truncate(task, standard_inquiry(lu))
        return
    if lu is None:
        raise ScsiError(SenseReason.LOGICAL_UNIT_NOT_SUPPORTED)
    build = VPD_PAGES.get(cdb[2])
    if build is None:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(2, None))
    body = build(t, lu, task)
    _truncate(task, struct.pack(">BBH", PERIPHERAL_DEVICE_TYPE_DISK, cdb[2], len(body)) + body)


def standard_inquiry(lu: LogicalUnit | None) -> bytes:
    """Standard INQUIRY data (SPC-4 6.4.2); PERIPHERAL QUALIFIER 011b where no LU is."""
    buf = bytearray(STANDARD_INQUIRY_LEN)
    if lu is None:
        buf[0] = PERIPHERAL_NO_LUN
        vendor, product, revision = "", "", ""
    else:
        buf[0] = PERIPHERAL_DEVICE_TYPE_DISK
        buf[1] = INQUIRY_RMB if lu.removable else 0
        vendor, product, revision = lu.vendor, lu.product, lu.revision
    buf[2] = INQUIRY_VERSION_SPC4
    buf[3] = INQUIRY_HISUP | INQUIRY_RESPONSE_DATA_FORMAT
    buf[4] = len(buf) - 5
    buf[5] = INQUIRY_TPGS_IMPLICIT      # ALUA: REPORT TARGET PORT GROUPS, no SET
    if lu is not None:
        buf[5] |= xcopy.INQUIRY_3PC     # a copy manager: EXTENDED COPY (VPD 8Fh)
    buf[7] = INQUIRY_CMDQUE
    buf[8:16] = _ascii(vendor, 8)
    buf[16:32] = _ascii(product, 16)
    buf[32:36] = _ascii(revision, 4)
    for i, desc in enumerate(VERSION_DESCRIPTORS):
        struct.pack_into(">H", buf, 58 + 2 * i, desc)
    return bytes(buf)


def _vpd_supported(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask) -> bytes:
    return bytes(sorted(VPD_PAGES))


def _vpd_serial(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask) -> bytes:
    return lu.serial.encode("ascii")


def _designator(code_set: int, assoc: int, dtype: int, value: bytes, piv: bool = False) -> bytes:
    b0 = (PROTOCOL_ID_ISCSI << 4 if piv else 0) | code_set
    b1 = (PIV if piv else 0) | (assoc << 4) | dtype
    return struct.pack(">BBxB", b0, b1, len(value)) + value


def _name_string(name: str) -> bytes:
    # SPC-4 7.8.6.11: null terminated, padded with nulls to a multiple of four bytes
    raw = name.encode("utf-8") + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def _vpd_device_identification(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask) -> bytes:
    """SPC-4 7.8.6: NAA and T10 vendor id for the LU; port and device names from the nexus."""
    naa_len = 16 if lu.naa >> 64 else 8
    nexus = task.nexus
    return b"".join((
        _designator(CODE_SET_BINARY, ASSOCIATION_LU, DESIGNATOR_NAA,
                    lu.naa.to_bytes(naa_len, "big")),
        _designator(CODE_SET_ASCII, ASSOCIATION_LU, DESIGNATOR_T10_VENDOR_ID,
                    _ascii(lu.vendor, 8) + lu.serial.encode("ascii")),
        _designator(CODE_SET_BINARY, ASSOCIATION_TARGET_PORT, DESIGNATOR_RELATIVE_TARGET_PORT,
                    struct.pack(">xxH", nexus.tpgt), piv=True),
        _designator(CODE_SET_BINARY, ASSOCIATION_TARGET_PORT, DESIGNATOR_TARGET_PORT_GROUP,
                    struct.pack(">xxH", nexus.tpgt), piv=True),
        _designator(CODE_SET_UTF8, ASSOCIATION_TARGET_PORT, DESIGNATOR_SCSI_NAME_STRING,
                    _name_string(nexus.target_port), piv=True),
        _designator(CODE_SET_UTF8, ASSOCIATION_TARGET_DEVICE, DESIGNATOR_SCSI_NAME_STRING,
                    _name_string(t.name), piv=True),
    ))


def _vpd_extended_inquiry(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask) -> bytes:
    body = bytearray(VPD_PAGE_LEN_3C)
    body[2] = EXTENDED_INQUIRY_SIMPSUP
    body[3] = EXTENDED_INQUIRY_V_SUP
    return bytes(body)


def _vpd_block_limits(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask) -> bytes:
    """SBC-3 6.5.3: the limits the decoders in ``cdb`` enforce."""
    return struct.pack(
        ">xBHIIIIIIIQIIIII",
        lu.max_compare_write_blocks,
        lu.optimal_granularity_blocks,
        lu.max_transfer_blocks,
        lu.optimal_transfer_blocks,
        0,                                      # MAXIMUM PREFETCH LENGTH: no limit
        lu.max_unmap_blocks,
        lu.max_unmap_descriptors,
        lu.unmap_granularity_blocks if lu.can_unmap else 0,
        0,                                      # UGAVALID=0: no alignment requirement
        lu.max_write_same_blocks,
        lu.max_atomic_blocks,                   # MAXIMUM ATOMIC TRANSFER LENGTH (SBC-4)
        0,                                      # ATOMIC ALIGNMENT: none
        0,                                      # ATOMIC TRANSFER LENGTH GRANULARITY: none
        0,                                      # no ATOMIC BOUNDARY support: both zero
        0,
    )


def _vpd_block_device_characteristics(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask) -> bytes:
    body = bytearray(VPD_PAGE_LEN_3C)
    struct.pack_into(">H", body, 0, NON_ROTATING_MEDIUM)
    body[3] = WABEREQ_READS_GOOD
    return bytes(body)


def _vpd_logical_block_provisioning(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask) -> bytes:
    """SBC-3 6.5.4: what UNMAP / WRITE SAME(UNMAP) do follows from the store's abilities."""
    flags = (LBPU | LBPWS | LBPWS10 | LBPRZ) if lu.can_unmap else 0
    ptype = PROVISIONING_TYPE_THIN if lu.can_unmap else PROVISIONING_TYPE_FULL
    return struct.pack(">xBBx", flags, ptype)


VPD_PAGES = {
    VpdPage.SUPPORTED_VPD_PAGES: _vpd_supported,
    VpdPage.UNIT_SERIAL_NUMBER: _vpd_serial,
    VpdPage.DEVICE_IDENTIFICATION: _vpd_device_identification,
    VpdPage.EXTENDED_INQUIRY_DATA: _vpd_extended_inquiry,
    VpdPage.BLOCK_LIMITS: _vpd_block_limits,
    VpdPage.BLOCK_DEVICE_CHARACTERISTICS: _vpd_block_device_characteristics,
    VpdPage.LOGICAL_BLOCK_PROVISIONING: _vpd_logical_block_provisioning,
    VpdPage.THIRD_PARTY_COPY: xcopy.vpd_third_party_copy,
}


# -- REPORT LUNS (SPC-4 6.27)
def encode_lun(lun: int) -> bytes:
    """SAM-5 4.7: peripheral device addressing below 256, flat space addressing above."""
    if lun < 256:
        return bytes((0, lun, 0, 0, 0, 0, 0, 0))
    return bytes((0x40 | (lun >> 8), lun & 0xFF, 0, 0, 0, 0, 0, 0))


def report_luns(t: ScsiTarget, lu, task: ScsiTask, lba, blocks, options) -> None:
    """The LUN inventory; well-known LUNs: there are none."""
    select = task.cdb[2]
    if select not in (SELECT_REPORT_ALL_LOGICAL_UNITS, SELECT_REPORT_WELL_KNOWN,
                      SELECT_REPORT_ALL):
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(2, None))
    if task.cdb_xfer_len < REPORT_LUNS_MIN_ALLOC:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(6, None))
    luns = [] if select == SELECT_REPORT_WELL_KNOWN else sorted(t.luns)
    body = b"".join(encode_lun(n) for n in luns)
    _truncate(task, struct.pack(">I4x", len(body)) + body)


# -- REQUEST SENSE (SPC-4 6.29)
def request_sense(t: ScsiTarget, lu: LogicalUnit | None, task: ScsiTask, lba, blocks,
                  options) -> None:
    """Reports (and clears) a pending unit attention, else NO SENSE; always fixed format."""
    if lu is None:
        reason = SenseReason.LOGICAL_UNIT_NOT_SUPPORTED
    else:
        reason = lu.pop_ua(task.nexus)
        if reason is None and lu.sanitize_progress is not None:
            # SBC-3 4.11: how far the SANITIZE is
            _truncate(task, build_sense(SenseReason.SANITIZE_IN_PROGRESS,
                                        progress=lu.sanitize_progress))
            return
        if reason is None and not lu.medium_present:
            reason = SenseReason.MEDIUM_NOT_PRESENT
    _truncate(task, build_sense(reason or SenseReason.NO_SENSE))


# -- MODE SENSE / MODE SELECT (SPC-4 6.9 - 6.12)
def mode_sense6(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks, options) -> None:
    """MODE SENSE(6): short header and block descriptor."""
    _truncate(task, modepages.mode_sense(lu, task.cdb, ten=False))


def mode_sense10(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks, options) -> None:
    """MODE SENSE(10): long header; LLBAA selects the long block descriptor."""
    _truncate(task, modepages.mode_sense(lu, task.cdb, ten=True))


def _mode_select(lu: LogicalUnit, task: ScsiTask, ten: bool) -> None:
    param = task.data_out if task.data_out is not None else b""
    if modepages.mode_select(lu, task.cdb, param, ten):
        # SPC-4 5.14: other I_T nexuses learn MODE PARAMETERS CHANGED.
        lu.add_ua_all(SenseReason.MODE_PARAMETERS_CHANGED, exclude=task.nexus)


def mode_select6(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks, options) -> None:
    """MODE SELECT(6): apply the parameter list."""
    _mode_select(lu, task, ten=False)


def mode_select10(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks, options) -> None:
    """MODE SELECT(10): apply the parameter list."""
    _mode_select(lu, task, ten=True)


# -- RESERVE / RELEASE (SPC-2 7.21, 7.22)
def reserve(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks, options) -> None:
    # third-party and extent reservations are not supported (RESERVE(10) 3RDPTY / LONGID)
    """RESERVE(6/10) of the whole LU; third-party and extent reservations are refused."""
    if task.cdb[1] & 0x13:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(1, None))
    lu.reservations.reserve_spc2(task.nexus)


def release(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks, options) -> None:
    """RELEASE(6/10); third-party and extent reservations are refused."""
    if task.cdb[1] & 0x13:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(1, None))
    lu.reservations.release_spc2(task.nexus)


# -- PERSISTENT RESERVE IN / OUT (SPC-4 6.15, 6.16)
def persistent_reserve_in(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks,
                          options) -> None:
    """PERSISTENT RESERVE IN; conflicts with another nexus's RESERVE(6/10)."""
    res = lu.reservations
    if res.spc2_holder is not None and res.spc2_holder != task.nexus:
        raise ScsiError(SenseReason.RESERVATION_CONFLICT)
    _truncate(task, pr.persistent_reserve_in(lu, task.cdb[1] & 0x1F))


def persistent_reserve_out(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks,
                           options) -> None:
    """PERSISTENT RESERVE OUT with the parameter list gathered."""
    param = task.data_out if task.data_out is not None else b""
    pr.persistent_reserve_out(lu, task.nexus, task.cdb[1] & 0x1F, task.cdb[2], param)


# -- REPORT SUPPORTED OPERATION CODES (SPC-4 6.35)
def _timeouts() -> bytes:
    # nominal and recommended timeouts 0: not specified
    return struct.pack(">HxxII", TIMEOUTS_DESCRIPTOR_LEN, 0, 0)


def report_supported_opcodes(table: CommandTable) -> Handler:
    """The REPORT SUPPORTED OPERATION CODES handler of one LU's command table: the table is
    handed in when it is built, so this module never imports the module that builds it."""

    def execute(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks, options) -> None:
        cdb = task.cdb
        rctd = bool(cdb[2] & RCTD)
        option = cdb[2] & RSOC_REPORTING_OPTIONS_MASK
        if option == RSOC_ALL:
            _truncate(task, _all_commands(supported_specs(table), rctd))
            return
        if option not in (RSOC_ONE_OPCODE, RSOC_ONE_SERVICE_ACTION, RSOC_ONE_EITHER):
            raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(2, 2))
        _truncate(task, _one_command(table, option, cdb[3], struct.unpack_from(">H", cdb, 4)[0],
                                     rctd))
    return execute


def _all_commands(specs: list[CommandSpec], rctd: bool) -> bytes:
    """All_commands parameter data (SPC-4 6.35.2): one descriptor per supported command."""
    descs = []
    for spec in specs:
        flags = (CTDP if rctd else 0) | (SERVACTV if spec.service_action is not None else 0)
        descs.append(struct.pack(">BxHxBH", spec.opcode, spec.service_action or 0, flags,
                                 len(spec.usage)))
        if rctd:
            descs.append(_timeouts())
    body = b"".join(descs)
    return struct.pack(">I", len(body)) + body


def _one_command(table: CommandTable, option: int, opcode: int, action: int,
                 rctd: bool) -> bytes:
    """One_command parameter data (SPC-4 6.35.3): SUPPORT and the CDB USAGE DATA."""
    top = table[opcode]
    has_actions = top is not None and top.service_actions is not None
    if option == RSOC_ONE_OPCODE and has_actions:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(3, None))
    if option == RSOC_ONE_SERVICE_ACTION and top is not None and not has_actions:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(3, None))
    spec: CommandSpec | None = top
    if has_actions:
        spec = top.service_actions.get(action)
    elif option == RSOC_ONE_EITHER and action:
        spec = None
    if spec is None:
        return struct.pack(">xBH", SUPPORT_NOT_SUPPORTED, 0)
    data = struct.pack(">xBH", (ONE_COMMAND_CTDP if rctd else 0) | SUPPORT_STANDARD,
                       len(spec.usage)) + spec.usage
    if rctd:
        data += _timeouts()
    return data


# -- REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 6.36)
def report_supported_tmfs(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks,
                          options) -> None:
    """The task management functions the iSCSI fabric carries out."""
    data = bytes((TMF_ATS | TMF_ATSS | TMF_CTSS | TMF_LURS | TMF_TRS, 0, 0, 0))
    _truncate(task, data)


# -- PREVENT ALLOW MEDIUM REMOVAL (SBC-3 5.9)
def prevent_allow_medium_removal(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks,
                                 options) -> None:
    """PREVENT=1 from any nexus keeps a removable LU's medium in (START STOP UNIT LOEJ is
    refused) until that nexus allows it again, goes away or a reset; on a fixed medium
    (RMB=0) it changes nothing. PREVENT values 10b/11b are obsolete for direct access."""
    prevent = task.cdb[4] & 0x03
    if prevent > 1:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(4, 1))
    if not lu.removable:
        return
    if prevent:
        lu.prevent.add(task.nexus)
    else:
        lu.prevent.discard(task.nexus)


# -- REPORT TARGET PORT GROUPS (SPC-4 6.37)
def report_target_port_groups(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks,
                              options) -> None:
    """One target port group per portal group, each active/optimized with its one target
    port, whose RELATIVE TARGET PORT IDENTIFIER and group are the TPGT (as in VPD 83h). Every
    path to the LU reaches the same NAA through one of these groups."""
    fmt = task.cdb[1] & RTPG_FORMAT_MASK
    if fmt not in (0, RTPG_EXTENDED):
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(1, 7))
    # the portal groups the target is reached through: every logged-in nexus says its own
    tpgts = sorted({task.nexus.tpgt} | {n.tpgt for n in t.nexuses})
    body = b"".join(
        struct.pack(">BBHxxxBxxH", ALUA_STATE_ACTIVE_OPTIMIZED, ALUA_SUPPORTS_ACTIVE_OPTIMIZED,
                    tpgt, 1, tpgt)
        for tpgt in tpgts)
    if fmt == RTPG_EXTENDED:
        data = struct.pack(">IBxxx", len(body) + 4, RTPG_EXTENDED_HEADER) + body
    else:
        data = struct.pack(">I", len(body)) + body
    _truncate(task, data)
