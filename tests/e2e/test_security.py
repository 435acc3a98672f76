"""Safe by default: a new pool's targets ask for CHAP, the pool and its admin socket are
owner-only, weak secrets are refused, and serving targets without CHAP beyond loopback warns.

Real servers (``vmblock serve`` subprocesses), real initiators (qemu-img, libiscsi, the raw
test client) and, for the "other user" checks, a forked child that drops to uid nobody and
runs the real CLI code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from support.server import vmblock_cmd
from support.iscsi_client import IscsiClient, read10, tur
from vmblock import DEFAULT_TARGET
from vmblock.admin.http import bind_owner_only
from vmblock.cli import cli

pytestmark = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("iscsi-inq")),
                                reason="needs qemu-img and iscsi-inq (qemu-utils, libiscsi-bin)")

LOGIN_AUTH_FAILURE = 0x0201          # RFC 7143 11.13.5: Status-Class 2, Detail 01
NOBODY = 65534
SECRET_KEY = f"auth.target.{DEFAULT_TARGET}.chap_secret"
OTHER_TARGET = "iqn.2026-11.io.vmblock:other"
URL_RE = re.compile(r"^iscsi://([^%@/]+)%([^@]+)@(127\.0\.0\.1:\d+)/(\S+)/(\d+)$")


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def shown_url(server, vdisk: str = "demo") -> str:
    return json.loads(server.cli("vdisk", "show", vdisk, "--json").stdout)["url"]


def one_error_line(p) -> str:
    lines = p.stderr.splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("vmblock: error: "), \
        (p.returncode, p.stdout, p.stderr)
    return lines[0]


@contextlib.contextmanager
def rocksdb(pool: Path):
    """The pool's meta DB opened directly, as an older vmblock left it."""
    db = Rdict(str(pool / "meta"), Options(raw_mode=True))
    try:
        yield db
    finally:
        db.close()


# --- a new pool's targets ask for CHAP ----------------------------------------------------------

def test_a_new_pools_target_refuses_logins_without_chap(vmblock_server):
    plain = f"iscsi://{vmblock_server.portal}/{DEFAULT_TARGET}/0"
    p = run("qemu-img", "info", plain)
    assert p.returncode != 0 and "Authentication failure" in p.stderr, p.stderr
    p = run("iscsi-inq", plain)
    assert p.returncode != 0 and "Authentication failure" in p.stderr, p.stderr
    with IscsiClient(vmblock_server.host, vmblock_server.port) as c:
        assert c.login(DEFAULT_TARGET).login_status == LOGIN_AUTH_FAILURE


def test_the_url_of_vdisk_show_works_as_it_is(vmblock_server):
    url = shown_url(vmblock_server)
    m = URL_RE.match(url)
    assert m, url
    user, secret, portal, target, lun = m.groups()
    assert (portal, target, lun) == (vmblock_server.portal, DEFAULT_TARGET, "0")
    assert len(secret.encode()) >= 16
    info = run("qemu-img", "info", "--output=json", url)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["virtual-size"] == 8 << 30
    inq = run("iscsi-inq", url)
    assert inq.returncode == 0 and "VMBLOCK" in inq.stdout, inq.stderr
    with IscsiClient(vmblock_server.host, vmblock_server.port) as c:
        assert c.login(DEFAULT_TARGET, chap=(user, secret)).login_status == 0
        c.scsi(tur())
        assert c.scsi(read10(0, 1), read_len=512).status == 0


def test_a_target_created_later_gets_its_own_secret(vmblock_server):
    vmblock_server.cli("vdisk", "create", "other", "--size", "16M", "--target", OTHER_TARGET)
    url = shown_url(vmblock_server, "other")
    assert URL_RE.match(url).group(2) != URL_RE.match(shown_url(vmblock_server)).group(2)
    assert "virtual size: 16 MiB" in run("qemu-img", "info", url).stdout
    p = run("qemu-img", "info", f"iscsi://{vmblock_server.portal}/{OTHER_TARGET}/0")
    assert p.returncode != 0 and "Authentication failure" in p.stderr, p.stderr


def test_insecure_serves_every_target_without_chap(start_server):
    server = start_server("--insecure")
    plain = f"iscsi://{server.portal}/{DEFAULT_TARGET}/0"
    assert shown_url(server) == plain            # the credentials are kept, not asked for
    assert "virtual size: 8 GiB" in run("qemu-img", "info", plain).stdout
    with IscsiClient(server.host, server.port) as c:
        assert c.login(DEFAULT_TARGET).login_status == 0
    assert "warning" not in server.log()         # loopback only


