"""Arrays in shared memory that another process can attach later without copying.

Each ``SharedArray`` is a memfd (``os.memfd_create``) mapped ``MAP_SHARED`` over its whole
reserved length at once, so the mapping never moves; the memfd itself is grown on demand
(``ensure``, before anything past its end is touched), so the file stays as large as what is
used (``ulimit -f`` and the memory it may cost). Pages cost memory only once touched. A
process given the fd (inherited, or sent over a unix socket with ``SCM_RIGHTS``) maps the same
pages with ``SharedArray.attach``. The extent store keeps its leaf arena, its L1 arena and its
reference counts in them, so worker processes can look maps and reference counts up
read-only. (Python's ``mmap`` refuses a mapping longer than the file; the mapping is made
with libc's ``mmap`` through ctypes and unmapped when the last view of it is gone.)
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import weakref

import numpy as np

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int
_mmap = _libc.mmap
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long)
_mmap.restype = ctypes.c_void_p
_munmap = _libc.munmap
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_munmap.restype = ctypes.c_int
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
MAP_NORESERVE = 0x4000          # Linux: no swap reserved for the mapping
MAP_FAILED = ctypes.c_void_p(-1).value
# the memfd grows in steps of at least this many bytes
GROW_BYTES = 16 << 20


class SharedArray:
    """A 1-d numpy array of ``items`` ``dtype`` in a memfd mapped shared; ``array`` is the
    view (only its first ``size`` bytes are backed: ``ensure`` before touching more), ``fd``
    the memfd (kept open for the array's life, for other processes)."""

    def __init__(self, name: str, dtype, items: int, fd: int | None = None,
                 writable: bool = True):
        self.dtype = np.dtype(dtype)
        self.items = items
        page = mmap.PAGESIZE
        self.reserved = max(-(-items * self.dtype.itemsize // page) * page, page)
        if fd is None:
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.fd = fd
        self.size = os.fstat(fd).st_size
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        addr = _mmap(None, self.reserved, prot, mmap.MAP_SHARED | MAP_NORESERVE, fd, 0)
        if addr is None or addr == MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot map shared array {name!r}: {os.strerror(err)}")
        buf = (ctypes.c_char * self.reserved).from_address(addr)
        weakref.finalize(buf, _munmap, addr, self.reserved)
        array = np.frombuffer(buf, dtype=self.dtype, count=items)
        if not writable:
            array.flags.writeable = False
        self.array = array

    @classmethod
    def attach(cls, fd: int, dtype, items: int) -> SharedArray:
        """A read-only view of another process's array, from its memfd ``fd``."""
        return cls("", dtype, items, fd=fd, writable=False)

    def ensure(self, items: int) -> None:
        """Back the first ``items`` items with the memfd (grow it; never shrinks)."""
        need = items * self.dtype.itemsize
        if need <= self.size:
            return
        if need > self.reserved:
            raise OSError(errno.ENOSPC, f"shared array of {self.reserved} bytes is full")
        new = min(max(need, 2 * self.size, GROW_BYTES), self.reserved)
        new = -(-new // mmap.PAGESIZE) * mmap.PAGESIZE
        os.ftruncate(self.fd, min(new, self.reserved))
        self.size = min(new, self.reserved)

    def zero(self, start: int, stop: int) -> None:
        """Items [start, stop) become zeros; whole pages among them go back to the system."""
        if stop <= start:
            return
        isz = self.dtype.itemsize
        page = mmap.PAGESIZE
        a = -(-start * isz // page) * page
        b = stop * isz // page * page
        if b > a and _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                a, b - a) == 0:
            self.array[start:a // isz] = 0
            self.array[b // isz:stop] = 0
        else:
            self.array[start:stop] = 0

    def close(self) -> None:
        """Close the memfd (the mapping lives on while views of it exist)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
