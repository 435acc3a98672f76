"""A real in-memory backing store and a rig that drives ScsiTarget.prepare/execute."""

from __future__ import annotations

import asyncio
import struct

from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.target import ScsiTarget
from vmblock.scsi.task import Nexus, ScsiTask
from vmblock.store.backend import BackingStore, LbaStatus, Unmappable, WriteSameable

BLOCK = 512
BLOCKS = 4096
TARGET = "iqn.2026-11.io.vmblock:test"


class MemoryStore(BackingStore):
    """A bytearray with a per-block allocation map, so unmap and lba_status are real.

    It has the methods of every ability; ``abilities`` says which of them the LU may use."""

    def __init__(self, blocks: int = BLOCKS, block_size: int = BLOCK,
                 abilities: frozenset[type] = frozenset({Unmappable, WriteSameable, LbaStatus})):
        self.block_size = block_size
        self.abilities = abilities
        self.data = bytearray(blocks * block_size)
        self.mapped = bytearray(blocks)
        self.flushes = 0
        self.writes = 0

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    def read_into(self, offset: int, buf: memoryview) -> None:
        buf[:] = self.data[offset:offset + len(buf)]

    def write(self, offset: int, data: memoryview) -> None:
        self.writes += 1
        self.data[offset:offset + len(data)] = data
        bs = self.block_size
        self.mapped[offset // bs:(offset + len(data)) // bs] = b"\1" * (len(data) // bs)

    def flush(self) -> None:
        self.flushes += 1

    def unmap(self, offset: int, length: int) -> None:
        self.data[offset:offset + length] = bytes(length)
        bs = self.block_size
        self.mapped[offset // bs:(offset + length) // bs] = bytes(length // bs)

    def write_same(self, offset: int, length: int, block: memoryview) -> None:
        self.write(offset, memoryview(bytes(block) * (length // len(block))))

    def lba_status(self, offset: int) -> tuple[bool, int]:
        bs = self.block_size
        first = offset // bs
        state = self.mapped[first]
        end = first
        while end < len(self.mapped) and self.mapped[end] == state:
            end += 1
        return bool(state), (end - first) * bs


class Rig:
    """A target with LUN 0 and two logged-in nexuses; ``run`` drives one command."""

    def __init__(self, store: MemoryStore, write_cache: bool = True):
        self.store = store
        self.target = ScsiTarget(TARGET, tpgt=1)
        self.lu = LogicalUnit(store, name="demo", serial="0123456789abcdef",
                              naa=0x6001405A0B1C2D3E, write_cache=write_cache)
        self.target.add_lun(0, self.lu)
        self.a = Nexus("iqn.2026-11.test:a", 0x23D000000001, TARGET, 1)
        self.b = Nexus("iqn.2026-11.test:b", 0x23D000000002, TARGET, 1)
        for nexus in (self.a, self.b):
            self.target.nexus_added(nexus)
            self.lu.ua.pop(nexus, None)     # the power-on UA, as the initiator's TUR would

    def run(self, cdb: bytes, data: bytes | None = None, nexus: Nexus | None = None,
            lun: int = 0, edtl: int | None = None) -> ScsiTask:
        cdb = bytes(cdb).ljust(16, b"\0") if len(cdb) < 16 else bytes(cdb)
        if edtl is None:
            edtl = len(data) if data is not None else 0x10000
        task = ScsiTask(lun=lun, cdb=cdb, nexus=nexus or self.a, edtl=edtl,
                        read=data is None, write=data is not None)
        if not self.target.prepare(task):
            return task
        if task.data_out_len:
            assert data is not None
            task.data_out = memoryview(data)[:task.data_out_len]
        result = self.target.execute(task)
        if result is not None:
            asyncio.run(result)
        return task




def sense_of(task: ScsiTask) -> tuple[int, int, int]:
    """(sense key, ASC, ASCQ) of a CHECK CONDITION."""
    assert task.sense is not None, f"status {task.status:#x} has no sense"
    return task.sense[2] & 0x0F, task.sense[12], task.sense[13]


def read10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIxHx", 0x28, flags, lba, blocks)


def write10(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBIxHx", 0x2A, flags, lba, blocks)


def read16(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIxx", 0x88, flags, lba, blocks)


def write16(lba: int, blocks: int, flags: int = 0) -> bytes:
    return struct.pack(">BBQIxx", 0x8A, flags, lba, blocks)