def test_a_pool_from_before_keeps_serving_without_chap(start_server, tmp_path):
    """A pool without CHAP keys (as every pool was) works as before, new targets too."""
    pool = tmp_path / "old"
    subprocess.run(vmblock_cmd(pool, "vm", "create", "x"), check=True, capture_output=True)
    with rocksdb(pool) as db:
        for key in ("auth.new_target_chap", f"auth.target.{DEFAULT_TARGET}.chap_user",
                    SECRET_KEY):
            del db[f"config/{key}".encode()]
    server = start_server(pool=pool)
    server.cli("vdisk", "create", "other", "--size", "16M", "--target", OTHER_TARGET)
    for url in (shown_url(server), shown_url(server, "other")):
        assert "@" not in url
        assert run("qemu-img", "info", url).returncode == 0


# --- warnings ------------------------------------------------------------------------------------

def test_targets_without_chap_on_a_wildcard_portal_are_named_in_a_warning(start_server):
    server = start_server("--insecure", "--portal", "0.0.0.0:0")
    warnings = [ln for ln in server.log().splitlines() if ln.startswith("vmblock: warning:")]
    assert len(warnings) == 1, server.log()
    assert f"{DEFAULT_TARGET} served without CHAP on 0.0.0.0:" in warnings[0]
    assert "127.0.0.1" not in warnings[0]        # loopback portals are not named
    server.cli("vdisk", "create", "other", "--size", "16M", "--target", OTHER_TARGET)
    assert f"vmblock: warning: {OTHER_TARGET} served without CHAP on 0.0.0.0:" in server.log()


def test_a_target_on_a_wildcard_portal_warns_once_its_chap_keys_are_unset(start_server):
    server = start_server("--portal", "0.0.0.0:0")
    assert "warning" not in server.log()
    server.cli("config", "unset", SECRET_KEY)
    server.cli("config", "unset", f"auth.target.{DEFAULT_TARGET}.chap_user")
    assert f"vmblock: warning: {DEFAULT_TARGET} served without CHAP on 0.0.0.0:" in server.log()


# --- owner-only pool ----------------------------------------------------------------------------

