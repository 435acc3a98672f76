"""LVM2 images made by the real lvm2 tools on a loop device.

This kernel has no device-mapper, so ``lvcreate`` fails ("striped: Required device-mapper
target(s) not detected"); ``pvcreate``, ``vgcreate`` and ``vgcfgrestore`` work. So a VG is made
with ``pvcreate`` + ``vgcreate`` and its LVs are declared in a metadata file taken from
``vgcfgbackup`` and written back with ``vgcfgrestore``, each time a new seqno, exactly as
lvm2 writes it (label, metadata area header, the text in the circular buffer).

Every lvm command gets ``--devices LOOP`` (nothing else on the host is scanned or touched) and
a ``--config`` that turns off the backup and archive files under /etc/lvm and udev. The loop
device is always detached (``loop_device``'s ``finally``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.clients import cli_json, qemu_io
from support.server import run_cli

MiB = 1 << 20
EXTENT = 4 * MiB                # vgcreate's default extent size
LVM_CONFIG = ("backup/backup=0 backup/archive=0 devices/use_devicesfile=0 "
              "activation/udev_sync=0 activation/monitoring=0")
TIMEOUT = 60
EVENT_DEADLINE = 30.0           # seconds a live server has to record an expected event


def lvm_available() -> str | None:
    """Why LVM images cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (losetup)"
    for tool in ("losetup", "pvcreate", "vgcreate", "vgcfgrestore", "vgcfgbackup"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install lvm2)"
    return None


needs_lvm = pytest.mark.skipif(lvm_available() is not None, reason=str(lvm_available()))
# the live datastore tests: lvm2, and qemu-img / qemu-io to put the image on a LUN and drive it
LIVE_MARKS = [needs_lvm, pytest.mark.skipif(
    not (shutil.which("qemu-io") and shutil.which("qemu-img")),
    reason="needs qemu-io and qemu-img (Debian qemu-utils + qemu-block-extra)")]

# The datastore the live tests put on a LUN: VG pve of PVE_SIZE, pe_start 1 MiB, extents of
# 4 MiB: vm-100-disk-0 at 1-9 MiB and 25-29 MiB, vm-100-disk-1 at 9-13 MiB, db-web01 at
# 13-25 MiB; the next version adds vm-102-disk-0 at 37-41 MiB. HOST_VM owns the LUN's vdisk
# (its label, metadata and free extents); db-<name> LVs belong to VM <name> (DB_PATTERN).
PVE_SIZE = 64 * MiB
PVE_V1 = {"vm-100-disk-0": [(0, 2), (6, 1)], "vm-100-disk-1": [(2, 1)], "db-web01": [(3, 3)]}
PVE_V2 = dict(PVE_V1, **{"vm-102-disk-0": [(9, 1)]})
HOST_VM = "host"
DB_PATTERN = "^db-(?P<vm>.+)$"
IO_TIMEOUT = 120


def _run(*args: str) -> str:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=TIMEOUT,
                       env=dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1"))
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    return p.stdout


@contextmanager
def loop_device(image: Path):
    """``image`` attached to a free loop device, detached afterwards whatever happens."""
    dev = _run("losetup", "--find", "--show", str(image)).strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=TIMEOUT)


def lvm(dev: str, command: str, *args: str) -> str:
    """Run one lvm2 command that sees only ``dev``."""
    return _run(command, "--config", LVM_CONFIG, "--devices", dev, *args)


def lv_text(name: str, segments: list[tuple[int, int]], uid: str, pv: str = "pv0") -> str:
    """One linear LV's section: ``segments`` = (first physical extent, extents) in LV order."""
    out = [f"{name} {{", f'id = "{uid}"', 'status = ["READ", "WRITE", "VISIBLE"]',
           "flags = []", f"segment_count = {len(segments)}"]
    le = 0
    for i, (pe, count) in enumerate(segments, 1):
        out += [f"segment{i} {{", f"start_extent = {le}", f"extent_count = {count}",
                'type = "striped"', "stripe_count = 1", f'stripes = ["{pv}", {pe}]', "}"]
        le += count
    return "\n".join(out + ["}"])


def lv_uuid(i: int) -> str:
    """A valid-looking LVM uuid, distinct for each ``i``."""
    raw = f"{i:032d}".replace("0", "A")
    return "-".join((raw[:6], raw[6:10], raw[10:14], raw[14:18], raw[18:22], raw[22:26],
                     raw[26:]))


def write_vg(dev: str, vg: str, lvs: dict[str, list[tuple[int, int]]],
             extra: str = "") -> None:
    """Declare exactly ``lvs`` (name -> segments, see ``lv_text``) and ``extra`` raw LV
    sections in ``vg`` with vgcfgrestore: a new metadata version (seqno + 1). With thin
    volumes lvm2 asks for ``--force`` (their pool's own metadata is not checked)."""
    backup = Path(dev.replace("/dev/", "/tmp/vmblock-test-")).with_suffix(".vg")
    try:
        lvm(dev, "vgcfgbackup", "-f", str(backup), vg)
        text = backup.read_text()
        head = text[:text.index("physical_volumes")]
        pvs_start = text.index("physical_volumes")
        pvs = text[pvs_start:]
        depth, end = 0, None            # the physical_volumes section ends where its { closes
        for i, ch in enumerate(pvs):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
        body = "\n".join(lv_text(n, segs, lv_uuid(i)) for i, (n, segs) in
                         enumerate(sorted(lvs.items()), 1))
        new = (head + pvs[:end] + "\nlogical_volumes {\n" + body + "\n" + extra + "\n}\n}\n")
        backup.write_text(new)
        force = ["--force"] if 'type = "thin' in extra else []
        lvm(dev, "vgcfgrestore", *force, "-f", str(backup), vg)
    finally:
        backup.unlink(missing_ok=True)


