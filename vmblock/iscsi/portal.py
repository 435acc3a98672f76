"""The iSCSI service: portals (listening sockets), the target table and discovery.

The server composition owns ``targets`` (IQN -> TargetEntry) and may change it while the
service runs; logins and SendTargets read it live.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections import Counter
from dataclasses import dataclass, field

from ..net.interfaces import AddressWatch
from . import params
from .budget import DataBudget
from .chap import ChapSecrets
from .machine import ConnectionMachine
from .poll import DEFAULT_WINDOW as DEFAULT_POLL_WINDOW, IdlePoll
from .protocol import IscsiProtocol
from .session import SessionRegistry

log = logging.getLogger("vmblock.iscsi")

WILDCARDS = {"0.0.0.0": socket.AF_INET, "::": socket.AF_INET6}   # each binds its family only
PDU_OVERHEAD = 48 + 1024 + 8      # BHS, largest AHS, two digests


def _call_soon(callback) -> None:
    asyncio.get_running_loop().call_soon(callback)


@dataclass
class TargetEntry:
    """One served target as the iSCSI layer sees it: its SCSI side, who may log in (ACL, CHAP)
    and whether logins are refused."""

    name: str
    scsi: object                                  # vmblock.scsi.target.ScsiTarget
    acl: list[str] = field(default_factory=list)  # initiator IQNs allowed; empty: everyone
    chap: ChapSecrets | None = None
    alias: str = ""
    locked: str = ""      # why every login is refused (half-set CHAP keys), "" when open


@dataclass
class IscsiConfig:
    """The iSCSI settings an ``IscsiService`` runs with (built from vmblock.settings);
    ``reconfigure`` swaps it without cutting running sessions."""

    overrides: dict = field(default_factory=dict)  # negotiation keys, e.g. MaxBurstLength
    discovery_chap: ChapSecrets | None = None
    discovery_locked: str = ""                     # why discovery logins are refused, if
    nop_interval: float = 30.0                     # ping an idle initiator after this long
    nop_timeout: float = 30.0                      # drop the connection if it does not answer
    tpgt: int = 1
    # Limits on what initiators can hold (vmblock.settings.TABLE says why each).
    max_connections: int = 256            # each holds ~2 PDUs of receive buffer
    max_connections_per_host: int = 64
    max_login_connections: int = 64       # of max_connections, for connections still logging in
    first_pdu_timeout: float = 5.0        # seconds from accept to a whole first Login Request
    login_timeout: float = 30.0           # seconds from accept to full feature phase
    data_budget: int = 256 << 20          # bytes of initiator data held, all connections
    data_budget_per_host: int = 64 << 20  # the same, all connections of one source address
    poll_window: float = DEFAULT_POLL_WINDOW   # vmblock.iscsi.poll


class IscsiService:
    """The iSCSI side of the server: the targets, the portals' listeners, the sessions and
    the limits (connection slots, data budget) shared by every connection."""

    def __init__(self, targets: dict[str, TargetEntry], config: IscsiConfig | None = None):
        self.targets = targets
        self.registry = SessionRegistry()
        self.connections: set[ConnectionMachine] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.bound_portals: list[tuple[str, int]] = []
        self.addresses: AddressWatch | None = None     # started when a portal is a wildcard
        self.per_host: Counter[str] = Counter()        # open connections per source address
        self.in_login: dict[str, dict[ConnectionMachine, None]] = {}   # per address, oldest first
        self.in_login_count = 0
        self.budget = DataBudget(0, 0, _call_soon)
        # where a normal session's connection goes once logged in (vmblock.worker's
        # WorkerPool.place: another process); None: it stays in this one
        self.handoff = None
        self.poll = IdlePoll(0.0)
        self.reconfigure(config or IscsiConfig())

    def reconfigure(self, config: IscsiConfig) -> None:
        """New logins use ``config``; running sessions keep what they negotiated. New limits
        apply to the next connection and the next charge (nothing open is cut)."""
        self.offer = params.validate_offer(config.overrides)
        self.config = config
        self.max_pdu = params.parse_number(self.offer["MaxRecvDataSegmentLength"]) + PDU_OVERHEAD
        self.budget.total, self.budget.per_host = config.data_budget, config.data_budget_per_host
        self.poll.window = config.poll_window

    # ---- connection slots ----------------------------------------------------------------
    def admit(self, conn: ConnectionMachine) -> bool:
        """Take ``conn`` (accepted, not logged in) if the limits allow, making room by closing
        the oldest connection still logging in (or in a discovery session): of the same
        address when that address is at its limit, else of the address with the most of them.
        Normal sessions are never closed for room, so a flood of connections that never log in
        can neither lock real logins out nor take the slots of running sessions."""
        cfg, host = self.config, conn.host
        if self.per_host[host] >= cfg.max_connections_per_host and not self._evict(host):
            return False
        if (self.in_login_count >= cfg.max_login_connections
                or len(self.connections) >= cfg.max_connections) and not self._evict(None):
            return False
        self.connections.add(conn)
        self.per_host[host] += 1
        self.in_login.setdefault(host, {})[conn] = None
        self.in_login_count += 1
        return True

    def _evict(self, host: str | None) -> bool:
        if host is None:
            if not self.in_login:
                return False
            host = max(self.in_login, key=lambda h: len(self.in_login[h]))
        waiting = self.in_login.get(host)
        if not waiting:
            return False
        victim = next(iter(waiting))
        self.release(victim)
        victim.terminate("room for a newer connection (limits in iscsi.max_*connections*)")
        return True

    def logged_in(self, conn: ConnectionMachine) -> None:
        """``conn`` reached full feature phase in a normal session: it no longer counts as
        logging in."""
        waiting = self.in_login.get(conn.host)
        if waiting is not None and conn in waiting:
            del waiting[conn]
            self.in_login_count -= 1
            if not waiting:
                del self.in_login[conn.host]

    def entered_full_feature(self, conn: ConnectionMachine) -> None:
        """A normal session's ``conn`` is logged in: it stops counting as logging in and,
        with worker processes, is handed to one (``handoff``)."""
        self.logged_in(conn)
        if self.handoff is not None:
            self.handoff(conn)

    def release(self, conn: ConnectionMachine) -> None:
        """Give back ``conn``'s slot; called once it closes (or is chosen to close)."""
        if conn not in self.connections:
            return
        self.logged_in(conn)
        self.connections.discard(conn)
        self.per_host[conn.host] -= 1
        if not self.per_host[conn.host]:
            del self.per_host[conn.host]

    async def start(self, portals: list[tuple[str, int]]) -> None:
        """Listen on every ``(host, port)`` portal; port 0 picks one (see ``bound_portals``). A
        wildcard host also starts an ``AddressWatch`` so SendTargets can list real addresses."""
        loop = asyncio.get_running_loop()
        if any(host in WILDCARDS for host, _ in portals):
            self.addresses = AddressWatch()
            await loop.run_in_executor(None, self.addresses.start)
        for host, port in portals:
            # An explicit host, never None: None would bind every family, so 0.0.0.0 would
            # take [::] too. create_server sets IPV6_V6ONLY on "::".
            server = await loop.create_server(lambda h=host, p=port: IscsiProtocol(self, (h, p)),
                                              host, port, reuse_address=True, backlog=128)
            self.servers.append(server)
            for sock in server.sockets:
                actual = sock.getsockname()
                self.bound_portals.append((host if host in WILDCARDS else actual[0], actual[1]))
        log.info("iSCSI portals: %s", ", ".join(f"{h}:{p}" for h, p in self.bound_portals))

    async def stop(self) -> None:
        """Stop listening, terminate every connection and wait for the listeners to close."""
        for server in self.servers:
            server.close()
        for conn in list(self.connections):
            conn.terminate("target shutting down")
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
        if self.addresses is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.addresses.stop)
            self.addresses = None

    def portal_addresses(self) -> list[str]:
        """TargetAddress values (RFC 7143 13.8): every portal, wildcards expanded."""
        out = []
        for host, port in self.bound_portals:
            if host in WILDCARDS:
                hosts = self.addresses.addresses(WILDCARDS[host])
            else:
                hosts = [host]
            for h in hosts:
                text = f"[{h}]" if ipaddress.ip_address(h).version == 6 else h
                addr = f"{text}:{port},{self.config.tpgt}"
                if addr not in out:
                    out.append(addr)
        return out

    def send_targets(self, value: str, session) -> list[tuple[str, str]]:
        """SendTargets answer: all targets in a discovery session, only the session's own
        target in a normal one (RFC 7143 Appendix C)."""
        if session.discovery:
            if value == "All":
                names = list(self.targets)
            else:
                names = [value] if value in self.targets else []
        else:
            own = session.target.name
            names = [own] if value in ("", "All", own) else []
        names = [n for n in names
                 if not self.targets[n].acl or session.initiator in self.targets[n].acl]
        addrs = self.portal_addresses()
        out = []
        for n in names:
            out.append(("TargetName", n))
            out.extend(("TargetAddress", a) for a in addrs)
        return out

    def sessions(self) -> list[dict]:
        """Every open session as a dict (``Session.info``), for the admin ``session list``."""
        return [s.info() for s in self.registry.all()]
