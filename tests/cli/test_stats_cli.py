"""``vmblock stats`` without a server: what the pool stored, and bad input as one line."""

from __future__ import annotations

import json

from support.clients import error_line


def test_stats_on_a_pool_without_a_server(run):
    run("vm", "create", "a")
    run("vdisk", "create", "a-disk", "--size", "1M", "--vm", "a")
    r = json.loads(run("stats", "--json").output)
    assert r["running"] is False and r["interval_s"] == 10
    [vm] = r["vms"]
    assert vm["name"] == "a" and vm["read_ops"] == vm["write_ops"] == 0
    assert r["vdisks"][0]["vm"] == "a" and r["pool"]["name"] == "pool"
    assert r["groups"][0]["name"] == "default"
    assert json.loads(run("stats", "--vm", "a", "--since", "2d", "--json").output)["vms"][0][
        "history"] == []
    assert run("stats", "--csv").output.splitlines()[0].startswith("kind,name,vm,t,")


def test_bad_stats_input_is_one_line(run):
    run("vm", "create", "a")
    for args, words in ((("--since", "soon"), "--since"), (("--since", "-1h"), "--since"),
                        (("--vm", "nope"), "nope"), (("--group", "nope"), "nope"),
                        (("--json", "--csv"), "exclude")):
        assert words in error_line(run("stats", *args, code=2))
    for value in ("0", "0.5", "2d", "x"):
        assert "stats.interval" in error_line(run("config", "set", "stats.interval", value,
                                                  code=2))
    for value in ("nohost", "127.0.0.1:99999"):
        assert "metrics.listen" in error_line(run("config", "set", "metrics.listen", value,
                                                  code=2))
    assert "running server" in error_line(run("stats-sample", code=2))
    assert "--png" in error_line(run("report", "--vm", "a", code=2))
