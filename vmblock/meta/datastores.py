"""Shared datastores in the model: what each vdisk holds (an LVM2 PV and the LVs of its VG on
it), which VM owns each LV, and the byte ranges of the LUN each LV occupies (docs/datastores.md).

One record per vdisk that holds (or held) an LVM2 label, ``datastore/<vdisk uuid>``::

    {"type": "lvm2", "vg", "vg_uuid", "seqno", "pv", "extent_size", "pe_start",
     "volumes": [{"name", "uuid", "kind", "visible", "extents": [[first byte, length], ...],
                  "mapped", "note", "vm": VM uuid or null}],
     "watch": [[offset, length], ...],      label sectors and metadata areas
     "problem": ""}                         why the last scan did not take (the map is the last
                                            good one), or what it skipped
    {"type": "none", "problem"}             a label-like sector that is not an LVM2 label

``scan_vdisk`` reads a vdisk through ``read(offset, length)`` (``vmblock.datastore.lvm.scan``),
assigns each LV to a VM (Proxmox's ``vm-<id>-disk-<n>`` and friends -> VM ``<id>``, else the
``datastore.lvm.vm_pattern`` setting's ``vm`` group, else none), creates the VMs it names that
do not exist yet (``source`` ``"lvm:<vg>"``) in the same batch as the record, and records an
event when something changed: ``datastore_changed`` (info: volumes added, removed or moved, the
new seqno), ``datastore_error`` (error: the metadata cannot be read; the last good map is kept),
``datastore_not_pv`` (warning: a label-like sector that is not an LVM2 label; nothing else
changes), ``datastore_recovered`` (info: good metadata again after an error). Scanning the same bytes again writes and records nothing.

``lu_ranges`` is the one function the per-VM layers (statistics, QoS, quotas) call: per LU
(vdisk uuid), the sorted byte ranges and the VM and sub-vdisk owning each.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from vmblock.datastore import lvm
from vmblock.datastore.lvm import BadMetadata, NotAPhysicalVolume
from vmblock.errors import InvalidArgument, NotFound
from vmblock.meta.model import Vdisk, Vm, check_name, now

# numpy and the QoS split (numpy too) are imported where they are used: the listing
# commands of a pool without a server load no numpy (tests/cli/test_offline_listing.py)
if TYPE_CHECKING:
    from vmblock.meta.pool import Pool
    from vmblock.store.backend import BackingStore

PREFIX = "datastore/"
# the event kinds (Pool.record_event); a layer that keeps ranges re-reads lu_ranges on CHANGED
CHANGED = "datastore_changed"
ERROR = "datastore_error"
NOT_PV = "datastore_not_pv"
RECOVERED = "datastore_recovered"
# Proxmox VE's LVM and LVM-thin storage names its volumes vm-<vmid>-disk-<n> (base-<vmid>-...
# for templates, vm-<vmid>-cloudinit, vm-<vmid>-state-<snapshot> for RAM state).
PROXMOX = re.compile(r"^(?:vm|base)-(?P<vm>[1-9]\d*)-(?:disk-\d+|cloudinit|state-.+)$")


class Range(NamedTuple):
    """One owned byte range of a LUN: [first, end), the owning VM's uuid (None: unassigned),
    the sub-vdisk (``<vg>/<lv>``)."""

    first: int
    end: int
    vm: str | None
    subvdisk: str


def owner_name(lv: str, pattern: re.Pattern | None) -> str | None:
    """The name of the VM an LV named ``lv`` belongs to, or None (unassigned)."""
    for rule in (PROXMOX, pattern):
        m = rule.match(lv) if rule is not None else None
        if m is not None and m.group("vm"):
            return m.group("vm")
    return None


def store_reader(store: BackingStore) -> Callable[[int, int], bytes]:
    """``read(offset, length)`` over a store whose reads must be whole blocks."""
    bs = store.block_size

    def read(offset: int, length: int) -> bytes:
        lo = offset - offset % bs
        hi = -(-(offset + length) // bs) * bs
        buf = bytearray(hi - lo)
        store.read_into(lo, memoryview(buf))
        return bytes(buf[offset - lo:offset - lo + length])
    return read


def record(pool: Pool, disk: Vdisk) -> dict | None:
    """The stored datastore record of ``disk``, or None."""
    return pool.record(PREFIX + disk.uuid)


def _assign(pool: Pool, vg: str, volumes: list[dict], pattern: re.Pattern | None,
            put: dict) -> list[str]:
    """Set each volume's ``vm`` (uuid); VMs to create go into ``put``; their names."""
    made: dict[str, str] = {}
    for vol in volumes:
        name = owner_name(vol["name"], pattern)
        vol["vm"] = None
        if name is None:
            continue
        uid = made.get(name) or pool.record(f"vmname/{name}")
        if uid is None:
            try:
                check_name("VM", name)
            except InvalidArgument:
                continue            # a pattern that yields no valid VM name: unassigned
            vm = Vm(str(uuidlib.uuid4()), name, created=now(), source=f"lvm:{vg}")
            put[f"vm/{vm.uuid}"] = vm.dump()
            put[f"vmname/{name}"] = vm.uuid
            uid = made[name] = vm.uuid
        vol["vm"] = uid
    return sorted(made)


