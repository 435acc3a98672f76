"""``vm import``: a domain's image files copied thin onto new vdisks, and the domain switched.

The parts, each run where it belongs:

* ``image_disks`` (server): which disks of the domain are image files to copy (``<disk
  type='file' device='disk'>``, raw or qcow2) and why the others are left alone;
* ``image_size`` (server, off the loop): the virtual size ``qemu-img info`` reads;
* ``copy_image`` (the CLI): ``qemu-img convert -n --target-is-zero`` straight onto the LUN.
  qemu-img walks the image's allocation (qcow2 metadata, SEEK_DATA/SEEK_HOLE of a raw file)
  and, told the target reads zeros (a new vdisk does), writes only the data: holes and zero
  clusters stay unallocated. The target's CHAP secret goes to qemu-img in an owner-only file
  (``--object secret,file=``), never on its command line;
* ``switched_xml`` and ``chap_secret_xml`` (server): the domain's XML with those disks made
  ``<disk type='network'>`` iSCSI disks on the new LUNs, and the libvirt secret holding the
  target's CHAP secret that they name.

Images are read where vmblock runs: the hypervisor must be local (its URI names no other
host). For a remote host, copy the images here first or run vmblock's import on that host.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from vmblock.errors import InvalidArgument
from vmblock.hypervisor.domains import LIBOSINFO_NS, Domain

IMAGE_FORMATS = ("raw", "qcow2")
QEMU_IMG_TIMEOUT = 60.0          # seconds for ``qemu-img info``
_PROGRESS = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


def image_disks(domain: Domain) -> tuple[list, list[dict]]:
    """(disks to copy, [{target, reason}] of the others): file disks in raw or qcow2."""
    images, skipped = [], []
    for disk in domain.disks:
        why = ""
        if disk.device != "disk":
            why = f"a {disk.device}, not a disk"
        elif disk.type != "file" or not disk.source.get("file"):
            why = f"a {disk.type or 'typeless'} disk, not an image file"
        elif (disk.format or "raw") not in IMAGE_FORMATS:
            why = f"format {disk.format}, not raw or qcow2"
        if why:
            skipped.append({"target": disk.target, "reason": why})
        else:
            images.append(disk)
    return images, skipped


def image_size(path: str, fmt: str) -> int:
    """The virtual size in bytes of image ``path`` (``qemu-img info``); InvalidArgument
    when it cannot be read as ``fmt``."""
    p = subprocess.run(["qemu-img", "info", "--output=json", "-U", "-f", fmt, path],
                       capture_output=True, text=True, timeout=QEMU_IMG_TIMEOUT)
    if p.returncode != 0:
        raise InvalidArgument(f"cannot read image {path}: {p.stderr.strip()}")
    return int(json.loads(p.stdout)["virtual-size"])


@dataclass(frozen=True)
class LunAddress:
    """Where a vdisk is served and the CHAP that target asks (user "" when none)."""

    host: str
    port: int
    iqn: str
    lun: int
    chap_user: str = ""
    chap_secret: str = ""


def copy_image(path: str, fmt: str, lun: LunAddress, progress: Callable[[float], None],
               shared: bool = False) -> None:
    """Copy image ``path`` onto a new (all-zero) LUN, only its data; ``progress(percent)`` as
    qemu-img reports it; ``shared``: the image is in use by a running QEMU (read past its
    lock, ``-U``). Raises InvalidArgument with qemu-img's message when it fails;
    interrupted (KeyboardInterrupt), qemu-img is stopped before this returns."""
    opts = (f"driver=iscsi,transport=tcp,portal={lun.host}:{lun.port},target={lun.iqn},"
            f"lun={lun.lun}")
    with tempfile.TemporaryDirectory(prefix="vmblock-import-") as tmp:   # 0700
        args = ["qemu-img", "convert", "-p", "-n", "--target-is-zero", "-f", fmt]
        args += (["-U"] if shared else []) + [path]
        if lun.chap_user:
            secret = os.path.join(tmp, "secret")
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(lun.chap_secret)
            args += ["--object", f"secret,id=chap,file={secret}"]
            opts += f",user={lun.chap_user},password-secret=chap"
        args += ["--target-image-opts", opts]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            for chunk in iter(lambda: proc.stdout.read1(256), b""):
                for m in _PROGRESS.finditer(chunk):
                    progress(float(m.group(1)))
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise InvalidArgument(f"copying {path} failed: {err}")


def chap_secret_xml(usage: str, iqn: str) -> str:
    """A libvirt secret (iSCSI usage ``usage``) for the CHAP secret of target ``iqn``."""
    secret = ET.Element("secret", ephemeral="no", private="yes")
    ET.SubElement(secret, "description").text = f"vmblock CHAP secret of {iqn}"
    usage_el = ET.SubElement(secret, "usage", type="iscsi")
    ET.SubElement(usage_el, "target").text = usage
    return ET.tostring(secret, encoding="unicode")


def secret_usage(iqn: str) -> str:
    """The usage name of the libvirt secret holding ``iqn``'s CHAP secret."""
    return f"vmblock-{iqn}"


def switched_xml(xml: str, luns: dict[str, LunAddress]) -> str:
    """The domain XML with each disk whose target dev is in ``luns`` made an iSCSI network
    disk on that LUN (raw; its target, address and boot order kept)."""
    ET.register_namespace("libosinfo", LIBOSINFO_NS)
    root = ET.fromstring(xml)
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        lun = luns.get(target.get("dev", "") if target is not None else "")
        if lun is None:
            continue
        disk.set("type", "network")
        for old in disk.findall("source") + disk.findall("backingStore") + disk.findall("auth"):
            disk.remove(old)
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu")
        driver.set("type", "raw")
        source = ET.Element("source", protocol="iscsi", name=f"{lun.iqn}/{lun.lun}")
        ET.SubElement(source, "host", name=lun.host, port=str(lun.port))
        if lun.chap_user:
            auth = ET.SubElement(source, "auth", username=lun.chap_user)
            ET.SubElement(auth, "secret", type="iscsi", usage=secret_usage(lun.iqn))
        disk.insert(list(disk).index(driver) + 1, source)
    return ET.tostring(root, encoding="unicode")


def define_switched(conn, xml: str, secrets: dict[str, tuple[str, str]]) -> None:
    """On the connection's thread: make sure each libvirt secret (usage -> (iqn, CHAP
    secret)) exists and holds its value, then define the domain from ``xml``."""
    import libvirt
    for usage, (iqn, value) in secrets.items():
        try:
            secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage)
        except libvirt.libvirtError:
            secret = conn.secretDefineXML(chap_secret_xml(usage, iqn), 0)
        secret.setValue(value.encode(), 0)
    conn.defineXML(xml)


def read_domain(conn, name: str) -> tuple[str, int]:
    """On the connection's thread: (XML, state) of the domain named (or with uuid) ``name``;
    InvalidArgument when there is none."""
    import libvirt
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        try:
            dom = conn.lookupByUUIDString(name)
        except libvirt.libvirtError:
            raise InvalidArgument(f"no domain {name!r} on this hypervisor") from None
    return dom.XMLDesc(0), dom.state()[0]
