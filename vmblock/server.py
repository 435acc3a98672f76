"""``vmblock serve``: compose pool, SCSI targets, the iSCSI service and the admin socket.

The server owns the pool for its whole life (RocksDB's lock), so every other command goes through
its admin socket; ``LiveApi`` applies each change both to the pool and to the running targets,
which the iSCSI service reads live (a new vdisk is a new LUN at once, a new target a new entry).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import signal
import stat
import sys
from contextlib import asynccontextmanager

import uvloop

from vmblock.admin import http as admin_http
from vmblock.admin.api import Api
from vmblock.admin.metrics import start_metrics
from vmblock.cache import flash as flash_cache
from vmblock.errors import InvalidArgument, NotFound, ServerError
from vmblock.events.runtime import EventsRuntime
from vmblock.events.schedule import check_manual_name
from vmblock.hypervisor.manager import Hypervisors
from vmblock.iscsi.chap import ChapSecrets
from vmblock.iscsi.portal import IscsiConfig, IscsiService, TargetEntry
from vmblock.meta import Pool, Vdisk, datastores, policies
from vmblock.meta.config import check_settings
from vmblock.meta.reservations import PrRecord
from vmblock.meta.stats_live import PoolStats
from vmblock.qos.gate import QosGate
from vmblock.qos.shared import SharedTags
from vmblock.native import extent as extent_kernels
from vmblock.native import stats as stats_kernels
from vmblock.scsi.lu import LogicalUnit
from vmblock.scsi.sense import SenseReason
from vmblock.scsi.target import ScsiTarget
from vmblock.collector import settle_gc
from vmblock.heap import keep_buffers
from vmblock.scsi.lu import MAX_TRANSFER_BYTES
from vmblock.cache.split import CacheSplit
from vmblock.datastore.watch import Debounce, WatchedStore, thresholds
from vmblock.settings import WORKERS_KEY, Apply, Settings, format_portal, lookup
from vmblock.stats.live import LiveStats
from vmblock.store.backend import BackingStore
from vmblock.worker.owner import WorkerPool
from vmblock.worker.publish import Publisher

log = logging.getLogger("vmblock")

DEMO_NAME = "demo"
DEMO_SIZE = 8 << 30
FAULT_RETRY = 1.0      # seconds between commit attempts while the meta DB or a tier fails
# IscsiConfig fields read from the iscsi.* key of the same name
FABRIC_FIELDS = ("nop_interval", "nop_timeout", "max_connections", "max_connections_per_host",
                 "max_login_connections", "first_pdu_timeout", "login_timeout", "data_budget",
                 "data_budget_per_host", "poll_window")


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


def chap_of(settings: Settings, prefix: str) -> ChapSecrets | None:
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


def chap_or_locked(settings: Settings, prefix: str) -> tuple[ChapSecrets | None, str]:
    """(secrets, "") or, when only half of a CHAP pair is stored (it is set one key at a time),
    (None, why): then every login there is refused, never let in without CHAP."""
    try:
        return chap_of(settings, prefix), ""
    except InvalidArgument as e:
        log.warning("%s: refusing every login until the CHAP keys are complete", e)
        return None, f"incomplete CHAP keys: {e}"


def iscsi_config(settings: Settings) -> IscsiConfig:
    """The fabric's configuration from the iscsi.* and auth.discovery.* settings."""
    discovery_chap, discovery_locked = chap_or_locked(settings, "auth.discovery.")
    return IscsiConfig(
        overrides=settings.negotiation(),
        discovery_chap=discovery_chap,
        discovery_locked=discovery_locked,
        **{name: settings.get(f"iscsi.{name}") for name in FABRIC_FIELDS},
    )


def same_device(fd_a: int, fd_b: int) -> bool:
    """Whether two open tiers (files or block devices) live on one device."""
    def device(fd: int) -> int:
        st = os.fstat(fd)
        return st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev
    return device(fd_a) == device(fd_b)


def open_cache(pool: Pool, settings: Settings) -> flash_cache.FlashCache | None:
    """The server's ``FlashCache`` over the pool's flash tier, or None when cache.size is 0,
    or 'auto' with both tiers on one device (where a flash copy only costs: a fill and a
    second write to the same disk, for blocks the page cache already holds).

    The cache takes the first ``cache.size`` bytes of the flash tier (slot s at s * block
    size); the rest of the tier is left for flash-tier AUs of the extent store."""
    cache_size = settings.get("cache.size")
    flash = pool.store.flash
    if cache_size.auto and same_device(pool.store.capacity.fd, flash.fd):
        log.info("flash cache off: cache.size is auto and the flash tier shares a device "
                 "with the capacity tier")
        return None
    total = flash.size_bytes
    size = cache_size.of(total)
    if size > total:
        raise InvalidArgument(f"cache.size {cache_size.text.strip()} is larger than the flash "
                              f"tier ({total} bytes, store.flash_size)")
    # the extent store owns the split: its flash-tier AUs start at cache_bytes
    size = min(size, pool.store.cache_bytes)
    bs = settings.get("cache.block_size")
    nslots = size // bs
    if nslots == 0:
        return None
    cache = flash_cache.FlashCache(flash.fd, 0, nslots, bs)
    cache.set_groups(pool.eviction_groups.slot_table(), {})
    return cache


