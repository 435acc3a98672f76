"""EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18), and the Third-party Copy
VPD page (SPC-4 7.8.17): VMware VAAI's full copy (clone, Storage vMotion) and Windows' offload
of copies between LUNs of one target.

The copy manager is the logical unit the command is sent to. A parameter list names copy
targets with identification CSCD descriptors (E4h, an NAA designator of VPD page 83h) and
copies with block-to-block segment descriptors (02h). A CSCD descriptor resolves only to a LUN
of the target the I_T nexus is logged in to: a descriptor naming any other LU — another VM's
vdisk — is refused with COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE (LIO's CVE-2020-28374
came from resolving it over every LU of the host), and the copy targets' reservations apply
to the nexus as if it read and wrote them itself. Segments run in order, in the executor; a
store that offers ``Remappable`` copies by sharing whole allocation units within its pool
(``vmblock.store.remap``), anything else is copied with reads and writes. Like WRITE, the copy
is durable at the next SYNCHRONIZE CACHE, or before status on a write-through LU (WCE=0).

Copies complete before status, so RECEIVE COPY RESULTS' COPY STATUS reports a finished copy:
the results of an EXTENDED COPY whose LIST ID USAGE asked to hold them, per I_T nexus and list
identifier, until the nexus goes (``ScsiTarget.copy_results``).
"""

from __future__ import annotations

import asyncio
import struct
from enum import IntEnum
from typing import TYPE_CHECKING

from vmblock.scsi.constants import PERIPHERAL_DEVICE_TYPE_DISK, PrAccess
from vmblock.scsi.sense import ScsiError, SenseReason
from vmblock.scsi.task import Nexus, ScsiTask
from vmblock.store.backend import Remappable

if TYPE_CHECKING:
    from vmblock.scsi.lu import LogicalUnit
    from vmblock.scsi.target import ScsiTarget

# SPC-4 6.4.2 table 142: standard INQUIRY byte 5, 3PC: the LU is a copy manager (what ESXi's
# T10 VAAI plugin looks at before it offers full copy).
INQUIRY_3PC = 0x08
# SPC-4 6.4 / 6.18: the two opcodes and their service actions.
EXTENDED_COPY = 0x83
RECEIVE_COPY_RESULTS = 0x84


class ExtendedCopyAction(IntEnum):
    """EXTENDED COPY service actions (SPC-4 6.4)."""

    EXTENDED_COPY_LID1 = 0x00


class ReceiveCopyAction(IntEnum):
    """RECEIVE COPY RESULTS service actions (SPC-4 6.18)."""

    COPY_STATUS = 0x00
    OPERATING_PARAMETERS = 0x03


# SPC-4 6.4.3.1 table 18: parameter list header.
HEADER_LEN = 16
LIST_ID_USAGE_SHIFT = 3
LIST_ID_USAGE_MASK = 0x3
LIST_ID_USAGE_HOLD = 0b00          # hold the results for RECEIVE COPY RESULTS
LIST_ID_USAGE_DISCARD = 0b10       # list identifier in use, results not held
LIST_ID_USAGE_NONE = 0b11          # no list identifier (SNLID)
# SPC-4 6.4.5.1 / 6.4.5.8: CSCD descriptors.
CSCD_IDENTIFICATION = 0xE4
CSCD_DESCRIPTOR_LEN = 32
CSCD_DEVICE_TYPE_MASK = 0x1F
DESIGNATOR_OFFSET = 4
DESIGNATOR_MAX_LEN = 20
DESIGNATOR_TYPE_MASK = 0x0F
ASSOCIATION_SHIFT = 4
ASSOCIATION_MASK = 0x3
ASSOCIATION_LU = 0
DESIGNATOR_NAA = 0x3
BLOCK_LENGTH_OFFSET = 29            # DISK BLOCK LENGTH, 3 bytes (SBC device-type specific)
# SPC-4 6.4.6.5: block device to block device segment descriptor.
SEGMENT_BLOCK_TO_BLOCK = 0x02
SEGMENT_BLOCK_TO_BLOCK_LEN = 0x18   # DESCRIPTOR LENGTH: bytes after the first four
SEGMENT_HEADER_LEN = 4
SEGMENT_DC = 0x02
# SPC-4 6.18.3: COPY STATUS.
COPY_STATUS_LEN = 12
COPY_MANAGER_STATUS_GOOD = 0x01
TRANSFER_COUNT_UNITS_BYTES = 0x00   # transfer count in bytes (SPC-4 table 229)
TRANSFER_COUNT_UNITS_MIB = 0x02     # 2^20 bytes: what an up to 64 GiB copy fits in
# SPC-4 6.18.5: OPERATING PARAMETERS, and SPC-4 7.8.17: Third-party Copy VPD page.
OPERATING_PARAMETERS_LEN = 44
SNLID = 0x01
TPC_SUPPORTED_COMMANDS = 0x0001
TPC_PARAMETER_DATA = 0x0004
TPC_SUPPORTED_DESCRIPTORS = 0x0008

