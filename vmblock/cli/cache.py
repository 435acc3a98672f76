"""``vmblock cache ...``: the flash cache of the running server."""

from __future__ import annotations

import click

from vmblock.cli.common import Table, emit, json_option, verb_command
from vmblock.cli.group import GROUP_TABLE
from vmblock.units import human_size

CACHED_VDISK_TABLE = Table(("VDISK", "VM", "GROUP", "PINNED", "CACHED", "R_HITS", "R_MISSES",
                            "W_HITS", "W_MISSES", "PROMOTED", "EVICTED", "HIT_RATIO"),
                           lambda d: [d["name"], d["vm"] or "-", d["group"],
                                      "yes" if d["pinned"] else "no",
                                      human_size(d["cached_bytes"]), d["read_hits"],
                                      d["read_misses"], d["write_hits"], d["write_misses"],
                                      d["promotions"], d["evictions"], f"{d['hit_ratio']:.3f}"])


@click.group()
def cache() -> None:
    """The flash cache of the running server."""


def print_cache(c: dict) -> None:
    """``cache show`` as text: the cache's state, then a table of groups and one of vdisks."""
    if not c["enabled"]:
        click.echo("flash cache: " + ("off (cache.size is 0)" if c["running"] else
                                      "no server running (the cache starts cold with it)"))
    else:
        t = c["totals"]
        click.echo(f"flash cache: {human_size(c['used_bytes'])} of "
                   f"{human_size(c['size_bytes'])} ({c['occupancy']:.1%}), "
                   f"{c['block_size'] // 1024} KiB blocks, "
                   f"hit ratio {t['hit_ratio']:.3f} (reads {t['read_hit_ratio']:.3f})")
    GROUP_TABLE(list(c["groups"].values()))
    click.echo("")
    CACHED_VDISK_TABLE(list(c["vdisks"].values()))


@verb_command(cache, "show")
@json_option
def cache_show(call, as_json) -> None:
    """Occupancy and hit accounting per group, VM and vdisk (counted in the data path)."""
    emit(call(), as_json, print_cache)


@verb_command(cache, "preload")
@click.argument("vdisk")
def cache_preload(call, vdisk) -> None:
    """Read a vdisk's mapped extents into the cache (needs a running server)."""
    r = call(vdisk=vdisk)
    click.echo(f"vdisk {vdisk}: {r['cached_blocks']} blocks ({human_size(r['cached_bytes'])}) "
               f"cached")
