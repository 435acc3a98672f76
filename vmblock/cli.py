"""The ``vmblock`` command: a thin client of the admin API, or of the pool when no server runs.

Each verb calls the same-named ``Api`` method; which implementation answers (``AdminClient`` over
the pool's admin socket, or ``Api`` on the pool opened here) is decided once in ``_api``. Every
``VmblockError`` and usage error ends as one ``vmblock: error: ...`` line and exit status 2.
"""

from __future__ import annotations

import json
import os
import sys

import click

from vmblock import DEFAULT_POOL, __version__
from vmblock.admin.api import Api
from vmblock.admin.client import AdminClient, LocalClient
from vmblock.errors import ServerError, VmblockError
from vmblock.meta import Pool
from vmblock.meta.pool import OWNER_ONLY_UMASK, check_settings
from vmblock.settings import Settings, load_toml, parse_portal

EXIT_USAGE = 2


def _fail(message: str) -> None:
    click.echo(f"vmblock: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


class _Group(click.Group):
    """Runs click without its multi-line usage errors and turns VmblockError into one line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name or "vmblock", complete_var,
                              standalone_mode=False, **extra)
        except click.ClickException as e:
            _fail(e.format_message())
        except VmblockError as e:
            _fail(str(e))
        except click.Abort:
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _pool_dir(ctx: click.Context) -> str:
    return ctx.find_root().params["pool"] or DEFAULT_POOL


def _api(ctx: click.Context, create: bool = False) -> AdminClient | LocalClient:
    """The running server's admin API if one answers, else the pool itself (created if asked)."""
    pool_dir = _pool_dir(ctx)
    client = AdminClient.connect(os.path.join(pool_dir, "admin.sock"))
    if client is not None:
        return client
    umask = os.umask(OWNER_ONLY_UMASK)    # what RocksDB writes into the pool is owner-only
    ctx.call_on_close(lambda: os.umask(umask))
    pool = Pool(pool_dir, create=create)
    ctx.call_on_close(pool.close)
    return LocalClient(Api(pool))


def _json(value) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _size(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} B"


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _fields(obj: dict, keys: list[str]) -> None:
    for k in keys:
        click.echo(f"{k + ':':<18}{'' if obj.get(k) is None else obj[k]}")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--pool", envvar="VMBLOCK_POOL", metavar="DIR",
              help=f"Pool directory (env VMBLOCK_POOL; default {DEFAULT_POOL}).")
@click.version_option(__version__, prog_name="vmblock")
def cli(pool: str | None) -> None:
    """vmblock: a VM-aware iSCSI block target.

    While `vmblock serve` runs on a pool, the other commands talk to it through the pool's admin
    socket and take effect at once; otherwise they work on the pool directly.
    """


@cli.command()
@click.option("--portal", "portals", multiple=True, metavar="HOST:PORT",
              help="Listen here (repeatable); default iscsi.portals or 127.0.0.1:3260.")
@click.option("--config", "config_file", metavar="FILE",
              help="TOML file whose keys override the pool's for this run (configs/vmblock.toml).")
@click.option("--demo", is_flag=True,
              help="Also create VM 'demo' with a thin 8 GiB vdisk 'demo' if they are missing.")
@click.option("--insecure", is_flag=True,
              help="Serve every target without CHAP: whoever reaches a portal can read and "
                   "write its vdisks.")
@click.pass_context
def serve(ctx: click.Context, portals: tuple[str, ...], config_file: str | None,
          demo: bool, insecure: bool) -> None:
    """Run the target in the foreground until SIGTERM or Ctrl-C (creates the pool if new).

    Targets of a new pool ask for CHAP; `vmblock vdisk show NAME --json` gives the URL with
    the credentials."""
    file_pool, overrides = load_toml(config_file) if config_file else (None, {})
    check_settings(Settings(overrides))
    pool_dir = ctx.find_root().params["pool"] or file_pool or DEFAULT_POOL
    if AdminClient.connect(os.path.join(pool_dir, "admin.sock")) is not None:
        raise ServerError(f"a server is already running on pool {os.path.abspath(pool_dir)}")
    from vmblock import server   # the fabric and SCSI core load only for serve

    os.umask(OWNER_ONLY_UMASK)    # the whole server: RocksDB's files, the admin socket
    pool = Pool(pool_dir, create=True)
    pool.overrides = overrides    # store.* keys of --config apply to the tiers opened below
    try:
        if demo:
            server.ensure_demo(pool)
        listen = [parse_portal(p) for p in portals] or pool.settings().get("iscsi.portals")
    except BaseException:
        pool.close()
        raise
    server.serve(pool, listen, insecure)


