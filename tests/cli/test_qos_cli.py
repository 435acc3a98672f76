"""``vm set`` QoS options on a pool with no server: stored, shown under ``qos``, cleared,
inherited by clones; bad input is one line, exit 2, nothing changed."""

import json

import pytest
from support.clients import error_line


def show(run, name: str) -> dict:
    return json.loads(run("vm", "show", name, "--json").output)


def test_qos_set_shown_cleared_and_inherited(run):
    run("vm", "create", "web")
    run("vdisk", "create", "web-0", "--size", "64M", "--vm", "web")
    v = json.loads(run("vm", "set", "web", "--max-iops", "1500", "--max-mbps", "200",
                       "--min-iops", "100", "--shares", "3", "--json").output)
    assert v["qos"] == {"max_iops": 1500, "max_mbps": 200, "min_iops": 100, "shares": 3}
    assert "qos:" in run("vm", "show", "web").output
    run("vm", "clone", "web", "--name", "web2", "--live")
    run("vm", "clone", "web", "--name", "web3", "--live", "--no-policies")
    assert show(run, "web2")["qos"] == v["qos"] and show(run, "web3")["qos"] == {}
    run("vm", "set", "web", "--max-iops", "0", "--shares", "none")
    assert show(run, "web")["qos"] == {"max_mbps": 200, "min_iops": 100}
    run("vm", "set", "web", "--max-mbps", "none", "--min-iops", "0")
    assert show(run, "web")["qos"] == {} and "qos" not in show(run, "web")["policies"]


@pytest.mark.parametrize("args, words", [
    (("ghost", "--max-iops", "100"), "no VM named 'ghost'"),
    (("web", "--max-iops", "-5"), "--max-iops must be a whole number"),
    (("web", "--max-iops", "1e12"), "--max-iops must be a whole number"),
    (("web", "--max-iops", "99999999999"), "from 1 to 10000000"),
    (("web", "--max-mbps", "fast"), "--max-mbps must be"),
    (("web", "--shares", "100000"), "--shares must be"),
    (("web", "--min-iops", "2000"), "above --max-iops 1000"),
    (("web", "--min-iops", "500", "--max-iops", "400"), "above --max-iops 400"),
    (("web", "--shares", "2", "--max-iops", "1.5"), "--max-iops must be"),
])
def test_bad_qos_values_are_one_line_exit_2_and_change_nothing(run, args, words):
    run("vm", "create", "web")
    run("vm", "set", "web", "--max-iops", "1000")
    before = show(run, "web")
    r = run("vm", "set", *args, code=2)
    assert words in error_line(r), r.output
    assert show(run, "web") == before


def vdisk_qos(run, name: str) -> dict:
    return json.loads(run("vdisk", "show", name, "--json").output)["qos"]


def test_vdisk_qos_set_shown_cleared_inherited_and_checked(run):
    run("vm", "create", "web")
    run("vdisk", "create", "web-0", "--size", "64M", "--vm", "web")
    run("vdisk", "create", "web-1", "--size", "64M", "--vm", "web")
    d = json.loads(run("vdisk", "set", "web-0", "--max-iops", "500", "--shares", "2",
                       "--json").output)
    assert d["qos"] == {"max_iops": 500, "shares": 2} and vdisk_qos(run, "web-1") == {}
    run("vm", "clone", "web", "--name", "web2", "--live")
    run("vm", "clone", "web", "--name", "web3", "--live", "--no-policies")
    clones = {c: {d["name"]: vdisk_qos(run, d["name"])
                  for d in show(run, c)["vdisks"]} for c in ("web2", "web3")}
    assert sorted(clones["web2"].values(), key=len) == [{}, {"max_iops": 500, "shares": 2}]
    assert list(clones["web3"].values()) == [{}, {}]
    r = run("vdisk", "set", "web-0", "--min-iops", "600", code=2)
    assert "above --max-iops 500" in error_line(r)
    r = run("vdisk", "set", "ghost", "--max-iops", "5", code=2)
    assert "ghost" in error_line(r)
    r = run("vdisk", "set", "web-0", "--max-mbps", "-1", code=2)
    assert "--max-mbps must be" in error_line(r)
    assert vdisk_qos(run, "web-0") == {"max_iops": 500, "shares": 2}
    run("vdisk", "set", "web-0", "--max-iops", "none", "--shares", "0")
    assert vdisk_qos(run, "web-0") == {}


def test_a_vdisk_with_its_own_qos_is_its_own_flow(run):
    from vmblock.meta import Pool
    from vmblock.meta.policies import qos_config
    run("vm", "create", "web")
    run("vdisk", "create", "web-0", "--size", "64M", "--vm", "web")
    run("vdisk", "create", "web-1", "--size", "64M", "--vm", "web")
    run("vm", "set", "web", "--max-iops", "1000")
    run("vdisk", "set", "web-1", "--max-iops", "100")
    pool = Pool(run.pool)
    try:
        params, luns = qos_config(pool)
        d0, d1, vm = pool.vdisk("web-0"), pool.vdisk("web-1"), pool.vm("web")
        assert luns[(d0.target, d0.lun)] == vm.uuid
        assert luns[(d1.target, d1.lun)] == "vdisk:" + d1.uuid
        assert params[vm.uuid].limit == 1000 and params["vdisk:" + d1.uuid].limit == 100
    finally:
        pool.close()
