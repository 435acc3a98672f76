"""``vmblock serve``: compose pool, SCSI targets, the iSCSI service and the admin socket.

The server owns the pool for its whole life (RocksDB's lock), so every other command goes through
its admin socket; ``LiveApi`` applies each change both to the pool and to the running targets,
which the iSCSI service reads live (a new vdisk is a new LUN at once, a new target a new entry).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import uvloop

from vmblock.admin import http as admin_http
from vmblock.admin.api import Api
from vmblock.config import check_settings, format_portal, negotiation_overrides, parse_iqn_list
from vmblock.errors import InvalidArgument, NotFound, ServerError
from vmblock.iscsi.chap import ChapSecrets
from vmblock.iscsi.portal import IscsiConfig, IscsiService, TargetEntry
from vmblock.meta import Pool, Vdisk
from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.target import ScsiTarget
from vmblock.store.backend import BackingStore

log = logging.getLogger("vmblock")

DEMO_NAME = "demo"
DEMO_SIZE = 8 << 30


def ensure_demo(pool: Pool) -> None:
    """The thin 8 GiB vdisk ``demo`` of VM ``demo`` that the README's first command serves."""
    try:
        pool.vm(DEMO_NAME)
    except NotFound:
        pool.create_vm(DEMO_NAME)
    try:
        pool.vdisk(DEMO_NAME)
    except NotFound:
        pool.create_vdisk(DEMO_NAME, DEMO_SIZE, vm=DEMO_NAME)


def chap_of(settings: dict[str, str], prefix: str) -> ChapSecrets | None:
    """CHAP secrets under ``prefix`` (e.g. 'auth.discovery.'), None when CHAP is off there."""
    user, secret = settings.get(prefix + "chap_user"), settings.get(prefix + "chap_secret")
    m_user, m_secret = settings.get(prefix + "mutual_user"), settings.get(prefix + "mutual_secret")
    if not (user or secret or m_user or m_secret):
        return None
    if not (user and secret):
        raise InvalidArgument(f"{prefix}chap_user and {prefix}chap_secret must be set together")
    if bool(m_user) != bool(m_secret):
        raise InvalidArgument(f"{prefix}mutual_user and {prefix}mutual_secret must be set together")
    return ChapSecrets(user, secret, m_user or None, m_secret or None)


def iscsi_config(settings: dict[str, str]) -> IscsiConfig:
    return IscsiConfig(
        overrides=negotiation_overrides(settings),
        discovery_chap=chap_of(settings, "auth.discovery."),
        nop_interval=float(settings.get("iscsi.nop_interval", "30")),
        nop_timeout=float(settings.get("iscsi.nop_timeout", "30")),
    )


