"""Bad input through the management doors: sizes, argument types and lengths, error replies.

Each case is driven through the real door it came in by: the CLI on a pool with no server (click's
CliRunner), the admin socket of an ``Api`` served in this process (raw HTTP over the unix socket,
so bodies the client would never send can be sent), and a real ``vmblock serve``.
"""

from __future__ import annotations

import inspect
import json
import resource
import subprocess
import sys

import pytest

from support.clients import admin_post, error_line
from vmblock.admin.api import VERBS, Api
from vmblock.admin.cache import CacheVerbs
from vmblock.admin.hypervisor import HypervisorVerbs
from vmblock.admin.datastores import DatastoreVerbs
from vmblock.admin.stats import StatsVerbs
from vmblock.admin.client import AdminClient, LocalClient
from vmblock.cache.groups import parse_group
from vmblock.errors import CacheError, InvalidArgument, TraceError, VmblockError
from vmblock.settings import MAX_VDISK_BYTES
from vmblock.meta import Pool
from vmblock.server import LiveApi

ACL_KEY = "acl.iqn.2026-11.io.vmblock:default"
CHAP_KEY = "auth.target.iqn.2026-11.io.vmblock:default.chap_secret"
# what every new pool stores: its targets ask for CHAP (auth.new_target_chap), the default
# target's user and secret
NEW_POOL_KEYS = {"auth.new_target_chap", "auth.target.iqn.2026-11.io.vmblock:default.chap_user",
                 CHAP_KEY}


def set_keys(run) -> dict:
    """``config list`` less the keys every new pool starts with."""
    keys = json.loads(run("config", "list", "--json").stdout)
    return {k: v for k, v in keys.items() if k not in NEW_POOL_KEYS}


# ---- sizes --------------------------------------------------------------------------------

@pytest.mark.parametrize("size, message", [
    ("128T", "over the largest vdisk, 64 TiB"),
    ("1P", "over the largest vdisk, 64 TiB"),
    ("999999999P", "over the largest vdisk, 64 TiB"),
    ("99999999999999999999999P", "bad size"),
    ("0", "positive multiple of 512"),
    ("1000", "positive multiple of 512"),
    ("-1G", "bad size"),
])
def test_vdisk_sizes_the_pool_cannot_describe_are_one_line(run, size, message):
    r = run("vdisk", "create", "big", "--size", size, code=2)
    assert message in error_line(r)
    run("vdisk", "create", "small", "--size", "1M")
    assert "no vdisk named 'big'" in error_line(run("vdisk", "show", "big", code=2))
    assert "over the largest vdisk" in error_line(
        run("vdisk", "resize", "small", "--size", "65T", code=2))
    assert json.loads(run("vdisk", "show", "small", "--json").stdout)["size_bytes"] == 1 << 20


def test_largest_vdisk_is_accepted(run):
    run("vdisk", "create", "max", "--size", "64T")
    assert json.loads(run("vdisk", "show", "max", "--json").stdout)["size_bytes"] == \
        MAX_VDISK_BYTES
    assert "over the largest vdisk" in error_line(
        run("vdisk", "resize", "max", "--size", str(MAX_VDISK_BYTES + 512), code=2))


@pytest.mark.parametrize("key, value, message", [
    ("store.capacity_size", "1P", "store.capacity_size '1P' is over the largest"),
    ("store.flash_size", "17T", "store.flash_size '17T' is over the largest"),
    ("cache.size", "999999999P", "cache.size '999999999P' is over the largest"),
    ("cache.size", "2G", "larger than the flash tier"),
])
def test_tier_and_cache_sizes_are_capped(run, key, value, message):
    run("vm", "create", "v")
    assert message in error_line(run("config", "set", key, value, code=2))
    run("pool", "show")      # nothing stored that the next open trips on


def test_flash_tier_cannot_shrink_below_an_absolute_cache_size(run):
    run("config", "set", "cache.size", "512M")
    assert "larger than the flash tier" in error_line(
        run("config", "set", "store.flash_size", "256M", code=2))


def cli_with_file_size_limit(pool, limit: int | None, *args) -> subprocess.CompletedProcess:
    """The real CLI in a process whose largest file is ``limit`` bytes (RLIMIT_FSIZE), as on a
    file system with a smaller largest file (ext4 with 4 KiB blocks: 4 KiB short of 16 TiB)."""
    def cap() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([sys.executable, "-m", "vmblock", "--pool", str(pool), *args],
                          capture_output=True, text=True, timeout=60, preexec_fn=cap)


