"""One libvirt connection of a running server: events, periodic resync, reconnect with backoff.

``Connector.run`` (a task on the server's loop) opens the URI, subscribes to lifecycle events
(``domainEventRegisterAny``, delivered by libvirtaio on the same loop) and to the connection's
close, and reads every domain (a full sync). Then it waits: an event marks its domain dirty and
only that domain is read again; every ``interval`` seconds, or on ``request_sync``, all are read
again (the backstop for a lost event). A failed or timed-out call, or the connection closing
(libvirtd gone; keepalive for remote URIs), makes the hypervisor unreachable: ``on_state`` is
told once, and it reconnects with exponential backoff (``BACKOFF_FIRST`` doubling up to
``BACKOFF_MAX`` or the interval), resyncing when back. Every libvirt call that may wait runs
on the connection's ``Caller`` thread with ``timeout``: the event loop, and with it I/O and
the admin API, never waits for libvirt.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from vmblock.errors import InvalidArgument, ServerError
from vmblock.hypervisor.calls import Caller
from vmblock.hypervisor.domains import Domain, parse_domain
from vmblock.hypervisor.mapping import Served, hypervisor_is_local, map_disk

log = logging.getLogger("vmblock.hypervisor")

BACKOFF_FIRST = 1.0             # seconds before the first reconnect; doubles up to
BACKOFF_MAX = 30.0              # this, or the resync interval when that is shorter
KEEPALIVE_INTERVAL = 5          # seconds between keepalive probes of a remote connection
KEEPALIVE_COUNT = 3             # unanswered probes before libvirt closes it
VIR_ERR_NO_DOMAIN = 42          # virErrorNumber: the domain is gone (undefined meanwhile)


def libvirt_module():
    """The ``libvirt`` module; InvalidArgument saying what to install when it is missing."""
    try:
        import libvirt
    except ImportError:
        raise InvalidArgument("hypervisors need libvirt-python, which is not installed: "
                              "apt-get install libvirt-dev pkg-config gcc, then "
                              "pip install 'vmblock[libvirt]'") from None
    return libvirt


def register_event_impl(loop: asyncio.AbstractEventLoop) -> None:
    """libvirt's event loop is ``loop`` (libvirtaio), before any connection. libvirt takes
    one event implementation per process, for good: a second loop is refused."""
    libvirt = libvirt_module()
    import libvirtaio
    impl = libvirtaio.getCurrentImpl()
    if impl is None:
        # errors come back as exceptions; libvirt's default handler would also print them
        libvirt.registerErrorHandler(lambda opaque, error: None, None)
        libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    elif impl.loop is not loop:
        raise ServerError("libvirt's events already run on another event loop of this "
                          "process (libvirt takes one for the life of a process)")


def _no_prompt(credentials, opaque) -> int:
    return -1       # never ask anyone for a password: libvirt's auth.conf or keys only


class Mapped:
    """One domain and what became of each of its disks (vdisk uuid or why not)."""

    def __init__(self, domain: Domain, disks: list[tuple[str | None, str]]):
        self.domain = domain
        self.disks = disks

    @property
    def vdisks(self) -> list[str]:
        """The uuids of the vdisks its disks are."""
        return [v for v, _ in self.disks if v]


class Connector:
    """The connection to one hypervisor record and what it last read from it."""

    def __init__(self, name: str, uri: str, interval: float, timeout: float,
                 served: Callable[[], Served], on_change: Callable[[Connector], None],
                 on_state: Callable[[Connector, bool, str], None]):
        self.name, self.uri, self.interval, self.timeout = name, uri, interval, timeout
        self.host = urlsplit(uri).hostname or socket.gethostname()
        self._served, self._on_change, self._on_state = served, on_change, on_state
        self.state = "connecting"       # connected | unreachable
        self.error = ""
        self.reachable = False
        self.synced = False             # a full sync has completed on this connection
        self.last_sync = 0.0
        self.domains: dict[str, Mapped] = {}
        self._caller: Caller | None = None
        self.event_id = -1              # the lifecycle callback's id on this connection
        self._generation = 0            # which connection a close callback speaks of
        self._conn = None
        self._local: bool | None = None
        self._dirty: set[str] = set()
        self._full = True
        self._lost = ""
        self._wake = asyncio.Event()
        self._waiters: list[asyncio.Future] = []
        self._loop = asyncio.get_running_loop()
        self.task = asyncio.create_task(self.run(), name=f"hypervisor {name}")

    # --- what the loop is told from libvirt ---------------------------------------------------

    def _lifecycle(self, conn, dom, event, detail, opaque) -> None:
        uid = dom.UUIDString()          # kept in the handle: no call to libvirtd
        self._loop.call_soon_threadsafe(self._mark, uid)

    def _closed(self, conn, reason, generation) -> None:
        self._loop.call_soon_threadsafe(self._drop_soon, f"connection closed (reason {reason})",
                                        generation)

    def _mark(self, uid: str) -> None:
        self._dirty.add(uid)
        self._wake.set()

    def _drop_soon(self, why: str, generation: int) -> None:
        if generation == self._generation:      # not a connection dropped before
            self._lost = why
            self._wake.set()

    def request_sync(self) -> asyncio.Future:
        """A full sync now (or a reconnect attempt now); the future ends with the next one."""
        fut = self._loop.create_future()
        self._waiters.append(fut)
        self._full = True
        self._wake.set()
        return fut

    # --- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, sync, follow events; on failure mark unreachable and reconnect."""
        backoff = BACKOFF_FIRST
        next_full = 0.0
        while True:
            failed = False
            try:
                if self._lost:
                    raise ConnectionError(self._lost)
                if self._conn is None:
                    await self._connect()
                    self._full = True
                if self._full or self._loop.time() >= next_full:
                    await self._sync_all()
                    next_full = self._loop.time() + self.interval
                elif self._dirty:
                    await self._sync_some()
                backoff = BACKOFF_FIRST
                wait = max(0.0, next_full - self._loop.time())
            except asyncio.CancelledError:
                raise
            except Exception as e:      # libvirtError, CallTimeout, a closed connection
                self._went_away(str(e) or type(e).__name__)
                wait, backoff = backoff, min(backoff * 2, self.interval, BACKOFF_MAX)
                failed = True           # only the backoff or a request_sync from now wakes it
                self._wake.clear()
            if failed or not (self._wake.is_set() or self._dirty or self._lost):
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            self._wake.clear()

    async def _call(self, fn, *args):
        return await self._caller.call(self.timeout, fn, *args)

    async def _connect(self) -> None:
        libvirt = libvirt_module()
        self._generation += 1
        self._caller = Caller(self.name)
        self._lost = ""
        if self._local is None:
            self._local = await self._call(hypervisor_is_local, self.uri)
        auth = [[libvirt.VIR_CRED_AUTHNAME, libvirt.VIR_CRED_PASSPHRASE], _no_prompt, None]
        self._conn = await self._call(libvirt.openAuth, self.uri, auth, 0)
        await self._call(self._subscribe, libvirt, self._conn)

    def _subscribe(self, libvirt, conn) -> None:
        self.event_id = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                    self._lifecycle, None)
        conn.registerCloseCallback(self._closed, self._generation)
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        except libvirt.libvirtError:
            pass                        # local drivers (test:///) have no keepalive

    def _read(self, dom) -> tuple[str, int]:
        return dom.XMLDesc(0), dom.state()[0]

    def _read_all(self, conn) -> list[tuple[str, int]]:
        libvirt = libvirt_module()
        out = []
        for dom in conn.listAllDomains(0):
            try:
                out.append(self._read(dom))
            except libvirt.libvirtError as e:
                if e.get_error_code() != VIR_ERR_NO_DOMAIN:
                    raise               # (else: undefined while listed)
        return out

    def _read_some(self, conn, uids: list[str]) -> dict[str, tuple[str, int] | None]:
        libvirt = libvirt_module()
        out: dict[str, tuple[str, int] | None] = {}
        for uid in uids:
            try:
                out[uid] = self._read(conn.lookupByUUIDString(uid))
            except libvirt.libvirtError as e:
                if e.get_error_code() != VIR_ERR_NO_DOMAIN:
                    raise
                out[uid] = None
        return out

    async def _map(self, raw: list[tuple[str, int]]) -> list[Mapped]:
        """The domains read, parsed and mapped in the executor: mapping may resolve host
        names, which takes as long as DNS does and is no libvirt call (no timeout)."""
        served = self._served()
        local = self._local

        def work() -> list[Mapped]:
            out = []
            for xml, state in raw:
                domain = parse_domain(xml, state)
                out.append(Mapped(domain, [map_disk(d, served, local) for d in domain.disks]))
            return out
        return await self._loop.run_in_executor(None, work)

    async def _sync_all(self) -> None:
        self._full = False
        self._dirty.clear()
        raw = await self._call(self._read_all, self._conn)
        self.domains = {m.domain.uuid: m for m in await self._map(raw)}
        self.synced = True
        self.last_sync = time.time()
        self._set_reachable()
        self._on_change(self)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(True)
        self._waiters.clear()

    async def _sync_some(self) -> None:
        uids, self._dirty = sorted(self._dirty), set()
        raw = await self._call(self._read_some, self._conn, uids)
        for uid in [u for u, r in raw.items() if r is None]:
            self.domains.pop(uid, None)
        for m in await self._map([r for r in raw.values() if r is not None]):
            self.domains[m.domain.uuid] = m
        self._on_change(self)

    def _set_reachable(self) -> None:
        if not self.reachable:
            self.reachable, self.state, self.error = True, "connected", ""
            self._on_state(self, True, "")

    def _went_away(self, why: str) -> None:
        """Drop the connection (closed on its own thread) and say so once per outage."""
        log.warning("hypervisor %s: %s", self.name, why)
        self._retire()
        self._lost = ""
        self._dirty.clear()             # the full sync after reconnecting reads them all
        self.synced = False
        self.error = why
        was = self.reachable or self.state == "connecting"
        self.reachable, self.state = False, "unreachable"
        if was:
            self._on_state(self, False, why)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(False)
        self._waiters.clear()

    def _retire(self) -> None:
        conn, self._conn = self._conn, None
        if self._caller is not None:
            # no callback of this connection runs after it is closed (on the loop, its last
            # reference could close it there)
            closers = [] if conn is None else [
                lambda event_id=self.event_id: conn.domainEventDeregisterAny(event_id),
                conn.unregisterCloseCallback, conn.close]
            self._caller.retire(*closers)
            self._caller = None

    async def stop(self) -> None:
        """End the task and close the connection on its thread."""
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass
        self._retire()

    async def run_on(self, fn, *args):
        """``fn(connection, *args)`` on the connection's thread, with the timeout; libvirt's
        errors come back as ServerError naming this hypervisor."""
        if self._conn is None:
            raise ServerError(f"hypervisor {self.name} is not connected"
                              f"{': ' + self.error if self.error else ''}")
        libvirt = libvirt_module()
        try:
            return await self._call(fn, self._conn, *args)
        except libvirt.libvirtError as e:
            raise ServerError(f"hypervisor {self.name}: {e}") from None

    @property
    def local(self) -> bool:
        """Whether the hypervisor runs on this machine (known once connected)."""
        return bool(self._local)

    def show(self, vdisk_names: dict[str, str]) -> dict:
        """The live state for ``hypervisor show``: connection, domains, unmapped disks."""
        domains, unmapped = [], []
        for m in sorted(self.domains.values(), key=lambda m: m.domain.name):
            d = m.domain
            domains.append({"name": d.name, "uuid": d.uuid, "state": d.state,
                            "active": d.active, "guest_os": d.guest_os,
                            "vdisks": [vdisk_names.get(v, v) for v in m.vdisks]})
            for disk, (vdisk, why) in zip(d.disks, m.disks):
                if vdisk is None:
                    unmapped.append(dict(disk.describe(), domain=d.name, domain_uuid=d.uuid,
                                         reason=why))
        return {"state": self.state, "error": self.error, "reachable": self.reachable,
                "host": self.host, "last_sync": self.last_sync, "domains": domains,
                "unmapped_disks": unmapped}

