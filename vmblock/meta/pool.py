"""The pool: a directory with the meta DB (RocksDB) and the vdisks' data.

Layout on disk::

    POOL/meta/              RocksDB, opened by one process at a time (the server while it runs)
    POOL/vdisks/<uuid>.img  one sparse file per vdisk (until the extent store replaces it)
    POOL/admin.sock         the running server's admin API

Key layout of the meta DB (keys are UTF-8, values JSON; every atomic change is one WriteBatch,
written with sync so an acknowledged change survives a crash)::

    pool/version                 1
    target/<iqn>                 {"iqn", "alias", "created"}
    vm/<uuid>                    {"uuid", "name", "guest_os", "active", "created", "meta_stale"}
    vmname/<name>                "<vm uuid>"                       unique VM names
    vdisk/<uuid>                 {"uuid", "name", "vm", "size_bytes", "target", "lun",
                                  "block_size", "created"}          vm is a uuid or null
    vdiskname/<name>             "<vdisk uuid>"                    unique vdisk names
    lun/<iqn>/<lun:05d>          "<vdisk uuid>"                    LUN map of each target
    config/<dotted.key>          "<value>"                          see vmblock.config.check_key

Data is created before the metadata that points at it and deleted after it, so a crash leaves
at worst an unreferenced image file, never a vdisk without its data.
"""

from __future__ import annotations

import json
import os
import uuid as uuidlib
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from vmblock import DEFAULT_TARGET
from vmblock.config import check_iqn, check_key, check_settings
from vmblock.errors import AlreadyExists, InvalidArgument, NotFound, PoolError
from vmblock.store.sparse import SparseFileStore

SCHEMA_VERSION = 1
MAX_LUN = 16383            # SAM-5 flat space addressing
BLOCK_SIZE = 512
# 24-bit company id in IEEE CID form (second-lowest bit of the first octet set: locally assigned,
# not an IEEE-registered OUI) placed in the NAA designator of every vdisk.
VMBLOCK_CID = 0x7A6D62
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_name(kind: str, name: str) -> str:
    if not name or len(name) > 128 or not set(name) <= _NAME_CHARS or name[0] in ".-":
        raise InvalidArgument(f"bad {kind} name {name!r} (letters, digits, '.', '_', '-'; "
                              f"at most 128, not starting with '.' or '-')")
    return name


@dataclass
class Target:
    iqn: str
    alias: str = ""
    created: str = ""

    def dump(self) -> dict:
        return asdict(self)


@dataclass
class Vm:
    uuid: str
    name: str
    guest_os: str = ""
    active: bool = False
    created: str = ""
    meta_stale: bool = False

    def dump(self) -> dict:
        return asdict(self)


@dataclass
class Vdisk:
    uuid: str
    name: str
    vm: str | None          # owning VM's uuid
    size_bytes: int
    target: str
    lun: int
    block_size: int = BLOCK_SIZE
    created: str = ""

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
        d = asdict(self)
        d["vm_uuid"] = d.pop("vm")
        d["serial"] = self.serial
        d["naa"] = f"{self.naa:032x}"
        return d


