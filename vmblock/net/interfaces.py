"""Which addresses this host can be reached on, for portals bound to a wildcard address.

pyroute2's ``IPRoute`` runs an asyncio loop of its own, so it cannot be called from a thread
whose loop is already running (the server's): ``AddressWatch`` reads the addresses in a thread
of its own, keeps them in a cache, and reads them again whenever netlink announces an address
or link change. Discovery reads the cache and never waits for netlink.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import socket
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

log = logging.getLogger("vmblock.net")

IFF_UP = 1
STOP_POLL = 0.5             # seconds between looks at the stop flag while netlink is quiet


def host_addresses(family: int | None = None) -> list[str]:
    """Every unicast address configured on an interface that is up, loopback last.
    Call it outside a running event loop (see the module docstring)."""
    out, loop = [], []
    with IPRoute() as ipr:
        up = {link["index"] for link in ipr.get_links() if link["flags"] & IFF_UP}
        for msg in ipr.get_addr(family=family) if family else ipr.get_addr():
            if msg["index"] not in up:
                continue
            addr = msg.get_attr("IFA_ADDRESS")
            if not addr:
                continue
            ip = ipaddress.ip_address(addr)
            if ip.is_link_local or ip.is_multicast:
                continue
            (loop if ip.is_loopback else out).append(str(ip))
    return out + loop


class AddressWatch:
    """The host's addresses per family, kept current by a netlink listener thread."""

    def __init__(self):
        self._addresses: dict[int, list[str]] = {socket.AF_INET: [], socket.AF_INET6: []}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start listening; returns once the first read is done (call it from a worker thread
        or outside the loop: it blocks)."""
        self._thread = threading.Thread(target=self._run, name="vmblock-addresses", daemon=True)
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        """Stop the listener thread and wait for it (blocking, like ``start``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def addresses(self, family: int) -> list[str]:
        """The host's current usable addresses of ``family`` (AF_INET or AF_INET6), loopback
        last: what a wildcard portal stands for in SendTargets."""
        return self._addresses[family]

    def _refresh(self) -> None:
        try:
            self._addresses = {fam: host_addresses(fam) for fam in self._addresses}
        except OSError as e:
            log.error("cannot read the host's addresses: %s", e)

    def _run(self) -> None:
        try:
            with IPRoute() as events:
                events.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
                self._refresh()
                self._ready.set()
                while not self._stop.is_set():
                    readable, _, _ = select.select([events], [], [], STOP_POLL)
                    if readable:
                        events.get()            # what changed does not matter: read all again
                        self._refresh()
        except OSError as e:
            log.error("cannot watch the host's addresses: %s", e)
        finally:
            self._ready.set()
