"""The medium's state and the commands about it: read-only LUNs and SWP, removable LUNs
(PREVENT ALLOW MEDIUM REMOVAL, START STOP UNIT LOEJ), the physical block exponent and 4Kn,
WRITE ATOMIC(16), SANITIZE with its in-progress sense, ALUA (TPGS, REPORT TARGET PORT GROUPS)."""

from __future__ import annotations

import asyncio
import struct
import threading

import pytest
from support.scsi_rig import BLOCK, BLOCKS, MemoryStore, Rig, read10, sense_of, write10

from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.task import SAM_STAT_GOOD, ScsiTask

NOT_READY, ILLEGAL, UNIT_ATTENTION, DATA_PROTECT = 0x02, 0x05, 0x06, 0x07
WRITE_PROTECTED = (DATA_PROTECT, 0x27, 0x00)
MEDIUM_NOT_PRESENT = (NOT_READY, 0x3A, 0x00)
REMOVAL_PREVENTED = (ILLEGAL, 0x53, 0x02)
TUR = bytes(6)


def rig_with(store: MemoryStore | None = None, **lu_args) -> Rig:
    """A ``Rig`` whose LU 0 is replaced by one built with ``lu_args``."""
    rig = Rig(store or MemoryStore())
    rig.target.remove_lun(0)
    rig.lu = LogicalUnit(rig.store, name="demo", serial="0123456789abcdef",
                         naa=0x6001405A0B1C2D3E, **lu_args)
    rig.target.add_lun(0, rig.lu)
    for nexus in (rig.a, rig.b):
        rig.lu.ua.pop(nexus, None)
    return rig


def start_stop(start: bool, loej: bool = True, immed: bool = False) -> bytes:
    return bytes([0x1B, 1 if immed else 0, 0, 0, (2 if loej else 0) | (1 if start else 0), 0])


def prevent(on: bool) -> bytes:
    return bytes([0x1E, 0, 0, 0, 1 if on else 0, 0])


def mode_sense6_dsp(rig: Rig) -> int:
    return bytes(rig.run(bytes([0x1A, 0x08, 0x3F, 0, 255, 0])).data_in)[2]


# -- read-only LUNs and SWP
def test_read_only_lu_refuses_every_medium_write_and_shows_wp():
    rig = rig_with(read_only=True)
    block = bytes(BLOCK)
    assert sense_of(rig.run(write10(0, 1), block)) == WRITE_PROTECTED
    unmap = struct.pack(">HH4xQI4x", 22, 16, 0, 8)
    assert sense_of(rig.run(bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]), unmap)) == WRITE_PROTECTED
    ws = struct.pack(">BBIxHx", 0x41, 0x08, 0, 1)
    assert sense_of(rig.run(ws, block)) == WRITE_PROTECTED
    assert rig.run(read10(0, 1)).status == SAM_STAT_GOOD
    assert mode_sense6_dsp(rig) & 0x80
    assert rig.store.writes == 0


def test_swp_in_the_control_page_write_protects_until_cleared(rig):
    control = bytes(rig.run(bytes([0x1A, 0x08, 0x0A, 0, 255, 0])).data_in)[4:]
    page = bytearray(control)
    page[4] |= 0x08
    rig.run(bytes([0x15, 0x10, 0, 0, 4 + len(page), 0]), bytes(4) + bytes(page))
    assert mode_sense6_dsp(rig) & 0x80
    assert sense_of(rig.run(write10(0, 1), bytes(BLOCK))) == WRITE_PROTECTED
    # the other nexus is told the mode parameters changed
    assert sense_of(rig.run(TUR, nexus=rig.b)) == (UNIT_ATTENTION, 0x2A, 0x01)
    page[4] &= ~0x08
    rig.run(bytes([0x15, 0x10, 0, 0, 4 + len(page), 0]), bytes(4) + bytes(page))
    assert rig.run(write10(0, 1), bytes(BLOCK)).status == SAM_STAT_GOOD


