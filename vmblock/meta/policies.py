"""Per-VM policies: what ``vm set`` stores in ``Vm.policies`` and the quotas the store checks.

``Vm.policies`` (``vm/<uuid>``) holds, each key present only while set::

    space_quota      bytes: the VM's cap (vmblock.store.quota has the accounting rule)
    snapshot_every   seconds between automatic snapshots (vmblock.events.schedule)
    snapshot_keep    automatic snapshots kept (the oldest beyond it are deleted)
    qos              QoS (vmblock.qos, docs/qos.md): {max_iops, max_mbps, min_iops, shares},
                     each present only while set

``set_policies`` checks every value first and writes the record once: bad input changes
nothing. The store's quota groups follow the records: ``sync_quotas`` runs when the store
opens, after every metadata transaction (a vdisk or snapshot made or deleted changes which
maps a quota covers) and after ``set_policies``. With no quota anywhere it does nothing.

These are functions of an open ``Pool`` (it does not import this module's caller).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from vmblock.errors import InvalidArgument, NoSpace
from vmblock.meta import datastores
from vmblock.meta.model import Vdisk, Vm
from vmblock.qos.scheduler import QosParams
from vmblock.settings import MAX_TIER_BYTES
from vmblock.units import format_size, parse_duration, parse_size, shown

if TYPE_CHECKING:
    from vmblock.qos.split import LuSplit

# the words that clear a policy (keeping 0 snapshots is refused, not a clearing)
CLEAR = ("none", "0")
# a quota can be at most what the two largest tiers hold
MAX_QUOTA_BYTES = 2 * MAX_TIER_BYTES
MAX_SNAPSHOT_KEEP = 10000
DEFAULT_SNAPSHOT_KEEP = 24
# the shortest schedule: a snapshot per second is what the tests use
MIN_SNAPSHOT_EVERY = 1
POLICY_KEYS = ("space_quota", "snapshot_every", "snapshot_keep")
# QoS, kept under policies["qos"]: IOPS in 8 KiB units, MB/s in 10^6 bytes per second
QOS_KEYS = ("max_iops", "max_mbps", "min_iops", "shares")
# beyond these a figure is a typing error: no server does 10 million IOPS or 1 TB/s
QOS_MAX = {"max_iops": 10_000_000, "max_mbps": 1_000_000, "min_iops": 10_000_000,
           "shares": 10_000}
MB = 1_000_000


def _parse(key: str, text: str, au: int) -> int | None:
    """The stored value of one ``vm set`` option; None clears it."""
    raw = str(text).strip()         # error messages show what was typed
    t = raw.lower()
    if t == "none" or (t in CLEAR and key != "snapshot_keep"):
        return None
    if key in QOS_KEYS:
        flag, top = "--" + key.replace("_", "-"), QOS_MAX[key]
        if not (t.isascii() and t.isdigit()) or not 1 <= int(t) <= top:
            raise InvalidArgument(f"{flag} must be a whole number from 1 to {top} "
                                  f"(0 or none clears it), not {shown(text)}")
        return int(t)
    if key == "space_quota":
        v = parse_size(raw, "--space-quota", MAX_QUOTA_BYTES)
        if v < au:
            raise InvalidArgument(f"--space-quota {shown(text)} is below one allocation unit "
                                  f"({format_size(au)}); use none to clear it")
        return v
    if key == "snapshot_every":
        return parse_duration(raw, "--snapshot-every", MIN_SNAPSHOT_EVERY)
    try:
        v = int(t)
    except ValueError:
        raise InvalidArgument(f"--snapshot-keep must be a whole number, not "
                              f"{shown(text)}") from None
    if not 1 <= v <= MAX_SNAPSHOT_KEEP:
        raise InvalidArgument(f"--snapshot-keep must be from 1 to {MAX_SNAPSHOT_KEEP} "
                              f"(none clears it), not {shown(text)}")
    return v


def check(pool, name: str, changes: dict[str, str]) -> dict:
    """The policies VM ``name`` would have after ``changes``; InvalidArgument (nothing
    changed) for any bad value."""
    return _changed(pool.vm(name), changes, pool.store.au)


def set_policies(pool, name: str, changes: dict[str, str]) -> Vm:
    """Apply ``vm set`` policy options (``POLICY_KEYS`` -> text; 'none' or '0' clears) to the
    VM ``name`` in one write, after checking all of them; then the store's quotas follow.
    A quota below what the VM holds now is allowed: nothing is lost or refused to read or
    overwrite, only new allocations fail until it is under again."""
    vm = pool.vm(name)
    vm.policies = _changed(vm, changes, pool.store.au)
    pool.write_records({f"vm/{vm.uuid}": vm.dump()})
    sync_quotas(pool)
    return vm


def qos_changed(qos: dict, changes: dict[str, str]) -> dict:
    """``qos`` after the QoS options ``changes`` (``QOS_KEYS`` -> text; 'none' or '0'
    clears); InvalidArgument for a bad value or a min above the max."""
    qos = dict(qos)
    for key, text in changes.items():
        value = _parse(key, text, 0)
        if value is None:
            qos.pop(key, None)
        else:
            qos[key] = value
    if qos.get("min_iops", 0) > qos.get("max_iops", float("inf")):
        raise InvalidArgument(f"--min-iops {qos['min_iops']} is above --max-iops "
                              f"{qos['max_iops']}")
    return qos


def set_vdisk_qos(pool, name: str, changes: dict[str, str]) -> Vdisk:
    """``vdisk set``: the vdisk's own QoS (it then has a queue of its own instead of its
    VM's), checked first, then written once."""
    disk = pool.vdisk(name)
    disk.qos = qos_changed(disk.qos, changes)
    pool.write_records({f"vdisk/{disk.uuid}": asdict(disk)})
    return disk