# The limits this copy manager reports (and enforces). ESXi's full copy sends one or a few
# 02h segments of at most its DataMover.MaxHWTransferSize (4 MiB by default, 16 MiB at most;
# up to 240 MiB with the array-reported values of an XCOPY claim rule): 256 MiB per segment
# and 64 segments cover every setting; LIO reports 256 MiB, 2 CSCD and 1 segment.
MAX_CSCD_DESCRIPTORS = 16
MAX_SEGMENT_DESCRIPTORS = 64
MAX_DESCRIPTOR_LIST_LENGTH = (MAX_CSCD_DESCRIPTORS * CSCD_DESCRIPTOR_LEN
                              + MAX_SEGMENT_DESCRIPTORS
                              * (SEGMENT_HEADER_LEN + SEGMENT_BLOCK_TO_BLOCK_LEN))
MAX_SEGMENT_LENGTH = 256 << 20
MAX_CONCURRENT_COPIES = 16          # reported; each copy completes before its status
# Held results per I_T nexus (the oldest go first): RECEIVE COPY RESULTS asks soon after.
MAX_HELD_RESULTS = 16
# log2 granularities: a segment is any whole number of blocks; nothing held or inline.
DATA_SEGMENT_GRANULARITY_LOG2 = 9
IMPLEMENTED_DESCRIPTORS = (SEGMENT_BLOCK_TO_BLOCK, CSCD_IDENTIFICATION)


class Segment:
    """One block-to-block segment: source and destination LU, byte offsets and length."""

    __slots__ = ("src", "dst", "src_offset", "dst_offset", "length")

    def __init__(self, src: LogicalUnit, dst: LogicalUnit, src_offset: int, dst_offset: int,
                 length: int):
        self.src, self.dst = src, dst
        self.src_offset, self.dst_offset, self.length = src_offset, dst_offset, length


def _param_error(offset: int, bit: int | None = None) -> ScsiError:
    return ScsiError(SenseReason.INVALID_FIELD_IN_PARAMETER_LIST, field=(offset, bit),
                     in_cdb=False)


def _resolve(t: ScsiTarget, desc: bytes, at: int) -> LogicalUnit | None:
    """The LU of this target that an identification CSCD descriptor names, None when none
    (another target's LU, an unknown designator) or when it is not a direct-access device."""
    if desc[1] & CSCD_DEVICE_TYPE_MASK != PERIPHERAL_DEVICE_TYPE_DISK:
        return None
    d = desc[DESIGNATOR_OFFSET:DESIGNATOR_OFFSET + 4 + DESIGNATOR_MAX_LEN]
    assoc = (d[1] >> ASSOCIATION_SHIFT) & ASSOCIATION_MASK
    n = d[3]
    if assoc != ASSOCIATION_LU or d[1] & DESIGNATOR_TYPE_MASK != DESIGNATOR_NAA \
            or n not in (8, 16):
        return None
    naa = int.from_bytes(d[4:4 + n], "big")
    for lu in t.luns.values():
        if lu.naa == naa:
            block_length = int.from_bytes(desc[BLOCK_LENGTH_OFFSET:BLOCK_LENGTH_OFFSET + 3],
                                          "big")
            if block_length != lu.block_size:
                raise _param_error(at + BLOCK_LENGTH_OFFSET)
            return lu
    return None