def modes(pool: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(pool.stat().st_mode)}
    for p in pool.rglob("*"):
        out[str(p.relative_to(pool))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def test_pool_dir_meta_files_and_admin_socket_are_owner_only(vmblock_server):
    vmblock_server.cli("vdisk", "create", "more", "--size", "16M")   # RocksDB writes more
    found = modes(vmblock_server.pool)
    assert {"meta", "capacity", "flash", "admin.sock"} <= set(found)
    assert len(found) > 8, found
    assert {p: oct(m) for p, m in found.items() if m & 0o077} == {}


def test_an_existing_world_readable_pool_is_made_owner_only_on_open(tmp_path):
    pool = tmp_path / "pool"
    subprocess.run(vmblock_cmd(pool, "vdisk", "create", "d", "--size", "1M"), check=True,
                   capture_output=True)
    for p in [pool, *pool.rglob("*")]:                # as pools were made before
        p.chmod(0o755 if p.is_dir() else 0o644)
    subprocess.run(vmblock_cmd(pool, "vdisk", "list"), check=True, capture_output=True)
    found = modes(pool)
    assert {p: oct(m) for p, m in found.items() if m & 0o077} == {}
    assert found["."] == found["meta"] == 0o700 and found["capacity"] == 0o600


def test_the_admin_socket_is_owner_only_from_the_moment_it_is_bound(tmp_path):
    old = os.umask(0o022)            # a permissive process: bind alone must make it 0700
    try:
        sock = bind_owner_only(str(tmp_path / "admin.sock"))
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE((tmp_path / "admin.sock").stat().st_mode) & 0o077 == 0
    finally:
        sock.close()


def as_nobody(work) -> tuple[int, str]:
    """Run ``work()`` in a forked child that dropped to uid/gid nobody; (exit code, output)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                           # the child: never returns
        code = 1
        try:
            os.close(r)
            out = io.TextIOWrapper(os.fdopen(w, "wb"), write_through=True)
            sys.stdout = sys.stderr = out
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = work()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:   # noqa: BLE001 - reported to the parent as text
            print(f"{type(e).__name__}: {e}")
        finally:
            sys.stdout.flush()
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), text


@pytest.fixture
def traversable_dir():
    """A directory every user may enter (pytest's tmp_path is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="vmblock-sec-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_another_user_can_neither_list_the_config_nor_read_the_pool(traversable_dir,
                                                                     start_server):
    pool = traversable_dir / "pool"
    server = start_server(pool=pool)
    secret = server.cli("config", "get", SECRET_KEY).stdout.strip()

    def read_meta() -> int:
        for p in (pool / "meta").iterdir():
            p.read_bytes()
        return 0

    for running in (True, False):
        if not running:
            server.stop()
        code, out = as_nobody(lambda: cli.main(["--pool", str(pool), "config", "list"]))
        assert code == 2 and secret not in out, out
        assert re.fullmatch(r"vmblock: error: [^\n]*\n", out), out
        code, out = as_nobody(read_meta)
        assert code == 1 and "PermissionError" in out, out


# --- weak secrets ---------------------------------------------------------------------------

@pytest.fixture
def pool_cli(tmp_path):
    pool = tmp_path / "pool"

    def invoke(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(vmblock_cmd(pool, *args), capture_output=True, text=True,
                              timeout=60)
    invoke.pool = pool
    return invoke


@pytest.mark.parametrize("prefix", [f"auth.target.{DEFAULT_TARGET}.", "auth.discovery."])
def test_short_and_reused_secrets_are_refused_in_one_line(pool_cli, prefix):
    for key, value in ((prefix + "chap_secret", "abc"), (prefix + "mutual_secret", "elevenbytes")):
        line = one_error_line(pool_cli("config", "set", key, value))
        assert f"{key} is {len(value)} bytes" in line and value not in line
    assert pool_cli("config", "set", prefix + "chap_user", "alice").returncode == 0
    assert pool_cli("config", "set", prefix + "chap_secret", "twelve-bytes").returncode == 0
    assert pool_cli("config", "set", prefix + "mutual_user", "target").returncode == 0
    line = one_error_line(pool_cli("config", "set", prefix + "mutual_secret", "twelve-bytes"))
    assert f"{prefix}mutual_secret must differ from {prefix}chap_secret" in line
    assert "twelve-bytes" not in line
    assert pool_cli("config", "set", prefix + "mutual_secret", "another-secret").returncode == 0


def test_credentials_a_url_cannot_carry_are_refused(pool_cli):
    prefix = f"auth.target.{DEFAULT_TARGET}."
    line = one_error_line(pool_cli("config", "set", prefix + "chap_secret", "long-p@ssword"))
    assert "must not contain '@'" in line
    line = one_error_line(pool_cli("config", "set", prefix + "chap_user", "50%off"))
    assert "must not contain '%'" in line


def test_weak_secrets_in_a_config_file_are_refused(pool_cli, tmp_path):
    cfg = tmp_path / "vmblock.toml"
    cfg.write_text(f'[auth.target."{DEFAULT_TARGET}"]\nchap_user = "qemu"\n'
                   f'chap_secret = "short"\n')
    line = one_error_line(pool_cli("serve", "--config", str(cfg), "--portal", "127.0.0.1:0"))
    assert f"{SECRET_KEY} is 5 bytes" in line
    cfg.write_text('[auth.discovery]\nchap_user = "d"\nchap_secret = "same-secret-1"\n'
                   'mutual_user = "t"\nmutual_secret = "same-secret-1"\n')
    line = one_error_line(pool_cli("serve", "--config", str(cfg), "--portal", "127.0.0.1:0"))
    assert "auth.discovery.mutual_secret must differ from auth.discovery.chap_secret" in line


def test_a_weak_secret_stored_by_an_older_vmblock_stops_the_server_in_one_line(pool_cli):
    assert pool_cli("vm", "create", "x").returncode == 0
    with rocksdb(pool_cli.pool) as db:                     # what an older vmblock accepted
        db[f"config/{SECRET_KEY}".encode()] = json.dumps("abc").encode()
    line = one_error_line(pool_cli("serve", "--portal", "127.0.0.1:0"))
    assert f"{SECRET_KEY} is 3 bytes; CHAP secrets must be at least 12 bytes" in line


# --- half-set CHAP keys: the next start serves, the target refuses every login -----------------

def test_half_set_chap_keys_lock_the_target_instead_of_stopping_the_server(pool_cli,
                                                                             start_server):
    """CHAP keys are set one at a time, so a user without its secret can be stored; the next
    start must neither fail (one stored key would stop the whole target) nor let anyone in
    without CHAP: that target and discovery refuse every login (0x0201) until completed."""
    prefix = f"auth.target.{DEFAULT_TARGET}."
    assert pool_cli("vm", "create", "x").returncode == 0
    assert pool_cli("config", "unset", prefix + "chap_secret").returncode == 0
    assert pool_cli("config", "set", "auth.discovery.chap_user", "disco").returncode == 0
    server = start_server(pool=pool_cli.pool)
    assert "refusing every login until the CHAP keys are complete" in server.log()
    with IscsiClient(server.host, server.port) as c:
        assert c.login(DEFAULT_TARGET).login_status == LOGIN_AUTH_FAILURE
    with IscsiClient(server.host, server.port) as c:
        assert c.login(None, session_type="Discovery").login_status == LOGIN_AUTH_FAILURE
    server.cli("config", "set", prefix + "chap_secret", "a-complete-secret")
    with IscsiClient(server.host, server.port) as c:          # completed live: CHAP again
        assert c.login(DEFAULT_TARGET, chap=server.chap()).login_status == 0
