"""``vmblock config ...``: pool settings as flat dotted keys."""

from __future__ import annotations

import click

from vmblock.cli.common import emit, json_option, verb_command


@click.group()
def config() -> None:
    """Pool settings as flat dotted keys (configs/vmblock.toml lists them all)."""


def _at_next_start(r: dict) -> str:
    return "" if r["live"] else " (takes effect at next start)"


@verb_command(config, "get")
@click.argument("key")
def config_get(call, key: str) -> None:
    """Print one key's value."""
    click.echo(call(key=key)["value"])


@verb_command(config, "set", create=True)
@click.argument("key")
@click.argument("value")
def config_set(call, key: str, value: str) -> None:
    """Set a key; ACL and target CHAP apply to a running server at once, the rest at restart."""
    click.echo(f"{key} = {value}" + _at_next_start(call(key=key, value=value)))


@verb_command(config, "unset")
@click.argument("key")
def config_unset(call, key: str) -> None:
    """Remove a key, going back to the default."""
    click.echo(f"unset {key}" + _at_next_start(call(key=key)))


def print_keys(keys: dict) -> None:
    """``config list`` as text: ``key = value`` lines, sorted."""
    for k in sorted(keys):
        click.echo(f"{k} = {keys[k]}")


@verb_command(config, "list")
@json_option
def config_list(call, as_json: bool) -> None:
    """List every key set in the pool."""
    emit(call(), as_json, print_keys)