def test_tier_size_must_fit_the_file_system(tmp_path):
    pool = tmp_path / "pool"
    assert cli_with_file_size_limit(pool, None, "config", "set", "store.capacity_size",
                                    "1G").returncode == 0
    assert cli_with_file_size_limit(pool, None, "pool", "show").returncode == 0  # 1G now
    p = cli_with_file_size_limit(pool, 2 << 30, "config", "set", "store.capacity_size", "4G")
    assert p.returncode == 2 and p.stderr == (
        f"vmblock: error: cannot set store.capacity_size: the capacity tier cannot be 4 GiB on "
        f"the file system of {pool}/capacity: File too large\n"), p.stderr
    assert not [f.name for f in pool.iterdir() if "probe" in f.name]
    p = cli_with_file_size_limit(pool, 2 << 30, "config", "set", "store.capacity_size", "2G")
    assert p.returncode == 0, p.stderr
    assert cli_with_file_size_limit(pool, 2 << 30, "pool", "show").returncode == 0
    # a size stored where it fitted: the pool refuses to open in one line, no traceback
    assert cli_with_file_size_limit(pool, None, "config", "set", "store.capacity_size",
                                    "4G").returncode == 0
    p = cli_with_file_size_limit(pool, 2 << 30, "pool", "show")
    assert p.returncode == 2 and p.stderr == (
        f"vmblock: error: cannot make the capacity tier {pool}/capacity 4 GiB "
        f"(store.capacity_size): File too large\n"), p.stderr


def test_sizes_over_the_server_are_one_line_exit_2(vmblock_server):
    for size in ("1P", "128T", "999999999P"):
        p = vmblock_server.cli("vdisk", "create", "x", "--size", size, check=False)
        assert p.returncode == 2, p.stderr
        assert p.stderr.startswith("vmblock: error: size ") and \
            "over the largest vdisk" in p.stderr and len(p.stderr.splitlines()) == 1, p.stderr
    p = vmblock_server.cli("vdisk", "resize", "demo", "--size", "1P", check=False)
    assert p.returncode == 2 and "over the largest vdisk" in p.stderr, p.stderr
    p = vmblock_server.cli("config", "set", "store.capacity_size", "1P", check=False)
    assert p.returncode == 2 and "over the largest" in p.stderr, p.stderr


# ---- types and lengths through the admin socket -------------------------------------------

BAD_CALLS = [
    ("config", "set", {"key": "iscsi.portals", "value": 123}, "value must be a string"),
    ("config", "set", {"key": ACL_KEY, "value": ["iqn.2026-11.x:a"]},
     "value must be a string, not an array"),
    ("config", "set", {"key": CHAP_KEY, "value": 123456789012345}, "value must be a string"),
    ("config", "set", {"key": "iscsi.portals", "value": "127.0.0.1:3260\n"}, "control characters"),
    ("vm", "set", {"name": "web", "guest_os": {"nested": [1, 2]}}, "guest_os must be a string"),
    ("vm", "set", {"name": "web", "location": 5}, "location must be a string, not a number"),
    ("vm", "set", {"name": "web", "active": "no"}, "active must be true or false"),
    ("vm", "set", {"name": "web", "active": 0}, "active must be true or false"),
    ("vm", "set", {"name": "web", "guest_os": "x" * 500_000}, "over the 256 allowed"),
    ("vm", "create", {"name": "n", "guest_os": "\ud800"}, "not valid Unicode"),
    ("vm", "create", {"name": ["web"]}, "name must be a string"),
    ("vm", "create", {"name": "n", "colour": "red"}, "unknown argument 'colour'"),
    ("vm", "delete", {"name": "web", "purge": "yes"}, "purge must be true or false"),
    ("vdisk", "create", {"name": "d"}, "missing argument 'size'"),
    ("vdisk", "create", {"name": "d", "size": True}, "size must be a size"),
    ("vdisk", "create", {"name": "d", "size": 1.5e9}, "size must be a size"),
    ("vdisk", "create", {"name": "d", "size": -512}, "size must not be negative"),
    ("vdisk", "create", {"name": "d", "size": 1 << 60}, "over the largest vdisk"),
    ("vdisk", "move", {"name": "d", "tier": "tape"}, "tier must be one of capacity, flash"),
    ("event", "list", {"limit": -1}, "limit must be from 0"),
    ("event", "list", {"limit": 1 << 70}, "limit must be from 0"),
    ("group", "create", {"name": "g", "priority": 1 << 64}, "priority must be from"),
    ("group", "create", {"name": "g", "pinned": "no"}, "pinned must be true or false"),
    ("config", "get", {"key": None}, "key must be a string, not null"),
]