def parse(t: ScsiTarget, nexus: Nexus, param: bytes) -> tuple[int, int, list[Segment]]:
    """(list identifier, list id usage, segments) of an EXTENDED COPY(LID1) parameter list,
    every check of SPC-4 6.4.3 made before anything is copied; the copy targets' reservations
    apply to ``nexus`` as if it read the source and wrote the destination itself."""
    if len(param) < HEADER_LEN:
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    list_id, flags, cscd_len, seg_len, inline_len = struct.unpack_from(">BBH4xII", param)
    usage = (flags >> LIST_ID_USAGE_SHIFT) & LIST_ID_USAGE_MASK
    if usage not in (LIST_ID_USAGE_HOLD, LIST_ID_USAGE_DISCARD, LIST_ID_USAGE_NONE) \
            or (usage == LIST_ID_USAGE_NONE and list_id):
        raise _param_error(1, LIST_ID_USAGE_SHIFT + 1)
    if HEADER_LEN + cscd_len + seg_len + inline_len > len(param):
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    if cscd_len + seg_len > MAX_DESCRIPTOR_LIST_LENGTH:
        raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
    if inline_len:
        raise _param_error(12)      # MAXIMUM INLINE DATA LENGTH is 0
    if cscd_len % CSCD_DESCRIPTOR_LEN:
        raise _param_error(2)
    targets = []
    for at in range(HEADER_LEN, HEADER_LEN + cscd_len, CSCD_DESCRIPTOR_LEN):
        desc = param[at:at + CSCD_DESCRIPTOR_LEN]
        if desc[0] != CSCD_IDENTIFICATION:
            raise ScsiError(SenseReason.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE)
        if len(targets) == MAX_CSCD_DESCRIPTORS:
            raise ScsiError(SenseReason.TOO_MANY_TARGET_DESCRIPTORS)
        targets.append(_resolve(t, desc, at))
    segments = []
    at, end = HEADER_LEN + cscd_len, HEADER_LEN + cscd_len + seg_len
    while at < end:
        if at + SEGMENT_HEADER_LEN > end:
            raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
        kind, dc, length = struct.unpack_from(">BBH", param, at)
        if kind != SEGMENT_BLOCK_TO_BLOCK:
            raise ScsiError(SenseReason.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE)
        if length != SEGMENT_BLOCK_TO_BLOCK_LEN:
            raise _param_error(at + 2)
        if at + SEGMENT_HEADER_LEN + length > end:
            raise ScsiError(SenseReason.PARAMETER_LIST_LENGTH_ERROR)
        if len(segments) == MAX_SEGMENT_DESCRIPTORS:
            raise ScsiError(SenseReason.TOO_MANY_SEGMENT_DESCRIPTORS)
        seg = _segment(targets, param, at, dc & SEGMENT_DC)
        for lu, access in ((seg.src, PrAccess.READ), (seg.dst, PrAccess.WRITE)):
            if lu.reservations.active:
                lu.reservations.check(nexus, access, False)
        segments.append(seg)
        at += SEGMENT_HEADER_LEN + length
    return list_id, usage, segments


def _segment(targets: list, param: bytes, at: int, dc: int) -> Segment:
    """One 02h segment descriptor checked against its CSCDs and their capacities."""
    src_i, dst_i, blocks, src_lba, dst_lba = struct.unpack_from(">HH2xHQQ", param, at + 4)
    if src_i >= len(targets) or dst_i >= len(targets):
        raise ScsiError(SenseReason.UNREACHABLE_COPY_TARGET)
    src, dst = targets[src_i], targets[dst_i]
    if src is None or dst is None or any(lu.gated and (not lu.medium_present or
                                                       lu.sanitize_progress is not None)
                                         for lu in (src, dst)):
        raise ScsiError(SenseReason.COPY_TARGET_DEVICE_NOT_REACHABLE)   # ejected, sanitizing
    if dst.write_protected:     # a read-only LU (or SWP) is never a copy's destination
        raise ScsiError(SenseReason.WRITE_PROTECTED)
    nbytes = blocks * (dst.block_size if dc else src.block_size)
    if nbytes % src.block_size or nbytes % dst.block_size:
        raise _param_error(at + 10)
    if nbytes > MAX_SEGMENT_LENGTH:
        raise _param_error(at + 10)
    if src_lba * src.block_size + nbytes > src.num_blocks * src.block_size \
            or dst_lba * dst.block_size + nbytes > dst.num_blocks * dst.block_size:
        raise ScsiError(SenseReason.COPY_ABORTED_LBA_OUT_OF_RANGE)
    return Segment(src, dst, src_lba * src.block_size, dst_lba * dst.block_size, nbytes)


def _copy(segments: list[Segment]) -> int:
    """Run the segments in order (blocking: in the executor); returns the bytes copied."""
    done = 0
    for seg in segments:
        src, dst = seg.src.store, seg.dst.store
        if not (Remappable in dst.abilities
                and dst.remap_from(src, seg.src_offset, seg.dst_offset, seg.length)):
            _copy_data(src, dst, seg)
        done += seg.length
    return done


def _copy_data(src, dst, seg: Segment) -> None:
    """A segment copied with reads and writes (stores of different pools or kinds); inside
    one store an overlapping range is copied as if read whole first (a memmove)."""
    buf = memoryview(bytearray(min(seg.dst.max_transfer_blocks * seg.dst.block_size,
                                   seg.length)))
    starts = list(range(0, seg.length, len(buf)))
    if src is dst and seg.src_offset < seg.dst_offset < seg.src_offset + seg.length:
        starts.reverse()        # the destination starts inside the source: from the end
    for done in starts:
        k = min(len(buf), seg.length - done)
        src.read_into(seg.src_offset + done, buf[:k])
        dst.write(seg.dst_offset + done, buf[:k])


