"""Real clients the live tests drive: qemu-io through QEMU's iSCSI driver, and the CLI as JSON."""

from __future__ import annotations

import json
import subprocess


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
