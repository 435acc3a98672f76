"""A libvirt domain's XML (``virDomainGetXMLDesc``) and state read into plain facts.

Only what vmblock uses: name, uuid, state, the libosinfo id of the guest OS
(``<metadata><libosinfo:os id=.../>``) and every ``<disk>`` of ``<devices>`` with its type,
device, target and source, whatever they are (a cdrom, a disk without a source): which of
them are this server's LUNs is ``vmblock.hypervisor.mapping``'s question.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from vmblock.errors import InvalidArgument

LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
# virDomainState (libvirt-domain.h): the names `virsh domstate` prints
STATES = {0: "nostate", 1: "running", 2: "blocked", 3: "paused", 4: "shutdown",
          5: "shutoff", 6: "crashed", 7: "pmsuspended"}
INACTIVE_STATES = ("shutoff", "nostate")


@dataclass
class Disk:
    """One ``<disk>`` of a domain: what libvirt says, and nothing guessed."""

    target: str                 # target dev ("vda"), "" when missing
    type: str                   # file, block, network, volume, ...
    device: str                 # disk, cdrom, floppy, lun
    source: dict = field(default_factory=dict)   # attributes of <source>, hosts as "hosts"
    format: str = ""            # <driver type=...>: raw, qcow2, ...

    def describe(self) -> dict:
        """The disk as shown in ``unmapped_disks``."""
        return {"target": self.target, "type": self.type, "device": self.device,
                "source": self.source, "format": self.format}


@dataclass
class Domain:
    """A domain as one hypervisor sees it."""

    uuid: str
    name: str
    state: str                  # one of STATES' names
    guest_os: str = ""          # libosinfo id, "" when the XML has none
    disks: list[Disk] = field(default_factory=list)

    @property
    def active(self) -> bool:
        """Whether the domain runs (paused and suspended count: its guest holds the disks)."""
        return self.state not in INACTIVE_STATES


def parse_domain(xml: str, state: int) -> Domain:
    """The facts of one domain from its XML and its ``virDomainState`` number;
    InvalidArgument when the XML is not a domain."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise InvalidArgument(f"domain XML does not parse: {e}") from None
    uid, name = root.findtext("uuid"), root.findtext("name")
    if root.tag != "domain" or not uid or not name:
        raise InvalidArgument("domain XML without <domain>, <name> or <uuid>")
    os_el = root.find(f"metadata/{{{LIBOSINFO_NS}}}libosinfo/{{{LIBOSINFO_NS}}}os")
    return Domain(uid.strip().lower(), name.strip(), STATES.get(state, "nostate"),
                  os_el.get("id", "") if os_el is not None else "",
                  [_disk(el) for el in root.findall("devices/disk")])


def _disk(el: ET.Element) -> Disk:
    target = el.find("target")
    driver = el.find("driver")
    src = el.find("source")
    source: dict = {}
    if src is not None:
        source = dict(src.attrib)
        hosts = [dict(h.attrib) for h in src.findall("host")]
        if hosts:
            source["hosts"] = hosts
    return Disk(target.get("dev", "") if target is not None else "",
                el.get("type", ""), el.get("device", "disk"), source,
                driver.get("type", "") if driver is not None else "")
