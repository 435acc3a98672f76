"""faultfs: a FUSE passthrough file system whose files fail on command, for fault tests.

usage: python tests/support/faultfs.py BACKING MOUNTPOINT      (foreground; unmount: fusermount3 -u)

It mirrors BACKING at MOUNTPOINT (files, directories, sparse files of any size, pread/pwrite at
offsets, ftruncate, fallocate incl. punch hole, fsync, rename, unlink, statfs: what the store's
tier files and RocksDB use; mknod, so a whole pool with its admin.sock can live on it) and
prints ``faultfs: mounted`` once the kernel has mounted it.
This kernel has no device-mapper ``error``/``flakey`` targets and no fault injection, but FUSE.

Faults are switched live through the control file ``MOUNTPOINT/.faultfs`` (not in BACKING, not
listed), one command per line written to it:

    fail GLOB OP ERRNO    from now on, OP on files matching GLOB fails with ERRNO (a name)
    heal                  every fault off

OP is ``read``, ``write`` (write, and fallocate except punching holes) or ``fsync`` (fsync and
fdatasync). GLOB (fnmatch) is matched against the path from the mount root and against the
file name, so ``capacity`` matches ``pool/capacity``. Reading the control file lists the faults
in force, one ``GLOB OP ERRNO hits=N`` a line. A bad command fails the write with EINVAL.

Caching, chosen so that every fault shows at once and in the call that hit it: writeback_cache
is off (libfuse's default), so each write() goes to this process before it returns and gets its
error; every file is opened with FUSE's direct_io, so reads bypass the page cache too (a read
fault is seen on data read before) and nothing is left in the page cache to write back later.
Files need no O_DIRECT (it is dropped on the backing file). max_write is 1 MiB: a 64 KiB or
1 MiB write is one request. No mmap of files (direct_io), which neither the store nor RocksDB
uses by default.

``FaultFs`` runs it as a subprocess for tests (the ``faultfs`` fixture in tests/conftest.py).
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

CONTROL = ".faultfs"
OPS = ("read", "write", "fsync")
MAX_WRITE = 1 << 20
READY = "faultfs: mounted"
# fh of the control file: no file descriptor has it
CONTROL_FH = 1 << 62
FALLOC_FL_PUNCH_HOLE = 0x02


class FaultRules:
    """The faults in force; swapped whole under a lock, read by every I/O thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rules: list[dict] = []

    def command(self, line: str) -> None:
        words = line.split()
        if words == ["heal"]:
            with self.lock:
                self.rules = []
            return
        if (len(words) != 4 or words[0] != "fail" or words[2] not in OPS
                or not isinstance(getattr(errno, words[3], None), int)):
            raise OSError(errno.EINVAL, f"faultfs: bad command {line!r}")
        rule = {"glob": words[1], "op": words[2], "errno": words[3], "hits": 0}
        with self.lock:
            self.rules = self.rules + [rule]

    def check(self, path: str, op: str) -> None:
        """Raise the error of the first fault that matches ``op`` on ``path``."""
        rules = self.rules
        if not rules:
            return
        rel = path.lstrip("/")
        name = rel.rsplit("/", 1)[-1]
        for r in rules:
            if r["op"] == op and (fnmatch.fnmatchcase(rel, r["glob"])
                                  or fnmatch.fnmatchcase(name, r["glob"])):
                with self.lock:
                    r["hits"] += 1
                code = getattr(errno, r["errno"])
                raise OSError(code, os.strerror(code))

    def text(self) -> bytes:
        with self.lock:
            return "".join(f"{r['glob']} {r['op']} {r['errno']} hits={r['hits']}\n"
                           for r in self.rules).encode()