def _diff(old: list[dict], new: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """(added, removed, changed) volume names."""
    a = {v["name"]: (v["extents"], v["vm"], v["mapped"]) for v in old}
    b = {v["name"]: (v["extents"], v["vm"], v["mapped"]) for v in new}
    return (sorted(set(b) - set(a)), sorted(set(a) - set(b)),
            sorted(n for n in set(a) & set(b) if a[n] != b[n]))


def scan_vdisk(pool: Pool, disk: Vdisk, read: Callable[[int, int], bytes]
               ) -> list[tuple[int, int]]:
    """Scan ``disk`` through ``read``, store what changed and say so in an event (module
    docstring); the byte ranges whose writes can change the answer (label sectors and
    metadata areas)."""
    key = PREFIX + disk.uuid
    old = pool.record(key)
    label_only = [(0, lvm.LABEL_SCAN_BYTES)]
    try:
        found = lvm.scan(read, disk.size_bytes)
    except NotAPhysicalVolume as e:
        _failed(pool, disk, old, str(e), label_only, not_pv=True)
        return label_only
    except BadMetadata as e:
        watch = e.pv.watched()
        _failed(pool, disk, old, str(e), watch)
        return watch
    except lvm.DatastoreError as e:     # a metadata area outside the vdisk, ...
        _failed(pool, disk, old, str(e), label_only)
        return label_only
    if found.pv is None:
        if old is not None:
            pool.write_records({}, delete=[key])
            if old.get("volumes"):
                gone = sorted(v["name"] for v in old["volumes"])
                _changed(pool, disk, old, None, [], gone, [], [])
        return label_only
    watch = found.pv.watched()
    vg = found.vg
    volumes = [v.dump() for v in vg.volumes] if vg is not None else []
    put: dict = {}
    made = _assign(pool, vg.name, volumes, pool.settings().get("datastore.lvm.vm_pattern"),
                   put) if vg is not None else []
    new = {"type": "lvm2", "vg": vg.name if vg else None, "vg_uuid": vg.uuid if vg else "",
           "seqno": vg.seqno if vg else 0, "pv": found.pv.uuid,
           "extent_size": vg.extent_size if vg else 0, "pe_start": vg.pe_start if vg else 0,
           "volumes": volumes, "watch": [list(w) for w in watch],
           "problem": "; ".join(found.problems)}
    if new == old:
        return watch
    put[key] = new
    pool.write_records(put)
    before = old.get("volumes", []) if old is not None and old.get("type") == "lvm2" else []
    added, removed, changed = _diff(before, volumes)
    if added or removed or changed or (old or {}).get("vg") != new["vg"] \
            or (old or {}).get("seqno") != new["seqno"]:
        _changed(pool, disk, old, new, added, removed, changed, made)
    if (old or {}).get("problem") and not new["problem"] and old.get("type") == "lvm2":
        pool.record_event(RECOVERED, "info", f"vdisk {disk.name}: LVM2 VG {new['vg']} is "
                          f"readable again (seqno {new['seqno']})", vdisk=disk.name,
                          vg=new["vg"], seqno=new["seqno"])
    if new["problem"] and new["problem"] != (old or {}).get("problem"):
        pool.record_event(ERROR, "warning",
                          f"vdisk {disk.name}: {new['problem']}", vdisk=disk.name,
                          vg=new["vg"], advice="a good copy was used; repair the other with "
                          "vgck --updatemetadata on a host")
    return watch


def _changed(pool: Pool, disk: Vdisk, old: dict | None, new: dict | None, added: list[str],
             removed: list[str], changed: list[str], made: list[str]) -> None:
    parts = [f"{what} {', '.join(names)}" for what, names in
             (("added", added), ("removed", removed), ("changed", changed),
              ("new VMs", made)) if names]
    if new is None:
        head = f"vdisk {disk.name} no longer holds an LVM2 PV"
        vg, seqno = (old or {}).get("vg"), None
    else:
        vg, seqno = new["vg"], new["seqno"]
        was = (old or {}).get("seqno")
        head = (f"vdisk {disk.name}: LVM2 VG {vg} seqno {seqno}" if vg else
                f"vdisk {disk.name}: an LVM2 PV with no VG") + \
            (f" (was {was})" if was not in (None, seqno) else "")
    pool.record_event(CHANGED, "info", "; ".join([head] + parts),
                      vdisk=disk.name, vg=vg, seqno=seqno,
                      old_seqno=(old or {}).get("seqno"), added=added, removed=removed,
                      changed=changed, vms_created=made)


def _failed(pool: Pool, disk: Vdisk, old: dict | None, problem: str,
            watch: list[tuple[int, int]], not_pv: bool = False) -> None:
    """A scan that did not take: the last good map stays, the problem is stored, and an event
    says so once per distinct problem (``not_pv``: the label itself is not LVM2's)."""
    if old is not None and old.get("problem") == problem:
        return
    if old is not None and old.get("type") == "lvm2" and old.get("vg"):
        kept = dict(old, problem=problem, watch=sorted({tuple(w) for w in old["watch"]} |
                                                       set(watch)))
        pool.write_records({PREFIX + disk.uuid: kept})
        pool.record_event(ERROR, "error",
                          f"vdisk {disk.name}: {problem}; the last good map (VG {old['vg']} "
                          f"seqno {old['seqno']}) is kept", vdisk=disk.name, vg=old["vg"],
                          seqno=old["seqno"],
                          advice="if a host is writing the VG, this clears on its next write; "
                                 "else restore the metadata on a host (vgcfgrestore)")
        return
    if not_pv:
        pool.write_records({PREFIX + disk.uuid: {"type": "none", "problem": problem}})
        pool.record_event(NOT_PV, "warning", f"vdisk {disk.name}: {problem}",
                          vdisk=disk.name, advice="nothing is mapped; if it should be a PV, "
                          "run pvcreate on it again from a host")
        return
    pool.write_records({PREFIX + disk.uuid: {
        "type": "lvm2", "vg": None, "vg_uuid": "", "seqno": 0, "pv": "", "extent_size": 0,
        "pe_start": 0, "volumes": [], "watch": [list(w) for w in watch], "problem": problem}})
    pool.record_event(ERROR, "error", f"vdisk {disk.name}: {problem}",
                      vdisk=disk.name, advice="nothing is mapped until a good copy is written")


# ---- what the admin verbs and the per-VM layers read --------------------------------------

def records_of(pool: Pool, disks: list[Vdisk]) -> dict[str, dict]:
    """Vdisk uuid -> datastore record of ``disks``: one read for one vdisk, one scan of the
    records for more."""
    if len(disks) == 1:
        rec = record(pool, disks[0])
        return {disks[0].uuid: rec} if rec is not None else {}
    return dict(pool.records(PREFIX))


def datastore_json(pool: Pool, disk: Vdisk, vm_names: dict[str, str] | None = None,
                   rec: dict | None = None) -> dict | None:
    """``vdisk show``'s ``datastore``: {"type": "lvm2", "vg", "volumes": [{"name", "vm",
    "extents", ...}], ...}, None when the vdisk holds no LVM2 PV. ``rec``: its record, when
    the caller read it (``records_of``); ``vm_names``: VM uuid -> name, as far as known."""
    rec = rec if rec is not None else record(pool, disk)
    if rec is None or rec.get("type") != "lvm2":
        return None
    names = dict(vm_names or {})

    def name_of(uid: str | None) -> str | None:
        if uid and uid not in names:
            try:
                names[uid] = pool.vm_by_uuid(uid).name
            except NotFound:        # the VM was deleted since the scan
                names[uid] = None
        return names.get(uid) if uid else None

    vols = [dict(v, vm=name_of(v["vm"]), vm_uuid=v["vm"], subvdisk=f"{rec['vg']}/{v['name']}")
            for v in rec["volumes"]]
    return {"type": "lvm2", "vg": rec["vg"], "vg_uuid": rec["vg_uuid"], "seqno": rec["seqno"],
            "pv": rec["pv"], "extent_size": rec["extent_size"], "pe_start": rec["pe_start"],
            "volumes": vols, "problem": rec["problem"]}


def sub_vdisks(pool: Pool, vm: Vm) -> list[dict]:
    """The sub-vdisks (LVs on shared datastore LUNs) the VM owns: name ``<vg>/<lv>``, the
    vdisk (LUN) holding it, its byte ranges there and their total, and ``used_bytes``: the
    bytes of the pool the LUN's map holds in those ranges (AUs written and not unmapped; an
    AU straddling two LVs counts to both)."""
    disks = {d.uuid: d for d in pool.vdisks()}
    out = []
    for uid, rec in pool.records(PREFIX):
        disk = disks.get(uid)
        if disk is None or rec.get("type") != "lvm2":
            continue
        vaus = None
        for v in rec["volumes"]:
            if v["vm"] == vm.uuid:
                if vaus is None:        # the LUN's mapped vAUs, sorted: read once per LUN
                    import numpy as np
                    vaus = np.sort(pool.store.entries(disk.map_id)[0].astype(np.int64))
                out.append({"name": f"{rec['vg']}/{v['name']}", "lv": v["name"],
                            "vg": rec["vg"], "vdisk": disk.name, "extents": v["extents"],
                            "size_bytes": sum(n for _, n in v["extents"]),
                            "used_bytes": _used_in(vaus, v["extents"], pool.store.au),
                            "mapped": v["mapped"]})
    return sorted(out, key=lambda s: s["name"])


def _used_in(vaus, extents: list, au: int) -> int:
    """Bytes of the mapped AUs ``vaus`` (sorted vAU numbers, a numpy array) within the byte
    ``extents``."""
    n = 0
    for first, length in extents:
        lo, hi = first // au, -(-(first + length) // au)
        n += int(vaus.searchsorted(hi) - vaus.searchsorted(lo))
    return n * au


def lu_ranges(pool: Pool) -> dict[str, list[Range]]:
    """Per LU (vdisk uuid), the owned byte ranges sorted by first byte: what the statistics,
    QoS and quota layers split one LU's I/O by (an I/O spanning two ranges counts to each
    its part; bytes in no range stay the vdisk's own). Only vdisks holding a mapped VG."""
    disks = {d.uuid for d in pool.vdisks()}
    out: dict[str, list[Range]] = {}
    for uid, rec in pool.records(PREFIX):
        if uid in disks and (ranges := ranges_of(rec)):
            out[uid] = ranges
    return out


def ranges_of(rec: dict | None) -> list[Range]:
    """One vdisk's ``lu_ranges`` entry from its datastore record (``record``): [] when it
    holds no mapped VG."""
    if rec is None or rec.get("type") != "lvm2" or not rec.get("volumes"):
        return []
    return sorted(Range(first, first + n, v["vm"], f"{rec['vg']}/{v['name']}")
                  for v in rec["volumes"] for first, n in v["extents"])


def qos_luns(pool: Pool, disks: list[Vdisk], luns: dict) -> None:
    """The QoS flows of the datastore LUs among ``disks``: in ``luns`` ((target IQN, LUN) ->
    the LU's flow key, ``policies.qos_config``'s) each such LU's key becomes a ``LuSplit``,
    the I/O into each LV going to its VM's flow and the rest (label, metadata, free extents,
    unassigned LVs) to the LU's own key. A vdisk with QoS of its own keeps it for all of its
    LU: that limit is the LUN's."""
    from vmblock.qos.split import LuSplit
    recs = dict(pool.records(PREFIX))
    for d in disks:
        ranges = ranges_of(recs.get(d.uuid))
        lu = (d.target, d.lun)
        rest = luns.get(lu)
        if not ranges or (rest or "").startswith("vdisk:"):
            continue
        split = LuSplit.of_ranges([(r.first, r.end, r.vm) for r in ranges], d.block_size, rest)
        if split is None:
            luns.pop(lu, None)
        else:
            luns[lu] = split


def sub_vdisk_owners(pool: Pool) -> list[tuple[str, str, str | None]]:
    """Every sub-vdisk of the served datastores: (vdisk uuid, ``<vg>/<lv>``, the owning
    VM's uuid or None), sorted; the cache gives each one a cache vdisk of its own."""
    return sorted({(uid, r.subvdisk, r.vm) for uid, ranges in lu_ranges(pool).items()
                   for r in ranges})


def find_sub_vdisk(pool: Pool, name: str) -> tuple[str, str | None]:
    """(``<vdisk uuid>/<vg>/<lv>``, its VM's uuid) of the sub-vdisk called ``name``
    (``<vg>/<lv>``); NotFound when no datastore has it (or InvalidArgument when two LUNs
    hold a VG of that name and the LV on both)."""
    found = [(uid, vm) for uid, sub, vm in sub_vdisk_owners(pool) if sub == name]
    if not found:
        raise NotFound(f"no sub-vdisk {name!r} (an LV <vg>/<lv> on a datastore LUN)")
    if len(found) > 1:
        raise InvalidArgument(f"sub-vdisk {name!r} is on {len(found)} LUNs: two VGs share "
                              f"its VG's name")
    uid, vm = found[0]
    return f"{uid}/{name}", vm


def quota_ranges(pool: Pool, au: int) -> dict[str, list[tuple[int, int, int]]]:
    """Per VM uuid, the AU ranges of its LVs on datastore LUNs of other VMs: (the LUN's live
    map id, first vAU, end vAU), what its space quota also covers (vmblock.store.quota)."""
    disks = {d.uuid: d for d in pool.vdisks()}
    out: dict[str, list[tuple[int, int, int]]] = {}
    for uid, ranges in lu_ranges(pool).items():
        d = disks[uid]
        for r in ranges:
            if r.vm is not None and r.vm != d.vm:
                out.setdefault(r.vm, []).append((d.map_id, r.first // au, -(-r.end // au)))
    return out


def vdisk_by_uuid(pool: Pool, uid: str) -> Vdisk | None:
    """The vdisk with uuid ``uid``, None if it is gone (a re-read fired after a delete)."""
    value = pool.record(f"vdisk/{uid}")
    return None if value is None else Vdisk(**value)
