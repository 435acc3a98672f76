"""The records of the pool's model tree, their key layout, and the checks of what people name.

Key layout of the meta DB. Text keys (UTF-8, values JSON) are the model tree; every atomic
change is one WriteBatch, written with sync so an acknowledged change survives a crash::

    pool/version                 2
    pool/au_size                 65536                              allocation unit, fixed
    pool/next_map                next extent-map id (u32)
    target/<iqn>                 {"iqn", "alias", "created"}
    vm/<uuid>                    {"uuid", "name", "guest_os", "active", "created", "meta_stale",
                                  "parent", "source", "hypervisor", "orphaned", "claims"}
                                                     parent: clone lineage; source: "" (vm
                                                     create), "libvirt:<hv>", "lvm:<vg>";
                                                     the rest: vmblock.meta.hypervisors
    vmname/<name>                "<vm uuid>"                       unique VM names
    vdisk/<uuid>                 {"uuid", "name", "vm", "size_bytes", "target", "lun",
                                  "block_size", "created", "map_id", "parent", "tier",
                                  "read_only", "removable", "physical_block_size"}
                                                     tier: "capacity" | "flash", where new
                                                     allocations go (vdisk move); block_size
                                                     512 or 4096 (4Kn), read_only: writes get
                                                     DATA PROTECT; removable: RMB=1, ejectable
    vdiskname/<name>             "<vdisk uuid>"                    unique vdisk names
    lun/<iqn>/<lun:05d>          "<vdisk uuid>"                    LUN map of each target
    snapshot/<uuid>              {"uuid", "name", "vm", "vdisk", "created",
                                  "disks": [{"vdisk", "name", "map_id", "src_map",
                                             "size_bytes", "used_bytes"}]}
    snapname/<scope>/<name>      "<snapshot uuid>"   scope: VM uuid (VM snapshot) or vdisk uuid
    event/<usec:020d>/<kind>     {"id", "time", "kind", "severity", "message", "vm"?, "vdisk"?,
                                  "advice"?, ...}   Pool.record_event; store events (low space)
    config/<dotted.key>          "<value>"                          see vmblock.settings.TABLE
    datastore/<vdisk uuid>       {"type", "vg", "seqno", "volumes", "watch", "problem", ...}
                                 what a vdisk holds (an LVM2 PV): vmblock.meta.datastores
    pr/<vdisk uuid>              {"generation", "type", "holder", "registrations": [{"initiator",
                                  "isid", "target", "tpgt", "key"}]}   persistent reservations
                                                     with APTPL: vmblock.meta.reservations
    cachegroup/, cacheassign/, cachepin/                eviction groups: vmblock.meta.groups
    hypervisor/<name>            {"name", "uri", "interval", "created"}: vmblock.meta.hypervisors

Binary keys ``M<map id><vAU>`` hold the extent maps; their layout is documented in
``vmblock.store.extent``, which owns them. A vdisk record and its map keys change in the same
batch, so a crash never leaves a vdisk without its map or a map without its owner.

This module is the bottom of ``vmblock.meta``: the dataclasses each record reads back into, the
name and size rules, and the helpers that encode a record into a batch. It imports no other
module of the package; ``pool``, ``snapshots``, ``config`` and ``check`` build on it.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from rocksdict import WriteBatch

from vmblock.errors import InvalidArgument
from vmblock.settings import MAX_VDISK_BYTES
from vmblock.units import format_size

MAX_LUN = 16383            # SAM-5 flat space addressing
BLOCK_SIZE = 512
# the logical block sizes a vdisk can have: 512 (with 4 KiB physical blocks) and 4Kn
BLOCK_SIZES = (512, 4096)
# 24-bit company id in IEEE CID form (second-lowest bit of the first octet set: locally assigned,
# not an IEEE-registered OUI) placed in the NAA designator of every vdisk.
VMBLOCK_CID = 0x7A6D62
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


EVENT_SEVERITIES = ("info", "warning", "error", "critical")


def now() -> str:
    """The time a record is created, as stored: UTC ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_size(size_bytes: int, block_size: int = BLOCK_SIZE) -> None:
    """A vdisk size the pool can describe: whole blocks, above 0, at most MAX_VDISK_BYTES."""
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int):
        raise InvalidArgument(f"size must be a number of bytes, not {type(size_bytes).__name__}")
    if size_bytes <= 0 or size_bytes % block_size:
        raise InvalidArgument(f"size must be a positive multiple of {block_size} bytes, "
                              f"not {size_bytes}")
    if size_bytes > MAX_VDISK_BYTES:
        raise InvalidArgument(f"size {format_size(size_bytes)} is over the largest vdisk, "
                              f"{format_size(MAX_VDISK_BYTES)}")


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a valid name of a ``kind`` (VM, vdisk, snapshot); else InvalidArgument."""
    if not name or len(name) > 128 or not set(name) <= _NAME_CHARS or name[0] in ".-":
        raise InvalidArgument(f"bad {kind} name {name!r} (letters, digits, '.', '_', '-'; "
                              f"at most 128, not starting with '.' or '-')")
    return name


@dataclass
class Target:
    """A target's record in the pool (``target/<iqn>``); its LUNs are separate ``lun/`` keys."""

    iqn: str
    alias: str = ""
    created: str = ""

    def dump(self) -> dict:
        """The record as a JSON-ready dict: what is stored and what the admin verbs return."""
        return asdict(self)


