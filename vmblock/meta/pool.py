"""The pool: a directory with the meta DB (RocksDB), the tiers and the admin socket.

Layout on disk::

    POOL/meta/              RocksDB, opened by one process at a time (the server while it runs)
    POOL/capacity           capacity tier: a sparse file (or the block device store.capacity_path)
    POOL/flash              flash tier for the cache (store.flash_path / store.flash_size)
    POOL/admin.sock         the running server's admin API

The pool holds CHAP secrets, so it is owner-only: the directory and ``meta/`` 0700, every file
0600. Opening a pool makes it so (pools made before were 0755/0644); processes that write
into it run under umask 077 so the files RocksDB adds later are born that way.

``Pool`` is the one object callers hold: it owns the meta DB handle (and with it RocksDB's lock
on the pool), the extent store and the records, and keeps targets, VMs and vdisks itself. The
other jobs live beside it in ``vmblock.meta`` as functions that take the open pool, and the
public methods of the same names delegate to them in one line, so no caller changes:

* ``model``: the records (``Target``, ``Vm``, ``Vdisk``, ``Snapshot``), the key layout of the
  meta DB, name and size checks, the batch helpers;
* ``snapshots``: snapshots, revert, clones;
* ``config``: config keys, the settings merge, ``check_settings``;
* ``check``: the pool check (``vmblock pool check``);
* ``groups``: eviction groups (``Pool.eviction_groups``), through ``record``/``write_records``.

Those modules read and write through the pool's public record methods; none imports this one.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import time
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import asdict
from typing import TYPE_CHECKING

from rocksdict import WriteBatch

from vmblock import DEFAULT_TARGET
from vmblock.errors import AlreadyExists, InvalidArgument, NotFound, PoolError, io_failure
from vmblock.meta import config, hypervisors, policies, snapshots
from vmblock.meta.check import check_pool
from vmblock.meta.db import MetaDB, MetaIOError
from vmblock.meta.groups import EvictionGroups
from vmblock.meta.model import (
    BLOCK_SIZE,
    BLOCK_SIZES,
    EVENT_SEVERITIES,
    MAX_LUN,
    Snapshot,
    Target,
    Vdisk,
    Vm,
    check_name,
    check_size,
    delete_record,
    new_batch,
    now,
    put_record,
    put_vdisk,
)
from vmblock.meta.reservations import pr_key
from vmblock.settings import NEW_TARGET_CHAP_KEY, Settings, check_iqn
from vmblock.store.layout import AU_SIZE, TIER_NAMES
from vmblock.units import format_size

if TYPE_CHECKING:
    # imported where used: the store brings its Numba kernels, which the listing verbs on a
    # pool no server runs never need (used bytes come from vmblock.store.census)
    from vmblock.store.census import LeafCensus
    from vmblock.store.extent import ExtentStore
    from vmblock.store.pool_store import PoolStore
    from vmblock.store.tier import Tier

SCHEMA_VERSION = 2
OWNER_ONLY_DIR = 0o700
OWNER_ONLY_FILE = 0o600
OWNER_ONLY_UMASK = 0o077      # of processes that write into a pool (the server, the CLI)
# A new target's CHAP credentials: this user, and a secret of this many random bytes
# (URL-safe base64: 24 characters, nothing an iscsi:// URL must escape).
TARGET_CHAP_USER = "vmblock"
TARGET_CHAP_SECRET_BYTES = 18


def _make_owner_only(path: str) -> None:
    """chmod the pool directory, its subdirectories and files to owner-only; symlinks and
    what they point at (a tier on a block device) are left alone."""
    for root, dirs, files in os.walk(path):
        for name, mode in [(None, OWNER_ONLY_DIR)] + [(d, OWNER_ONLY_DIR) for d in dirs] + \
                [(f, OWNER_ONLY_FILE) for f in files]:
            p = root if name is None else os.path.join(root, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) == mode:
                continue
            try:
                os.chmod(p, mode)
            except PermissionError:
                raise PoolError(f"cannot make pool {path} owner-only ({p} belongs to uid "
                                f"{st.st_uid}); run vmblock as the pool's owner") from None


class Pool:
    """An open pool. Holds RocksDB's lock: one process (CLI command or server) at a time."""

    def __init__(self, path: str, create: bool = False):
        self.path = os.path.abspath(path)
        self.meta_path = os.path.join(self.path, "meta")
        self.socket_path = os.path.join(self.path, "admin.sock")
        self._store: PoolStore | None = None
        # the leaf keys, counted per map, while the store is not open (used bytes)
        self._census: LeafCensus | None = None
        # settings that win over the pool's config keys for this process (serve --config)
        self.overrides: dict[str, str] = {}
        # called with each event record_event persists (the server's delivery hangs here)
        self.event_listeners: list = []
        self.eviction_groups = EvictionGroups(self)
        if os.path.isdir(self.path) and not os.access(self.path, os.R_OK | os.W_OK | os.X_OK):
            raise PoolError(f"pool {self.path} belongs to uid {os.stat(self.path).st_uid} and "
                            f"holds CHAP secrets: run vmblock as its owner or root")
        exists = os.path.exists(os.path.join(self.meta_path, "CURRENT"))
        if not exists and not create:
            raise PoolError(f"no pool at {self.path} (create one with `vmblock serve` "
                            f"or `vmblock vm create`)")
        try:
            os.makedirs(self.path, mode=OWNER_ONLY_DIR, exist_ok=True)
        except OSError as e:
            raise PoolError(f"cannot create pool {self.path}: {e.strerror}") from None
        _make_owner_only(self.path)
        try:
            self._db = MetaDB(self.meta_path, create)
        except Exception as e:   # rocksdict raises a bare Exception for every RocksDB error
            if "lock" in str(e).lower():
                raise PoolError(f"pool {self.path} is in use by another process "
                                f"(is its server starting or stopping?)") from None
            raise PoolError(f"cannot open pool {self.path}: {e}") from None
        version = self._get("pool/version")
        if version is None:
            try:
                self._open_tiers()[0].close()   # the tier files are part of a new pool
            except BaseException:
                self._db.close()
                raise
            batch = new_batch()
            put_record(batch, "pool/version", SCHEMA_VERSION)
            put_record(batch, "pool/au_size", AU_SIZE)
            put_record(batch, "pool/next_map", 1)
            put_record(batch, f"config/{NEW_TARGET_CHAP_KEY}", "Yes")
            self.put_target(batch, Target(DEFAULT_TARGET, created=now()), chap=True)
            self._commit(batch)
            _make_owner_only(self.path)     # what RocksDB and the tiers made before the batch
        elif version != SCHEMA_VERSION:
            self._db.close()
            raise PoolError(f"pool {self.path} has schema {version}, this vmblock knows "
                            f"{SCHEMA_VERSION} (pools of the sparse-file store are not "
                            f"converted: copy the vdisks out with qemu-img convert)")

    # --- raw access ---------------------------------------------------------------------------

    def _get(self, key: str):
        raw = self._db.get(key.encode())
        return None if raw is None else json.loads(raw)

    def _scan(self, prefix: str):
        """(key suffix, value) of every key starting with ``prefix``, in key order."""
        p = prefix.encode()
        for k, v in self._db.scan(p):
            yield k[len(p):].decode(), json.loads(v)

    def _commit(self, batch: WriteBatch) -> None:
        try:
            self._db.write(batch)
        except MetaIOError as e:
            raise io_failure(e) from None

    # --- records, for the modules beside the pool (snapshots, config, check, groups) ----------

    def record(self, key: str):
        """The JSON value stored at ``key``, or None."""
        return self._get(key)

    def records(self, prefix: str) -> list[tuple[str, object]]:
        """(key suffix, value) of every record whose key starts with ``prefix``, in key order."""
        return list(self._scan(prefix))

    def records_range(self, lo: str, hi: str) -> list[tuple[str, object]]:
        """(key, value) of every record with ``lo <= key < hi``, in key order (the stats
        history's time ranges)."""
        return [(k.decode(), json.loads(v)) for k, v in self._db.scan_range(lo.encode(),
                                                                            hi.encode())]

    def write_records(self, put: dict[str, object], delete: Iterable[str] = ()) -> None:
        """Remove the keys ``delete`` and store ``put`` in one synced batch: one atomic change."""
        batch = new_batch()
        for key in delete:
            delete_record(batch, key)
        for key, value in put.items():
            put_record(batch, key, value)
        self._commit(batch)

    def close(self) -> None:
        """Close the extent store (its final commit) and then the meta DB; raises PoolError when
        that commit fails, since writes not covered by a SYNCHRONIZE CACHE are then lost."""
        try:
            if self._store is not None:
                store, self._store = self._store, None
                store.close()
        except OSError as e:
            raise PoolError(f"final commit failed ({e.strerror or e}): writes no SYNCHRONIZE "
                            f"CACHE covered are not durable") from None
        finally:
            self._db.close()

    # --- the extent store ---------------------------------------------------------------------

    def settings(self) -> Settings:
        """The pool's config keys overridden by ``overrides`` (serve --config) for this
        process (``config.settings``, the one place the two are merged)."""
        return config.settings(self)

    def _open_tiers(self) -> tuple[Tier, Tier]:
        settings = self.settings()
        cap = self._tier("capacity", settings.get("store.capacity_path"),
                         settings.get("store.capacity_size"))
        try:
            flash = self._tier("flash", settings.get("store.flash_path"),
                               settings.get("store.flash_size"))
        except BaseException:
            cap.close()
            raise
        return cap, flash

    def _tier(self, tier: str, path: str, size_bytes: int) -> Tier:
        from vmblock.store.tier import Tier
        path = config.tier_path(self.path, tier, path)
        try:
            return Tier(tier, path, size_bytes)
        except OSError as e:    # e.g. EFBIG: larger than its file system's largest file
            raise PoolError(f"cannot make the {tier} tier {path} {format_size(size_bytes)} "
                            f"(store.{tier}_size): {e.strerror}") from None

    @property
    def store(self) -> PoolStore:
        """The pool's extent store, opened (maps loaded, refcounts rebuilt) on first use."""
        if self._store is None:
            from vmblock.store.pool_store import PoolStore
            cap, flash = self._open_tiers()
            try:
                disks = self.vdisks()
                live = {d.map_id: d.size_bytes for d in disks}
                tiers = {d.map_id: TIER_NAMES.index(d.tier) for d in disks}
                settings = self.settings()
                thresholds = settings.get("store.low_space_thresholds")
                try:
                    cache = settings.get("cache.size").of(flash.size_bytes)
                except InvalidArgument:
                    cache = flash.size_bytes    # the server refuses it; keep slots safe
                self._store = PoolStore(self._db, cap, flash, live, thresholds,
                                        au=self._get("pool/au_size") or AU_SIZE,
                                        tiers=tiers, cache_bytes=cache)
            except BaseException:
                cap.close()
                flash.close()
                raise
            # the store's events are delivered as the pool's own; quotas follow the records
            self._store.events.listeners = self.event_listeners
            policies.attach(self)
        return self._store

    @property
    def store_open(self) -> bool:
        """Whether the extent store is open (``store`` opens it on first use)."""
        return self._store is not None

    def next_map_ids(self, batch: WriteBatch, count: int = 1) -> list[int]:
        """``count`` new extent-map ids, reserved in ``batch``; ids are never reused."""
        first = self._get("pool/next_map") or 1
        if first + count > 0xFFFFFFFF:
            raise PoolError("extent map ids exhausted")
        put_record(batch, "pool/next_map", first + count)
        return list(range(first, first + count))

    # --- targets ------------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        """Every target record in the pool, in key (IQN) order."""
        return [Target(**v) for _, v in self._scan("target/")]

    def target(self, iqn: str) -> Target:
        """The record of target ``iqn``; NotFound if the pool has none."""
        v = self._get(f"target/{iqn}")
        if v is None:
            raise NotFound(f"no target {iqn}")
        return Target(**v)

    def put_target(self, batch: WriteBatch, target: Target, chap: bool | None = None) -> None:
        """A new target's record and, when the pool gives new targets CHAP (``chap`` None:
        as ``auth.new_target_chap`` says), its random CHAP credentials."""
        if chap is None:
            chap = self.settings().get(NEW_TARGET_CHAP_KEY)
        put_record(batch, f"target/{target.iqn}", target.dump())
        if chap:
            prefix = f"config/auth.target.{target.iqn}."
            put_record(batch, prefix + "chap_user", TARGET_CHAP_USER)
            put_record(batch, prefix + "chap_secret",
                       secrets.token_urlsafe(TARGET_CHAP_SECRET_BYTES))

    def luns(self, iqn: str) -> dict[int, str]:
        """LUN -> vdisk uuid of one target."""
        return {int(k): v for k, v in self._scan(f"lun/{iqn}/")}

    # --- VMs ----------------------------------------------------------------------------------

    def vms(self) -> list[Vm]:
        """Every VM record, sorted by name."""
        return sorted((Vm(**v) for _, v in self._scan("vm/")), key=lambda vm: vm.name)

    def vm(self, name: str) -> Vm:
        """The VM named ``name``; NotFound if there is none."""
        uid = self._get(f"vmname/{name}")
        if uid is None:
            raise NotFound(f"no VM named {name!r}")
        return Vm(**self._get(f"vm/{uid}"))

    def vm_by_uuid(self, uid: str) -> Vm:
        """The VM with uuid ``uid`` (what vdisk and snapshot records point at); NotFound if gone."""
        v = self._get(f"vm/{uid}")
        if v is None:
            raise NotFound(f"no VM with uuid {uid}")
        return Vm(**v)

    def create_vm(self, name: str, guest_os: str = "", location: str = "") -> Vm:
        """Record a new VM (no vdisks yet) in one batch; the name must be valid and unused."""
        check_name("VM", name)
        if self._get(f"vmname/{name}") is not None:
            raise AlreadyExists(f"a VM named {name!r} already exists")
        vm = Vm(str(uuidlib.uuid4()), name, guest_os=guest_os, location=location, created=now())
        batch = new_batch()
        put_record(batch, f"vm/{vm.uuid}", vm.dump())
        put_record(batch, f"vmname/{name}", vm.uuid)
        self._commit(batch)
        return vm

    def update_vm(self, name: str, **fields) -> Vm:
        """Change a VM's descriptive fields (``Vm.EDITABLE``) in one batch."""
        vm = self.vm(name)
        for key, value in fields.items():
            if key not in Vm.EDITABLE:
                raise InvalidArgument(f"VM field {key!r} cannot be set")
            setattr(vm, key, value)
        batch = new_batch()
        put_record(batch, f"vm/{vm.uuid}", vm.dump())
        self._commit(batch)
        return vm

    def delete_vm(self, name: str, purge: bool = False) -> tuple[Vm, list[Vdisk]]:
        """Delete a VM and its snapshots; with ``purge`` also its vdisks (one batch).
        Returns the VM and the vdisks deleted with it."""
        vm = self.vm(name)
        disks = self.vdisks(vm=name)
        if disks and not purge:
            raise InvalidArgument(f"VM {name!r} still has vdisks "
                                  f"{', '.join(d.name for d in disks)}; delete them first "
                                  f"(or use --purge)")
        # one-vdisk snapshots go with their vdisk (_drop_vdisk), VM snapshots with the VM
        snaps = [s for s in self.snapshots() if s.vm == vm.uuid and s.vdisk is None]
        batch = new_batch()
        with self.store.transaction(batch) as txn:
            for snap in snaps:
                snapshots.drop_snapshot(batch, txn, snap)
            for disk in disks:
                self._drop_vdisk(batch, txn, disk)
            delete_record(batch, f"vm/{vm.uuid}")
            delete_record(batch, f"vmname/{name}")
        return vm, disks

    # --- vdisks -------------------------------------------------------------------------------

    def vdisks(self, vm: str | None = None) -> list[Vdisk]:
        """Every vdisk sorted by name, or only those of the VM named ``vm``."""
        disks = (Vdisk(**v) for _, v in self._scan("vdisk/"))
        if vm is not None:
            owner = self.vm(vm).uuid
            disks = (d for d in disks if d.vm == owner)
        return sorted(disks, key=lambda d: d.name)

    def vdisk(self, name: str) -> Vdisk:
        """The vdisk named ``name``; NotFound if there is none."""
        uid = self._get(f"vdiskname/{name}")
        if uid is None:
            raise NotFound(f"no vdisk named {name!r}")
        return Vdisk(**self._get(f"vdisk/{uid}"))

    def create_vdisk(self, name: str, size_bytes: int, vm: str | None = None,
                     target: str | None = None, block_size: int = BLOCK_SIZE,
                     removable: bool = False,
                     physical_block_size: int = BLOCK_SIZES[-1]) -> tuple[Vdisk, bool]:
        """Create a vdisk at the lowest free LUN of ``target`` (created if new), with logical
        blocks of ``block_size`` bytes on physical blocks of ``physical_block_size`` (both one
        of ``BLOCK_SIZES``, the physical one not smaller), removable or not.

        Returns the vdisk and whether its target is new, so a live server can publish it.
        """
        check_name("vdisk", name)
        if block_size not in BLOCK_SIZES:
            raise InvalidArgument(f"block size {block_size} is not one of "
                                  f"{', '.join(map(str, BLOCK_SIZES))}")
        if physical_block_size not in BLOCK_SIZES or physical_block_size < block_size:
            raise InvalidArgument(f"physical block size {physical_block_size} must be one of "
                                  f"{', '.join(map(str, BLOCK_SIZES))} and at least the "
                                  f"block size {block_size}")
        check_size(size_bytes, block_size)
        iqn = check_iqn(target or DEFAULT_TARGET)
        if self._get(f"vdiskname/{name}") is not None:
            raise AlreadyExists(f"a vdisk named {name!r} already exists")
        owner = self.vm(vm).uuid if vm is not None else None
        new_target = self._get(f"target/{iqn}") is None
        lun = self.free_luns(iqn, 1)[0]
        batch = new_batch()
        with self.store.transaction(batch) as txn:
            mid = self.next_map_ids(batch)[0]
            disk = Vdisk(str(uuidlib.uuid4()), name, owner, size_bytes, iqn, lun,
                         block_size=block_size, created=now(), map_id=mid,
                         removable=removable, physical_block_size=physical_block_size)
            if new_target:
                self.put_target(batch, Target(iqn, created=now()))
            put_vdisk(batch, disk)
            txn.new_empty(mid, size_bytes)
        return disk, new_target

    def free_luns(self, iqn: str, count: int) -> list[int]:
        """The ``count`` lowest LUNs of target ``iqn`` no vdisk uses; InvalidArgument when
        there are not that many."""
        prefix = f"lun/{iqn}/".encode()     # the keys say which LUNs are used: no values read
        used = {int(k[len(prefix):]) for k, _ in self._db.scan(prefix)}
        free = [n for n in range(MAX_LUN + 1) if n not in used][:count]
        if len(free) < count:
            raise InvalidArgument(f"target {iqn} has no free LUN")
        return free

    def _drop_vdisk(self, batch: WriteBatch, txn, disk: Vdisk) -> None:
        """Records, map and one-vdisk snapshots of ``disk`` into ``batch``."""
        for snap in self.snapshots():
            if snap.vdisk == disk.uuid:
                snapshots.drop_snapshot(batch, txn, snap)
        delete_record(batch, f"vdisk/{disk.uuid}")
        delete_record(batch, f"vdiskname/{disk.name}")
        delete_record(batch, f"lun/{disk.target}/{disk.lun:05d}")
        delete_record(batch, f"datastore/{disk.uuid}")     # vmblock.meta.datastores
        delete_record(batch, pr_key(disk.uuid))
        txn.drop_map(disk.map_id)

    def delete_vdisk(self, name: str) -> Vdisk:
        """Delete a vdisk, its extent map and its one-vdisk snapshots in one batch; its AUs
        go back to the allocator unless a VM snapshot or a clone still shares them."""
        disk = self.vdisk(name)
        batch = new_batch()
        with self.store.transaction(batch) as txn:
            self._drop_vdisk(batch, txn, disk)
        return disk

    def resize_vdisk(self, name: str, size_bytes: int) -> Vdisk:
        """Grow a vdisk to ``size_bytes`` (record and extent map in one batch). Shrinking is
        refused, as it would cut off data; the same size changes nothing."""
        disk = self.vdisk(name)
        check_size(size_bytes, disk.block_size)
        if size_bytes < disk.size_bytes:
            raise InvalidArgument(f"a vdisk can only grow ({disk.size_bytes} -> "
                                  f"{size_bytes} bytes would cut off data)")
        if size_bytes == disk.size_bytes:
            return disk
        disk.size_bytes = size_bytes
        batch = new_batch()
        with self.store.transaction(batch) as txn:
            put_record(batch, f"vdisk/{disk.uuid}", asdict(disk))
            txn.resize(disk.map_id, size_bytes)
        return disk

    def set_vdisk_read_only(self, name: str, read_only: bool) -> Vdisk:
        """Make a vdisk read-only (every write gets DATA PROTECT) or writable again."""
        disk = self.vdisk(name)
        if disk.read_only != read_only:
            disk.read_only = read_only
            batch = new_batch()
            put_record(batch, f"vdisk/{disk.uuid}", asdict(disk))
            self._commit(batch)
        return disk

    def open_store(self, disk: Vdisk) -> ExtentStore:
        """An ``ExtentStore`` on the vdisk's live map: the store the server puts under its LUN."""
        from vmblock.store.extent import ExtentStore
        return ExtentStore(self.store, disk.map_id, disk.block_size)

    def used_bytes(self, disk: Vdisk) -> int:
        """Bytes of the pool the vdisk maps (AUs written and not unmapped), shared or not:
        the live map's count, or while the store is not open its leaf keys' (the same)."""
        if self._store is not None:
            return self._store.map_used_bytes(disk.map_id)
        return sum(self._persisted_use(disk).values())

    def tier_bytes(self, disk: Vdisk) -> dict[str, int]:
        """Bytes the vdisk maps on each tier (a partly done move leaves some on both)."""
        if self._store is not None:
            return self._store.map_tier_bytes(disk.map_id)
        return self._persisted_use(disk)

    def _persisted_use(self, disk: Vdisk) -> dict[str, int]:
        """``tier_bytes`` of a vdisk while the store is not open: its leaf keys, all read at
        once on first use (``vmblock.store.census``), which nothing else changes until the
        store opens. Opens the store when the pool still needs migrating."""
        from vmblock.store.census import read_census
        if self._census is None:
            self._census = read_census(self._db, self._get("pool/au_size") or AU_SIZE)
            if self._census is None:
                return self.store.map_tier_bytes(disk.map_id)
        return self._census.tier_bytes(disk.map_id, disk.size_bytes)

    def move_vdisk(self, name: str, tier: str) -> dict:
        """Relocate the vdisk's live map to ``tier`` (vmblock vdisk move): new allocations go
        there from the start, every mapped AU elsewhere is copied and remapped chunk by chunk
        (PoolStore.move: crash-safe, live), then the vdisk record names the tier. Snapshots
        keep their AUs. Not enough free AUs on ``tier``: NoSpace, nothing changed."""
        if tier not in TIER_NAMES:
            raise InvalidArgument(f"tier must be one of {', '.join(TIER_NAMES)}, not {tier!r}")
        disk = self.vdisk(name)
        result = self.store.move(disk.map_id, TIER_NAMES.index(tier))
        disk = self.vdisk(name)     # re-read: a resize may have run meanwhile
        if disk.tier != tier:
            disk.tier = tier
            batch = new_batch()
            with self.store.transaction(batch):
                put_record(batch, f"vdisk/{disk.uuid}", asdict(disk))
        return dict(result, name=name, tier_bytes=self.tier_bytes(disk))

    # --- snapshots, clones, revert: vmblock.meta.snapshots ------------------------------------

    def snapshots(self, vm: str | None = None) -> list[Snapshot]:
        """Every snapshot, or those of the VM named ``vm``, oldest first."""
        return snapshots.snapshots(self, vm)

    def snapshot(self, name: str, vm: str | None = None, vdisk: str | None = None) -> Snapshot:
        """A snapshot by name within its VM (VM snapshots) or vdisk (one-vdisk snapshots)."""
        return snapshots.snapshot(self, name, vm, vdisk)

    def snapshot_vm(self, vm_name: str, name: str) -> Snapshot:
        """Freeze every vdisk of a VM in one batch (the server drains their writes first)."""
        return snapshots.snapshot_vm(self, vm_name, name)

    def snapshot_vdisk(self, vdisk_name: str, name: str) -> Snapshot:
        """Freeze one vdisk in a snapshot named within that vdisk (metadata only, one batch)."""
        return snapshots.snapshot_vdisk(self, vdisk_name, name)

    def delete_snapshot(self, name: str, vm: str | None = None,
                        vdisk: str | None = None) -> Snapshot:
        """Delete a snapshot and its frozen maps in one batch; AUs nothing else shares are freed."""
        return snapshots.delete_snapshot(self, name, vm, vdisk)

    def revert(self, snap: Snapshot) -> list[tuple[Vdisk, bool]]:
        """Make each still-existing vdisk of ``snap`` its frozen map again, in one batch;
        (vdisk, size changed) per reverted vdisk."""
        return snapshots.revert(self, snap)

    def clone_vm(self, src_name: str, new_name: str, snapshot: str | None = None,
                 live: bool = False, inherit: bool = True) -> tuple[Vm, list[Vdisk], list[str]]:
        """A new VM sharing every AU of a snapshot (or the live vdisks) of ``src_name``, with
        its policies unless not ``inherit``; the VM, its vdisks and the targets that had to
        be created."""
        return snapshots.clone_vm(self, src_name, new_name, snapshot, live, inherit)

    # --- events -------------------------------------------------------------------------------

    def record_event(self, kind: str, severity: str, message: str, *, vm: str | None = None,
                     vdisk: str | None = None, advice: str | None = None, **fields) -> dict:
        """Persist one event ``{id, time, kind, severity, vm?, vdisk?, message, advice?, ...}``
        now (one synced write) and hand it to every listener in ``event_listeners`` (delivery:
        follow streams, hooks); the record, whose ``id`` is its key in time order."""
        if severity not in EVENT_SEVERITIES:
            raise InvalidArgument(f"event severity {severity!r} is not one of "
                                  f"{', '.join(EVENT_SEVERITIES)}")
        t = time.time()
        event = dict(time=t, kind=kind, severity=severity, message=message, **fields)
        event.update({k: v for k, v in (("vm", vm), ("vdisk", vdisk), ("advice", advice))
                      if v is not None})
        event["id"] = f"{int(t * 1e6):020d}/{kind}"
        self.write_records({f"event/{event['id']}": event})
        for listener in list(self.event_listeners):
            listener(event)
        return event

    def events(self, limit: int = 100) -> list[dict]:
        """Recorded events, oldest first, with those not yet committed at the end."""
        evs = [v for _, v in self._scan("event/")]
        if self._store is not None:
            evs += self._store.pending_events()
        return evs[-limit:] if limit else evs

    # --- hypervisor records: vmblock.meta.hypervisors ---------------------------------------

    def hypervisors(self) -> list[hypervisors.Hypervisor]:
        """Every hypervisor record (``vmblock hypervisor list``), by name."""
        return hypervisors.hypervisors(self)

    def add_hypervisor(self, name: str, uri: str, interval: float) -> hypervisors.Hypervisor:
        """Store a new hypervisor record (name valid and unused, URI without a password)."""
        return hypervisors.add_hypervisor(self, name, uri, interval)

    def remove_hypervisor(self, name: str) -> hypervisors.Hypervisor:
        """Delete a hypervisor record; its VMs stay."""
        return hypervisors.remove_hypervisor(self, name)

    # --- fsck: vmblock.meta.check -------------------------------------------------------------

    def check(self) -> dict:
        """``vmblock pool check``: records against each other, then every extent-map key
        against the records, the tier and the in-memory refcounts (``check_pool``)."""
        return check_pool(self)

    # --- config: vmblock.meta.config ----------------------------------------------------------

    def config(self) -> dict[str, str]:
        """The config keys stored in the pool, as strings (``settings()`` adds --config)."""
        return config.config(self)

    def config_get(self, key: str) -> str:
        """One stored key's value; NotFound when it is not set (its default applies)."""
        return config.config_get(self, key)

    def config_set(self, key: str, value: str) -> None:
        """Store ``key``: checked alone, against the tiers, then with the pool's other keys."""
        config.config_set(self, key, value)

    def config_unset(self, key: str) -> None:
        """Remove a key; refused when its default would not go with the keys still set."""
        config.config_unset(self, key)

    # --- whole tree ---------------------------------------------------------------------------

    def dump(self) -> dict:
        """The whole model tree as JSON-ready dicts (``vmblock pool show``): targets with LUNs,
        VMs, vdisks with bytes used, snapshots, config, store usage, recent events, groups,
        shared datastores."""
        return {
            "path": self.path,
            "targets": [dict(t.dump(), luns={str(k): v for k, v in self.luns(t.iqn).items()})
                        for t in self.targets()],
            "vms": [vm.dump() for vm in self.vms()],
            "vdisks": [dict(d.dump(), used_bytes=self.used_bytes(d)) for d in self.vdisks()],
            "snapshots": [s.dump() for s in self.snapshots()],
            "config": self.config(),
            "store": self.store.usage(),
            "events": self.events(20),
            "eviction_groups": self.eviction_groups.dump(),
            "hypervisors": [h.dump() for h in self.hypervisors()],
            # vdisk uuid -> what it holds (an LVM2 VG's map): vmblock.meta.datastores
            "datastores": dict(self._scan("datastore/")),
        }
