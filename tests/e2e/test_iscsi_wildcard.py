"""Discovery on wildcard portals (0.0.0.0 and ::), with libiscsi's ``iscsi-ls``: SendTargets
names every address of the host as a TargetAddress, and an address added while the server runs
shows up in a later discovery. The namespace test runs the server in a network namespace of
its own (made with pyroute2, always removed) whose interface has addresses the test chooses.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid

import pytest
from pyroute2 import NetNS, netns

from vmblock import DEFAULT_TARGET
from vmblock.net.interfaces import host_addresses

pytestmark = pytest.mark.timeout(120)

NS_V4 = ("198.51.100.1", "203.0.113.1")     # RFC 5737 documentation addresses, only in the netns
NS_V6 = "2001:db8::1"                       # RFC 3849
NS_ADDED = "198.51.100.7"
IFA_F_NODAD = 0x02
APPEAR_WITHIN = 30.0                        # generous bound on the netlink event reaching us


def wildcard_port(server, host: str) -> int:
    m = re.search(r"^vmblock: serving .* on (.+)$", server.log(), re.MULTILINE)
    for portal in m.group(1).split(", "):
        h, _, port = portal.rpartition(":")
        if h.strip("[]") == host:
            return int(port)
    raise AssertionError(f"no {host} portal in {m.group(0)}")


def iscsi_ls(url: str, prefix: tuple[str, ...] = ()) -> set[str]:
    """The portals iscsi-ls lists for the default target (a discovery session, SendTargets=All)."""
    p = subprocess.run([*prefix, "iscsi-ls", url], capture_output=True, text=True, timeout=20,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    return set(re.findall(rf"^Target:{re.escape(DEFAULT_TARGET)} Portal:(\S+)$", p.stdout,
                          re.MULTILINE))


def portal(host: str, port: int) -> str:
    return (f"[{host}]" if ":" in host else host) + f":{port},1"


def refused(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.settimeout(5)
        return s.connect_ex((host, port)) != 0


def test_ipv4_wildcard_portal_discovery_lists_every_ipv4_address_and_leaves_ipv6_alone(start_server):
    server = start_server("--portal", "0.0.0.0:0")
    port = wildcard_port(server, "0.0.0.0")
    want = {portal(h, port) for h in host_addresses(socket.AF_INET)}
    assert portal("127.0.0.1", port) in want
    found = iscsi_ls(f"iscsi://127.0.0.1:{port}")
    assert want <= found, found
    assert not any(p.startswith("[") and p.endswith(f":{port},1") for p in found), found
    assert refused("::1", port), "0.0.0.0 also took [::]"


def test_ipv6_wildcard_portal_discovery_lists_every_ipv6_address(start_server):
    server = start_server("--portal", "[::]:0")
    port = wildcard_port(server, "::")
    want = {portal(h, port) for h in host_addresses(socket.AF_INET6)}
    assert portal("::1", port) in want
    found = iscsi_ls(f"iscsi://[::1]:{port}")
    assert want <= found, found
    assert refused("127.0.0.1", port), ":: also took 0.0.0.0"


@pytest.fixture
def namespace():
    """A network namespace with a veth pair up, NS_V4 and NS_V6 on one end; always removed."""
    name = f"vmblock-test-{uuid.uuid4().hex[:8]}"
    ns = NetNS(name, flags=os.O_CREAT)
    try:
        ns.link("add", ifname="vmb0", kind="veth", peer="vmb1")
        for ifname in ("lo", "vmb0", "vmb1"):
            ns.link("set", index=ns.link_lookup(ifname=ifname)[0], state="up")
        dev = ns.link_lookup(ifname="vmb0")[0]
        for addr in NS_V4:
            ns.addr("add", index=dev, address=addr, prefixlen=24)
        ns.addr("add", index=dev, address=NS_V6, prefixlen=64, flags=IFA_F_NODAD)
        yield name, ns, dev
    finally:
        ns.close()
        netns.remove(name)
    assert name not in netns.listnetns()


def test_wildcard_portals_in_a_namespace_list_its_addresses_and_one_added_later(start_server,
                                                                                  namespace):
    name, ns, dev = namespace
    exec_in = ("ip", "netns", "exec", name)
    server = start_server("--portal", "0.0.0.0:3260", "--portal", "[::]:3260", prefix=exec_in)
    want = {portal(h, 3260) for h in (*NS_V4, "127.0.0.1", NS_V6, "::1")}
    want.add(portal("127.0.0.1", wildcard_port(server, "127.0.0.1")))    # the fixture's own
    for via in (NS_V4[0], NS_V4[1], f"[{NS_V6}]"):
        assert iscsi_ls(f"iscsi://{via}:3260", exec_in) == want, via
    ns.addr("add", index=dev, address=NS_ADDED, prefixlen=24)
    deadline = time.monotonic() + APPEAR_WITHIN
    while portal(NS_ADDED, 3260) not in (found := iscsi_ls(f"iscsi://{NS_V4[0]}:3260", exec_in)):
        assert time.monotonic() < deadline, f"{NS_ADDED} not listed after {APPEAR_WITHIN}s: {found}"
        time.sleep(0.2)
    assert found == want | {portal(NS_ADDED, 3260)}
    assert iscsi_ls(f"iscsi://{NS_ADDED}:3260", exec_in) == found
