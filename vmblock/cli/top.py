"""``vmblock top``: a live, full-screen per-VM table (rich), sortable; ``--once`` prints one
frame and exits (for scripts and tests)."""

from __future__ import annotations

import time

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table as RichTable

from vmblock.cli.common import verb_command
from vmblock.units import human_size

PIPE_WIDTH = 220          # characters per line when the output is not a terminal
SORT_KEYS = {
    "iops": lambda r: r["read_iops"] + r["write_iops"],
    "mbps": lambda r: r["read_bps"] + r["write_bps"],
    "latency": lambda r: max(r["latency_us"]["read"]["p99"], r["latency_us"]["write"]["p99"]),
    "hit": lambda r: r["flash_hit_ratio"] or 0.0,
    "space": lambda r: r["used_bytes"] + r["snapshot_bytes"],
    "name": lambda r: r["name"],
}


def frame(report: dict, sort: str) -> RichTable:
    """One screen of ``top``: a row per VM, the pool last."""
    split = report["pool"]["latency_split_us"]
    t = RichTable(title=f"vmblock top — sorted by {sort}, interval {report['interval_s']:g} s "
                        f"— pool split us: " + ", ".join(f"{k} {v:g}" for k, v in split.items()),
                  expand=False)
    for col in ("VM", "R IOPS", "W IOPS", "R MB/s", "W MB/s", "IO size", "R p99 us",
                "W p99 us", "net us", "queue us", "stor us", "flash us", "miss us", "hit",
                "used", "snap"):
        t.add_column(col, justify="left" if col == "VM" else "right")
    rows = sorted(report["vms"], key=SORT_KEYS[sort], reverse=sort != "name")
    for r in rows + [dict(report["pool"], name="(pool)")]:
        s = r["latency_split_us"]
        t.add_row(r["name"], f"{r['read_iops']:.0f}", f"{r['write_iops']:.0f}",
                  f"{r['read_bps'] / 1e6:.1f}", f"{r['write_bps'] / 1e6:.1f}",
                  human_size(r["avg_io_bytes"]),
                  f"{r['latency_us']['read']['p99']:.0f}",
                  f"{r['latency_us']['write']['p99']:.0f}",
                  f"{s['network']:.0f}", f"{s['queue']:.0f}", f"{s['storage']:.0f}",
                  f"{s['flash']:.0f}", f"{s['flash_miss']:.0f}",
                  "-" if r["flash_hit_ratio"] is None else f"{r['flash_hit_ratio']:.2f}",
                  human_size(r["used_bytes"]), human_size(r["snapshot_bytes"]))
    return t


@verb_command(None, "top", verb=("stats", "show"))
@click.option("--sort", type=click.Choice(sorted(SORT_KEYS)), default="iops",
              show_default=True, help="Column to sort the VMs by (highest first).")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
@click.option("--refresh", type=click.FloatRange(0.2, 3600), default=2.0, show_default=True,
              help="Seconds between frames (rates change once per stats.interval).")
def top(call, sort: str, once: bool, refresh: float) -> None:
    """Live per-VM table: IOPS, MB/s, latency p99 and its split, flash hit ratio, space."""
    console = Console()
    if not console.is_terminal:     # a pipe or a file: every column, not 80 characters
        console = Console(width=PIPE_WIDTH)
    if once:
        console.print(frame(call(), sort))
        return
    with Live(frame(call(), sort), console=console, screen=True, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(refresh)
                live.update(frame(call(), sort), refresh=True)
        except KeyboardInterrupt:
            pass
