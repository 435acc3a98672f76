"""Events that reach someone, on a live server driven by qemu-io: an ``events.exec`` script, a
webhook (a small aiohttp server here) and ``events --follow`` all get ``vm_space_hog`` naming
the VM that filled the pool; a hook that hangs slows neither I/O nor the admin API; space
quota and snapshot schedule through real initiators."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading

import pytest
from aiohttp import web

from support.clients import cli_json, qemu_io
from support.server import run_cli, vmblock_cmd
from vmblock.admin.api import Api
from vmblock.meta.pool import Pool
from support.waiting import until

# generous bounds for things that happen in the background; a pass never waits them out
DELIVERY_WAIT = 60.0
HOOK = """import json, sys
event = json.load(sys.stdin)
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(event) + "\\n")
if len(sys.argv) > 2:
    open(sys.argv[2]).read()        # a FIFO: blocks until the test writes to it
"""




class Webhook:
    """An aiohttp server in a thread that keeps every JSON body POSTed to /hook."""

    def __init__(self):
        self.received: queue.Queue = queue.Queue()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready):
        async def hook(request):
            self.received.put(await request.json())
            return web.Response(text="ok")

        async def start():
            app = web.Application()
            app.router.add_post("/hook", hook)
            self.runner = web.AppRunner(app)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Follower:
    """``vmblock events --follow --json`` in the background, its lines in a queue."""

    def __init__(self, pool, *args):
        self.proc = subprocess.Popen(vmblock_cmd(pool, "events", "--follow", "--json", *args),
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.lines: queue.Queue = queue.Queue()
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, timeout: float = DELIVERY_WAIT) -> dict:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"events --follow printed nothing in {timeout} s "
                        f"({self.proc.poll()=})")

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.reader.join(10)
        self.proc.stdout.close()


def new_pool(tmp_path, config: dict[str, str]):
    pool = tmp_path / "pool"
    run_cli(pool, "vm", "create", "web")
    run_cli(pool, "vm", "create", "db")
    for key, value in config.items():
        run_cli(pool, "config", "set", key, value)
    return pool


def lun_of(server, vdisk: str) -> str:
    return server.url(cli_json(server, "vdisk", "show", vdisk)["lun"])


def hook_lines(path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


def test_space_hog_reaches_exec_webhook_and_follow(tmp_path, start_server):
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    got = tmp_path / "got.jsonl"
    webhook = Webhook()
    try:
        pool = new_pool(tmp_path, {
            "store.capacity_size": "128M", "events.check_interval": "0.2",
            "events.exec": f"{sys.executable} {hook} {got}", "events.webhook": webhook.url})
        server = start_server(pool=pool)
        server.cli("vdisk", "create", "web-0", "--size", "96M", "--vm", "web")
        server.cli("vdisk", "create", "db-0", "--size", "32M", "--vm", "db")
        follow = Follower(pool, "--kind", "vm_space_hog")
        until("follower", lambda: follow.proc.poll() is None and
                 cli_json(server, "events") is not None)
        qemu_io(lun_of(server, "db-0"), "write -P 1 0 8M")            # 6%: no hog
        qemu_io(lun_of(server, "web-0"), "write -P 2 0 48M")           # 37.5% > 30%
        ev = follow.next()
        assert (ev["kind"], ev["vm"], ev["severity"]) == ("vm_space_hog", "web", "warning")
        assert "web" in ev["advice"] and ev["id"].endswith("/vm_space_hog")
        assert set(ev) >= {"id", "time", "kind", "severity", "vm", "message", "advice"}
        hooked = until("events.exec delivery", lambda: [
            e for e in hook_lines(got) if e["kind"] == "vm_space_hog"])
        assert [e["vm"] for e in hooked] == ["web"] and hooked[0]["id"] == ev["id"]
        posted = webhook.received.get(timeout=DELIVERY_WAIT)
        while posted["kind"] != "vm_space_hog":
            posted = webhook.received.get(timeout=DELIVERY_WAIT)
        assert posted == hooked[0]
        # once per crossing: more writes while still a hog raise nothing new
        qemu_io(lun_of(server, "web-0"), "write -P 3 48M 8M")
        listed = cli_json(server, "events", "--kind", "vm_space_hog")
        assert [e["vm"] for e in listed] == ["web"]
        follow.close()
        # ack
        server.cli("events", "ack", ev["id"])
        assert cli_json(server, "events", "--kind", "vm_space_hog")[0]["acked"]
        bad = server.cli("events", "ack", "00000000000000000001/nothing", check=False)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    finally:
        webhook.close()


def test_hanging_hook_slows_neither_io_nor_the_admin_api(tmp_path, start_server):
    hook = tmp_path / "hook.py"
    hook.write_text(HOOK)
    got = tmp_path / "got.jsonl"
    fifo = tmp_path / "release"
    os.mkfifo(fifo)
    pool = new_pool(tmp_path, {"events.exec": f"{sys.executable} {hook} {got} {fifo}",
                               "events.exec_timeout": "1h",
                               "events.webhook": "http://127.0.0.1:9/unreachable"})
    server = start_server(pool=pool)
    server.cli("vdisk", "create", "web-0", "--size", "16M", "--vm", "web")
    server.cli("vm", "set", "web", "--space-quota", "1M")
    url = lun_of(server, "web-0")
    qemu_io(url, "write -P 1 0 1M")
    out = qemu_io(url, "write -P 1 1M 64K", check=False)             # over: vm_quota
    assert "No space left" in out or "failed" in out.lower(), out
    until("the hook to start", lambda: hook_lines(got))         # it now blocks on the FIFO
    # the hook hangs and the webhook is unreachable: I/O and the admin API go on
    qemu_io(url, "write -P 7 0 512K", "read -P 7 0 512K")
    qemu_io(server.url(0), "write -P 9 0 4M", "read -P 9 0 4M")
    assert [v["name"] for v in cli_json(server, "vm", "list")] == ["db", "demo", "web"]
    assert cli_json(server, "events", "--kind", "vm_quota")[0]["vm"] == "web"
    assert len(hook_lines(got)) == 1                                 # still blocked
    with open(fifo, "w") as f:                                       # release it
        f.write("go\n")
    assert hook_lines(got)[0]["kind"] == "vm_quota"


def test_space_quota_through_qemu_io(tmp_path, start_server):
    pool = new_pool(tmp_path, {})
    server = start_server(pool=pool)
    server.cli("vdisk", "create", "web-0", "--size", "64M", "--vm", "web")
    server.cli("vdisk", "create", "db-0", "--size", "64M", "--vm", "db")
    shown = cli_json(server, "vm", "set", "web", "--space-quota", "2M")
    assert shown["policies"]["space_quota"] == 2 << 20 and shown["qos"] == {}
    web, db = lun_of(server, "web-0"), lun_of(server, "db-0")
    qemu_io(web, "write -P 1 0 2M")
    out = qemu_io(web, "write -P 2 2M 64K", check=False)
    assert "No space left on device" in out, out
    assert "DATA PROTECTION(7)" in out and "(0x2707)" in out, out   # qemu prints the sense
    out = qemu_io(web, "write -P 2 8M 4K", check=False)
    assert "No space left on device" in out, out
    qemu_io(web, "write -P 3 0 64K", "read -P 3 0 64K", "read -P 1 64K 1M")   # overwrite, read
    qemu_io(db, "write -P 4 0 8M", "read -P 4 0 8M")                 # another VM: unaffected
    qemu_io(web, "discard 1M 1M")                                    # UNMAP frees charge
    qemu_io(web, "write -P 5 2M 64K", "read -P 5 2M 64K")
    quota = [e for e in cli_json(server, "events") if e["kind"] == "vm_quota"]
    assert len(quota) == 1 and quota[0]["vm"] == "web"               # once per crossing
    # a snapshot holds its AUs: copy-on-write of them needs room under the quota
    server.cli("vm", "snapshot", "web", "--name", "s1")
    out = qemu_io(web, "write -P 6 0 1M", check=False)
    assert "No space left on device" in out, out
    shown = cli_json(server, "vm", "show", "web")
    assert shown["policies"]["space_charged_bytes"] <= 2 << 20
    shown = cli_json(server, "vm", "set", "web", "--space-quota", "none")
    assert "space_quota" not in shown["policies"]
    qemu_io(web, "write -P 6 0 1M", "read -P 6 0 1M")


def test_snapshot_schedule_through_a_live_server(tmp_path, start_server):
    pool = new_pool(tmp_path, {})
    server = start_server(pool=pool)
    server.cli("vdisk", "create", "web-0", "--size", "16M", "--vm", "web")
    server.cli("vdisk", "create", "web-1", "--size", "16M", "--vm", "web")
    url = lun_of(server, "web-0")
    qemu_io(url, "write -P 1 0 1M")
    server.cli("vm", "snapshot", "web", "--name", "manual")
    shown = cli_json(server, "vm", "set", "web", "--snapshot-every", "1s", "--snapshot-keep", "2")
    assert shown["policies"] == {"snapshot_every": 1, "snapshot_keep": 2}
    seen: set[str] = set()

    def autos():
        snaps = cli_json(server, "snapshot", "list", "--vm", "web")
        names = [s["name"] for s in snaps if s["name"].startswith("auto-")]
        seen.update(names)
        return names if len(seen) >= 4 and len(names) == 2 else None
    names = until("four automatic snapshots", autos)
    assert names == sorted(seen)[-2:]                                # the newest two kept
    snaps = cli_json(server, "snapshot", "list", "--vm", "web")
    assert "manual" in [s["name"] for s in snaps]
    auto = [s for s in snaps if s["name"] == names[-1]][0]
    assert auto["kind"] == "vm" and sorted(d["name"] for d in auto["disks"]) == ["web-0", "web-1"]
    server.cli("vm", "set", "web", "--snapshot-every", "none")
    assert "snapshot_every" not in cli_json(server, "vm", "show", "web")["policies"]


@pytest.mark.parametrize("args, words", [
    (("ghost", "--space-quota", "1G"), "no VM named 'ghost'"),
    (("web", "--space-quota", "-1G"), "bad --space-quota"),
    (("web", "--space-quota", "100P"), "over the largest"),
    (("web", "--snapshot-every", "5x"), "bad --snapshot-every"),
    (("web", "--snapshot-every", "0.5s"), "bad --snapshot-every"),
    (("web", "--snapshot-every", "400d"), "must be from 1 s"),
    (("web", "--snapshot-keep", "-3", "--snapshot-every", "1h"), "--snapshot-keep must be"),
    (("web", "--snapshot-keep", "5"), "needs a schedule"),
    (("web", "--space-quota", "1G", "--snapshot-every", "1w"), "bad --snapshot-every"),
])
def test_bad_policy_values_are_one_line_exit_2_and_change_nothing(tmp_path, start_server,
                                                                   args, words):
    server = start_server(pool=new_pool(tmp_path, {}))
    before = cli_json(server, "vm", "show", "web")
    r = server.cli("vm", "set", *args, check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert words in r.stderr
    assert cli_json(server, "vm", "show", "web") == before


def test_no_new_vms_while_space_is_low(tmp_path, start_server):
    pool = new_pool(tmp_path, {"store.capacity_size": "64M", "events.refuse_new_at": "25%"})
    server = start_server(pool=pool)
    assert cli_json(server, "pool", "show")["accepting_new_vms"] is True
    server.cli("vdisk", "create", "web-0", "--size", "32M", "--vm", "web")
    qemu_io(lun_of(server, "web-0"), "write -P 1 0 24M")
    shown = cli_json(server, "pool", "show")
    assert shown["accepting_new_vms"] is False and "refuse_new_at" in \
        shown["accepting_new_vms_reason"]
    r = server.cli("vdisk", "create", "db-0", "--size", "8M", "--vm", "db", check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "--force" in r.stderr
    r = server.cli("vm", "clone", "web", "--name", "web2", "--live", check=False)
    assert r.returncode == 2 and "--force" in r.stderr
    assert "db-0" not in [d["name"] for d in cli_json(server, "vdisk", "list")]
    server.cli("vdisk", "create", "db-0", "--size", "8M", "--vm", "db", "--force")
    server.cli("vm", "clone", "web", "--name", "web2", "--live", "--force")


def test_flash_hog_is_named_while_another_vm_of_its_group_misses(tmp_path, start_server):
    pool = new_pool(tmp_path, {"cache.size": "8M", "events.check_interval": "0.2"})
    server = start_server(pool=pool)
    server.cli("vdisk", "create", "web-0", "--size", "16M", "--vm", "web")
    server.cli("vdisk", "create", "db-0", "--size", "16M", "--vm", "db")
    web, db = lun_of(server, "web-0"), lun_of(server, "db-0")
    qemu_io(web, "write -P 1 0 6M")
    qemu_io(db, "write -P 2 0 12M")
    for _ in range(3):                          # web's blocks hot: they stay in the cache
        qemu_io(web, "read -P 1 0 6M", cache="none")

    def flash_hog():
        qemu_io(db, "read -P 2 0 12M", cache="none")               # db keeps missing
        return [e for e in cli_json(server, "events") if e["kind"] == "vm_flash_hog"]
    found = until("vm_flash_hog", flash_hog)
    assert [e["vm"] for e in found] == ["web"]
    assert "db" in found[0]["message"] and "eviction group" in found[0]["advice"]


def test_space_quota_holds_with_worker_processes(tmp_path, start_server):
    # a worker writes in place only over owned AUs; every allocation is forwarded to the owner,
    # whose store checks the quota
    pool = new_pool(tmp_path, {"server.workers": "1", "cache.size": "0"})
    server = start_server(pool=pool)
    server.cli("vdisk", "create", "web-0", "--size", "64M", "--vm", "web")
    server.cli("vm", "set", "web", "--space-quota", "1M")
    web = lun_of(server, "web-0")
    qemu_io(web, "write -P 1 0 1M")
    out = qemu_io(web, "write -P 2 1M 64K", check=False)
    assert "No space left on device" in out, out
    qemu_io(web, "write -P 3 0 64K", "read -P 3 0 64K", "read -P 1 64K 960K")   # in place
    qemu_io(server.url(0), "write -P 4 0 4M", "read -P 4 0 4M")                # demo VM
    assert [e["vm"] for e in cli_json(server, "events", "--kind", "vm_quota")] == ["web"]


def test_a_follower_does_not_hold_up_the_servers_shutdown(tmp_path, start_server):
    server = start_server(pool=new_pool(tmp_path, {}))
    server.cli("vdisk", "create", "web-0", "--size", "16M", "--vm", "web")
    server.cli("vm", "set", "web", "--space-quota", "64K")
    qemu_io(lun_of(server, "web-0"), "write 0 128K", check=False)      # a vm_quota event
    follow = Follower(server.pool, "--since", "1h")
    assert follow.next()["kind"] == "vm_quota"     # printed: its long poll comes next
    assert server.stop() == 0          # SIGTERM answered cleanly, not killed after 20 s
    assert follow.proc.wait(30) == 2   # one error line: the server went away
    follow.close()


def test_schedule_survives_a_restart_and_takes_a_missed_slot_once(tmp_path, start_server):
    pool = new_pool(tmp_path, {})
    run_cli(pool, "vdisk", "create", "web-0", "--size", "16M", "--vm", "web")
    # the state a server stopped for years leaves: its last automatic snapshot (taken as the
    # schedule takes them: the CLI refuses such a name), and the policy
    assert "snapshot schedule's" in run_cli(pool, "vm", "snapshot", "web", "--name",
                                            "auto-20200101T000000Z", check=False).stderr
    meta = Pool(str(pool))
    Api(meta).take_vm_snapshot("web", "auto-20200101T000000Z")
    meta.close()
    run_cli(pool, "vm", "set", "web", "--snapshot-every", "1h", "--snapshot-keep", "24")
    server = start_server(pool=pool)

    def autos():
        names = [s["name"] for s in cli_json(server, "snapshot", "list", "--vm", "web")]
        return names if len(names) >= 2 else None
    names = until("the missed slot's snapshot", autos)
    assert len(names) == 2 and names[0] == "auto-20200101T000000Z"   # once, not per slot
    refused = server.cli("vm", "snapshot", "web", "--name", "auto-20210101T000000Z", check=False)
    assert refused.returncode == 2 and "snapshot schedule's" in refused.stderr
    qemu_io(lun_of(server, "web-0"), "write -P 1 0 64K")
    server.stop()
    server = start_server(pool=pool)           # not due again for an hour: nothing new
    assert cli_json(server, "vm", "show", "web")["policies"]["snapshot_every"] == 3600
    assert [s["name"] for s in cli_json(server, "snapshot", "list", "--vm", "web")] == names
