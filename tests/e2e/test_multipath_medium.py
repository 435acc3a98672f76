"""Two paths, ALUA, read-only and removable LUNs against a live server with real clients.

The server listens on two loopback addresses (127.0.0.1 and 127.0.0.2: Linux routes all of
127/8 to ``lo``), one portal group: libiscsi's MultipathIO suite runs over both paths, and both
paths show the same LU (NAA) in VPD 83h. ``vdisk set --read-only`` and ``vdisk eject|load``
change a served LUN at once, as QEMU's iscsi driver and libiscsi's tools see it.
"""

from __future__ import annotations

import re
import socket
import subprocess

import pytest
from support.server import run_cli

SECOND_PATH = "127.0.0.2"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def naa_of(url: str) -> bytes:
    """The 16-byte NAA designator VPD 83h gives for the LU at ``url`` (iscsi-inq prints the
    binary designator as it is)."""
    p = subprocess.run(["iscsi-inq", "-e", "1", "-c", str(0x83), url], capture_output=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(rb"Designator Type:\(3\) NAA\nDesignator:\[(.{16})\]", p.stdout, re.S)
    assert m, p.stdout
    return m.group(1)


@pytest.mark.timeout(600)
def test_multipath_io_over_two_portals(start_server):
    """MultipathIO (Simple, Reset, CompareAndWrite, CompareAndWriteAsync) runs over a second
    path and passes, none skipped; both paths reach the same NAA."""
    second = f"{SECOND_PATH}:{free_port(SECOND_PATH)}"
    server = start_server("--portal", second)
    url = server.url(0)
    url2 = url.replace(f"@{server.portal}/", f"@{second}/").replace(f"//{server.portal}/",
                                                                    f"//{second}/")
    assert url2 != url
    assert naa_of(url) == naa_of(url2)
    p = run(["iscsi-test-cu", "-d", "-v", "-t", "ALL.MultipathIO", url, url2])
    out = p.stdout + p.stderr
    tests = re.findall(r"^  Test: (\S+) \.\.\.", out, re.M)
    assert len(tests) == 4, out[-3000:]
    assert "[SKIPPED]" not in out, out[-3000:]
    assert re.search(r"^\s+tests\s+4\s+4\s+4\s+0\s+0", out, re.M), out[-3000:]


@pytest.mark.timeout(300)
def test_read_only_and_removable_change_live(tmp_path, start_server):
    """A read-only vdisk refuses writes (QEMU will not even open it read-write) until
    --read-write; an ejected removable vdisk is NOT READY, MEDIUM NOT PRESENT until loaded."""
    pool = tmp_path / "pool"
    run_cli(pool, "vdisk", "create", "ro", "--size", "64M")
    run_cli(pool, "vdisk", "create", "media", "--size", "64M", "--removable")
    server = start_server(pool=pool)
    ro, media = server.url(0), server.url(1)
    assert run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", ro]).returncode == 0
    server.cli("vdisk", "set", "ro", "--read-only")
    p = run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", ro])
    assert p.returncode != 0 and "write protected" in (p.stdout + p.stderr).lower()
    p = run(["qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 0 64k", ro])
    assert p.returncode == 0 and "read 65536/65536" in p.stdout, p.stdout + p.stderr
    server.cli("vdisk", "set", "ro", "--read-write")
    assert run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", ro]).returncode == 0

    assert "Removable:1" in run(["iscsi-inq", media]).stdout
    assert "Removable:0" in run(["iscsi-inq", ro]).stdout
    server.cli("vdisk", "eject", "media")
    # libiscsi's tools print no sense; the sense itself (3Ah/00h) is in tests/scsi/test_medium.py
    p = run(["iscsi-readcapacity16", media])
    assert p.returncode != 0, p.stdout
    assert run(["qemu-io", "-f", "raw", "-c", "read 0 4k", media]).returncode != 0
    server.cli("vdisk", "load", "media")
    p = run(["iscsi-readcapacity16", media])
    assert p.returncode == 0 and "Total size:67108864" in p.stdout, p.stdout + p.stderr
    assert run(["qemu-io", "-f", "raw", "-c", "read 0 4k", media]).returncode == 0
    # the fixed vdisk cannot be ejected
    bad = server.cli("vdisk", "eject", "ro", check=False)
    assert bad.returncode != 0 and "not removable" in bad.stderr