@pytest.mark.parametrize("group, verb, kwargs, message", BAD_CALLS)
def test_bad_argument_is_a_json_400_and_nothing_is_stored(served, group, verb, kwargs, message):
    c = AdminClient(served.socket_path)
    c.vm_create(name="web")
    config = c.config_list()            # a new pool's: its default target's CHAP keys
    status, reply = admin_post(served.socket_path, f"/v1/{group}/{verb}",
                         json.dumps(kwargs).encode())
    assert (status, reply["kind"]) == (400, "InvalidArgument"), reply
    assert message in reply["error"] and len(reply["error"]) < 300, reply["error"]
    vm = c.vm_show(name="web")
    assert (vm["guest_os"], vm["location"], vm["active"]) == ("", "", False)
    assert c.config_list() == config
    assert [v["name"] for v in c.vm_list()] == ["web"]


@pytest.mark.parametrize("group, verb, kwargs, message", BAD_CALLS)
def test_bad_argument_is_refused_alike_without_a_server(tmp_path, group, verb, kwargs, message):
    pool = Pool(str(tmp_path / "pool"), create=True)
    try:
        c = LocalClient(Api(pool))
        c.vm_create(name="web")
        config = pool.config()
        with pytest.raises(InvalidArgument) as e:
            c.call(group, verb, **kwargs)
        assert message in str(e.value)
        assert pool.config() == config and pool.vm("web").guest_os == ""
    finally:
        pool.close()


def test_every_error_reply_is_json(served):
    sock = served.socket_path
    assert admin_post(sock, "/v1/vm/list", b"", method="GET")[0] == 405
    assert admin_post(sock, "/nowhere", b"{}")[0] == 404
    assert admin_post(sock, "/v1/vm/explode", b"{}")[0] == 404
    assert admin_post(sock, "/v1/vm/list", b"\xff\xfe")[0] == 400
    assert admin_post(sock, "/v1/vm/list", b"[" * 100_000 + b"]" * 100_000)[0] == 400
    status, reply = admin_post(sock, "/v1/vm/create", json.dumps({"name": "x" * (2 << 20)}).encode())
    assert status == 413 and reply["error"]
    assert admin_post(sock, "/v1/vm/list", b"{}")[0] == 200


def test_unexpected_failure_is_a_logged_json_500(served, caplog):
    """A damaged record (a VM without a name) is a server-side failure, not a bad request."""
    served.write_records({"vm/broken": {"uuid": "broken"}})
    status, reply = admin_post(served.socket_path, "/v1/vm/list", b"{}")
    assert (status, reply["kind"]) == (500, "InternalError"), reply
    assert "TypeError" in reply["error"] and "server log" in reply["error"]
    assert any("admin request POST /v1/vm/list failed" in r.getMessage()
               for r in caplog.records)


def test_every_error_class_round_trips(served):
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    kinds = set(subclasses(VmblockError))
    assert {CacheError, TraceError} <= kinds
    for cls in kinds:
        again = VmblockError.from_json(cls("x").to_json())
        assert type(again) is cls and str(again) == "x"
    c = AdminClient(served.socket_path)
    with pytest.raises(CacheError, match=r"not between 0 and 1 \(0% and 100%\)"):
        c.group_create(name="g", min="200%")