def _changed(vm: Vm, changes: dict[str, str], au: int) -> dict:
    policies = dict(vm.policies)
    for key in changes:
        if key not in POLICY_KEYS + QOS_KEYS:
            raise InvalidArgument(f"unknown policy {key!r} (known: "
                                  f"{', '.join(POLICY_KEYS + QOS_KEYS)})")
    qos = qos_changed(policies.get("qos", {}),
                      {k: v for k, v in changes.items() if k in QOS_KEYS})
    for key, text in changes.items():
        if key in QOS_KEYS:
            continue
        value = _parse(key, text, au)
        if value is None:
            policies.pop(key, None)
        else:
            policies[key] = value
    if qos:
        policies["qos"] = qos
    else:
        policies.pop("qos", None)
    if "snapshot_every" in policies:
        policies.setdefault("snapshot_keep", DEFAULT_SNAPSHOT_KEEP)
    elif "snapshot_keep" in changes and "snapshot_keep" in policies:
        raise InvalidArgument("--snapshot-keep needs a schedule: give --snapshot-every too")
    else:
        policies.pop("snapshot_keep", None)
    return policies


def show(pool, vm: Vm) -> dict:
    """``vm show``'s ``policies`` (each set policy, the quota with what the VM is charged)
    and ``qos`` (the QoS limits; empty while none are set)."""
    out = {k: vm.policies[k] for k in POLICY_KEYS if k in vm.policies}
    if "space_quota" in out:
        report = pool.store.quotas.report(vm.uuid) or {}
        out["space_charged_bytes"] = report.get("charged_bytes", 0)
        # reached: the next write needing a new AU fails (at or over it, or one was refused)
        out["space_quota_reached"] = report.get("over", False) or \
            out["space_charged_bytes"] >= out["space_quota"]
    return {"policies": out, "qos": dict(vm.policies.get("qos", {}))}


def qos_params(q: dict) -> QosParams | None:
    """The scheduler's parameters of a VM's or vdisk's QoS, None when it has none."""
    if not q:
        return None
    return QosParams(reservation=q.get("min_iops", 0), limit=q.get("max_iops", 0),
                     limit_bytes=q.get("max_mbps", 0) * MB, weight=q.get("shares", 1))


