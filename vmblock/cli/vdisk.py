"""``vmblock vdisk ...``: virtual disks, each one a LUN of a target."""

from __future__ import annotations

import click

from vmblock.cli.common import (Table, emit, json_option, print_fields, qos_options,
                                 verb_command)
from vmblock.units import human_size


@click.group()
def vdisk() -> None:
    """Virtual disks: each one a LUN of a target."""


@verb_command(vdisk, "create", create=True)
@click.argument("name")
@click.option("--size", required=True, help="Size such as 512M, 1G, 8GiB, 1T (powers of 1024).")
@click.option("--vm", "vm_name", metavar="VM", help="Owning VM.")
@click.option("--target", metavar="IQN", help="Target to add it to (created if new); "
              "default iqn.2026-11.io.vmblock:default.")
@click.option("--force", is_flag=True, help="Create it even while the pool is low on space.")
@click.option("--block-size", type=click.Choice(["512", "4096"]), default="512",
              show_default=True,
              help="Logical block size in bytes: 512 (with 4 KiB physical blocks) or 4096 (4Kn).")
@click.option("--physical-block-size", type=click.Choice(["512", "4096"]), default="4096",
              show_default=True,
              help="Physical block size reported (READ CAPACITY(16)): 512 for hosts that "
                   "take only 512n disks.")
@click.option("--removable", is_flag=True,
              help="A removable medium (install media): initiators may eject it, "
                   "`vmblock vdisk eject|load` too.")
def vdisk_create(call, name: str, size: str, vm_name: str | None, target: str | None,
                 force: bool, block_size: str, physical_block_size: str,
                 removable: bool) -> None:
    """Create a thin vdisk at the lowest free LUN (creates the pool if new); refused while
    the pool is low on space unless --force."""
    d = call(name=name, size=size, vm=vm_name, target=target, force=force,
             block_size=int(block_size), removable=removable,
             physical_block_size=int(physical_block_size))
    click.echo(f"created vdisk {d['name']} ({human_size(d['size_bytes'])}) at {d['url']}")


VDISK_TABLE = Table(("NAME", "SIZE", "USED", "VM", "URL"),
                    lambda d: [d["name"], human_size(d["size_bytes"]),
                               human_size(d["allocated_bytes"]), d["vm"] or "-", d["url"]])


@verb_command(vdisk, "list")
@click.option("--vm", "vm_name", metavar="VM", help="Only this VM's vdisks.")
@json_option
def vdisk_list(call, vm_name: str | None, as_json: bool) -> None:
    """List vdisks."""
    emit(call(vm=vm_name), as_json, VDISK_TABLE)


def print_vdisk(d: dict) -> None:
    """``vdisk show`` as text: one aligned line per field."""
    tb = d["tier_bytes"]
    shown = dict(d, tier_bytes=f"capacity {human_size(tb['capacity'])}, "
                               f"flash {human_size(tb['flash'])}")
    print_fields(shown, ["name", "uuid", "vm", "size_bytes", "allocated_bytes", "tier",
                         "tier_bytes", "block_size", "physical_block_size", "read_only",
                         "removable", "target", "lun",
                         "url", "serial", "naa", "created"])
    ds = d.get("datastore")
    if ds is not None:          # an LVM2 VG inside (docs/datastores.md): one line per volume
        click.echo(f"{'datastore:':<18}LVM2 VG {ds['vg'] or '-'} seqno {ds['seqno']}"
                   + (f" ({ds['problem']})" if ds["problem"] else ""))
        for v in ds["volumes"]:
            where = " ".join(f"{a}+{n}" for a, n in v["extents"]) or v["note"]
            click.echo(f"{'':<18}{v['name']}  vm {v['vm'] or '-'}  {where}")


@verb_command(vdisk, "show")
@click.argument("name")
@json_option
def vdisk_show(call, name: str, as_json: bool) -> None:
    """Show a vdisk, including the iscsi:// URL initiators use."""
    emit(call(name=name), as_json, print_vdisk)


@verb_command(vdisk, "delete")
@click.argument("name")
@click.option("--force", is_flag=True,
              help="Delete even while iSCSI sessions use the LUN (their commands then fail).")
def vdisk_delete(call, name: str, force: bool) -> None:
    """Delete a vdisk and its data; a running server drops the LUN at once (refused while
    iSCSI sessions use it, unless --force)."""
    call(name=name, force=force)
    click.echo(f"deleted vdisk {name}")


