"""A Linux guest sees a vmblock LUN through ``-device scsi-block``: QEMU passes the guest's own
SCSI commands (INQUIRY and its VPD pages, READ CAPACITY(16), MODE SENSE, UNMAP, SYNCHRONIZE
CACHE ...) through its libiscsi driver to vmblock, so the guest kernel's sd driver reads the
block sizes, discard limits and write cache from vmblock's answers.

The guest is the distribution kernel (``/boot/vmlinuz-*``, Debian's linux-image-cloud-amd64, with
its own modules for virtio-scsi and sd) and an initramfs made here: busybox-static, the host's
mke2fs and e2fsck with their libraries, and an ``/init`` that prints what sysfs says about
``/dev/sda``, makes an ext4 file system, writes a file, trims and checks it. TCG only (no KVM
here): one boot takes about 20 s on the shared 2-CPU machine, so, as the other VM boots, it is
not marked slow.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from support.server import run_cli

from vmblock.scsi.lu import MAX_UNMAP_BYTES
from vmblock.store.layout import AU_SIZE

GUEST_WAIT = 240            # seconds for the guest to print its last marker under TCG
KERNELS = sorted(Path("/boot").glob("vmlinuz-*"))
# the modules the guest loads (with what they depend on) to see a virtio-scsi disk
GUEST_MODULES = ("virtio_pci", "virtio_scsi", "sd_mod", "crc32c_generic")
GUEST_TOOLS = ("/usr/sbin/mke2fs", "/usr/sbin/e2fsck")
INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /mnt /tmp
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m; done
i=0; while [ ! -b /dev/sda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
q=/sys/block/sda/queue
echo "VMBLOCK-SYSFS lbs=$(cat $q/logical_block_size) pbs=$(cat $q/physical_block_size)\
 dmax=$(cat $q/discard_max_bytes) dgran=$(cat $q/discard_granularity)\
 cache=$(cat /sys/block/sda/device/scsi_disk/*/cache_type | tr ' ' _)"
/sbin/mke2fs -t ext4 -F -q /dev/sda && echo VMBLOCK-MKFS-OK
mount -t ext4 /dev/sda /mnt && echo vmblock > /mnt/hello && sync && fstrim -v /mnt \
 && umount /mnt && echo VMBLOCK-WRITE-OK
/sbin/e2fsck -f -n /dev/sda && echo VMBLOCK-FSCK-OK
mount -t ext4 -o ro /dev/sda /mnt && echo "VMBLOCK-READ $(cat /mnt/hello)" && umount /mnt
echo VMBLOCK-DONE
poweroff -f
"""

needs_guest = pytest.mark.skipif(
    not (KERNELS and shutil.which("busybox") and shutil.which("qemu-system-x86_64")
         and all(Path(t).exists() for t in GUEST_TOOLS)),
    reason="needs /boot/vmlinuz-* with its modules, busybox and qemu-system-x86_64 (Debian "
           "linux-image-cloud-amd64, busybox-static, qemu-system-x86; tools/test.sh installs "
           "them)")


