"""``vmblock vm ...``: virtual machines, the owners of vdisks."""

from __future__ import annotations

import click

from vmblock.cli.common import (Table, emit, json_option, print_fields, qos_options,
                                 verb_command)
from vmblock.units import human_size


@click.group()
def vm() -> None:
    """Virtual machines: the owners of vdisks."""


@verb_command(vm, "create", create=True)
@click.argument("name")
@click.option("--guest-os", default="", help="Guest operating system, free text.")
@click.option("--location", default="", help="Hypervisor host or datastore it runs on.")
def vm_create(call, name: str, guest_os: str, location: str) -> None:
    """Create a VM (creates the pool if new)."""
    v = call(name=name, guest_os=guest_os, location=location)
    click.echo(f"created VM {v['name']} ({v['uuid']})")


@verb_command(vm, "set")
@click.argument("name")
@click.option("--guest-os", help="Guest operating system, free text.")
@click.option("--location", help="Hypervisor host or datastore it runs on.")
@click.option("--active/--inactive", default=None, help="Whether the VM is running.")
@click.option("--space-quota", metavar="SIZE",
              help="Cap on the space its vdisks and snapshots hold, e.g. 64G (none: no cap).")
@click.option("--snapshot-every", metavar="DURATION",
              help="Take an automatic snapshot this often: 30s, 15m, 1h, 1d (none: stop).")
@click.option("--snapshot-keep", metavar="N",
              help="Automatic snapshots to keep (default 24); the oldest go first.")
@qos_options
@json_option
def vm_set(call, name: str, guest_os: str | None, location: str | None,
           active: bool | None, space_quota: str | None, snapshot_every: str | None,
           snapshot_keep: str | None, max_iops: str | None, max_mbps: str | None,
           min_iops: str | None, shares: str | None, as_json: bool) -> None:
    """Change a VM's guest OS, location or active flag, or its policies (space quota,
    snapshot schedule, QoS: docs/qos.md); 'none' (or 0) clears a policy."""
    fields = {k: v for k, v in (("guest_os", guest_os), ("location", location),
                                ("active", active), ("space_quota", space_quota),
                                ("snapshot_every", snapshot_every),
                                ("snapshot_keep", snapshot_keep), ("max_iops", max_iops),
                                ("max_mbps", max_mbps), ("min_iops", min_iops),
                                ("shares", shares)) if v is not None}
    if not fields:
        raise click.UsageError("nothing to set: give --guest-os, --location, "
                               "--active/--inactive, --space-quota, --snapshot-every, "
                               "--snapshot-keep, --max-iops, --max-mbps, --min-iops or "
                               "--shares")
    v = call(name=name, **fields)
    emit(v, as_json, lambda v: click.echo(f"updated VM {v['name']}"))


VM_TABLE = Table(("NAME", "GUEST_OS", "VDISKS", "SOURCE", "UUID"),
                 lambda v: [v["name"], v["guest_os"], ",".join(v["vdisks"]),
                            v.get("source") or "-", v["uuid"]])


@verb_command(vm, "list")
@json_option
def vm_list(call, as_json: bool) -> None:
    """List VMs and their vdisks."""
    emit(call(), as_json, VM_TABLE)


def print_vm(v: dict) -> None:
    """``vm show`` as text: the VM's fields, then one line per vdisk, snapshot and clone."""
    print_fields(v, ["name", "uuid", "guest_os", "location", "active", "meta_stale", "created"])
    click.echo(f"{'used:':<18}{human_size(v['used_bytes'])}")
    pol = v.get("policies", {})
    if "space_quota" in pol:
        full = ", reached" if pol.get("space_quota_reached") else ""
        click.echo(f"{'space quota:':<18}{human_size(pol['space_quota'])} (charged "
                   f"{human_size(pol.get('space_charged_bytes', 0))}{full})")
    if "snapshot_every" in pol:
        click.echo(f"{'snapshots:':<18}every {pol['snapshot_every']} s, keep "
                   f"{pol['snapshot_keep']} automatic")
    qos = v.get("qos", {})
    if qos:
        click.echo(f"{'qos:':<18}" + ", ".join(f"{k.replace('_', '-')} {n}"
                                               for k, n in qos.items()))
    parent = v["lineage"]["parent"]
    if parent:
        how = "live" if parent["live"] else f"snapshot {parent['snapshot_name']}"
        click.echo(f"{'cloned from:':<18}{parent['vm_name']} ({how})")
    for d in v["vdisks"]:
        click.echo(f"vdisk:            {d['name']}  {human_size(d['size_bytes'])}  "
                   f"used {human_size(d['used_bytes'])}  {d['url']}")
    for s in v["snapshots"]:
        click.echo(f"snapshot:         {s['name']}  {s['kind']}  {s['created']}")
    for c in v["lineage"]["clones"]:
        click.echo(f"clone:            {c['name']}")


@verb_command(vm, "show")
@click.argument("name")
@json_option
def vm_show(call, name: str, as_json: bool) -> None:
    """Show a VM with the name, URL and size of each of its vdisks."""
    emit(call(name=name), as_json, print_vm)


