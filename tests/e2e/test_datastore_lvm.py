"""LVM2 shared datastores on a live server: a VG made by the real lvm2 tools on a loop device
(support.lvm), copied onto a LUN with ``qemu-img convert -n``, then changed through the LUN the
way lvm2 on a host changes it (only the sectors lvm2 wrote, with qemu-io): the server finds
the VG, maps each LV to a sub-vdisk of its VM, re-reads after each change and keeps the last
good map when the metadata is damaged.

The server notices by itself (its store watches the label and metadata areas; with workers,
their fast path forwards writes there); the tests wait for the event that says so, polling
the event list up to a deadline (the re-read runs ``datastore.lvm.rescan_delay`` after the last
write, 0.1 s here)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess

import pytest
from support.clients import cli_json, qemu_io
from support.lvm import EXTENT, MiB, events, needs_lvm, vg_versions, wait_event, write_runs

from vmblock.datastore.lvm import LABEL_SCAN_BYTES, read_label
from vmblock.meta import Pool

pytestmark = [needs_lvm, pytest.mark.skipif(
    not (shutil.which("qemu-io") and shutil.which("qemu-img")),
    reason="needs qemu-io and qemu-img (Debian qemu-utils + qemu-block-extra)")]

SIZE = 64 * MiB
V1 = {"vm-100-disk-0": [(0, 2), (6, 1)], "vm-100-disk-1": [(2, 1)], "db-web01": [(3, 3)]}
V2 = {"vm-100-disk-0": [(0, 2), (6, 1)], "db-web01": [(3, 3), (7, 2)],
      "vm-102-disk-0": [(9, 1)]}
IO_TIMEOUT = 120


def volumes(server, name: str) -> dict[str, dict]:
    ds = cli_json(server, "vdisk", "show", name)["datastore"]
    return {v["name"]: v for v in ds["volumes"]} if ds else {}


def expected(lvs: dict) -> dict[str, list[list[int]]]:
    """LV -> byte ranges: pe_start (1 MiB, lvm2's default) + extent * 4 MiB, merged."""
    out = {}
    for name, segs in lvs.items():
        ranges = sorted([MiB + pe * EXTENT, n * EXTENT] for pe, n in segs)
        merged = []
        for lo, n in ranges:
            if merged and merged[-1][0] + merged[-1][1] == lo:
                merged[-1][1] += n
            else:
                merged.append([lo, n])
        out[name] = merged
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """(v1, v2) images of VG pve: v2 is v1 changed by vgcfgrestore (the next seqno)."""
    return vg_versions(tmp_path_factory.mktemp("lvm"), SIZE, "pve", V1, V2)


@pytest.mark.parametrize("workers, cache", [(0, "0"), (1, "0"), (0, "50%")],
                         ids=["one-process", "workers", "flash-cache"])
def test_lvm_on_a_lun(start_server, tmp_path, images, workers, cache):
    """One process; a worker whose fast path would overwrite the metadata area in place unless
    it forwards; the flash cache in front of the watched store."""
    v1, v2, v1_path = images
    pool = tmp_path / "pool"
    server = start_server(pool=pool)
    for key, value in (("datastore.lvm.vm_pattern", "^db-(?P<vm>.+)$"),):
        server.cli("config", "set", key, value)
    server.stop()
    for key, value in (("server.workers", str(workers)), ("cache.size", cache),
                       ("datastore.lvm.rescan_delay", "0.1")):
        server.cli("config", "set", key, value)
    server = start_server(pool=pool)
    server.cli("vdisk", "create", "pve-lun", "--size", "64M")
    d = cli_json(server, "vdisk", "show", "pve-lun")
    url = server.url(d["lun"])
    assert d["lun"] == 1

    # v1 copied onto the LUN: three LVs (one in two segments) -> three sub-vdisks of two VMs
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(v1_path), url],
                   check=True, timeout=IO_TIMEOUT, capture_output=True)
    first = wait_event(server, "datastore_changed", 1)
    assert first["vg"] == "pve" and first["added"] == sorted(V1)
    vols = volumes(server, "pve-lun")
    assert {n: v["extents"] for n, v in vols.items()} == expected(V1)
    assert {n: v["vm"] for n, v in vols.items()} == {
        "vm-100-disk-0": "100", "vm-100-disk-1": "100", "db-web01": "web01"}
    vms = {vm["name"]: vm for vm in cli_json(server, "vm", "list")}
    assert vms["100"]["source"] == vms["web01"]["source"] == "lvm:pve"
    subs = cli_json(server, "vm", "show", "100")["sub_vdisks"]
    assert [(s["name"], s["vdisk"], s["extents"]) for s in subs] == [
        ("pve/vm-100-disk-0", "pve-lun", expected(V1)["vm-100-disk-0"]),
        ("pve/vm-100-disk-1", "pve-lun", expected(V1)["vm-100-disk-1"])]
    seqno = cli_json(server, "vdisk", "show", "pve-lun")["datastore"]["seqno"]

    # v2 through the LUN, only the sectors lvm2 wrote: re-read, event with what changed
    assert write_runs(url, v1, v2, tmp_path) >= 1
    second = wait_event(server, "datastore_changed", 2)
    assert second["seqno"] == seqno + 1 and second["old_seqno"] == seqno
    assert (second["added"], second["removed"], second["changed"]) == (
        ["vm-102-disk-0"], ["vm-100-disk-1"], ["db-web01"])
    vols = volumes(server, "pve-lun")
    assert {n: v["extents"] for n, v in vols.items()} == expected(V2)
    assert vols["vm-102-disk-0"]["vm"] == "102"

    # a flipped byte in the newest metadata copy: the last good map stays, an error event
    mda = read_label(v2[:LABEL_SCAN_BYTES]).metadata_areas[0][0]
    off, size = struct.unpack_from("<QQ", v2, mda + 40)
    sector = (mda + off + size // 2) // 512 * 512
    bad = bytearray(v2)
    bad[sector + 7] ^= 0x20
    write_runs(url, v2, bytes(bad), tmp_path)
    err = wait_event(server, "datastore_error", 1)
    assert err["severity"] == "error" and "checksum" in err["message"]
    assert "last good map" in err["message"] and err["seqno"] == seqno + 1
    ds = cli_json(server, "vdisk", "show", "pve-lun")["datastore"]
    assert ds["seqno"] == seqno + 1 and "checksum" in ds["problem"]
    assert {v["name"]: v["extents"] for v in ds["volumes"]} == expected(V2)
    # repaired (lvm2 writes the next version): mapped again
    write_runs(url, bytes(bad), v2, tmp_path)
    assert wait_event(server, "datastore_recovered", 1)["seqno"] == seqno + 1
    assert cli_json(server, "vdisk", "show", "pve-lun")["datastore"]["problem"] == ""

    # a label-like sector on another vdisk: a warning, nothing else disturbed
    before = cli_json(server, "vdisk", "show", "pve-lun")["datastore"]
    junk = tmp_path / "junk"
    junk.write_bytes(b"LABELONE" + bytes(range(256))[:504])
    qemu_io(server.url(0), f"write -s {junk} 512 512")
    warn = wait_event(server, "datastore_not_pv", 1)
    assert warn["vdisk"] == "demo" and "not an LVM physical volume" in warn["message"]
    assert cli_json(server, "vdisk", "show", "demo")["datastore"] is None
    scanned = cli_json(server, "datastore", "scan", "demo")
    assert scanned["datastore"] is None and "sector 1: checksum" in scanned["problem"]
    assert cli_json(server, "vdisk", "show", "pve-lun")["datastore"] == before
    assert len(events(server, "datastore_changed")) == 2
    listed = cli_json(server, "datastore", "list")
    assert [(d["vdisk"], d["vg"]) for d in listed] == [("pve-lun", "pve")]

    # the pattern unset on the running server: every datastore read again at once
    assert "takes effect" not in server.cli("config", "unset", "datastore.lvm.vm_pattern").stdout
    third = wait_event(server, "datastore_changed", 3)
    assert third["changed"] == ["db-web01"]
    assert volumes(server, "pve-lun")["db-web01"]["vm"] is None


def test_scan_without_a_server(run, images, tmp_path):
    """``datastore scan`` on the pool (no server): the VG found, VMs created, the map stored;
    a second scan changes nothing."""
    v1, _, v1_path = images
    run("vdisk", "create", "pve-lun", "--size", "64M")
    pool = Pool(str(run.pool))
    try:
        disk = pool.vdisk("pve-lun")
        store = pool.open_store(disk)
        store.write(0, memoryview(v1)[:2 * MiB])     # the label and the metadata area
        pool.store.flush()
    finally:
        pool.close()
    out = json.loads(run("datastore", "scan", "pve-lun", "--json").output)
    assert {v["name"]: v["extents"] for v in out["datastore"]["volumes"]} == {
        n: e for n, e in expected(V1).items()}
    assert {v["name"]: v["vm"] for v in out["datastore"]["volumes"]}["vm-100-disk-0"] == "100"
    evs = json.loads(run("events", "--json").output)
    assert [e["kind"] for e in evs] == ["datastore_changed"]
    run("datastore", "scan", "pve-lun")
    assert len(json.loads(run("events", "--json").output)) == 1