def _modinfo_depends(ko: Path) -> list[str]:
    m = re.search(rb"depends=([^\0]*)\0", ko.read_bytes())
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def _module_order(moddir: Path, names) -> list[Path]:
    """The .ko files of ``names`` and everything they depend on, dependencies first."""
    by_name = {p.name.split(".ko")[0].replace("-", "_"): p for p in moddir.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str) -> None:
        path = by_name.get(name.replace("-", "_"))
        if path is None or path in order:       # built in, or already there
            return
        for dep in _modinfo_depends(path):
            visit(dep)
        order.append(path)
    for name in names:
        visit(name)
    return order


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return re.findall(r"(/\S+) \(0x", out)


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A gzipped newc cpio archive of (path, mode, data); symlinks are mode 0o120777."""
    buf = io.BytesIO()
    for ino, (name, mode, data) in enumerate(entries + [("TRAILER!!!", 0, b"")], 1):
        raw = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0))
        buf.write(hdr.encode() + raw + b"\0" * (-(110 + len(raw)) % 4))
        buf.write(data + b"\0" * (-len(data) % 4))
    return gzip.compress(buf.getvalue())


def build_initramfs(kernel: Path, dest: Path) -> None:
    """busybox, mke2fs/e2fsck and their libraries, the modules in load order, ``/init``."""
    version = kernel.name.removeprefix("vmlinuz-")
    moddir = Path("/lib/modules") / version
    dirs = {"bin", "sbin", "etc", "lib", "lib/modules", "proc", "sys", "dev", "mnt", "tmp"}
    files: list[tuple[str, int, bytes]] = [
        ("init", 0o100755, INIT.encode()),
        ("bin/busybox", 0o100755, Path(shutil.which("busybox")).read_bytes()),
    ]
    for tool in GUEST_TOOLS:
        files.append((f"sbin/{Path(tool).name}", 0o100755, Path(tool).read_bytes()))
        for lib in _libraries(tool):
            rel = lib.lstrip("/")
            parent = Path(rel).parent
            while str(parent) != ".":
                dirs.add(str(parent))
                parent = parent.parent
            files.append((rel, 0o100755, Path(lib).resolve().read_bytes()))
    if Path("/etc/mke2fs.conf").exists():
        files.append(("etc/mke2fs.conf", 0o100644, Path("/etc/mke2fs.conf").read_bytes()))
    order = _module_order(moddir, GUEST_MODULES)
    files += [(f"lib/modules/{ko.name}", 0o100644, ko.read_bytes()) for ko in order]
    files.append(("modules.order", 0o100644, "\n".join(ko.name for ko in order).encode()))
    seen: set[str] = set()
    entries = [(d, 0o040755, b"") for d in sorted(dirs)]
    for name, mode, data in files:
        if name not in seen:
            seen.add(name)
            entries.append((name, mode, data))
    dest.write_bytes(_cpio(entries))


def boot_guest(kernel: Path, initrd: Path, url: str, workdir: Path) -> str:
    """Boot the guest with the LUN as ``scsi-block`` until it prints VMBLOCK-DONE (or stops);
    its serial output. QEMU is always gone before this returns."""
    serial = workdir / "serial.txt"
    cmd = ["qemu-system-x86_64", "-nodefaults", "-display", "none", "-accel", "tcg",
           "-m", "512", "-no-reboot", "-serial", f"file:{serial}",
           "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", "console=ttyS0 panic=-1 quiet",
           "-device", "virtio-scsi-pci,id=scsi0",
           "-drive", f"file={url},format=raw,if=none,id=lun0,cache=none",
           "-device", "scsi-block,drive=lun0,bus=scsi0.0"]
    log = workdir / "qemu.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + GUEST_WAIT
        while time.monotonic() < deadline and proc.poll() is None:
            if serial.exists() and "VMBLOCK-DONE" in serial.read_text(errors="replace"):
                break
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = serial.read_text(errors="replace") if serial.exists() else ""
    assert "VMBLOCK-DONE" in text, (f"$ {' '.join(cmd)}\n--- serial ---\n{text[-6000:]}\n"
                                    f"--- qemu ---\n{log.read_text(errors='replace')}")
    return text


@needs_guest
@pytest.mark.timeout(GUEST_WAIT + 120)
@pytest.mark.parametrize("block_size", [512, 4096])
def test_linux_guest_on_scsi_block(start_server, tmp_path, block_size):
    """The guest's sd driver sees the block sizes, the discard limits and the write-back
    cache vmblock reports, and makes, trims and checks an ext4 file system on the LUN."""
    pool = tmp_path / "pool"
    run_cli(pool, "vdisk", "create", "guest", "--size", "1G", "--block-size", str(block_size))
    server = start_server(pool=pool)
    kernel = KERNELS[-1]
    initrd = tmp_path / "initrd.gz"
    build_initramfs(kernel, initrd)
    text = boot_guest(kernel, initrd, server.url(0), tmp_path)
    sysfs = dict(re.findall(r"(\w+)=(\S+)", re.search(r"VMBLOCK-SYSFS (.*)", text).group(1)))
    assert int(sysfs["lbs"]) == block_size
    assert int(sysfs["pbs"]) == 4096
    assert int(sysfs["dmax"]) == MAX_UNMAP_BYTES
    assert int(sysfs["dgran"]) == AU_SIZE
    assert sysfs["cache"] == "write_back"
    for marker in ("VMBLOCK-MKFS-OK", "VMBLOCK-WRITE-OK", "VMBLOCK-FSCK-OK", "VMBLOCK-READ vmblock"):
        assert marker in text, text[-4000:]