@dataclass
class Vm:
    """A VM's record (``vm/<uuid>``, named by ``vmname/<name>``): descriptive fields and
    clone lineage; its vdisks point at it, not the other way round."""

    uuid: str
    name: str
    guest_os: str = ""
    active: bool = False
    created: str = ""
    meta_stale: bool = False
    parent: dict | None = None      # clone lineage: source VM and snapshot
    location: str = ""              # where it runs: hypervisor host / datastore reference
    policies: dict = field(default_factory=dict)   # named policies (QoS, quota) by kind
    # what learned it: "" made by hand (vm create), "libvirt:<hypervisor>"
    # (vmblock.meta.hypervisors), "lvm:<vg>" (a datastore scan, vmblock.meta.datastores)
    source: str = ""
    hypervisor: str = ""            # the hypervisor record whose domain this is (primary)
    orphaned: bool = False          # its domain was undefined; the VM and its data stay
    claims: dict = field(default_factory=dict)     # hypervisor -> what its domain says

    EDITABLE = ("guest_os", "location", "active")

    def dump(self) -> dict:
        """The record as a JSON-ready dict: what is stored and what the admin verbs return.
        A shallow copy (``asdict`` deep-copies, a third of ``vm list`` at 1,000 VMs): the
        nested values (lineage, policies) are plain JSON already and shared with this record."""
        return dict(vars(self))


@dataclass
class Vdisk:
    """A vdisk's record (``vdisk/<uuid>``): its owner VM, size in bytes, where it is served
    (target, LUN), its live extent map and tier."""

    uuid: str
    name: str
    vm: str | None          # owning VM's uuid
    size_bytes: int
    target: str
    lun: int
    block_size: int = BLOCK_SIZE
    created: str = ""
    map_id: int = 0                 # its live extent map (vmblock.store.extent)
    parent: dict | None = None      # clone lineage: source vdisk, snapshot and map
    tier: str = "capacity"          # where its new AUs go; `vdisk move` relocates the rest
    read_only: bool = False         # `vdisk set --read-only`: writes get DATA PROTECT
    removable: bool = False         # `vdisk create --removable`: RMB=1, `vdisk eject|load`
    physical_block_size: int = 4096     # READ CAPACITY(16) LBPPB: 4096 (512e), or 512 (512n)
    qos: dict = field(default_factory=dict)     # its own QoS (vdisk set), else its VM's

    @property
    def serial(self) -> str:
        """Unit serial number (VPD 0x80): stable for the vdisk's life, unique in the pool."""
        return uuidlib.UUID(self.uuid).hex

    @property
    def naa(self) -> int:
        """NAA IEEE Registered Extended identifier (SPC-4 7.8.6.6.5): 128 bits, because NAA 6 is
        defined only in the 16-byte form: NAA 6, 24-bit company id, 100 bits of the vdisk uuid."""
        low = uuidlib.UUID(self.uuid).int & ((1 << 100) - 1)
        return (0x6 << 124) | (VMBLOCK_CID << 100) | low

    def dump(self) -> dict:
        """The record for the admin verbs: ``vm`` shown as ``vm_uuid``, plus the serial and NAA
        initiators see. The stored form is ``asdict`` (Vdisk(**v) reads it back)."""
        d = dict(vars(self))        # shallow, as Vm.dump: ``parent`` is plain JSON
        d["vm_uuid"] = d.pop("vm")
        d["serial"] = self.serial
        d["naa"] = f"{self.naa:032x}"
        return d


@dataclass
class Snapshot:
    """A snapshot's record: of a whole VM (``vdisk`` None) or of one vdisk; ``disks`` holds,
    per vdisk, the frozen map it was copied to and the size and bytes used then."""

    uuid: str
    name: str
    vm: str | None              # VM uuid: the VM snapshotted, or the owner of the vdisk
    vdisk: str | None           # vdisk uuid for a one-vdisk snapshot, None for a VM snapshot
    disks: list[dict] = field(default_factory=list)
    created: str = ""

    @property
    def scope(self) -> str:
        """The uuid its name is unique within: the vdisk's (one-vdisk snapshot), else the VM's."""
        return self.vdisk or self.vm or ""

    def dump(self) -> dict:
        """The record as a JSON-ready dict: what is stored and what the admin verbs return."""
        return asdict(self)


def new_batch() -> WriteBatch:
    """An empty batch of raw keys: one atomic change of the meta DB."""
    return WriteBatch(raw_mode=True)


def put_record(batch: WriteBatch, key: str, value) -> None:
    """Store ``value`` as JSON at the text key ``key`` in ``batch``."""
    batch.put(key.encode(), json.dumps(value).encode())


def delete_record(batch: WriteBatch, key: str) -> None:
    """Remove the text key ``key`` in ``batch``."""
    batch.delete(key.encode())


def put_vdisk(batch: WriteBatch, disk: Vdisk) -> None:
    """A vdisk's record and its two indexes (name, LUN of its target) into ``batch``."""
    put_record(batch, f"vdisk/{disk.uuid}", asdict(disk))
    put_record(batch, f"vdiskname/{disk.name}", disk.uuid)
    put_record(batch, f"lun/{disk.target}/{disk.lun:05d}", disk.uuid)
