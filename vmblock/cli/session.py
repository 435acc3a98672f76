"""``vmblock session ...``: iSCSI sessions of the running server."""

from __future__ import annotations

import click

from vmblock.cli.common import Table, emit, json_option, verb_command


@click.group()
def session() -> None:
    """iSCSI sessions of the running server."""


SESSION_TABLE = Table(("TSIH", "INITIATOR", "TARGET", "TYPE", "CONNECTIONS", "TASKS"),
                      lambda s: [s["tsih"], s["initiator"], s["target"] or "-", s["type"],
                                 len(s["connections"]), s["tasks"]])


@verb_command(session, "list")
@json_option
def session_list(call, as_json: bool) -> None:
    """List logged-in sessions (needs a running server)."""
    emit(call(), as_json, SESSION_TABLE)
