"""Errors as values and the one place sense data is built (SPC-4 4.5).

Handlers raise ``ScsiError(SenseReason.X)``; ``SENSE_TABLE`` maps the reason to status, sense
key, ASC and ASCQ, and ``build_sense`` lays out fixed-format sense data, like LIO's
``sense_detail_table``. Nobody else builds sense bytes.
"""

from __future__ import annotations

from enum import Enum, auto

from vmblock.scsi.constants import SenseKey
from vmblock.scsi.task import (
    SAM_STAT_CHECK_CONDITION,
    SAM_STAT_RESERVATION_CONFLICT,
    ScsiTask,
)

# SPC-4 4.5.3: fixed format, current error; VALID bit set when INFORMATION is meaningful.
SENSE_RESPONSE_FIXED_CURRENT = 0x70
SENSE_VALID = 0x80
FIXED_SENSE_LEN = 18
ADDITIONAL_SENSE_LEN = FIXED_SENSE_LEN - 8
# SPC-4 4.5.2.4.2: sense key specific field pointer: SKSV, C/D, BPV.
SKSV = 0x80
SKS_CD = 0x40
SKS_BPV = 0x08
# SPC-4 4.5.2.4.4: PROGRESS INDICATION, the fraction done of 65536.
PROGRESS_MAX = 0xFFFF


class SenseReason(Enum):
    """Why a command did not complete with GOOD status."""

    NO_SENSE = auto()
    RESERVATION_CONFLICT = auto()
    INVALID_COMMAND_OPERATION_CODE = auto()
    INVALID_FIELD_IN_CDB = auto()
    INVALID_FIELD_IN_PARAMETER_LIST = auto()
    INVALID_FIELD_IN_INFORMATION_UNIT = auto()
    PARAMETER_LIST_LENGTH_ERROR = auto()
    LBA_OUT_OF_RANGE = auto()
    LOGICAL_UNIT_NOT_SUPPORTED = auto()
    SAVING_PARAMETERS_NOT_SUPPORTED = auto()
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION = auto()
    INSUFFICIENT_REGISTRATION_RESOURCES = auto()
    MISCOMPARE_DURING_VERIFY = auto()
    WRITE_ERROR = auto()
    UNRECOVERED_READ_ERROR = auto()
    DATA_OFFSET_ERROR = auto()          # iSCSI Data-Out out of sequence (RFC 7143 11.4.7.2)
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT = auto()   # thin pool full (SBC-3 4.7.3.7)
    INTERNAL_TARGET_FAILURE = auto()    # a fault of the target itself, not of the medium
    WRITE_PROTECTED = auto()            # read-only LUN or SWP (SBC-3 4.13)
    MEDIUM_NOT_PRESENT = auto()         # a removable LUN's medium is ejected
    MEDIUM_REMOVAL_PREVENTED = auto()   # eject/load while PREVENT ALLOW prevents it
    SANITIZE_IN_PROGRESS = auto()       # SBC-3 4.11: with a progress indication
    # unit attentions
    POWER_ON_RESET = auto()
    BUS_DEVICE_RESET_OCCURRED = auto()
    MODE_PARAMETERS_CHANGED = auto()
    RESERVATIONS_PREEMPTED = auto()
    RESERVATIONS_RELEASED = auto()
    REGISTRATIONS_PREEMPTED = auto()
    CAPACITY_DATA_HAS_CHANGED = auto()
    REPORTED_LUNS_DATA_HAS_CHANGED = auto()
    MEDIUM_MAY_HAVE_CHANGED = auto()    # the LU's data was replaced (snapshot revert)
    # EXTENDED COPY (SPC-4 6.4): parameter list and copy failures
    TOO_MANY_TARGET_DESCRIPTORS = auto()
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE = auto()
    TOO_MANY_SEGMENT_DESCRIPTORS = auto()
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE = auto()
    UNREACHABLE_COPY_TARGET = auto()            # a CSCD index past the CSCD list
    COPY_TARGET_DEVICE_NOT_REACHABLE = auto()   # a CSCD naming no LU this nexus may see
    COPY_ABORTED_LBA_OUT_OF_RANGE = auto()      # a segment past a copy target's capacity


