"""The extent store behind a live ``vmblock serve``, driven by real initiators: thin accounting
through qemu-io (write, discard), snapshot / clone / revert content checks through QEMU's iSCSI
driver, a full pool answering 27/07 to a raw initiator and ENOSPC to QEMU, libiscsi's thin
provisioning suites, resize, revert of a LUN in use, and ``pool check`` through the server."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time

import pytest
from support.clients import cli_json as js
from support.clients import qemu_io
from support.iscsi_client import IscsiClient, write10

from vmblock import DEFAULT_TARGET

MiB = 1 << 20
AU = 64 * 1024

pytestmark = pytest.mark.skipif(
    not (shutil.which("qemu-io") and shutil.which("iscsi-test-cu")),
    reason="needs qemu-io (qemu-utils, qemu-block-extra) and iscsi-test-cu (libiscsi-bin)")


def used(server, vdisk: str) -> int:
    return js(server, "vdisk", "show", vdisk)["used_bytes"]


@pytest.mark.timeout(120)
def test_thin_write_and_discard_through_qemu_io(vmblock_server):
    s = vmblock_server
    d = json.loads(s.cli("vdisk", "create", "thin", "--size", "1G").stdout and
                   s.cli("vdisk", "show", "thin", "--json").stdout)
    assert d["used_bytes"] == 0
    qemu_io(d["url"], "write -P 0x5a 0 8M")
    assert used(s, "thin") == 8 * MiB
    qemu_io(d["url"], "write -P 0x5b 100M 4k")                 # rounds up to one AU
    assert used(s, "thin") == 8 * MiB + AU
    pool = js(s, "pool", "show")
    assert pool["store"]["used_bytes"] == 8 * MiB + AU
    assert [v["used_bytes"] for v in pool["vdisks"] if v["name"] == "thin"] == [8 * MiB + AU]
    qemu_io(d["url"], "discard 0 8M", "discard 100M 64k")
    assert used(s, "thin") == 0
    qemu_io(d["url"], "read -P 0 0 8M", "read -P 0 100M 64k")
    shown = js(s, "vm", "show", "demo")
    assert [(v["name"], v["used_bytes"]) for v in shown["vdisks"]] == [("demo", 0)]


@pytest.mark.timeout(180)
def test_snapshot_clone_revert_contents_through_qemu(vmblock_server):
    s = vmblock_server
    s.cli("vm", "create", "web")
    s.cli("vdisk", "create", "web-root", "--size", "64M", "--vm", "web")
    s.cli("vdisk", "create", "web-data", "--size", "32M", "--vm", "web")
    root = js(s, "vdisk", "show", "web-root")["url"]
    data = js(s, "vdisk", "show", "web-data")["url"]
    qemu_io(root, "write -P 0xa1 0 1M")
    qemu_io(data, "write -P 0xd1 512 4k")
    s.cli("vm", "snapshot", "web", "--name", "s1")
    qemu_io(root, "write -P 0xb2 0 512k", "write -P 0xc3 4M 1M")       # after the snapshot
    qemu_io(data, "write -P 0xd2 512 512")

    s.cli("vm", "clone", "web", "--snapshot", "s1", "--name", "web2")
    clone = js(s, "vm", "show", "web2")
    urls = {v["name"]: v["url"] for v in clone["vdisks"]}
    assert set(urls) == {"web2-root", "web2-data"}
    assert clone["lineage"]["parent"]["vm_name"] == "web"
    assert clone["lineage"]["parent"]["snapshot_name"] == "s1"
    assert all(v["used_bytes"] for v in clone["vdisks"])
    # data written after the snapshot is absent in its clone
    qemu_io(urls["web2-root"], "read -P 0xa1 0 1M", "read -P 0 4M 1M")
    qemu_io(urls["web2-data"], "read -P 0xd1 512 4k")
    # a clone's writes never show in its parent
    qemu_io(urls["web2-root"], "write -P 0xe4 2M 64k")
    qemu_io(root, "read -P 0 2M 64k", "read -P 0xb2 0 512k", "read -P 0xa1 512k 512k")

    s.cli("vm", "clone", "web", "--live", "--name", "web3")
    live = {v["name"]: v["url"] for v in js(s, "vm", "show", "web3")["vdisks"]}
    qemu_io(live["web3-root"], "read -P 0xb2 0 512k", "read -P 0xc3 4M 1M")

    s.cli("vm", "revert", "web", "--snapshot", "s1")
    qemu_io(root, "read -P 0xa1 0 1M", "read -P 0 4M 1M")                # later writes gone
    qemu_io(data, "read -P 0xd1 512 4k")
    qemu_io(live["web3-root"], "read -P 0xc3 4M 1M")                     # clones unaffected

    shown = js(s, "vm", "show", "web")
    assert [x["name"] for x in shown["snapshots"]] == ["s1"]
    assert sorted(c["name"] for c in shown["lineage"]["clones"]) == ["web2", "web3"]
    assert [x["name"] for x in js(s, "snapshot", "list", "--vm", "web")] == ["s1"]
    check = js(s, "pool", "check")
    assert check["ok"], check["errors"]
    assert check["shared_aus"] > 0
    s.cli("snapshot", "delete", "s1", "--vm", "web")
    s.cli("vm", "delete", "web2", "--purge")
    assert js(s, "snapshot", "list") == []
    check = js(s, "pool", "check")
    assert check["ok"], check["errors"]


@pytest.fixture
def small_pool_server(tmp_path, start_server):
    cfg = tmp_path / "small.toml"
    cfg.write_text('[store]\ncapacity_size = "16M"\nlow_space_thresholds = "50,90"\n')
    return start_server("--config", str(cfg), pool=tmp_path / "pool")


@pytest.mark.timeout(120)
def test_full_pool_answers_space_allocation_failed_and_keeps_data(small_pool_server):
    s = small_pool_server
    s.cli("vdisk", "create", "f", "--size", "64M")
    d = js(s, "vdisk", "show", "f")
    qemu_io(d["url"], "write -P 0x61 0 12M", cache="directsync")
    out = qemu_io(d["url"], "write -P 0x62 12M 8M", cache="directsync", check=False)
    assert "No space left on device" in out, out     # 8 MiB do not fit in the 4 left
    qemu_io(d["url"], "write -P 0x61 12M 4M", cache="directsync")      # now exactly full
    out = qemu_io(d["url"], "write -P 0x62 30M 4k", cache="directsync", check=False)
    assert "No space left on device" in out, out
    # the sense data itself, as a raw initiator sees it: DATA PROTECT, 27h/07h
    with IscsiClient(s.host, s.port) as c:
        assert c.login(DEFAULT_TARGET, chap=s.chap()).login_status == 0
        r = c.scsi(write10(40 * 1024 * 2, 16), write=b"\x63" * 8192, lun=d["lun"])
        for _ in range(3):        # unit attentions first (power on, LUNs changed)
            if r.status == 0x02 and (r.sense[2] & 0x0F) == 0x06:
                r = c.scsi(write10(40 * 1024 * 2, 16), write=b"\x63" * 8192, lun=d["lun"])
        assert r.status == 0x02, r
        assert (r.sense[2] & 0x0F, r.sense[12], r.sense[13]) == (0x07, 0x27, 0x07), r.sense
    qemu_io(d["url"], "read -P 0x61 0 16M")                 # nothing already written lost
    qemu_io(d["url"], "write -P 0x64 4M 1M")                  # overwrites need no space
    qemu_io(d["url"], "discard 0 4M")                        # space comes back
    qemu_io(d["url"], "write -P 0x65 20M 2M", cache="directsync")
    events = js(s, "events")
    kinds = [(e["kind"], e["threshold_pct"]) for e in events]
    assert ("low_space", 50) in kinds and ("low_space", 90) in kinds \
        and ("pool_full", 100) in kinds, kinds
    assert js(s, "pool", "show")["store"]["capacity_bytes"] == 16 * MiB
    assert js(s, "pool", "check")["ok"]


LIBISCSI_THIN_SUITES = ["SCSI.Unmap", "SCSI.WriteSame10", "SCSI.WriteSame16",
                        "SCSI.GetLBAStatus"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("suite", LIBISCSI_THIN_SUITES)
def test_libiscsi_thin_provisioning_suites_run_and_pass(vmblock_server, suite):
    url = vmblock_server.url()
    if suite == "SCSI.GetLBAStatus":
        # GetLBAStatus.UnmapSingle assumes LBPPB 1 (docs/conformance.md): a 512n vdisk
        vmblock_server.cli("vdisk", "create", "n512", "--size", "1G",
                           "--physical-block-size", "512")
        url = js(vmblock_server, "vdisk", "show", "n512")["url"]
    p = subprocess.run(["iscsi-test-cu", "-d", "-V", "-t", suite, url],
                       capture_output=True, text=True, timeout=280)
    out = p.stdout + p.stderr
    assert "fully provisioned" not in out.lower(), out[-3000:]
    m = re.search(r"^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out, re.M)
    assert m, out[-3000:]
    total, ran, passed, failed = map(int, m.groups())
    assert ran > 0 and failed == 0 and ran == passed, out[-3000:]


@pytest.mark.timeout(120)
def test_resize_and_revert_of_a_lun_in_use(vmblock_server):
    s = vmblock_server
    s.cli("vm", "create", "r")
    s.cli("vdisk", "create", "r0", "--size", "16M", "--vm", "r")
    url = js(s, "vdisk", "show", "r0")["url"]
    qemu_io(url, "write -P 0x11 0 64k")
    s.cli("vm", "snapshot", "r", "--name", "base")
    qemu_io(url, "write -P 0x22 0 64k")
    s.cli("vdisk", "resize", "r0", "--size", "32M")
    info = subprocess.run(["qemu-img", "info", "--output=json", "-f", "raw", url],
                          capture_output=True, text=True, timeout=60)
    assert json.loads(info.stdout)["virtual-size"] == 32 * MiB
    p = s.cli("vdisk", "resize", "r0", "--size", "8M", check=False)
    assert p.returncode == 2 and "only grow" in p.stderr

    io = subprocess.Popen(["qemu-io", "-f", "raw", url], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not js(s, "session", "list"):
            time.sleep(0.2)
        p = s.cli("vm", "revert", "r", "--snapshot", "base", check=False)
        assert p.returncode == 2 and "in use" in p.stderr, p.stderr
        s.cli("vm", "revert", "r", "--snapshot", "base", "--force")
        out, _ = io.communicate("read -P 0x11 0 64k\nquit\n", timeout=60)
    finally:
        if io.poll() is None:
            io.kill()
            io.wait()
    # the session got a unit attention, QEMU retried, and reads the snapshot's data
    assert "read 65536/65536" in out and "fail" not in out.lower(), out
    assert js(s, "vdisk", "show", "r0")["size_bytes"] == 16 * MiB   # the snapshot's size
    assert js(s, "pool", "check")["ok"]
