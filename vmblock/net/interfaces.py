"""Which addresses this host can be reached on, for portals bound to a wildcard address."""

from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute


def host_addresses(family: int | None = None) -> list[str]:
    """Every unicast address configured on an interface that is up, loopback last."""
    out, loop = [], []
    with IPRoute() as ipr:
        up = {link["index"] for link in ipr.get_links() if link["flags"] & 1}
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
