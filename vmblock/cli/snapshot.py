"""``vmblock snapshot ...``: snapshots of VMs and vdisks."""

from __future__ import annotations

import click

from vmblock.cli.common import Table, emit, json_option, verb_command
from vmblock.units import human_size


@click.group()
def snapshot() -> None:
    """Snapshots of VMs and vdisks."""


SNAPSHOT_TABLE = Table(("NAME", "KIND", "VM", "VDISK", "DISKS", "USED", "CREATED"),
                       lambda s: [s["name"], s["kind"], s["vm_name"] or "-",
                                  s["vdisk_name"] or "-", ",".join(d["name"] for d in s["disks"]),
                                  human_size(s["used_bytes"]), s["created"]])


@verb_command(snapshot, "list")
@click.option("--vm", "vm_name", metavar="VM", help="Only this VM's snapshots.")
@json_option
def snapshot_list(call, vm_name: str | None, as_json: bool) -> None:
    """List snapshots, oldest first."""
    emit(call(vm=vm_name), as_json, SNAPSHOT_TABLE)


@verb_command(snapshot, "delete")
@click.argument("name")
@click.option("--vm", "vm_name", metavar="VM", help="The VM the snapshot belongs to.")
@click.option("--vdisk", "vdisk_name", metavar="VDISK", help="Or the vdisk, for a vdisk snapshot.")
def snapshot_delete(call, name: str, vm_name: str | None, vdisk_name: str | None) -> None:
    """Delete a snapshot; blocks no one else shares go back to the pool."""
    call(name=name, vm=vm_name, vdisk=vdisk_name)
    click.echo(f"deleted snapshot {name}")
