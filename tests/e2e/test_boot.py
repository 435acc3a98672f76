"""A QEMU guest boots from a vmblock LUN: SeaBIOS reads the boot sector through QEMU's iSCSI driver.

The boot sector (``tools/bootsector.py``, hand-assembled) prints ``VMBLOCK-BOOT-OK`` on COM1, then
reads one more sector with INT 13h AH=42h at a far LBA (the LUN's last one) and prints the string
the test put there, ``VMBLOCK-LBA-OK``. Seeing both on the serial port proves the BIOS read LBA 0
and the last LBA of the LUN through the whole stack: SeaBIOS's disk driver, QEMU's IDE/virtio
device, QEMU's iscsi block driver (libiscsi), the vmblock fabric, SCSI core and store.

TCG only (no KVM here). A local raw file boots the same sector first, so a failure of the iSCSI
boot is the target's, not the boot sector's.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BOOT_WAIT = 60           # seconds for the markers to appear on the serial port
SECTOR = 512


def _load_bootsector():
    spec = importlib.util.spec_from_file_location("vmblock_tools_bootsector",
                                                  REPO / "tools" / "bootsector.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bootsector = _load_bootsector()

needs_qemu = pytest.mark.skipif(
    not (shutil.which("qemu-system-x86_64") and shutil.which("qemu-io")
         and shutil.which("qemu-img")),
    reason="needs qemu-system-x86_64, qemu-io, qemu-img (Debian qemu-system-x86, qemu-utils, "
           "qemu-block-extra; tools/test.sh installs them)")


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and "error" not in (p.stdout + p.stderr).lower(), (
        f"$ {' '.join(cmd)}\nexit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def boot(drive: str, iface: str, workdir: Path) -> str:
    """Boot a TCG guest from ``drive`` until both markers (or an error marker) are on COM1;
    returns the serial output. QEMU is always killed before returning."""
    serial = workdir / f"serial-{iface}.txt"
    qlog = workdir / f"qemu-{iface}.log"
    cmd = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-accel", "tcg",
           "-m", "64", "-serial", f"file:{serial}", "-drive", f"{drive},if={iface}",
           "-boot", "c", "-no-reboot"]
    with open(qlog, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + BOOT_WAIT
        text = ""
        while time.monotonic() < deadline:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if (bootsector.STAGE2_MARKER in text or bootsector.DISK_ERROR_MARKER in text
                    or proc.poll() is not None):
                break
            time.sleep(0.2)
        text = serial.read_text(errors="replace") if serial.exists() else ""
        exited = proc.poll()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    context = (f"$ {' '.join(cmd)}\nQEMU {'exited ' + str(exited) if exited is not None else 'ran'}"
               f"\n--- serial ---\n{text}\n--- qemu ---\n{qlog.read_text(errors='replace')}")
    assert exited is None, f"QEMU stopped before the guest finished\n{context}"
    assert bootsector.BOOT_MARKER in text, f"no boot marker: the BIOS did not run LBA 0\n{context}"
    assert bootsector.DISK_ERROR_MARKER not in text, f"INT 13h read failed\n{context}"
    assert bootsector.STAGE2_MARKER in text, f"no stage-2 marker within {BOOT_WAIT}s\n{context}"
    return text


# --- the boot sector itself --------------------------------------------------------------------

def test_bootsector_is_one_sector_with_signature_and_marker():
    code = bootsector.assemble(123456)
    assert len(code) == SECTOR
    assert code[510:] == b"\x55\xAA"
    assert bootsector.BOOT_MARKER.encode() in code
    assert (123456).to_bytes(8, "little") in code       # the EDD packet's LBA
    assert code[446:510] == bytes(64)                   # partition table left empty


def test_bootsector_rejects_lba_zero():
    with pytest.raises(ValueError):
        bootsector.assemble(0)


@needs_qemu
@pytest.mark.timeout(90)
def test_bootsector_boots_from_a_local_raw_file(tmp_path):
    """The control: the same sector boots from a plain file (no iSCSI), so the sector works."""
    disk = tmp_path / "disk.raw"
    lba = (8 << 20) // SECTOR - 1
    with open(disk, "wb") as f:
        f.write(bootsector.assemble(lba))
        f.seek(lba * SECTOR)
        f.write(bootsector.stage2_sector())
    boot(f"file={disk},format=raw", "ide", tmp_path)


# --- booting from a LUN ------------------------------------------------------------------------

@needs_qemu
@pytest.mark.timeout(150)
@pytest.mark.parametrize("iface", ["ide", "virtio"])
def test_guest_boots_from_lun_and_reads_its_last_lba(vmblock_server, tmp_path, iface):
    """SeaBIOS boots the sector at LBA 0 of LUN 0 and reads the LUN's last LBA via INT 13h,
    all through QEMU's iscsi driver; IDE and virtio-blk are different SeaBIOS disk paths."""
    url = vmblock_server.url(0)
    info = json.loads(run(["qemu-img", "info", "--output=json", "-f", "raw", url]).stdout)
    last_lba = info["virtual-size"] // SECTOR - 1
    sector, stage2 = tmp_path / "boot.bin", tmp_path / "stage2.bin"
    sector.write_bytes(bootsector.assemble(last_lba))
    stage2.write_bytes(bootsector.stage2_sector())
    run(["qemu-io", "-f", "raw",
         "-c", f"write -s {sector} 0 {SECTOR}",
         "-c", f"write -s {stage2} {last_lba * SECTOR} {SECTOR}",
         url])
    boot(f"file={url},format=raw", iface, tmp_path)
