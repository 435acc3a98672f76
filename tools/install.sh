#!/usr/bin/env bash
# Install vmblock into .venv of this checkout and start it on the embedded default pool
# (./vmblock-data) with the demo vdisk: VM 'demo', thin 8 GiB, LUN 0 of iqn.2026-11.io.vmblock:default.
# Idempotent: re-running reinstalls in place and leaves an already running server alone.
# usage: tools/install.sh [--foreground] [extra `vmblock serve` options, e.g. --portal 0.0.0.0:3260]
set -euo pipefail
cd "$(dirname "$0")/.."

foreground=0
if [ "${1:-}" = "--foreground" ]; then foreground=1; shift; fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update
    # libvirt-dev, pkg-config, gcc: what pip builds libvirt-python (the hypervisor connectors) with
    DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv python3-dev \
        libvirt-dev pkg-config gcc
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --upgrade pip
# the libvirt extra: `vmblock hypervisor` (docs/hypervisors.md); without libvirt's headers the
# server is installed without it and `hypervisor add` says what is missing
.venv/bin/python -m pip install -e '.[libvirt]' || .venv/bin/python -m pip install -e .

if [ "$foreground" = 1 ]; then
    exec .venv/bin/vmblock serve --demo "$@"
fi

if .venv/bin/vmblock session list >/dev/null 2>&1; then   # answers only while a server runs
    echo "vmblock: a server is already running on $PWD/vmblock-data"
    exit 0
fi
mkdir -p -m 700 vmblock-data      # the pool holds CHAP secrets: owner-only
log=vmblock-data/serve.log
(umask 077; : >>"$log")
nohup .venv/bin/vmblock serve --demo "$@" >"$log" 2>&1 </dev/null &
pid=$!
for _ in $(seq 600); do
    if grep -q '^vmblock: serving' "$log"; then
        grep '^vmblock: serving' "$log"
        echo "vmblock: pid $pid, log $PWD/$log; stop it with: kill $pid"
        echo "the demo target asks for CHAP; its URL carries the credentials:"
        echo "try: qemu-img info \"\$(.venv/bin/vmblock vdisk show demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"url\"])')\""
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "vmblock: server did not get ready in 60 s; see $PWD/$log" >&2
exit 1
