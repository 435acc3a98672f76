"""The SCSI target device the iSCSI fabric talks to: LUN map, parse-then-execute, nexus
events and task management (SAM-5 4.6, 5.x, 7.x).

``prepare`` is the common path of every command (LIO's ``target_setup_cmd_from_cdb``): LUN,
opcode, service action, CONTROL byte, pending unit attention, CDB fields, LBA range,
reservation conflicts, the medium's state (``_check_medium``), the amount of Data-Out to
gather. ``execute`` runs the handler and
turns a raised ``ScsiError`` into status and sense. The target builds each LU's command
table (``commands.build_table``) when the LU is added: it is the top of the SCSI core.
"""

from __future__ import annotations

import errno
import logging

from vmblock.scsi.command_spec import CommandSpec, CommandTable, DataRule
from vmblock.scsi.commands import NO_LU_TABLE, build_table
from vmblock.scsi.constants import CONTROL_NACA, Direction, Opcode
from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.sense import ScsiError, SenseReason, fail
from vmblock.scsi.task import Nexus, ScsiTask
from vmblock.store.backend import WriteRefused

log = logging.getLogger(__name__)

_OUT = Direction.OUT
# what a LUN with no logical unit behind it dispatches to (SPC-4 6.4.2, 6.27, 6.29)
_NO_LU = (None, NO_LU_TABLE)


# Task management functions and the unit attention each leaves behind (SAM-5 7.x).
TMF_RESETS = {
    "LUN_RESET": SenseReason.BUS_DEVICE_RESET_OCCURRED,
    # libiscsi's RESERVE/RELEASE helpers accept only 29h/00h after a target reset
    "TARGET_WARM_RESET": SenseReason.POWER_ON_RESET,
    "TARGET_COLD_RESET": SenseReason.POWER_ON_RESET,
}
TMF_TASK_SET = ("CLEAR_TASK_SET", "ABORT_TASK_SET")

# What runs while a SANITIZE does (SBC-3 4.11: INQUIRY, REPORT LUNS, REQUEST SENSE; the
# others get NOT READY, SANITIZE IN PROGRESS), and what needs no medium (SPC-4 5.x: the
# commands about the LU, its reservations, its medium and its mode parameters).
RUN_WHILE_SANITIZING = frozenset({Opcode.INQUIRY, Opcode.REPORT_LUNS, Opcode.REQUEST_SENSE})
RUN_WITHOUT_MEDIUM = RUN_WHILE_SANITIZING | {
    Opcode.MODE_SENSE_6, Opcode.MODE_SENSE_10, Opcode.MODE_SELECT_6, Opcode.MODE_SELECT_10,
    Opcode.START_STOP_UNIT, Opcode.PREVENT_ALLOW_MEDIUM_REMOVAL, Opcode.PERSISTENT_RESERVE_IN,
    Opcode.PERSISTENT_RESERVE_OUT, Opcode.RESERVE_6, Opcode.RELEASE_6, Opcode.RESERVE_10,
    Opcode.RELEASE_10, Opcode.MAINTENANCE_IN}
# The commands that change the medium: DATA PROTECT, WRITE PROTECTED on a write-protected LU.
MEDIUM_WRITES = frozenset({
    Opcode.WRITE_6, Opcode.WRITE_10, Opcode.WRITE_12, Opcode.WRITE_16,
    Opcode.WRITE_AND_VERIFY_10, Opcode.WRITE_AND_VERIFY_12, Opcode.WRITE_AND_VERIFY_16,
    Opcode.WRITE_SAME_10, Opcode.WRITE_SAME_16, Opcode.UNMAP, Opcode.COMPARE_AND_WRITE,
    Opcode.ORWRITE_16, Opcode.WRITE_ATOMIC_16, Opcode.SANITIZE})


