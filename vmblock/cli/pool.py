"""``vmblock pool ...``: the pool as a whole."""

from __future__ import annotations

import sys

import click

from vmblock.cli.common import emit, json_option, verb_command
from vmblock.units import human_size


@click.group()
def pool() -> None:
    """The pool as a whole."""


def print_tree(tree: dict) -> None:
    """``pool show`` as text: where the space is, then a count of each kind of object."""
    click.echo(f"pool: {tree['path']}")
    st = tree["store"]
    click.echo(f"capacity: {human_size(st['used_bytes'])} used of "
               f"{human_size(st['capacity_bytes'])} ({st['used_pct']}%), allocation unit "
               f"{human_size(st['au_size'])}")
    fl = st["tiers"]["flash"]
    click.echo(f"flash: {human_size(fl['cache_bytes'])} cache, {human_size(fl['used_bytes'])} "
               f"of {human_size(fl['au_bytes'])} for flash-tier vdisks used")
    for t in tree["targets"]:
        click.echo(f"target {t['iqn']}: {len(t['luns'])} LUN(s)")
    click.echo(f"{len(tree['vms'])} VM(s), {len(tree['vdisks'])} vdisk(s), "
               f"{len(tree['snapshots'])} snapshot(s), {len(tree['config'])} config key(s)")
    for e in tree["events"][-5:]:
        click.echo(f"event: {e['kind']}: {e.get('message', '')}")


@verb_command(pool, "show")
@json_option
def pool_show(call, as_json: bool) -> None:
    """Dump the whole model tree: targets with their LUNs, VMs, vdisks, config."""
    emit(call(), as_json, print_tree)


def print_check(r: dict) -> None:
    """``pool check`` as text: each error, then the verdict with the counts."""
    for e in r["errors"]:
        click.echo(f"error: {e}")
    click.echo(f"{'clean' if r['ok'] else 'NOT CLEAN'}: {r['vdisks']} vdisk(s), "
               f"{r['snapshots']} snapshot(s), {r['extents']} extent(s), "
               f"{r['used_aus']} of {r['aus']} AUs used, {r['shared_aus']} shared")


@verb_command(pool, "check")
@json_option
def pool_check(call, as_json: bool) -> None:
    """Check the pool (fsck): every AU owned as its reference count says, no leaks, no
    sharing across unrelated VMs, maps within their vdisk sizes. Exit 1 if not clean."""
    r = call()
    emit(r, as_json, print_check)
    if not r["ok"]:
        sys.exit(1)