@verb_command(vdisk, "resize")
@click.argument("name")
@click.option("--size", required=True, help="New size (it can only grow).")
def vdisk_resize(call, name: str, size: str) -> None:
    """Grow a vdisk; initiators see CAPACITY DATA HAS CHANGED."""
    d = call(name=name, size=size)
    click.echo(f"vdisk {name} is now {human_size(d['size_bytes'])}")


@verb_command(vdisk, "set")
@click.argument("name")
@click.option("--read-only/--read-write", "read_only", default=None,
              help="Refuse every write (DATA PROTECT, WRITE PROTECTED), or take writes again.")
@qos_options
@json_option
def vdisk_set(call, name: str, read_only: bool | None, max_iops: str | None,
              max_mbps: str | None, min_iops: str | None, shares: str | None,
              as_json: bool) -> None:
    """Change a vdisk, live on a running server: read-only or writable; QoS of its own,
    apart from its VM's (docs/qos.md), where 'none' (or 0) clears a value and with none left
    it follows its VM's again."""
    fields = {k: v for k, v in (("max_iops", max_iops), ("max_mbps", max_mbps),
                                ("min_iops", min_iops), ("shares", shares)) if v is not None}
    if read_only is not None:
        fields["read_only"] = read_only
    if not fields:
        raise click.UsageError("nothing to set: give --read-only/--read-write, --max-iops, "
                               "--max-mbps, --min-iops or --shares")
    d = call(name=name, **fields)
    emit(d, as_json, lambda d: click.echo(
        f"updated vdisk {d['name']}" + ("" if read_only is None else
                                        " (read-only)" if read_only else " (writable)")))


@verb_command(vdisk, "move")
@click.argument("name")
@click.option("--tier", required=True, type=click.Choice(["flash", "capacity"]),
              help="The tier to move the vdisk's blocks to.")
@json_option
def vdisk_move(call, name: str, tier: str, as_json: bool) -> None:
    """Move a vdisk's blocks to another tier, live (snapshots keep theirs); new writes go
    there too. Refused, with nothing changed, if the tier lacks the space."""
    def print_move(r: dict) -> None:
        m = r["move"]
        click.echo(f"vdisk {name} is on the {tier} tier: moved {human_size(m['moved_bytes'])} "
                   f"in {m['seconds']} s")
    emit(call(name=name, tier=tier), as_json, print_move)


@verb_command(vdisk, "snapshot")
@click.argument("name")
@click.option("--name", "snapshot", required=True, metavar="SNAPSHOT", help="Snapshot name.")
def vdisk_snapshot(call, name: str, snapshot: str) -> None:
    """Snapshot one vdisk (metadata only)."""
    call(name=name, snapshot=snapshot)
    click.echo(f"snapshot {snapshot} of vdisk {name}")


@verb_command(vdisk, "revert")
@click.argument("name")
@click.option("--snapshot", required=True, metavar="SNAPSHOT")
@click.option("--force", is_flag=True,
              help="Revert even while iSCSI sessions use the LUN (they get a unit attention).")
def vdisk_revert(call, name: str, snapshot: str, force: bool) -> None:
    """Revert one vdisk to one of its snapshots."""
    call(name=name, snapshot=snapshot, force=force)
    click.echo(f"reverted {name} to {snapshot}")


def echo_pin(r: dict) -> None:
    """The one line ``vdisk pin`` and ``vdisk unpin`` print."""
    click.echo(f"vdisk {r['name']} {'pinned in' if r['pinned'] else 'unpinned from'} "
               f"the flash cache")


@verb_command(vdisk, "pin")
@click.argument("name")
def vdisk_pin(call, name: str) -> None:
    """Never evict this vdisk's cached blocks (preload them with `vmblock cache preload`)."""
    echo_pin(call(name=name))


@verb_command(vdisk, "unpin")
@click.argument("name")
def vdisk_unpin(call, name: str) -> None:
    """Let this vdisk's cached blocks be evicted again."""
    echo_pin(call(name=name))


@verb_command(vdisk, "eject")
@click.argument("name")
def vdisk_eject(call, name: str) -> None:
    """Eject a removable vdisk's medium (needs a running server; refused while an initiator
    prevents medium removal)."""
    call(name=name)
    click.echo(f"ejected the medium of vdisk {name}")


@verb_command(vdisk, "load")
@click.argument("name")
def vdisk_load(call, name: str) -> None:
    """Load a removable vdisk's medium again (needs a running server)."""
    call(name=name)
    click.echo(f"loaded the medium of vdisk {name}")