# --- vm ----------------------------------------------------------------------------------------

@cli.group()
def vm() -> None:
    """Virtual machines: the owners of vdisks."""


@vm.command("create")
@click.argument("name")
@click.option("--guest-os", default="", help="Guest operating system, free text.")
@click.option("--location", default="", help="Hypervisor host or datastore it runs on.")
@click.pass_context
def vm_create(ctx: click.Context, name: str, guest_os: str, location: str) -> None:
    """Create a VM (creates the pool if new)."""
    v = _api(ctx, create=True).vm_create(name=name, guest_os=guest_os, location=location)
    click.echo(f"created VM {v['name']} ({v['uuid']})")


@vm.command("set")
@click.argument("name")
@click.option("--guest-os", help="Guest operating system, free text.")
@click.option("--location", help="Hypervisor host or datastore it runs on.")
@click.option("--active/--inactive", default=None, help="Whether the VM is running.")
@click.pass_context
def vm_set(ctx: click.Context, name: str, guest_os: str | None, location: str | None,
           active: bool | None) -> None:
    """Change a VM's guest OS, location or active flag."""
    fields = {k: v for k, v in (("guest_os", guest_os), ("location", location),
                                ("active", active)) if v is not None}
    if not fields:
        raise click.UsageError("nothing to set: give --guest-os, --location or --active/--inactive")
    v = _api(ctx).vm_set(name=name, **fields)
    click.echo(f"updated VM {v['name']}")


@vm.command("list")
@json_option
@click.pass_context
def vm_list(ctx: click.Context, as_json: bool) -> None:
    """List VMs and their vdisks."""
    vms = _api(ctx).vm_list()
    if as_json:
        _json(vms)
    else:
        _table([[v["name"], v["guest_os"], ",".join(v["vdisks"]), v["uuid"]] for v in vms],
               ["NAME", "GUEST_OS", "VDISKS", "UUID"])


@vm.command("show")
@click.argument("name")
@json_option
@click.pass_context
def vm_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show a VM with the name, URL and size of each of its vdisks."""
    v = _api(ctx).vm_show(name=name)
    if as_json:
        _json(v)
        return
    _fields(v, ["name", "uuid", "guest_os", "location", "active", "meta_stale", "created"])
    click.echo(f"{'used:':<18}{_size(v['used_bytes'])}")
    parent = v["lineage"]["parent"]
    if parent:
        how = "live" if parent["live"] else f"snapshot {parent['snapshot_name']}"
        click.echo(f"{'cloned from:':<18}{parent['vm_name']} ({how})")
    for d in v["vdisks"]:
        click.echo(f"vdisk:            {d['name']}  {_size(d['size_bytes'])}  "
                   f"used {_size(d['used_bytes'])}  {d['url']}")
    for s in v["snapshots"]:
        click.echo(f"snapshot:         {s['name']}  {s['kind']}  {s['created']}")
    for c in v["lineage"]["clones"]:
        click.echo(f"clone:            {c['name']}")


@vm.command("delete")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete its vdisks (and their data).")
@click.option("--force", is_flag=True,
              help="Purge even while iSCSI sessions use the vdisks (their commands then fail).")
@click.pass_context
def vm_delete(ctx: click.Context, name: str, purge: bool, force: bool) -> None:
    """Delete a VM and its snapshots; it must have no vdisks left unless --purge."""
    r = _api(ctx).vm_delete(name=name, purge=purge, force=force)
    gone = f" and vdisks {', '.join(r['vdisks_deleted'])}" if r["vdisks_deleted"] else ""
    click.echo(f"deleted VM {name}{gone}")


@vm.command("snapshot")
@click.argument("name")
@click.option("--name", "snapshot", required=True, metavar="SNAPSHOT", help="Snapshot name.")
@click.pass_context
def vm_snapshot(ctx: click.Context, name: str, snapshot: str) -> None:
    """Snapshot every vdisk of a VM at one instant (crash-consistent, metadata only)."""
    s = _api(ctx).vm_snapshot(name=name, snapshot=snapshot)
    click.echo(f"snapshot {s['name']} of VM {name}: {len(s['disks'])} vdisk(s)")


@vm.command("clone")
@click.argument("name")
@click.option("--name", "new_name", required=True, metavar="NEW", help="Name of the new VM.")
@click.option("--snapshot", metavar="SNAPSHOT", help="Clone this snapshot of the VM.")
@click.option("--live", is_flag=True, help="Clone the VM's current state instead.")
@click.pass_context
def vm_clone(ctx: click.Context, name: str, new_name: str, snapshot: str | None,
             live: bool) -> None:
    """Create a new VM whose vdisks (new LUNs) share the source's blocks copy-on-write."""
    v = _api(ctx).vm_clone(name=name, new_name=new_name, snapshot=snapshot, live=live)
    for d in v["vdisks"]:
        click.echo(f"created vdisk {d['name']} ({_size(d['size_bytes'])}) at {d['url']}")
    click.echo(f"cloned VM {name} to {new_name}")


