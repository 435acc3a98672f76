"""What every noun's commands share: the way to a verb, and the two ways to print its answer.

A command is a thin front-end of one admin verb (``verb_command``): it parses options, calls
the verb of the running server (admin socket) or of the pool opened here, and prints the answer
as JSON (``--json``) or as text, both through ``emit``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import click

from vmblock import DEFAULT_POOL
from vmblock.admin.api import VERBS, Api
from vmblock.admin.client import AdminClient, LocalClient

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def pool_dir(ctx: click.Context) -> str:
    """The pool the command works on: ``--pool``, ``VMBLOCK_POOL`` or the default."""
    return ctx.find_root().params["pool"] or DEFAULT_POOL


def open_api(ctx: click.Context, create: bool = False) -> AdminClient | LocalClient:
    """The running server's admin API if one answers, else the pool itself (created if asked)."""
    path = pool_dir(ctx)
    client = AdminClient.connect(os.path.join(path, "admin.sock"))
    if client is not None:
        return client
    # only now: the pool brings RocksDB and the model, which a command that talks to a
    # running server never needs (the extent store, numpy and Numba come only with the verbs
    # that open it: not the listings)
    from vmblock.meta import Pool
    from vmblock.meta.pool import OWNER_ONLY_UMASK
    umask = os.umask(OWNER_ONLY_UMASK)    # what RocksDB writes into the pool is owner-only
    ctx.call_on_close(lambda: os.umask(umask))
    pool = Pool(path, create=create)
    ctx.call_on_close(pool.close)
    return LocalClient(Api(pool))


def verb_command(parent: click.Group | None, name: str, verb: tuple[str, str] | None = None,
                 create: bool = False):
    """Make the decorated function the command ``name`` of ``parent`` (standalone if None)
    that runs the admin verb ``verb`` (default: ``parent``'s name and ``name``).

    The function gets ``call`` first: calling it opens the API (the pool created if
    ``create``) and runs the verb with the keyword arguments given, so a usage error found
    before the call opens nothing. The command records its verb as ``.verb``."""
    noun_verb = verb or (parent.name, name)
    if noun_verb not in VERBS:
        raise LookupError(f"command {name} runs admin verb {' '.join(noun_verb)}, which "
                          f"vmblock.admin.api does not define")
    method = VERBS[noun_verb].method

    def decorate(function):
        @click.pass_context
        @functools.wraps(function)
        def command(ctx: click.Context, **options):
            opened = functools.cache(lambda: open_api(ctx, create))    # once, when first used

            def call(**verb_args):
                return getattr(opened(), method)(**verb_args)
            return function(call, **options)
        cmd = (parent.command(name) if parent is not None else click.command(name))(command)
        cmd.verb = noun_verb
        return cmd
    return decorate


def emit(value, as_json: bool, text: Callable[[object], None]) -> None:
    """Print a verb's answer: as JSON with ``--json``, else as ``text`` prints it (a
    ``Table`` for lists, a function for the rest)."""
    if as_json:
        click.echo(json.dumps(value, indent=2, sort_keys=True))
    else:
        text(value)


@dataclass(frozen=True)
class Table:
    """A text table: the column headers and the row each item of a list makes."""

    header: tuple[str, ...]
    row: Callable[[dict], list]

    def __call__(self, items: list[dict]) -> None:
        rows = [list(self.header)] + [self.row(item) for item in items]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(self.header))]
        for r in rows:
            click.echo("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def print_fields(obj: dict, keys: list[str]) -> None:
    """``key: value`` lines of a shown object, values aligned (column 18, or past the
    longest key)."""
    width = max([18] + [len(k) + 2 for k in keys])
    for k in keys:
        click.echo(f"{k + ':':<{width}}{'' if obj.get(k) is None else obj[k]}")


def qos_options(command: Callable) -> Callable:
    """The QoS options ``vm set`` and ``vdisk set`` share (docs/qos.md): ``max_iops``,
    ``max_mbps``, ``min_iops``, ``shares``, each None when not given."""
    for option in reversed((
            click.option("--max-iops", metavar="N",
                         help="QoS limit in IOPS; an I/O of n bytes counts ceil(n / 8 KiB) "
                              "(none: no limit)."),
            click.option("--max-mbps", metavar="M",
                         help="QoS limit in MB/s (10^6 bytes; none: no limit)."),
            click.option("--min-iops", metavar="N",
                         help="QoS reservation in IOPS (8 KiB units), served first (none: none)."),
            click.option("--shares", metavar="W",
                         help="QoS proportional share when the server is busy "
                              "(default 1; none: 1)."))):
        command = option(command)
    return command
