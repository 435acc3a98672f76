"""A real ``libvirtd`` (``qemu:///system``) for the hypervisor end-to-end test.

The facts it relies on (Debian 12, libvirt 9.0, no systemd): QEMU runs as root with its output
to files and no cgroups when ``/etc/libvirt/qemu.conf`` says ``user = "root"``, ``group =
"root"``, ``stdio_handler = "file"``, ``cgroup_controllers = [ ]``. The user's qemu.conf is
never touched: libvirtd runs in a private mount namespace (``unshare -m``) where a copy with
those lines appended is bind-mounted over it. ``stop`` destroys and undefines the domains it
was asked to clean (and the secrets) before it stops libvirtd, so no QEMU is left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

QEMU_CONF = Path("/etc/libvirt/qemu.conf")
URI = "qemu:///system"
SETTINGS = 'user = "root"\ngroup = "root"\nstdio_handler = "file"\ncgroup_controllers = [ ]\n'
START_TIMEOUT = 30.0


def virsh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``virsh -c qemu:///system ARGS``."""
    p = subprocess.run(["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise RuntimeError(f"virsh {' '.join(args)}: {p.stderr.strip()}")
    return p


def missing() -> str:
    """Why the test cannot run here, or ''."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("libvirtd", "virsh", "unshare", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"needs {tool} (tools/test.sh installs it)"
    if not QEMU_CONF.exists():
        return f"needs {QEMU_CONF}"
    if virsh("version", check=False).returncode == 0:
        return "a libvirtd already runs here; the test does not touch it"
    return ""


class Libvirtd:
    """A libvirtd of this test only; ``kill`` and ``start`` again, ``stop`` at the end."""

    def __init__(self, workdir: Path):
        self.conf = workdir / "qemu.conf"
        self.conf.write_text(QEMU_CONF.read_text() + "\n" + SETTINGS)
        self.log = workdir / "libvirtd.log"
        self.proc: subprocess.Popen | None = None
        self.domains: list[str] = []        # names (or uuids) to destroy and undefine at stop
        self.secrets: list[str] = []        # iSCSI usage names of secrets to undefine at stop

    def start(self) -> None:
        """Start libvirtd and wait until ``virsh version`` answers."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 f"mount --bind {self.conf} {QEMU_CONF} && exec libvirtd"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while virsh("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"libvirtd did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL libvirtd (its domains' QEMUs, if any, keep running)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """Destroy and undefine the domains, then SIGTERM libvirtd and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for dom in self.domains:
            virsh("destroy", dom, check=False)
            virsh("undefine", dom, check=False)
        for usage in self.secrets:
            for line in virsh("secret-list", check=False).stdout.splitlines():
                if usage in line:
                    virsh("secret-undefine", line.split()[0], check=False)
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
