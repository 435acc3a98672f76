"""The ``vmblock group ...``, ``vmblock cache ...`` and ``vmblock vdisk pin|unpin`` commands.

Thin click front-ends over ``CacheApi`` (through the admin socket when a server runs, on the pool
otherwise); registered on the main command by ``vmblock.cli``.
"""

from __future__ import annotations

import click

from vmblock.cli import _api, _json, _size, _table, json_option


def _group_row(g: dict) -> list:
    return [g["name"], g["priority"], f"{g['min_pct']:g}%", f"{g['max_pct']:g}%", g["promote"],
            "yes" if g["pinned"] else "no", _size(g["cached_bytes"]),
            f"{g['hit_ratio']:.3f}", ",".join(g["vdisks"]) or "-"]


_GROUP_HEADER = ["NAME", "PRIORITY", "MIN", "MAX", "PROMOTE", "PINNED", "CACHED", "HIT_RATIO",
                 "VDISKS"]


def _echo_group(g: dict, as_json: bool) -> None:
    if as_json:
        _json(g)
    else:
        _table([_group_row(g)], _GROUP_HEADER)


@click.group("group")
def group() -> None:
    """Eviction groups: who keeps how much of the flash cache."""


@group.command("create")
@click.argument("name")
@click.option("--priority", default=0, show_default=True, type=int,
              help="Higher is kept longer when groups compete.")
@click.option("--min", "min_", default="0%", show_default=True,
              help="Reserved share of the cache (e.g. 10%).")
@click.option("--max", "max_", default="100%", show_default=True,
              help="Largest share of the cache (e.g. 60%).")
@click.option("--promote", default="read", show_default=True,
              help="Admit on: read (read misses), write (read and write misses), never.")
@click.option("--pinned", is_flag=True, help="Never evict this group's blocks.")
@json_option
@click.pass_context
def group_create(ctx, name, priority, min_, max_, promote, pinned, as_json) -> None:
    """Create an eviction group (live on a running server)."""
    g = _api(ctx, create=True).group_create(name=name, priority=priority, min=min_, max=max_,
                                            promote=promote, pinned=pinned)
    if as_json:
        _json(g)
    else:
        click.echo(f"created group {name}: priority {g['priority']}, min {g['min_pct']:g}%, "
                   f"max {g['max_pct']:g}%, promote {g['promote']}"
                   + (", pinned" if g["pinned"] else ""))


@group.command("set")
@click.argument("name")
@click.option("--priority", type=int, default=None)
@click.option("--min", "min_", default=None, help="e.g. 10%")
@click.option("--max", "max_", default=None, help="e.g. 60%")
@click.option("--promote", default=None, help="read, write or never")
@click.option("--pinned/--unpinned", default=None)
@json_option
@click.pass_context
def group_set(ctx, name, priority, min_, max_, promote, pinned, as_json) -> None:
    """Change a group's settings; a running server applies them at once."""
    g = _api(ctx).group_set(name=name, priority=priority, min=min_, max=max_,
                            promote=promote, pinned=pinned)
    if as_json:
        _json(g)
    else:
        click.echo(f"group {name}: priority {g['priority']}, min {g['min_pct']:g}%, "
                   f"max {g['max_pct']:g}%, promote {g['promote']}"
                   + (", pinned" if g["pinned"] else "")
                   + (f" ({g['evicted']} blocks evicted)" if g.get("evicted") else ""))


@group.command("delete")
@click.argument("name")
@click.pass_context
def group_delete(ctx, name) -> None:
    """Delete a group; its VMs and vdisks go back to the default group."""
    _api(ctx).group_delete(name=name)
    click.echo(f"deleted group {name}")


