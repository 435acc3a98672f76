"""The live server the end-to-end tests drive: a real ``vmblock serve`` subprocess.

Tests import it from ``support.server``, never from conftest.py.
``VmblockServer`` starts the server on 127.0.0.1 port 0, waits for its ready line, and always
stops it (SIGTERM, then SIGKILL). Its pool is new, so its targets ask for CHAP: ``url`` carries
the credentials (as ``vdisk show --json`` does) and ``chap`` gives them to the raw test client.

A test server runs in one process unless its test asks for workers: a pool that does not set
``server.workers`` gets ``0`` stored before the server starts (``pin_workers``), so the
default of ``server.workers`` can change without changing what the existing tests test. A
test that wants workers sets the key on the pool first (``config set server.workers N``) or
in its ``--config`` file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmblock import DEFAULT_TARGET
from vmblock.meta import Pool
from vmblock.meta.pool import OWNER_ONLY_UMASK
from vmblock.settings import WORKERS_KEY

READY_RE = re.compile(r"^vmblock: serving .* on (\S+?):(\d+)", re.MULTILINE)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def vmblock_cmd(pool: Path, *args: str) -> list[str]:
    """The command line of ``vmblock --pool POOL ARGS...`` with this interpreter."""
    return [sys.executable, "-m", "vmblock", "--pool", str(pool), *args]


def run_cli(pool: Path, *args: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``vmblock --pool POOL ARGS...``; with ``check`` a non-zero exit fails the test."""
    p = subprocess.run(vmblock_cmd(pool, *args), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        pytest.fail(f"vmblock {' '.join(args)} exited {p.returncode}: {p.stderr.strip()}")
    return p


def pin_workers(pool: Path) -> None:
    """Store ``server.workers 0`` in ``pool`` (created if new, as ``vmblock config set``
    creates it: owner-only files) unless the pool sets the key already."""
    umask = os.umask(OWNER_ONLY_UMASK)
    try:
        p = Pool(str(pool), create=True)
        try:
            if WORKERS_KEY not in p.config():
                p.config_set(WORKERS_KEY, "0")
        finally:
            p.close()
    finally:
        os.umask(umask)


class VmblockServer:
    """A running server; ``cli`` runs the real command against its pool."""

    def __init__(self, pool: Path, args: tuple[str, ...] = (), prefix: tuple[str, ...] = (),
                 pinned: bool = True):
        """``prefix`` runs the server under another command, e.g. ``ip netns exec NAME``;
        ``pinned`` False leaves ``server.workers`` to the pool or its default (a benchmark
        of the default configuration), else ``pin_workers``."""
        self.pool = pool
        self.insecure = "--insecure" in args
        if pinned:
            pin_workers(pool)
        self.log_path = pool.parent / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*prefix, *vmblock_cmd(pool, "serve", "--demo", "--portal", "127.0.0.1:0", *args)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        self.host, self.port = self._wait_ready()

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    def chap(self, target: str = DEFAULT_TARGET) -> tuple[str, str] | None:
        """(user, secret) the target asks for, read from the pool's keys (as root may);
        None when it asks for none."""
        if self.insecure:
            return None
        keys = json.loads(self.cli("config", "list", "--json").stdout)
        user = keys.get(f"auth.target.{target}.chap_user")
        secret = keys.get(f"auth.target.{target}.chap_secret")
        return (user, secret) if user and secret else None

    def url(self, lun: int = 0, target: str = DEFAULT_TARGET) -> str:
        """The LUN's URL with the target's credentials, in libiscsi's user%secret@ form."""
        chap = self.chap(target)
        creds = f"{chap[0]}%{chap[1]}@" if chap else ""
        return f"iscsi://{creds}{self.portal}/{target}/{lun}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``vmblock --pool POOL ARGS...``; with ``check`` a non-zero exit fails the test."""
        return run_cli(self.pool, *args, check=check, timeout=timeout)

    def _wait_ready(self) -> tuple[str, int]:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            m = READY_RE.search(self.log())
            if m:
                return m.group(1), int(m.group(2))
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"vmblock serve exited {self.proc.returncode} before it was "
                                   f"ready:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"vmblock serve not ready after {START_TIMEOUT}s:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM and wait; SIGKILL the whole process group if it hangs. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
