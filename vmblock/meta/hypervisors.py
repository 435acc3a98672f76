"""Hypervisor records and what their domains make of the pool's VMs (``vmblock hypervisor``).

Key layout (text keys, JSON values, written through ``Pool.write_records``)::

    hypervisor/<name>            {"name", "uri", "interval", "created"}
    vmimport/<vm uuid>           {"hypervisor", "domain", "vm", "disks": [{"target", "path",
                                  "format", "vdisk", "size_bytes", "done"}]}
                                 a ``vm import`` under way: what a re-run resumes (or
                                 ``abort`` undoes); gone once the import is finished

A VM learned from a hypervisor (``vmblock.hypervisor`` watches them) has, besides the usual
fields of ``vmblock.meta.model.Vm``:

* ``source``: ``"libvirt:<hypervisor>"`` (``""``: made by hand; other layers may name their
  own, e.g. ``"lvm:<vg>"``);
* ``hypervisor``: the record whose domain it is (where it runs, or last ran);
* ``claims``: per hypervisor that has a domain with this uuid, what that domain says
  (``domain``, ``state``, ``active``, ``host``): a live migration in flight or a real conflict
  shows as two claims, both kept;
* ``orphaned``: its domain was undefined everywhere; the VM and its vdisks stay;
* ``meta_stale``: its hypervisor cannot be reached, so these fields may be out of date.

The URI is stored as given; the pool is owner-only (``vmblock.meta.pool``), and a URI with a
password in it is refused: libvirt reads passwords from its ``auth.conf`` (``?authfile=``) or
uses ssh keys (``?keyfile=``), so only the path of such a file is ever stored here.

A domain's uuid becomes its VM's uuid. A VM made by hand that owns the vdisks a domain uses
and is not yet any hypervisor's is adopted: re-keyed to the domain's uuid in one batch, with
its vdisks, snapshots, clones' lineage and eviction-group assignment (``adopt_keys``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from vmblock.errors import AlreadyExists, InvalidArgument, NotFound
from vmblock.meta.model import Vm, check_name, now

PREFIX = "hypervisor/"
SOURCE_PREFIX = "libvirt:"
# libvirt URI schemes: driver[+transport]:// (virt-uri docs); the driver part is a word
_SCHEME = re.compile(r"^[a-z][a-z0-9]*(\+[a-z0-9]+)?$")
_VM_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]")
MAX_VM_NAME = 128


@dataclass
class Hypervisor:
    """A hypervisor record: a libvirt URI and the seconds between full resyncs."""

    name: str
    uri: str
    interval: float = 30.0
    created: str = ""

    def dump(self) -> dict:
        """The record as a JSON-ready dict."""
        return asdict(self)


def check_uri(uri: str) -> str:
    """``uri`` if it is a libvirt URI vmblock may store; InvalidArgument (one line) if not."""
    parts = urlsplit(uri)
    if not _SCHEME.match(parts.scheme or "") or not uri.startswith(f"{parts.scheme}://"):
        raise InvalidArgument(f"bad libvirt URI {uri!r} (like qemu:///system, "
                              f"qemu+ssh://host/system, test:///path.xml)")
    if parts.password is not None:
        raise InvalidArgument("a libvirt URI with a password is not stored: give the "
                              "credentials in libvirt's auth.conf (?authfile=PATH) or use an "
                              "ssh key (qemu+ssh://user@host/system?keyfile=PATH)")
    return uri


def hypervisors(pool) -> list[Hypervisor]:
    """Every hypervisor record, by name."""
    return [Hypervisor(**v) for _, v in pool.records(PREFIX)]


def hypervisor(pool, name: str) -> Hypervisor:
    """The record named ``name``; NotFound if there is none."""
    v = pool.record(PREFIX + name)
    if v is None:
        raise NotFound(f"no hypervisor named {name!r}")
    return Hypervisor(**v)


def add_hypervisor(pool, name: str, uri: str, interval: float) -> Hypervisor:
    """Store a new hypervisor record; the name must be valid and unused."""
    check_name("hypervisor", name)
    check_uri(uri)
    if interval <= 0:
        raise InvalidArgument(f"interval must be above 0 seconds, not {interval:g}")
    if pool.record(PREFIX + name) is not None:
        raise AlreadyExists(f"a hypervisor named {name!r} already exists")
    for other in hypervisors(pool):
        if other.uri == uri:        # two followers of one hypervisor would claim every VM twice
            raise AlreadyExists(f"hypervisor {other.name} already follows {uri}")
    hv = Hypervisor(name, uri, interval, now())
    pool.write_records({PREFIX + name: hv.dump()})
    return hv


def remove_hypervisor(pool, name: str) -> Hypervisor:
    """Delete a hypervisor record; its VMs stay (marked ``meta_stale`` by the caller)."""
    hv = hypervisor(pool, name)
    pool.write_records({}, delete=[PREFIX + name])
    return hv


def vm_name_for(pool, wanted: str, uid: str, was: str = "") -> str:
    """A valid, unused VM name for domain ``wanted`` (uuid ``uid``): the domain's name with
    characters VM names cannot hold made '_', and ``-<uuid head>`` added when another VM
    has that name already (``was``: the uuid the VM had before adoption, whose name is its own)."""
    name = _VM_NAME_BAD.sub("_", wanted)[:MAX_VM_NAME].lstrip(".-") or "domain"
    owner = pool.record(f"vmname/{name}")
    if owner is None or owner in (uid, was):
        return name
    return f"{name[:MAX_VM_NAME - 9]}-{uid[:8]}"


def adopt_keys(pool, old: str, new: str) -> tuple[dict, list[str]]:
    """(put, delete) that re-key VM ``old`` to uuid ``new``: its record and name, its
    vdisks, its VM snapshots and their names, clones' lineage, its group assignment."""
    rec = pool.record(f"vm/{old}")
    rec["uuid"] = new
    put: dict = {f"vm/{new}": rec, f"vmname/{rec['name']}": new}
    delete = [f"vm/{old}"]
    for key, disk in pool.records("vdisk/"):
        if disk.get("vm") == old:
            put[f"vdisk/{key}"] = dict(disk, vm=new)
    for key, snap in pool.records("snapshot/"):
        if snap.get("vm") == old:
            put[f"snapshot/{key}"] = dict(snap, vm=new)
    for key, uid in pool.records(f"snapname/{old}/"):
        put[f"snapname/{new}/{key}"] = uid
        delete.append(f"snapname/{old}/{key}")
    for key, vm in pool.records("vm/"):
        if (vm.get("parent") or {}).get("vm") == old:
            put[f"vm/{key}"] = dict(vm, parent=dict(vm["parent"], vm=new))
    group = pool.record(f"cacheassign/vm/{old}")
    if group is not None:
        put[f"cacheassign/vm/{new}"] = group
        delete.append(f"cacheassign/vm/{old}")
    return put, delete