# -- removable LUNs
def test_removable_lu_reports_rmb_and_ejects_and_loads():
    rig = rig_with(removable=True)
    assert bytes(rig.run(bytes([0x12, 0, 0, 0, 96, 0])).data_in)[1] & 0x80
    assert rig.run(start_stop(start=False)).status == SAM_STAT_GOOD
    assert sense_of(rig.run(TUR)) == MEDIUM_NOT_PRESENT
    assert sense_of(rig.run(read10(0, 1))) == MEDIUM_NOT_PRESENT
    assert bytes(rig.run(bytes([0x03, 0, 0, 0, 18, 0])).data_in)[12] == 0x3A
    assert rig.run(start_stop(start=True)).status == SAM_STAT_GOOD
    assert rig.run(TUR).status == SAM_STAT_GOOD
    # the other nexus learns the medium may have changed
    assert sense_of(rig.run(TUR, nexus=rig.b)) == (UNIT_ATTENTION, 0x28, 0x00)


def test_prevent_from_one_nexus_stops_eject_from_every_nexus_until_it_goes_away():
    rig = rig_with(removable=True)
    assert rig.run(prevent(True)).status == SAM_STAT_GOOD
    assert sense_of(rig.run(start_stop(start=False))) == REMOVAL_PREVENTED
    assert sense_of(rig.run(start_stop(start=False), nexus=rig.b)) == REMOVAL_PREVENTED
    assert rig.run(TUR).status == SAM_STAT_GOOD
    rig.target.nexus_removed(rig.a)
    assert rig.run(start_stop(start=False), nexus=rig.b).status == SAM_STAT_GOOD


def test_lun_reset_allows_removal_again():
    rig = rig_with(removable=True)
    rig.run(prevent(True))
    rig.target.task_management("LUN_RESET", rig.a, 0)
    rig.lu.ua.clear()
    assert rig.run(start_stop(start=False)).status == SAM_STAT_GOOD


def test_fixed_lu_ignores_loej_and_prevent(rig):
    assert rig.run(prevent(True)).status == SAM_STAT_GOOD
    assert rig.run(start_stop(start=False)).status == SAM_STAT_GOOD
    assert rig.run(TUR).status == SAM_STAT_GOOD


# -- physical block exponent, 4Kn
def read_capacity16(rig: Rig) -> bytes:
    return bytes(rig.run(struct.pack(">BBQIxx", 0x9E, 0x10, 0, 32)).data_in)


def block_limits(rig: Rig) -> bytes:
    return bytes(rig.run(bytes([0x12, 1, 0xB0, 0, 255, 0])).data_in)


