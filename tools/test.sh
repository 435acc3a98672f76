#!/usr/bin/env bash
# Install every test dependency (Debian packages + a venv in .venv) and run the whole test suite.
# Idempotent. Extra arguments go to pytest, e.g. tools/test.sh -m slow (the soaks),
# tools/test.sh -m "" (everything), tools/test.sh -k cli.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update
    # initiators (libiscsi-bin, qemu-*), the peer target (tgt), volume manager tools (lvm2),
    # FUSE for the fault tests' failing disk (fuse3, libfuse3-3), pidstat for tools/bench
    # (sysstat), and what Debian's PEP 668 Python needs for a venv and native wheels
    # (python3-venv, -dev); libvirtd with its QEMU driver and virsh for the hypervisor tests,
    # and what libvirt-python builds against (libvirt-dev, pkg-config, gcc); the Linux guest of
    # tests/e2e/test_guest_scsi_block.py (a distribution kernel with its modules, busybox-static)
    DEBIAN_FRONTEND=noninteractive apt-get install -y \
        libiscsi-bin qemu-utils qemu-block-extra qemu-system-x86 tgt lvm2 fuse3 libfuse3-3 \
        sysstat python3-venv python3-dev \
        libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config gcc \
        linux-image-cloud-amd64 busybox-static
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --upgrade pip
.venv/bin/python -m pip install -e '.[test]'
exec .venv/bin/python -m pytest "$@"
