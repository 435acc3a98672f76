"""A BackingStore over one sparse file: the simplest store that is thin and durable.

Unwritten ranges are holes and read as zeros; UNMAP punches holes so space comes back; GET LBA
STATUS asks the file system where the holes are (SEEK_DATA / SEEK_HOLE) instead of keeping its
own map. Reads go straight into the caller's buffer with ``preadv`` so the payload is not copied.
The extent store of ``vmblock/store`` replaces this behind the same interface later.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os

from vmblock.errors import InvalidArgument, PoolError
from vmblock.store.backend import CAP_LBA_STATUS, CAP_UNMAP, CAP_WRITE_SAME, BackingStore

log = logging.getLogger(__name__)

# linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

_WRITE_SAME_CHUNK = 1 << 20   # bytes written per pwrite when replicating a block

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a byte range without changing the file size; the range then reads as zeros."""
    if _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class SparseFileStore(BackingStore):
    """One vdisk's blocks in one sparse file of exactly ``size_bytes``."""

    capabilities = frozenset({CAP_UNMAP, CAP_WRITE_SAME, CAP_LBA_STATUS})

    def __init__(self, path: str, size_bytes: int, block_size: int = 512):
        if block_size <= 0 or block_size & (block_size - 1):
            raise InvalidArgument(f"block size {block_size} is not a power of two")
        if size_bytes <= 0 or size_bytes % block_size:
            raise InvalidArgument(f"size {size_bytes} is not a positive multiple of {block_size}")
        self.path = path
        self.block_size = block_size
        # Cleared the first time the file system refuses PUNCH_HOLE; unmap then writes zeros.
        self.can_punch = True
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            current = os.fstat(self._fd).st_size
            if current > size_bytes:
                raise PoolError(f"{path} holds {current} bytes, more than the vdisk's {size_bytes}")
            if current < size_bytes:
                os.ftruncate(self._fd, size_bytes)
        except BaseException:
            os.close(self._fd)
            raise
        self._size = size_bytes

    @property
    def size_bytes(self) -> int:
        return self._size

    def read_into(self, offset: int, buf: memoryview) -> None:
        want = len(buf)
        done = 0
        while done < want:
            n = os.preadv(self._fd, [buf[done:]], offset + done)
            if n == 0:   # only if someone shrank the file behind our back
                buf[done:] = bytes(want - done)
                return
            done += n

    def write(self, offset: int, data: memoryview) -> None:
        want = len(data)
        done = 0
        while done < want:
            done += os.pwrite(self._fd, data[done:], offset + done)

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def unmap(self, offset: int, length: int) -> None:
        if self.can_punch:
            try:
                punch_hole(self._fd, offset, length)
                return
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self.can_punch = False
                log.warning("%s: file system cannot punch holes (%s); UNMAP writes zeros instead",
                            self.path, e.strerror)
        self.write_same(offset, length, memoryview(bytes(self.block_size)))

    def write_same(self, offset: int, length: int, block: memoryview) -> None:
        bs = len(block)
        pattern = memoryview(bytes(block) * max(1, min(length, _WRITE_SAME_CHUNK) // bs))
        end = offset + length
        while offset < end:
            n = min(len(pattern), end - offset)
            self.write(offset, pattern[:n])
            offset += n

    def lba_status(self, offset: int) -> tuple[bool, int]:
        try:
            data = os.lseek(self._fd, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:   # ENXIO: no data at or after offset
                raise
            data = self._size
        if data > offset:
            return False, min(data, self._size) - offset
        hole = os.lseek(self._fd, offset, os.SEEK_HOLE)
        return True, min(hole, self._size) - offset

    def resize(self, size_bytes: int) -> None:
        if size_bytes < self._size:
            raise InvalidArgument("a vdisk can only grow")
        if size_bytes % self.block_size:
            raise InvalidArgument(f"size {size_bytes} is not a multiple of {self.block_size}")
        os.ftruncate(self._fd, size_bytes)
        self._size = size_bytes

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
