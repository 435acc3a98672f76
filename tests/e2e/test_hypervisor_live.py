"""Hypervisors through a live server and the real CLI: ``hypervisor add|list|show|sync|remove``
with libvirt's test driver, bad URIs, and a libvirt that hangs while I/O and the admin API go on.

Each wait polls the admin API for a condition with a generous deadline; nothing asserts after
a fixed sleep."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import uuid as uuidlib

import pytest
from support.clients import cli_json, qemu_io
from support.server import run_cli
from support.waiting import until

from vmblock import DEFAULT_TARGET

pytest.importorskip("libvirt")

MIB = 1 << 20




def test_domain_becomes_vm_through_the_cli(vmblock_server, tmp_path):
    s = vmblock_server
    uid = str(uuidlib.uuid4())
    node = tmp_path / "node.xml"
    node.write_text(
        f"<node><domain type='test'><name>web</name><uuid>{uid}</uuid><memory>65536</memory>"
        f"<os><type>hvm</type></os><devices>"
        f"<disk type='network' device='disk'><source protocol='iscsi' "
        f"name='{DEFAULT_TARGET}/0'><host name='{s.host}' port='{s.port}'/></source>"
        f"<target dev='vda' bus='virtio'/></disk>"
        f"<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>"
        f"</devices></domain></node>")
    out = s.cli("hypervisor", "add", "h1", "--uri", f"test://{node}", "--interval", "1h").stdout
    assert "added hypervisor h1" in out
    vm = until("the domain's VM", lambda: next(
        (v for v in cli_json(s, "vm", "list") if v["uuid"] == uid), None))
    assert (vm["name"], vm["active"], vm["hypervisor"], vm["vdisks"]) == \
        ("web", True, "h1", ["demo"])
    shown = cli_json(s, "hypervisor", "sync", "h1")
    assert shown["state"] == "connected" and shown["domains"][0]["vdisks"] == ["demo"]
    assert [(u["target"], u["device"]) for u in shown["unmapped_disks"]] == [("hdc", "cdrom")]
    assert cli_json(s, "hypervisor", "list")[0]["vms"] == 1
    assert "domain:           web  running  demo" in s.cli("hypervisor", "show", "h1").stdout
    s.cli("hypervisor", "remove", "h1")
    assert cli_json(s, "vm", "show", "web")["meta_stale"] is True


@pytest.mark.parametrize("uri, said", [
    ("qemu+tcp://root:hunter2@example.com/system", "password"),
    ("not a uri", "bad libvirt URI"),
    ("qemu:///system\n", "control characters"),
])
def test_bad_uri_is_refused_in_one_line(vmblock_server, uri, said):
    p = vmblock_server.cli("hypervisor", "add", "h1", "--uri", uri, check=False)
    assert p.returncode == 2 and said in p.stderr and len(p.stderr.splitlines()) == 1
    assert "hunter2" not in vmblock_server.cli("pool", "show", "--json").stdout


def test_records_without_a_server(tmp_path):
    pool = tmp_path / "pool"
    run_cli(pool, "vm", "create", "x")
    run_cli(pool, "hypervisor", "add", "h1", "--uri", "qemu:///system")
    p = run_cli(pool, "hypervisor", "add", "h2", "--uri", "qemu:///system", check=False)
    assert p.returncode == 2 and "h1 already follows qemu:///system" in p.stderr
    listed = json.loads(run_cli(pool, "hypervisor", "list", "--json").stdout)
    assert [(h["name"], h["state"], h["interval"]) for h in listed] == \
        [("h1", "not connected", 30.0)]
    p = run_cli(pool, "hypervisor", "sync", "h1", check=False)
    assert p.returncode == 2 and "no server is running" in p.stderr
    run_cli(pool, "hypervisor", "add", "ssh1", "--uri",
            "qemu+ssh://root@hv1.example/system?keyfile=/root/.ssh/id_ed25519",
            "--interval", "45s")
    removed = json.loads(run_cli(pool, "hypervisor", "remove", "h1", "--json").stdout)
    assert (removed["name"], removed["uri"]) == ("h1", "qemu:///system")
    assert run_cli(pool, "hypervisor", "remove", "ssh1").stdout == "removed hypervisor ssh1\n"
    assert json.loads(run_cli(pool, "hypervisor", "list", "--json").stdout) == []
    # the records' pool is the owner's alone
    assert os.stat(pool).st_mode & 0o077 == 0


class HangingListener:
    """A TCP port that accepts connections and never says a word: a libvirtd that hangs."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for c in self.accepted:
            c.close()


