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
from vmblock.admin.client import AdminClient
from vmblock.config import load_toml, parse_portal, portals_of
from vmblock.errors import ServerError, VmblockError
from vmblock.meta import Pool

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


def _api(ctx: click.Context, create: bool = False) -> Api | AdminClient:
    """The running server's admin API if one answers, else the pool itself (created if asked)."""
    pool_dir = _pool_dir(ctx)
    client = AdminClient.connect(os.path.join(pool_dir, "admin.sock"))
    if client is not None:
        return client
    pool = Pool(pool_dir, create=create)
    ctx.call_on_close(pool.close)
    return Api(pool)


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
@click.pass_context
def serve(ctx: click.Context, portals: tuple[str, ...], config_file: str | None,
          demo: bool) -> None:
    """Run the target in the foreground until SIGTERM or Ctrl-C (creates the pool if new)."""
    file_pool, overrides = load_toml(config_file) if config_file else (None, {})
    pool_dir = ctx.find_root().params["pool"] or file_pool or DEFAULT_POOL
    if AdminClient.connect(os.path.join(pool_dir, "admin.sock")) is not None:
        raise ServerError(f"a server is already running on pool {os.path.abspath(pool_dir)}")
    from vmblock import server   # the fabric and SCSI core load only for serve

    pool = Pool(pool_dir, create=True)
    try:
        if demo:
            server.ensure_demo(pool)
        listen = [parse_portal(p) for p in portals] or portals_of({**pool.config(), **overrides})
    except BaseException:
        pool.close()
        raise
    server.serve(pool, overrides, listen)


# --- vm ----------------------------------------------------------------------------------------

@cli.group()
def vm() -> None:
    """Virtual machines: the owners of vdisks."""


@vm.command("create")
@click.argument("name")
@click.option("--guest-os", default="", help="Guest operating system, free text.")
@click.pass_context
def vm_create(ctx: click.Context, name: str, guest_os: str) -> None:
    """Create a VM (creates the pool if new)."""
    v = _api(ctx, create=True).vm_create(name=name, guest_os=guest_os)
    click.echo(f"created VM {v['name']} ({v['uuid']})")


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
    _fields(v, ["name", "uuid", "guest_os", "active", "meta_stale", "created"])
    for d in v["vdisks"]:
        click.echo(f"vdisk:            {d['name']}  {_size(d['size_bytes'])}  {d['url']}")


@vm.command("delete")
@click.argument("name")
@click.pass_context
def vm_delete(ctx: click.Context, name: str) -> None:
    """Delete a VM that has no vdisks left."""
    _api(ctx).vm_delete(name=name)
    click.echo(f"deleted VM {name}")


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
        _fields(d, ["name", "uuid", "vm", "size_bytes", "allocated_bytes", "block_size",
                    "target", "lun", "url", "serial", "naa", "created"])


@vdisk.command("delete")
@click.argument("name")
@click.pass_context
def vdisk_delete(ctx: click.Context, name: str) -> None:
    """Delete a vdisk and its data; a running server drops the LUN at once."""
    _api(ctx).vdisk_delete(name=name)
    click.echo(f"deleted vdisk {name}")


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
    for t in tree["targets"]:
        click.echo(f"target {t['iqn']}: {len(t['luns'])} LUN(s)")
    click.echo(f"{len(tree['vms'])} VM(s), {len(tree['vdisks'])} vdisk(s), "
               f"{len(tree['config'])} config key(s)")


def main() -> None:
    cli()
