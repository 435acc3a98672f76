"""Real clients the live tests drive: qemu-io through QEMU's iSCSI driver, the CLI as JSON, and
raw HTTP on the admin socket."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess

import pytest


def qemu_io_args(url: str, cmds, cache: str | None = None) -> list[str]:
    """A qemu-io command line running ``cmds`` in order (``cache``: its -t mode)."""
    args = ["qemu-io", "-f", "raw"] + (["-t", cache] if cache else [])
    for c in cmds:
        args += ["-c", c]
    return args + [url]


def qemu_io(url: str, *cmds: str, cache: str | None = None, check: bool = True,
            timeout: float = 120) -> str:
    """Run qemu-io; with ``check`` it must exit 0 and report no failure or error."""
    p = subprocess.run(qemu_io_args(url, cmds, cache), capture_output=True, text=True,
                       timeout=timeout)
    out = p.stdout + p.stderr
    if check:
        low = out.lower()
        assert p.returncode == 0 and "fail" not in low and "error" not in low, out
    return out


def cli_json(server, *args: str, timeout: float = 60):
    """``vmblock ARGS --json`` against ``server``'s pool, parsed."""
    return json.loads(server.cli(*args, "--json", timeout=timeout).stdout)


def error_line(r) -> str:
    """The one ``vmblock: error:`` line a failed CLI run (click's CliRunner) printed."""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmblock: error: "), r.stderr
    assert "Traceback" not in r.output
    return lines[0]


def admin_post(sock_path: str, url: str, body: bytes, method: str = "POST") -> tuple[int, dict]:
    """One raw HTTP request on the admin socket; the reply must be JSON whatever the status."""
    conn = http.client.HTTPConnection("localhost")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sock_path)
    conn.sock = sock
    try:
        conn.request(method, url, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        reply = json.loads(raw)
    except ValueError:
        pytest.fail(f"{method} {url}: non-JSON reply ({resp.status}): {raw[:200]!r}")
    assert resp.status == 200 or reply.get("error"), (resp.status, reply)
    return resp.status, reply
