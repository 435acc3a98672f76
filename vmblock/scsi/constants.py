"""Numbers from the standards, named as the standards name them (SPC-4, SBC-3, SAM-5)."""

from __future__ import annotations

from enum import IntEnum


class Opcode(IntEnum):
    """Operation codes (SPC-4 annex D.3.1, SBC-3 5.1)."""

    TEST_UNIT_READY = 0x00
    REQUEST_SENSE = 0x03
    READ_6 = 0x08
    WRITE_6 = 0x0A
    INQUIRY = 0x12
    MODE_SELECT_6 = 0x15
    RESERVE_6 = 0x16
    RELEASE_6 = 0x17
    MODE_SENSE_6 = 0x1A
    START_STOP_UNIT = 0x1B
    PREVENT_ALLOW_MEDIUM_REMOVAL = 0x1E
    READ_CAPACITY_10 = 0x25
    READ_10 = 0x28
    WRITE_10 = 0x2A
    WRITE_AND_VERIFY_10 = 0x2E
    VERIFY_10 = 0x2F
    READ_DEFECT_DATA_10 = 0x37
    PRE_FETCH_10 = 0x34
    SYNCHRONIZE_CACHE_10 = 0x35
    WRITE_SAME_10 = 0x41
    UNMAP = 0x42
    MODE_SELECT_10 = 0x55
    RESERVE_10 = 0x56
    RELEASE_10 = 0x57
    MODE_SENSE_10 = 0x5A
    PERSISTENT_RESERVE_IN = 0x5E
    PERSISTENT_RESERVE_OUT = 0x5F
    READ_16 = 0x88
    SANITIZE = 0x48
    COMPARE_AND_WRITE = 0x89
    ORWRITE_16 = 0x8B
    WRITE_16 = 0x8A
    WRITE_AND_VERIFY_16 = 0x8E
    VERIFY_16 = 0x8F
    PRE_FETCH_16 = 0x90
    SYNCHRONIZE_CACHE_16 = 0x91
    WRITE_SAME_16 = 0x93
    WRITE_ATOMIC_16 = 0x9C
    SERVICE_ACTION_IN_16 = 0x9E
    REPORT_LUNS = 0xA0
    MAINTENANCE_IN = 0xA3
    READ_12 = 0xA8
    WRITE_12 = 0xAA
    WRITE_AND_VERIFY_12 = 0xAE
    VERIFY_12 = 0xAF
    READ_DEFECT_DATA_12 = 0xB7


class ServiceActionIn16(IntEnum):
    """SERVICE ACTION IN(16) service actions (SBC-3 5.16, 5.8)."""

    READ_CAPACITY_16 = 0x10
    GET_LBA_STATUS = 0x12


class MaintenanceIn(IntEnum):
    """MAINTENANCE IN service actions (SPC-4 6.35, 6.36)."""

    REPORT_TARGET_PORT_GROUPS = 0x0A
    REPORT_SUPPORTED_OPERATION_CODES = 0x0C
    REPORT_SUPPORTED_TASK_MANAGEMENT_FUNCTIONS = 0x0D


class SanitizeAction(IntEnum):
    """SANITIZE service actions (SBC-3 5.21.1)."""

    OVERWRITE = 0x01
    BLOCK_ERASE = 0x02
    CRYPTOGRAPHIC_ERASE = 0x03
    EXIT_FAILURE_MODE = 0x1F


class PrInAction(IntEnum):
    """PERSISTENT RESERVE IN service actions (SPC-4 6.15.1)."""

    READ_KEYS = 0x00
    READ_RESERVATION = 0x01
    REPORT_CAPABILITIES = 0x02
    READ_FULL_STATUS = 0x03


class PrOutAction(IntEnum):
    """PERSISTENT RESERVE OUT service actions (SPC-4 6.16.2)."""

    REGISTER = 0x00
    RESERVE = 0x01
    RELEASE = 0x02
    CLEAR = 0x03
    PREEMPT = 0x04
    PREEMPT_AND_ABORT = 0x05
    REGISTER_AND_IGNORE_EXISTING_KEY = 0x06
    REGISTER_AND_MOVE = 0x07


class PrType(IntEnum):
    """Persistent reservation types (SPC-4 6.16.3, table 173)."""

    WRITE_EXCLUSIVE = 0x1
    EXCLUSIVE_ACCESS = 0x3
    WRITE_EXCLUSIVE_REGISTRANTS_ONLY = 0x5
    EXCLUSIVE_ACCESS_REGISTRANTS_ONLY = 0x6
    WRITE_EXCLUSIVE_ALL_REGISTRANTS = 0x7
    EXCLUSIVE_ACCESS_ALL_REGISTRANTS = 0x8


class SenseKey(IntEnum):
    """Sense keys (SPC-4 4.5.6, table 27)."""

    NO_SENSE = 0x0
    NOT_READY = 0x2
    MEDIUM_ERROR = 0x3
    HARDWARE_ERROR = 0x4
    ILLEGAL_REQUEST = 0x5
    UNIT_ATTENTION = 0x6
    DATA_PROTECT = 0x7
    COPY_ABORTED = 0xA
    ABORTED_COMMAND = 0xB
    MISCOMPARE = 0xE


