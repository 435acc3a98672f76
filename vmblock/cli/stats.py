"""``vmblock stats``: per-VM, vdisk, group and pool statistics (docs/stats.md)."""

from __future__ import annotations

import csv
import json
import sys

import click

from vmblock.cli.common import Table, verb_command
from vmblock.units import human_size

STATS_TABLE = Table(("KIND", "NAME", "R_OPS", "W_OPS", "R_IOPS", "W_IOPS", "R_MB/S", "W_MB/S",
                     "R_P99_US", "W_P99_US", "HIT", "USED"),
                    lambda r: [r["kind"], r["name"], r["read_ops"], r["write_ops"],
                               r["read_iops"], r["write_iops"],
                               f"{r['read_bps'] / 1e6:.2f}", f"{r['write_bps'] / 1e6:.2f}",
                               r["latency_us"]["read"]["p99"], r["latency_us"]["write"]["p99"],
                               "-" if r["flash_hit_ratio"] is None
                               else f"{r['flash_hit_ratio']:.3f}", human_size(r["used_bytes"])])
CSV_FIELDS = ("kind", "name", "vm", "t", "dt", "read_ops", "write_ops", "read_bytes",
              "write_bytes", "read_p99_us", "write_p99_us")


def rows_of(report: dict) -> list[dict]:
    """Every row of a report, tagged with its kind (vm, vdisk, group, pool)."""
    out = [dict(r, kind="vm") for r in report["vms"]]
    out += [dict(r, kind="vdisk") for r in report["vdisks"]]
    out += [dict(r, kind="group") for r in report["groups"]]
    out.append(dict(report["pool"], kind="pool"))
    return out


def write_csv(report: dict) -> None:
    """One CSV line per row, or with a history, one per row and interval."""
    w = csv.writer(sys.stdout)
    w.writerow(CSV_FIELDS)
    for r in rows_of(report):
        for h in r.get("history") or [dict(r, t=report["time"], dt="",
                                           read_p99_us=r["latency_us"]["read"]["p99"],
                                           write_p99_us=r["latency_us"]["write"]["p99"])]:
            w.writerow([r["kind"], r["name"], r.get("vm") or ""] +
                       [h.get(f, "") for f in CSV_FIELDS[3:]])


@verb_command(None, "stats", verb=("stats", "show"))
@click.option("--vm", help="Only this VM (and its vdisks).")
@click.option("--vdisk", help="Only this vdisk (and its VM).")
@click.option("--group", help="Only this eviction group (its vdisks and their VMs).")
@click.option("--since", metavar="DUR", help="Add the history of the last DUR (30m, 1h, 2d).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of text.")
def stats(call, vm, vdisk, group, since, as_json, as_csv) -> None:
    """Per-VM statistics counted in the data path: I/O counts and rates, latency and where it
    went (network, queue, storage, flash), flash hit ratio, space; --since adds history."""
    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    report = call(vm=vm, vdisk=vdisk, group=group, since=since)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    elif as_csv:
        write_csv(report)
    else:
        STATS_TABLE(rows_of(report))


@verb_command(None, "stats-sample", verb=("stats", "sample"))
def stats_sample(call) -> None:
    """Take a statistics sample now (the server takes one every stats.interval)."""
    r = call()
    click.echo(f"sampled {r['samples']} series")
