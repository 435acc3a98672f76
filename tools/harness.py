"""Shared by the tools: start vmblock on a scratch pool and tgt as the peer, stop them."""

import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TGT_TARGET = "iqn.2026-11.bench:tgt"     # the names ../shared/tools/peer_bench.py uses
TGT_PORTAL = "127.0.0.1:3261"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `python BOOT vmblock ARGS` runs vmblock from the checkout in $VMBLOCK_TREE rather than from
# the editable install, whose import finder otherwise wins over PYTHONPATH.
TREE_BOOT = '''import os, runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, os.environ["VMBLOCK_TREE"])
sys.argv = ["vmblock"] + sys.argv[2:]
runpy.run_module("vmblock", run_name="__main__", alter_sys=True)
'''


def tree_command(tree: Path) -> list[str]:
    """The command that runs ``vmblock`` from the checkout ``tree`` (e.g. a `git archive` of
    another revision): its ``native/`` linked in as ``vmblock.native``, as setup.py installs it."""
    native = tree / "vmblock" / "native"
    if not native.exists():
        native.symlink_to("../native")
    boot = tree / "vmblock-boot.py"
    boot.write_text(TREE_BOOT)
    os.environ["VMBLOCK_TREE"] = str(tree)
    return [sys.executable, str(boot), "vmblock"]


def start_vmblock(pool: Path, log: Path, vdisk: str, size: str,
                  python_args: list[str] = (),
                  config: dict[str, str] | None = None,
                  tree: Path | None = None) -> tuple[subprocess.Popen, str]:
    """A server on a free port with one vdisk at LUN 0; returns it and the LUN's URL as
    ``vdisk show --json`` gives it (with the target's CHAP credentials, in a new pool).
    ``python_args`` go before ``-m vmblock`` (e.g. a profiler); ``config`` is set with
    ``vmblock config set`` before the server starts; ``tree``: every command runs that
    checkout's vmblock (``tree_command``), not this one's."""
    vmblock = tree_command(tree) if tree is not None else [sys.executable, "-m", "vmblock"]
    cmd = [*vmblock, "--pool", str(pool)]
    subprocess.run(cmd + ["vdisk", "create", vdisk, "--size", size], check=True,
                   capture_output=True)
    for key, value in (config or {}).items():
        subprocess.run(cmd + ["config", "set", key, value], check=True, capture_output=True)
    port = free_port()
    serve = ([*vmblock, "--pool", str(pool)] if tree is not None else
             [sys.executable, *python_args, "-m", "vmblock", "--pool", str(pool)])
    proc = subprocess.Popen(serve + ["serve", "--portal", f"127.0.0.1:{port}"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if re.search(r"^vmblock: serving", log.read_text(errors="replace"), re.M):
            shown = subprocess.run(cmd + ["vdisk", "show", vdisk, "--json"], check=True,
                                   capture_output=True, text=True).stdout
            return proc, json.loads(shown)["url"]
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"vmblock did not start:\n{log.read_text(errors='replace')}")


def start_tgt(workdir: Path) -> subprocess.Popen | None:
    """tgtd with a 1 GiB file LUN, unless one already answers on the peer portal."""
    probe = subprocess.run(["iscsi-ls", f"iscsi://{TGT_PORTAL}"], capture_output=True, text=True)
    if TGT_TARGET in probe.stdout:
        return None
    img = workdir / "tgt.img"
    subprocess.run(["truncate", "-s", "1G", str(img)], check=True)
    proc = subprocess.Popen(["tgtd", "-f", "--iscsi", f"portal={TGT_PORTAL}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    adm = ["tgtadm", "--lld", "iscsi", "--op"]
    for _ in range(50):
        if subprocess.run(adm + ["show", "--mode", "target"], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    subprocess.run(adm + ["new", "--mode", "target", "--tid", "7", "-T", TGT_TARGET], check=True)
    subprocess.run(adm + ["new", "--mode", "logicalunit", "--tid", "7", "--lun", "1", "-b", str(img)],
                   check=True)
    subprocess.run(adm + ["bind", "--mode", "target", "--tid", "7", "-I", "ALL"], check=True)
    return proc


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def workers_of(pid: int) -> list[int]:
    """The pids of ``pid``'s children (a server's worker processes)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(p) for p in (task / "children").read_text().split()]
    return out


def machine() -> str:
    """The line benchmarks record with their figures: cores, CPU, memory, kernel, Python."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 30
    return (f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}")
