"""The messages between the owner and a worker process (docs/workers.md, "Messages").

Each message is one frame on the unix socketpair: a little-endian header ``<IB`` (payload
length, message type), then the payload. The per-command messages (``COMMAND``, ``RESULT``)
have fixed binary heads followed by raw bytes (CDB, sense, data), so a 4 KiB write costs one
``struct`` pack and one gather ``sendmsg``; the rare ones (``READY``, ``HANDOFF``, ``LUNS``,
``ABORT``, ``CONFIG``, ``STORE``) carry JSON. A ``HANDOFF`` frame carries the connection's
socket as SCM_RIGHTS
ancillary data on its first byte. This module only packs and unpacks: no I/O.
"""

from __future__ import annotations

import enum
import json
import struct

HEADER = struct.Struct("<IB")               # payload length, message type
MAX_PAYLOAD = (64 << 20) + 4096              # the largest Data-Out plus its head
NO_LUN = 0xFFFFFFFFFFFFFFFF                  # the LUN field of a target-wide TMF or abort

# COMMAND head: tag, TSIH, ITT, LUN, EDTL, task attribute, R/W flags, CDB length; then the
# CDB, then the Data-Out (the rest of the payload).
COMMAND = struct.Struct("<IHIQIBBB")
CMD_READ = 0x01
CMD_WRITE = 0x02
# RESULT head: tag, SCSI status, flags, the CDB's transfer length (for residuals), when an
# executor thread of the owner started its I/O (ScsiTask.t_io: CLOCK_MONOTONIC, one clock for
# every process; 0.0 none), sense length; then the sense, then the Data-In (the rest).
RESULT = struct.Struct("<IBBQdH")
RESULT_DATA_IN = 0x01       # Data-In follows (possibly empty); without it task.data_in is None
RESULT_FAILED = 0x02        # the command raised in the owner: answer TARGET FAILURE
RESULT_GONE = 0x04          # the session is no longer the owner's: the task is aborted
# bits 3-4: the flash cache's class of the command in the owner (statistics' latency split,
# vmblock.stats.recorder): 0 none (no cache probe on the LU), 1 flash, 2 flash miss
RESULT_CLASS_SHIFT = 3
RESULT_CLASS_MASK = 0x3
# TMF: tag, TSIH, RFC 7143 function code, LUN (NO_LUN for target resets)
TMF = struct.Struct("<IHBQ")
TMF_DONE = struct.Struct("<IB")             # tag, 1 when the LUN existed
CONNECTION = struct.Struct("<HH")           # TSIH, CID: TERMINATE
# CLOSED: TSIH, CID, the connection's handoff serial (HANDOFF's "serial"): after a connection
# reinstatement the old and the new connection share TSIH and CID, and the old one's CLOSED
# may reach the owner after the new one was handed over
CLOSED = struct.Struct("<HHI")
QUESTION_TAG = struct.Struct("<I")          # a question (STATS_FLUSH, SESSIONS) and its answer


class Msg(enum.IntEnum):
    """Message types; 1-9 go from a worker to the owner, 10 and up the other way."""

    READY = 1           # the worker is up: {"index", "pid"}
    COMMAND = 2         # a SCSI command for the owner to run
    TMF = 3             # a task management function for the owner to apply; answered TMF_DONE
    CLOSED = 4          # a connection ended in the worker (logout, drop, NOP timeout)
    STATS_FLUSHED = 5   # the worker's staged statistics are in its slab (answers STATS_FLUSH)
    QOS_THROTTLED = 6   # a VM was held at its QoS limit in this worker: {"key"} (docs/qos.md)
    SESSION_TASKS = 7   # the worker's sessions' outstanding tasks (answers SESSIONS)
    HANDOFF = 10        # a logged-in connection (its socket attached) and its session
    RESULT = 11         # the end of a COMMAND
    TMF_DONE = 12       # the end of a TMF
    ABORT = 13          # abort the tasks of a target's sessions (another worker's reset)
    TERMINATE = 14      # close one connection (reinstatement, shutdown)
    LUNS = 15           # the LUNs of a target changed
    STOP = 16           # close every connection and exit
    CONFIG = 17         # the fabric settings changed: {"config", "max_pdu"} as in HANDOFF
    STORE = 18          # the fast path's shared memory and tier files (SCM_RIGHTS), once
    STATS_FLUSH = 19    # add the staged statistics into the slab now; answered STATS_FLUSHED
    QOS = 20            # the VMs' QoS and the VM of each LU: vmblock.qos.gate.QosGate.describe
    SESSIONS = 21       # how many tasks each session has outstanding; answered SESSION_TASKS


def frame(mtype: Msg, *parts) -> list:
    """The buffers of one frame: header, then ``parts`` (bytes-like), for a gather send."""
    return [HEADER.pack(sum(len(p) for p in parts), mtype), *parts]


def pack_json(obj) -> bytes:
    """A JSON payload."""
    return json.dumps(obj, separators=(",", ":")).encode()


def unpack_json(payload) -> dict:
    """The object of a JSON payload."""
    return json.loads(bytes(payload))


def pack_handoff(info: dict, pending: bytes) -> list:
    """HANDOFF payload parts: the JSON length, the JSON description of the connection and its
    session, then the bytes received past the login."""
    text = pack_json(info)
    return [struct.pack("<I", len(text)), text, pending]


def unpack_handoff(payload) -> tuple[dict, bytes]:
    """(description, bytes received past the login) of a HANDOFF payload."""
    (n,) = struct.unpack_from("<I", payload)
    return unpack_json(payload[4:4 + n]), bytes(payload[4 + n:])


def pack_command(tag: int, tsih: int, itt: int, lun: int, edtl: int, attr: int, flags: int,
                 cdb: bytes, data_out) -> list:
    """COMMAND payload parts (``data_out`` may be empty)."""
    return [COMMAND.pack(tag, tsih, itt, lun, edtl, attr, flags, len(cdb)), cdb, data_out]


def unpack_command(payload) -> tuple:
    """(tag, tsih, itt, lun, edtl, attr, flags, cdb, data_out) of a COMMAND payload; the
    Data-Out is a view into ``payload``."""
    tag, tsih, itt, lun, edtl, attr, flags, n = COMMAND.unpack_from(payload)
    off = COMMAND.size
    view = memoryview(payload)
    return tag, tsih, itt, lun, edtl, attr, flags, bytes(view[off:off + n]), view[off + n:]


def pack_result(tag: int, status: int, flags: int, xfer: int, sense: bytes | None,
                data_in, t_io: float = 0.0) -> list:
    """RESULT payload parts."""
    sense = sense or b""
    parts = [RESULT.pack(tag, status, flags, xfer, t_io, len(sense)), sense]
    if data_in is not None:
        parts.append(data_in)
    return parts


def unpack_result(payload) -> tuple:
    """(tag, status, flags, xfer, sense or None, data_in or None, t_io) of a RESULT
    payload."""
    tag, status, flags, xfer, t_io, n = RESULT.unpack_from(payload)
    off = RESULT.size
    view = memoryview(payload)
    sense = bytes(view[off:off + n]) if n else None
    data_in = view[off + n:] if flags & RESULT_DATA_IN else None
    return tag, status, flags, xfer, sense, data_in, t_io
