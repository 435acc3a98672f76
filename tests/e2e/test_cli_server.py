"""The CLI against a running server, and real initiators (qemu-img, qemu-io) against its LUNs."""

import json
import subprocess
import sys

from vmblock import DEFAULT_TARGET
from vmblock.meta import Pool


def qemu(*args, check=True):
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, f"{args}: {p.stderr}{p.stdout}"
    return p


def test_demo_vdisk_is_served_at_lun0(vmblock_server):
    d = json.loads(vmblock_server.cli("vdisk", "show", "demo", "--json").stdout)
    assert d["url"] == vmblock_server.url(0)
    assert (d["vm"], d["lun"], d["size_bytes"]) == ("demo", 0, 8 << 30)
    info = qemu("qemu-img", "info", vmblock_server.url(0)).stdout
    assert "virtual size: 8 GiB (8589934592 bytes)" in info


def test_vdisk_created_while_serving_is_a_lun_at_once(vmblock_server):
    vmblock_server.cli("vm", "create", "web")
    out = vmblock_server.cli("vdisk", "create", "web-root", "--size", "64M", "--vm", "web").stdout
    assert vmblock_server.url(1) in out
    url = vmblock_server.url(1)
    qemu("qemu-io", "-f", "raw", "-c", "write -P 0xab 4096 65536", url)
    qemu("qemu-io", "-f", "raw", "-c", "read -P 0xab 4096 65536", "-c", "read -P 0 0 4096", url)
    shown = json.loads(vmblock_server.cli("vm", "show", "web", "--json").stdout)
    assert [(v["name"], v["url"], v["size_bytes"]) for v in shown["vdisks"]] == \
        [("web-root", url, 64 << 20)]


def test_vdisk_on_a_new_target_while_serving(vmblock_server):
    iqn = "iqn.2026-11.io.vmblock:second"
    vmblock_server.cli("vdisk", "create", "other", "--size", "16M", "--target", iqn)
    assert "virtual size: 16 MiB" in qemu("qemu-img", "info", vmblock_server.url(0, iqn)).stdout


def test_deleted_vdisk_is_gone_from_the_target(vmblock_server):
    vmblock_server.cli("vdisk", "create", "tmp", "--size", "8M")
    qemu("qemu-img", "info", vmblock_server.url(1))
    vmblock_server.cli("vdisk", "delete", "tmp")
    assert qemu("qemu-img", "info", vmblock_server.url(1), check=False).returncode != 0
    assert [d["name"] for d in json.loads(vmblock_server.cli("vdisk", "list", "--json").stdout)] \
        == ["demo"]


def test_errors_through_the_server_are_one_line_exit_2(vmblock_server):
    p = vmblock_server.cli("vm", "create", "demo", check=False)
    assert p.returncode == 2
    assert p.stderr.strip() == "vmblock: error: a VM named 'demo' already exists"
    p = vmblock_server.cli("vdisk", "create", "x", "--size", "1G", "--vm", "ghost", check=False)
    assert (p.returncode, p.stderr.strip()) == (2, "vmblock: error: no VM named 'ghost'")


def test_second_server_on_the_same_pool_is_refused(vmblock_server):
    p = vmblock_server.cli("serve", "--portal", "127.0.0.1:0", check=False, timeout=30)
    assert p.returncode == 2 and "already running" in p.stderr


def test_busy_portal_is_a_one_line_error(vmblock_server, tmp_path):
    cmd = [sys.executable, "-m", "vmblock", "--pool", str(tmp_path / "other"), "serve",
           "--portal", vmblock_server.portal]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith(
        f"vmblock: error: cannot listen on {vmblock_server.portal}")


def test_session_list_shows_a_logged_in_initiator(vmblock_server):
    assert json.loads(vmblock_server.cli("session", "list", "--json").stdout) == []
    # qemu-io holds its session open while it reads the commands from a pipe
    io = subprocess.Popen(["qemu-io", "-f", "raw", vmblock_server.url(0)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        io.stdin.write("read 0 512\n")
        io.stdin.flush()
        assert "read 512/512" in io.stdout.readline() + io.stdout.readline()
        sessions = json.loads(vmblock_server.cli("session", "list", "--json").stdout)
        assert [(s["target"], s["type"]) for s in sessions] == [(DEFAULT_TARGET, "normal")]
    finally:
        io.communicate("quit\n", timeout=30)


def test_acl_change_applies_to_new_logins(vmblock_server):
    r = vmblock_server.cli("config", "set", f"acl.{DEFAULT_TARGET}", "iqn.2026-11.example:nobody")
    assert "next start" not in r.stdout
    assert qemu("qemu-img", "info", vmblock_server.url(0), check=False).returncode != 0
    vmblock_server.cli("config", "unset", f"acl.{DEFAULT_TARGET}")
    qemu("qemu-img", "info", vmblock_server.url(0))


def test_sigterm_stops_cleanly_and_writes_are_durable(vmblock_server):
    qemu("qemu-io", "-f", "raw", "-c", "write -P 0x5c 1048576 4096", vmblock_server.url(0))
    assert vmblock_server.stop() == 0
    assert not (vmblock_server.pool / "admin.sock").exists()
    pool = Pool(str(vmblock_server.pool))   # the server released the pool's lock
    try:
        store = pool.open_store(pool.vdisk("demo"))
        buf = bytearray(4096)
        store.read_into(1 << 20, memoryview(buf))
        store.close()
    finally:
        pool.close()
    assert buf == b"\x5c" * 4096
