"""The pool: a directory with the meta DB (RocksDB), the tiers and the admin socket.

Layout on disk::

    POOL/meta/              RocksDB, opened by one process at a time (the server while it runs)
    POOL/capacity           capacity tier: a sparse file (or the block device store.capacity_path)
    POOL/flash              flash tier for the cache (store.flash_path / store.flash_size)
    POOL/admin.sock         the running server's admin API

The pool holds CHAP secrets, so it is owner-only: the directory and ``meta/`` 0700, every file
0600. Opening a pool makes it so (pools made before were 0755/0644); processes that write
into it run under umask 077 so the files RocksDB adds later are born that way.

Key layout of the meta DB. Text keys (UTF-8, values JSON) are the model tree; every atomic
change is one WriteBatch, written with sync so an acknowledged change survives a crash::

    pool/version                 2
    pool/au_size                 65536                              allocation unit, fixed
    pool/next_map                next extent-map id (u32)
    target/<iqn>                 {"iqn", "alias", "created"}
    vm/<uuid>                    {"uuid", "name", "guest_os", "active", "created", "meta_stale",
                                  "parent"}                          parent: clone lineage
    vmname/<name>                "<vm uuid>"                       unique VM names
    vdisk/<uuid>                 {"uuid", "name", "vm", "size_bytes", "target", "lun",
                                  "block_size", "created", "map_id", "parent", "tier"}
                                                     tier: "capacity" | "flash", where new
                                                     allocations go (vdisk move)
    vdiskname/<name>             "<vdisk uuid>"                    unique vdisk names
    lun/<iqn>/<lun:05d>          "<vdisk uuid>"                    LUN map of each target
    snapshot/<uuid>              {"uuid", "name", "vm", "vdisk", "created",
                                  "disks": [{"vdisk", "name", "map_id", "src_map",
                                             "size_bytes", "used_bytes"}]}
    snapname/<scope>/<name>      "<snapshot uuid>"   scope: VM uuid (VM snapshot) or vdisk uuid
    event/<usec:020d>/<kind>     {"time", "kind", ...}             low-space events etc.
    config/<dotted.key>          "<value>"                          see vmblock.settings.TABLE
    cachegroup/, cacheassign/, cachepin/                eviction groups: vmblock.meta.groups

Binary keys ``M<map id><vAU>`` hold the extent maps; their layout is documented in
``vmblock.store.extent``, which owns them. A vdisk record and its map keys change in the same
batch, so a crash never leaves a vdisk without its map or a map without its owner.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from rocksdict import WriteBatch

from vmblock import DEFAULT_TARGET
from vmblock.errors import AlreadyExists, InvalidArgument, NotFound, PoolError, io_failure
from vmblock.iscsi.params import validate_offer
from vmblock.meta.db import MetaDB, MetaIOError
from vmblock.meta.groups import EvictionGroups
from vmblock.settings import (
    MAX_VDISK_BYTES,
    NEW_TARGET_CHAP_KEY,
    TABLE,
    Settings,
    check_iqn,
    check_key,
)
from vmblock.store.extent import ExtentStore
from vmblock.store.layout import AU_SIZE, TIER_NAMES
from vmblock.store.pool_store import PoolStore
from vmblock.store.tier import Tier
from vmblock.units import format_size

SCHEMA_VERSION = 2
MAX_LUN = 16383            # SAM-5 flat space addressing
BLOCK_SIZE = 512
# 24-bit company id in IEEE CID form (second-lowest bit of the first octet set: locally assigned,
# not an IEEE-registered OUI) placed in the NAA designator of every vdisk.
VMBLOCK_CID = 0x7A6D62
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
OWNER_ONLY_DIR = 0o700
OWNER_ONLY_FILE = 0o600
OWNER_ONLY_UMASK = 0o077      # of processes that write into a pool (the server, the CLI)
# A new target's CHAP credentials: this user, and a secret of this many random bytes
# (URL-safe base64: 24 characters, nothing an iscsi:// URL must escape).
TARGET_CHAP_USER = "vmblock"
TARGET_CHAP_SECRET_BYTES = 18


# The keys that size or place a tier: a change must fit the file system (and the path keys
# must not move a tier that holds data).
TIER_PATH_KEYS = ("store.capacity_path", "store.flash_path")
TIER_KEYS = TIER_PATH_KEYS + ("store.capacity_size", "store.flash_size")


def check_settings(settings: Settings) -> None:
    """Check a whole set a server would run with, wherever it came from (pool, --config file,
    a key an older vmblock stored): the fabric's negotiation table first (vmblock.settings
    names those keys but leaves their rules to the fabric), then the checks across keys of
    vmblock.settings (cache against the flash tier, fabric limits, CHAP credentials)."""
    try:
        validate_offer(settings.negotiation())
    except ValueError as e:
        raise InvalidArgument(f"bad iSCSI negotiation setting: {e}") from None
    settings.check()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_size(size_bytes: int, block_size: int = BLOCK_SIZE) -> None:
    """A vdisk size the pool can describe: whole blocks, above 0, at most MAX_VDISK_BYTES."""
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int):
        raise InvalidArgument(f"size must be a number of bytes, not {type(size_bytes).__name__}")
    if size_bytes <= 0 or size_bytes % block_size:
        raise InvalidArgument(f"size must be a positive multiple of {block_size} bytes, "
                              f"not {size_bytes}")
    if size_bytes > MAX_VDISK_BYTES:
        raise InvalidArgument(f"size {format_size(size_bytes)} is over the largest vdisk, "
                              f"{format_size(MAX_VDISK_BYTES)} (its extent map lives in RAM)")


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


def _check_name(kind: str, name: str) -> str:
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

    EDITABLE = ("guest_os", "location", "active")

    def dump(self) -> dict:
        """The record as a JSON-ready dict: what is stored and what the admin verbs return."""
        return asdict(self)


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
        d = asdict(self)
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


class Pool:
    """An open pool. Holds RocksDB's lock: one process (CLI command or server) at a time."""

    def __init__(self, path: str, create: bool = False):
        self.path = os.path.abspath(path)
        self.meta_path = os.path.join(self.path, "meta")
        self.socket_path = os.path.join(self.path, "admin.sock")
        self._store: PoolStore | None = None
        # settings that win over the pool's config keys for this process (serve --config)
        self.overrides: dict[str, str] = {}
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
            batch = self._batch()
            self._put(batch, "pool/version", SCHEMA_VERSION)
            self._put(batch, "pool/au_size", AU_SIZE)
            self._put(batch, "pool/next_map", 1)
            self._put(batch, f"config/{NEW_TARGET_CHAP_KEY}", "Yes")
            self._put_target(batch, Target(DEFAULT_TARGET, created=_now()), chap=True)
            self._commit(batch)
            _make_owner_only(self.path)     # what RocksDB and the tiers made before the batch
        elif version != SCHEMA_VERSION:
            self._db.close()
            raise PoolError(f"pool {self.path} has schema {version}, this vmblock knows "
                            f"{SCHEMA_VERSION} (pools of the sparse-file store are not "
                            f"converted: copy the vdisks out with qemu-img convert)")

    # --- raw access -------------------------------------------------------------------------

    def _get(self, key: str):
        raw = self._db.get(key.encode())
        return None if raw is None else json.loads(raw)

    def _scan(self, prefix: str):
        """(key suffix, value) of every key starting with ``prefix``, in key order."""
        p = prefix.encode()
        for k, v in self._db.scan(p):
            yield k[len(p):].decode(), json.loads(v)

    @staticmethod
    def _batch() -> WriteBatch:
        return WriteBatch(raw_mode=True)

    @staticmethod
    def _put(batch: WriteBatch, key: str, value) -> None:
        batch.put(key.encode(), json.dumps(value).encode())

    @staticmethod
    def _delete(batch: WriteBatch, key: str) -> None:
        batch.delete(key.encode())

    def _commit(self, batch: WriteBatch) -> None:
        try:
            self._db.write(batch)
        except MetaIOError as e:
            raise io_failure(e) from None

    # --- records kept beside the tree by other models of the pool (vmblock.meta.groups) -------

    def record(self, key: str):
        """The JSON value stored at ``key``, or None."""
        return self._get(key)

    def records(self, prefix: str) -> list[tuple[str, object]]:
        """(key suffix, value) of every record whose key starts with ``prefix``, in key order."""
        return list(self._scan(prefix))

    def write_records(self, put: dict[str, object], delete: Iterable[str] = ()) -> None:
        """Remove the keys ``delete`` and store ``put`` in one synced batch: one atomic change."""
        batch = self._batch()
        for key in delete:
            self._delete(batch, key)
        for key, value in put.items():
            self._put(batch, key, value)
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
        process: the one place the two are merged. Not checked as a whole (the server does
        that with ``check_settings`` when it starts); ``get`` parses one key."""
        return Settings(self.config()).overlay(self.overrides)

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

    def _tier_path(self, tier: str, path: str) -> str:
        return path or os.path.join(self.path, tier)

    def _tier(self, tier: str, path: str, size_bytes: int) -> Tier:
        path = self._tier_path(tier, path)
        try:
            return Tier(tier, path, size_bytes)
        except OSError as e:    # e.g. EFBIG: larger than its file system's largest file
            raise PoolError(f"cannot make the {tier} tier {path} {format_size(size_bytes)} "
                            f"(store.{tier}_size): {e.strerror}") from None

    @property
    def store(self) -> PoolStore:
        """The pool's extent store, opened (maps loaded, refcounts rebuilt) on first use."""
        if self._store is None:
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
        return self._store

    def _next_map(self, batch: WriteBatch, count: int = 1) -> list[int]:
        """``count`` new extent-map ids, reserved in ``batch``; ids are never reused."""
        first = self._get("pool/next_map") or 1
        if first + count > 0xFFFFFFFF:
            raise PoolError("extent map ids exhausted")
        self._put(batch, "pool/next_map", first + count)
        return list(range(first, first + count))

    # --- targets ----------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        """Every target record in the pool, in key (IQN) order."""
        return [Target(**v) for _, v in self._scan("target/")]

    def target(self, iqn: str) -> Target:
        """The record of target ``iqn``; NotFound if the pool has none."""
        v = self._get(f"target/{iqn}")
        if v is None:
            raise NotFound(f"no target {iqn}")
        return Target(**v)

    def _put_target(self, batch: WriteBatch, target: Target, chap: bool | None = None) -> None:
        """A new target's record and, when the pool gives new targets CHAP (``chap`` None:
        as ``auth.new_target_chap`` says), its random CHAP credentials."""
        if chap is None:
            chap = self.settings().get(NEW_TARGET_CHAP_KEY)
        self._put(batch, f"target/{target.iqn}", target.dump())
        if chap:
            prefix = f"config/auth.target.{target.iqn}."
            self._put(batch, prefix + "chap_user", TARGET_CHAP_USER)
            self._put(batch, prefix + "chap_secret",
                      secrets.token_urlsafe(TARGET_CHAP_SECRET_BYTES))

    def luns(self, iqn: str) -> dict[int, str]:
        """LUN -> vdisk uuid of one target."""
        return {int(k): v for k, v in self._scan(f"lun/{iqn}/")}

    # --- VMs --------------------------------------------------------------------------------

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
        _check_name("VM", name)
        if self._get(f"vmname/{name}") is not None:
            raise AlreadyExists(f"a VM named {name!r} already exists")
        vm = Vm(str(uuidlib.uuid4()), name, guest_os=guest_os, location=location, created=_now())
        batch = self._batch()
        self._put(batch, f"vm/{vm.uuid}", vm.dump())
        self._put(batch, f"vmname/{name}", vm.uuid)
        self._commit(batch)
        return vm

    def update_vm(self, name: str, **fields) -> Vm:
        """Change a VM's descriptive fields (``Vm.EDITABLE``) in one batch."""
        vm = self.vm(name)
        for key, value in fields.items():
            if key not in Vm.EDITABLE:
                raise InvalidArgument(f"VM field {key!r} cannot be set")
            setattr(vm, key, value)
        batch = self._batch()
        self._put(batch, f"vm/{vm.uuid}", vm.dump())
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
        batch = self._batch()
        with self.store.transaction(batch) as txn:
            for snap in snaps:
                self._drop_snapshot(batch, txn, snap)
            for disk in disks:
                self._drop_vdisk(batch, txn, disk)
            self._delete(batch, f"vm/{vm.uuid}")
            self._delete(batch, f"vmname/{name}")
        return vm, disks

    # --- vdisks -----------------------------------------------------------------------------

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
                     target: str | None = None) -> tuple[Vdisk, bool]:
        """Create a vdisk at the lowest free LUN of ``target`` (created if new).

        Returns the vdisk and whether its target is new, so a live server can publish it.
        """
        _check_name("vdisk", name)
        _check_size(size_bytes)
        iqn = check_iqn(target or DEFAULT_TARGET)
        if self._get(f"vdiskname/{name}") is not None:
            raise AlreadyExists(f"a vdisk named {name!r} already exists")
        owner = self.vm(vm).uuid if vm is not None else None
        new_target = self._get(f"target/{iqn}") is None
        lun = self._free_luns(iqn, 1)[0]
        batch = self._batch()
        with self.store.transaction(batch) as txn:
            mid = self._next_map(batch)[0]
            disk = Vdisk(str(uuidlib.uuid4()), name, owner, size_bytes, iqn, lun,
                         created=_now(), map_id=mid)
            if new_target:
                self._put_target(batch, Target(iqn, created=_now()))
            self._put_vdisk(batch, disk)
            txn.new_empty(mid, size_bytes)
        return disk, new_target

    def _free_luns(self, iqn: str, count: int) -> list[int]:
        used = self.luns(iqn)
        free = [n for n in range(MAX_LUN + 1) if n not in used][:count]
        if len(free) < count:
            raise InvalidArgument(f"target {iqn} has no free LUN")
        return free

    def _put_vdisk(self, batch: WriteBatch, disk: Vdisk) -> None:
        self._put(batch, f"vdisk/{disk.uuid}", asdict(disk))
        self._put(batch, f"vdiskname/{disk.name}", disk.uuid)
        self._put(batch, f"lun/{disk.target}/{disk.lun:05d}", disk.uuid)

    def _drop_vdisk(self, batch: WriteBatch, txn, disk: Vdisk) -> None:
        """Records, map and one-vdisk snapshots of ``disk`` into ``batch``."""
        for snap in self.snapshots():
            if snap.vdisk == disk.uuid:
                self._drop_snapshot(batch, txn, snap)
        self._delete(batch, f"vdisk/{disk.uuid}")
        self._delete(batch, f"vdiskname/{disk.name}")
        self._delete(batch, f"lun/{disk.target}/{disk.lun:05d}")
        txn.drop_map(disk.map_id)

    def delete_vdisk(self, name: str) -> Vdisk:
        """Delete a vdisk, its extent map and its one-vdisk snapshots in one batch; its AUs
        go back to the allocator unless a VM snapshot or a clone still shares them."""
        disk = self.vdisk(name)
        batch = self._batch()
        with self.store.transaction(batch) as txn:
            self._drop_vdisk(batch, txn, disk)
        return disk

    def resize_vdisk(self, name: str, size_bytes: int) -> Vdisk:
        """Grow a vdisk to ``size_bytes`` (record and extent map in one batch). Shrinking is
        refused, as it would cut off data; the same size changes nothing."""
        disk = self.vdisk(name)
        _check_size(size_bytes, disk.block_size)
        if size_bytes < disk.size_bytes:
            raise InvalidArgument(f"a vdisk can only grow ({disk.size_bytes} -> "
                                  f"{size_bytes} bytes would cut off data)")
        if size_bytes == disk.size_bytes:
            return disk
        disk.size_bytes = size_bytes
        batch = self._batch()
        with self.store.transaction(batch) as txn:
            self._put(batch, f"vdisk/{disk.uuid}", asdict(disk))
            txn.resize(disk.map_id, size_bytes)
        return disk

    def open_store(self, disk: Vdisk) -> ExtentStore:
        """An ``ExtentStore`` on the vdisk's live map: the store the server puts under its LUN."""
        return ExtentStore(self.store, disk.map_id, disk.block_size)

    def used_bytes(self, disk: Vdisk) -> int:
        """Bytes of the pool the vdisk maps (AUs written and not unmapped), shared or not."""
        return self.store.map_used_bytes(disk.map_id)

    allocated_bytes = used_bytes

    def tier_bytes(self, disk: Vdisk) -> dict[str, int]:
        """Bytes the vdisk maps on each tier (a partly done move leaves some on both)."""
        return self.store.map_tier_bytes(disk.map_id)

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
            batch = self._batch()
            with self.store.transaction(batch):
                self._put(batch, f"vdisk/{disk.uuid}", asdict(disk))
        return dict(result, name=name, tier_bytes=self.tier_bytes(disk))

    # --- snapshots, clones, revert ------------------------------------------------------------

    def snapshots(self, vm: str | None = None) -> list[Snapshot]:
        """Every snapshot, or those of the VM named ``vm`` (its VM and one-vdisk snapshots),
        oldest first."""
        snaps = [Snapshot(**v) for _, v in self._scan("snapshot/")]
        if vm is not None:
            owner = self.vm(vm).uuid
            snaps = [s for s in snaps if s.vm == owner]
        return sorted(snaps, key=lambda s: (s.created, s.name))

    def snapshot(self, name: str, vm: str | None = None, vdisk: str | None = None) -> Snapshot:
        """A snapshot by name within its VM (VM snapshots) or vdisk (one-vdisk snapshots)."""
        if (vm is None) == (vdisk is None):
            raise InvalidArgument("name the snapshot's VM or vdisk (exactly one)")
        scope = self.vm(vm).uuid if vm is not None else self.vdisk(vdisk).uuid
        uid = self._get(f"snapname/{scope}/{name}")
        if uid is None:
            raise NotFound(f"no snapshot {name!r} of {'VM' if vm else 'vdisk'} "
                           f"{vm or vdisk!r}")
        return Snapshot(**self._get(f"snapshot/{uid}"))

    def _snapshot_disks(self, disks: list[Vdisk], mids: list[int]) -> list[dict]:
        return [{"vdisk": d.uuid, "name": d.name, "map_id": m, "src_map": d.map_id,
                 "size_bytes": d.size_bytes, "used_bytes": 0} for d, m in zip(disks, mids)]

    def _take_snapshot(self, name: str, vm: Vm | None, vdisk: Vdisk | None,
                       disks: list[Vdisk]) -> Snapshot:
        _check_name("snapshot", name)
        scope = vdisk.uuid if vdisk is not None else vm.uuid
        if self._get(f"snapname/{scope}/{name}") is not None:
            raise AlreadyExists(f"a snapshot named {name!r} already exists there")
        batch = self._batch()
        with self.store.transaction(batch) as txn:
            mids = self._next_map(batch, len(disks))
            snap = Snapshot(str(uuidlib.uuid4()), name, vm.uuid if vm else None,
                            vdisk.uuid if vdisk else None,
                            self._snapshot_disks(disks, mids), created=_now())
            for d, entry in zip(disks, snap.disks):
                entry["used_bytes"] = txn.copy_map(d.map_id, entry["map_id"])
            self._put(batch, f"snapshot/{snap.uuid}", snap.dump())
            self._put(batch, f"snapname/{scope}/{name}", snap.uuid)
        return snap

    def snapshot_vm(self, vm_name: str, name: str) -> Snapshot:
        """Freeze every vdisk of a VM in one batch (the server drains their writes first)."""
        vm = self.vm(vm_name)
        disks = self.vdisks(vm=vm_name)
        if not disks:
            raise InvalidArgument(f"VM {vm_name!r} has no vdisks to snapshot")
        return self._take_snapshot(name, vm, None, disks)

    def snapshot_vdisk(self, vdisk_name: str, name: str) -> Snapshot:
        """Freeze one vdisk in a snapshot named within that vdisk (metadata only, one batch)."""
        disk = self.vdisk(vdisk_name)
        vm = self.vm_by_uuid(disk.vm) if disk.vm else None
        return self._take_snapshot(name, vm, disk, [disk])

    def _drop_snapshot(self, batch: WriteBatch, txn, snap: Snapshot) -> None:
        for d in snap.disks:
            txn.drop_map(d["map_id"])
        self._delete(batch, f"snapshot/{snap.uuid}")
        self._delete(batch, f"snapname/{snap.scope}/{snap.name}")

    def delete_snapshot(self, name: str, vm: str | None = None,
                        vdisk: str | None = None) -> Snapshot:
        """Delete a snapshot and its frozen maps in one batch; AUs nothing else shares are freed."""
        snap = self.snapshot(name, vm=vm, vdisk=vdisk)
        batch = self._batch()
        with self.store.transaction(batch) as txn:
            self._drop_snapshot(batch, txn, snap)
        return snap

    def revert(self, snap: Snapshot) -> list[tuple[Vdisk, bool]]:
        """Make each still-existing vdisk of ``snap`` its frozen map again, in one batch.
        Returns (vdisk, size changed) per reverted vdisk."""
        done = []
        batch = self._batch()
        with self.store.transaction(batch) as txn:
            for entry in snap.disks:
                raw = self._get(f"vdisk/{entry['vdisk']}")
                if raw is None:
                    continue     # deleted since: a clone of the snapshot can bring it back
                disk = Vdisk(**raw)
                changed = disk.size_bytes != entry["size_bytes"]
                disk.size_bytes = entry["size_bytes"]
                txn.drop_map(disk.map_id)
                txn.copy_map(entry["map_id"], disk.map_id, dst_size=disk.size_bytes)
                self._put(batch, f"vdisk/{disk.uuid}", asdict(disk))
                done.append((disk, changed))
        return done

    def clone_name(self, src_vm: str, new_vm: str, vdisk_name: str) -> str:
        """The name of a clone's vdisk: ``src_vm`` prefix swapped for ``new_vm`` (web-disk0 ->
        web2-disk0), else ``new_vm`` prepended, so clones of one VM do not collide."""
        if vdisk_name == src_vm or vdisk_name.startswith(src_vm + "-"):
            return new_vm + vdisk_name[len(src_vm):]
        return f"{new_vm}-{vdisk_name}"

    def clone_vm(self, src_name: str, new_name: str, snapshot: str | None = None,
                 live: bool = False) -> tuple[Vm, list[Vdisk], list[str]]:
        """A new VM whose vdisks share every AU of a snapshot of ``src_name`` (or of its
        live vdisks: the server drains them first), as new LUNs of the same targets; metadata
        only, one batch. Returns the VM, its vdisks and the targets that had to be created."""
        if (snapshot is None) == (not live):
            raise InvalidArgument("clone from --snapshot NAME or --live (exactly one)")
        _check_name("VM", new_name)
        src = self.vm(src_name)
        if self._get(f"vmname/{new_name}") is not None:
            raise AlreadyExists(f"a VM named {new_name!r} already exists")
        if live:
            snap = None
            sources = [{"vdisk": d.uuid, "name": d.name, "map_id": d.map_id,
                        "size_bytes": d.size_bytes, "target": d.target,
                        "block_size": d.block_size, "tier": d.tier}
                       for d in self.vdisks(vm=src_name)]
        else:
            snap = self.snapshot(snapshot, vm=src_name)
            sources = []
            for entry in snap.disks:
                raw = self._get(f"vdisk/{entry['vdisk']}")
                sources.append(dict(entry, target=raw["target"] if raw else DEFAULT_TARGET,
                                    block_size=raw["block_size"] if raw else BLOCK_SIZE,
                                    tier=raw.get("tier", "capacity") if raw else "capacity"))
        names = [self.clone_name(src_name, new_name, s["name"]) for s in sources]
        for n in names:
            _check_name("vdisk", n)
            if self._get(f"vdiskname/{n}") is not None:
                raise AlreadyExists(f"a vdisk named {n!r} already exists")
        luns: dict[str, list[int]] = {}
        for s in sources:
            luns.setdefault(s["target"], [])
        for iqn in luns:
            luns[iqn] = self._free_luns(iqn, sum(1 for s in sources if s["target"] == iqn))
        new_targets = [iqn for iqn in luns if self._get(f"target/{iqn}") is None]
        when = _now()
        lineage = {"vm": src.uuid, "vm_name": src.name, "live": live, "created": when,
                   "snapshot": snap.uuid if snap else None,
                   "snapshot_name": snap.name if snap else None}
        vm = Vm(str(uuidlib.uuid4()), new_name, guest_os=src.guest_os, created=when,
                parent=lineage)
        disks = []
        batch = self._batch()
        with self.store.transaction(batch) as txn:
            mids = self._next_map(batch, len(sources))
            for iqn in new_targets:
                self._put_target(batch, Target(iqn, created=when))
            self._put(batch, f"vm/{vm.uuid}", vm.dump())
            self._put(batch, f"vmname/{new_name}", vm.uuid)
            for s, n, mid in zip(sources, names, mids):
                disk = Vdisk(str(uuidlib.uuid4()), n, vm.uuid, s["size_bytes"], s["target"],
                             luns[s["target"]].pop(0), block_size=s["block_size"],
                             created=when, map_id=mid,
                             parent={"vdisk": s["vdisk"], "vdisk_name": s["name"],
                                     "map_id": s["map_id"], "live": live,
                                     "snapshot": snap.uuid if snap else None,
                                     "snapshot_name": snap.name if snap else None},
                             tier=s["tier"])
                txn.copy_map(s["map_id"], mid, dst_size=disk.size_bytes)
                txn.set_tier(mid, TIER_NAMES.index(disk.tier))
                self._put_vdisk(batch, disk)
                disks.append(disk)
        return vm, disks, new_targets

    # --- events -------------------------------------------------------------------------------

    def events(self, limit: int = 100) -> list[dict]:
        """Recorded events, oldest first, with those not yet committed at the end."""
        evs = [v for _, v in self._scan("event/")]
        if self._store is not None:
            evs += self._store.pending_events()
        return evs[-limit:] if limit else evs

    # --- fsck ---------------------------------------------------------------------------------

    def check(self) -> dict:
        """``vmblock pool check``: records against each other, then every extent-map key
        against the records, the tier and the in-memory refcounts (PoolStore.check)."""
        errors: list[str] = []
        vdisks = self.vdisks()
        snaps = self.snapshots()
        maps_info: dict[int, dict] = {}
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            while parent.get(x, x) != x:
                x = parent[x]
            return x

        def union(a: int, b: int) -> None:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)

        for d in vdisks:
            if d.map_id in maps_info:
                errors.append(f"vdisk {d.name}: map id {d.map_id} is used twice")
            maps_info[d.map_id] = {"what": f"vdisk {d.name}", "size_bytes": d.size_bytes,
                                   "live": True}
            if self._get(f"vdiskname/{d.name}") != d.uuid:
                errors.append(f"vdisk {d.name}: name index does not point at it")
            if self._get(f"lun/{d.target}/{d.lun:05d}") != d.uuid:
                errors.append(f"vdisk {d.name}: LUN {d.lun} of {d.target} is not it")
            if d.vm and self._get(f"vm/{d.vm}") is None:
                errors.append(f"vdisk {d.name}: owner VM {d.vm} does not exist")
            if d.parent:
                union(d.map_id, d.parent["map_id"])
        for s in snaps:
            if self._get(f"snapname/{s.scope}/{s.name}") != s.uuid:
                errors.append(f"snapshot {s.name}: name index does not point at it")
            for e in s.disks:
                if e["map_id"] in maps_info:
                    errors.append(f"snapshot {s.name}: map id {e['map_id']} is used twice")
                maps_info[e["map_id"]] = {"what": f"snapshot {s.name} of {e['name']}",
                                          "size_bytes": e["size_bytes"], "live": False}
                union(e["map_id"], e["src_map"])
        for iqn in [t.iqn for t in self.targets()]:
            for lun, uid in self.luns(iqn).items():
                if self._get(f"vdisk/{uid}") is None:
                    errors.append(f"LUN {lun} of {iqn} points at a missing vdisk")
        result = self.store.check(maps_info, {m: find(m) for m in maps_info})
        result["errors"] = errors + result["errors"]
        result["ok"] = not result["errors"]
        result["vdisks"] = len(vdisks)
        result["snapshots"] = len(snaps)
        return result

    # --- config -----------------------------------------------------------------------------

    def config(self) -> dict[str, str]:
        """The config keys stored in the pool, as strings (``settings()`` adds --config)."""
        return dict(self._scan("config/"))

    def config_get(self, key: str) -> str:
        """One stored key's value; NotFound when it is not set (its default applies)."""
        value = self._get(f"config/{key}")
        if value is None:
            raise NotFound(f"config key {key!r} is not set")
        return value

    def config_set(self, key: str, value: str) -> None:
        """Store ``key``: checked alone, against the tiers, then with the pool's other keys."""
        check_key(key, value)
        self._check_tier_change(key, value)
        try:
            check_settings(Settings(self.config()).overlay({key: value}))
        except InvalidArgument as e:
            shown = "" if key.endswith("secret") else f" to {value!r}"   # never echo a secret
            raise InvalidArgument(f"cannot set {key}{shown}: {e}") from None
        batch = self._batch()
        self._put(batch, f"config/{key}", value)
        self._commit(batch)

    def _check_tier_change(self, key: str, value: str) -> None:
        """For the keys that place or size a tier: ``value`` must not move a tier that holds
        data, and the tier must fit its file system."""
        if key in TIER_PATH_KEYS:
            self._check_tier_swap(key, value)
        if key in TIER_KEYS:
            self._check_tier_fits(key, value)

    def _check_tier_swap(self, key: str, value: str) -> None:
        """A tier holding AUs cannot be pointed at another file or device: its data would be
        gone at the next start."""
        tier = key[len("store."):-len("_path")]
        if value == self.settings().get(key):
            return
        used = self.store.usage()["tiers"][tier]["used_bytes"]
        if used:
            raise InvalidArgument(f"{key} cannot change while the {tier} tier holds data "
                                  f"({used} bytes in use)")

    def _check_tier_fits(self, key: str, value: str) -> None:
        """A file tier's size must fit its file system (ext4 with 4 KiB blocks stops 4 KiB short
        of 16 TiB): try it on a sparse file beside the tier, as the next start would."""
        tier = key[len("store."):key.rindex("_")]
        settings = self.settings().overlay({key: value})
        path = self._tier_path(tier, settings.get(f"store.{tier}_path"))
        if os.path.exists(path) and not os.path.isfile(path):
            return      # a block device: its size is the device's
        size = settings.get(f"store.{tier}_size")
        probe = os.path.join(os.path.dirname(path), f".{tier}-size-probe")
        try:
            fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise InvalidArgument(f"cannot set {key}: cannot create files in "
                                  f"{os.path.dirname(path)}: {e.strerror}") from None
        try:
            os.ftruncate(fd, size)
        except OSError as e:
            raise InvalidArgument(f"cannot set {key}: the {tier} tier cannot be "
                                  f"{format_size(size)} on the file system of {path}: "
                                  f"{e.strerror}") from None
        finally:
            os.close(fd)
            os.unlink(probe)

    def config_unset(self, key: str) -> None:
        """Remove a key; refused when its default would not go with the keys still set
        (e.g. the default FirstBurstLength over a MaxBurstLength set lower)."""
        self.config_get(key)
        rest = {k: v for k, v in self.config().items() if k != key}
        try:
            check_settings(Settings(rest))
        except InvalidArgument as e:
            raise InvalidArgument(f"cannot unset {key}: {e}") from None
        if key in TIER_KEYS:
            self._check_tier_change(key, TABLE[key].default)
        batch = self._batch()
        self._delete(batch, f"config/{key}")
        self._commit(batch)

    # --- whole tree -------------------------------------------------------------------------

    def dump(self) -> dict:
        """The whole model tree as JSON-ready dicts (``vmblock pool show``): targets with LUNs,
        VMs, vdisks with bytes used, snapshots, config, store usage, recent events, groups."""
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
        }