@vm.command("revert")
@click.argument("name")
@click.option("--snapshot", required=True, metavar="SNAPSHOT")
@click.option("--force", is_flag=True,
              help="Revert even while iSCSI sessions use the LUNs (they get a unit attention).")
@click.pass_context
def vm_revert(ctx: click.Context, name: str, snapshot: str, force: bool) -> None:
    """Revert every vdisk of a VM to a snapshot; writes since then are gone."""
    r = _api(ctx).vm_revert(name=name, snapshot=snapshot, force=force)
    click.echo(f"reverted {', '.join(d['name'] for d in r['vdisks'])} to {snapshot}")


# --- vdisk -------------------------------------------------------------------------------------

@cli.group()
def vdisk() -> None:
    """Virtual disks: each one a LUN of a target."""


@vdisk.command("create")
@click.argument("name")
@click.option("--size", required=True, help="Size such as 512M, 1G, 8GiB, 1T (powers of 1024).")
@click.option("--vm", "vm_name", metavar="VM", help="Owning VM.")
@click.option("--target", metavar="IQN", help="Target to add it to (created if new); "
              "default iqn.2026-11.io.vmblock:default.")
@click.pass_context
def vdisk_create(ctx: click.Context, name: str, size: str, vm_name: str | None,
                 target: str | None) -> None:
    """Create a thin vdisk at the lowest free LUN (creates the pool if new)."""
    d = _api(ctx, create=True).vdisk_create(name=name, size=size, vm=vm_name, target=target)
    click.echo(f"created vdisk {d['name']} ({_size(d['size_bytes'])}) at {d['url']}")


@vdisk.command("list")
@click.option("--vm", "vm_name", metavar="VM", help="Only this VM's vdisks.")
@json_option
@click.pass_context
def vdisk_list(ctx: click.Context, vm_name: str | None, as_json: bool) -> None:
    """List vdisks."""
    disks = _api(ctx).vdisk_list(vm=vm_name)
    if as_json:
        _json(disks)
    else:
        _table([[d["name"], _size(d["size_bytes"]), _size(d["allocated_bytes"]), d["vm"] or "-",
                 d["url"]] for d in disks], ["NAME", "SIZE", "USED", "VM", "URL"])


@vdisk.command("show")
@click.argument("name")
@json_option
@click.pass_context
def vdisk_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show a vdisk, including the iscsi:// URL initiators use."""
    d = _api(ctx).vdisk_show(name=name)
    if as_json:
        _json(d)
    else:
        tb = d["tier_bytes"]
        d["tier_bytes"] = f"capacity {_size(tb['capacity'])}, flash {_size(tb['flash'])}"
        _fields(d, ["name", "uuid", "vm", "size_bytes", "allocated_bytes", "tier",
                    "tier_bytes", "block_size", "target", "lun", "url", "serial", "naa",
                    "created"])


@vdisk.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True,
              help="Delete even while iSCSI sessions use the LUN (their commands then fail).")
@click.pass_context
def vdisk_delete(ctx: click.Context, name: str, force: bool) -> None:
    """Delete a vdisk and its data; a running server drops the LUN at once (refused while
    iSCSI sessions use it, unless --force)."""
    _api(ctx).vdisk_delete(name=name, force=force)
    click.echo(f"deleted vdisk {name}")