def cached_store(cache: flash_cache.FlashCache, pool: Pool, disk: Vdisk,
                 store: BackingStore, vm_names: dict[str, str] | None = None
                 ) -> flash_cache.CachedStore:
    """Put the cache in front of one vdisk's store, in its group with its pin. At start
    ``vm_names`` (VM uuid -> name) saves a read per vdisk and the caller sets every vdisk's
    group at once afterwards (``Server.start``); without it this vdisk's group is set here."""
    if vm_names is not None:
        vm = vm_names.get(disk.vm) if disk.vm else None
    else:
        vm = pool.vm_by_uuid(disk.vm).name if disk.vm else None
    vid = cache.attach(disk.uuid, disk.name, vm)
    if vm_names is None:
        groups = pool.eviction_groups
        cache.set_groups(groups.slot_table(), {disk.uuid: (groups.group_of(disk),
                                                           groups.pinned(disk))})
    return flash_cache.CachedStore(cache, store, vid)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:          # a wildcard ("") or a name: reachable from elsewhere
        return False


class Server:
    """One running target: built from the pool, changed through ``LiveApi``, stopped once."""

    def __init__(self, pool: Pool, portals: list[tuple[str, int]], insecure: bool = False):
        """``pool.overrides`` (serve --config) win over the pool's keys for this run."""
        self.pool = pool
        self.portals = portals
        self.insecure = insecure        # serve --insecure: no target asks for CHAP
        self.targets: dict[str, TargetEntry] = {}
        self.stores: dict[str, BackingStore] = {}   # vdisk uuid -> open store
        self.service: IscsiService | None = None
        self.admin = None
        self.committer: asyncio.Task | None = None
        self.cache = None               # vmblock.cache.flash.FlashCache, None when cache.size is 0
        self.workers: WorkerPool | None = None    # server.workers > 0: the worker processes
        # the workers' fast path (shared maps): with workers and without the flash cache
        self.publisher: Publisher | None = None
        self.hypervisors: Hypervisors | None = None     # the libvirt connectors
        # shared datastores (docs/datastores.md): each served vdisk's store watches its label
        # and metadata areas; a write there re-reads the map after datastore.lvm.rescan_delay
        self.watched: dict[str, WatchedStore] = {}  # vdisk uuid -> its store
        self.datastore_luns: set[str] = set()       # vdisks whose last scan found LVs
        self.rescans: Debounce | None = None
        self.events: EventsRuntime | None = None   # delivery, space watch, snapshot schedule
        self.sanitize_rate = self.settings().get("scsi.sanitize_rate")
        # statistics (docs/stats.md): this run's counters, and the pool's view of them
        self.live_stats: LiveStats | None = None
        self.stats: PoolStats | None = None
        self.sampler: asyncio.Task | None = None
        self.metrics = None             # the Prometheus listener (metrics.listen)
        self.qos: QosGate | None = None     # the owner's QoS gate (docs/qos.md)
        self.qos_watch: asyncio.Task | None = None
        self.qos_told: dict[str, float] = {}      # flow key -> when qos_throttled was recorded

    def settings(self) -> Settings:
        """The pool's settings for this run, checked as a whole (InvalidArgument if not)."""
        settings = self.pool.settings()
        check_settings(settings)
        return settings

    def _entry(self, iqn: str, scsi: ScsiTarget, settings: Settings) -> TargetEntry:
        chap, locked = ((None, "") if self.insecure else
                        chap_or_locked(settings, f"auth.target.{iqn}."))
        return TargetEntry(name=iqn, scsi=scsi, acl=settings.get(f"acl.{iqn}"),
                           chap=chap, alias=self.pool.target(iqn).alias, locked=locked)

    def add_target(self, iqn: str) -> None:
        """Serve target ``iqn`` (no LUNs yet) with its ACL and CHAP; once running, warn if it
        is reachable without CHAP."""
        self.targets[iqn] = self._entry(iqn, ScsiTarget(iqn), self.settings())
        if self.service is not None:
            self.warn_open([iqn])

    def warn_open(self, iqns: list[str]) -> None:
        """Say which of ``iqns`` anyone reaching a non-loopback portal can log in to."""
        exposed = [format_portal(h, p) for h, p in self.bound_portals() if not _is_loopback(h)]
        open_targets = [iqn for iqn in iqns if self.targets[iqn].chap is None]
        if exposed and open_targets:
            print(f"vmblock: warning: {', '.join(open_targets)} served without CHAP on "
                  f"{', '.join(exposed)}: anyone who reaches these portals can read and "
                  f"write their vdisks", file=sys.stderr, flush=True)

    def refresh_target(self, iqn: str) -> None:
        """Re-read a target's ACL and CHAP; new logins see them, running sessions keep theirs."""
        had_chap = self.targets[iqn].chap is not None
        self.targets[iqn] = self._entry(iqn, self.targets[iqn].scsi, self.settings())
        if had_chap:
            self.warn_open([iqn])      # its CHAP keys were just unset

    def add_vdisk(self, disk: Vdisk, vm_names: dict[str, str] | None = None) -> None:
        """Serve a vdisk: open its store (behind the flash cache when there is one, bypassed on
        the flash tier) and add it as LUN ``disk.lun`` of its target. ``vm_names``: see
        ``cached_store`` (given by ``start`` only)."""
        watched = WatchedStore(self.pool.store, disk.map_id, disk.block_size,
                               functools.partial(self.rescans.touch, disk.uuid))
        self.watched[disk.uuid] = store = watched
        if self.cache is not None:
            store = cached_store(self.cache, self.pool, disk, store, vm_names)
            store.bypass = disk.tier == "flash"     # flash-tier data needs no cache
        self.stores[disk.uuid] = store
        lu = LogicalUnit(store, name=disk.name, serial=disk.serial, naa=disk.naa,
                         vendor="VMBLOCK", product="vdisk", write_cache=True,
                         read_only=disk.read_only, removable=disk.removable,
                         sanitize_rate=self.sanitize_rate,
                         physical_block_size=disk.physical_block_size)
        # APTPL: the reservations the vdisk's record kept, before anyone sees the LU
        lu.reservations.restore(PrRecord(self.pool, disk.uuid))
        scsi = self.targets[disk.target].scsi
        scsi.add_lun(disk.lun, lu)
        if self.stats is not None:
            scsi.stats_rows[disk.lun] = self.stats.lu_rows(disk, store)
        if self.publisher is not None:
            self.publisher.add(lu)
            lu.state_listener = self._republish
            lu.quiesce = functools.partial(self.publisher.changing_maps, (lu,))
        if self.workers is not None:
            self.workers.luns_changed(disk.target, scsi.luns, scsi.stats_rows)
        self.datastore_scan(disk)

    def datastore_scan(self, disk: Vdisk) -> None:
        """Read what a served vdisk holds (``datastores.scan_vdisk``: the map stored, events)
        and watch its label and metadata areas from now on, in the owner's store and in the
        workers' fast path. When the watched ranges grew, read once more after the delay: a
        worker's write checked against the old ranges may have landed meanwhile."""
        store = self.watched.get(disk.uuid)
        if store is None:
            return
        try:
            watch = datastores.scan_vdisk(self.pool, disk, datastores.store_reader(store))
        except Exception as e:      # a failing tier or meta DB: the next write tries again
            log.warning("vdisk %s: datastore scan failed: %s", disk.name, e)
            return
        low, high = thresholds(watch, store.size_bytes)
        grew = low > store.watch_low or high < store.watch_high
        store.watch_low, store.watch_high = low, high
        lu = self.lu(disk)
        if self.publisher is not None and lu is not None:
            self.publisher.watch(lu, low, high)
            if grew:
                self.rescans.touch(disk.uuid)
        self.stats_split(disk)
        # a vdisk that holds (or held) LVs: their I/O goes to their VMs' QoS flows
        # (vmblock.qos.split), cache ids and space quotas; the others cost one record read
        had = disk.uuid in self.datastore_luns
        if datastores.ranges_of(datastores.record(self.pool, disk)):
            self.datastore_luns.add(disk.uuid)
        elif had:
            self.datastore_luns.discard(disk.uuid)
        else:
            return
        self.qos_sync()
        self.cache_split(disk)
        policies.sync_quotas(self.pool)

    def cache_split(self, disk: Vdisk) -> None:
        """The flash cache serves each LV of the datastore ``disk`` holds under a cache vdisk
        of its own, in the eviction group of the LV's VM and with its pins
        (vmblock.cache.split); when the LVs' ranges changed, every cached block of the LU is
        dropped before the new split is installed (bytes moved between cache vdisks)."""
        store = self.stores.get(disk.uuid)
        if not isinstance(store, flash_cache.CachedStore):
            return
        cache = self.cache
        ranges = datastores.ranges_of(datastores.record(self.pool, disk))
        if not ranges and store.split is None:
            return
        prefix = disk.uuid + "/"
        old = [k for k in cache.ids if k.startswith(prefix)]
        names = {vm.uuid: vm.name for vm in self.pool.vms()}
        vids = {}
        for r in ranges:
            key = prefix + r.subvdisk
            if key not in vids:
                vids[key] = cache.attach(key, r.subvdisk, names.get(r.vm))
        split = CacheSplit.of_ranges([(r.first, r.end, vids[prefix + r.subvdisk])
                                      for r in ranges], store.vid)
        if split != store.split:
            cache.invalidate_vdisk(disk.uuid)
            store.split = split
        for key in old:
            if key not in vids:
                cache.detach(key)
        groups = self.pool.eviction_groups
        members = groups.members()
        cache.set_groups(groups.slot_table(), {k: members[k] for k in vids if k in members})

    def stats_split(self, disk: Vdisk) -> None:
        """I/O into each LV of the datastore ``disk`` holds counts to its sub-vdisk and VM
        from now on (``PoolStats.split_lu``: the map just read); workers learn the split."""
        entry = self.targets.get(disk.target)
        lu_rows = entry.scsi.stats_rows.get(disk.lun) if entry is not None else None
        if self.stats is None or lu_rows is None:
            return
        try:
            changed = self.stats.split_lu(disk, lu_rows)
        except OSError as e:        # every stats row of the run given out (arena.MAX_ROWS)
            log.warning("vdisk %s: its LVs count as the vdisk: %s", disk.name, e)
            return
        if changed and self.workers is not None:
            self.workers.luns_changed(disk.target, entry.scsi.luns, entry.scsi.stats_rows)

    def _rescan(self, uid: str) -> None:
        """The debounce fired for vdisk ``uid``: scan it if it is still served."""
        if uid in self.watched:
            disk = datastores.vdisk_by_uuid(self.pool, uid)
            if disk is not None:
                self.datastore_scan(disk)

    def _republish(self, lu: LogicalUnit) -> None:
        """The LU's medium state changed (write protect, eject, SANITIZE): its flag word
        now sends every command to the owner, or lets the workers run READ/WRITE again."""
        self.publisher.refresh((lu,))

    def remove_vdisk(self, disk: Vdisk) -> None:
        """Take a vdisk's LUN out of its target, flush and close its store, drop its cache
        blocks. The caller drains its writes first (``LiveApi._unserve``)."""
        scsi = self.targets[disk.target].scsi
        lu = scsi.luns.get(disk.lun)
        if self.publisher is not None and lu is not None:
            self.publisher.remove(lu)
        scsi.remove_lun(disk.lun)
        scsi.stats_rows.pop(disk.lun, None)
        if self.workers is not None:
            self.workers.luns_changed(disk.target, scsi.luns, scsi.stats_rows)
        store = self.stores.pop(disk.uuid)
        self.watched.pop(disk.uuid, None)
        self.datastore_luns.discard(disk.uuid)
        self.rescans.cancel(disk.uuid)
        store.flush()
        store.close()
        if self.cache is not None:
            self.cache.detach(disk.uuid)

    def store_of(self, vdisk_uuid: str) -> BackingStore | None:
        """The store a served vdisk's LUN uses (vmblock.admin.cache.Runtime)."""
        return self.stores.get(vdisk_uuid)

    def lu(self, disk: Vdisk) -> LogicalUnit | None:
        """The logical unit serving ``disk``, None when it is not served (yet)."""
        entry = self.targets.get(disk.target)
        return entry.scsi.luns.get(disk.lun) if entry is not None else None

    async def _commit_loop(self, interval: float) -> None:
        """Group commit in the background: map keys of writes no flush has covered yet
        become durable within ``interval`` seconds (data first, as every commit). While a
        commit fails (a full or failing meta DB or tier) it retries every FAULT_RETRY
        seconds: the first one that succeeds ends the fault, with no restart."""
        loop = asyncio.get_running_loop()
        store = self.pool.store
        while True:
            await asyncio.sleep(interval if store.fault is None else min(interval, FAULT_RETRY))
            try:
                await loop.run_in_executor(None, store.flush)
            except Exception as e:     # logged once by the store when the fault began
                log.debug("background commit failed: %s", e)

    async def start(self) -> None:
        """Serve the pool: cache, background commit, every target and vdisk, the worker
        processes (``server.workers``), the iSCSI portals (ServerError if one cannot be
        bound), then the admin socket."""
        settings = self.settings()
        extent_kernels.warm()     # compiled (or loaded from cache) before the first I/O
        flash_cache.warm()
        stats_kernels.warm()
        self.pool.store           # maps loaded and refcounts rebuilt before the ready line
        self.cache = open_cache(self.pool, settings)   # cold: RAM only
        interval = settings.get("store.commit_interval")
        if interval > 0:
            self.committer = asyncio.create_task(self._commit_loop(interval))
        count = settings.workers(self.cache is not None)
        if count < settings.get(WORKERS_KEY):
            log.info("no worker processes: server.workers is auto and the flash cache is on "
                     "(every command would go through this process's cache)")
        if count and self.cache is None:     # the cache's state lives in the owner only
            self.publisher = Publisher(self.pool.store, count)
        self.rescans = Debounce(asyncio.get_running_loop(),
                                settings.get("datastore.lvm.rescan_delay"), self._rescan)
        if settings.get("stats.enabled"):
            self.live_stats = LiveStats(count, asyncio.get_running_loop().call_later)
            self.stats = PoolStats(self.pool, self.live_stats, self.cache,
                                   settings.get("stats.interval"))
            self.stats.start()
            self.stats.refresh_space()          # the first figures, before any I/O
        for t in self.pool.targets():
            self.add_target(t.iqn)
        # thousands of vdisks: the VMs' names read once, every vdisk's group set at once
        vm_names = {vm.uuid: vm.name for vm in self.pool.vms()}
        for disk in self.pool.vdisks():
            self.add_vdisk(disk, vm_names)
        if self.cache is not None:
            groups = self.pool.eviction_groups
            self.cache.set_groups(groups.slot_table(), groups.members())
        self.service = IscsiService(self.targets, iscsi_config(settings))   # settings are checked
        if self.live_stats is not None:
            self.service.stats = self.live_stats.recorder      # the fabric counts into it
            self.sampler = asyncio.create_task(self._sample_loop())
        self.qos = self.service.qos = QosGate(asyncio.get_running_loop().call_later,
                                              settings.get("qos.slots"),
                                              SharedTags() if count else None)
        self.qos_sync()
        self.qos_watch = asyncio.create_task(self._qos_loop())
        if count:
            # started before the portals: no login is handed over to a worker not yet ready
            self.workers = WorkerPool(self.service, count, self.publisher)
            self.workers.stats = self.live_stats
            self.workers.qos = self.qos
            self.workers.qos_throttled = self.qos_throttled
            await self.workers.start()
            self.service.handoff = self.workers.place
        try:
            await self.service.start(self.portals)
        except OSError as e:
            where = ", ".join(format_portal(h, p) for h, p in self.portals)
            raise ServerError(f"cannot listen on {where}: {e.strerror or e}") from None
        self.warn_open(list(self.targets))
        self.hypervisors = Hypervisors(self.pool, self.bound_portals,
                                       settings.get("hypervisor.call_timeout"))
        await self.hypervisors.start()
        api = LiveApi(self)
        self.events = EventsRuntime(self.pool, api.take_vm_snapshot,
                                    lambda vm, snap: api.snapshot_delete(snap, vm=vm),
                                    self.cache)
        await self.events.start()
        listen = settings.get("metrics.listen")     # serve --metrics sets it for this run
        if listen:
            self.metrics = await start_metrics(api, listen)
        self.admin = await admin_http.start(api, self.pool.socket_path)

    def qos_sync(self) -> None:
        """Give the QoS gates every VM's QoS and the VM of every LU (at start, after
        ``vm set`` and ``vdisk set``, and when vdisks come or go)."""
        if self.qos is not None:
            self.qos.throttled_after = self.pool.settings().get("qos.throttled_after")
            self.qos.configure(*policies.qos_config(self.pool))
            if self.workers is not None:
                self.workers.qos_changed()

    async def _qos_loop(self) -> None:
        """Once a second: ``qos_throttled`` for the flows the owner's gate held at their
        limit for more than ``qos.throttled_after`` seconds (the workers report theirs in
        ``QOS_THROTTLED``: ``qos_throttled``)."""
        while True:
            await asyncio.sleep(1)
            try:
                if self.pool.settings().get("qos.throttled_after") != self.qos.throttled_after:
                    self.qos_sync()         # the workers learn it too
                for key in self.qos.throttled(self.qos.clock(), self.qos.throttled_after):
                    await self.qos_throttled(key)
            except Exception as e:
                log.warning("QoS check failed: %s", e)

    async def qos_throttled(self, key: str) -> None:
        """Record ``qos_throttled`` for flow ``key`` (a VM uuid or ``vdisk:<uuid>``), once
        per ``qos.throttled_after`` whichever processes report it."""
        now = self.qos.clock()
        if now - self.qos_told.get(key, -1e18) < self.qos.throttled_after:
            return
        self.qos_told[key] = now
        try:
            await asyncio.get_running_loop().run_in_executor(None, functools.partial(
                policies.record_qos_throttled, self.pool, key, self.qos.throttled_after))
        except Exception as e:
            log.warning("qos_throttled event not recorded: %s", e)

    async def flush_stats(self) -> None:
        """Every worker adds its staged statistics into its slab (vmblock.admin.stats)."""
        if self.workers is not None:
            await self.workers.flush_stats()

    async def _sample_loop(self) -> None:
        """Take a statistics sample every ``stats.interval`` seconds (read at each tick, so a
        change applies at the next one). A failing sample (a full meta DB) is logged and
        retried at the next tick; I/O goes on."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.stats.interval)
            try:
                if self.stats.space_due():      # walks the maps: off the event loop
                    await loop.run_in_executor(None, self.stats.refresh_space)
                await self.flush_stats()
                self.stats.sample()
            except Exception as e:
                log.warning("statistics sample failed: %s", e)

    async def stop(self) -> None:
        """Stop taking admin calls and logins, end sessions, then make every write durable."""
        if self.events is not None:        # first: it answers the followers' long polls
            await self.events.stop()
        if self.admin is not None:
            await self.admin.cleanup()
            try:
                os.unlink(self.pool.socket_path)
            except FileNotFoundError:
                pass
        if self.hypervisors is not None:
            await self.hypervisors.stop()
        if self.metrics is not None:
            await self.metrics.cleanup()
        if self.service is not None:
            await self.service.stop()
        if self.workers is not None:
            await self.workers.stop()
        if self.sampler is not None:
            self.sampler.cancel()
        if self.qos_watch is not None:
            self.qos_watch.cancel()
        if self.qos is not None and self.qos.shared is not None:
            self.qos.shared.close()         # the workers are gone: nothing maps it any more
        if self.stats is not None:
            try:
                self.stats.stop()           # the counts since the last sample survive
            except Exception as e:
                log.error("statistics not stored at shutdown: %s", e)
        if self.publisher is not None:
            self.publisher.close()
        if self.committer is not None:
            self.committer.cancel()
        if self.rescans is not None:
            self.rescans.close()
        try:
            for store in self.stores.values():
                store.flush()
                store.close()
        except OSError as e:
            log.error("final commit failed, writes since the last good SYNCHRONIZE CACHE "
                      "may be lost: %s", e)
        self.stores.clear()

    def bound_portals(self) -> list[tuple[str, int]]:
        """The (host, port) pairs listened on, with the ports actually bound (port 0 resolved)."""
        return self.service.bound_portals


class LiveApi(Api):
    """The verbs as the running server answers them: pool first, then the live targets."""

    def __init__(self, server: Server):
        super().__init__(server.pool, runtime=server)
        self.server = server

    def portals(self) -> list[tuple[str, int]]:
        """The portals this server is bound to (not the configured ones): what initiators reach."""
        return self.server.bound_portals()

    def chap(self, iqn: str) -> ChapSecrets | None:
        """The CHAP credentials the running target ``iqn`` asks for; None when it asks none."""
        entry = self.server.targets.get(iqn)
        return entry.chap if entry is not None else None

    def vdisk_created(self, disk: Vdisk, new_target: bool) -> None:
        """Serve the new vdisk at once (and its target, if the vdisk created it)."""
        if new_target:
            self.server.add_target(disk.target)
        self.server.add_vdisk(disk)
        self.server.qos_sync()

    def vdisk_deleted(self, disk: Vdisk) -> None:
        """Stop serving the deleted vdisk if it is still served (verbs normally unserve first);
        its statistics go with it."""
        if disk.uuid in self.server.stores:
            self.server.remove_vdisk(disk)
        if self.server.stats is not None:
            self.server.stats.forget(disk)
        self.server.qos_sync()

    def vdisk_resized(self, disk: Vdisk) -> None:
        """Drop the vdisk's cache blocks and have its LU re-read the size (a CAPACITY DATA HAS
        CHANGED unit attention for every nexus)."""
        if self.server.cache is not None:
            self.server.cache.invalidate_vdisk(disk.uuid)
        lu = self.server.lu(disk)
        if lu is not None:
            lu.capacity_changed()
            if self.server.publisher is not None:   # a new L1 slot and size
                self.server.publisher.changed_now((lu,))

    # Verbs that change extent maps under a LUN: wait until the writes the LU has handed to
    # the executor have finished. Snapshots and clones then run in the executor: the store
    # copies the maps in one locked step (a few ms for a million AUs; writes that start after
    # it copy on write, the transaction waits for those in flight at it) and writes the batch
    # outside its lock, so the event loop keeps serving every other vdisk meanwhile; the new
    # clone's LUNs are added back on the loop. Transactions run one at a time (the store's
    # flush lock), so a verb on the loop meanwhile cannot interleave with them. A VM snapshot
    # is crash-consistent across its vdisks: all drained, then one batch. Reverts still run
    # on the loop: they replace maps under LUNs in use.

    async def _drain(self, disks: list[Vdisk]) -> list[LogicalUnit]:
        lus = [lu for lu in map(self.server.lu, disks) if lu is not None]
        while any(lu.pending_writes for lu in lus):
            await asyncio.wait([f for lu in lus for f in lu.pending_writes])
        return lus

    @asynccontextmanager
    async def _changing(self, disks: list[Vdisk], drain: bool = True):
        """Around a wholesale change of the disks' maps: with worker processes, their fast
        path stays off these LUs (``Publisher.changing_maps``: no in-place write that checked
        ownership before is still running), then (``drain``) the owner's writes in flight
        drain."""
        publisher = self.server.publisher
        lus = [lu for lu in map(self.server.lu, disks) if lu is not None]
        if publisher is None:
            if drain:
                await self._drain(disks)
            yield
            return
        async with publisher.changing_maps(lus):
            if drain:
                await self._drain(disks)
            yield

    async def vm_snapshot(self, name: str, snapshot: str) -> dict:
        """``Api.vm_snapshot`` on the running server: the name checked, then
        ``take_vm_snapshot``."""
        check_manual_name(snapshot)
        return await self.take_vm_snapshot(name, snapshot)

    async def take_vm_snapshot(self, name: str, snapshot: str) -> dict:
        """Drain the writes in flight on every vdisk of the VM, then snapshot them in one batch
        (crash-consistent), in the executor."""
        async with self._changing(self.pool.vdisks(vm=name)):
            return await asyncio.get_running_loop().run_in_executor(
                None, super().take_vm_snapshot, name, snapshot)

    async def vdisk_snapshot(self, name: str, snapshot: str) -> dict:
        """Drain the vdisk's writes in flight, then snapshot it in the executor."""
        async with self._changing([self.pool.vdisk(name)]):
            return await asyncio.get_running_loop().run_in_executor(
                None, super().vdisk_snapshot, name, snapshot)

    async def vm_clone(self, name: str, new_name: str, snapshot: str | None = None,
                       live: bool = False, force: bool = False,
                       no_policies: bool = False) -> dict:
        """Clone in the executor; a ``live`` clone first drains the source vdisks' writes in
        flight, so none is half done in the copy. The new LUNs are served from the loop.
        Refused while space is low unless ``force``."""
        policies.check_admission(self.pool, force, "clone")
        loop = asyncio.get_running_loop()
        work = functools.partial(self.pool.clone_vm, name, new_name, snapshot=snapshot,
                                 live=live, inherit=not no_policies)
        if not live:
            return self._cloned(*await loop.run_in_executor(None, work))
        async with self._changing(self.pool.vdisks(vm=name)):
            made = await loop.run_in_executor(None, work)
        return self._cloned(*made)

    def _refuse_in_use(self, disks: list[Vdisk], force: bool, verb: str) -> None:
        """Refuse a change that pulls data from under logged-in initiators unless ``force``."""
        busy = [d.name for d in disks if (lu := self.server.lu(d)) is not None and lu.nexuses]
        if busy and not force:
            raise InvalidArgument(f"vdisks {', '.join(busy)} are in use by iSCSI sessions; "
                                  f"log them out first or {verb} with --force")

    async def _revert(self, disks: list[Vdisk], force: bool, work) -> dict:
        """Revert under a LUN in use is refused unless ``force``; forced, every nexus gets a
        unit attention (MEDIUM MAY HAVE CHANGED, or CAPACITY DATA HAS CHANGED) so initiators
        drop what they cached of the old data."""
        self._refuse_in_use(disks, force, "revert")
        async with self._changing(disks):      # the unit attentions published at its end
            result = work()
            for entry in result["vdisks"]:
                disk = self.pool.vdisk(entry["name"])
                if self.server.cache is not None:
                    self.server.cache.invalidate_vdisk(disk.uuid)
                lu = self.server.lu(disk)
                if lu is None:
                    continue
                if entry["size_changed"]:
                    lu.capacity_changed()
                lu.add_ua_all(SenseReason.MEDIUM_MAY_HAVE_CHANGED)
                self.server.datastore_scan(disk)    # a VG reverted with it: its old map
        return result

    async def vm_revert(self, name: str, snapshot: str, force: bool = False) -> dict:
        """Revert a VM's vdisks, refused while in use unless ``force`` (``_revert``)."""
        return await self._revert(self.pool.vdisks(vm=name), force,
                                  lambda: super(LiveApi, self).vm_revert(name, snapshot))

    async def vdisk_revert(self, name: str, snapshot: str, force: bool = False) -> dict:
        """Revert one vdisk, refused while in use unless ``force`` (``_revert``)."""
        return await self._revert([self.pool.vdisk(name)], force,
                                  lambda: super(LiveApi, self).vdisk_revert(name, snapshot))

    async def vdisk_move(self, name: str, tier: str) -> dict:
        """Move live, in the executor (the event loop keeps serving; PoolStore.move keeps
        racing writes). Towards flash the cache is bypassed and emptied first; back on
        capacity it is emptied again (a fill racing with the switch may have left a block)
        and used again."""
        disk = self.pool.vdisk(name)
        store = self.server.stores.get(disk.uuid)
        # a served store is wrapped in the cache exactly when the server has one (add_vdisk)
        cache = self.server.cache if store is not None else None
        if cache is not None and tier == "flash":
            store.bypass = True
            cache.invalidate_vdisk(disk.uuid)
        loop = asyncio.get_running_loop()
        try:
            async with self._changing([disk], drain=False):    # the mover keeps racing writes
                result = await loop.run_in_executor(None, super().vdisk_move, name, tier)
        except BaseException:
            if cache is not None and self.pool.vdisk(name).tier != "flash":
                cache.invalidate_vdisk(disk.uuid)     # bypassed writes did not update it
                store.bypass = False
            raise
        if cache is not None and tier == "capacity":
            cache.invalidate_vdisk(disk.uuid)
            store.bypass = False
        return result

    async def _unserve(self, disks: list[Vdisk]) -> None:
        """Take LUNs out of service (no new commands), drain, flush, before their maps go."""
        async with self._changing(disks):
            for disk in disks:
                if disk.uuid in self.server.stores:
                    self.server.remove_vdisk(disk)

    async def vdisk_delete(self, name: str, force: bool = False) -> dict:
        """Delete a vdisk, refused while in use unless ``force``; unserved before its map goes."""
        disks = [self.pool.vdisk(name)]
        self._refuse_in_use(disks, force, "delete")
        await self._unserve(disks)
        return super().vdisk_delete(name)

    async def vm_delete(self, name: str, purge: bool = False, force: bool = False) -> dict:
        """Delete a VM; with ``purge`` its vdisks are refused if in use (unless ``force``) and
        unserved before their maps go."""
        if purge:
            disks = self.pool.vdisks(vm=name)
            self._refuse_in_use(disks, force, "delete")
            await self._unserve(disks)
        return super().vm_delete(name, purge=purge)

    def config_changed(self, key: str) -> bool:
        """Apply a changed key as its row in vmblock.settings.TABLE says (``Apply``); False
        when it waits for the next start or a --config key wins over it for this run."""
        found = lookup(key)
        if found is None or key in self.pool.overrides:
            return False
        row, name = found
        if row.apply in (Apply.NEW_TARGET, Apply.LIVE):
            return True        # read when a target is created / each time it is used
        if row.apply is Apply.RESCAN:      # datastore.lvm.*: every datastore read again
            for disk in self.pool.vdisks():
                if datastores.record(self.pool, disk) is not None:
                    self.server.datastore_scan(disk)
            return True
        if row.apply is Apply.FABRIC:
            try:
                self.server.service.reconfigure(iscsi_config(self.server.settings()))
                if self.server.workers is not None:
                    self.server.workers.reconfigure()
            except InvalidArgument:
                return False   # the set as a whole is refused: the next start says why
            return True
        if row.apply is Apply.STATS:
            if self.server.stats is not None:
                self.server.stats.interval = self.server.settings().get(key)
            return True
        if row.apply is Apply.TARGET and name in self.server.targets:
            try:
                self.server.refresh_target(name)
            except InvalidArgument:
                return False   # keep the old entry; the next start says why
            return True
        return False

    async def session_list(self) -> list[dict]:
        """The iSCSI sessions logged in to this server (``Session.info`` each; the tasks of
        a session that a worker runs are the worker's)."""
        sessions = self.server.service.sessions()
        if self.server.workers is not None and sessions:
            tasks = await self.server.workers.session_tasks()
            for info in sessions:
                info["tasks"] = tasks.get(info["tsih"], info["tasks"])
        return sessions

    def policies_changed(self) -> None:
        """The snapshot schedule looks at the VMs' policies again now; QoS applies now."""
        self.server.events.policies_changed()
        self.server.qos_sync()

    async def event_wait(self, cursor: int | None = None, kind: str | None = None,
                         timeout: int = 25) -> dict:
        """Events delivered after ``cursor``, waiting up to ``timeout`` s for one
        (``Delivery.wait``)."""
        return await self.server.events.delivery.wait(cursor, kind, timeout)

    def vdisk_protection_changed(self, disk: Vdisk) -> None:
        """The LU refuses writes (or takes them again) from the next command on; workers
        forward its commands to the owner while it is read-only."""
        lu = self.server.lu(disk)
        if lu is not None:
            lu.read_only = disk.read_only
            lu.state_changed()

    def set_medium(self, disk: Vdisk, present: bool) -> None:
        """Eject (refused while a nexus prevents removal) or load the LU's medium."""
        lu = self.server.lu(disk)
        if lu is None:
            raise ServerError(f"vdisk {disk.name} is not served")
        if not present and lu.prevent:
            raise InvalidArgument(f"an initiator prevents the removal of vdisk {disk.name}'s "
                                  f"medium (PREVENT ALLOW MEDIUM REMOVAL)")
        lu.set_medium(present)


async def _serve(pool: Pool, portals: list[tuple[str, int]], insecure: bool) -> None:
    server = Server(pool, portals, insecure)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        settle_gc()
        keep_buffers(MAX_TRANSFER_BYTES)   # Data-In buffers stay resident (vmblock.heap)
        where = ", ".join(format_portal(h, p) for h, p in server.bound_portals())
        print(f"vmblock: serving {', '.join(server.targets)} on {where}", flush=True)
        await stop.wait()
        log.info("vmblock: shutting down")
    finally:
        await server.stop()


def serve(pool: Pool, portals: list[tuple[str, int]], insecure: bool = False) -> None:
    """Run until SIGTERM/SIGINT; the pool is closed on the way out, whatever happens."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        uvloop.run(_serve(pool, portals, insecure))
    finally:
        pool.close()