class ScsiTarget:
    """One SCSI target device: a name, a target portal group tag and its logical units."""

    def __init__(self, name: str, tpgt: int = 1):
        self.name = name
        self.tpgt = tpgt
        self.luns: dict[int, LogicalUnit] = {}
        # LUN -> (its LU, that LU's command table): one lookup per command
        self._dispatch: dict[int, tuple[LogicalUnit, CommandTable]] = {}
        self.nexuses: set[Nexus] = set()
        # EXTENDED COPY results held for RECEIVE COPY RESULTS: nexus -> list id -> results
        self.copy_results: dict[Nexus, dict[int, tuple[int, int]]] = {}
        # LUN -> its vmblock.stats.rows.LuRows: the stats rows the fabric counts its
        # commands in (set by the server; a LUN without an entry is not counted)
        self.stats_rows: dict = {}

    # -- configuration
    def add_lun(self, lun: int, lu: LogicalUnit) -> None:
        """Serve ``lu`` at ``lun`` with the command table its abilities allow."""
        if lun in self.luns:
            raise ValueError(f"LUN {lun} is in use")
        for nexus in self.nexuses:
            lu.nexuses.add(nexus)
        self.luns[lun] = lu
        self._dispatch[lun] = (lu, build_table(lu))
        self._luns_changed()

    def remove_lun(self, lun: int) -> LogicalUnit:
        """Stop serving ``lun``; commands already prepared keep their LU and table."""
        lu = self.luns.pop(lun)
        del self._dispatch[lun]
        self._luns_changed()
        return lu

    def _luns_changed(self) -> None:
        # SPC-4 6.27: REPORTED LUNS DATA HAS CHANGED for every nexus. Without one there is
        # nobody to tell (the server adds its LUNs before the first login: O(LUNs) per add
        # would make a start with thousands of LUNs quadratic).
        if not self.nexuses:
            return
        for lu in self.luns.values():
            lu.add_ua_all(SenseReason.REPORTED_LUNS_DATA_HAS_CHANGED)

    # -- I_T nexus events from the fabric
    def nexus_added(self, nexus: Nexus) -> None:
        """A session logged in: every LU learns the new I_T nexus."""
        self.nexuses.add(nexus)
        for lu in self.luns.values():
            lu.nexus_added(nexus)

    def nexus_removed(self, nexus: Nexus) -> None:
        """A session ended: every LU forgets the I_T nexus."""
        self.nexuses.discard(nexus)
        self.copy_results.pop(nexus, None)
        for lu in self.luns.values():
            lu.nexus_removed(nexus)

    # -- task management (SAM-5 7.x); aborting tasks in flight is the fabric's job
    def task_management(self, function: str, nexus: Nexus, lun: int | None) -> bool:
        """Carry out a TMF's effect on SCSI state; False when the LUN does not exist."""
        reason = TMF_RESETS.get(function)
        if function == "LUN_RESET":
            lu = self.luns.get(lun)
            if lu is None:
                return False
            lu.reset(reason)
            return True
        if reason is not None:
            for lu in self.luns.values():
                lu.reset(reason)
            return True
        if function in TMF_TASK_SET:
            return lun in self.luns
        raise ValueError(f"unknown task management function {function!r}")

    # -- parse, then execute
    def prepare(self, task: ScsiTask) -> bool:
        """Decode and check ``task``; on failure set status/sense and return False."""
        try:     # the checks of every command, in one frame (one call per command fewer)
            cdb = task.cdb
            lu, table = self._dispatch.get(task.lun, _NO_LU)
            spec: CommandSpec | None = table[cdb[0]]
            if spec is None:
                if lu is None:
                    raise ScsiError(SenseReason.LOGICAL_UNIT_NOT_SUPPORTED)
                # SAM-5 5.14: a pending unit attention is reported before anything else
                if lu.ua:
                    self._unit_attention(lu, task)
                raise ScsiError(SenseReason.INVALID_COMMAND_OPERATION_CODE, field=(0, None))
            if spec.service_actions is not None:
                spec = spec.service_actions.get(cdb[1] & 0x1F)
                if spec is None:
                    raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(1, 4))
            n = spec.cdb_len
            if len(cdb) < n:
                raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(len(cdb) - 1, None))
            if cdb[n - 1] & CONTROL_NACA:
                raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(n - 1, 2))
            if lu is not None and lu.ua and not spec.ua_exempt:
                self._unit_attention(lu, task)
            lba, blocks, xfer, options = spec.decode(cdb, lu)
            if spec.ranged and lba + blocks > lu.num_blocks:
                raise ScsiError(SenseReason.LBA_OUT_OF_RANGE)
            if lu is not None and lu.reservations.active:
                lu.reservations.check(task.nexus, spec.access, spec.spc2_allowed)
            # before the Data-Out is sized: a write to a write-protected LU is refused as such
            # whatever data came with it (libiscsi's ReadOnly test sends WRITE SAME without any)
            if lu is not None and lu.gated:
                self._check_medium(lu, spec.opcode)
            task.cdb_xfer_len = xfer
            if spec.direction == _OUT:
                # Data-Out only arrives with the W bit (RFC 7143 11.3.1)
                task.data_out_len = self._data_out_len(spec, lu, task.edtl if task.write else 0,
                                                       xfer)
            else:
                task.data_out_len = 0
            task.handler = (spec, lu, lba, blocks, options)
        except ScsiError as err:
            fail(task, err)
            task.data_out_len = 0
            return False
        return True

    @staticmethod
    def _check_medium(lu: LogicalUnit, opcode: int) -> None:
        """Refuse what the medium's state does not allow: a SANITIZE under way, an ejected
        medium, a write to a write-protected LU."""
        if lu.sanitize_progress is not None and opcode not in RUN_WHILE_SANITIZING:
            raise ScsiError(SenseReason.SANITIZE_IN_PROGRESS, progress=lu.sanitize_progress)
        if not lu.medium_present and opcode not in RUN_WITHOUT_MEDIUM:
            raise ScsiError(SenseReason.MEDIUM_NOT_PRESENT)
        if lu.write_protected and opcode in MEDIUM_WRITES:
            raise ScsiError(SenseReason.WRITE_PROTECTED)

    @staticmethod
    def _unit_attention(lu: LogicalUnit, task: ScsiTask) -> None:
        reason = lu.pop_ua(task.nexus)
        if reason is not None:
            raise ScsiError(reason)

    @staticmethod
    def _data_out_len(spec: CommandSpec, lu: LogicalUnit, edtl: int, xfer: int) -> int:
        """Bytes of Data-Out to gather, given what the initiator sends (SAM-5 5.4.2)."""
        rule = spec.data
        if edtl >= xfer:
            if rule == DataRule.EXACT and edtl != xfer:
                raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB)
            return xfer
        if rule == DataRule.BLOCKS:
            if edtl % lu.block_size:
                raise ScsiError(SenseReason.INVALID_FIELD_IN_INFORMATION_UNIT)
            return edtl
        if rule == DataRule.PARAM:
            return edtl
        if rule == DataRule.EXACT:
            raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB)
        raise ScsiError(SenseReason.INVALID_FIELD_IN_INFORMATION_UNIT)

    def execute(self, task: ScsiTask):
        """Run a prepared task: None when done, or a coroutine the fabric awaits."""
        spec, lu, lba, blocks, options = task.handler
        try:
            result = spec.execute(self, lu, task, lba, blocks, options)
        except ScsiError as err:
            fail(task, err)
            return None
        except OSError as err:
            self._io_failed(task, spec, err)
            return None
        except Exception:
            self._internal_failure(task, spec)
            return None
        if result is None:
            return None
        return self._finish(task, spec, result)

    async def _finish(self, task: ScsiTask, spec: CommandSpec, awaitable) -> None:
        try:
            await awaitable
        except ScsiError as err:
            fail(task, err)
        except OSError as err:
            self._io_failed(task, spec, err)
        except Exception:
            self._internal_failure(task, spec)

    @staticmethod
    def _internal_failure(task: ScsiTask, spec: CommandSpec) -> None:
        """A bug or an unexpected error below: the initiator gets sense, never a transport
        failure, and the connection and its other commands go on."""
        log.exception("%s on LUN %d failed inside the target", spec.name, task.lun)
        fail(task, ScsiError(SenseReason.INTERNAL_TARGET_FAILURE))

    @staticmethod
    def _io_failed(task: ScsiTask, spec: CommandSpec, err: OSError) -> None:
        quiet = isinstance(err, WriteRefused)      # the store logged its fault once
        if err.errno == errno.ENOSPC and spec.direction != Direction.IN:
            # a thin store out of space (store.backend.SpaceExhausted, or a full host file
            # system under a file tier): SBC-3 4.7.3.7, the data already written is intact
            if not quiet:
                log.warning("%s on LUN %d: %s", spec.name, task.lun, err)
            fail(task, ScsiError(SenseReason.SPACE_ALLOCATION_FAILED_WRITE_PROTECT))
            return
        if not quiet:
            log.error("%s on LUN %d failed: %s", spec.name, task.lun, err)
        reason = (SenseReason.UNRECOVERED_READ_ERROR if spec.direction == Direction.IN
                  else SenseReason.WRITE_ERROR)
        fail(task, ScsiError(reason))

