"""The management verbs, one method per CLI command, over an open Pool.

The CLI calls an ``Api`` directly when no server runs and an ``AdminClient`` (same methods, over
the admin socket) when one does; the server's subclass also applies each change to the live
targets. Methods take and return plain JSON values so the two paths cannot drift apart.

The verbs are the methods marked ``@verb`` here and in ``CacheVerbs``; ``VERBS`` is derived from
them (vmblock.admin.verbs) and ``run_verb`` is the one way in, arguments checked first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from vmblock.admin.cache import CacheVerbs, Runtime
from vmblock.admin.hypervisor import HypervisorVerbs
from vmblock.admin.datastores import DatastoreVerbs
from vmblock.admin.stats import StatsVerbs
from vmblock.admin.schema import (
    Cursor,
    Epoch,
    EventId,
    EventKind,
    EventLimit,
    GuestOs,
    Int,
    Iqn,
    Key,
    Location,
    Name,
    PolicyText,
    SizeText,
    TierName,
    Value,
    WaitSeconds,
    check_args,
)
from vmblock.admin.verbs import Verb, collect, verb
from vmblock.errors import InvalidArgument, ServerError
from vmblock.events.schedule import check_manual_name
from vmblock.iscsi.chap import ChapSecrets
from vmblock.meta import datastores
from vmblock.meta import events as meta_events
from vmblock.meta import policies
from vmblock.meta.model import Snapshot, Vdisk, Vm
from vmblock.settings import format_portal
from vmblock.units import parse_size

if TYPE_CHECKING:       # the pool brings the store (numpy, Numba): see vmblock.meta
    from vmblock.meta import Pool

_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
# a logical block size in bytes; the pool accepts 512 and 4096 (vmblock.meta.model.BLOCK_SIZES)
BlockSize = Annotated[int, Int(512, 4096)]


class Api:
    """Management verbs on a pool opened by this process; the group and cache verbs are its
    part ``cache`` (``CacheVerbs``), live on ``runtime`` when a server runs."""

    def __init__(self, pool: Pool, runtime: Runtime | None = None):
        self.pool = pool
        self.cache = CacheVerbs(pool, runtime)
        self.hypervisor = HypervisorVerbs(pool, runtime, api=self)
        self.datastores = DatastoreVerbs(pool, runtime)
        self.stats = StatsVerbs(pool, runtime)

    def portals(self) -> list[tuple[str, int]]:
        """Where initiators reach the targets; without a server, what the next one will use."""
        return self.pool.settings().get("iscsi.portals")

    def chap(self, iqn: str) -> ChapSecrets | None:
        """The CHAP credentials an initiator must give ``iqn``; without a server, those the
        pool stores (the server's subclass answers what the running target asks)."""
        settings = self.pool.settings()
        user = settings.get(f"auth.target.{iqn}.chap_user")
        secret = settings.get(f"auth.target.{iqn}.chap_secret")
        return ChapSecrets(user, secret) if user and secret else None

    def url(self, disk: Vdisk) -> str:
        """``iscsi://[user%secret@]host:port/iqn/lun``, libiscsi's syntax (QEMU's too), so
        the URL works as it is; the settings' CHAP check keeps out what it cannot carry."""
        return self.urls()(disk)

    def urls(self) -> Callable[[Vdisk], str]:
        """``url`` for many vdisks: the portal read once, each target's credentials once
        (both come from the settings, which a lookup per vdisk would merge again)."""
        host, port = self.portals()[0]
        portal = format_portal(_WILDCARD.get(host, host), port)
        bases: dict[str, str] = {}

        def url(disk: Vdisk) -> str:
            base = bases.get(disk.target)
            if base is None:
                chap = self.chap(disk.target)
                creds = f"{chap.user}%{chap.secret}@" if chap else ""
                base = bases[disk.target] = f"iscsi://{creds}{portal}/{disk.target}/"
            return f"{base}{disk.lun}"
        return url

    # What a running server must also do after a change; nothing runs to be told without one.

    def vdisk_created(self, disk: Vdisk, new_target: bool) -> None:
        """Serve a new vdisk (and its target if new)."""

    def vdisk_deleted(self, disk: Vdisk) -> None:
        """Stop serving a deleted vdisk."""

    def vdisk_resized(self, disk: Vdisk) -> None:
        """Tell initiators a vdisk grew."""

    def config_changed(self, key: str) -> bool:
        """Apply a changed key to what runs; False when it takes effect at the next start."""
        return False

    def vdisk_protection_changed(self, disk: Vdisk) -> None:
        """Make a served vdisk's LU read-only or writable as its record now says."""

    def set_medium(self, disk: Vdisk, present: bool) -> None:
        """Eject or load a removable vdisk's medium: only a running server has one."""
        raise ServerError(f"no server is running on pool {self.pool.path}; a removable "
                          f"vdisk's medium is ejected or loaded only while `vmblock serve` runs")

    def _vdisk_json(self, disk: Vdisk) -> dict:
        return self._vdisks_json([disk])[0]

    def _vdisks_json(self, disks: list[Vdisk]) -> list[dict]:
        """The JSON of each vdisk; VM names and URLs looked up once for all of them."""
        if len(disks) == 1:     # one vdisk: read its VM alone, not every VM of the pool
            vm_names = {d.vm: self.pool.vm_by_uuid(d.vm).name for d in disks if d.vm}
        else:
            vm_names = {vm.uuid: vm.name for vm in self.pool.vms()}
        url = self.urls()
        found = datastores.records_of(self.pool, disks)
        out = []
        for disk in disks:
            d = disk.dump()
            d["vm"] = (vm_names.get(disk.vm) or self.pool.vm_by_uuid(disk.vm).name
                       if disk.vm else None)
            d["url"] = url(disk)
            d["used_bytes"] = d["allocated_bytes"] = self.pool.used_bytes(disk)
            d["tier_bytes"] = self.pool.tier_bytes(disk)    # used bytes on each tier
            rec = found.get(disk.uuid)      # the LVM2 VG it holds (vmblock.meta.datastores)
            d["datastore"] = (datastores.datastore_json(self.pool, disk, vm_names, rec)
                              if rec is not None else None)
            out.append(d)
        return out

    def _snapshot_json(self, snap: Snapshot) -> dict:
        d = snap.dump()
        d["kind"] = "vdisk" if snap.vdisk else "vm"
        try:
            d["vm_name"] = self.pool.vm_by_uuid(snap.vm).name if snap.vm else None
        except Exception:   # the VM is gone (its snapshots normally go with it)
            d["vm_name"] = None
        d["vdisk_name"] = snap.disks[0]["name"] if snap.vdisk else None
        d["used_bytes"] = sum(e["used_bytes"] for e in snap.disks)
        return d

    @verb
    def vm_create(self, name: Name, guest_os: GuestOs = "", location: Location = "") -> dict:
        """Create a VM (a pool is created for it if new)."""
        return self.pool.create_vm(name, guest_os, location).dump()

    def policies_changed(self) -> None:
        """A VM's policies changed (a running server's schedule looks again)."""

    @verb
    def vm_set(self, name: Name, guest_os: GuestOs | None = None,
               location: Location | None = None, active: bool | None = None,
               space_quota: PolicyText | None = None, snapshot_every: PolicyText | None = None,
               snapshot_keep: PolicyText | None = None, max_iops: PolicyText | None = None,
               max_mbps: PolicyText | None = None, min_iops: PolicyText | None = None,
               shares: PolicyText | None = None) -> dict:
        """Change a VM's guest OS, location or active flag, and its policies: space quota
        (a size), snapshot schedule (every 30s/5m/1h/1d, keep N), QoS (max/min IOPS in
        8 KiB units, max MB/s, shares); 'none' or 0 clears a policy; None keeps a field.
        Every value is checked before anything changes."""
        fields = {k: v for k, v in (("guest_os", guest_os), ("location", location),
                                    ("active", active)) if v is not None}
        changes = {k: v for k, v in (("space_quota", space_quota),
                                     ("snapshot_every", snapshot_every),
                                     ("snapshot_keep", snapshot_keep),
                                     ("max_iops", max_iops), ("max_mbps", max_mbps),
                                     ("min_iops", min_iops), ("shares", shares))
                   if v is not None}
        self.pool.vm(name)              # an unknown VM: NotFound before anything changes
        if changes:
            policies.check(self.pool, name, changes)
        if fields:
            self.pool.update_vm(name, **fields)
        if changes:
            policies.set_policies(self.pool, name, changes)
            self.policies_changed()
        vm = self.pool.vm(name)
        return dict(vm.dump(), **policies.show(self.pool, vm))

    @verb
    def vm_list(self) -> list[dict]:
        """Every VM with the names of its vdisks and the bytes they use."""
        disks: dict[str, list[str]] = {}
        used: dict[str, int] = {}
        for d in self.pool.vdisks():
            if d.vm:
                disks.setdefault(d.vm, []).append(d.name)
                used[d.vm] = used.get(d.vm, 0) + self.pool.used_bytes(d)
        return [dict(vm.dump(), vdisks=disks.get(vm.uuid, []), used_bytes=used.get(vm.uuid, 0))
                for vm in self.pool.vms()]

    @verb
    def vm_show(self, name: Name) -> dict:
        """The VM with its vdisks (name, url, size, used), snapshots and lineage."""
        vm = self.pool.vm(name)
        url = self.urls()
        disks = [{"name": d.name, "uuid": d.uuid, "url": url(d),
                  "size_bytes": d.size_bytes, "used_bytes": self.pool.used_bytes(d),
                  "lun": d.lun, "target": d.target, "parent": d.parent}
                 for d in self.pool.vdisks(vm=name)]
        clones = [{"name": v.name, "uuid": v.uuid, "snapshot": v.parent.get("snapshot_name"),
                   "live": v.parent.get("live")}
                  for v in self.pool.vms() if v.parent and v.parent.get("vm") == vm.uuid]
        return dict(vm.dump(), vdisks=disks, **policies.show(self.pool, vm),
                    sub_vdisks=datastores.sub_vdisks(self.pool, vm),     # LVs on shared LUNs
                    used_bytes=sum(d["used_bytes"] for d in disks),
                    snapshots=[self._snapshot_json(s) for s in self.pool.snapshots(vm=name)],
                    lineage={"parent": vm.parent, "clones": clones})

    @verb
    def vm_delete(self, name: Name, purge: bool = False, force: bool = False) -> dict:
        """Delete a VM and its snapshots (``purge``: its vdisks too). ``force``: purge even
        while iSCSI sessions use the vdisks (only a server has any)."""
        vm, disks = self.pool.delete_vm(name, purge=purge)
        for disk in disks:
            self.vdisk_deleted(disk)
        return dict(vm.dump(), vdisks_deleted=[d.name for d in disks])

    @verb
    def vm_snapshot(self, name: Name, snapshot: Name) -> dict:
        """Snapshot every vdisk of a VM at one instant (crash-consistent, metadata only); the
        names ``auto-<UTC time>`` are the snapshot schedule's."""
        check_manual_name(snapshot)
        return self.take_vm_snapshot(name, snapshot)

    def take_vm_snapshot(self, name: str, snapshot: str) -> dict:
        """``vm_snapshot`` without the name check: how the snapshot schedule takes its
        automatic snapshots."""
        return self._snapshot_json(self.pool.snapshot_vm(name, snapshot))

    @verb
    def vm_clone(self, name: Name, new_name: Name, snapshot: Name | None = None,
                 live: bool = False, force: bool = False, no_policies: bool = False) -> dict:
        """A new VM whose vdisks (new LUNs) share a snapshot's (or, ``live``, the current)
        blocks copy-on-write, with the source's policies unless ``no_policies``. Refused while
        space is low (``pool show``'s ``accepting_new_vms``) unless ``force``."""
        policies.check_admission(self.pool, force, "clone")
        return self._cloned(*self.pool.clone_vm(name, new_name, snapshot=snapshot, live=live,
                                                inherit=not no_policies))

    def _cloned(self, vm: Vm, disks: list[Vdisk], new_targets: set[str]) -> dict:
        """Serve a new clone's vdisks (their LUNs, new targets) and show it."""
        for disk in disks:
            self.vdisk_created(disk, disk.target in new_targets)
            if disk.target in new_targets:
                new_targets.remove(disk.target)
        return self.vm_show(vm.name)

    def _revert_json(self, snap: Snapshot, done: list) -> dict:
        return {"snapshot": self._snapshot_json(snap),
                "vdisks": [{"name": d.name, "size_bytes": d.size_bytes,
                            "size_changed": changed} for d, changed in done]}

    @verb
    def vm_revert(self, name: Name, snapshot: Name, force: bool = False) -> dict:
        """Revert every vdisk of a VM to a VM snapshot. ``force``: even while iSCSI sessions
        use the LUNs (only a server has any; they get a unit attention)."""
        snap = self.pool.snapshot(snapshot, vm=name)
        if snap.vdisk is not None:
            raise InvalidArgument(f"{snapshot!r} is a snapshot of vdisk "
                                  f"{snap.disks[0]['name']}; use vdisk revert")
        return self._revert_json(snap, self.pool.revert(snap))

    @verb
    def vdisk_snapshot(self, name: Name, snapshot: Name) -> dict:
        """Snapshot one vdisk (metadata only)."""
        return self._snapshot_json(self.pool.snapshot_vdisk(name, snapshot))

    @verb
    def vdisk_revert(self, name: Name, snapshot: Name, force: bool = False) -> dict:
        """Revert one vdisk to one of its snapshots. ``force``: as for ``vm_revert``."""
        snap = self.pool.snapshot(snapshot, vdisk=name)
        return self._revert_json(snap, self.pool.revert(snap))

    @verb
    def vdisk_resize(self, name: Name, size: SizeText) -> dict:
        """Grow a vdisk (it cannot shrink); a running server tells initiators."""
        disk = self.pool.resize_vdisk(name, parse_size(size))
        self.vdisk_resized(disk)
        return self._vdisk_json(disk)

    @verb
    def vdisk_move(self, name: Name, tier: TierName) -> dict:
        """Move a vdisk's blocks to another tier (its snapshots keep theirs); ``move`` says
        how much moved and how long it took."""
        r = self.pool.move_vdisk(name, tier)
        return dict(self._vdisk_json(self.pool.vdisk(name)), move=r)

    @verb
    def snapshot_list(self, vm: Name | None = None) -> list[dict]:
        """Snapshots (of one VM if ``vm``), oldest first."""
        return [self._snapshot_json(s) for s in self.pool.snapshots(vm=vm)]

    @verb
    def snapshot_delete(self, name: Name, vm: Name | None = None,
                        vdisk: Name | None = None) -> dict:
        """Delete a snapshot of a VM or of a vdisk (name exactly one)."""
        return self._snapshot_json(self.pool.delete_snapshot(name, vm=vm, vdisk=vdisk))

    @verb
    def pool_check(self) -> dict:
        """Check the pool (fsck); ``ok`` is false and ``errors`` says why if it is not clean."""
        return self.pool.check()

    @verb
    def event_list(self, limit: EventLimit = 100, since: Epoch | None = None,
                   kind: EventKind | None = None) -> list[dict]:
        """The newest ``limit`` events (0: all), oldest first; from time ``since`` (Unix
        seconds) on, of ``kind`` only."""
        return meta_events.list_events(self.pool, limit, since=since, kind=kind)

    @verb
    def event_ack(self, id: EventId) -> dict:
        """Acknowledge an event (its record gets ``acked``, the time)."""
        return meta_events.ack(self.pool, id)

    @verb
    def event_wait(self, cursor: Cursor | None = None, kind: EventKind | None = None,
                   timeout: WaitSeconds = 25) -> dict:
        """Events delivered after ``cursor`` (``events --follow``'s long poll); only a
        running server delivers events."""
        raise ServerError(f"no server is running on pool {self.pool.path}; events are "
                          f"followed only while `vmblock serve` runs")

    @verb
    def vdisk_create(self, name: Name, size: SizeText, vm: Name | None = None,
                     target: Iqn | None = None, force: bool = False, block_size: BlockSize = 512,
                     removable: bool = False, physical_block_size: BlockSize = 4096) -> dict:
        """Create a thin vdisk at the lowest free LUN of ``target`` (created if new), with
        ``block_size``-byte logical blocks (512 or 4096) on ``physical_block_size``-byte
        physical ones (4096, or 512 for 512n), removable (install media) or not; refused
        while space is low (``pool show``'s ``accepting_new_vms``) unless ``force``."""
        policies.check_admission(self.pool, force, "create it")
        disk, new_target = self.pool.create_vdisk(
            name, parse_size(size), vm=vm, target=target, block_size=block_size,
            removable=removable, physical_block_size=physical_block_size)
        self.vdisk_created(disk, new_target)
        return self._vdisk_json(disk)

    @verb
    def vdisk_eject(self, name: Name) -> dict:
        """Eject a removable vdisk's medium (initiators get NOT READY, MEDIUM NOT PRESENT);
        refused while an initiator prevents medium removal."""
        disk = self._removable(name)
        self.set_medium(disk, False)
        return self._vdisk_json(disk)

    @verb
    def vdisk_load(self, name: Name) -> dict:
        """Load a removable vdisk's medium again (initiators get a unit attention)."""
        disk = self._removable(name)
        self.set_medium(disk, True)
        return self._vdisk_json(disk)

    def _removable(self, name: str) -> Vdisk:
        disk = self.pool.vdisk(name)
        if not disk.removable:
            raise InvalidArgument(f"vdisk {name} is not removable (vdisk create --removable)")
        return disk

    @verb
    def vdisk_list(self, vm: Name | None = None) -> list[dict]:
        """Every vdisk (of one VM if ``vm``) with its URL and used bytes."""
        return self._vdisks_json(self.pool.vdisks(vm=vm))

    @verb
    def vdisk_set(self, name: Name, read_only: bool | None = None,
                  max_iops: PolicyText | None = None, max_mbps: PolicyText | None = None,
                  min_iops: PolicyText | None = None, shares: PolicyText | None = None) -> dict:
        """Change a vdisk; a running server applies it at once. ``read_only``: refuse writes
        (DATA PROTECT, WRITE PROTECTED; MODE SENSE shows WP) or take them again. QoS of its
        own (max/min IOPS in 8 KiB units, max MB/s, shares; 'none' or 0 clears one): it then
        has its own queue instead of its VM's (docs/qos.md). The QoS values are checked
        before anything changes."""
        changes = {k: v for k, v in (("max_iops", max_iops), ("max_mbps", max_mbps),
                                     ("min_iops", min_iops), ("shares", shares))
                   if v is not None}
        if read_only is None and not changes:
            raise InvalidArgument("nothing to set: give read_only or a QoS value")
        disk = self.pool.vdisk(name)
        if changes:
            disk = policies.set_vdisk_qos(self.pool, name, changes)
            self.policies_changed()
        if read_only is not None:
            disk = self.pool.set_vdisk_read_only(name, read_only)
            self.vdisk_protection_changed(disk)
        return self._vdisk_json(disk)

    @verb
    def vdisk_show(self, name: Name) -> dict:
        """One vdisk with the iscsi:// URL initiators use, its bytes on each tier and the
        shared datastore it holds (``datastore``: an LVM2 VG's volumes, or null)."""
        return self._vdisk_json(self.pool.vdisk(name))

    @verb
    def vdisk_delete(self, name: Name, force: bool = False) -> dict:
        """Delete a vdisk and its data. ``force``: even while iSCSI sessions use it (only a
        server has any)."""
        disk = self.pool.delete_vdisk(name)
        self.vdisk_deleted(disk)
        return disk.dump()

    @verb
    def config_get(self, key: Key) -> dict:
        """One config key's value."""
        return {"key": key, "value": self.pool.config_get(key)}

    @verb
    def config_set(self, key: Key, value: Value) -> dict:
        """Set a config key; ``live``: whether the running server applied it at once."""
        self.pool.config_set(key, value)
        return {"key": key, "value": value, "live": self.config_changed(key)}

    @verb
    def config_unset(self, key: Key) -> dict:
        """Remove a config key (back to its default); ``live`` as for ``config_set``."""
        self.pool.config_unset(key)
        return {"key": key, "live": self.config_changed(key)}

    @verb
    def config_list(self) -> dict:
        """Every config key set in the pool."""
        return self.pool.config()

    @verb
    def session_list(self) -> list[dict]:
        """The logged-in iSCSI sessions; only a running server has any."""
        raise ServerError(f"no server is running on pool {self.pool.path}; "
                          f"sessions exist only while `vmblock serve` runs")

    @verb
    def pool_show(self) -> dict:
        """The whole model tree: targets and LUNs, VMs, vdisks, snapshots, config, store
        usage, recent events and eviction groups; ``accepting_new_vms`` and, when not, the
        reason (space is low)."""
        accepting, reason = policies.admission(self.pool)
        return dict(self.pool.dump(), accepting_new_vms=accepting,
                    accepting_new_vms_reason=reason or None)

# (noun, verb) -> Verb of every admin verb: Api's own and those of its parts
VERBS: dict[tuple[str, str], Verb] = collect({"": Api, "cache": CacheVerbs,
                                              "hypervisor": HypervisorVerbs,
                                              "datastores": DatastoreVerbs,
                                              "stats": StatsVerbs})


def run_verb(api: Api, noun: str, name: str, kwargs: dict):
    """Run a verb on ``api`` with checked arguments; an awaitable for the server's slow verbs."""
    v = VERBS.get((noun, name))
    if v is None:
        raise InvalidArgument(f"unknown admin verb {noun} {name}")
    check_args(noun, name, v.args, kwargs)
    return v.bound(api)(**kwargs)
