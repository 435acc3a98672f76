"""``vmblock events``: what the pool recorded, new events as they happen, acknowledging one.

``events`` lists (``--since``, ``--kind``, ``--limit``); ``--follow`` then keeps printing each
new event as the server delivers it (a long poll on the admin socket, ``event wait``): text
lines, or one JSON object per line with ``--json``. ``events ack ID`` marks one acknowledged.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import click

from vmblock.cli.common import emit, json_option, open_api, verb_command
from vmblock.errors import InvalidArgument
from vmblock.units import parse_duration

# seconds each long poll of --follow waits on the server (below the admin client's timeout)
FOLLOW_POLL = 25


def event_line(e: dict) -> str:
    """One event as a line of text: time (UTC), severity, kind, VM/vdisk, message, advice."""
    when = datetime.fromtimestamp(e["time"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    who = " ".join(f"{k}={e[k]}" for k in ("vm", "vdisk") if e.get(k))
    advice = f" -- {e['advice']}" if e.get("advice") else ""
    acked = " (acked)" if e.get("acked") else ""
    return (f"{when}  {e.get('severity', '-'):<8} {e['kind']:<22} {who + '  ' if who else ''}"
            f"{e.get('message', '')}{advice}{acked}  [{e.get('id', '')}]")


def print_events(evs: list[dict]) -> None:
    """``events`` as text: one line per event."""
    for e in evs:
        click.echo(event_line(e))


def parse_since(text: str) -> int:
    """Unix seconds from '30m' / '2h' / '1d' (that long ago), a Unix time or an ISO 8601
    time (UTC unless it says otherwise)."""
    t = text.strip()
    try:
        return int(time.time() - parse_duration(t, "--since", lo=0))
    except InvalidArgument:
        pass
    if t.isdigit():
        return int(t)
    try:
        when = datetime.fromisoformat(t)
    except ValueError:
        raise click.BadParameter(f"{t!r} is not a duration (30m, 2h, 1d), a Unix time or an "
                                 f"ISO 8601 time", param_hint="--since") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0, int(when.timestamp()))


@click.group("events", invoke_without_command=True)
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing new events as they happen (needs a running server).")
@click.option("--since", metavar="WHEN",
              help="Only events since then: 30m, 2h, 1d ago, a Unix time or ISO 8601 time.")
@click.option("--kind", metavar="KIND", help="Only events of this kind (e.g. vm_space_hog).")
@click.option("--limit", default=100, show_default=True, help="Newest N events (0: all).")
@json_option
@click.pass_context
def events(ctx: click.Context, follow: bool, since: str | None, kind: str | None,
           limit: int, as_json: bool) -> None:
    """Events recorded by the pool (low space, hogs, quotas, failed snapshots ...), oldest
    first; --follow prints new ones as they happen."""
    if ctx.invoked_subcommand is not None:
        return
    since_t = parse_since(since) if since is not None else None
    api = open_api(ctx)
    cursor = api.event_wait(cursor=None, kind=kind, timeout=0)["cursor"] if follow else None
    shown: set[str] = set()
    if not follow or since is not None:
        evs = api.event_list(limit=limit, since=since_t, kind=kind)
        shown = {e.get("id") for e in evs}
        if follow and as_json:
            for e in evs:
                click.echo(json.dumps(e, sort_keys=True))
        else:
            emit(evs, as_json, print_events)
    while follow:
        r = api.event_wait(cursor=cursor, kind=kind, timeout=FOLLOW_POLL)
        if r["missed"]:
            click.echo(f"vmblock: {r['missed']} events were missed (too far behind, or the "
                       f"server restarted); see vmblock events", err=True)
        for e in r["events"]:
            if e.get("id") in shown:
                continue
            click.echo(json.dumps(e, sort_keys=True) if as_json else event_line(e))
        shown.clear()
        cursor = r["cursor"]


events.verb = ("event", "list")


@verb_command(events, "ack", verb=("event", "ack"))
@click.argument("event_id", metavar="ID")
@json_option
def events_ack(call, event_id: str, as_json: bool) -> None:
    """Acknowledge an event by its id (the [id] at the end of its line, or ``id`` in JSON)."""
    e = call(id=event_id)
    emit(e, as_json, lambda e: click.echo(f"acknowledged {e['id']}"))
