"""``Delivery`` on a real pool and event loop: syslog datagrams, an exec hook run once more
after a failure, a webhook retried after an error answer, followers woken with a cursor, the
store's events delivered in the record shape after their commit, retention."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from functools import partial

import pytest
import uvloop
from aiohttp import web

from support.stores import small_pool, store_of
from support.waiting import until_async
from vmblock.events.delivery import Delivery
from vmblock.meta import events as meta_events

BOUND = 30.0    # seconds a background delivery may take before the test fails
until = partial(until_async, bound=BOUND)


@pytest.fixture
def pool(tmp_path):
    pool = small_pool(tmp_path / "p", {"store.capacity_size": "4M",
                                       "store.low_space_thresholds": "50"}, {"d1": 8 << 20})
    yield pool
    pool.close()


def exec_delivered_once(pool, tmp_path) -> dict:
    """Record one event with a delivery running; the event, once the exec hook took it."""
    async def run():
        d = Delivery(pool, syslog_path=str(tmp_path / "none"))
        await d.start()
        ev = pool.record_event("vm_space_hog", "warning", "VM a is big", vm="a")
        await until("the exec hook delivered", lambda: d.counts["exec_delivered"] == 1)
        await d.stop()
        return ev
    return asyncio.run(run())


def test_syslog_gets_each_event_as_one_line(pool, tmp_path):
    path = str(tmp_path / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(BOUND)

    async def run():
        d = Delivery(pool, syslog_path=path)
        await d.start()
        pool.record_event("vm_quota", "error", "VM a at its quota", vm="a")
        await until("the event delivered", lambda: d.seq == 1)
        await d.stop()
    try:
        asyncio.run(run())
        line = sock.recv(4096).decode()
    finally:
        sock.close()
    assert line.startswith("<27>")          # facility daemon (3) * 8 + error (3)
    assert "vmblock: vm_quota error vm=a: VM a at its quota" in line


def test_exec_is_run_once_more_after_a_failure(pool, tmp_path):
    hook = tmp_path / "hook.py"
    got = tmp_path / "got"
    hook.write_text("import sys, os\n"
                    f"data = sys.stdin.read()\nopen({str(got)!r}, 'a').write(data)\n"
                    f"sys.exit(0 if os.path.getsize({str(got)!r}) > len(data) else 1)\n")
    pool.config_set("events.exec", f"{sys.executable} {hook}")
    ev = exec_delivered_once(pool, tmp_path)
    runs = [json.loads(line) for line in got.read_text().splitlines()]
    assert runs == [ev, ev]                 # failed (exit 1), then run once more


def test_exec_that_hangs_is_killed_at_its_timeout_and_retried(pool, tmp_path):
    hook = tmp_path / "hook.py"
    hook.write_text("import sys, time\nsys.stdin.read()\ntime.sleep(3600)\n")
    pool.config_set("events.exec", f"{sys.executable} {hook}")
    pool.config_set("events.exec_timeout", "0.2")

    async def run():
        d = Delivery(pool, syslog_path=str(tmp_path / "none"))
        await d.start()
        pool.record_event("vm_space_hog", "warning", "VM a is big", vm="a")
        await until("the hung exec hook killed", lambda: d.counts["exec_failed"] == 1)
        await d.stop()
    asyncio.run(run())


def test_webhook_is_retried_after_an_error_answer(pool, tmp_path):
    answers = [500, 200]
    got = []

    async def hook(request):
        got.append(await request.json())
        return web.Response(status=answers.pop(0))

    async def run():
        app = web.Application()
        app.router.add_post("/h", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        pool.config_set("events.webhook", f"http://127.0.0.1:{port}/h")
        d = Delivery(pool, syslog_path=str(tmp_path / "none"), backoff_first=0.01)
        await d.start()
        ev = pool.record_event("vm_quota", "error", "VM a at its quota", vm="a")
        await until("the webhook delivered", lambda: d.counts["webhook_delivered"] == 1)
        await d.stop()
        await runner.cleanup()
        return ev
    ev = asyncio.run(run())
    assert got == [ev, ev]


def test_followers_get_what_came_after_their_cursor(pool, tmp_path):
    async def run():
        d = Delivery(pool, syslog_path=str(tmp_path / "none"))
        await d.start()
        start = await d.wait(None, None, 0)
        waiter = asyncio.create_task(d.wait(start["cursor"], "vm_quota", 30))
        await asyncio.sleep(0)
        pool.record_event("vm_space_hog", "warning", "VM a is big", vm="a")
        ev = pool.record_event("vm_quota", "error", "VM a at its quota", vm="a")
        got = await asyncio.wait_for(waiter, BOUND)
        await d.stop()
        return ev, got
    ev, got = asyncio.run(run())
    assert got["events"][-1] == ev and all(e["kind"] == "vm_quota" for e in got["events"])
    assert got["missed"] == 0


def test_store_events_have_the_record_shape_and_are_delivered_after_commit(pool, tmp_path):
    seen = []
    pool.event_listeners.append(seen.append)
    store_of(pool).write(0, memoryview(b"x" * (3 << 20)))     # 75% of 4M: over 50%
    assert seen == []                                         # not committed yet
    pool.store.flush()
    low = [e for e in seen if e["kind"] == "low_space"]
    assert len(low) == 1
    assert set(low[0]) >= {"id", "time", "kind", "severity", "message", "advice"}
    assert low[0]["severity"] == "warning" and "capacity tier" in low[0]["message"]
    assert meta_events.list_events(pool, kind="low_space") == low


def test_retention_keeps_the_newest_and_ack_marks_one(pool):
    evs = [pool.record_event("vm_quota", "info", f"n{i}") for i in range(5)]
    assert meta_events.prune(pool, 3) == 2
    assert [e["message"] for e in meta_events.list_events(pool, 0)] == ["n2", "n3", "n4"]
    assert meta_events.ack(pool, evs[4]["id"])["acked"]
    assert meta_events.list_events(pool, 0)[-1]["acked"]
    assert meta_events.list_events(pool, 0, since=evs[3]["time"])[0]["message"] == "n3"


def test_exec_is_a_shell_command(pool, tmp_path):
    got = tmp_path / "events.jsonl"
    pool.config_set("events.exec", f"cat >> {got}")
    ev = exec_delivered_once(pool, tmp_path)
    assert [json.loads(line) for line in got.read_text().splitlines()] == [ev]


def test_a_syslog_socket_nobody_listens_on_is_skipped(pool, tmp_path):
    path = str(tmp_path / "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.close()                            # the file stays; nothing listens

    async def run():
        d = Delivery(pool, syslog_path=path)
        await d.start()
        pool.record_event("vm_quota", "error", "VM a at its quota", vm="a")
        await until("the event delivered", lambda: d.seq == 1)
        await d.stop()
        return d.syslog
    assert asyncio.run(run()) is None


# the server runs on uvloop (vmblock.server), where writing to a pipe the command closed raises
# RuntimeError instead of asyncio's BrokenPipeError
@pytest.mark.parametrize("run_loop", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_a_command_that_exits_without_reading_the_event_fails_and_the_next_event_goes(
        pool, tmp_path, run_loop):
    got = tmp_path / "events.jsonl"
    pool.config_set("events.exec", "exit 3")       # never reads its stdin
    big = "x" * (1 << 20)                           # more than a pipe holds: the write fails

    async def run():
        d = Delivery(pool, syslog_path=str(tmp_path / "none"))
        await d.start()
        pool.record_event("vm_space_hog", "warning", big, vm="a")
        await until("the exec hook failed", lambda: d.counts["exec_failed"] == 1)
        pool.config_set("events.exec", f"cat >> {got}")
        ev = pool.record_event("vm_quota", "error", "VM a at its quota", vm="a")
        await until("the next event delivered", lambda: d.counts["exec_delivered"] == 1)
        await d.stop()
        return ev
    ev = run_loop(run())
    assert [json.loads(line) for line in got.read_text().splitlines()] == [ev]


def test_a_webhook_url_aiohttp_cannot_use_fails_that_event_only(pool, tmp_path):
    got = []

    async def hook(request):
        got.append(await request.json())
        return web.Response()

    async def run():
        app = web.Application()
        app.router.add_post("/h", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        pool.config_set("events.webhook", "http://a_b..c/h")    # the host does not encode
        pool.config_set("events.webhook_retries", "0")
        d = Delivery(pool, syslog_path=str(tmp_path / "none"))
        await d.start()
        pool.record_event("vm_quota", "error", "VM a at its quota", vm="a")
        await until("the webhook failed", lambda: d.counts["webhook_failed"] == 1)
        pool.config_set("events.webhook", f"http://127.0.0.1:{port}/h")
        ev = pool.record_event("vm_quota", "error", "VM b at its quota", vm="b")
        await until("the next event posted", lambda: d.counts["webhook_delivered"] == 1)
        await d.stop()
        await runner.cleanup()
        return ev
    assert got == [asyncio.run(run())]
