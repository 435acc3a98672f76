"""The one verb table: every ``@verb`` method of the admin API is a CLI command and an admin
socket path, documented; the group model is part of the pool's model tree."""

from __future__ import annotations

import json

import click
import pytest

from vmblock.admin.api import VERBS
from vmblock.cli import cli
from vmblock.cli.common import verb_command

# verbs answered on the admin socket only, with no CLI command of their own on purpose:
# event wait is the long poll of `events --follow`
SERVER_ONLY: set[tuple[str, str]] = {("event", "wait")}


def cli_verbs(group: click.Group) -> dict[tuple[str, str], str]:
    """(noun, verb) -> command path of every CLI command that runs an admin verb."""
    found = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            if getattr(cmd, "verb", None) is not None:     # a group that is a command too
                found[cmd.verb] = name
            found.update({v: f"{name} {path}" for v, path in cli_verbs(cmd).items()})
        elif getattr(cmd, "verb", None) is not None:
            found[cmd.verb] = name
    return found


def test_every_verb_has_a_cli_command_or_is_server_only():
    commands = cli_verbs(cli)
    assert set(VERBS) - SERVER_ONLY == set(commands), set(VERBS) ^ set(commands)
    assert commands[("event", "list")] == "events"
    assert commands[("vdisk", "pin")] == "vdisk pin"
    assert commands[("group", "create")] == "group create"


def test_every_verb_has_a_docstring():
    missing = [f"{v.noun} {v.name}" for v in VERBS.values() if not (v.function.__doc__ or "")
               .strip()]
    assert missing == []


def test_a_command_for_a_verb_the_api_lacks_is_refused_when_defined():
    with pytest.raises(LookupError, match="vm explode"):
        verb_command(None, "explode", verb=("vm", "explode"))


def test_groups_assignments_and_pins_are_in_the_pool_dump(run):
    run("vm", "create", "db")
    run("vdisk", "create", "db-data", "--size", "1M", "--vm", "db")
    run("vdisk", "create", "scratch", "--size", "1M")
    run("group", "create", "gold", "--priority", "10", "--min", "0.1", "--max", "60%")
    run("group", "assign", "db", "gold")
    run("group", "assign", "scratch", "gold")
    run("vdisk", "pin", "scratch")
    tree = json.loads(run("pool", "show", "--json").stdout)
    uuids = {d["name"]: d["uuid"] for d in tree["vdisks"]}
    vm_uuid = tree["vms"][0]["uuid"]
    eg = tree["eviction_groups"]
    assert [(g["name"], g["slot"], g["priority"], g["min"], g["max"]) for g in eg["groups"]] == \
        [("default", 0, 0, 0.0, 1.0), ("gold", 1, 10, 0.1, 0.6)]
    assert eg["assigned"] == {"vm": {vm_uuid: "gold"}, "vdisk": {uuids["scratch"]: "gold"}}
    assert eg["pinned"] == [uuids["scratch"]]
    run("group", "delete", "gold")
    eg = json.loads(run("pool", "show", "--json").stdout)["eviction_groups"]
    assert [g["name"] for g in eg["groups"]] == ["default"]
    assert eg["assigned"] == {"vm": {}, "vdisk": {}}
