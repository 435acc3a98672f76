"""Per-VM statistics of a live ``vmblock serve`` driven by qemu-io: exact counts per VM and
vdisk (one process and with worker processes), the same after a restart, history that sums to
the counters, and ``/metrics`` scraped over HTTP and parsed by prometheus-client."""

from __future__ import annotations

import shutil
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import clients
from support.clients import cli_json as js
from support.server import run_cli

pytestmark = pytest.mark.skipif(not shutil.which("qemu-io"),
                                reason="needs qemu-io (qemu-utils, qemu-block-extra)")

KiB = 1024
WRITES, WRITE_SIZE, READS, READ_SIZE = 100, 64 * KiB, 50, 4 * KiB


def two_vms(s) -> tuple[str, str]:
    for vm in ("vma", "vmb"):
        s.cli("vm", "create", vm)
        s.cli("vdisk", "create", f"{vm}-disk", "--size", "64M", "--vm", vm)
    return (js(s, "vdisk", "show", "vma-disk")["url"], js(s, "vdisk", "show", "vmb-disk")["url"])


def exact_io(url: str) -> None:
    """Exactly 100 WRITEs of 64 KiB and 50 READs of 4 KiB, each its own command."""
    cmds = [f"write -P 0x5a {i * WRITE_SIZE} 64k" for i in range(WRITES)]
    cmds += [f"read -P 0x5a {i * READ_SIZE} 4k" for i in range(READS)]
    clients.qemu_io(url, *cmds, cache="none")


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {r["name"]: r for r in rows}


def check_counts(report: dict) -> None:
    vms, vdisks = by_name(report["vms"]), by_name(report["vdisks"])
    for row in (vms["vma"], vdisks["vma-disk"]):
        assert row["write_ops"] == WRITES and row["write_bytes"] == 6_553_600
        assert row["read_ops"] == READS and row["read_bytes"] == 204_800
    for row in (vms["vmb"], vdisks["vmb-disk"]):
        assert row["write_ops"] == row["read_ops"] == 0
        assert row["write_bytes"] == row["read_bytes"] == 0
    assert vdisks["vma-disk"]["vm"] == "vma"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("workers", [0, 2])
def test_exact_counts_per_vm_and_after_restart(tmp_path, start_server, workers):
    pool = tmp_path / "pool"
    run_cli(pool, "config", "set", "server.workers", str(workers))
    s = start_server(pool=pool)
    url_a, _ = two_vms(s)
    exact_io(url_a)
    check_counts(js(s, "stats"))
    s.stop()
    s = start_server(pool=pool)
    check_counts(js(s, "stats"))
    s.stop()
    check_counts(js(s, "stats"))            # no server: what the last run stored


@pytest.mark.timeout(180)
def test_history_over_a_burst_sums_to_the_counters(vmblock_server):
    s = vmblock_server
    s.cli("config", "set", "stats.interval", "1")
    url_a, _ = two_vms(s)
    s.cli("stats-sample")
    for burst in range(3):          # three intervals of I/O, each closed by a forced sample
        clients.qemu_io(url_a, *[f"write -P 0x11 {i * 4096} 4k" for i in range(20 + burst)],
                        *[f"read {i * 4096} 4k" for i in range(7)], cache="none")
        s.cli("stats-sample")
    r = js(s, "stats", "--vm", "vma", "--since", "1h")
    vm = r["vms"][0]
    hist = vm["history"]
    assert hist and all(h["dt"] >= 0 for h in hist)
    for key in ("read_ops", "write_ops", "read_bytes", "write_bytes"):
        assert sum(h[key] for h in hist) == vm[key]
    assert vm["write_ops"] == 20 + 21 + 22
    vd = by_name(r["vdisks"])["vma-disk"]
    assert sum(h["write_ops"] for h in vd["history"]) == vd["write_ops"]


@pytest.mark.timeout(120)
def test_metrics_scraped_and_parsed(tmp_path, start_server):
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    s = start_server("--metrics", f"127.0.0.1:{port}", pool=tmp_path / "pool")
    url_a, _ = two_vms(s)
    exact_io(url_a)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            samples[(smp.name, tuple(sorted(smp.labels.items())))] = smp.value
    assert samples[("vmblock_vm_ops_total", (("op", "write"), ("vm", "vma")))] == WRITES
    assert samples[("vmblock_vm_bytes_total", (("op", "read"), ("vm", "vma")))] == 204_800
    assert samples[("vmblock_vm_ops_total", (("op", "write"), ("vm", "vmb")))] == 0
    assert samples[("vmblock_vdisk_ops_total",
                    (("op", "read"), ("vdisk", "vma-disk"), ("vm", "vma")))] == READS
    assert samples[("vmblock_vm_latency_seconds_count", (("op", "write"), ("vm", "vma")))] \
        == WRITES
    assert ("vmblock_vm_used_bytes", (("vm", "vma"),)) in samples
    assert any(k[0] == "vmblock_pool_bytes" for k in samples)
    assert any(k[0] == "vmblock_sessions" for k in samples)
    assert any(k[0] == "vmblock_cache_hits_total" for k in samples)


@pytest.mark.timeout(180)
def test_top_once_and_report_png_and_html(vmblock_server, tmp_path):
    import struct
    s = vmblock_server
    url_a, _ = two_vms(s)
    s.cli("stats-sample")
    for n in (30, 10, 20):
        clients.qemu_io(url_a, *[f"write -P 0x22 {i * 4096} 4k" for i in range(n)],
                        *[f"read {i * 4096} 4k" for i in range(n // 2)], cache="none")
        s.cli("stats-sample")
    out = s.cli("top", "--once", "--sort", "iops").stdout
    names = [line.split("│")[1].strip() for line in out.splitlines()
             if line.startswith("│") and line.split("│")[1].strip()]
    assert names[0] == "vma" and names[-1] == "(pool)" and "vmb" in names   # busiest first
    png, page = tmp_path / "vma.png", tmp_path / "vma.html"
    r = s.cli("report", "--vm", "vma", "--since", "1h", "--png", str(png), "--html", str(page))
    assert "4 intervals plotted" in r.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 500 and height > 500
    import matplotlib.image
    img = matplotlib.image.imread(str(png))                 # it opens, and it has colour
    assert img.shape[0] == height and img[..., :3].std() > 0.05
    text = page.read_text()
    assert "data:image/png;base64," in text and "VM vma" in text
    assert s.cli("report", "--vm", "vma", check=False).returncode == 2


@pytest.mark.timeout(120)
def test_a_deleted_vdisk_takes_its_statistics_along(vmblock_server):
    s = vmblock_server
    url_a, _ = two_vms(s)
    clients.qemu_io(url_a, "write 0 4k", cache="none")
    s.cli("stats-sample")
    s.cli("vdisk", "delete", "vma-disk", "--force")
    r = js(s, "stats", "--since", "1h")
    assert "vma-disk" not in by_name(r["vdisks"])
    vm = by_name(r["vms"])["vma"]
    assert vm["write_ops"] == 0 and sum(h["write_ops"] for h in vm["history"]) == 1
    s.cli("vdisk", "create", "vma-disk", "--size", "64M", "--vm", "vma")
    assert by_name(js(s, "stats")["vdisks"])["vma-disk"]["write_ops"] == 0
