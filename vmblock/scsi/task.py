"""The unit of work the fabric hands to the SCSI core: one SCSI command and its outcome.

The fabric fills the request fields, calls ``ScsiTarget.prepare`` (decode, range checks) and,
when that succeeds, gathers ``data_out_len`` bytes of Data-Out and calls ``ScsiTarget.execute``.
The SCSI core fills the result fields; the fabric turns them into Data-In and a SCSI Response.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SAM_STAT_GOOD = 0x00
SAM_STAT_CHECK_CONDITION = 0x02
SAM_STAT_CONDITION_MET = 0x04
SAM_STAT_BUSY = 0x08
SAM_STAT_RESERVATION_CONFLICT = 0x18
SAM_STAT_TASK_SET_FULL = 0x28
SAM_STAT_TASK_ABORTED = 0x40

# Task attributes as carried in the iSCSI SCSI Command PDU (RFC 7143 11.3.1.1).
TASK_ATTR_UNTAGGED = 0
TASK_ATTR_SIMPLE = 1
TASK_ATTR_ORDERED = 2
TASK_ATTR_HEAD_OF_QUEUE = 3
TASK_ATTR_ACA = 4


@dataclass(frozen=True, slots=True)
class Nexus:
    """An I_T nexus: who is asking, through which session (SPC-4 3.1.45)."""

    initiator: str      # initiator iSCSI name
    isid: int           # 48-bit ISID of the session
    target: str         # target iSCSI name
    tpgt: int = 1       # target portal group tag

    @property
    def initiator_port(self) -> str:
        """SCSI initiator port name, 'iqn...,i,0x<isid>' (RFC 7143 10.14, SPC-4 7.6.4.6)."""
        return f"{self.initiator},i,0x{self.isid:012x}"

    @property
    def target_port(self) -> str:
        """SCSI target port name, 'iqn...,t,0x<tpgt>' (RFC 7143 10.14, SPC-4 7.6.4.6)."""
        return f"{self.target},t,0x{self.tpgt:04x}"


@dataclass(slots=True, eq=False)
class ScsiTask:
    """One SCSI command: request fields filled by the fabric, then what ``prepare`` decided,
    then the result the SCSI core leaves for the fabric to send (module docstring)."""

    # request, filled by the fabric
    lun: int
    cdb: bytes
    nexus: Nexus
    itt: int = 0
    attr: int = TASK_ATTR_SIMPLE
    edtl: int = 0                   # expected data transfer length from the initiator
    read: bool = False              # R bit of the command PDU
    write: bool = False             # W bit of the command PDU
    data_out: memoryview | None = None   # the Data-Out the fabric gathered (len == data_out_len)
    # set by prepare()
    data_out_len: int = 0           # bytes of Data-Out the fabric must gather (<= edtl)
    cdb_xfer_len: int = 0           # bytes the CDB itself asks to move (for residuals)
    # result, filled by prepare()/execute()
    status: int = SAM_STAT_GOOD
    sense: bytes | None = None      # fixed-format sense data, built by vmblock.scsi.sense only
    data_in: bytes | bytearray | memoryview | None = None
    aborted: bool = False           # set by the fabric when a TMF aborts it
    # CLOCK_MONOTONIC when a worker process took it (vmblock.worker): a reset the owner applies
    # aborts there only the commands taken before it, never one sent after its TMF's answer
    received: float = 0.0
    # the statistics' clock (time.perf_counter) when an executor thread started its I/O: the
    # wait before counts as queue, not storage (vmblock.stats.recorder); 0.0: never queued
    t_io: float = 0.0
    handler: object = field(default=None, repr=False)   # decoded command spec, private to scsi core