class VpdPage(IntEnum):
    """Vital product data pages (SPC-4 7.8, SBC-3 6.5)."""

    SUPPORTED_VPD_PAGES = 0x00
    UNIT_SERIAL_NUMBER = 0x80
    DEVICE_IDENTIFICATION = 0x83
    EXTENDED_INQUIRY_DATA = 0x86
    BLOCK_LIMITS = 0xB0
    BLOCK_DEVICE_CHARACTERISTICS = 0xB1
    LOGICAL_BLOCK_PROVISIONING = 0xB2
    THIRD_PARTY_COPY = 0x8F


class ModePage(IntEnum):
    """Mode page codes (SPC-4 7.5, SBC-3 6.4)."""

    DISCONNECT_RECONNECT = 0x02
    CACHING = 0x08
    CONTROL = 0x0A
    INFORMATIONAL_EXCEPTIONS_CONTROL = 0x1C
    RETURN_ALL_PAGES = 0x3F


class PageControl(IntEnum):
    """PC field of MODE SENSE (SPC-4 6.11.2)."""

    CURRENT = 0
    CHANGEABLE = 1
    DEFAULT = 2
    SAVED = 3


class Direction(IntEnum):
    """Which way the data of a command moves."""

    NONE = 0
    IN = 1     # Data-In, target to initiator
    OUT = 2    # Data-Out, initiator to target


class PrAccess(IntEnum):
    """How a command is treated under a persistent reservation (SPC-4 5.9.1, table 60)."""

    ALLOWED = 0     # allowed from any I_T nexus
    READ = 1        # conflicts under the exclusive access types
    WRITE = 2       # conflicts under every type unless the nexus may write
    SPECIAL = 3     # PERSISTENT RESERVE OUT / RESERVE / RELEASE check for themselves


# SAM-5 5.2: the CONTROL byte's NACA bit; ACA is not supported.
CONTROL_NACA = 0x04

# SPC-4 6.4.2: VERSION 06h claims SPC-4.
INQUIRY_VERSION_SPC4 = 0x06
INQUIRY_RESPONSE_DATA_FORMAT = 0x02
PERIPHERAL_DEVICE_TYPE_DISK = 0x00
# SPC-4 6.4.2: qualifier 011b + type 1Fh: no logical unit at this LUN.
PERIPHERAL_NO_LUN = 0x7F

# SPC-4 6.4.2 table 148: version descriptors.
VERSION_DESCRIPTOR_SAM5 = 0x00A0
VERSION_DESCRIPTOR_SPC4 = 0x0460
VERSION_DESCRIPTOR_SBC3 = 0x04C0
VERSION_DESCRIPTOR_ISCSI = 0x0960

# SPC-4 7.8.6.1: designator types and code sets.
CODE_SET_BINARY = 0x1
CODE_SET_ASCII = 0x2
CODE_SET_UTF8 = 0x3
DESIGNATOR_T10_VENDOR_ID = 0x1
DESIGNATOR_NAA = 0x3
DESIGNATOR_RELATIVE_TARGET_PORT = 0x4
DESIGNATOR_TARGET_PORT_GROUP = 0x5
DESIGNATOR_SCSI_NAME_STRING = 0x8
ASSOCIATION_LU = 0x0
ASSOCIATION_TARGET_PORT = 0x1
ASSOCIATION_TARGET_DEVICE = 0x2
PROTOCOL_ID_ISCSI = 0x5

# SBC-3 6.5.4: provisioning types.
PROVISIONING_TYPE_FULL = 0x0
PROVISIONING_TYPE_THIN = 0x2

# SBC-3 5.8.2 table 34: provisioning status of an LBA status descriptor.
LBA_STATUS_MAPPED = 0x0
LBA_STATUS_DEALLOCATED = 0x1

# SPC-4 6.35.3: REPORT SUPPORTED OPERATION CODES reporting options.
RSOC_ALL = 0
RSOC_ONE_OPCODE = 1
RSOC_ONE_SERVICE_ACTION = 2
RSOC_ONE_EITHER = 3

# SPC-4 6.27: REPORT LUNS select report.
SELECT_REPORT_ALL_LOGICAL_UNITS = 0x00
SELECT_REPORT_WELL_KNOWN = 0x01
SELECT_REPORT_ALL = 0x02

# SPC-4 6.4.2: standard INQUIRY byte 1 RMB (removable medium) and byte 5 TPGS 01b (implicit
# asymmetric logical unit access only).
INQUIRY_RMB = 0x80
INQUIRY_TPGS_IMPLICIT = 0x10

# SPC-4 6.37 table 296: REPORT TARGET PORT GROUPS asymmetric access state, active/optimized,
# and the states a target port group says it supports (AO_SUP).
ALUA_STATE_ACTIVE_OPTIMIZED = 0x0
ALUA_SUPPORTS_ACTIVE_OPTIMIZED = 0x01