@pytest.fixture
def hanging():
    listener = HangingListener()
    yield listener
    listener.close()


def test_hung_libvirt_delays_neither_io_nor_admin(start_server, tmp_path, hanging):
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "hypervisor.call_timeout", "20s")
    s = start_server(pool=pool)
    s.cli("hypervisor", "add", "hung", "--uri",
          f"qemu+tcp://127.0.0.1:{hanging.port}/system", "--interval", "1h")
    until("libvirt connected to the hanging port", lambda: hanging.accepted)
    # the connect call now waits for an answer that never comes; meanwhile:
    qemu_io(s.url(), "write -P 0x5a 0 1M", "read -P 0x5a 0 1M")
    assert [v["name"] for v in cli_json(s, "vm", "list")] == ["demo"]
    assert cli_json(s, "hypervisor", "show", "hung")["state"] == "connecting"   # still hung
    shown = until("unreachable after the call timeout", lambda: (
        h := cli_json(s, "hypervisor", "show", "hung"))["state"] == "unreachable" and h)
    assert "did not answer within 20 s" in shown["error"]
    ev = [e for e in cli_json(s, "events") if e["kind"] == "hypervisor_unreachable"]
    assert ev and ev[0]["hypervisor"] == "hung"
    qemu_io(s.url(), "read -P 0x5a 0 1M")
    assert s.stop() == 0            # a thread stuck in libvirt does not hold up the exit


TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
SHUTOFF = 5


def image_domain(name: str, uid: str, disks: list[tuple[str, str, str]]) -> str:
    """A shut-off test-driver domain with file disks (target, format, path) and a cdrom."""
    body = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
        f"<source file='{path}'/><target dev='{dev}' bus='virtio'/></disk>"
        for dev, fmt, path in disks)
    return (f"<domain type='test' xmlns:test='{TEST_NS}'><name>{name}</name><uuid>{uid}</uuid>"
            f"<memory>65536</memory><os><type>hvm</type></os><devices>{body}"
            f"<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>"
            f"</devices><test:runstate>{SHUTOFF}</test:runstate></domain>")


def make_images(tmp_path):
    """A qcow2 (1 MiB data, a 4 MiB zero cluster run, 64 KiB data) and a sparse raw file
    of an odd size (1 MiB data): 1 MiB + 64 KiB and 1 MiB of data."""
    a, b = tmp_path / "a.qcow2", tmp_path / "b.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(a), "64M"], check=True)
    qemu_io_file("qcow2", a, "write -P 0x11 0 1M", "write -z 8M 4M", "write -P 0x22 32M 64k")
    with open(b, "wb") as f:
        f.truncate(32 * MIB + 100)
    qemu_io_file("raw", b, "write -P 0x33 4M 1M")
    return a, b


def qemu_io_file(fmt, path, *cmds):
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    subprocess.run(args + [str(path)], check=True, capture_output=True)


def test_vm_import_copies_thin_and_switches(start_server, tmp_path):
    s = start_server("--insecure")      # the test driver keeps no secrets (CHAP: libvirtd test)
    a, b = make_images(tmp_path)
    uid = str(uuidlib.uuid4())
    node = tmp_path / "node.xml"
    node.write_text("<node>" + image_domain("old", uid, [("vda", "qcow2", str(a)),
                                                         ("vdb", "raw", str(b))]) + "</node>")
    s.cli("hypervisor", "add", "h1", "--uri", f"test://{node}", "--interval", "1h")
    until("connected", lambda: cli_json(s, "hypervisor", "show", "h1")["state"] == "connected")
    out = s.cli("vm", "import", "--from", "h1", "old", "--switch").stdout
    assert "left alone: hdc" in out and "imported domain old as VM old" in out
    vm = cli_json(s, "vm", "show", "old")
    assert vm["uuid"] == uid and vm["source"] == "libvirt:h1"
    used = {d["name"]: d["used_bytes"] for d in vm["vdisks"]}
    assert used == {"old-vda": MIB + 64 * 1024, "old-vdb": MIB}       # thin: data only
    for name, fmt, path in (("old-vda", "qcow2", a), ("old-vdb", "raw", b)):
        url = cli_json(s, "vdisk", "show", name)["url"]
        p = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "raw", str(path), url],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
    # switched: the domain's disks are now iSCSI disks on the new LUNs, mapped by event
    shown = until("the switched disks mapped", lambda: (
        h := cli_json(s, "hypervisor", "show", "h1"))["domains"][0]["vdisks"] and h)
    assert shown["domains"][0]["vdisks"] == ["old-vda", "old-vdb"]