def qos_config(pool) -> tuple[dict[str, QosParams], dict[tuple[str, int], str | LuSplit]]:
    """What a server's QoS gates need: every VM and vdisk with QoS of its own (VM uuid or
    ``vdisk:<uuid>`` -> params) and the flow of every vdisk's LU ((target IQN, LUN) -> its
    own key when it has QoS of its own, else its VM's uuid, or for an LU holding an LVM2
    datastore the ``LuSplit`` by its LVs' VMs: ``datastores.qos_luns``)."""
    params = {vm.uuid: p for vm in pool.vms()
              if (p := qos_params(vm.policies.get("qos"))) is not None}
    luns = {}
    disks = pool.vdisks()
    for d in disks:
        own = qos_params(d.qos)
        if own is not None:
            params["vdisk:" + d.uuid] = own
            luns[(d.target, d.lun)] = "vdisk:" + d.uuid
        elif d.vm:
            luns[(d.target, d.lun)] = d.vm
    datastores.qos_luns(pool, disks, luns)      # the LVs of shared datastore LUs: their VMs'
    return params, luns


def inherited_vdisk_qos(pool, uuid: str) -> dict:
    """A clone's vdisk inherits its source vdisk's own QoS (empty when it is gone)."""
    raw = pool.record(f"vdisk/{uuid}")
    return dict(raw.get("qos") or {}) if raw else {}


def record_qos_throttled(pool, key: str, after: float) -> None:
    """Record ``qos_throttled`` for the QoS flow ``key`` (a VM uuid, or ``vdisk:<uuid>`` for
    a vdisk with QoS of its own), held at its limit for ``after`` seconds."""
    if key.startswith("vdisk:"):
        disk = Vdisk(**pool.record(f"vdisk/{key[6:]}"))
        vm = pool.vm_by_uuid(disk.vm).name if disk.vm else None
        vdisk, fields, what = disk.name, disk.qos, f"vdisk {disk.name}"
        fix = f"vdisk set {disk.name}"
    else:
        v = pool.vm_by_uuid(key)
        vm, vdisk, fields, what = v.name, None, v.policies.get("qos", {}), f"VM {v.name}"
        fix = f"vm set {v.name}"
    pool.record_event("qos_throttled", "info",
                      f"{what} has been held at its QoS limit for over {after:g} s",
                      vm=vm, vdisk=vdisk, advice=f"raise its limit ({fix} --max-iops/"
                      f"--max-mbps) if it needs more", **fields)


def vm_maps(pool) -> dict[str, tuple[list[int], list[int]]]:
    """VM uuid -> (its vdisks' live map ids, its snapshots' frozen map ids)."""
    maps: dict[str, tuple[list[int], list[int]]] = {vm.uuid: ([], []) for vm in pool.vms()}
    for d in pool.vdisks():
        if d.vm in maps:
            maps[d.vm][0].append(d.map_id)
    for s in pool.snapshots():
        if s.vm in maps:
            maps[s.vm][1].extend(e["map_id"] for e in s.disks)
    return maps


def sync_quotas(pool) -> None:
    """Give the store the quota of every VM that has one and the maps it covers."""
    quotas = pool.store.quotas
    vms = [vm for vm in pool.vms() if vm.policies.get("space_quota")]
    if not vms and not quotas.groups:
        return
    maps = vm_maps(pool)
    lvs = datastores.quota_ranges(pool, quotas.au)      # its LVs on shared LUNs too
    quotas.set_groups({vm.uuid: (vm.name, vm.policies["space_quota"], *maps[vm.uuid],
                                 lvs.get(vm.uuid, [])) for vm in vms})


def attach(pool) -> None:
    """Once the store is open: its quotas follow every metadata transaction from now on."""
    pool.store.committer.txn_hooks.append(lambda: sync_quotas(pool))
    sync_quotas(pool)


def admission(pool) -> tuple[bool, str]:
    """(whether new vdisks and clones are accepted, why not): refused while the capacity
    tier is used to ``events.refuse_new_at`` or more, or a write has found it full."""
    limit = pool.settings().get("events.refuse_new_at")
    usage = pool.store.capacity_use()
    pct = usage["used_pct"]
    if pool.store.events.full:
        return False, "the capacity tier is full: writes that need new space fail"
    if pct >= limit * 100:
        return False, (f"the capacity tier is {pct:.1f}% used, at or over events.refuse_new_at "
                       f"{limit:.0%}")
    return True, ""


def check_admission(pool, force: bool, what: str) -> None:
    """Refuse ``what`` (a new vdisk, a clone) in one line while space is low, unless
    ``force``."""
    ok, why = admission(pool)
    if not ok and not force:
        raise NoSpace(f"not accepting new VMs or vdisks: {why}; {what} anyway with --force")