def make_vg(image: Path, size: int, vg: str, lvs: dict[str, list[tuple[int, int]]],
            extra: str = "") -> None:
    """A ``size``-byte image holding one PV of VG ``vg`` with ``lvs`` (``write_vg``)."""
    with open(image, "wb") as f:
        f.truncate(size)
    with loop_device(image) as dev:
        lvm(dev, "pvcreate", "-ff", "-y", dev)
        lvm(dev, "vgcreate", "-s", f"{EXTENT // MiB}m", vg, dev)
        write_vg(dev, vg, lvs, extra)


def pv_image(tmp_path_factory, size: int, lvs: dict[str, list[tuple[int, int]]]) -> bytes:
    """The bytes of a PV of VG ``pve`` holding ``lvs`` (``make_vg``), for a module fixture;
    the test is skipped where lvm2 cannot run."""
    if needs_lvm.args[0]:
        pytest.skip(needs_lvm.kwargs["reason"])
    path = tmp_path_factory.mktemp("lvm") / "pv.img"
    make_vg(path, size, "pve", lvs)
    return path.read_bytes()


def change_vg(image: Path, vg: str, lvs: dict[str, list[tuple[int, int]]],
              extra: str = "") -> None:
    """The VG in ``image`` rewritten to declare ``lvs``: its next metadata version."""
    with loop_device(image) as dev:
        write_vg(dev, vg, lvs, extra)


def vg_versions(d: Path, size: int, vg: str, v1: dict, v2: dict) -> tuple[bytes, bytes, Path]:
    """Two versions of one VG in images under ``d``: (v1's bytes, v2's bytes, v1's path), v2
    being v1 changed to the LVs ``v2`` by vgcfgrestore (the next seqno)."""
    make_vg(d / "v1.img", size, vg, v1)
    shutil.copy(d / "v1.img", d / "v2.img")
    change_vg(d / "v2.img", vg, v2)
    return (d / "v1.img").read_bytes(), (d / "v2.img").read_bytes(), d / "v1.img"


def changed_runs(old: bytes, new: bytes, unit: int = 512) -> list[tuple[int, int]]:
    """(offset, length) of the runs of ``unit``-byte blocks that differ: what lvm2 wrote."""
    runs: list[list[int]] = []
    for off in range(0, len(new), unit):
        if old[off:off + unit] != new[off:off + unit]:
            if runs and runs[-1][0] + runs[-1][1] == off:
                runs[-1][1] += unit
            else:
                runs.append([off, unit])
    return [(a, b) for a, b in runs]


def events(server, kind: str) -> list[dict]:
    """The events of ``kind`` a live server recorded, oldest first."""
    return [e for e in cli_json(server, "events", "--limit", "0") if e["kind"] == kind]


def wait_event(server, kind: str, count: int) -> dict:
    """The ``count``-th event of ``kind`` once it is recorded."""
    deadline = time.monotonic() + EVENT_DEADLINE
    while True:
        found = events(server, kind)
        if len(found) >= count:
            return found[count - 1]
        assert time.monotonic() < deadline, f"no {count}th {kind} event: {found}"
        time.sleep(0.1)


def write_runs(url: str, old: bytes, new: bytes, tmp_path) -> int:
    """Write the 512-byte runs where ``new`` differs from ``old`` onto the LUN (qemu-io in
    writeback mode, as a host's page cache writes: no FUA, so with workers these overwrites
    would run in the worker unless forwarded): what lvm2 wrote. Returns how many runs."""
    runs = changed_runs(old, new)
    cmds = []
    for i, (off, n) in enumerate(runs):
        chunk = tmp_path / f"run{i}"
        chunk.write_bytes(new[off:off + n])
        cmds.append(f"write -s {chunk} {off} {n}")
    qemu_io(url, *cmds, cache="writeback")   # no FUA: in-place writes take a worker's fast path
    return len(runs)


def datastore_on_a_lun(start_server, pool: Path, image: Path, config: dict | None = None):
    """A live server on ``pool`` (``config`` set first, with a quick rescan and DB_PATTERN)
    whose vdisk ``pve-lun`` of HOST_VM holds ``image`` (``qemu-img convert -n`` through the
    LUN), once the server has read the datastore: (server, the LUN's URL, that
    ``datastore_changed`` event)."""
    settings = {"datastore.lvm.rescan_delay": "0.1", "datastore.lvm.vm_pattern": DB_PATTERN,
                **(config or {})}
    for key, value in settings.items():
        run_cli(pool, "config", "set", key, value)
    server = start_server(pool=pool)
    server.cli("vm", "create", HOST_VM)
    server.cli("vdisk", "create", "pve-lun", "--size", str(PVE_SIZE // MiB) + "M",
               "--vm", HOST_VM)
    url = server.url(cli_json(server, "vdisk", "show", "pve-lun")["lun"])
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(image), url],
                   check=True, timeout=IO_TIMEOUT, capture_output=True)
    return server, url, wait_event(server, "datastore_changed", 1)
