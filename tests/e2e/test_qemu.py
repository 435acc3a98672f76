"""QEMU's iSCSI initiator (libiscsi inside ``qemu-img`` / ``qemu-io``) against a live ``vmblock serve``.

No mocks: each test starts the real server (``vmblock_server`` fixture), drives it with the real
QEMU tools from Debian's qemu-utils + qemu-block-extra, and checks the bytes that come back.
Offsets are 512-aligned but not 4 KiB-aligned on purpose, and the largest transfer (3 MiB) is
bigger than the negotiated MaxBurstLength (the target offers 1 MiB, libiscsi 256 KiB; the smaller
wins), so a write needs several R2T / Data-Out rounds and a read several Data-In sequences.

Not covered here: ``discard`` (UNMAP) is not asked for yet; DataDigest cannot be tested with these
clients because libiscsi always offers ``DataDigest=None`` (QEMU has no option for it, and neither
has libiscsi's ``iscsi-test-cu``), so only HeaderDigest is negotiated to CRC32C below.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

import pytest
from support.clients import qemu_io_args

from vmblock import DEFAULT_TARGET

KiB, MiB = 1 << 10, 1 << 20
IO_TIMEOUT = 90          # one qemu-io / qemu-img run
SECTOR = 512

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-io") and shutil.which("qemu-img")),
    reason="needs qemu-io and qemu-img (Debian qemu-utils + qemu-block-extra; tools/test.sh installs them)")


# --- helpers -----------------------------------------------------------------------------------

def run(cmd: list[str], timeout: float = IO_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def describe(p: subprocess.CompletedProcess) -> str:
    return (f"$ {' '.join(p.args)}\nexit {p.returncode}\n--- stdout ---\n{p.stdout[-6000:]}"
            f"\n--- stderr ---\n{p.stderr[-4000:]}")


@dataclass
class Script:
    """qemu-io commands plus the report line each one must print when it succeeds."""
    cmds: list[str] = field(default_factory=list)
    expect: list[str] = field(default_factory=list)

    def write(self, off: int, n: int, pattern: int, *, aio: bool = False, fua: bool = False,
              zeroes: bool = False) -> Script:
        flags = (" -f" if fua else "") + (" -z" if zeroes else f" -P {pattern:#04x}")
        self.cmds.append(f"{'aio_write' if aio else 'write'}{flags} {off} {n}")
        self.expect.append(f"wrote {n}/{n} bytes at offset {off}")
        return self

    def read(self, off: int, n: int, pattern: int, *, aio: bool = False) -> Script:
        """A read that qemu-io checks byte by byte against ``pattern``."""
        self.cmds.append(f"{'aio_read' if aio else 'read'} -P {pattern:#04x} {off} {n}")
        self.expect.append(f"read {n}/{n} bytes at offset {off}")
        return self

    def guards(self, off: int, n: int) -> Script:
        """The sectors just before and after [off, off+n) must still read as zeros."""
        return self.read(off - SECTOR, SECTOR, 0).read(off + n, SECTOR, 0)

    def raw(self, cmd: str) -> Script:
        self.cmds.append(cmd)
        return self


def check_qemu_io(p: subprocess.CompletedProcess, script: Script) -> None:
    """Exit 0, no verification/IO error, and every command printed its completion line."""
    out = p.stdout + p.stderr
    assert "Pattern verification failed" not in out, describe(p)
    assert p.returncode == 0, describe(p)
    assert "error" not in out.lower() and "failed" not in out.lower(), describe(p)
    missing = [line for line in script.expect if line not in out]
    assert not missing, f"commands did not complete: {missing}\n{describe(p)}"


def qemu_io(url: str, script: Script, *, cache: str | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` through qemu-io and check that every command completed."""
    p = run(qemu_io_args(url, script.cmds, cache))
    check_qemu_io(p, script)
    return p


def image_opts(server, lun: int = 0, **extra: str) -> str:
    """A ``--image-opts`` string for QEMU's iscsi block driver (block/iscsi.c runtime opts),
    with the target's CHAP credentials."""
    user, secret = server.chap()
    opts = {"driver": "iscsi", "transport": "tcp", "portal": server.portal,
            "target": DEFAULT_TARGET, "lun": str(lun), "user": user, "password": secret,
            **extra}
    return ",".join(f"{k}={v}" for k, v in opts.items())


def new_vdisk(server, name: str, size: str) -> dict:
    server.cli("vdisk", "create", name, "--size", size)
    return json.loads(server.cli("vdisk", "show", name, "--json").stdout)


def virtual_size(url: str) -> int:
    p = run(["qemu-img", "info", "--output=json", "-f", "raw", url])
    assert p.returncode == 0, describe(p)
    return json.loads(p.stdout)["virtual-size"]


