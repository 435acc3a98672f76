"""The admin API of a real ``vmblock serve``: deletes under logged-in initiators, and a fuzz.

The fuzz sends random verbs with random argument names, values and types (huge strings,
nested JSON, huge and negative numbers, non-JSON bodies) to the admin socket with raw HTTP.
Every reply must be JSON with a message and never a 500; afterwards the server still serves
the demo LUN to libiscsi and QEMU, ``pool check`` is clean, and a server restarted on the same
pool comes up with whatever the fuzz stored. Derandomized, so CI sees the same examples.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from support.clients import admin_post
from support.server import VmblockServer
from support.iscsi_client import IscsiClient, read10, tur, write10
from vmblock import DEFAULT_TARGET
from vmblock.admin.api import VERBS
from vmblock.settings import MAX_VDISK_BYTES

GOOD, CHECK_CONDITION = 0x00, 0x02
UNIT_ATTENTION, ILLEGAL_REQUEST, LOGICAL_UNIT_NOT_SUPPORTED = 0x06, 0x05, 0x25


def tur_past_unit_attentions(c: IscsiClient, lun: int) -> int:
    """TEST UNIT READY until it reports something other than a unit attention (a new nexus
    gets POWER ON OCCURRED first, SAM-5 5.14)."""
    for _ in range(4):
        r = c.scsi(tur(), lun=lun)
        if not (r.status == CHECK_CONDITION and r.sense[2] & 0x0F == UNIT_ATTENTION):
            return r.status
    raise AssertionError("unit attentions do not stop")


def in_use_line(disks: str) -> str:
    return (f"vmblock: error: vdisks {disks} are in use by iSCSI sessions; "
            f"log them out first or delete with --force\n")


@pytest.mark.timeout(120)
def test_delete_under_a_logged_in_initiator_needs_force(vmblock_server):
    s = vmblock_server
    s.cli("vm", "create", "busy")
    s.cli("vdisk", "create", "busy-0", "--size", "1M", "--vm", "busy")    # LUN 1
    s.cli("vdisk", "create", "lone", "--size", "1M")                      # LUN 2
    with IscsiClient(s.host, s.port) as c:
        assert c.login(DEFAULT_TARGET, chap=s.chap()).login_status == 0
        assert tur_past_unit_attentions(c, 1) == GOOD    # in full feature phase, LUN 1 seen
        for args, busy in ((("vm", "delete", "busy", "--purge"), "busy-0"),
                           (("vdisk", "delete", "busy-0"), "busy-0"),
                           (("vdisk", "delete", "lone"), "lone")):
            p = s.cli(*args, check=False)
            assert (p.returncode, p.stderr) == (2, in_use_line(busy)), args
        # refused means untouched: the initiator keeps writing and reading
        assert c.scsi(write10(0, 1), write=b"\xab" * 512, lun=1).status == GOOD
        r = c.scsi(read10(0, 1), read_len=512, lun=1)
        assert (r.status, r.data) == (GOOD, b"\xab" * 512)

        s.cli("vm", "delete", "busy", "--purge", "--force")
        s.cli("vdisk", "delete", "lone", "--force")
        for lun in (1, 2):
            r = c.scsi(read10(0, 1), read_len=512, lun=lun)
            assert r.status == CHECK_CONDITION
            assert (r.sense[2] & 0x0F, r.sense[12]) == (ILLEGAL_REQUEST,
                                                        LOGICAL_UNIT_NOT_SUPPORTED)
    assert [d["name"] for d in json.loads(s.cli("vdisk", "list", "--json").stdout)] == ["demo"]
    assert json.loads(s.cli("pool", "check", "--json").stdout)["ok"]


# ---- fuzz -----------------------------------------------------------------------------------

FUZZ_IQN = "iqn.2026-11.io.vmblock.test:fuzz"     # acl/auth keys of a target the demo is not on
HUGE = ["x" * 300_000, "\u00e9" * 5000, "\ud800", "a\x00b", "1" * 5000 + "G"]
# config keys with values that suit them, some at or past their limits
KEY_VALUES = {
    "iscsi.portals": ["127.0.0.1:3260", "[::1]:0", "0.0.0.0:99999", "a:b:c"],
    "iscsi.nop_interval": ["5", "0", "inf", "1e308", "nan", "-1"],
    "iscsi.nop_timeout": ["5", "86400", "86401"],
    "iscsi.MaxRecvDataSegmentLength": ["512", "16777215", "16777216", "511"],
    "iscsi.MaxBurstLength": ["65536", "0", "99999999999"],
    "iscsi.FirstBurstLength": ["65536", "1048576"],
    "iscsi.DefaultTime2Wait": ["0", "3600", "3601"],
    "store.capacity_size": ["16M", "64G", "16T", "17T", "1P", "0"],
    "store.flash_size": ["64M", "1G", "2G", "1P"],
    "store.capacity_path": ["", "/dev/null", "/tmp", "relative/path", "/no/such/file"],
    "store.flash_path": ["", "/dev/zero", "/etc"],
    "store.low_space_thresholds": ["80,90", "0", "101", "1" * 5000],
    "store.commit_interval": ["1", "0", "inf", "86400"],
    "cache.size": ["0", "50%", "100%", "150%", "512M", "2G", "999999999P", "nan%"],
    "cache.block_size": ["4K", "64K", "1M", "3K", "2M"],
    f"acl.{FUZZ_IQN}": ["iqn.2026-11.x:y", "iqn.2026-11.x:y,iqn.2026-11.x:z", "bad name"],
}
# auth.* keys are left out: a CHAP user stored without its secret (allowed, to set the pair in
# two steps) makes the next start refuse to serve, by design of the CHAP part of issue 8.
KEYS = list(KEY_VALUES)
VALUES = ["", "0", "-1", "1", "1M", "64K", "16M", "16T", "1P", "999999999P", "50%", "150%",
          "nan", "inf", "1e308", "127.0.0.1:3260", "[::1]:0", "iqn.2026-11.x:y", "/dev/null",
          "/tmp", "relative/path", "abc", "80,90", "4096"]
FLAG = [True, False]
# values of the right kind for each argument name ("demo" is never named: it must survive)
TAME_VALUES = {
    "name": ["fz", "fz0", "fz1", "fz2", "s1", "g1"], "new_name": ["fz2", "fz3", "fz"],
    "snapshot": ["s1", "s2", None], "vm": ["fz", "fz2", None], "vdisk": ["fz0", None],
    "target": [FUZZ_IQN, DEFAULT_TARGET, None], "to": ["default", "g1"],
    "size": ["1M", "2M", "64K", 1 << 20, "4M"], "key": KEYS, "value": VALUES,
    "tier": ["flash", "capacity"], "min": ["0%", "10%"], "max": ["50%", "100%"],
    "promote": ["read", "write", "never"], "kind": ["vm", "vdisk", None],
    "priority": [0, 5, -3], "limit": [0, 1, 100], "live": FLAG, "purge": FLAG,
    "force": FLAG, "active": FLAG, "pinned": FLAG, "guest_os": ["debian12", ""],
    "location": ["hv-a:/datastore1"], "group": ["default", "g1", None],
    "hypervisor": ["h1"], "uri": ["test:///default", "qemu+tcp://127.0.0.1:1/system"],
    "interval": ["1h", "30s"], "domain": ["test"], "disk": ["vda"], "switch": FLAG,
    "step": ["prepare", "copied", "finish", "abort"],
    "space_quota": ["1G", "none", "64K"], "snapshot_every": ["1h", "none", "30s"],
    "snapshot_keep": ["3", "none"], "since": [0, 1_700_000_000, None, "1h", "30m", "2d"],
    "id": ["00000000000000000001/low_space"], "cursor": [0, None], "timeout": [0, 1],
    "no_policies": FLAG,
    "max_iops": ["1500", "none", "0"], "max_mbps": ["100", "none"], "min_iops": ["10", "none"],
    "shares": ["3", "none", "1"],
    "read_only": FLAG, "removable": FLAG, "block_size": [512, 4096],
    "physical_block_size": [512, 4096],
}
# values of the right type but wrong otherwise
WRONG_VALUES = {
    "size": ["0", "-512", "1000", "128T", "1P", "999999999P", "1e9", -1, 0,
             MAX_VDISK_BYTES + 512, 1 << 80],
    "key": ["bogus.key", "acl.not-an-iqn", "store.", "auth.target..chap_secret"],
    "target": ["not-an-iqn"], "tier": ["tape"], "min": ["200%", "-1"], "max": ["x"],
    "promote": ["sometimes"], "kind": ["lun"], "priority": [-(1 << 40), 1 << 64],
    "limit": [-1, 1 << 70],
    "uri": ["not a uri", "qemu+tcp://u:pw@h/system"], "interval": ["0", "-1s", "forever"],
    "step": ["later"],
    "space_quota": ["-1G", "1K", "999999999P", "x"], "snapshot_every": ["0s", "5x", "1w"],
    "snapshot_keep": ["-1", "99999", "x"], "id": ["x", "1/2"],
    "since": [-1, 1 << 60, "soon", "-1h", "9999d", "1e400"],
    "max_iops": ["-1", "1.5", "1e400", "x"], "max_mbps": ["-5", "nan"],
    "min_iops": ["-1", "99999999999999"], "shares": ["-1", "0.5x"],
    "cursor": [-1, 1 << 70], "timeout": [-1, 31, 1 << 40],
    "block_size": [1024, 0, 8192], "physical_block_size": [1024, 0, 8192],
}
WRONG_TEXT = ["", ".hidden", "a/b", "nope"] + HUGE


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 30), 1 << 30),
                    st.sampled_from([-(1 << 63), 1 << 64, 1 << 200]), st.floats(),
                    st.text(max_size=30), st.sampled_from(HUGE))
ANY_JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def value_for(name: str, wild: bool):
    if wild:
        return ANY_JSON
    return st.one_of(*[st.sampled_from(TAME_VALUES[name])] * 9,
                     st.sampled_from(WRONG_VALUES.get(name, WRONG_TEXT)))


# every verb, the ones that store what they are given more often, and two that do not exist
VERB_MIX = (list(VERBS) + [("config", "set")] * 8 + [("vm", "set"), ("vm", "create"),
                                                     ("vdisk", "create"), ("group", "set")] * 2
            + [("vm", "explode"), ("x", "y")])


@st.composite
def requests(draw) -> tuple[str, bytes]:
    """(url path, body): mostly a real verb with a mix of its own and foreign arguments."""
    group, verb = draw(st.sampled_from(VERB_MIX))
    body_kind = draw(st.sampled_from(["args"] * 8 + ["raw", "not-object"]))
    if body_kind == "raw":
        return f"/v1/{group}/{verb}", draw(st.binary(max_size=64))
    if body_kind == "not-object":
        return f"/v1/{group}/{verb}", json.dumps(draw(ANY_JSON)).encode()
    table = VERBS[(group, verb)].args if (group, verb) in VERBS else {}
    # a wild call has values of any JSON type and foreign arguments; a tame one has values of
    # the right kind (some bad all the same) and mostly its required arguments, so it gets
    # past the type checks and changes the pool
    wild = draw(st.sampled_from([False, False, False, True]))
    chosen = [n for n, arg in table.items()
              if draw(st.integers(0, 9)) < (9 if arg.required else 4)]
    kwargs = {n: draw(value_for(n, wild)) for n in chosen}
    if (group, verb) == ("config", "set") and not wild and "key" in kwargs:
        kwargs["value"] = draw(st.sampled_from(KEY_VALUES.get(kwargs["key"], VALUES)))
    if wild and draw(st.booleans()):
        kwargs[draw(st.sampled_from(["force", "colour", "", "x" * 100]))] = draw(ANY_JSON)
    return f"/v1/{group}/{verb}", json.dumps(kwargs).encode()


ANSWERS = {200, 400, 404, 409, 413, 503, 507}    # 500 (a bug or a damaged pool) is a failure


def demo_is_served(server: VmblockServer) -> None:
    p = subprocess.run(["iscsi-inq", server.url(0)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "VMBLOCK" in p.stdout, p.stdout + p.stderr
    p = subprocess.run(["qemu-img", "info", "--output=json", "-f", "raw", server.url(0)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and json.loads(p.stdout)["virtual-size"] == 8 << 30, p.stderr
    check = json.loads(server.cli("pool", "check", "--json").stdout)
    assert check["ok"], check["errors"]


@pytest.mark.timeout(240)
def test_fuzzed_admin_calls_leave_a_server_that_serves_and_restarts(vmblock_server):
    s = vmblock_server
    sock = str(s.pool / "admin.sock")
    seen: dict[int, int] = {}
    s.cli("vm", "create", "fz")                  # objects for the verbs that need some
    s.cli("vdisk", "create", "fz0", "--size", "1M", "--vm", "fz")
    s.cli("vm", "snapshot", "fz", "--name", "s1")
    s.cli("group", "create", "g1", "--max", "50%")

    @settings(max_examples=500, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(requests())
    def fuzz(request):
        path, body = request
        status, reply = admin_post(sock, path, body)       # fails on any non-JSON reply
        assert status in ANSWERS, (path, body[:300], status, reply)
        seen[status] = seen.get(status, 0) + 1
        assert s.proc.poll() is None, s.log()[-3000:]

    fuzz()
    assert seen.get(200, 0) > 10 and seen.get(400, 0) > 10, seen     # both paths were driven
    demo_is_served(s)
    assert s.stop() == 0
    again = VmblockServer(s.pool)       # the same pool with everything the fuzz stored
    try:
        demo_is_served(again)
    finally:
        assert again.stop() == 0