def serve(backing: str, mountpoint: str) -> None:
    """Mount and serve until unmounted (fusermount3 -u) or SIGTERM/SIGINT."""
    import mfusepy

    libc = ctypes.CDLL(None, use_errno=True)
    c_fallocate = libc.fallocate
    c_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    c_fallocate.restype = ctypes.c_int

    class FaultFS(mfusepy.Operations):
        use_ns = True

        def __init__(self, root: str):
            self.root = os.path.realpath(root)
            self.faults = FaultRules()

        def _real(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        @staticmethod
        def _is_control(path: str | None) -> bool:
            return path == "/" + CONTROL

        def init_with_config(self, conn, config):
            conn.max_write = MAX_WRITE      # a 1 MiB write is one request (libfuse's cap)
            print(READY, flush=True)

        # --- metadata ---

        def getattr(self, path, fh=None):
            if self._is_control(path):
                st = os.lstat(self.root)
                return {"st_mode": 0o100600, "st_nlink": 1, "st_size": len(self.faults.text()),
                        "st_uid": st.st_uid, "st_gid": st.st_gid, "st_mtime": st.st_mtime_ns,
                        "st_atime": st.st_atime_ns, "st_ctime": st.st_ctime_ns}
            st = os.fstat(fh.fh) if fh is not None and fh.fh != CONTROL_FH \
                else os.lstat(self._real(path))
            attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid",
                                                 "st_size", "st_blocks", "st_ino", "st_rdev")}
            attrs.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns,
                         st_ctime=st.st_ctime_ns, st_blksize=4096)
            return attrs

        def readdir(self, path, fh):
            """Names with their inode numbers (use_ino: an entry with inode 0 is skipped by
            readdir(3)) and types."""
            real = self._real(path)
            here = os.lstat(real)
            up = os.lstat(os.path.dirname(real) if path != "/" else real)
            items = [(".", {"st_mode": here.st_mode, "st_ino": here.st_ino}, 0),
                     ("..", {"st_mode": up.st_mode, "st_ino": up.st_ino}, 0)]
            with os.scandir(real) as it:
                for e in it:
                    st = e.stat(follow_symlinks=False)
                    items.append((e.name, {"st_mode": st.st_mode, "st_ino": e.inode()}, 0))
            return items

        def statfs(self, path):
            sv = os.statvfs(self._real(path))
            return {k: getattr(sv, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                                "f_bavail", "f_files", "f_ffree", "f_favail",
                                                "f_flag", "f_namemax")}

        def mknod(self, path, mode, dev):
            os.mknod(self._real(path), mode, dev)      # a unix socket bound in it (admin.sock)

        def mkdir(self, path, mode):
            os.mkdir(self._real(path), mode)

        def rmdir(self, path):
            os.rmdir(self._real(path))

        def unlink(self, path):
            os.unlink(self._real(path))

        def rename(self, old, new):
            os.rename(self._real(old), self._real(new))

        def link(self, target, source):
            os.link(self._real(source), self._real(target))

        def symlink(self, target, source):
            os.symlink(source, self._real(target))

        def readlink(self, path):
            return os.readlink(self._real(path))

        def chmod(self, path, mode):
            os.chmod(self._real(path), mode)

        def chown(self, path, uid, gid):
            os.chown(self._real(path), uid, gid)

        def utimens(self, path, times=None):
            os.utime(self._real(path), ns=times)

        def truncate(self, path, length, fh=None):
            os.truncate(self._real(path), length)

        # --- files ---

        def open(self, path, fi):
            if self._is_control(path):
                fi.fh = CONTROL_FH
            else:
                fi.fh = os.open(self._real(path), fi.flags & ~os.O_DIRECT)
            fi.direct_io = 1
            return 0

        def create(self, path, mode, fi):
            fi.fh = os.open(self._real(path), (fi.flags & ~os.O_DIRECT) | os.O_CREAT, mode)
            fi.direct_io = 1
            return 0

        def read(self, path, size, offset, fi):
            if fi.fh == CONTROL_FH:
                return self.faults.text()[offset:offset + size]
            self.faults.check(path, "read")
            return os.pread(fi.fh, size, offset)

        def write(self, path, data, offset, fi):
            if fi.fh == CONTROL_FH:
                for line in data.decode().splitlines():
                    if line.strip():
                        self.faults.command(line)
                return len(data)
            self.faults.check(path, "write")
            return os.pwrite(fi.fh, data, offset)

        def fallocate(self, path, mode, offset, size, fi):
            if not mode & FALLOC_FL_PUNCH_HOLE:
                self.faults.check(path, "write")
            if c_fallocate(fi.fh, mode, offset, size) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
            return 0

        def fsync(self, path, datasync, fi):
            if fi.fh == CONTROL_FH:
                return 0
            self.faults.check(path, "fsync")
            (os.fdatasync if datasync else os.fsync)(fi.fh)
            return 0

        def flush(self, path, fi):
            return 0

        def release(self, path, fi):
            if fi.fh != CONTROL_FH:
                os.close(fi.fh)
            return 0

    mfusepy.FUSE(FaultFS(backing), mountpoint, foreground=True, raw_fi=True,
                 fsname="faultfs", subtype="faultfs", use_ino=True)


