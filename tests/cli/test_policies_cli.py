"""``vm set`` policies, ``vm clone --no-policies`` and ``events`` on a pool with no server."""

import json

from support.clients import error_line


def test_policies_set_shown_cleared_and_inherited_without_a_server(run):
    run("vm", "create", "web")
    run("vdisk", "create", "web-0", "--size", "64M", "--vm", "web")
    v = json.loads(run("vm", "set", "web", "--space-quota", "64G", "--snapshot-every", "1h",
                       "--json").output)
    assert v["policies"]["space_quota"] == 64 << 30
    assert v["policies"]["snapshot_every"] == 3600 and v["policies"]["snapshot_keep"] == 24
    assert v["qos"] == {}
    run("vm", "clone", "web", "--name", "web2", "--live")
    run("vm", "clone", "web", "--name", "web3", "--live", "--no-policies")
    shown = {n: json.loads(run("vm", "show", n, "--json").output)["policies"]
             for n in ("web", "web2", "web3")}
    assert shown["web2"]["space_quota"] == 64 << 30 and shown["web3"] == {}
    run("vm", "set", "web", "--space-quota", "none", "--snapshot-every", "none")
    assert json.loads(run("vm", "show", "web", "--json").output)["policies"] == {}


def test_bad_values_change_nothing(run):
    run("vm", "create", "web")
    run("vm", "set", "web", "--space-quota", "1G")
    r = run("vm", "set", "web", "--space-quota", "2G", "--snapshot-every", "soon", code=2)
    assert "bad --snapshot-every" in error_line(r)
    assert json.loads(run("vm", "show", "web", "--json").output)["policies"]["space_quota"] \
        == 1 << 30
    r = run("vm", "set", "web", "--space-quota", "1K", code=2)
    assert "below one allocation unit" in error_line(r)
    r = run("vm", "set", "web", "--space-quota", "-1G", code=2)
    assert "bad --space-quota '-1G'" in error_line(r)              # as typed
    for bad in ("5x", "-1h", "1.5.3m", "1.5h", "0s"):
        r = run("vm", "set", "web", "--snapshot-every", bad, code=2)
        assert f"--snapshot-every '{bad}'" in error_line(r)
    assert json.loads(run("vm", "show", "web", "--json").output)["policies"] == \
        {"space_quota": 1 << 30, "space_charged_bytes": 0, "space_quota_reached": False}


def test_follow_needs_a_server_and_bad_since_is_refused(run):
    run("vm", "create", "web")
    r = run("events", "--follow", code=2)
    assert "no server is running" in error_line(r)
    r = run("events", "--since", "yesterday-ish", code=2)
    assert "--since" in r.output
    r = run("events", "ack", "nonsense", code=2)
    assert "bad event id" in error_line(r)
    assert json.loads(run("events", "--since", "1h", "--json").output) == []
