"""The CLI end to end on a temporary pool with no server (click's CliRunner, the real pool)."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.clients import error_line

from vmblock import DEFAULT_TARGET
from vmblock.cli import cli
from vmblock.meta.config import check_settings
from vmblock.settings import Settings, load_toml


def test_read_command_without_pool_is_one_line_error(run):
    r = run("vm", "list", code=2)
    assert "no pool at" in error_line(r)
    assert not run.pool.exists()


def test_vm_create_list_show_delete(run):
    run("vm", "create", "web1", "--guest-os", "debian12")
    vms = json.loads(run("vm", "list", "--json").stdout)
    assert [(v["name"], v["guest_os"], v["active"], v["meta_stale"]) for v in vms] == \
        [("web1", "debian12", False, False)]
    shown = json.loads(run("vm", "show", "web1", "--json").stdout)
    assert shown["uuid"] == vms[0]["uuid"] and shown["vdisks"] == []
    run("vm", "delete", "web1")
    assert json.loads(run("vm", "list", "--json").stdout) == []


def test_vm_meta_fields_are_kept_and_editable(run):
    run("vm", "create", "db1", "--guest-os", "rhel9", "--location", "hv-a:/datastore1")
    run("vm", "set", "db1", "--location", "hv-b:/datastore2", "--active")
    shown = json.loads(run("vm", "show", "db1", "--json").stdout)
    assert (shown["guest_os"], shown["location"], shown["active"], shown["policies"]) == \
        ("rhel9", "hv-b:/datastore2", True, {})
    run("vm", "set", "db1", "--inactive")
    assert json.loads(run("vm", "show", "db1", "--json").stdout)["active"] is False
    assert "nothing to set" in error_line(run("vm", "set", "db1", code=2))
    assert "no VM" in error_line(run("vm", "set", "ghost", "--active", code=2))


def config_of(run, field: str, target: str = DEFAULT_TARGET) -> str:
    return run("config", "get", f"auth.target.{target}.{field}").stdout.strip()


def test_vdisk_gets_lowest_free_lun_and_url(run):
    run("vm", "create", "db")
    run("vdisk", "create", "a", "--size", "512M", "--vm", "db")
    run("vdisk", "create", "b", "--size", "1G")
    run("vdisk", "create", "c", "--size", "8GiB", "--vm", "db")
    run("vdisk", "delete", "b")
    run("vdisk", "create", "d", "--size", "1T")
    disks = {d["name"]: d for d in json.loads(run("vdisk", "list", "--json").stdout)}
    assert {n: d["lun"] for n, d in disks.items()} == {"a": 0, "c": 2, "d": 1}
    assert disks["a"]["size_bytes"] == 512 << 20 and disks["d"]["size_bytes"] == 1 << 40
    d = json.loads(run("vdisk", "show", "d", "--json").stdout)
    creds = f"{config_of(run, 'chap_user')}%{config_of(run, 'chap_secret')}@"
    assert d["url"] == f"iscsi://{creds}127.0.0.1:3260/{DEFAULT_TARGET}/1"
    assert d["vm"] is None and d["block_size"] == 512 and d["allocated_bytes"] == 0
    shown = json.loads(run("vm", "show", "db", "--json").stdout)
    assert [(v["name"], v["size_bytes"]) for v in shown["vdisks"]] == \
        [("a", 512 << 20), ("c", 8 << 30)]
    assert all(v["url"].startswith(f"iscsi://{creds}127.0.0.1:3260/") for v in shown["vdisks"])


def test_vdisk_identity_is_stable_and_unique(run):
    run("vdisk", "create", "x", "--size", "1M")
    run("vdisk", "create", "y", "--size", "1M")
    x1 = json.loads(run("vdisk", "show", "x", "--json").stdout)
    x2 = json.loads(run("vdisk", "show", "x", "--json").stdout)
    y = json.loads(run("vdisk", "show", "y", "--json").stdout)
    assert (x1["serial"], x1["naa"]) == (x2["serial"], x2["naa"])
    assert x1["serial"] != y["serial"] and x1["naa"] != y["naa"]
    assert x1["naa"].startswith("67a6d62") and len(x1["naa"]) == 32   # NAA 6 + company id


def test_vdisk_on_new_target(run):
    iqn = "iqn.2026-11.io.vmblock:other"
    run("vdisk", "create", "t0", "--size", "1M", "--target", iqn)
    d = json.loads(run("vdisk", "show", "t0", "--json").stdout)
    assert (d["target"], d["lun"]) == (iqn, 0)
    tree = json.loads(run("pool", "show", "--json").stdout)
    assert {t["iqn"] for t in tree["targets"]} == {DEFAULT_TARGET, iqn}


@pytest.mark.parametrize("args, message", [
    (("vdisk", "create", "a", "--size", "lots"), "bad size"),
    (("vdisk", "create", "a", "--size", "1000"), "multiple of 512"),
    (("vdisk", "create", "a", "--size", "1G", "--vm", "ghost"), "no VM named 'ghost'"),
    (("vdisk", "create", "a", "--size", "1G", "--target", "not-an-iqn"), "bad iSCSI name"),
    (("vdisk", "create", "bad/name", "--size", "1G"), "bad vdisk name"),
    (("vdisk", "create", "a"), "Missing option '--size'"),
    (("vm", "create", "dup"), "already exists"),
    (("vm", "show", "ghost"), "no VM named"),
    (("vdisk", "delete", "ghost"), "no vdisk named"),
    (("config", "set", "no.such.key", "1"), "unknown config key"),
    (("config", "set", "iscsi.MaxRecvDataSegmentLength", "big"), "MaxRecvDataSegmentLength"),
    (("config", "set", "iscsi.MaxBurstLength", "1"), "outside"),
    (("config", "set", "iscsi.ImmediateData", "maybe"), "Yes or No"),
    (("config", "set", "iscsi.TargetName", "x"), "unknown config key"),
    (("config", "set", "iscsi.FirstBurstLength", "4194304"), "must not exceed MaxBurstLength"),
    (("config", "set", "iscsi.portals", "127.0.0.1:99999"), "bad portal"),
    (("config", "get", "iscsi.portals"), "not set"),
    (("session", "list"), "no server is running"),
    (("nonsense",), "No such command"),
])
def test_bad_input_is_one_line_and_exit_2(run, args, message):
    run("vm", "create", "dup")
    r = run(*args, code=2)
    assert message in error_line(r)


def test_vm_with_vdisks_cannot_be_deleted(run):
    run("vm", "create", "v")
    run("vdisk", "create", "vd", "--size", "1M", "--vm", "v")
    assert "still has vdisks vd" in error_line(run("vm", "delete", "v", code=2))
    run("vdisk", "delete", "vd")
    run("vm", "delete", "v")


def test_config_set_get_list_unset(run):
    run("config", "set", "iscsi.portals", "127.0.0.1:3270,[::1]:3270")
    run("config", "set", f"acl.{DEFAULT_TARGET}", "iqn.1994-05.com.redhat:a1")
    run("config", "set", "auth.discovery.chap_user", "alice")
    assert run("config", "get", "auth.discovery.chap_user").stdout == "alice\n"
    keys = json.loads(run("config", "list", "--json").stdout)
    assert keys == {"iscsi.portals": "127.0.0.1:3270,[::1]:3270",
                    f"acl.{DEFAULT_TARGET}": "iqn.1994-05.com.redhat:a1",
                    "auth.discovery.chap_user": "alice",
                    # what every new pool has: its targets ask for CHAP
                    "auth.new_target_chap": "Yes",
                    f"auth.target.{DEFAULT_TARGET}.chap_user": "vmblock",
                    f"auth.target.{DEFAULT_TARGET}.chap_secret": config_of(run, "chap_secret")}
    run("vdisk", "create", "p", "--size", "1M")
    assert json.loads(run("vdisk", "show", "p", "--json").stdout)["url"].startswith(
        "iscsi://vmblock%")
    assert "@127.0.0.1:3270/" in json.loads(run("vdisk", "show", "p", "--json").stdout)["url"]
    run("config", "unset", "iscsi.portals")
    assert "iscsi.portals" not in json.loads(run("config", "list", "--json").stdout)


def test_pool_env_var(tmp_path):
    r = CliRunner().invoke(cli, ["vm", "create", "e"], env={"VMBLOCK_POOL": str(tmp_path / "env")})
    assert r.exit_code == 0, r.output
    assert (tmp_path / "env" / "meta" / "CURRENT").exists()


def test_new_vdisk_after_delete_reads_zeros(run):
    """A new vdisk never sees the bytes of a deleted one (no leak between VMs), even when
    it is given the very AUs the deleted one used."""
    from vmblock.meta import Pool
    run("vdisk", "create", "old", "--size", "1M")
    pool = Pool(str(run.pool))
    try:
        pool.open_store(pool.vdisk("old")).write(0, memoryview(b"\x99" * (1 << 20)))
        pool.store.flush()
    finally:
        pool.close()
    run("vdisk", "delete", "old")
    run("vdisk", "create", "new", "--size", "1M")
    pool = Pool(str(run.pool))
    try:
        store = pool.open_store(pool.vdisk("new"))
        store.write(512, memoryview(b"\x01" * 512))    # allocates a (recycled) AU
        buf = bytearray(1 << 20)
        store.read_into(0, memoryview(buf))
    finally:
        pool.close()
    assert buf == bytes(512) + b"\x01" * 512 + bytes((1 << 20) - 1024)


def test_example_config_is_valid():
    pool, keys = load_toml(str(Path(__file__).resolve().parents[2] / "configs" / "vmblock.toml"))
    assert pool == "./vmblock-data"
    assert keys["iscsi.portals"] == "127.0.0.1:3260"
    assert keys["iscsi.HeaderDigest"] == "None,CRC32C"
    assert keys[f"acl.{DEFAULT_TARGET}"].count(",") == 1
    check_settings(Settings(keys))


@pytest.mark.parametrize("text, message", [
    ("[iscsi]\nportals = 'nowhere:port'\n", "bad portal"),
    ("[iscsi]\nMaxBurstLength = 4096\nFirstBurstLength = 8192\n", "must not exceed"),
    ("[iscsi]\nMaxBurstLength = 1\n", "outside"),
    ("[nonsense]\nkey = 1\n", "unknown config key"),
    ("[iscsi\n", "config file"),
])
def test_serve_rejects_bad_config_file_in_one_line(run, tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert message in error_line(run("serve", "--config", str(path), code=2))


def test_config_file_limits_are_checked_together(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text("[iscsi]\nMaxBurstLength = 8192\nFirstBurstLength = 4096\n")
    assert load_toml(str(path))[1]["iscsi.MaxBurstLength"] == "8192"


def test_serve_rejects_missing_config_file(run, tmp_path):
    r = run("serve", "--config", str(tmp_path / "missing.toml"), code=2)
    assert "cannot read config file" in error_line(r)