def sync_vm(pool, uid: str, fields: dict, vdisks: list[str]) -> tuple[Vm, list[str]]:
    """Make VM ``uid`` say ``fields`` (name, active, guest_os, location, hypervisor, source,
    claims, orphaned, meta_stale) and own the vdisks (uuids) ``vdisks``, in one batch: created,
    adopted from a hand-made VM that owns those vdisks (``adopt_keys``), or updated. Returns
    the VM and the names of the fields that changed (``"created"``/``"adopted"`` when new)."""
    put: dict = {}
    delete: list[str] = []
    changed: list[str] = []
    was = ""
    rec = pool.record(f"vm/{uid}")
    if rec is None:
        owners = {(pool.record(f"vdisk/{d}") or {}).get("vm") for d in vdisks} - {None}
        old = pool.record(f"vm/{owners.pop()}") if len(owners) == 1 else None
        if old is not None and not old.get("source"):
            was = old["uuid"]
            put, delete = adopt_keys(pool, was, uid)
            rec = put[f"vm/{uid}"]
            changed.append("adopted")
        else:
            rec = Vm(uid, vm_name_for(pool, fields["name"], uid), created=now()).dump()
            put[f"vmname/{rec['name']}"] = uid
            changed.append("created")
    fields = dict(fields)
    name = vm_name_for(pool, fields.pop("name"), uid, was)
    if name != rec["name"]:
        put.pop(f"vmname/{rec['name']}", None)
        delete.append(f"vmname/{rec['name']}")
        put[f"vmname/{name}"] = uid
        rec["name"] = name
        changed.append("name")
    for key, value in fields.items():
        if key == "guest_os" and not value:
            continue            # no libosinfo metadata: keep what someone typed
        if rec.get(key) != value:
            rec[key] = value
            changed.append(key)
    put[f"vm/{uid}"] = rec
    for d in vdisks:
        disk = put.get(f"vdisk/{d}") or pool.record(f"vdisk/{d}")
        if disk is not None and disk.get("vm") != uid:
            put[f"vdisk/{d}"] = dict(disk, vm=uid)
            changed.append("vdisks")
    if changed:
        pool.write_records(put, delete)
    return Vm(**rec), changed


def update_vm(pool, uid: str, **fields) -> list[str]:
    """Set some fields of VM ``uid`` (one batch when any changes); the names changed."""
    rec = pool.record(f"vm/{uid}")
    if rec is None:
        return []
    changed = [k for k, v in fields.items() if rec.get(k) != v]
    if changed:
        rec.update(fields)
        pool.write_records({f"vm/{uid}": rec})
    return changed


IMPORT_PREFIX = "vmimport/"


def import_state(pool, uid: str) -> dict | None:
    """The ``vm import`` under way for VM ``uid``, or None."""
    return pool.record(IMPORT_PREFIX + uid)


def put_import_state(pool, uid: str, state: dict) -> None:
    """Record (or update) the ``vm import`` under way for VM ``uid``."""
    pool.write_records({IMPORT_PREFIX + uid: state})


def end_import(pool, uid: str) -> None:
    """Forget the import of VM ``uid`` (finished or undone)."""
    pool.write_records({}, delete=[IMPORT_PREFIX + uid])
