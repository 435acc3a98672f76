"""The one conftest: a real ``vmblock serve`` subprocess on a temporary pool, the CLI and the
admin socket on a pool with no server, a faultfs mount, the SCSI rig.

Helpers that tests import live in ``tests/support/`` (``from support.clients import qemu_io``).
``vmblock_server`` starts ``support.server.VmblockServer`` with ``--demo`` (8 GiB thin vdisk
``demo`` at LUN 0 of the default target) and always stops it. Its output goes to
``server.log`` next to the pool and is printed when a test fails, so a failing end-to-end
test shows what the server said.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.lvm import PVE_SIZE, PVE_V1, PVE_V2, vg_versions
from support.scsi_rig import MemoryStore, Rig
from support.server import VmblockServer

from vmblock.admin import http as admin_http
from vmblock.admin.api import Api
from vmblock.cli import cli
from vmblock.meta import Pool


@pytest.fixture
def vmblock_server(tmp_path, start_server):
    """A fresh server on ``tmp_path/pool``, stopped after the test whatever happens."""
    return start_server(pool=tmp_path / "pool")


@pytest.fixture
def run(tmp_path):
    """``run(*args, code=0)``: the CLI (click's CliRunner) on ``run.pool``, a pool under
    tmp_path with no server; the exit code must be ``code``."""
    pool = tmp_path / "pool"
    runner = CliRunner()

    def invoke(*args, code=0):
        r = runner.invoke(cli, ["--pool", str(pool), *args], catch_exceptions=False)
        assert r.exit_code == code, (args, r.output, r.stderr)
        return r
    invoke.pool = pool
    return invoke


@pytest.fixture
def served(tmp_path):
    """An Api on a real pool, served on the pool's admin socket from a background loop."""
    pool = Pool(str(tmp_path / "pool"), create=True)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = asyncio.run_coroutine_threadsafe(
        admin_http.start(Api(pool), pool.socket_path), loop).result(10)
    try:
        yield pool
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        pool.close()


@pytest.fixture
def start_server(tmp_path, request):
    """``start_server(*serve_args, pool=None, prefix=())``: servers with extra ``serve``
    arguments (each on a new pool under tmp_path unless ``pool`` is given; ``prefix`` runs it
    under e.g. ``ip netns exec NAME``), always stopped; their logs printed if the test fails."""
    servers = []

    def start(*args: str, pool: Path | None = None, prefix: tuple[str, ...] = ()):
        server = VmblockServer(pool or tmp_path / f"pool{len(servers)}", args, prefix=prefix)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for server in servers:
                sys.stderr.write(f"\n--- vmblock server log ---\n{server.log()[-20000:]}\n")


@pytest.fixture
def faultfs(tmp_path, request):
    """A faultfs (tests/support/faultfs.py) mounted at ``tmp_path/faultfs`` over ``tmp_path/backing``:
    ``.mount``, ``.fail(glob, op, errno)``, ``.heal()``. Always unmounted at teardown (a
    fixture that uses the mount and is set up after this one is torn down before it)."""
    from support.faultfs import FaultFs

    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse (a kernel with FUSE)")
    fs = FaultFs(tmp_path / "backing", tmp_path / "faultfs")
    try:
        yield fs
    finally:
        fs.unmount()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            sys.stderr.write(f"\n--- faultfs log ---\n{fs.log()}\n")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so fixtures can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def store() -> MemoryStore:
    """A fresh in-memory backing store for the SCSI core tests."""
    return MemoryStore()


@pytest.fixture
def rig(store) -> Rig:
    """A SCSI target with one LU over ``store``, driven without a fabric."""
    return Rig(store)


@pytest.fixture(scope="session")
def pve_images(tmp_path_factory):
    """(v1, v2, v1's image path) of the live tests' VG pve (support.lvm: PVE_V1, then PVE_V2
    at the next seqno), made once by the real lvm2 tools."""
    return vg_versions(tmp_path_factory.mktemp("lvm"), PVE_SIZE, "pve", PVE_V1, PVE_V2)
