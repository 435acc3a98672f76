"""One tier's backing file or block device, and whole-buffer positional reads and writes."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat

import numpy as np

from vmblock.errors import PoolError
from vmblock.store.layout import AU_SIZE

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


class Tier:
    """One tier's backing file or block device, opened for the pool's life."""

    def __init__(self, name: str, path: str, size_bytes: int, au: int = AU_SIZE):
        self.name = name
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise PoolError(f"cannot open {name} tier {path}: {e.strerror}") from None
        st = os.fstat(self.fd)
        self.is_file = stat.S_ISREG(st.st_mode)
        self.au = au
        self.punch_ok = self.is_file
        if self.is_file:
            # the configured size, applied by the allocator once it knows the highest used AU
            self.want_aus = size_bytes // au
            self.n_aus = max(st.st_size // au, self.want_aus)
            if st.st_size < self.n_aus * au:
                os.ftruncate(self.fd, self.n_aus * au)
        else:
            self.n_aus = self.want_aus = os.lseek(self.fd, 0, os.SEEK_END) // au

    @property
    def size_bytes(self) -> int:
        """The tier's size in whole AUs."""
        return self.n_aus * self.au

    def set_aus(self, n: int) -> None:
        """Shrink or grow a file tier to ``n`` AUs (the caller checked nothing is in use)."""
        if self.is_file:
            os.ftruncate(self.fd, n * self.au)
            self.n_aus = n

    def punch(self, paus: np.ndarray) -> None:
        """Give freed AUs' space back to the host file system (file tiers only)."""
        if not self.punch_ok or not len(paus):
            return
        paus = np.sort(paus)
        breaks = np.flatnonzero(np.diff(paus.astype(np.int64)) != 1) + 1
        for run in np.split(paus, breaks):
            off, n = int(run[0]) * self.au, len(run) * self.au
            if _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n) != 0:
                err = ctypes.get_errno()
                if err in (errno.EOPNOTSUPP, errno.ENOSYS):
                    self.punch_ok = False
                    return
                log.warning("%s: cannot punch %d bytes at %d: %s", self.path, n, off,
                            os.strerror(err))

    def zero(self, file_aus: np.ndarray, zeros: memoryview) -> None:
        """Make AUs ``file_aus`` (numbers in this tier) read as zeros, durably: punch them on a
        file that can, else write ``zeros`` (a buffer of whole AUs) over them; then fsync."""
        if not len(file_aus):
            return
        file_aus = np.sort(file_aus.astype(np.int64))
        breaks = np.flatnonzero(np.diff(file_aus) != 1) + 1
        for run in np.split(file_aus, breaks):
            off, n = int(run[0]) * self.au, len(run) * self.au
            if self.punch_ok:
                if _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, n) == 0:
                    continue
                err = ctypes.get_errno()
                if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise OSError(err, f"{self.path}: cannot punch {n} bytes at {off}: "
                                       f"{os.strerror(err)}")
                self.punch_ok = False
            end = off + n
            while off < end:
                k = min(len(zeros), end - off)
                write_full(self.fd, [zeros[:k]], off)
                off += k
        os.fsync(self.fd)

    def close(self) -> None:
        """Close the file (once; the pool's close calls it)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def write_full(fd: int, bufs: list, pos: int) -> None:
    """Write every byte of ``bufs`` at ``pos``, however short the first pwritev was."""
    total = sum(len(b) for b in bufs)
    done = os.pwritev(fd, bufs, pos)
    while done < total:   # short write: finish byte-wise from where it stopped
        flat = memoryview(b"".join(bytes(b) for b in bufs))
        done += os.pwrite(fd, flat[done:], pos + done)


def read_full(fd: int, buf: memoryview, pos: int) -> None:
    """Fill ``buf`` from ``pos``; bytes past the end of the file read as zeros."""
    done = 0
    n = len(buf)
    while done < n:
        got = os.preadv(fd, [buf[done:]], pos + done)
        if got == 0:
            buf[done:] = bytes(n - done)
            return
        done += got
