"""tests/support/faultfs.py, the failing disk of the fault tests: it passes data through (offsets,
sparse 64 GiB files, truncate, punch hole, directories, RocksDB), fails the operations it is
told to on the files it is told to with the errno it is told to, heals, and always unmounts.
A pool whose capacity tier lives on it serves QEMU."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from support.faultfs import FaultFs, mounted
from support.server import VmblockServer

from support import clients

GiB = 1 << 30
MiB = 1 << 20
AU = 64 * 1024
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


def libc_fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    if libc.fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def open_rw(path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def test_data_passes_through_at_offsets_in_a_sparse_64_gib_file(faultfs):
    path = faultfs.mount / "capacity"
    fd = open_rw(path)
    try:
        os.ftruncate(fd, 64 * GiB)
        a, b = os.urandom(AU), os.urandom(MiB)
        assert os.pwrite(fd, a, 0) == AU
        assert os.pwrite(fd, b, 63 * GiB + 4096) == MiB       # one request: max_write 1 MiB
        assert os.pread(fd, AU, 0) == a
        assert os.pread(fd, MiB, 63 * GiB + 4096) == b
        assert os.pread(fd, 4096, 32 * GiB) == bytes(4096)     # a hole reads as zeros
        st = os.fstat(fd)
        assert st.st_size == 64 * GiB and st.st_blocks * 512 < 16 * MiB   # sparse
        back = os.stat(faultfs.backing / "capacity")
        assert back.st_size == 64 * GiB and back.st_blocks == st.st_blocks
        os.fsync(fd)
        os.fdatasync(fd)

        # punch hole (what the store does to free AUs): zeros, blocks freed, size kept
        os.pwrite(fd, b, 8 * MiB)
        before = os.fstat(fd).st_blocks
        os.posix_fallocate(fd, 16 * MiB, MiB)
        assert os.fstat(fd).st_blocks > before
        libc_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8 * MiB, MiB)
        assert os.pread(fd, MiB, 8 * MiB) == bytes(MiB)
        assert os.fstat(fd).st_size == 64 * GiB
        os.ftruncate(fd, 4 * MiB)
        assert os.fstat(fd).st_size == 4 * MiB and os.pread(fd, AU, 0) == a
    finally:
        os.close(fd)
    assert (faultfs.backing / "capacity").read_bytes()[:AU] == a

    # directories, rename, unlink, statfs: what RocksDB does in its directory
    (faultfs.mount / "meta").mkdir()
    (faultfs.mount / "meta" / "x.tmp").write_bytes(b"manifest")
    os.rename(faultfs.mount / "meta" / "x.tmp", faultfs.mount / "meta" / "CURRENT")
    assert sorted(os.listdir(faultfs.mount)) == ["capacity", "meta"]     # no control file
    assert os.listdir(faultfs.mount / "meta") == ["CURRENT"]
    assert (faultfs.backing / "meta" / "CURRENT").read_bytes() == b"manifest"
    os.unlink(faultfs.mount / "meta" / "CURRENT")
    os.rmdir(faultfs.mount / "meta")
    with socket.socket(socket.AF_UNIX) as srv, socket.socket(socket.AF_UNIX) as cli:
        srv.bind(str(faultfs.mount / "admin.sock"))       # mknod: a whole pool can live on it
        srv.listen()
        cli.connect(str(faultfs.mount / "admin.sock"))
        conn, _ = srv.accept()
        with conn:
            cli.sendall(b"ping")
            assert conn.recv(4) == b"ping"
    os.unlink(faultfs.mount / "admin.sock")
    assert os.statvfs(faultfs.mount).f_blocks == os.statvfs(faultfs.backing).f_blocks


def test_write_fails_with_eio_or_enospc_on_the_named_file_until_healed(faultfs):
    cap, other = faultfs.mount / "capacity", faultfs.mount / "flash"
    fd, ofd = open_rw(cap), open_rw(other)
    try:
        os.pwrite(fd, b"\x11" * AU, 0)
        faultfs.fail("capacity", "write", errno.EIO)
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"\x22" * AU, AU)
        assert e.value.errno == errno.EIO
        assert os.pwrite(ofd, b"\x33" * AU, 0) == AU       # another file: fine
        assert os.pread(fd, AU, 0) == b"\x11" * AU          # reads: fine
        assert faultfs.faults() == ["capacity write EIO hits=1"]

        faultfs.heal()
        faultfs.fail("*", "write", errno.ENOSPC)
        for f in (fd, ofd):
            with pytest.raises(OSError) as e:
                os.pwrite(f, b"\x44" * AU, 2 * AU)
            assert e.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as e:
            os.posix_fallocate(fd, 0, 8 * MiB)              # allocating: also out of space
        assert e.value.errno == errno.ENOSPC

        faultfs.heal()
        assert faultfs.faults() == []
        assert os.pwrite(fd, b"\x55" * AU, AU) == AU
        assert os.pread(fd, 2 * AU, 0) == b"\x11" * AU + b"\x55" * AU
    finally:
        os.close(fd)
        os.close(ofd)


def test_fsync_fdatasync_and_read_fail_with_eio_when_so_set(faultfs):
    fd = open_rw(faultfs.mount / "capacity")
    try:
        os.pwrite(fd, b"\x66" * AU, 0)
        assert os.pread(fd, AU, 0) == b"\x66" * AU
        faultfs.fail("capacity", "fsync", errno.EIO)
        for sync in (os.fdatasync, os.fsync):
            with pytest.raises(OSError) as e:
                sync(fd)
            assert e.value.errno == errno.EIO
        assert os.pwrite(fd, b"\x77" * AU, AU) == AU          # writes still work

        faultfs.fail("capacity", "read", errno.EIO)
        with pytest.raises(OSError) as e:
            os.pread(fd, AU, 0)             # read before: no page cache answers for the disk
        assert e.value.errno == errno.EIO
        faultfs.heal()
        os.fdatasync(fd)
        assert os.pread(fd, 2 * AU, 0) == b"\x66" * AU + b"\x77" * AU
    finally:
        os.close(fd)


def test_a_bad_control_command_is_refused(faultfs):
    for line in ("fail capacity erase EIO", "fail capacity write ENOTANERRNO", "fail x"):
        with pytest.raises(OSError) as e:
            faultfs._command(line)
        assert e.value.errno == errno.EINVAL
    assert faultfs.faults() == []


@pytest.mark.parametrize("how", ["idle", "a file open", "daemon killed"])
def test_unmount_always_unmounts_and_ends_the_process(tmp_path, how):
    fs = FaultFs(tmp_path / "backing", tmp_path / "mnt")
    fd = None
    try:
        assert mounted(fs.mount) and os.path.ismount(fs.mount)
        (fs.mount / "f").write_bytes(b"kept")
        if how == "a file open":
            fd = os.open(fs.mount / "f", os.O_RDONLY)
        if how == "daemon killed":
            fs.proc.send_signal(signal.SIGKILL)
            fs.proc.wait()
            with pytest.raises(OSError) as e:       # the mount is stale until unmounted
                os.stat(fs.mount / "f")
            assert e.value.errno == errno.ENOTCONN
    finally:
        fs.unmount()
    if fd is not None:      # a busy mount: the process was ended, the holder's I/O fails
        with pytest.raises(OSError) as e:
            os.pread(fd, 4, 0)
        assert e.value.errno == errno.ENOTCONN
        with contextlib.suppress(OSError):
            os.close(fd)        # closed, though its FUSE flush fails
    assert not mounted(fs.mount)     # a dead daemon's stale mount too (ismount misses it)
    assert fs.proc.returncode is not None
    assert (fs.backing / "f").read_bytes() == b"kept"


def test_rocksdb_lives_on_it(faultfs):
    from rocksdict import Rdict
    path = str(faultfs.mount / "meta")
    db = Rdict(path)
    for i in range(2000):
        db[f"k{i}".encode()] = os.urandom(100)
    db[b"last"] = b"v"
    db.flush()
    db.close()
    db = Rdict(path)
    try:
        assert db[b"last"] == b"v" and len(list(db.keys())) == 2001
    finally:
        db.close()


@pytest.mark.skipif(not shutil.which("qemu-img"), reason="needs qemu-img (qemu-utils)")
@pytest.mark.timeout(180)
def test_a_pool_with_its_capacity_tier_on_faultfs_serves_qemu(faultfs, tmp_path):
    """``store.capacity_path`` on the FUSE mount, meta on the normal disk: a 64 GiB sparse
    tier file, qemu-img writes through the server and reads back, ``pool check`` clean."""
    pool = tmp_path / "pool"
    cap = faultfs.mount / "capacity"
    p = subprocess.run([sys.executable, "-m", "vmblock", "--pool", str(pool), "config", "set",
                        "store.capacity_path", str(cap)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    s = VmblockServer(pool)
    try:
        s.cli("vdisk", "create", "d", "--size", "64M")
        url = clients.cli_json(s, "vdisk", "show", "d")["url"]
        src = tmp_path / "src.raw"
        src.write_bytes(os.urandom(16 * MiB) + bytes(16 * MiB) + b"\xab" * (32 * MiB))
        for args in (["convert", "-n", "-f", "raw", "-O", "raw", str(src), url],
                     ["compare", "-f", "raw", "-F", "raw", str(src), url]):
            p = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stdout + p.stderr
        assert os.stat(cap).st_size == 64 * GiB
        assert os.stat(faultfs.backing / "capacity").st_blocks * 512 >= 48 * MiB
        assert clients.cli_json(s, "pool", "check")["ok"]
    finally:
        s.stop()