@vdisk.command("resize")
@click.argument("name")
@click.option("--size", required=True, help="New size (it can only grow).")
@click.pass_context
def vdisk_resize(ctx: click.Context, name: str, size: str) -> None:
    """Grow a vdisk; initiators see CAPACITY DATA HAS CHANGED."""
    d = _api(ctx).vdisk_resize(name=name, size=size)
    click.echo(f"vdisk {name} is now {_size(d['size_bytes'])}")


@vdisk.command("move")
@click.argument("name")
@click.option("--tier", required=True, type=click.Choice(["flash", "capacity"]),
              help="The tier to move the vdisk's blocks to.")
@json_option
@click.pass_context
def vdisk_move(ctx: click.Context, name: str, tier: str, as_json: bool) -> None:
    """Move a vdisk's blocks to another tier, live (snapshots keep theirs); new writes go
    there too. Refused, with nothing changed, if the tier lacks the space."""
    r = _api(ctx).vdisk_move(name=name, tier=tier)
    if as_json:
        _json(r)
    else:
        m = r["move"]
        click.echo(f"vdisk {name} is on the {tier} tier: moved {_size(m['moved_bytes'])} "
                   f"in {m['seconds']} s")


@vdisk.command("snapshot")
@click.argument("name")
@click.option("--name", "snapshot", required=True, metavar="SNAPSHOT", help="Snapshot name.")
@click.pass_context
def vdisk_snapshot(ctx: click.Context, name: str, snapshot: str) -> None:
    """Snapshot one vdisk (metadata only)."""
    _api(ctx).vdisk_snapshot(name=name, snapshot=snapshot)
    click.echo(f"snapshot {snapshot} of vdisk {name}")


@vdisk.command("revert")
@click.argument("name")
@click.option("--snapshot", required=True, metavar="SNAPSHOT")
@click.option("--force", is_flag=True,
              help="Revert even while iSCSI sessions use the LUN (they get a unit attention).")
@click.pass_context
def vdisk_revert(ctx: click.Context, name: str, snapshot: str, force: bool) -> None:
    """Revert one vdisk to one of its snapshots."""
    _api(ctx).vdisk_revert(name=name, snapshot=snapshot, force=force)
    click.echo(f"reverted {name} to {snapshot}")


# --- snapshot ----------------------------------------------------------------------------------

@cli.group()
def snapshot() -> None:
    """Snapshots of VMs and vdisks."""


@snapshot.command("list")
@click.option("--vm", "vm_name", metavar="VM", help="Only this VM's snapshots.")
@json_option
@click.pass_context
def snapshot_list(ctx: click.Context, vm_name: str | None, as_json: bool) -> None:
    """List snapshots, oldest first."""
    snaps = _api(ctx).snapshot_list(vm=vm_name)
    if as_json:
        _json(snaps)
    else:
        _table([[s["name"], s["kind"], s["vm_name"] or "-", s["vdisk_name"] or "-",
                 ",".join(d["name"] for d in s["disks"]), _size(s["used_bytes"]), s["created"]]
                for s in snaps], ["NAME", "KIND", "VM", "VDISK", "DISKS", "USED", "CREATED"])


@snapshot.command("delete")
@click.argument("name")
@click.option("--vm", "vm_name", metavar="VM", help="The VM the snapshot belongs to.")
@click.option("--vdisk", "vdisk_name", metavar="VDISK", help="Or the vdisk, for a vdisk snapshot.")
@click.pass_context
def snapshot_delete(ctx: click.Context, name: str, vm_name: str | None,
                    vdisk_name: str | None) -> None:
    """Delete a snapshot; blocks no one else shares go back to the pool."""
    _api(ctx).snapshot_delete(name=name, vm=vm_name, vdisk=vdisk_name)
    click.echo(f"deleted snapshot {name}")


# --- config ------------------------------------------------------------------------------------

@cli.group()
def config() -> None:
    """Pool settings as flat dotted keys (configs/vmblock.toml lists them all)."""


@config.command("get")
@click.argument("key")
@click.pass_context
def config_get(ctx: click.Context, key: str) -> None:
    """Print one key's value."""
    click.echo(_api(ctx).config_get(key=key)["value"])


@config.command("set")
@click.argument("key")
@click.argument("value")
@click.pass_context
def config_set(ctx: click.Context, key: str, value: str) -> None:
    """Set a key; ACL and target CHAP apply to a running server at once, the rest at restart."""
    r = _api(ctx, create=True).config_set(key=key, value=value)
    click.echo(f"{key} = {value}" + ("" if r["live"] else " (takes effect at next start)"))