class Server:
    """One running target: built from the pool, changed through ``LiveApi``, stopped once."""

    def __init__(self, pool: Pool, overrides: dict[str, str], portals: list[tuple[str, int]]):
        self.pool = pool
        self.overrides = overrides      # from --config; win over the pool's keys for this run
        self.portals = portals
        self.targets: dict[str, TargetEntry] = {}
        self.stores: dict[str, BackingStore] = {}   # vdisk uuid -> open store
        self.service: IscsiService | None = None
        self.admin = None

    def settings(self) -> dict[str, str]:
        settings = {**self.pool.config(), **self.overrides}
        check_settings(settings)
        return settings

    def _entry(self, iqn: str, scsi: ScsiTarget, settings: dict[str, str]) -> TargetEntry:
        return TargetEntry(name=iqn, scsi=scsi, acl=parse_iqn_list(settings.get(f"acl.{iqn}", "")),
                           chap=chap_of(settings, f"auth.target.{iqn}."),
                           alias=self.pool.target(iqn).alias)

    def add_target(self, iqn: str) -> None:
        self.targets[iqn] = self._entry(iqn, ScsiTarget(iqn), self.settings())

    def refresh_target(self, iqn: str) -> None:
        """Re-read a target's ACL and CHAP; new logins see them, running sessions keep theirs."""
        self.targets[iqn] = self._entry(iqn, self.targets[iqn].scsi, self.settings())

    def add_vdisk(self, disk: Vdisk) -> None:
        store = self.pool.open_store(disk)
        self.stores[disk.uuid] = store
        lu = LogicalUnit(store, name=disk.name, serial=disk.serial, naa=disk.naa,
                         vendor="VMBLOCK", product="vdisk", write_cache=True)
        self.targets[disk.target].scsi.add_lun(disk.lun, lu)

    def remove_vdisk(self, disk: Vdisk) -> None:
        self.targets[disk.target].scsi.remove_lun(disk.lun)
        store = self.stores.pop(disk.uuid)
        store.flush()
        store.close()

    async def start(self) -> None:
        settings = self.settings()
        for t in self.pool.targets():
            self.add_target(t.iqn)
        for disk in self.pool.vdisks():
            self.add_vdisk(disk)
        self.service = IscsiService(self.targets, iscsi_config(settings))   # settings are checked
        try:
            await self.service.start(self.portals)
        except OSError as e:
            where = ", ".join(format_portal(h, p) for h, p in self.portals)
            raise ServerError(f"cannot listen on {where}: {e.strerror or e}") from None
        self.admin = await admin_http.start(LiveApi(self), self.pool.socket_path)

    async def stop(self) -> None:
        """Stop taking admin calls and logins, end sessions, then make every write durable."""
        if self.admin is not None:
            await self.admin.cleanup()
            try:
                os.unlink(self.pool.socket_path)
            except FileNotFoundError:
                pass
        if self.service is not None:
            await self.service.stop()
        for store in self.stores.values():
            store.flush()
            store.close()
        self.stores.clear()

    def bound_portals(self) -> list[tuple[str, int]]:
        return self.service.bound_portals


class LiveApi(Api):
    """The verbs as the running server answers them: pool first, then the live targets."""

    def __init__(self, server: Server):
        super().__init__(server.pool)
        self.server = server

    def portals(self) -> list[tuple[str, int]]:
        return self.server.bound_portals()

    def vdisk_created(self, disk: Vdisk, new_target: bool) -> None:
        if new_target:
            self.server.add_target(disk.target)
        self.server.add_vdisk(disk)

    def vdisk_deleted(self, disk: Vdisk) -> None:
        self.server.remove_vdisk(disk)   # already unlinked; the open fd keeps in-flight I/O valid

    def config_changed(self, key: str) -> bool:
        if key in self.server.overrides:
            return False
        if key.startswith(("iscsi.", "auth.discovery.")) and key != "iscsi.portals":
            try:
                self.server.service.reconfigure(iscsi_config(self.server.settings()))
            except InvalidArgument:
                return False   # e.g. discovery chap_user set, chap_secret not yet
            return True
        for iqn in self.server.targets:
            if key == f"acl.{iqn}" or key.startswith(f"auth.target.{iqn}."):
                try:
                    self.server.refresh_target(iqn)
                except InvalidArgument:
                    return False   # e.g. chap_user set, chap_secret not yet: keep the old entry
                return True
        return False

    def session_list(self) -> list[dict]:
        return self.server.service.sessions()


async def _serve(pool: Pool, overrides: dict[str, str], portals: list[tuple[str, int]]) -> None:
    server = Server(pool, overrides, portals)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        where = ", ".join(format_portal(h, p) for h, p in server.bound_portals())
        print(f"vmblock: serving {', '.join(server.targets)} on {where}", flush=True)
        await stop.wait()
        log.info("vmblock: shutting down")
    finally:
        await server.stop()


def serve(pool: Pool, overrides: dict[str, str], portals: list[tuple[str, int]]) -> None:
    """Run until SIGTERM/SIGINT; the pool is closed on the way out, whatever happens."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        uvloop.run(_serve(pool, overrides, portals))
    finally:
        pool.close()
