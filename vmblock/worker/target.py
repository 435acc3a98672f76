"""The SCSI target as a worker's connections see it: the fast path, else the owner.

``WorkerTarget`` stands where ``ScsiTarget`` stands in the owner (a ``TargetEntry``'s ``scsi``),
with the same four calls the fabric makes: ``prepare``, ``execute``, ``task_management`` and
``nexus_removed``. A command the ``FastPath`` does not claim is prepared here only as far as
the fabric needs (gather the Data-Out the initiator announces, its EDTL) and forwarded whole
to the owner, whose ``ScsiTarget.prepare`` decides everything else: LUN, opcode, unit
attentions, reservations, ranges, how much of the Data-Out counts. ``RESULT`` brings back
status, sense, Data-In and the CDB's transfer length, from which the fabric computes the
residuals as it does in one process.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from vmblock.iscsi.pdu import TmfFunction
from vmblock.scsi.task import Nexus, ScsiTask

from .fastpath import FastPath

if TYPE_CHECKING:
    from .process import WorkerProcess


class WorkerTarget:
    """One target's commands in a worker (module docstring); ``luns`` is the owner's LUN
    list, kept current by ``LUNS`` messages, for the fabric's TMF checks."""

    def __init__(self, name: str, luns, process: WorkerProcess, fast: FastPath):
        self.name = name
        self.luns = set(luns)
        self.process = process
        self.fast = fast
        self.stats_rows: dict = {}      # LUN -> vmblock.stats.rows.LuRows, from the owner

    def prepare(self, task: ScsiTask) -> bool:
        """The fast path's prepare when it claims ``task``; else gather everything the
        initiator sends and let the owner prepare it (module docstring). Always True."""
        task.received = time.monotonic()
        if self.process.held_aborts:
            self.process.apply_held_aborts()
        if self.fast.claim(task):
            return True
        task.data_out_len = task.edtl if task.write else 0
        task.cdb_xfer_len = task.edtl        # what the fabric charges a READ to the budget
        task.handler = None
        return True

    def execute(self, task: ScsiTask):
        """Run a claimed ``task`` on the fast path, else send it to the owner now (in CmdSN
        order with TMFs) and return the ``Forwarded`` its ``RESULT`` ends."""
        if task.handler is not None:
            return self.fast.execute(task)
        return self.process.forward(task)

    def task_management(self, function: str, nexus: Nexus, lun: int | None) -> bool:
        """ABORT TASK SET touches only this session's tasks (the fabric aborted them):
        answered here. Every other TMF changes state of the target (UAs, reservations) and
        tasks of other sessions: the owner applies it before this returns."""
        if function == "ABORT_TASK_SET":
            return lun in self.luns
        return self.process.task_management(TmfFunction[function], nexus, lun)

    def nexus_removed(self, nexus: Nexus) -> None:
        """The session ended here; the owner ends the nexus when its last connection's
        ``CLOSED`` arrives (``WorkerService.release``), so nothing is sent twice."""