def mounted(path: Path) -> bool:
    """Whether a file system is mounted at ``path``, from /proc/self/mounts: unlike
    os.path.ismount, also true for a FUSE mount whose process is gone (stat gives ENOTCONN)."""
    target = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            point = line.split(" ")[1]
            for esc, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"),
                            ("\\134", "\\")):
                point = point.replace(esc, ch)
            if point == target:
                return True
    return False


class FaultFs:
    """A faultfs process mounted at ``mount`` over ``backing``, driven from a test."""

    def __init__(self, backing: Path, mount: Path, start_timeout: float = 60):
        self.backing, self.mount = Path(backing), Path(mount)
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        self.log_path = self.backing.parent / f"{self.mount.name}.faultfs.log"
        with open(self.log_path, "wb") as log:     # stderr: never a pipe nobody reads
            self.proc = subprocess.Popen([sys.executable, __file__, str(self.backing),
                                          str(self.mount)], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=log, text=True)
        first = []
        reader = threading.Thread(target=lambda: first.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(start_timeout)      # returns as soon as the line (or EOF) came
        if not first or first[0].strip() != READY:
            self.unmount()
            raise RuntimeError(f"faultfs did not mount {self.mount}: "
                               f"{(first[0] if first else '') + self.log()}")

    @property
    def control(self) -> Path:
        return self.mount / CONTROL

    def _command(self, line: str) -> None:
        with open(self.control, "w") as f:
            f.write(line + "\n")

    def fail(self, path_glob: str, op: str, err: int) -> None:
        """From now on ``op`` (read, write, fsync) on files matching ``path_glob`` fails with
        ``err`` (an errno number, e.g. errno.EIO)."""
        self._command(f"fail {path_glob} {op} {errno.errorcode[err]}")

    def heal(self) -> None:
        self._command("heal")

    def faults(self) -> list[str]:
        """The faults in force: ``GLOB OP ERRNO hits=N`` each."""
        return self.control.read_text().splitlines()

    def log(self) -> str:
        """What the process wrote to stderr (libfuse's and Python's errors)."""
        return self.log_path.read_text(errors="replace")

    def unmount(self) -> None:
        """Unmount and end the process, whatever state either is in: ``fusermount3 -u``; if
        the mount is busy, end the process (pending requests fail, nothing can hang on it)
        and detach the mount lazily."""
        if mounted(self.mount) or self.proc.poll() is None:
            p = subprocess.run(["fusermount3", "-u", str(self.mount)], capture_output=True,
                               timeout=30)
            if p.returncode != 0:
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGKILL)
                subprocess.run(["fusermount3", "-u", "-z", str(self.mount)],
                               capture_output=True, timeout=30)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/support/faultfs.py BACKING MOUNTPOINT")
    serve(sys.argv[1], sys.argv[2])
