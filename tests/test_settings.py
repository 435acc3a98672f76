"""vmblock.settings: one typed table of every config key, read through Pool.settings()."""

import ast
import sys
from pathlib import Path

import pytest
from support.server import VmblockServer

from vmblock import DEFAULT_TARGET
from vmblock.errors import InvalidArgument
from vmblock.iscsi import params
from vmblock.meta import Pool
from vmblock.settings import (
    NEGOTIATION_KEYS,
    TABLE,
    Apply,
    CacheSize,
    Settings,
    check_key,
    lookup,
)

OTHER_IQN = "iqn.2026-11.io.vmblock.test:other"


@pytest.mark.parametrize("key", [k for k, row in TABLE.items() if row.default is not None])
def test_every_default_parses_to_its_rows_type(key):
    row = TABLE[key]
    assert isinstance(row.parse(row.default, key), row.type)
    assert row.doc


def test_poll_window_is_microseconds_to_ten_milliseconds_and_the_fabrics_default():
    from vmblock.iscsi.poll import DEFAULT_WINDOW
    from vmblock.iscsi.portal import IscsiConfig
    assert Settings({}).get("iscsi.poll_window") == DEFAULT_WINDOW == IscsiConfig().poll_window
    assert Settings({"iscsi.poll_window": "0"}).get("iscsi.poll_window") == 0.0
    assert Settings({"iscsi.poll_window": "10ms"}).get("iscsi.poll_window") == 0.01
    for bad in ("11ms", "-1us", "fast"):
        with pytest.raises(InvalidArgument, match="iscsi.poll_window"):
            Settings({"iscsi.poll_window": bad}).get("iscsi.poll_window")


def test_workers_auto_means_none_while_the_flash_cache_is_on():
    from vmblock.settings import auto_workers
    assert Settings({}).workers(cache_on=False) == auto_workers()
    assert Settings({"server.workers": "auto"}).workers(cache_on=True) == 0
    assert Settings({}).workers(cache_on=True) == 0
    assert Settings({"server.workers": "2"}).workers(cache_on=True) == 2     # asked for: kept
    assert Settings({"server.workers": "0"}).workers(cache_on=False) == 0


def test_negotiation_keys_are_the_fabrics_offer():
    """settings names the iscsi.<Key> keys without importing the fabric: the two must agree."""
    assert set(NEGOTIATION_KEYS) == set(params.TARGET_OFFER) == set(params.KEYS)


def test_settings_imports_no_layer():
    tree = ast.parse(Path(sys.modules[Settings.__module__].__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
    ours = {m for m in imported if m.split(".")[0] == "vmblock"}
    assert ours <= {"vmblock", "vmblock.errors", "vmblock.units"}, ours


def test_get_parses_the_stored_text_or_the_default():
    s = Settings({"cache.size": "25%", "store.low_space_thresholds": "50,90",
                  "iscsi.portals": "127.0.0.1:3270,[::1]:3270", "store.commit_interval": "2m"})
    assert s.get("cache.size") == CacheSize("25%", fraction=0.25)
    assert s.get("cache.size").of(1 << 30) == 1 << 28
    assert s.get("store.low_space_thresholds") == (50, 90)
    assert s.get("iscsi.portals") == [("127.0.0.1", 3270), ("::1", 3270)]
    assert s.get("store.commit_interval") == 120.0
    assert s.get("cache.block_size") == 64 << 10
    assert s.get(f"acl.{DEFAULT_TARGET}") == []
    assert s.get(f"auth.target.{DEFAULT_TARGET}.chap_user") == ""
    assert s.get("iscsi.MaxBurstLength") is None      # the fabric's offer applies
    assert s.get("auth.new_target_chap") is False


def test_overlay_wins_and_negotiation_lists_only_the_fabrics_keys():
    s = Settings({"iscsi.MaxBurstLength": "65536", "iscsi.nop_interval": "5"})
    assert s.overlay({"iscsi.nop_interval": "7"}).get("iscsi.nop_interval") == 7.0
    assert s.get("iscsi.nop_interval") == 5.0
    assert s.negotiation() == {"MaxBurstLength": "65536"}


@pytest.mark.parametrize("key, value, message", [
    ("iscsi.TargetName", "x", "unknown config key"),
    ("auth.target..chap_secret", "x", "bad iSCSI name ''"),
    ("acl.not-an-iqn", DEFAULT_TARGET, "bad iSCSI name"),
    ("cache.size", "150%", "a percentage must be 0-100%"),
    ("cache.size", "0.5", "bad cache.size"),
    ("iscsi.login_timeout", "0", "above 0"),
    ("store.commit_interval", "inf", "from 0 to 86400"),
])
def test_check_key_refuses_with_the_keys_message(key, value, message):
    with pytest.raises(InvalidArgument, match=message):
        check_key(key, value)


def test_check_orders_the_fabric_limits():
    with pytest.raises(InvalidArgument, match="iscsi.first_pdu_timeout must not exceed"):
        Settings({"iscsi.first_pdu_timeout": "60"}).check()
    Settings({"iscsi.first_pdu_timeout": "60", "iscsi.login_timeout": "60"}).check()


def test_lookup_names_the_family_member_and_when_it_applies():
    assert lookup(f"acl.{DEFAULT_TARGET}") == (TABLE["acl.<iqn>"], DEFAULT_TARGET)
    assert lookup(f"auth.target.{DEFAULT_TARGET}.mutual_user") == \
        (TABLE["auth.target.<iqn>.mutual_user"], DEFAULT_TARGET)
    assert lookup("iscsi.MaxBurstLength") == (TABLE["iscsi.<Key>"], "MaxBurstLength")
    assert lookup("iscsi.TargetName") is None
    assert TABLE["store.capacity_size"].apply is Apply.RESTART


def test_pool_settings_are_its_config_overridden_for_this_run(tmp_path):
    pool = Pool(str(tmp_path / "pool"), create=True)
    try:
        pool.config_set("store.low_space_thresholds", "50,90")
        pool.config_set("iscsi.nop_interval", "5")
        pool.overrides = {"iscsi.nop_interval": "9"}
        settings = pool.settings()
        assert settings.get("store.low_space_thresholds") == (50, 90)
        assert settings.get("iscsi.nop_interval") == 9.0
        assert pool.config()["iscsi.nop_interval"] == "5"
    finally:
        pool.close()


def _live(server: VmblockServer, key: str, value: str) -> bool:
    out = server.cli("config", "set", key, value).stdout
    return "takes effect at next start" not in out


def test_a_running_server_applies_each_key_as_its_row_says(tmp_path, start_server):
    """Apply.FABRIC, TARGET (of a served target) and NEW_TARGET keys are live; RESTART keys,
    keys of a target not served and keys a --config file overrides wait for the next start."""
    config = tmp_path / "run.toml"
    config.write_text("[iscsi]\nnop_timeout = 20\n")
    server = start_server("--config", str(config), pool=tmp_path / "pool")
    assert _live(server, "iscsi.nop_interval", "5")
    assert _live(server, "iscsi.MaxBurstLength", "524288")
    assert _live(server, "auth.discovery.chap_user", "disco")
    assert _live(server, f"acl.{DEFAULT_TARGET}", "iqn.2026-11.io.vmblock.test:one")
    assert _live(server, "auth.new_target_chap", "Yes")
    assert not _live(server, f"acl.{OTHER_IQN}", "iqn.2026-11.io.vmblock.test:one")
    assert not _live(server, "store.commit_interval", "3")
    assert not _live(server, "iscsi.portals", "127.0.0.1:3270")
    assert not _live(server, "iscsi.nop_timeout", "25")