@verb_command(vm, "delete")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete its vdisks (and their data).")
@click.option("--force", is_flag=True,
              help="Purge even while iSCSI sessions use the vdisks (their commands then fail).")
def vm_delete(call, name: str, purge: bool, force: bool) -> None:
    """Delete a VM and its snapshots; it must have no vdisks left unless --purge."""
    r = call(name=name, purge=purge, force=force)
    gone = f" and vdisks {', '.join(r['vdisks_deleted'])}" if r["vdisks_deleted"] else ""
    click.echo(f"deleted VM {name}{gone}")


@verb_command(vm, "snapshot")
@click.argument("name")
@click.option("--name", "snapshot", required=True, metavar="SNAPSHOT", help="Snapshot name.")
def vm_snapshot(call, name: str, snapshot: str) -> None:
    """Snapshot every vdisk of a VM at one instant (crash-consistent, metadata only)."""
    s = call(name=name, snapshot=snapshot)
    click.echo(f"snapshot {s['name']} of VM {name}: {len(s['disks'])} vdisk(s)")


@verb_command(vm, "clone")
@click.argument("name")
@click.option("--name", "new_name", required=True, metavar="NEW", help="Name of the new VM.")
@click.option("--snapshot", metavar="SNAPSHOT", help="Clone this snapshot of the VM.")
@click.option("--live", is_flag=True, help="Clone the VM's current state instead.")
@click.option("--force", is_flag=True, help="Clone even while the pool is low on space.")
@click.option("--no-policies", is_flag=True,
              help="Do not copy the source's policies (quota, snapshot schedule, QoS).")
def vm_clone(call, name: str, new_name: str, snapshot: str | None, live: bool,
             force: bool, no_policies: bool) -> None:
    """Create a new VM whose vdisks (new LUNs) share the source's blocks copy-on-write; it
    gets the source's policies (quota, snapshot schedule, QoS) unless --no-policies."""
    v = call(name=name, new_name=new_name, snapshot=snapshot, live=live, force=force,
             no_policies=no_policies)
    for d in v["vdisks"]:
        click.echo(f"created vdisk {d['name']} ({human_size(d['size_bytes'])}) at {d['url']}")
    click.echo(f"cloned VM {name} to {new_name}")


@verb_command(vm, "revert")
@click.argument("name")
@click.option("--snapshot", required=True, metavar="SNAPSHOT")
@click.option("--force", is_flag=True,
              help="Revert even while iSCSI sessions use the LUNs (they get a unit attention).")
def vm_revert(call, name: str, snapshot: str, force: bool) -> None:
    """Revert every vdisk of a VM to a snapshot; writes since then are gone."""
    r = call(name=name, snapshot=snapshot, force=force)
    click.echo(f"reverted {', '.join(d['name'] for d in r['vdisks'])} to {snapshot}")


@verb_command(vm, "import")
@click.argument("domain")
@click.option("--from", "hypervisor", required=True, metavar="HV",
              help="The hypervisor (vmblock hypervisor add) that defines DOMAIN.")
@click.option("--switch", is_flag=True,
              help="Then redefine the (shut off) domain's disks on the new LUNs.")
def vm_import(call, domain: str, hypervisor: str, switch: bool) -> None:
    """Copy a domain's raw/qcow2 image disks onto new vdisks of a new VM (thin: holes and
    zero clusters stay unallocated); shut it off first for a consistent copy. Interrupted or
    failed, what it made is deleted; killed, running it again resumes."""
    import signal

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    from vmblock.errors import VmblockError
    from vmblock.hypervisor.importer import LunAddress, copy_image

    plan = call(hypervisor=hypervisor, domain=domain, switch=switch)
    if plan["resumed"]:
        click.echo(f"resuming the import of {domain} into VM {plan['vm']}")
    for s in plan["skipped"]:
        click.echo(f"left alone: {s['target']} ({s['reason']})")
    if plan["warning"]:
        click.echo(f"vmblock: warning: {plan['warning']}", err=True)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn()) \
                as bar:
            for d in plan["disks"]:
                if d["done"]:
                    continue
                task = bar.add_task(f"{d['target']} -> {d['vdisk']}", total=100)
                copy_image(d["path"], d["format"], LunAddress(**d["lun"]),
                           lambda pct, task=task: bar.update(task, completed=pct),
                           shared=d.get("shared", False))
                bar.update(task, completed=100)
                call(hypervisor=hypervisor, domain=domain, step="copied", disk=d["target"])
    except (KeyboardInterrupt, VmblockError) as e:
        call(hypervisor=hypervisor, domain=domain, step="abort")
        raise click.ClickException(f"import of {domain} undone: "
                                   f"{str(e) or 'interrupted'}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    r = call(hypervisor=hypervisor, domain=domain, step="finish", switch=switch)
    for d in r["disks"]:
        click.echo(f"imported {d['target']} ({d['format']}) into vdisk {d['vdisk']}")
    click.echo(f"imported domain {domain} as VM {r['vm']} ({r['uuid']})"
               + ("; its disks are now the new LUNs" if switch else ""))
