"""The command table: opcode -> ``CommandSpec`` (decode, execute, direction, reservation class).

Like tgt's per-device ``ops[256]`` and LIO's ``sbc_parse_cdb``: ``ScsiTarget`` builds one
table per LU with ``build_table`` when the LU is added, looks the opcode up in ``prepare``,
runs the decoder and the checks common to all commands, and ``execute`` runs the handler.
The rows for optional commands follow from the LU's abilities (``lu.can_unmap``), and the
same table answers REPORT SUPPORTED OPERATION CODES. This module sits above the handlers
(``spc``, ``sbc``) and imports them; nothing below imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vmblock.scsi import cdb as decoders
from vmblock.scsi import sbc, spc, xcopy
from vmblock.scsi.command_spec import CommandSpec, CommandTable, DataRule
from vmblock.scsi.constants import (
    CONTROL_NACA,
    Direction,
    MaintenanceIn,
    Opcode,
    PrAccess,
    PrInAction,
    PrOutAction,
    SanitizeAction,
    ServiceActionIn16,
)

if TYPE_CHECKING:
    from vmblock.scsi.lu import LogicalUnit

# CDB USAGE DATA masks (SPC-4 6.35.3): a field of 4 or 8 bytes with every bit looked at.
ALL_BITS_4 = (0xFF,) * 4
ALL_BITS_8 = (0xFF,) * 8
# byte 1 of the READ/WRITE-shaped commands: the bits the decoders in ``cdb`` look at
RW_FLAGS = decoders.PROTECT_MASK | decoders.DPO | decoders.FUA
WRITE_AND_VERIFY_FLAGS = decoders.PROTECT_MASK | decoders.DPO | decoders.WRITE_VERIFY_BYTCHK
VERIFY_FLAGS = decoders.PROTECT_MASK | decoders.DPO | decoders.BYTCHK_MASK
WRITE_SAME_FLAGS = decoders.PROTECT_MASK | decoders.WRITE_SAME_ANCHOR


def usage(*masks: int) -> bytes:
    """CDB USAGE DATA from the opcode, then one mask per CDB byte (SPC-4 6.35.3)."""
    return bytes(masks)


def block_command(opcode: Opcode, name: str, size: int, decode, execute, direction: Direction,
                  data: DataRule, access: PrAccess, flags: int) -> CommandSpec:
    """Spec of a READ/WRITE-shaped CDB of ``size`` bytes (SBC-3 5.x layouts), whose byte 1
    bits in ``flags`` are looked at."""
    if size == 10:      # flags, LBA(4), group, TRANSFER LENGTH(2), control
        mask = usage(opcode, flags, *ALL_BITS_4, 0, 0xFF, 0xFF, CONTROL_NACA)
    elif size == 12:    # flags, LBA(4), TRANSFER LENGTH(4), group, control
        mask = usage(opcode, flags, *ALL_BITS_4, *ALL_BITS_4, 0, CONTROL_NACA)
    else:               # flags, LBA(8), TRANSFER LENGTH(4), group, control
        mask = usage(opcode, flags, *ALL_BITS_8, *ALL_BITS_4, 0, CONTROL_NACA)
    return CommandSpec(opcode, name, decode, execute, mask, direction, access, data,
                       ranged=True)


def _read_write_specs() -> list[CommandSpec]:
    """READ, WRITE, WRITE AND VERIFY, VERIFY and ORWRITE in every CDB size (SBC-3 5.x)."""
    read, write = Direction.IN, Direction.OUT
    specs = [
        CommandSpec(Opcode.READ_6, "READ(6)", decoders.rw6, sbc.read,
                    usage(Opcode.READ_6, 0x1F, 0xFF, 0xFF, 0xFF, CONTROL_NACA), read,
                    PrAccess.READ, ranged=True),
        CommandSpec(Opcode.WRITE_6, "WRITE(6)", decoders.rw6, sbc.write,
                    usage(Opcode.WRITE_6, 0x1F, 0xFF, 0xFF, 0xFF, CONTROL_NACA), write,
                    PrAccess.WRITE, DataRule.BLOCKS, ranged=True),
    ]
    for size, read_op, write_op, write_verify_op, verify_op in (
            (10, Opcode.READ_10, Opcode.WRITE_10, Opcode.WRITE_AND_VERIFY_10, Opcode.VERIFY_10),
            (12, Opcode.READ_12, Opcode.WRITE_12, Opcode.WRITE_AND_VERIFY_12, Opcode.VERIFY_12),
            (16, Opcode.READ_16, Opcode.WRITE_16, Opcode.WRITE_AND_VERIFY_16, Opcode.VERIFY_16)):
        read_write = decoders.read_write(size)
        specs += [
            block_command(read_op, f"READ({size})", size, read_write, sbc.read, read,
                          DataRule.NONE, PrAccess.READ, RW_FLAGS),
            block_command(write_op, f"WRITE({size})", size, read_write, sbc.write, write,
                          DataRule.BLOCKS, PrAccess.WRITE, RW_FLAGS),
            block_command(write_verify_op, f"WRITE AND VERIFY({size})", size,
                          decoders.write_and_verify(size), sbc.write_and_verify, write,
                          DataRule.BLOCKS, PrAccess.WRITE, WRITE_AND_VERIFY_FLAGS),
            block_command(verify_op, f"VERIFY({size})", size, decoders.verify(size),
                          sbc.verify, write, DataRule.AT_LEAST, PrAccess.READ, VERIFY_FLAGS),
        ]
    specs.append(block_command(Opcode.ORWRITE_16, "ORWRITE(16)", 16, decoders.read_write(16),
                               sbc.orwrite, write, DataRule.BLOCKS, PrAccess.WRITE, RW_FLAGS))
    return specs


def _sbc_specs(lu: LogicalUnit) -> list[CommandSpec]:
    """The SBC-3 commands; WRITE SAME's UNMAP bit and UNMAP itself only when the store can
    unmap."""
    unmap_flag = decoders.WRITE_SAME_UNMAP if lu.can_unmap else 0
    specs = _read_write_specs()
    for size, prefetch_op, sync_op in ((10, Opcode.PRE_FETCH_10, Opcode.SYNCHRONIZE_CACHE_10),
                                       (16, Opcode.PRE_FETCH_16, Opcode.SYNCHRONIZE_CACHE_16)):
        block_range = decoders.block_range(size)
        specs += [
            block_command(prefetch_op, f"PRE-FETCH({size})", size, block_range, sbc.pre_fetch,
                          Direction.NONE, DataRule.NONE, PrAccess.READ, decoders.IMMED),
            block_command(sync_op, f"SYNCHRONIZE CACHE({size})", size, block_range,
                          sbc.synchronize_cache, Direction.NONE, DataRule.NONE, PrAccess.WRITE,
                          decoders.IMMED),
        ]
    specs += [
        CommandSpec(Opcode.COMPARE_AND_WRITE, "COMPARE AND WRITE", decoders.compare_and_write,
                    sbc.compare_and_write,
                    usage(Opcode.COMPARE_AND_WRITE, RW_FLAGS, *ALL_BITS_8, 0, 0, 0, 0xFF, 0,
                          CONTROL_NACA),
                    Direction.OUT, PrAccess.WRITE, DataRule.EXACT, ranged=True),
        CommandSpec(Opcode.READ_DEFECT_DATA_10, "READ DEFECT DATA(10)",
                    decoders.length_field(7, 2), sbc.read_defect_data10,
                    usage(Opcode.READ_DEFECT_DATA_10, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF,
                          CONTROL_NACA),
                    Direction.IN, PrAccess.READ),
        CommandSpec(Opcode.READ_DEFECT_DATA_12, "READ DEFECT DATA(12)",
                    decoders.length_field(6, 4), sbc.read_defect_data12,
                    usage(Opcode.READ_DEFECT_DATA_12, 0x1F, *ALL_BITS_4, *ALL_BITS_4, 0,
                          CONTROL_NACA),
                    Direction.IN, PrAccess.READ),
        block_command(Opcode.WRITE_SAME_10, "WRITE SAME(10)", 10, decoders.write_same(10),
                      sbc.write_same, Direction.OUT, DataRule.EXACT, PrAccess.WRITE,
                      WRITE_SAME_FLAGS | unmap_flag),
        block_command(Opcode.WRITE_SAME_16, "WRITE SAME(16)", 16, decoders.write_same(16),
                      sbc.write_same, Direction.OUT, DataRule.EXACT, PrAccess.WRITE,
                      WRITE_SAME_FLAGS | decoders.WRITE_SAME_NDOB | unmap_flag),
        CommandSpec(Opcode.START_STOP_UNIT, "START STOP UNIT", decoders.no_data,
                    sbc.start_stop_unit,
                    usage(Opcode.START_STOP_UNIT, 0x01, 0, 0x0F, 0xF7, CONTROL_NACA)),
        CommandSpec(Opcode.READ_CAPACITY_10, "READ CAPACITY(10)", decoders.no_data,
                    sbc.read_capacity10,
                    usage(Opcode.READ_CAPACITY_10, 0, *ALL_BITS_4, 0, 0, 0x01, CONTROL_NACA),
                    Direction.IN, PrAccess.ALLOWED),
        _group([
            CommandSpec(Opcode.SERVICE_ACTION_IN_16, "READ CAPACITY(16)",
                        decoders.length_field(10, 4), sbc.read_capacity16,
                        usage(Opcode.SERVICE_ACTION_IN_16, ServiceActionIn16.READ_CAPACITY_16,
                              *((0,) * 8), *ALL_BITS_4, 0, CONTROL_NACA),
                        Direction.IN, PrAccess.ALLOWED,
                        service_action=ServiceActionIn16.READ_CAPACITY_16),
            CommandSpec(Opcode.SERVICE_ACTION_IN_16, "GET LBA STATUS", decoders.get_lba_status,
                        sbc.get_lba_status,
                        usage(Opcode.SERVICE_ACTION_IN_16, ServiceActionIn16.GET_LBA_STATUS,
                              *ALL_BITS_8, *ALL_BITS_4, 0, CONTROL_NACA),
                        Direction.IN, PrAccess.READ,
                        service_action=ServiceActionIn16.GET_LBA_STATUS),
        ]),
    ]
    if lu.can_unmap:
        specs.append(CommandSpec(Opcode.UNMAP, "UNMAP", decoders.unmap, sbc.unmap,
                                 usage(Opcode.UNMAP, decoders.UNMAP_ANCHOR, 0, 0, 0, 0, 0,
                                       0xFF, 0xFF, CONTROL_NACA),
                                 Direction.OUT, PrAccess.WRITE, DataRule.PARAM))
    specs += _atomic_sanitize_specs(lu)
    return specs


def _atomic_sanitize_specs(lu: LogicalUnit) -> list[CommandSpec]:
    """WRITE ATOMIC(16) (SBC-4 5.48) and SANITIZE (SBC-3 5.21): OVERWRITE, EXIT FAILURE MODE,
    and BLOCK ERASE when the store can unmap; CRYPTOGRAPHIC ERASE is not offered (no data
    is stored encrypted), so it is refused as an unknown service action."""
    actions = [(SanitizeAction.OVERWRITE, sbc.sanitize_overwrite),
               (SanitizeAction.EXIT_FAILURE_MODE, sbc.sanitize_exit_failure_mode)]
    if lu.can_unmap:
        actions.append((SanitizeAction.BLOCK_ERASE, sbc.sanitize_block_erase))
    sanitize_flags = decoders.SANITIZE_IMMED | decoders.SANITIZE_AUSE
    return [
        CommandSpec(Opcode.WRITE_ATOMIC_16, "WRITE ATOMIC(16)", decoders.write_atomic16,
                    sbc.write_atomic,
                    usage(Opcode.WRITE_ATOMIC_16, RW_FLAGS, *ALL_BITS_8, 0xFF, 0xFF, 0xFF,
                          0xFF, 0, CONTROL_NACA),
                    Direction.OUT, PrAccess.WRITE, DataRule.EXACT, ranged=True),
        _group([
            CommandSpec(Opcode.SANITIZE, f"SANITIZE/{action.name}", decoders.sanitize, run,
                        usage(Opcode.SANITIZE, sanitize_flags | action, 0, 0, 0, 0, 0, 0xFF,
                              0xFF, CONTROL_NACA),
                        Direction.OUT, PrAccess.WRITE, DataRule.PARAM, service_action=action)
            for action, run in actions
        ]),
    ]


def _spc_specs(table: CommandTable) -> list[CommandSpec]:
    """The SPC-4 commands of an LU; REPORT SUPPORTED OPERATION CODES reports ``table``."""
    specs = [
        CommandSpec(Opcode.TEST_UNIT_READY, "TEST UNIT READY", decoders.no_data,
                    spc.test_unit_ready,
                    usage(Opcode.TEST_UNIT_READY, 0, 0, 0, 0, CONTROL_NACA),
                    access=PrAccess.ALLOWED),
        *NO_LU_SPECS,
        CommandSpec(Opcode.MODE_SENSE_6, "MODE SENSE(6)", decoders.length_field(4, 1),
                    spc.mode_sense6,
                    usage(Opcode.MODE_SENSE_6, 0x08, 0xFF, 0xFF, 0xFF, CONTROL_NACA),
                    Direction.IN, PrAccess.READ),
        CommandSpec(Opcode.MODE_SENSE_10, "MODE SENSE(10)", decoders.length_field(7, 2),
                    spc.mode_sense10,
                    usage(Opcode.MODE_SENSE_10, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF,
                          CONTROL_NACA),
                    Direction.IN, PrAccess.READ),
        CommandSpec(Opcode.MODE_SELECT_6, "MODE SELECT(6)", decoders.length_field(4, 1),
                    spc.mode_select6,
                    usage(Opcode.MODE_SELECT_6, 0x11, 0, 0, 0xFF, CONTROL_NACA),
                    Direction.OUT, data=DataRule.PARAM),
        CommandSpec(Opcode.MODE_SELECT_10, "MODE SELECT(10)", decoders.length_field(7, 2),
                    spc.mode_select10,
                    usage(Opcode.MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, CONTROL_NACA),
                    Direction.OUT, data=DataRule.PARAM),
        CommandSpec(Opcode.RESERVE_6, "RESERVE(6)", decoders.no_data, spc.reserve,
                    usage(Opcode.RESERVE_6, 0, 0, 0, 0, CONTROL_NACA), access=PrAccess.SPECIAL),
        CommandSpec(Opcode.RELEASE_6, "RELEASE(6)", decoders.no_data, spc.release,
                    usage(Opcode.RELEASE_6, 0, 0, 0, 0, CONTROL_NACA), access=PrAccess.SPECIAL,
                    spc2_allowed=True),
        CommandSpec(Opcode.RESERVE_10, "RESERVE(10)", decoders.no_data, spc.reserve,
                    usage(Opcode.RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, CONTROL_NACA),
                    access=PrAccess.SPECIAL),
        CommandSpec(Opcode.RELEASE_10, "RELEASE(10)", decoders.no_data, spc.release,
                    usage(Opcode.RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, CONTROL_NACA),
                    access=PrAccess.SPECIAL, spc2_allowed=True),
        CommandSpec(Opcode.PREVENT_ALLOW_MEDIUM_REMOVAL, "PREVENT ALLOW MEDIUM REMOVAL",
                    decoders.no_data, spc.prevent_allow_medium_removal,
                    usage(Opcode.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, CONTROL_NACA)),
        _group([
            CommandSpec(Opcode.PERSISTENT_RESERVE_IN, f"PERSISTENT RESERVE IN/{action.name}",
                        decoders.length_field(7, 2), spc.persistent_reserve_in,
                        usage(Opcode.PERSISTENT_RESERVE_IN, action, 0, 0, 0, 0, 0, 0xFF, 0xFF,
                              CONTROL_NACA),
                        Direction.IN, PrAccess.ALLOWED, service_action=action)
            for action in PrInAction
        ]),
        _group([
            CommandSpec(Opcode.PERSISTENT_RESERVE_OUT, f"PERSISTENT RESERVE OUT/{action.name}",
                        decoders.length_field(5, 4), spc.persistent_reserve_out,
                        usage(Opcode.PERSISTENT_RESERVE_OUT, action, 0xFF, 0, 0, *ALL_BITS_4,
                              CONTROL_NACA),
                        Direction.OUT, PrAccess.SPECIAL, DataRule.PARAM, service_action=action)
            for action in PrOutAction
        ]),
        _group([
            CommandSpec(Opcode.MAINTENANCE_IN, "REPORT SUPPORTED OPERATION CODES",
                        decoders.length_field(6, 4), spc.report_supported_opcodes(table),
                        usage(Opcode.MAINTENANCE_IN,
                              MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES,
                              0x87, 0xFF, 0xFF, 0xFF, *ALL_BITS_4, 0, CONTROL_NACA),
                        Direction.IN, PrAccess.ALLOWED,
                        service_action=MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES),
            CommandSpec(Opcode.MAINTENANCE_IN, "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
                        decoders.length_field(6, 4), spc.report_supported_tmfs,
                        usage(Opcode.MAINTENANCE_IN,
                              MaintenanceIn.REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS,
                              0, 0, 0, 0, *ALL_BITS_4, 0, CONTROL_NACA),
                        Direction.IN, PrAccess.ALLOWED,
                        service_action=MaintenanceIn.REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS),
            CommandSpec(Opcode.MAINTENANCE_IN, "REPORT TARGET PORT GROUPS",
                        decoders.length_field(6, 4), spc.report_target_port_groups,
                        usage(Opcode.MAINTENANCE_IN,
                              spc.RTPG_FORMAT_MASK | MaintenanceIn.REPORT_TARGET_PORT_GROUPS,
                              0, 0, 0, 0, *ALL_BITS_4, 0, CONTROL_NACA),
                        Direction.IN, PrAccess.ALLOWED,
                        service_action=MaintenanceIn.REPORT_TARGET_PORT_GROUPS),
        ]),
    ]
    return specs


def _xcopy_specs() -> list[CommandSpec]:
    """EXTENDED COPY(LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18; ``xcopy``)."""
    return [
        _group([
            CommandSpec(xcopy.EXTENDED_COPY, "EXTENDED COPY(LID1)", decoders.length_field(10, 4),
                        xcopy.extended_copy,
                        usage(xcopy.EXTENDED_COPY, xcopy.ExtendedCopyAction.EXTENDED_COPY_LID1,
                              *((0,) * 8), *ALL_BITS_4, 0, CONTROL_NACA),
                        Direction.OUT, PrAccess.WRITE, DataRule.PARAM,
                        service_action=xcopy.ExtendedCopyAction.EXTENDED_COPY_LID1),
        ]),
        _group([
            CommandSpec(xcopy.RECEIVE_COPY_RESULTS, f"RECEIVE COPY RESULTS/{action.name}",
                        decoders.length_field(10, 4), handler,
                        usage(xcopy.RECEIVE_COPY_RESULTS, action, 0xFF, *((0,) * 7),
                              *ALL_BITS_4, 0, CONTROL_NACA),
                        Direction.IN, PrAccess.READ, service_action=action)
            for action, handler in ((xcopy.ReceiveCopyAction.COPY_STATUS, xcopy.copy_status),
                                    (xcopy.ReceiveCopyAction.OPERATING_PARAMETERS,
                                     xcopy.operating_parameters))
        ]),
    ]


def _group(members: list[CommandSpec]) -> CommandSpec:
    """A dispatch entry for an opcode whose CDB byte 1 carries a SERVICE ACTION."""
    first = members[0]
    return CommandSpec(first.opcode, f"opcode {first.opcode:02x}h", decoders.no_data, None,
                       first.usage, service_actions={m.service_action: m for m in members})


# Commands that work on a LUN with no logical unit behind it (SPC-4 6.4.2, 6.27, 6.29).
NO_LU_SPECS = (
    CommandSpec(Opcode.INQUIRY, "INQUIRY", decoders.length_field(3, 2), spc.inquiry,
                usage(Opcode.INQUIRY, 0x03, 0xFF, 0xFF, 0xFF, CONTROL_NACA), Direction.IN,
                PrAccess.ALLOWED, ua_exempt=True, spc2_allowed=True),
    CommandSpec(Opcode.REPORT_LUNS, "REPORT LUNS", decoders.length_field(6, 4),
                spc.report_luns,
                usage(Opcode.REPORT_LUNS, 0, 0xFF, 0, 0, 0, *ALL_BITS_4, 0, CONTROL_NACA),
                Direction.IN, PrAccess.ALLOWED, ua_exempt=True, spc2_allowed=True),
    CommandSpec(Opcode.REQUEST_SENSE, "REQUEST SENSE", decoders.length_field(4, 1),
                spc.request_sense,
                usage(Opcode.REQUEST_SENSE, 0x01, 0, 0, 0xFF, CONTROL_NACA), Direction.IN,
                PrAccess.ALLOWED, ua_exempt=True, spc2_allowed=True),
)


def _fill(table: CommandTable, specs) -> CommandTable:
    for spec in specs:
        table[spec.opcode] = spec
    return table


NO_LU_TABLE: CommandTable = _fill([None] * 256, NO_LU_SPECS)


# The tables built so far, by the abilities they follow from (``lu.can_unmap``): LUs alike
# share one, so a pool of thousands of LUNs builds two tables, not one each (time and RAM).
_TABLES: dict[bool, CommandTable] = {}


def build_table(lu: LogicalUnit) -> CommandTable:
    """The command table of one LU: SPC commands plus the SBC commands its store supports.
    The list exists before its rows so REPORT SUPPORTED OPERATION CODES can report it. Tables
    are never changed once built, so LUs with the same abilities share one."""
    key = bool(lu.can_unmap)
    table = _TABLES.get(key)
    if table is None:
        table = [None] * 256
        _TABLES[key] = _fill(table, _spc_specs(table) + _sbc_specs(lu) + _xcopy_specs())
    return table
