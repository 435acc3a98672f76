"""Arrays in shared memory that another process can attach later without copying.

Each ``SharedArray`` is a memfd (``os.memfd_create``) sized once to its reserved length and
mapped ``MAP_SHARED`` whole: the mapping never moves, pages cost memory only once touched
(memfd memory is not reserved up front), and a process given the fd (inherited, or sent over a
unix socket with ``SCM_RIGHTS``) maps the same pages with ``SharedArray.attach``. The
extent store keeps its leaf arena, its L1 arena and its reference counts in them, so worker
processes can look maps and reference counts up read-only.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


class SharedArray:
    """A 1-d numpy array of ``items`` ``dtype`` in a memfd mapped shared; ``array`` is the
    view, ``fd`` the memfd (kept open for the array's life, for other processes)."""

    def __init__(self, name: str, dtype, items: int, fd: int | None = None,
                 writable: bool = True):
        self.dtype = np.dtype(dtype)
        self.items = items
        nbytes = max(items * self.dtype.itemsize, mmap.PAGESIZE)
        if fd is None:
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
            os.ftruncate(fd, nbytes)
        self.fd = fd
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        self._mm = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=prot)
        self.array = np.frombuffer(self._mm, dtype=self.dtype, count=items)

    @classmethod
    def attach(cls, fd: int, dtype, items: int) -> SharedArray:
        """A read-only view of another process's array, from its memfd ``fd``."""
        return cls("", dtype, items, fd=fd, writable=False)

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