_CC = SAM_STAT_CHECK_CONDITION
_IR = SenseKey.ILLEGAL_REQUEST
_UA = SenseKey.UNIT_ATTENTION

# reason -> (status, sense key, ASC, ASCQ); SPC-4 annex D.2 for the codes.
SENSE_TABLE: dict[SenseReason, tuple[int, int, int, int]] = {
    SenseReason.NO_SENSE: (_CC, SenseKey.NO_SENSE, 0x00, 0x00),
    SenseReason.RESERVATION_CONFLICT: (SAM_STAT_RESERVATION_CONFLICT, 0, 0, 0),
    SenseReason.INVALID_COMMAND_OPERATION_CODE: (_CC, _IR, 0x20, 0x00),
    SenseReason.INVALID_FIELD_IN_CDB: (_CC, _IR, 0x24, 0x00),
    SenseReason.INVALID_FIELD_IN_PARAMETER_LIST: (_CC, _IR, 0x26, 0x00),
    SenseReason.INVALID_FIELD_IN_INFORMATION_UNIT: (_CC, _IR, 0x0E, 0x03),
    SenseReason.PARAMETER_LIST_LENGTH_ERROR: (_CC, _IR, 0x1A, 0x00),
    SenseReason.LBA_OUT_OF_RANGE: (_CC, _IR, 0x21, 0x00),
    SenseReason.LOGICAL_UNIT_NOT_SUPPORTED: (_CC, _IR, 0x25, 0x00),
    SenseReason.SAVING_PARAMETERS_NOT_SUPPORTED: (_CC, _IR, 0x39, 0x00),
    SenseReason.INVALID_RELEASE_OF_PERSISTENT_RESERVATION: (_CC, _IR, 0x26, 0x04),
    SenseReason.INSUFFICIENT_REGISTRATION_RESOURCES: (_CC, _IR, 0x55, 0x04),
    SenseReason.MISCOMPARE_DURING_VERIFY: (_CC, SenseKey.MISCOMPARE, 0x1D, 0x00),
    SenseReason.WRITE_ERROR: (_CC, SenseKey.MEDIUM_ERROR, 0x0C, 0x00),
    SenseReason.UNRECOVERED_READ_ERROR: (_CC, SenseKey.MEDIUM_ERROR, 0x11, 0x00),
    SenseReason.DATA_OFFSET_ERROR: (_CC, SenseKey.ABORTED_COMMAND, 0x4B, 0x05),
    SenseReason.SPACE_ALLOCATION_FAILED_WRITE_PROTECT: (_CC, SenseKey.DATA_PROTECT, 0x27, 0x07),
    SenseReason.INTERNAL_TARGET_FAILURE: (_CC, SenseKey.HARDWARE_ERROR, 0x44, 0x00),
    SenseReason.WRITE_PROTECTED: (_CC, SenseKey.DATA_PROTECT, 0x27, 0x00),
    SenseReason.MEDIUM_NOT_PRESENT: (_CC, SenseKey.NOT_READY, 0x3A, 0x00),
    SenseReason.MEDIUM_REMOVAL_PREVENTED: (_CC, _IR, 0x53, 0x02),
    SenseReason.SANITIZE_IN_PROGRESS: (_CC, SenseKey.NOT_READY, 0x04, 0x1B),
    SenseReason.POWER_ON_RESET: (_CC, _UA, 0x29, 0x00),
    SenseReason.BUS_DEVICE_RESET_OCCURRED: (_CC, _UA, 0x29, 0x03),
    SenseReason.MODE_PARAMETERS_CHANGED: (_CC, _UA, 0x2A, 0x01),
    SenseReason.RESERVATIONS_PREEMPTED: (_CC, _UA, 0x2A, 0x03),
    SenseReason.RESERVATIONS_RELEASED: (_CC, _UA, 0x2A, 0x04),
    SenseReason.REGISTRATIONS_PREEMPTED: (_CC, _UA, 0x2A, 0x05),
    SenseReason.CAPACITY_DATA_HAS_CHANGED: (_CC, _UA, 0x2A, 0x09),
    SenseReason.REPORTED_LUNS_DATA_HAS_CHANGED: (_CC, _UA, 0x3F, 0x0E),
    SenseReason.MEDIUM_MAY_HAVE_CHANGED: (_CC, _UA, 0x28, 0x00),
    SenseReason.TOO_MANY_TARGET_DESCRIPTORS: (_CC, _IR, 0x26, 0x06),
    SenseReason.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: (_CC, _IR, 0x26, 0x07),
    SenseReason.TOO_MANY_SEGMENT_DESCRIPTORS: (_CC, _IR, 0x26, 0x08),
    SenseReason.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: (_CC, _IR, 0x26, 0x09),
    SenseReason.UNREACHABLE_COPY_TARGET: (_CC, SenseKey.COPY_ABORTED, 0x08, 0x04),
    SenseReason.COPY_TARGET_DEVICE_NOT_REACHABLE: (_CC, SenseKey.COPY_ABORTED, 0x0D, 0x02),
    # SPC-4 6.4.4: the copy target's error is reported as COPY ABORTED
    SenseReason.COPY_ABORTED_LBA_OUT_OF_RANGE: (_CC, SenseKey.COPY_ABORTED, 0x00, 0x00),
}


