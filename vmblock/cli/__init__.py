"""The ``vmblock`` command: a thin client of the admin API, or of the pool when no server runs.

One module per noun (vm, vdisk, snapshot, config, session, pool, events, group, cache, serve,
stats, top, report);
each command runs one admin verb (``common.verb_command``), through ``AdminClient`` over the
pool's admin socket or ``Api`` on the pool opened here, and prints its answer with
``common.emit``. Every ``VmblockError`` and usage error ends as one ``vmblock: error: ...`` line
and exit status 2.
"""

from __future__ import annotations

import sys

import click

from vmblock import DEFAULT_POOL, __version__
from vmblock.cli import (cache, config, datastore, events, group, hypervisor, pool, report,
                         serve, session, snapshot, stats, top, vdisk, vm)
from vmblock.errors import VmblockError

EXIT_USAGE = 2


def _fail(message: str) -> None:
    click.echo(f"vmblock: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


class _Group(click.Group):
    """Runs click without its multi-line usage errors and turns VmblockError into one line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name or "vmblock", complete_var,
                              standalone_mode=False, **extra)
        except click.ClickException as e:
            _fail(e.format_message())
        except VmblockError as e:
            _fail(str(e))
        except click.Abort:
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--pool", envvar="VMBLOCK_POOL", metavar="DIR",
              help=f"Pool directory (env VMBLOCK_POOL; default {DEFAULT_POOL}).")
@click.version_option(__version__, prog_name="vmblock")
def cli(pool: str | None) -> None:
    """vmblock: a VM-aware iSCSI block target.

    While `vmblock serve` runs on a pool, the other commands talk to it through the pool's admin
    socket and take effect at once; otherwise they work on the pool directly.
    """


for _command in (serve.serve, vm.vm, vdisk.vdisk, snapshot.snapshot, config.config,
                 session.session, pool.pool, events.events, group.group, cache.cache,
                 hypervisor.hypervisor, datastore.datastore,
                 stats.stats, stats.stats_sample, top.top, report.report):
    cli.add_command(_command)


def main() -> None:
    """The console script ``vmblock`` (setup.py's entry point, ``python -m vmblock``)."""
    cli()