@config.command("unset")
@click.argument("key")
@click.pass_context
def config_unset(ctx: click.Context, key: str) -> None:
    """Remove a key, going back to the default."""
    r = _api(ctx).config_unset(key=key)
    click.echo(f"unset {key}" + ("" if r["live"] else " (takes effect at next start)"))


@config.command("list")
@json_option
@click.pass_context
def config_list(ctx: click.Context, as_json: bool) -> None:
    """List every key set in the pool."""
    keys = _api(ctx).config_list()
    if as_json:
        _json(keys)
    else:
        for k in sorted(keys):
            click.echo(f"{k} = {keys[k]}")


# --- session, pool -----------------------------------------------------------------------------

@cli.group()
def session() -> None:
    """iSCSI sessions of the running server."""


@session.command("list")
@json_option
@click.pass_context
def session_list(ctx: click.Context, as_json: bool) -> None:
    """List logged-in sessions (needs a running server)."""
    sessions = _api(ctx).session_list()
    if as_json:
        _json(sessions)
    else:
        _table([[s["tsih"], s["initiator"], s["target"] or "-", s["type"], len(s["connections"]),
                 s["tasks"]] for s in sessions],
               ["TSIH", "INITIATOR", "TARGET", "TYPE", "CONNECTIONS", "TASKS"])


@cli.group()
def pool() -> None:
    """The pool as a whole."""


@pool.command("show")
@json_option
@click.pass_context
def pool_show(ctx: click.Context, as_json: bool) -> None:
    """Dump the whole model tree: targets with their LUNs, VMs, vdisks, config."""
    tree = _api(ctx).pool_show()
    if as_json:
        _json(tree)
        return
    click.echo(f"pool: {tree['path']}")
    st = tree["store"]
    click.echo(f"capacity: {_size(st['used_bytes'])} used of {_size(st['capacity_bytes'])} "
               f"({st['used_pct']}%), allocation unit {_size(st['au_size'])}")
    fl = st["tiers"]["flash"]
    click.echo(f"flash: {_size(fl['cache_bytes'])} cache, {_size(fl['used_bytes'])} of "
               f"{_size(fl['au_bytes'])} for flash-tier vdisks used")
    for t in tree["targets"]:
        click.echo(f"target {t['iqn']}: {len(t['luns'])} LUN(s)")
    click.echo(f"{len(tree['vms'])} VM(s), {len(tree['vdisks'])} vdisk(s), "
               f"{len(tree['snapshots'])} snapshot(s), {len(tree['config'])} config key(s)")
    for e in tree["events"][-5:]:
        click.echo(f"event: {e['kind']} at {e.get('used_pct')}% used")


@pool.command("check")
@json_option
@click.pass_context
def pool_check(ctx: click.Context, as_json: bool) -> None:
    """Check the pool (fsck): every AU owned as its reference count says, no leaks, no
    sharing across unrelated VMs, maps within their vdisk sizes. Exit 1 if not clean."""
    r = _api(ctx).pool_check()
    if as_json:
        _json(r)
    else:
        for e in r["errors"]:
            click.echo(f"error: {e}")
        click.echo(f"{'clean' if r['ok'] else 'NOT CLEAN'}: {r['vdisks']} vdisk(s), "
                   f"{r['snapshots']} snapshot(s), {r['extents']} extent(s), "
                   f"{r['used_aus']} of {r['aus']} AUs used, {r['shared_aus']} shared")
    if not r["ok"]:
        sys.exit(1)


@cli.command("events")
@click.option("--limit", default=100, show_default=True, help="Newest N events (0: all).")
@json_option
@click.pass_context
def events(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Events recorded by the pool (low space, pool full), oldest first."""
    evs = _api(ctx).event_list(limit=limit)
    if as_json:
        _json(evs)
    else:
        for e in evs:
            click.echo(f"{e['time']:.0f}  {e['kind']}  {e.get('used_pct')}% used "
                       f"(threshold {e.get('threshold_pct')}%)")


# group, cache and vdisk pin/unpin: the flash cache's commands live with it
from vmblock.cache import commands as _cache_commands  # noqa: E402

_cache_commands.register(cli, vdisk)


def main() -> None:
    cli()