@group.command("assign")
@click.argument("target")
@click.argument("group_name", metavar="GROUP")
@click.option("--vm", "kind", flag_value="vm", help="TARGET is a VM.")
@click.option("--vdisk", "kind", flag_value="vdisk", help="TARGET is a vdisk.")
@click.pass_context
def group_assign(ctx, target, group_name, kind) -> None:
    """Put a VM (all its vdisks) or one vdisk in a group; a VM wins if both are named TARGET."""
    r = _api(ctx).group_assign(target=target, to=group_name, kind=kind)
    click.echo(f"{r['kind']} {target} is in group {group_name}")


@group.command("list")
@json_option
@click.pass_context
def group_list(ctx, as_json) -> None:
    """List groups with their settings, occupancy and hit ratio."""
    groups = _api(ctx).group_list()
    if as_json:
        _json(groups)
    else:
        _table([_group_row(g) for g in groups], _GROUP_HEADER)


@group.command("show")
@click.argument("name")
@json_option
@click.pass_context
def group_show(ctx, name, as_json) -> None:
    """Show one group with its counters."""
    _echo_group(_api(ctx).group_show(name=name), as_json)


@click.group("cache")
def cache() -> None:
    """The flash cache of the running server."""


@cache.command("show")
@json_option
@click.pass_context
def cache_show(ctx, as_json) -> None:
    """Occupancy and hit accounting per group, VM and vdisk (counted in the data path)."""
    c = _api(ctx).cache_show()
    if as_json:
        _json(c)
        return
    if not c["enabled"]:
        click.echo("flash cache: " + ("off (cache.size is 0)" if c["running"] else
                                      "no server running (the cache starts cold with it)"))
    else:
        t = c["totals"]
        click.echo(f"flash cache: {_size(c['used_bytes'])} of {_size(c['size_bytes'])} "
                   f"({c['occupancy']:.1%}), {c['block_size'] // 1024} KiB blocks, "
                   f"hit ratio {t['hit_ratio']:.3f} (reads {t['read_hit_ratio']:.3f})")
    _table([_group_row(g) for g in c["groups"].values()], _GROUP_HEADER)
    click.echo("")
    _table([[d["name"], d["vm"] or "-", d["group"], "yes" if d["pinned"] else "no",
             _size(d["cached_bytes"]), d["read_hits"], d["read_misses"], d["write_hits"],
             d["write_misses"], d["promotions"], d["evictions"], f"{d['hit_ratio']:.3f}"]
            for d in c["vdisks"].values()],
           ["VDISK", "VM", "GROUP", "PINNED", "CACHED", "R_HITS", "R_MISSES", "W_HITS",
            "W_MISSES", "PROMOTED", "EVICTED", "HIT_RATIO"])


@cache.command("preload")
@click.argument("vdisk")
@click.pass_context
def cache_preload(ctx, vdisk) -> None:
    """Read a vdisk's mapped extents into the cache (needs a running server)."""
    r = _api(ctx).cache_preload(vdisk=vdisk)
    click.echo(f"vdisk {vdisk}: {r['cached_blocks']} blocks ({_size(r['cached_bytes'])}) cached")


def _pin(ctx, name: str, pinned: bool) -> None:
    api = _api(ctx)
    r = api.vdisk_pin(name=name) if pinned else api.vdisk_unpin(name=name)
    click.echo(f"vdisk {name} {'pinned in' if r['pinned'] else 'unpinned from'} the flash cache")


@click.command("pin")
@click.argument("name")
@click.pass_context
def vdisk_pin(ctx, name) -> None:
    """Never evict this vdisk's cached blocks (preload them with `vmblock cache preload`)."""
    _pin(ctx, name, True)


@click.command("unpin")
@click.argument("name")
@click.pass_context
def vdisk_unpin(ctx, name) -> None:
    """Let this vdisk's cached blocks be evicted again."""
    _pin(ctx, name, False)


def register(cli: click.Group, vdisk: click.Group) -> None:
    cli.add_command(group)
    cli.add_command(cache)
    vdisk.add_command(vdisk_pin)
    vdisk.add_command(vdisk_unpin)