class Pool:
    """An open pool. Holds RocksDB's lock: one process (CLI command or server) at a time."""

    def __init__(self, path: str, create: bool = False):
        self.path = os.path.abspath(path)
        self.meta_path = os.path.join(self.path, "meta")
        self.vdisk_dir = os.path.join(self.path, "vdisks")
        self.socket_path = os.path.join(self.path, "admin.sock")
        exists = os.path.exists(os.path.join(self.meta_path, "CURRENT"))
        if not exists and not create:
            raise PoolError(f"no pool at {self.path} (create one with `vmblock serve` "
                            f"or `vmblock vm create`)")
        try:
            os.makedirs(self.vdisk_dir, exist_ok=True)
        except OSError as e:
            raise PoolError(f"cannot create pool {self.path}: {e.strerror}") from None
        opts = Options(raw_mode=True)
        opts.create_if_missing(create)
        try:
            self._db = Rdict(self.meta_path, opts)
        except Exception as e:   # rocksdict raises a bare Exception for every RocksDB error
            if "lock" in str(e).lower():
                raise PoolError(f"pool {self.path} is in use by another process "
                                f"(is its server starting or stopping?)") from None
            raise PoolError(f"cannot open pool {self.path}: {e}") from None
        self._sync = WriteOptions()
        self._sync.sync = True
        version = self._get("pool/version")
        if version is None:
            batch = self._batch()
            self._put(batch, "pool/version", SCHEMA_VERSION)
            self._put(batch, f"target/{DEFAULT_TARGET}",
                      Target(DEFAULT_TARGET, created=_now()).dump())
            self._commit(batch)
        elif version != SCHEMA_VERSION:
            self._db.close()
            raise PoolError(f"pool {self.path} has schema {version}, this vmblock knows "
                            f"{SCHEMA_VERSION}")

    # --- raw access -------------------------------------------------------------------------

    def _get(self, key: str):
        raw = self._db.get(key.encode())
        return None if raw is None else json.loads(raw)

    def _scan(self, prefix: str):
        """(key suffix, value) of every key starting with ``prefix``, in key order."""
        p = prefix.encode()
        for k, v in self._db.items(from_key=p):
            if not k.startswith(p):
                break
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
        self._db.write(batch, self._sync)

    def close(self) -> None:
        self._db.close()

    # --- targets ----------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        return [Target(**v) for _, v in self._scan("target/")]

    def target(self, iqn: str) -> Target:
        v = self._get(f"target/{iqn}")
        if v is None:
            raise NotFound(f"no target {iqn}")
        return Target(**v)

    def luns(self, iqn: str) -> dict[int, str]:
        """LUN -> vdisk uuid of one target."""
        return {int(k): v for k, v in self._scan(f"lun/{iqn}/")}

    # --- VMs --------------------------------------------------------------------------------

    def vms(self) -> list[Vm]:
        return sorted((Vm(**v) for _, v in self._scan("vm/")), key=lambda vm: vm.name)

    def vm(self, name: str) -> Vm:
        uid = self._get(f"vmname/{name}")
        if uid is None:
            raise NotFound(f"no VM named {name!r}")
        return Vm(**self._get(f"vm/{uid}"))

    def vm_by_uuid(self, uid: str) -> Vm:
        v = self._get(f"vm/{uid}")
        if v is None:
            raise NotFound(f"no VM with uuid {uid}")
        return Vm(**v)

    def create_vm(self, name: str, guest_os: str = "") -> Vm:
        _check_name("VM", name)
        if self._get(f"vmname/{name}") is not None:
            raise AlreadyExists(f"a VM named {name!r} already exists")
        vm = Vm(str(uuidlib.uuid4()), name, guest_os=guest_os, created=_now())
        batch = self._batch()
        self._put(batch, f"vm/{vm.uuid}", vm.dump())
        self._put(batch, f"vmname/{name}", vm.uuid)
        self._commit(batch)
        return vm

    def delete_vm(self, name: str) -> Vm:
        vm = self.vm(name)
        disks = self.vdisks(vm=name)
        if disks:
            raise InvalidArgument(f"VM {name!r} still has vdisks "
                                  f"{', '.join(d.name for d in disks)}; delete them first")
        batch = self._batch()
        self._delete(batch, f"vm/{vm.uuid}")
        self._delete(batch, f"vmname/{name}")
        self._commit(batch)
        return vm

    # --- vdisks -----------------------------------------------------------------------------

    def vdisks(self, vm: str | None = None) -> list[Vdisk]:
        disks = (Vdisk(**v) for _, v in self._scan("vdisk/"))
        if vm is not None:
            owner = self.vm(vm).uuid
            disks = (d for d in disks if d.vm == owner)
        return sorted(disks, key=lambda d: d.name)

    def vdisk(self, name: str) -> Vdisk:
        uid = self._get(f"vdiskname/{name}")
        if uid is None:
            raise NotFound(f"no vdisk named {name!r}")
        return Vdisk(**self._get(f"vdisk/{uid}"))

    def image_path(self, vdisk: Vdisk) -> str:
        return os.path.join(self.vdisk_dir, f"{vdisk.uuid}.img")

    def create_vdisk(self, name: str, size_bytes: int, vm: str | None = None,
                     target: str | None = None) -> tuple[Vdisk, bool]:
        """Create a vdisk at the lowest free LUN of ``target`` (created if new).

        Returns the vdisk and whether its target is new, so a live server can publish it.
        """
        _check_name("vdisk", name)
        if size_bytes <= 0 or size_bytes % BLOCK_SIZE:
            raise InvalidArgument(f"size must be a positive multiple of {BLOCK_SIZE} bytes, "
                                  f"not {size_bytes}")
        iqn = check_iqn(target or DEFAULT_TARGET)
        if self._get(f"vdiskname/{name}") is not None:
            raise AlreadyExists(f"a vdisk named {name!r} already exists")
        owner = self.vm(vm).uuid if vm is not None else None
        new_target = self._get(f"target/{iqn}") is None
        used = self.luns(iqn)
        lun = next((n for n in range(MAX_LUN + 1) if n not in used), None)
        if lun is None:
            raise InvalidArgument(f"target {iqn} has no free LUN")
        disk = Vdisk(str(uuidlib.uuid4()), name, owner, size_bytes, iqn, lun, created=_now())
        path = self.image_path(disk)
        try:
            SparseFileStore(path, size_bytes, BLOCK_SIZE).close()
        except OSError as e:
            raise PoolError(f"cannot create {path}: {e.strerror}") from None
        batch = self._batch()
        if new_target:
            self._put(batch, f"target/{iqn}", Target(iqn, created=_now()).dump())
        self._put(batch, f"vdisk/{disk.uuid}", asdict(disk))
        self._put(batch, f"vdiskname/{name}", disk.uuid)
        self._put(batch, f"lun/{iqn}/{lun:05d}", disk.uuid)
        try:
            self._commit(batch)
        except BaseException:
            os.unlink(path)
            raise
        return disk, new_target

    def delete_vdisk(self, name: str) -> Vdisk:
        disk = self.vdisk(name)
        batch = self._batch()
        self._delete(batch, f"vdisk/{disk.uuid}")
        self._delete(batch, f"vdiskname/{name}")
        self._delete(batch, f"lun/{disk.target}/{disk.lun:05d}")
        self._commit(batch)
        try:
            os.unlink(self.image_path(disk))
        except FileNotFoundError:
            pass
        return disk

    def open_store(self, disk: Vdisk) -> SparseFileStore:
        return SparseFileStore(self.image_path(disk), disk.size_bytes, disk.block_size)

    def allocated_bytes(self, disk: Vdisk) -> int:
        """Bytes the vdisk's data really occupies (st_blocks), not its nominal size."""
        try:
            return os.stat(self.image_path(disk)).st_blocks * 512
        except FileNotFoundError:
            return 0

    # --- config -----------------------------------------------------------------------------

    def config(self) -> dict[str, str]:
        return dict(self._scan("config/"))

    def config_get(self, key: str) -> str:
        value = self._get(f"config/{key}")
        if value is None:
            raise NotFound(f"config key {key!r} is not set")
        return value

    def config_set(self, key: str, value: str) -> None:
        check_key(key, value)
        try:
            check_settings({**self.config(), key: value})
        except InvalidArgument as e:
            raise InvalidArgument(f"cannot set {key} to {value!r}: {e}") from None
        batch = self._batch()
        self._put(batch, f"config/{key}", value)
        self._commit(batch)

    def config_unset(self, key: str) -> None:
        self.config_get(key)
        batch = self._batch()
        self._delete(batch, f"config/{key}")
        self._commit(batch)

    # --- whole tree -------------------------------------------------------------------------

    def dump(self) -> dict:
        return {
            "path": self.path,
            "targets": [dict(t.dump(), luns={str(k): v for k, v in self.luns(t.iqn).items()})
                        for t in self.targets()],
            "vms": [vm.dump() for vm in self.vms()],
            "vdisks": [d.dump() for d in self.vdisks()],
            "config": self.config(),
        }