def test_vm_import_failure_is_undone_and_a_killed_one_resumes(vmblock_server, tmp_path):
    s = vmblock_server
    a, b = make_images(tmp_path)
    broken = tmp_path / "broken.qcow2"
    # a qcow2 whose backing file is gone: `qemu-img info` reads it, copying it fails
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / "gone.qcow2"),
                    "64M"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                    str(tmp_path / "gone.qcow2"), str(broken)], check=True)
    (tmp_path / "gone.qcow2").unlink()
    bad, good = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    node = tmp_path / "node.xml"
    node.write_text("<node>"
                    + image_domain("bad", bad, [("vda", "raw", str(b)),
                                                ("vdb", "qcow2", str(broken))])
                    + image_domain("good", good, [("vda", "qcow2", str(a))]) + "</node>")
    s.cli("hypervisor", "add", "h1", "--uri", f"test://{node}", "--interval", "1h")
    until("connected", lambda: cli_json(s, "hypervisor", "show", "h1")["state"] == "connected")
    p = s.cli("vm", "import", "--from", "h1", "bad", check=False)
    assert p.returncode == 2 and "import of bad undone" in p.stderr, p.stderr
    assert "bad" not in {v["name"] for v in cli_json(s, "vm", "list")}
    assert not [d for d in cli_json(s, "vdisk", "list") if d["name"].startswith("bad-")]
    # a CLI killed after prepare: the next run resumes the same VM and vdisks
    from vmblock.admin.client import AdminClient
    client = AdminClient(str(s.pool / "admin.sock"))
    plan = client.vm_import(hypervisor="h1", domain="good")
    assert plan["resumed"] is False and plan["disks"][0]["vdisk"] == "good-vda"
    out = s.cli("vm", "import", "--from", "h1", "good").stdout
    assert "resuming the import of good" in out
    assert cli_json(s, "vm", "show", "good")["vdisks"][0]["used_bytes"] == MIB + 64 * 1024
    p = s.cli("vm", "import", "--from", "h1", "good", check=False)
    assert p.returncode == 2 and "exists already" in p.stderr


def test_vm_import_of_a_running_domain_warns_and_switch_is_refused(vmblock_server, tmp_path):
    s = vmblock_server
    _, b = make_images(tmp_path)
    uid = str(uuidlib.uuid4())
    node = tmp_path / "node.xml"       # a test-driver domain runs unless told otherwise
    node.write_text("<node>" + image_domain("live", uid, [("vda", "raw", str(b))]).replace(
        f"<test:runstate>{SHUTOFF}</test:runstate>", "") + "</node>")
    s.cli("hypervisor", "add", "h1", "--uri", f"test://{node}", "--interval", "1h")
    until("connected", lambda: cli_json(s, "hypervisor", "show", "h1")["state"] == "connected")
    p = s.cli("vm", "import", "--from", "h1", "live", "--switch", check=False)
    assert p.returncode == 2 and "--switch needs it shut off" in p.stderr
    assert "live" not in {v["name"] for v in cli_json(s, "vm", "list")}
    p = s.cli("vm", "import", "--from", "h1", "live")
    assert "the copy is not consistent" in p.stderr and "imported domain live" in p.stdout
    assert cli_json(s, "vm", "show", "live")["vdisks"][0]["used_bytes"] == MIB
