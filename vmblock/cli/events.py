"""``vmblock events``: what the pool recorded (low space, pool full)."""

from __future__ import annotations

import click

from vmblock.cli.common import emit, json_option, verb_command


def print_events(evs: list[dict]) -> None:
    """``events`` as text: one line per event."""
    for e in evs:
        click.echo(f"{e['time']:.0f}  {e['kind']}  {e.get('used_pct')}% used "
                   f"(threshold {e.get('threshold_pct')}%)")


@verb_command(None, "events", verb=("event", "list"))
@click.option("--limit", default=100, show_default=True, help="Newest N events (0: all).")
@json_option
def events(call, limit: int, as_json: bool) -> None:
    """Events recorded by the pool (low space, pool full), oldest first."""
    emit(call(limit=limit), as_json, print_events)
