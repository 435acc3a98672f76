"""``vmblock group ...``: eviction groups, who keeps how much of the flash cache.

``--min`` and ``--max`` are shares of the cache written ``10%`` or ``0.1`` (both a tenth); a
bare number above 1, such as ``10``, is an error rather than a guess at a percentage.
"""

from __future__ import annotations

import click

from vmblock.cli.common import Table, emit, json_option, verb_command
from vmblock.units import human_size

GROUP_TABLE = Table(("NAME", "PRIORITY", "MIN", "MAX", "PROMOTE", "PINNED", "CACHED",
                     "HIT_RATIO", "VDISKS"),
                    lambda g: [g["name"], g["priority"], f"{g['min_pct']:g}%",
                               f"{g['max_pct']:g}%", g["promote"],
                               "yes" if g["pinned"] else "no", human_size(g["cached_bytes"]),
                               f"{g['hit_ratio']:.3f}", ",".join(g["vdisks"]) or "-"])
SHARE_HELP = "10% or 0.1; a bare number above 1 is an error"


@click.group()
def group() -> None:
    """Eviction groups: who keeps how much of the flash cache."""


def _settings(g: dict) -> str:
    return (f"priority {g['priority']}, min {g['min_pct']:g}%, max {g['max_pct']:g}%, "
            f"promote {g['promote']}" + (", pinned" if g["pinned"] else ""))


@verb_command(group, "create", create=True)
@click.argument("name")
@click.option("--priority", default=0, show_default=True, type=int,
              help="Higher is kept longer when groups compete.")
@click.option("--min", "min_", default="0%", show_default=True,
              help=f"Reserved share of the cache ({SHARE_HELP}).")
@click.option("--max", "max_", default="100%", show_default=True,
              help=f"Largest share of the cache ({SHARE_HELP}).")
@click.option("--promote", default="read", show_default=True,
              help="Admit on: read (read misses), write (read and write misses), never.")
@click.option("--pinned", is_flag=True, help="Never evict this group's blocks.")
@json_option
def group_create(call, name, priority, min_, max_, promote, pinned, as_json) -> None:
    """Create an eviction group (live on a running server)."""
    g = call(name=name, priority=priority, min=min_, max=max_, promote=promote, pinned=pinned)
    emit(g, as_json, lambda g: click.echo(f"created group {name}: {_settings(g)}"))


@verb_command(group, "set")
@click.argument("name")
@click.option("--priority", type=int, default=None)
@click.option("--min", "min_", default=None, help=f"Reserved share of the cache ({SHARE_HELP}).")
@click.option("--max", "max_", default=None, help=f"Largest share of the cache ({SHARE_HELP}).")
@click.option("--promote", default=None, help="read, write or never")
@click.option("--pinned/--unpinned", default=None)
@json_option
def group_set(call, name, priority, min_, max_, promote, pinned, as_json) -> None:
    """Change a group's settings; a running server applies them at once."""
    g = call(name=name, priority=priority, min=min_, max=max_, promote=promote, pinned=pinned)
    emit(g, as_json, lambda g: click.echo(
        f"group {name}: {_settings(g)}"
        + (f" ({g['evicted']} blocks evicted)" if g.get("evicted") else "")))


@verb_command(group, "delete")
@click.argument("name")
def group_delete(call, name) -> None:
    """Delete a group; its VMs and vdisks go back to the default group."""
    call(name=name)
    click.echo(f"deleted group {name}")


@verb_command(group, "assign")
@click.argument("target")
@click.argument("group_name", metavar="GROUP")
@click.option("--vm", "kind", flag_value="vm", help="TARGET is a VM.")
@click.option("--vdisk", "kind", flag_value="vdisk", help="TARGET is a vdisk.")
def group_assign(call, target, group_name, kind) -> None:
    """Put a VM (all its vdisks) or one vdisk in a group; a VM wins if both are named TARGET."""
    r = call(target=target, to=group_name, kind=kind)
    click.echo(f"{r['kind']} {target} is in group {group_name}")


@verb_command(group, "list")
@json_option
def group_list(call, as_json) -> None:
    """List groups with their settings, occupancy and hit ratio."""
    emit(call(), as_json, GROUP_TABLE)


@verb_command(group, "show")
@click.argument("name")
@json_option
def group_show(call, name, as_json) -> None:
    """Show one group with its counters."""
    emit(call(name=name), as_json, lambda g: GROUP_TABLE([g]))
