"""The command table: opcode -> ``CommandSpec`` (decode, execute, direction, reservation class).

Like tgt's per-device ``ops[256]`` and LIO's ``sbc_parse_cdb``: ``ScsiTarget.prepare`` looks
the opcode up, runs the decoder and the checks common to all commands, ``execute`` runs the
handler. The same table, built per LU from the store's capabilities, generates REPORT
SUPPORTED OPERATION CODES. ``usage`` is the CDB USAGE DATA of SPC-4 6.35.3: the opcode,
the service action, then a mask of the bits the device server looks at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Callable

from vmblock.scsi import cdb as d
from vmblock.scsi import sbc, spc
from vmblock.scsi.constants import (
    Direction,
    MaintenanceIn,
    Opcode,
    PrAccess,
    PrInAction,
    PrOutAction,
    ServiceActionIn16,
)

if TYPE_CHECKING:
    from vmblock.scsi.lu import LogicalUnit


class DataRule(IntEnum):
    """How Data-Out from the initiator must relate to what the CDB asks for."""

    NONE = 0        # no Data-Out
    BLOCKS = 1      # whole blocks; a short transfer writes what arrived (SAM-5 5.4.2)
    EXACT = 2       # exactly the CDB's amount (COMPARE AND WRITE, WRITE SAME)
    AT_LEAST = 3    # at least the CDB's amount (VERIFY with BYTCHK)
    PARAM = 4       # a parameter list, validated by the handler


@dataclass(frozen=True, slots=True, eq=False)
class CommandSpec:
    opcode: int
    name: str
    decode: Callable
    execute: Callable
    usage: bytes
    direction: Direction = Direction.NONE
    access: PrAccess = PrAccess.WRITE
    data: DataRule = DataRule.NONE
    ranged: bool = False           # LBA + blocks checked against the capacity
    ua_exempt: bool = False        # SPC-4 5.14: INQUIRY, REPORT LUNS, REQUEST SENSE
    spc2_allowed: bool = False     # allowed through another nexus's RESERVE(6/10)
    service_action: int | None = None
    service_actions: dict[int, CommandSpec] | None = field(default=None)
    cdb_len: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cdb_len", len(self.usage))


def _u(*masks: int) -> bytes:
    return bytes(masks)


# SPC-4 D.2: CONTROL byte, of which we evaluate NACA
C = 0x04
F4 = (0xFF,) * 4
F8 = (0xFF,) * 8


def _rw(op, name, decode, execute, direction, data, access, flags, size):
    """Spec of a READ/WRITE-shaped CDB of ``size`` bytes (SBC-3 5.x layouts)."""
    if size == 10:      # flags, LBA(4), group, TRANSFER LENGTH(2), control
        usage = _u(op, flags, *F4, 0, 0xFF, 0xFF, C)
    elif size == 12:    # flags, LBA(4), TRANSFER LENGTH(4), group, control
        usage = _u(op, flags, *F4, *F4, 0, C)
    else:               # flags, LBA(8), TRANSFER LENGTH(4), group, control
        usage = _u(op, flags, *F8, *F4, 0, C)
    return CommandSpec(op, name, decode, execute, usage, direction, access, data, ranged=True)


RW_FLAGS = d.PROTECT_MASK | d.DPO | d.FUA
WV_FLAGS = d.PROTECT_MASK | d.DPO | d.WRITE_VERIFY_BYTCHK
VERIFY_FLAGS = d.PROTECT_MASK | d.DPO | d.BYTCHK_MASK
IMMED_FLAGS = d.IMMED
WS_FLAGS = d.PROTECT_MASK | d.WRITE_SAME_ANCHOR


def _sbc_specs(lu: LogicalUnit) -> list[CommandSpec]:
    IN, OUT, NONE = Direction.IN, Direction.OUT, Direction.NONE
    R, W = PrAccess.READ, PrAccess.WRITE
    B, X, A = DataRule.BLOCKS, DataRule.EXACT, DataRule.AT_LEAST
    specs = [
        CommandSpec(Opcode.READ_6, "READ(6)", d.rw6, sbc.read,
                    _u(Opcode.READ_6, 0x1F, 0xFF, 0xFF, 0xFF, C), IN, R, ranged=True),
        CommandSpec(Opcode.WRITE_6, "WRITE(6)", d.rw6, sbc.write,
                    _u(Opcode.WRITE_6, 0x1F, 0xFF, 0xFF, 0xFF, C), OUT, W, B, ranged=True),
        _rw(Opcode.READ_10, "READ(10)", d.rw10, sbc.read, IN, DataRule.NONE, R, RW_FLAGS, 10),
        _rw(Opcode.READ_12, "READ(12)", d.rw12, sbc.read, IN, DataRule.NONE, R, RW_FLAGS, 12),
        _rw(Opcode.READ_16, "READ(16)", d.rw16, sbc.read, IN, DataRule.NONE, R, RW_FLAGS, 16),
        _rw(Opcode.WRITE_10, "WRITE(10)", d.rw10, sbc.write, OUT, B, W, RW_FLAGS, 10),
        _rw(Opcode.WRITE_12, "WRITE(12)", d.rw12, sbc.write, OUT, B, W, RW_FLAGS, 12),
        _rw(Opcode.WRITE_16, "WRITE(16)", d.rw16, sbc.write, OUT, B, W, RW_FLAGS, 16),
        _rw(Opcode.WRITE_AND_VERIFY_10, "WRITE AND VERIFY(10)", d.write_verify10,
            sbc.write_and_verify, OUT, B, W, WV_FLAGS, 10),
        _rw(Opcode.WRITE_AND_VERIFY_12, "WRITE AND VERIFY(12)", d.write_verify12,
            sbc.write_and_verify, OUT, B, W, WV_FLAGS, 12),
        _rw(Opcode.WRITE_AND_VERIFY_16, "WRITE AND VERIFY(16)", d.write_verify16,
            sbc.write_and_verify, OUT, B, W, WV_FLAGS, 16),
        _rw(Opcode.VERIFY_10, "VERIFY(10)", d.verify10, sbc.verify, OUT, A, R,
            VERIFY_FLAGS, 10),
        _rw(Opcode.VERIFY_12, "VERIFY(12)", d.verify12, sbc.verify, OUT, A, R,
            VERIFY_FLAGS, 12),
        _rw(Opcode.VERIFY_16, "VERIFY(16)", d.verify16, sbc.verify, OUT, A, R,
            VERIFY_FLAGS, 16),
        _rw(Opcode.PRE_FETCH_10, "PRE-FETCH(10)", d.range10, sbc.pre_fetch, NONE,
            DataRule.NONE, R, IMMED_FLAGS, 10),
        _rw(Opcode.PRE_FETCH_16, "PRE-FETCH(16)", d.range16, sbc.pre_fetch, NONE,
            DataRule.NONE, R, IMMED_FLAGS, 16),
        _rw(Opcode.SYNCHRONIZE_CACHE_10, "SYNCHRONIZE CACHE(10)", d.range10,
            sbc.synchronize_cache, NONE, DataRule.NONE, W, IMMED_FLAGS, 10),
        _rw(Opcode.SYNCHRONIZE_CACHE_16, "SYNCHRONIZE CACHE(16)", d.range16,
            sbc.synchronize_cache, NONE, DataRule.NONE, W, IMMED_FLAGS, 16),
        CommandSpec(Opcode.COMPARE_AND_WRITE, "COMPARE AND WRITE", d.compare_and_write,
                    sbc.compare_and_write,
                    _u(Opcode.COMPARE_AND_WRITE, RW_FLAGS, *F8, 0, 0, 0, 0xFF, 0, C),
                    OUT, W, X, ranged=True),
        _rw(Opcode.ORWRITE_16, "ORWRITE(16)", d.rw16, sbc.orwrite, OUT, B, W, RW_FLAGS, 16),
        CommandSpec(Opcode.READ_DEFECT_DATA_10, "READ DEFECT DATA(10)", d.alloc16_at7,
                    sbc.read_defect_data10,
                    _u(Opcode.READ_DEFECT_DATA_10, 0, 0x1F, 0, 0, 0, 0, 0xFF, 0xFF, C), IN, R),
        CommandSpec(Opcode.READ_DEFECT_DATA_12, "READ DEFECT DATA(12)", d.alloc32_at6,
                    sbc.read_defect_data12,
                    _u(Opcode.READ_DEFECT_DATA_12, 0x1F, *F4, *F4, 0, C), IN, R),
        _rw(Opcode.WRITE_SAME_10, "WRITE SAME(10)", d.write_same10, sbc.write_same, OUT, X, W,
            WS_FLAGS | (d.WRITE_SAME_UNMAP if lu.can_unmap else 0), 10),
        _rw(Opcode.WRITE_SAME_16, "WRITE SAME(16)", d.write_same16, sbc.write_same, OUT, X, W,
            WS_FLAGS | d.WRITE_SAME_NDOB | (d.WRITE_SAME_UNMAP if lu.can_unmap else 0), 16),
        CommandSpec(Opcode.START_STOP_UNIT, "START STOP UNIT", d.no_data, sbc.start_stop_unit,
                    _u(Opcode.START_STOP_UNIT, 0, 0, 0, 0x07, C)),
        CommandSpec(Opcode.READ_CAPACITY_10, "READ CAPACITY(10)", d.no_data,
                    sbc.read_capacity10, _u(Opcode.READ_CAPACITY_10, 0, *F4, 0, 0, 0x01, C),
                    IN, PrAccess.ALLOWED),
    ]
    sai = [
        CommandSpec(Opcode.SERVICE_ACTION_IN_16, "READ CAPACITY(16)", d.alloc32_at10,
                    sbc.read_capacity16,
                    _u(Opcode.SERVICE_ACTION_IN_16, ServiceActionIn16.READ_CAPACITY_16,
                       *((0,) * 8), *F4, 0, C),
                    IN, PrAccess.ALLOWED, service_action=ServiceActionIn16.READ_CAPACITY_16),
        CommandSpec(Opcode.SERVICE_ACTION_IN_16, "GET LBA STATUS", d.get_lba_status,
                    sbc.get_lba_status,
                    _u(Opcode.SERVICE_ACTION_IN_16, ServiceActionIn16.GET_LBA_STATUS, *F8, *F4,
                       0, C),
                    IN, R, service_action=ServiceActionIn16.GET_LBA_STATUS),
    ]
    specs.append(_group(sai))
    if lu.can_unmap:
        specs.append(CommandSpec(Opcode.UNMAP, "UNMAP", d.unmap, sbc.unmap,
                                 _u(Opcode.UNMAP, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, C),
                                 OUT, W, DataRule.PARAM))
    return specs


def _spc_specs() -> list[CommandSpec]:
    IN, OUT = Direction.IN, Direction.OUT
    ALLOWED, R, SPECIAL = PrAccess.ALLOWED, PrAccess.READ, PrAccess.SPECIAL
    P = DataRule.PARAM
    specs = [
        CommandSpec(Opcode.TEST_UNIT_READY, "TEST UNIT READY", d.no_data, spc.test_unit_ready,
                    _u(Opcode.TEST_UNIT_READY, 0, 0, 0, 0, C), access=ALLOWED),
        *NO_LU_SPECS,
        CommandSpec(Opcode.MODE_SENSE_6, "MODE SENSE(6)", d.alloc8_at4, spc.mode_sense6,
                    _u(Opcode.MODE_SENSE_6, 0x08, 0xFF, 0xFF, 0xFF, C), IN, R),
        CommandSpec(Opcode.MODE_SENSE_10, "MODE SENSE(10)", d.alloc16_at7, spc.mode_sense10,
                    _u(Opcode.MODE_SENSE_10, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, C), IN, R),
        CommandSpec(Opcode.MODE_SELECT_6, "MODE SELECT(6)", d.param8_at4, spc.mode_select6,
                    _u(Opcode.MODE_SELECT_6, 0x11, 0, 0, 0xFF, C), OUT, data=P),
        CommandSpec(Opcode.MODE_SELECT_10, "MODE SELECT(10)", d.param16_at7, spc.mode_select10,
                    _u(Opcode.MODE_SELECT_10, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, C), OUT,
                    data=P),
        CommandSpec(Opcode.RESERVE_6, "RESERVE(6)", d.no_data, spc.reserve,
                    _u(Opcode.RESERVE_6, 0, 0, 0, 0, C), access=SPECIAL),
        CommandSpec(Opcode.RELEASE_6, "RELEASE(6)", d.no_data, spc.release,
                    _u(Opcode.RELEASE_6, 0, 0, 0, 0, C), access=SPECIAL, spc2_allowed=True),
        CommandSpec(Opcode.RESERVE_10, "RESERVE(10)", d.no_data, spc.reserve,
                    _u(Opcode.RESERVE_10, 0, 0, 0, 0, 0, 0, 0, 0, C), access=SPECIAL),
        CommandSpec(Opcode.RELEASE_10, "RELEASE(10)", d.no_data, spc.release,
                    _u(Opcode.RELEASE_10, 0, 0, 0, 0, 0, 0, 0, 0, C), access=SPECIAL,
                    spc2_allowed=True),
        CommandSpec(Opcode.PREVENT_ALLOW_MEDIUM_REMOVAL, "PREVENT ALLOW MEDIUM REMOVAL",
                    d.no_data, spc.prevent_allow_medium_removal,
                    _u(Opcode.PREVENT_ALLOW_MEDIUM_REMOVAL, 0, 0, 0, 0x03, C)),
    ]
    prin = [
        CommandSpec(Opcode.PERSISTENT_RESERVE_IN, f"PERSISTENT RESERVE IN/{a.name}",
                    d.alloc16_at7, spc.persistent_reserve_in,
                    _u(Opcode.PERSISTENT_RESERVE_IN, a, 0, 0, 0, 0, 0, 0xFF, 0xFF, C), IN,
                    ALLOWED, service_action=a)
        for a in PrInAction
    ]
    prout = [
        CommandSpec(Opcode.PERSISTENT_RESERVE_OUT, f"PERSISTENT RESERVE OUT/{a.name}",
                    d.param32_at5, spc.persistent_reserve_out,
                    _u(Opcode.PERSISTENT_RESERVE_OUT, a, 0xFF, 0, 0, *F4, C), OUT, SPECIAL, P,
                    service_action=a)
        for a in PrOutAction
    ]
    maint = [
        CommandSpec(Opcode.MAINTENANCE_IN, "REPORT SUPPORTED OPERATION CODES", d.alloc32_at6,
                    spc.report_supported_opcodes,
                    _u(Opcode.MAINTENANCE_IN, MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES,
                       0x87, 0xFF, 0xFF, 0xFF, *F4, 0, C),
                    IN, ALLOWED,
                    service_action=MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES),
        CommandSpec(Opcode.MAINTENANCE_IN, "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
                    d.alloc32_at6, spc.report_supported_tmfs,
                    _u(Opcode.MAINTENANCE_IN,
                       MaintenanceIn.REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS,
                       0, 0, 0, 0, *F4, 0, C),
                    IN, ALLOWED,
                    service_action=MaintenanceIn.REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS),
    ]
    return specs + [_group(prin), _group(prout), _group(maint)]


def _group(members: list[CommandSpec]) -> CommandSpec:
    """A dispatch entry for an opcode whose CDB byte 1 carries a SERVICE ACTION."""
    first = members[0]
    return CommandSpec(first.opcode, f"opcode {first.opcode:02x}h", d.no_data, None,
                       first.usage, service_actions={m.service_action: m for m in members})


# Commands that work on a LUN with no logical unit behind it (SPC-4 6.4.2, 6.27, 6.29).
NO_LU_SPECS = (
    CommandSpec(Opcode.INQUIRY, "INQUIRY", d.alloc16_at3, spc.inquiry,
                _u(Opcode.INQUIRY, 0x03, 0xFF, 0xFF, 0xFF, C), Direction.IN,
                PrAccess.ALLOWED, ua_exempt=True, spc2_allowed=True),
    CommandSpec(Opcode.REPORT_LUNS, "REPORT LUNS", d.alloc32_at6, spc.report_luns,
                _u(Opcode.REPORT_LUNS, 0, 0xFF, 0, 0, 0, *F4, 0, C), Direction.IN,
                PrAccess.ALLOWED, ua_exempt=True, spc2_allowed=True),
    CommandSpec(Opcode.REQUEST_SENSE, "REQUEST SENSE", d.alloc8_at4, spc.request_sense,
                _u(Opcode.REQUEST_SENSE, 0x01, 0, 0, 0xFF, C), Direction.IN,
                PrAccess.ALLOWED, ua_exempt=True, spc2_allowed=True),
)


def _table(specs) -> list[CommandSpec | None]:
    table: list[CommandSpec | None] = [None] * 256
    for spec in specs:
        table[spec.opcode] = spec
    return table


NO_LU_TABLE = _table(NO_LU_SPECS)


def build_table(lu: LogicalUnit) -> list[CommandSpec | None]:
    """The command table of one LU: SPC commands plus the SBC commands its store supports."""
    return _table(_spc_specs() + _sbc_specs(lu))


def supported_specs(table: list[CommandSpec | None]) -> list[CommandSpec]:
    """Every (opcode, service action) of a table, in opcode order, for REPORT SUPPORTED
    OPERATION CODES."""
    out = []
    for spec in table:
        if spec is None:
            continue
        if spec.service_actions is None:
            out.append(spec)
        else:
            out.extend(spec.service_actions[a] for a in sorted(spec.service_actions))
    return out
