"""``vmblock serve``: run the target in the foreground."""

from __future__ import annotations

import os

import click

from vmblock import DEFAULT_POOL
from vmblock.admin.client import AdminClient
from vmblock.errors import ServerError
from vmblock.meta.config import check_settings
from vmblock.settings import Settings, load_toml, parse_portal


@click.command()
@click.option("--portal", "portals", multiple=True, metavar="HOST:PORT",
              help="Listen here (repeatable); default iscsi.portals or 127.0.0.1:3260.")
@click.option("--config", "config_file", metavar="FILE",
              help="TOML file whose keys override the pool's for this run (configs/vmblock.toml).")
@click.option("--demo", is_flag=True,
              help="Also create VM 'demo' with a thin 8 GiB vdisk 'demo' if they are missing.")
@click.option("--insecure", is_flag=True,
              help="Serve every target without CHAP: whoever reaches a portal can read and "
                   "write its vdisks.")
@click.option("--metrics", metavar="HOST:PORT",
              help="Serve Prometheus /metrics here (config key metrics.listen).")
@click.pass_context
def serve(ctx: click.Context, portals: tuple[str, ...], config_file: str | None,
          demo: bool, insecure: bool, metrics: str | None) -> None:
    """Run the target in the foreground until SIGTERM or Ctrl-C (creates the pool if new).

    Targets of a new pool ask for CHAP; `vmblock vdisk show NAME --json` gives the URL with
    the credentials."""
    file_pool, overrides = load_toml(config_file) if config_file else (None, {})
    if metrics:
        overrides["metrics.listen"] = metrics
    check_settings(Settings(overrides))
    pool_dir = ctx.find_root().params["pool"] or file_pool or DEFAULT_POOL
    if AdminClient.connect(os.path.join(pool_dir, "admin.sock")) is not None:
        raise ServerError(f"a server is already running on pool {os.path.abspath(pool_dir)}")
    # the fabric, the SCSI core and the pool's store load only for serve
    from vmblock import server
    from vmblock.meta import Pool
    from vmblock.meta.pool import OWNER_ONLY_UMASK

    os.umask(OWNER_ONLY_UMASK)    # the whole server: RocksDB's files, the admin socket
    pool = Pool(pool_dir, create=True)
    pool.overrides = overrides    # store.* keys of --config apply to the tiers opened below
    try:
        if demo:
            server.ensure_demo(pool)
        listen = [parse_portal(p) for p in portals] or pool.settings().get("iscsi.portals")
    except BaseException:
        pool.close()
        raise
    server.serve(pool, listen, insecure)