def test_every_error_class_round_trips_in_a_process_that_imported_only_errors():
    """A client that never imported the module raising an error (a CLI command does not load
    the cache) still rebuilds its class from the server's reply: all of them are defined in
    vmblock.errors. Every subclass the whole package defines is tried."""
    import vmblock.cli  # noqa: F401  (and so admin, meta, cache, ...: every error class)
    import vmblock.server  # noqa: F401

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    kinds = sorted({c.__name__ for c in subclasses(VmblockError)} | {"VmblockError"})
    script = ("import json, sys\n"
              "from vmblock.errors import VmblockError\n"
              "for kind in json.loads(sys.argv[1]):\n"
              "    e = VmblockError.from_json(VmblockError.from_json("
              "{'kind': kind, 'error': 'x'}).to_json())\n"
              "    print(type(e).__name__, str(e))\n"
              "assert not [m for m in sys.modules if m.startswith(('vmblock.cache', "
              "'vmblock.admin', 'vmblock.meta'))]\n")
    p = subprocess.run([sys.executable, "-c", script, json.dumps(kinds)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [f"{kind} x" for kind in kinds]


def test_group_shares_have_one_meaning(run):
    """``--min 0.1`` and ``--min 10%`` are both a tenth of the cache, as ``min=0.1`` is in a
    replay ``--group``; ``--min 10`` is refused rather than read as 10% or as 1000%."""
    run("group", "create", "a", "--min", "0.1", "--max", "60%")
    run("group", "create", "b", "--min", "10%", "--max", "0.6")
    shown = {g["name"]: (g["min_pct"], g["max_pct"])
             for g in json.loads(run("group", "list", "--json").stdout)}
    assert shown["a"] == shown["b"] == (10.0, 60.0)
    for args in (["create", "c", "--min", "10"], ["set", "a", "--max", "60"]):
        assert "is over 1: write" in error_line(run("group", *args, code=2))
    assert "write 10% or 0.1" in error_line(run("group", "create", "c", "--min", "ten", code=2))
    assert parse_group("c:min=0.1").min == parse_group("c:min=10%").min == 0.1
    with pytest.raises(CacheError, match="write 10% for a percentage"):
        parse_group("c:min=10")


def test_schema_matches_every_verb():
    """Each verb's schema names exactly its parameters: required ones have no default, the
    ones that may be null default to None (also in the server's overrides)."""
    for (group, verb), v in VERBS.items():
        table = v.args
        parts = {"cache": (CacheVerbs,), "hypervisor": (HypervisorVerbs,),
                 "datastores": (DatastoreVerbs,), "stats": (StatsVerbs,)}
        for cls in ((Api, LiveApi) if not v.part else parts[v.part]):
            params = dict(inspect.signature(getattr(cls, v.method)).parameters)
            params.pop("self")
            assert set(params) == set(table), (cls.__name__, group, verb)
            for name, p in params.items():
                assert table[name].required == (p.default is p.empty), (group, verb, name)
                if table[name].null:
                    assert p.default is None, (group, verb, name)


def test_tier_path_must_exist_and_cannot_move_a_tier_with_data(run, tmp_path):
    other = tmp_path / "other-capacity"
    other.write_bytes(b"")
    run("vdisk", "create", "d", "--size", "1M")
    for bad in ("relative/capacity", str(tmp_path), str(tmp_path / "no-dir" / "capacity")):
        assert "absolute path of a file or block device" in error_line(
            run("config", "set", "store.capacity_path", bad, code=2))
    run("config", "set", "store.flash_path", str(other))      # the flash tier holds nothing
    run("config", "set", "store.flash_path", str(tmp_path / "new-flash"))   # created at start
    run("config", "unset", "store.flash_path")
    pool = Pool(str(run.pool))
    try:
        disk = pool.vdisk("d")
        store = pool.open_store(disk)
        store.write(0, memoryview(b"\x01" * 512))
        store.flush()
    finally:
        pool.close()
    assert "cannot change while the capacity tier holds data" in error_line(
        run("config", "set", "store.capacity_path", str(other), code=2))
    assert set_keys(run) == {}


@pytest.mark.parametrize("key, value", [
    ("store.commit_interval", "inf"), ("store.commit_interval", "1e308"),
    ("iscsi.nop_interval", "nan"), ("iscsi.nop_timeout", "86401"),
])
def test_seconds_keys_are_finite_and_at_most_a_day(run, key, value):
    run("vm", "create", "v")
    assert "number of seconds from 0 to 86400" in error_line(
        run("config", "set", key, value, code=2))


def test_unset_is_refused_when_the_default_clashes_with_what_stays(run):
    """Found by the admin fuzz: unset brought back a default that did not go with the keys
    still set, and the next start refused to serve."""
    run("config", "set", "iscsi.FirstBurstLength", "65536")
    run("config", "set", "iscsi.MaxBurstLength", "65536")
    assert "cannot unset iscsi.FirstBurstLength: bad iSCSI negotiation setting: " \
           "FirstBurstLength must not exceed MaxBurstLength" in error_line(
               run("config", "unset", "iscsi.FirstBurstLength", code=2))
    run("config", "set", "store.flash_size", "2G")
    run("config", "set", "cache.size", "1536M")
    assert "cannot unset store.flash_size: cache.size '1536M' is larger than the flash tier" \
        in error_line(run("config", "unset", "store.flash_size", code=2))
    assert set_keys(run) == {
        "iscsi.FirstBurstLength": "65536", "iscsi.MaxBurstLength": "65536",
        "store.flash_size": "2G", "cache.size": "1536M"}
    run("config", "unset", "cache.size")
    run("config", "unset", "store.flash_size")
    run("config", "unset", "iscsi.MaxBurstLength")
    run("config", "unset", "iscsi.FirstBurstLength")
    run("pool", "show")