class ScsiError(Exception):
    """A command failed for ``reason``.

    ``info`` fills the INFORMATION field (the LBA or byte offset the error concerns);
    ``field`` = (byte, bit or None) points at the offending CDB byte, or parameter-list byte
    when ``in_cdb`` is False (SPC-4 4.5.2.4.2); ``progress`` (0-65535) fills the progress
    indication of a NOT READY sense instead (SPC-4 4.5.2.4.4).
    """

    __slots__ = ("reason", "info", "field", "in_cdb", "progress")

    def __init__(self, reason: SenseReason, *, info: int | None = None,
                 field: tuple[int, int | None] | None = None, in_cdb: bool = True,
                 progress: int | None = None):
        super().__init__(reason.name)
        self.reason = reason
        self.info = info
        self.field = field
        self.in_cdb = in_cdb
        self.progress = progress


def build_sense(reason: SenseReason, info: int | None = None,
                field: tuple[int, int | None] | None = None, in_cdb: bool = True,
                progress: int | None = None) -> bytes:
    """Fixed-format sense data (SPC-4 4.5.3, table 26) for ``reason``."""
    _status, key, asc, ascq = SENSE_TABLE[reason]
    buf = bytearray(FIXED_SENSE_LEN)
    buf[0] = SENSE_RESPONSE_FIXED_CURRENT
    buf[2] = key
    if info is not None:
        buf[0] |= SENSE_VALID
        buf[3:7] = (info & 0xFFFFFFFF).to_bytes(4, "big")
    buf[7] = ADDITIONAL_SENSE_LEN
    buf[12] = asc
    buf[13] = ascq
    if field is not None:
        byte, bit = field
        buf[15] = SKSV | (SKS_CD if in_cdb else 0)
        if bit is not None:
            buf[15] |= SKS_BPV | (bit & 0x7)
        buf[16:18] = byte.to_bytes(2, "big")
    elif progress is not None:
        buf[15] = SKSV
        buf[16:18] = min(progress, PROGRESS_MAX).to_bytes(2, "big")
    return bytes(buf)


def fail(task: ScsiTask, err: ScsiError) -> None:
    """Record ``err`` as the outcome of ``task``."""
    status = SENSE_TABLE[err.reason][0]
    task.status = status
    task.data_in = None
    if status == SAM_STAT_CHECK_CONDITION:
        task.sense = build_sense(err.reason, err.info, err.field, err.in_cdb, err.progress)
    else:
        task.sense = None