def extended_copy(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks, options):
    """EXTENDED COPY(LID1): parse and check the whole list, then copy in the executor."""
    param = bytes(task.data_out) if task.data_out is not None else b""
    if not param:
        return None          # SPC-4 6.4.1: a PARAMETER LIST LENGTH of 0 is not an error
    list_id, usage, segments = parse(t, task.nexus, param)
    return _run_copy(t, lu, task, list_id, usage, segments)


async def _run_copy(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, list_id: int, usage: int,
                    segments: list[Segment]) -> None:
    loop = asyncio.get_running_loop()
    dsts = list({id(s.dst): s.dst for s in segments}.values())
    fut = loop.run_in_executor(lu.executor, _copy, segments)
    for d in dsts:
        d.pending_writes.add(fut)
    try:
        copied = await fut
    finally:
        for d in dsts:
            d.pending_writes.discard(fut)
    for d in dsts:
        if not d.write_cache:
            await loop.run_in_executor(lu.executor, d.store.flush)
    if usage == LIST_ID_USAGE_HOLD:
        held = t.copy_results.setdefault(task.nexus, {})
        held.pop(list_id, None)
        held[list_id] = (len(segments), copied)
        while len(held) > MAX_HELD_RESULTS:
            del held[next(iter(held))]


def _truncate(task: ScsiTask, data: bytes) -> None:
    task.data_in = data[:task.cdb_xfer_len]


def copy_status(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks, options) -> None:
    """RECEIVE COPY RESULTS / COPY STATUS (SPC-4 6.18.3) of a held list identifier."""
    held = t.copy_results.get(task.nexus, {}).get(task.cdb[2])
    if held is None:
        raise ScsiError(SenseReason.INVALID_FIELD_IN_CDB, field=(2, None))
    segments, copied = held
    units, count = TRANSFER_COUNT_UNITS_BYTES, copied
    if count > 0xFFFFFFFF:
        units, count = TRANSFER_COUNT_UNITS_MIB, copied >> 20
    _truncate(task, struct.pack(">IBHBI", COPY_STATUS_LEN - 4, COPY_MANAGER_STATUS_GOOD,
                                segments, units, count))


def operating_parameters(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask, lba, blocks,
                         options) -> None:
    """RECEIVE COPY RESULTS / OPERATING PARAMETERS (SPC-4 6.18.5): the copy manager's limits."""
    body = struct.pack(">IB3xHHIIII4x2xHBBBB3xB", OPERATING_PARAMETERS_LEN
                       + len(IMPLEMENTED_DESCRIPTORS) - 4, SNLID,
                       MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_DESCRIPTORS,
                       MAX_DESCRIPTOR_LIST_LENGTH, MAX_SEGMENT_LENGTH, 0, 0,
                       MAX_CONCURRENT_COPIES, MAX_CONCURRENT_COPIES,
                       DATA_SEGMENT_GRANULARITY_LOG2, 0, 0, len(IMPLEMENTED_DESCRIPTORS))
    _truncate(task, body + bytes(IMPLEMENTED_DESCRIPTORS))


def _tpc_descriptor(kind: int, body: bytes) -> bytes:
    body += bytes(-(len(body) + 4) % 4)
    return struct.pack(">HH", kind, len(body)) + body


def vpd_third_party_copy(t: ScsiTarget, lu: LogicalUnit, task: ScsiTask) -> bytes:
    """VPD page 8Fh (SPC-4 7.8.17): Supported Commands, Parameter Data and Supported
    Descriptors third-party copy descriptors for EXTENDED COPY(LID1)."""
    commands = [(EXTENDED_COPY, list(ExtendedCopyAction)),
                (RECEIVE_COPY_RESULTS, list(ReceiveCopyAction))]
    listed = b"".join(bytes([op, len(sas), *sas]) for op, sas in commands)
    return b"".join((
        _tpc_descriptor(TPC_SUPPORTED_COMMANDS, bytes([len(listed)]) + listed),
        _tpc_descriptor(TPC_PARAMETER_DATA, struct.pack(
            ">2xHHII14x", MAX_CSCD_DESCRIPTORS, MAX_SEGMENT_DESCRIPTORS,
            MAX_DESCRIPTOR_LIST_LENGTH, 0)),
        _tpc_descriptor(TPC_SUPPORTED_DESCRIPTORS,
                        bytes([len(IMPLEMENTED_DESCRIPTORS), *IMPLEMENTED_DESCRIPTORS])),
    ))
