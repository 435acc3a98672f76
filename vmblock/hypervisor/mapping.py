"""Which disks of a domain are this server's LUNs; for the others, why not. Never a guess.

A disk maps to a vdisk when it is

* ``<disk type='network'><source protocol='iscsi' name='IQN/LUN'><host name=H port=P/>``
  with IQN/LUN served here and H:P one of this server's portals (seen from the hypervisor's
  host: a loopback address there is this machine only when the hypervisor runs here);
* ``<disk type='block'>`` whose path names this server's LUN the way udev names the kernel
  initiator's disks: ``/dev/disk/by-id/wwn-0x<NAA>`` and ``scsi-3<NAA>`` (the NAA designator
  of VPD page 83h, ``Vdisk.naa``), ``/dev/disk/by-path/ip-H:P-iscsi-IQN-lun-N``; on a local
  hypervisor any other path (``/dev/sdc``) is resolved to the device node and matched through
  the links udev made to it in those two directories.

These calls may resolve host names and read ``/dev``: run them off the event loop.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from vmblock.hypervisor.domains import Disk

ISCSI_PORT = 3260               # RFC 7143 13.9: the well-known port
WILDCARDS = ("", "0.0.0.0", "::")
BY_ID = "/dev/disk/by-id"
BY_PATH = "/dev/disk/by-path"
_WWN = re.compile(r"^wwn-0x([0-9a-f]+)$")
_SCSI_NAA = re.compile(r"^scsi-3([0-9a-f]+)$")      # scsi_id: "3" = NAA designator
_BY_PATH = re.compile(r"^ip-(.+):(\d+)-iscsi-(iqn\..+|eui\..+|naa\..+)-lun-(\d+)$")


@dataclass
class Served:
    """What this server serves, as the mapping needs it (a copy taken on the event loop)."""

    portals: list[tuple[str, int]] = field(default_factory=list)
    luns: dict[tuple[str, int], str] = field(default_factory=dict)   # (iqn, lun) -> vdisk
    by_naa: dict[str, str] = field(default_factory=dict)     # 32 hex digits -> vdisk uuid
    resolved: dict[str, set[str]] = field(default_factory=dict)  # host -> addresses, this read

    def addresses(self, host: str) -> set[str]:
        """``resolve(host)``, once per host for the life of this copy (one read of domains)."""
        if host not in self.resolved:
            self.resolved[host] = resolve(host)
        return self.resolved[host]


def resolve(host: str) -> set[str]:
    """The IP addresses ``host`` names (itself when it is one); empty when it resolves to none."""
    host = host.strip("[]")
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        return {ai[4][0] for ai in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return set()


def is_local(addr: str) -> bool:
    """Whether ``addr`` is an address of this machine (binding a socket to it works)."""
    ip = ipaddress.ip_address(addr)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, 0))
        except OSError:
            return False
    return True


def hypervisor_is_local(uri: str) -> bool:
    """Whether the libvirt URI's hypervisor runs on this machine (no host, or a local one)."""
    host = urlsplit(uri).hostname
    return not host or any(is_local(a) for a in resolve(host))


def our_portal(host: str, port: int, served: Served, local: bool) -> bool:
    """Whether host:port (as the hypervisor's host sees it) reaches one of our portals."""
    addrs = served.addresses(host)
    if not addrs or (not local and any(ipaddress.ip_address(a).is_loopback for a in addrs)):
        return False
    for bhost, bport in served.portals:
        if bport != port:
            continue
        if bhost in WILDCARDS:
            if any(is_local(a) for a in addrs):
                return True
        elif addrs & served.addresses(bhost):
            return True
    return False


def map_disk(disk: Disk, served: Served, local: bool) -> tuple[str | None, str]:
    """(vdisk uuid, "") when ``disk`` is one of our LUNs, else (None, why not)."""
    if not disk.source:
        return None, "no source (an empty drive)"
    if disk.type == "network":
        return _map_network(disk, served, local)
    if disk.type == "block":
        return _map_block(disk.source.get("dev", ""), served, local)
    return None, f"a {disk.type or 'typeless'} disk, not a LUN of this server"


def _map_network(disk: Disk, served: Served, local: bool) -> tuple[str | None, str]:
    protocol = disk.source.get("protocol", "")
    if protocol != "iscsi":
        return None, f"network protocol {protocol or 'none'}, not iscsi"
    iqn, _, lun = disk.source.get("name", "").rpartition("/")
    if not iqn or not lun.isdigit():
        return None, f"iscsi name {disk.source.get('name', '')!r} is not IQN/LUN"
    hosts = disk.source.get("hosts") or []
    if not hosts:
        return None, "iscsi disk without a <host>"
    host = hosts[0].get("name", "")
    port = hosts[0].get("port", str(ISCSI_PORT))
    if not port.isdigit() or not our_portal(host, int(port), served, local):
        return None, f"portal {host}:{port} is not this server's"
    return _by_lun(iqn, int(lun), served)


def _by_lun(iqn: str, lun: int, served: Served) -> tuple[str | None, str]:
    uid = served.luns.get((iqn, lun))
    return (uid, "") if uid else (None, f"{iqn} LUN {lun} is not served here")


def _by_name(name: str, served: Served, local: bool) -> tuple[str | None, str] | None:
    """The answer for one /dev/disk/by-id or by-path link name; None when no pattern fits."""
    m = _WWN.match(name) or _SCSI_NAA.match(name)
    if m:
        uid = served.by_naa.get(m.group(1).lower())
        return (uid, "") if uid else (None, f"{name}: no vdisk here has that NAA")
    m = _BY_PATH.match(name)
    if m:
        host, port, iqn, lun = m.groups()
        if not our_portal(host, int(port), served, local):
            return None, f"portal {host}:{port} is not this server's"
        return _by_lun(iqn, int(lun), served)
    return None


def _map_block(path: str, served: Served, local: bool) -> tuple[str | None, str]:
    if not path:
        return None, "block disk without a dev path"
    if os.path.dirname(path) in (BY_ID, BY_PATH):
        found = _by_name(os.path.basename(path), served, local)
        if found is not None:
            return found
    if not local:
        return None, f"{path} names no LUN of this server by WWN or by-path"
    try:
        node = os.path.realpath(path, strict=True)
    except OSError:
        return None, f"{path} does not exist on this host"
    for directory in (BY_ID, BY_PATH):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if os.path.realpath(os.path.join(directory, name)) == node:
                found = _by_name(name, served, local)
                if found is not None and found[0]:
                    return found
    return None, f"{path} is not a disk of this server (no WWN or iSCSI path of ours)"