def random_file(path, size: int, chunk: int = 4 * MiB) -> str:
    """Fill ``path`` with ``size`` random bytes; returns their sha256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(0, size, chunk):
            block = os.urandom(chunk)
            h.update(block)
            f.write(block)
    return h.hexdigest()


def sha256_prefix(path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left:
            block = f.read(min(left, 4 * MiB))
            assert block, f"{path} is shorter than {size} bytes"
            h.update(block)
            left -= len(block)
    return h.hexdigest()


# The size matrix: 512 B up to 3 MiB (3 x MaxBurstLength), each at a 512-aligned offset that is
# not 4 KiB-aligned, 8 MiB apart so guard sectors around each region stay unwritten.
SIZES = [512, 4 * KiB, 64 * KiB, 1 * MiB, 3 * MiB]
REGIONS = [(i * 8 * MiB + SECTOR * (2 * i + 1), n, 0xA1 + i) for i, n in enumerate(SIZES)]


def test_regions_are_512_aligned_but_not_4k_aligned():
    for off, n, _ in REGIONS:
        assert off % SECTOR == 0 and off % (4 * KiB) != 0 and n % SECTOR == 0


# --- 1. qemu-img convert in and out ------------------------------------------------------------

@pytest.mark.timeout(240)
def test_qemu_img_convert_into_and_out_of_a_lun_is_byte_identical(vmblock_server, tmp_path):
    """64 MiB of random data, qemu-img convert into a new 64 MiB vdisk and back out: same bytes."""
    size = 64 * MiB
    d = new_vdisk(vmblock_server, "conv", "64M")
    url = d["url"]
    assert url == vmblock_server.url(d["lun"]), d
    assert virtual_size(url) == size           # READ CAPACITY as QEMU sees it

    src, out = tmp_path / "src.raw", tmp_path / "out.raw"
    want = random_file(src, size)
    p = run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(src), url], timeout=180)
    assert p.returncode == 0, describe(p)
    p = run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out)], timeout=180)
    assert p.returncode == 0, describe(p)
    assert out.stat().st_size == size
    assert sha256_prefix(out, size) == want


@pytest.mark.timeout(180)
def test_qemu_img_convert_zero_regions_replace_old_data(vmblock_server, tmp_path):
    """Converting an image with a hole over old data leaves zeros there (WRITE SAME or plain
    zero writes, whichever the target offers: QEMU falls back on ILLEGAL REQUEST)."""
    size = 16 * MiB
    url = new_vdisk(vmblock_server, "zeros", "16M")["url"]
    old = tmp_path / "old.raw"
    random_file(old, size)
    p = run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(old), url])
    assert p.returncode == 0, describe(p)

    new = tmp_path / "new.raw"          # random 4 MiB, an 8 MiB hole, random 4 MiB
    with open(new, "wb") as f:
        f.write(os.urandom(4 * MiB))
        f.seek(12 * MiB)
        f.write(os.urandom(4 * MiB))
    p = run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(new), url])
    assert p.returncode == 0, describe(p)

    back = tmp_path / "back.raw"
    p = run(["qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(back)])
    assert p.returncode == 0, describe(p)
    assert sha256_prefix(back, size) == sha256_prefix(new, size)


# --- 2. qemu-io pattern round trips ------------------------------------------------------------

@pytest.mark.timeout(120)
def test_qemu_io_sync_writes_read_back_and_survive_a_new_session(vmblock_server):
    """Synchronous writes of 512 B..3 MiB at unaligned offsets read back exactly, leave their
    neighbours zero, and a second qemu-io process (a new iSCSI session) reads the same bytes."""
    url = vmblock_server.url(0)
    s = Script()
    for off, n, pat in REGIONS:
        s.write(off, n, pat)
    for off, n, pat in REGIONS:
        s.read(off, n, pat).guards(off, n)
    qemu_io(url, s)

    again = Script()
    for off, n, pat in REGIONS:
        again.read(off, n, pat).guards(off, n)
    qemu_io(url, again)


@pytest.mark.timeout(120)
def test_qemu_io_aio_writes_and_reads_in_flight_together(vmblock_server):
    """All writes queued at once (several commands in the window, interleaved R2Ts), aio_flush,
    then all reads queued at once, each verified against its pattern."""
    url = vmblock_server.url(0)
    s = Script()
    for off, n, pat in REGIONS:
        s.write(off, n, pat, aio=True)
    s.raw("aio_flush")
    for off, n, pat in REGIONS:
        s.read(off, n, pat, aio=True)
    s.raw("aio_flush")
    for off, n, _ in REGIONS:
        s.guards(off, n)
    qemu_io(url, s)


@pytest.mark.timeout(120)
def test_qemu_io_directsync_fua_and_flush_writes_read_back(vmblock_server):
    """With ``-t directsync`` (write-through: FUA writes if the target reports DPOFUA, else a
    SYNCHRONIZE CACHE after each write), plus explicit ``write -f`` FUA writes and ``flush``."""
    url = vmblock_server.url(0)
    s = Script()
    for i, (off, n, pat) in enumerate(REGIONS):
        s.write(off, n, pat, fua=bool(i % 2))
    s.raw("flush")
    for off, n, pat in REGIONS:
        s.read(off, n, pat).guards(off, n)
    qemu_io(url, s, cache="directsync")
    again = Script()
    for off, n, pat in REGIONS:
        again.read(off, n, pat)
    qemu_io(url, again, cache="directsync")


@pytest.mark.timeout(120)
def test_qemu_io_overwrite_inside_a_written_range_keeps_the_rest(vmblock_server):
    """A 64.5 KiB overwrite starting 1.5 KiB into a 1 MiB region changes only those bytes."""
    url = vmblock_server.url(0)
    off, n = 5 * MiB + 3 * SECTOR, 1 * MiB
    inner_off, inner_n = off + 3 * SECTOR, 64 * KiB + SECTOR
    s = (Script().write(off, n, 0xA5).write(inner_off, inner_n, 0x3C)
         .read(off, inner_off - off, 0xA5)
         .read(inner_off, inner_n, 0x3C)
         .read(inner_off + inner_n, off + n - inner_off - inner_n, 0xA5)
         .guards(off, n))
    qemu_io(url, s)


@pytest.mark.timeout(120)
def test_qemu_io_write_zeroes_reads_back_zero(vmblock_server):
    """``write -z`` (WRITE SAME, or QEMU's fallback to zero writes when the target answers
    ILLEGAL REQUEST) over written data leaves zeros, and only in that range."""
    url = vmblock_server.url(0)
    off, n = 3 * MiB + SECTOR, 256 * KiB
    z_off, z_n = off + 64 * KiB, 64 * KiB
    s = (Script().write(off, n, 0x77).write(z_off, z_n, 0, zeroes=True)
         .read(off, z_off - off, 0x77).read(z_off, z_n, 0).read(z_off + z_n, off + n - z_off - z_n, 0x77))
    qemu_io(url, s)


# --- 3. header digest --------------------------------------------------------------------------

def _normal_sessions(server) -> list[dict]:
    p = server.cli("session", "list", "--json", check=False)
    if p.returncode != 0:
        return []
    return [s for s in json.loads(p.stdout) if s.get("type") == "normal"]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("qemu_value, negotiated", [
    ("crc32c", "CRC32C"),          # libiscsi offers HeaderDigest=CRC32C only
    ("crc32c-none", "CRC32C"),     # offers CRC32C,None: the target takes the first it supports
    ("none-crc32c", "None"),       # offers None,CRC32C (QEMU's default)
    ("none", "None"),
])
def test_qemu_io_header_digest_round_trip(vmblock_server, qemu_value, negotiated):
    """With QEMU's ``header-digest`` option the session negotiates the expected HeaderDigest
    (seen in ``vmblock session list`` while qemu-io is connected) and the 512 B..3 MiB pattern
    round trip still verifies, every PDU header carrying a CRC32C when it is negotiated.
    DataDigest stays None: libiscsi hard-codes ``DataDigest=None``."""
    opts = image_opts(vmblock_server, **{"header-digest": qemu_value})
    s = Script()
    for off, n, pat in REGIONS:
        s.write(off, n, pat)
    for off, n, pat in REGIONS:
        s.read(off, n, pat).guards(off, n)
    for off, n, pat in REGIONS:
        s.write(off, n, pat, aio=True)
    s.raw("aio_flush")
    for off, n, pat in REGIONS:
        s.read(off, n, pat, aio=True)
    s.raw("aio_flush")

    # Interactive qemu-io keeps its session open while we look at it from the admin side.
    proc = subprocess.Popen(["qemu-io", "--image-opts", opts], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sessions, deadline = [], time.monotonic() + 30
        while not sessions and time.monotonic() < deadline and proc.poll() is None:
            sessions = _normal_sessions(vmblock_server)
            if not sessions:
                time.sleep(0.2)
        out, _ = proc.communicate("\n".join(s.cmds) + "\nquit\n", timeout=IO_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    p = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    check_qemu_io(p, s)
    assert len(sessions) == 1, f"sessions while qemu-io was connected: {sessions}\n{describe(p)}"
    params = sessions[0]["params"]
    assert params.get("HeaderDigest") == negotiated, params
    assert params.get("DataDigest", "None") == "None", params
    assert int(params["MaxBurstLength"]) < max(SIZES), params   # the 3 MiB I/O needs R2Ts