@pytest.mark.parametrize("bs, exponent", [(512, 3), (4096, 0)])
def test_physical_block_is_4k_and_block_limits_agree(bs, exponent):
    rig = rig_with(MemoryStore(blocks=BLOCKS * BLOCK // bs, block_size=bs))
    rc = read_capacity16(rig)
    assert struct.unpack_from(">I", rc, 8)[0] == bs
    assert rc[13] & 0x0F == exponent
    assert struct.unpack_from(">H", rc, 14)[0] & 0x3FFF == 0      # LOWEST ALIGNED LBA
    bl = block_limits(rig)
    assert struct.unpack_from(">H", bl, 6)[0] == 1 << exponent    # OPTIMAL GRANULARITY
    max_xfer = struct.unpack_from(">I", bl, 8)[0]
    assert max_xfer * bs == 8 * 1024 * 1024
    max_atomic = struct.unpack_from(">I", bl, 44)[0]
    assert 256 <= max_atomic <= max_xfer
    assert struct.unpack_from(">IIII", bl, 48) == (0, 0, 0, 0)


def test_512n_lu_reports_512_byte_physical_blocks():
    rig = rig_with(physical_block_size=512)
    assert read_capacity16(rig)[13] & 0x0F == 0
    assert struct.unpack_from(">H", block_limits(rig), 6)[0] == 1


def test_4kn_lu_reads_and_writes_4k_blocks():
    rig = rig_with(MemoryStore(blocks=512, block_size=4096))
    data = bytes(range(256)) * 32
    assert rig.run(write10(3, 2), data).status == SAM_STAT_GOOD
    assert bytes(rig.run(read10(3, 2)).data_in) == data
    assert rig.store.data[3 * 4096:5 * 4096] == data


# -- WRITE ATOMIC(16)
def write_atomic16(lba: int, blocks: int, boundary: int = 0, flags: int = 0) -> bytes:
    return struct.pack(">BBQHHxx", 0x9C, flags, lba, boundary, blocks)


def test_write_atomic_writes_all_blocks_in_one_store_write(rig):
    data = b"\xa6" * (8 * BLOCK)
    writes = rig.store.writes
    assert rig.run(write_atomic16(10, 8), data).status == SAM_STAT_GOOD
    assert rig.store.writes == writes + 1
    assert bytes(rig.store.data[10 * BLOCK:18 * BLOCK]) == data


def test_write_atomic_refuses_boundary_length_and_a_short_transfer(rig):
    assert sense_of(rig.run(write_atomic16(0, 1, boundary=1), bytes(BLOCK)))[:2] == (ILLEGAL,
                                                                                     0x24)
    too_many = rig.lu.max_atomic_blocks + 1
    assert sense_of(rig.run(write_atomic16(0, too_many), bytes(too_many * BLOCK)))[:2] == \
        (ILLEGAL, 0x24)
    assert rig.run(write_atomic16(0, 2), bytes(BLOCK)).status != SAM_STAT_GOOD
    assert sense_of(rig.run(write_atomic16(BLOCKS - 1, 2), bytes(2 * BLOCK)))[:2] == \
        (ILLEGAL, 0x21)


# -- SANITIZE
def sanitize(action: int, param_len: int = 0, immed: bool = False) -> bytes:
    return struct.pack(">BB5xHx", 0x48, (0x80 if immed else 0) | action, param_len)


async def run_on_loop(rig: Rig, cdb: bytes, data: bytes | None = None, nexus=None) -> ScsiTask:
    """``rig.run`` with the command started on a running loop, as the fabric starts it."""
    cdb = cdb.ljust(16, b"\0")
    task = ScsiTask(lun=0, cdb=cdb, nexus=nexus or rig.a,
                    edtl=len(data) if data is not None else 0x10000,
                    read=data is None, write=data is not None)
    if rig.target.prepare(task):
        if task.data_out_len:
            task.data_out = memoryview(data)[:task.data_out_len]
        result = rig.target.execute(task)
        if result is not None:
            await result
    return task


def overwrite_param(pattern: bytes, count: int = 1, invert: bool = False) -> bytes:
    return bytes([(0x80 if invert else 0) | count, 0]) + struct.pack(">H", len(pattern)) + pattern


def test_sanitize_overwrite_fills_the_lu_with_the_pattern(rig):
    rig.run(write10(0, 1), b"x" * BLOCK)
    param = overwrite_param(b"\x5a\xa5\x01\x02")
    task = asyncio.run(run_on_loop(rig, sanitize(0x01, len(param)), param))
    assert task.status == SAM_STAT_GOOD
    assert rig.store.data == b"\x5a\xa5\x01\x02" * (BLOCKS * BLOCK // 4)


@pytest.mark.parametrize("param_len, param", [
    (4, overwrite_param(b"")),                              # no pattern
    (BLOCK + 5, overwrite_param(bytes(BLOCK + 1))),         # pattern longer than a block
])
def test_sanitize_overwrite_refuses_bad_lengths(rig, param_len, param):
    task = asyncio.run(run_on_loop(rig, sanitize(0x01, param_len), param))
    assert sense_of(task)[:2] in ((ILLEGAL, 0x24), (ILLEGAL, 0x26))


def test_sanitize_overwrite_count_zero_is_refused(rig):
    param = overwrite_param(bytes(BLOCK), count=0)
    task = asyncio.run(run_on_loop(rig, sanitize(0x01, len(param)), param))
    assert sense_of(task) == (ILLEGAL, 0x26, 0x00)


def test_sanitize_block_erase_unmaps_everything(rig):
    rig.run(write10(0, 4), b"y" * 4 * BLOCK)
    task = asyncio.run(run_on_loop(rig, sanitize(0x02)))
    assert task.status == SAM_STAT_GOOD
    assert not any(rig.store.data) and not any(rig.store.mapped)
    # WABEREQ 01b: reads after a BLOCK ERASE succeed
    assert bytes(rig.run(bytes([0x12, 1, 0xB1, 0, 64, 0])).data_in)[7] >> 6 == 1


def test_sanitize_crypto_erase_is_refused_and_not_reported(rig):
    task = asyncio.run(run_on_loop(rig, sanitize(0x03)))
    assert sense_of(task) == (ILLEGAL, 0x24, 0x00)
    one = struct.pack(">BBBBI2x", 0xA3, 0x0C, 0x02, 0x48, 0x30000)   # RSOC: SANITIZE/03h
    one = one[:4] + struct.pack(">H", 0x03) + struct.pack(">I", 64) + b"\0\0"
    assert bytes(rig.run(one).data_in)[1] & 0x07 == 0x01              # not supported


def test_sanitize_reserved_bits_are_refused(rig):
    cdb = bytearray(sanitize(0x02))
    cdb[3] = 1
    assert sense_of(asyncio.run(run_on_loop(rig, bytes(cdb)))) == (ILLEGAL, 0x24, 0x00)


class GatedStore(MemoryStore):
    """A store whose ``unmap`` waits for ``go``: the SANITIZE is certainly in progress while
    the test looks."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()
        self.go = threading.Event()

    def unmap(self, offset: int, length: int) -> None:
        self.started.set()
        self.go.wait()
        super().unmap(offset, length)


def test_sanitize_in_progress_refuses_all_but_inquiry_report_luns_request_sense():
    rig = rig_with(GatedStore())

    async def scenario():
        assert (await run_on_loop(rig, sanitize(0x02, immed=True))).status == SAM_STAT_GOOD
        await asyncio.get_running_loop().run_in_executor(None, rig.store.started.wait)
        in_progress = {}
        for name, cdb in (("tur", TUR), ("read", read10(0, 1)),
                          ("start_stop", start_stop(start=True, loej=False))):
            in_progress[name] = sense_of(await run_on_loop(rig, cdb, nexus=rig.b))
        inquiry = await run_on_loop(rig, bytes([0x12, 0, 0, 0, 96, 0]), nexus=rig.b)
        sense = bytes((await run_on_loop(rig, bytes([0x03, 0, 0, 0, 18, 0]))).data_in)
        rig.store.go.set()
        while rig.lu.sanitize_progress is not None:
            await asyncio.sleep(0)
        after = await run_on_loop(rig, TUR)
        return in_progress, inquiry, sense, after

    in_progress, inquiry, sense, after = asyncio.run(scenario())
    assert set(in_progress.values()) == {(NOT_READY, 0x04, 0x1B)}
    assert inquiry.status == SAM_STAT_GOOD
    assert (sense[2] & 0x0F, sense[12], sense[13]) == (NOT_READY, 0x04, 0x1B)
    assert sense[15] & 0x80                          # SKSV: a PROGRESS INDICATION follows
    assert after.status == SAM_STAT_GOOD


def test_read_only_lu_refuses_sanitize(rig):
    rig.lu.read_only = True
    rig.lu.state_changed()
    assert sense_of(asyncio.run(run_on_loop(rig, sanitize(0x02)))) == WRITE_PROTECTED


# -- ALUA
def test_inquiry_says_implicit_alua(rig):
    assert bytes(rig.run(bytes([0x12, 0, 0, 0, 96, 0])).data_in)[5] & 0x30 == 0x10


@pytest.mark.parametrize("extended", [False, True])
def test_report_target_port_groups_one_active_optimized_group(rig, extended):
    cdb = struct.pack(">BBxxxxIxx", 0xA3, 0x0A | (0x20 if extended else 0), 255)
    data = bytes(rig.run(cdb).data_in)
    length = struct.unpack_from(">I", data)[0]
    start = 8 if extended else 4
    assert length == len(data) - 4
    desc = data[start:]
    assert desc[0] & 0x0F == 0                         # active/optimized
    assert desc[1] & 0x01                              # AO_SUP
    assert struct.unpack_from(">H", desc, 2)[0] == 1   # the TPGT
    assert desc[7] == 1 and struct.unpack_from(">H", desc, 10)[0] == 1
