"""The narrow interface between the SCSI core and whatever stores a LUN's blocks.

Like tgt's backing-store vtable or LIO's ``struct sbc_ops``: a store declares what it can do in
``capabilities`` and the SCSI core derives its command table, VPD B0/B2 and REPORT SUPPORTED
OPERATION CODES from that one set. Offsets and lengths are in bytes and always multiples of
``block_size``; range checks are the SCSI core's job, not the store's.
"""

from __future__ import annotations

import errno

CAP_UNMAP = "unmap"            # unmap(): deallocate, later reads return zeros
CAP_WRITE_SAME = "write_same"  # write_same(): replicate one block over a range
CAP_LBA_STATUS = "lba_status"  # lba_status(): report mapped / deallocated extents


class SpaceExhausted(OSError):
    """A write needed space the store does not have. The SCSI core answers DATA PROTECT,
    SPACE ALLOCATION FAILED WRITE PROTECT (27h/07h); nothing already written is affected.
    It is an ``OSError`` with ENOSPC, like a full host file system under a file tier."""

    def __init__(self, message: str = "no space left in the pool"):
        super().__init__(errno.ENOSPC, message)


class WriteRefused(OSError):
    """The store refuses a write it could not make durable now (a failed commit not yet
    recovered from); it logged the fault once, so the SCSI core answers without logging."""


class BackingStore:
    """Base class: subclasses override the operations they list in ``capabilities``."""

    block_size: int = 512
    capabilities: frozenset[str] = frozenset()
    # Bytes an UNMAP must cover, aligned, to deallocate anything (VPD B0 OPTIMAL UNMAP
    # GRANULARITY); 0 = the LU's optimal transfer granularity.
    unmap_granularity: int = 0

    @property
    def size_bytes(self) -> int:
        raise NotImplementedError

    def read_into(self, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` with the bytes at ``offset``; unwritten ranges read as zeros."""
        raise NotImplementedError

    def write(self, offset: int, data: memoryview) -> None:
        """Store ``data`` at ``offset``; durable only after ``flush``."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make every completed write durable (fdatasync). Blocking: call it off the event loop."""
        raise NotImplementedError

    def unmap(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def write_same(self, offset: int, length: int, block: memoryview) -> None:
        raise NotImplementedError

    def lba_status(self, offset: int) -> tuple[bool, int]:
        """(mapped, length in bytes) of the run of like blocks starting at ``offset``."""
        raise NotImplementedError

    def resize(self, size_bytes: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release file descriptors; the store is unusable afterwards."""
