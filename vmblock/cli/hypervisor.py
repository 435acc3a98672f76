"""``vmblock hypervisor ...``: libvirt hypervisors whose domains become VMs (docs/hypervisors.md)"""

from __future__ import annotations

import click

from vmblock.cli.common import Table, emit, json_option, print_fields, verb_command


@click.group()
def hypervisor() -> None:
    """libvirt hypervisors: their domains on this server's LUNs become VMs, kept current."""


@verb_command(hypervisor, "add")
@click.argument("name")
@click.option("--uri", required=True,
              help="libvirt URI: qemu:///system, qemu+ssh://host/system, test:///path.xml, ...")
@click.option("--interval", default="30s", show_default=True,
              help="Full resync every this long (events update at once).")
def hypervisor_add(call, name: str, uri: str, interval: str) -> None:
    """Follow a libvirt hypervisor (no passwords in the URI: ssh keys or auth.conf)."""
    h = call(name=name, uri=uri, interval=interval)
    click.echo(f"added hypervisor {h['name']} ({h['uri']}, resync every {h['interval']:g} s)")


HYPERVISOR_TABLE = Table(("NAME", "STATE", "VMS", "URI", "ERROR"),
                         lambda h: [h["name"], h["state"], h["vms"], h["uri"], h["error"]])


@verb_command(hypervisor, "list")
@json_option
def hypervisor_list(call, as_json: bool) -> None:
    """List hypervisors and whether they are reachable."""
    emit(call(), as_json, HYPERVISOR_TABLE)


def print_hypervisor(h: dict) -> None:
    """``hypervisor show`` as text: the record and state, then domains, unmapped disks, VMs."""
    print_fields(h, ["name", "uri", "interval", "state", "error", "host"])
    for d in h["domains"]:
        click.echo(f"domain:           {d['name']}  {d['state']}  {','.join(d['vdisks']) or '-'}")
    for u in h["unmapped_disks"]:
        click.echo(f"unmapped disk:    {u['domain']} {u['target'] or '?'} ({u['type']} "
                   f"{u['device']}): {u['reason']}")
    for v in h["vms"]:
        flags = [f for f in ("orphaned", "meta_stale") if v[f]]
        click.echo(f"vm:               {v['name']}  {'active' if v['active'] else 'inactive'}"
                   f"{'  ' + ','.join(flags) if flags else ''}")


@verb_command(hypervisor, "show")
@click.argument("name")
@json_option
def hypervisor_show(call, name: str, as_json: bool) -> None:
    """Show a hypervisor: state, domains, unmapped disks (and why), its VMs."""
    emit(call(name=name), as_json, print_hypervisor)


@verb_command(hypervisor, "remove")
@click.argument("name")
@json_option
def hypervisor_remove(call, name: str, as_json: bool) -> None:
    """Stop following a hypervisor; its VMs stay (meta_stale)."""
    emit(call(name=name), as_json, lambda h: click.echo(f"removed hypervisor {h['name']}"))


@verb_command(hypervisor, "sync")
@click.argument("name")
@json_option
def hypervisor_sync(call, name: str, as_json: bool) -> None:
    """Read every domain of a hypervisor now (needs a running server)."""
    emit(call(name=name), as_json, print_hypervisor)
