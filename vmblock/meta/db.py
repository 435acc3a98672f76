"""The one wrapper around RocksDB (rocksdict): every error it raises becomes an ``OSError``.

rocksdict raises a bare ``Exception`` for every RocksDB status, so a caller that catches
``OSError`` (the commit loop, the SCSI core) would let a full meta DB through as an internal
error. Here every call translates it into ``MetaIOError`` with ``ENOSPC`` when RocksDB ran out
of space and ``EIO`` otherwise, so the SCSI core answers with sense (07/27/07 or 03/0C/00) and
the store keeps its pending keys for the next attempt.

After a failed write RocksDB keeps a *background error* and refuses every later write, even
once space is back ("Writer has previous error"); rocksdict has no ``Resume()``. So a failed
write marks the database ``failed`` and the next write first reopens it (close, open: RocksDB
replays its WAL, where a record that failed to append is cut off), once a probe file shows
that the file system takes writes again; until then reads go on from the open handle. A write that failed never
reached the WAL on ENOSPC, since the append itself failed; the caller retries it.

Iteration returns lists taken under the lock, so a reopen never closes RocksDB under a live
iterator of another thread.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

log = logging.getLogger(__name__)

# Free space a reopen wants to see first (RocksDB writes a new WAL and may flush on open).
PROBE_BYTES = 1 << 20


class MetaIOError(OSError):
    """A RocksDB call failed: ``ENOSPC`` when its file system is full, ``EIO`` otherwise."""


def _translate(e: Exception, what: str) -> MetaIOError:
    text = str(e)
    code = errno.ENOSPC if "No space left" in text else errno.EIO
    return MetaIOError(code, f"meta DB {what} failed: {text}")


class MetaDB:
    """RocksDB in raw mode at ``path``; thread-safe; writes are synced."""

    def __init__(self, path: str, create: bool = False):
        self.path = path
        self._opts = Options(raw_mode=True)
        self._opts.create_if_missing(create)
        self._sync = WriteOptions()
        self._sync.sync = True
        self._lock = threading.RLock()
        self.failed: MetaIOError | None = None    # the write error not yet recovered from
        self._db: Rdict | None = Rdict(path, self._opts)   # open errors: the caller words them

    @property
    def raw(self) -> Rdict:
        """The rocksdict handle, for tests that inspect RocksDB itself."""
        return self._db

    def get(self, key: bytes) -> bytes | None:
        """The value at ``key``, None when absent; a RocksDB error is raised as MetaIOError."""
        with self._lock:
            self._ensure_open()
            try:
                return self._db.get(key)
            except Exception as e:
                raise _translate(e, "read") from None

    def scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every (key, value) whose key starts with ``prefix``, in key order."""
        out = []
        with self._lock:
            self._ensure_open()
            try:
                for k, v in self._db.items(from_key=prefix):
                    if not k.startswith(prefix):
                        break
                    out.append((k, v))
            except Exception as e:
                raise _translate(e, "read") from None
        return out

    def scan_range(self, lo: bytes, hi: bytes) -> list[tuple[bytes, bytes]]:
        """Every (key, value) with ``lo <= key < hi``, in key order."""
        out = []
        with self._lock:
            self._ensure_open()
            try:
                for k, v in self._db.items(from_key=lo):
                    if k >= hi:
                        break
                    out.append((k, v))
            except Exception as e:
                raise _translate(e, "read") from None
        return out

    def write(self, batch: WriteBatch) -> None:
        """Write ``batch`` synced, after reopening the database if an earlier write failed."""
        with self._lock:
            if self.failed is not None:
                self._reopen()
            try:
                self._db.write(batch, self._sync)
            except Exception as e:
                self.failed = _translate(e, "write")
                raise self.failed from None

    def _ensure_open(self) -> None:
        if self._db is None:        # a reopen failed: try again before anything else
            self._reopen()

    def _reopen(self) -> None:
        if self._db is not None:
            self._probe()
        self._close_quietly()
        try:
            self._db = Rdict(self.path, self._opts)
        except Exception as e:
            self.failed = _translate(e, "reopen")
            raise self.failed from None
        log.warning("meta DB reopened after a failed write (%s)", self.failed)
        self.failed = None

    def _probe(self) -> None:
        """Raise unless the file system takes PROBE_BYTES again: closing RocksDB while it
        cannot reopen would leave the pool without even reads until it can."""
        probe = os.path.join(self.path, "vmblock-probe")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, bytes(PROBE_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as e:
            raise MetaIOError(e.errno, f"meta DB still cannot write: {e.strerror}") from None

    def _close_quietly(self) -> None:
        if self._db is None:
            return
        try:
            self._db.close()
        except Exception as e:      # it reports the same background error; the handle is gone
            log.debug("meta DB close after a failed write: %s", e)
        self._db = None

    def close(self) -> None:
        """Close RocksDB (once; later calls do nothing). After a failed write the handle is
        dropped quietly, since RocksDB would only repeat the error; else a close error is raised."""
        with self._lock:
            if self.failed is not None:
                self._close_quietly()
                return
            if self._db is None:
                return
            try:
                self._db.close()
            except Exception as e:
                raise _translate(e, "close") from None
            finally:
                self._db = None
