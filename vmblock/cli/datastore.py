"""``vmblock datastore ...``: shared datastores found inside vdisks (LVM2 volume groups)."""

from __future__ import annotations

import click

from vmblock.cli.common import Table, emit, json_option, verb_command
from vmblock.units import human_size


@click.group()
def datastore() -> None:
    """Shared datastores inside vdisks: LVM2 volume groups whose LVs are sub-vdisks of VMs."""


DATASTORE_TABLE = Table(("VDISK", "TYPE", "VG", "SEQNO", "VOLUMES", "PROBLEM"),
                        lambda d: [d["vdisk"], d["type"], d["vg"] or "-", d["seqno"],
                                   len(d["volumes"]), d["problem"] or "-"])


@verb_command(datastore, "list")
@json_option
def datastore_list(call, as_json: bool) -> None:
    """List the vdisks that hold an LVM2 physical volume."""
    emit(call(), as_json, DATASTORE_TABLE)


def print_volumes(d: dict) -> None:
    """One line per volume: its owner VM, size and byte ranges on the LUN."""
    ds = d["datastore"]
    if ds is None:
        click.echo(f"vdisk {d['vdisk']} holds no LVM2 physical volume"
                   + (f" ({d['problem']})" if d["problem"] else ""))
        return
    click.echo(f"vdisk {d['vdisk']}: LVM2 VG {ds['vg']} seqno {ds['seqno']}"
               + (f" ({ds['problem']})" if ds["problem"] else ""))
    Table(("VOLUME", "VM", "SIZE", "EXTENTS"),
          lambda v: [v["name"], v["vm"] or "-",
                     human_size(sum(n for _, n in v["extents"])),
                     " ".join(f"{a}+{n}" for a, n in v["extents"]) or v["note"]])(ds["volumes"])


@verb_command(datastore, "scan")
@click.argument("vdisk")
@json_option
def datastore_scan(call, vdisk: str, as_json: bool) -> None:
    """Read a vdisk's LVM2 label and metadata now and show its volumes."""
    emit(call(vdisk=vdisk), as_json, print_volumes)
