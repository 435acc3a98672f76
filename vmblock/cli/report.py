"""``vmblock report --vm VM --since 24h --png FILE [--html FILE]``: one VM's history as plots
(matplotlib, Agg): IOPS, MB/s, latency p99 with the split of the average stacked beneath,
flash hit ratio and space, over time. ``--html`` writes one self-contained page (the PNG
inline, and the current figures). Intervals after a restart start a new line segment: the
downtime shows as a gap, not as a slope."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io

import click

from vmblock.cli.common import verb_command

SPLIT = ("network", "queue", "storage", "flash", "flash_miss")
SPLIT_COLORS = ("#8172b3", "#ccb974", "#4c72b0", "#55a868", "#c44e52")


def _series(history: list[dict]) -> dict[str, list]:
    """Per-interval values of the plots, with a NaN before each interval that follows a gap
    (so lines break there)."""
    nan = float("nan")
    out: dict[str, list] = {k: [] for k in ("t", "r_iops", "w_iops", "r_mbps", "w_mbps",
                                            "r_p99", "w_p99", "hit", "used", "snap", *SPLIT)}
    for h in history:
        if h["gap"] and out["t"]:
            for k in out:
                out[k].append(dt.datetime.fromtimestamp(h["t"] - h["dt"]) if k == "t" else nan)
        d = h["dt"] or 1.0
        ops = h["read_ops"] + h["write_ops"]
        cached = h["flash_ops"] + h["flash_miss_ops"]
        values = {"t": dt.datetime.fromtimestamp(h["t"]), "r_iops": h["read_ops"] / d,
                  "w_iops": h["write_ops"] / d, "r_mbps": h["read_bytes"] / d / 1e6,
                  "w_mbps": h["write_bytes"] / d / 1e6, "r_p99": h["read_p99_us"] / 1000,
                  "w_p99": h["write_p99_us"] / 1000,
                  "hit": h["flash_ops"] / cached if cached else nan,
                  "used": h["used_bytes"], "snap": h["snapshot_bytes"]}
        for k in SPLIT:
            values[k] = h[f"{k}_us"] / ops / 1000 if ops else 0.0
        for k, v in values.items():
            out[k].append(v)
    return out


def render_png(vm: dict, since: str) -> bytes:
    """The report's figure as PNG bytes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    s = _series(vm.get("history") or [])
    fig, axes = plt.subplots(5, 1, figsize=(11, 14), sharex=True)
    fig.suptitle(f"VM {vm['name']} — last {since} ({len(vm.get('history') or [])} intervals)",
                 fontsize=14)
    ax = axes[0]
    ax.plot(s["t"], s["r_iops"], label="read IOPS", color="#4c72b0")
    ax.plot(s["t"], s["w_iops"], label="write IOPS", color="#dd8452")
    ax.set_ylabel("IOPS")
    ax = axes[1]
    ax.plot(s["t"], s["r_mbps"], label="read MB/s", color="#4c72b0")
    ax.plot(s["t"], s["w_mbps"], label="write MB/s", color="#dd8452")
    ax.set_ylabel("MB/s")
    ax = axes[2]
    ax.stackplot(s["t"], *[s[k] for k in SPLIT], labels=[f"avg {k}" for k in SPLIT],
                 colors=SPLIT_COLORS, alpha=0.55)
    ax.plot(s["t"], s["r_p99"], label="read p99", color="black", linewidth=1.5)
    ax.plot(s["t"], s["w_p99"], label="write p99", color="black", linestyle="--", linewidth=1.5)
    ax.set_ylabel("latency ms")
    ax = axes[3]
    ax.plot(s["t"], s["hit"], label="flash hit ratio", color="#55a868", marker=".")
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("hit ratio")
    if all(h != h for h in s["hit"]):       # all NaN: nothing read behind the cache
        ax.text(0.5, 0.5, "no reads behind the flash cache", transform=ax.transAxes,
                ha="center", va="center", color="gray")
    ax = axes[4]
    top = max([v for v in s["used"] + s["snap"] if v == v] or [0])
    unit, scale = next((u, f) for u, f in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 1024),
                                           ("bytes", 1)) if top >= f or f == 1)
    ax.plot(s["t"], [v / scale for v in s["used"]], label="used", color="#4c72b0")
    ax.plot(s["t"], [v / scale for v in s["snap"]], label="snapshot only", color="#8172b3")
    ax.set_ylabel(unit)
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, ncol=3)
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M:%S"))
    fig.autofmt_xdate()
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def render_html(vm: dict, since: str, png: bytes) -> str:
    """One self-contained page: the figures now, then the plots inline."""
    rows = [("read ops / bytes", f"{vm['read_ops']} / {vm['read_bytes']}"),
            ("write ops / bytes", f"{vm['write_ops']} / {vm['write_bytes']}"),
            ("read latency us (avg, p50, p99, max)",
             ", ".join(str(vm["latency_us"]["read"][k]) for k in ("avg", "p50", "p99", "max"))),
            ("write latency us (avg, p50, p99, max)",
             ", ".join(str(vm["latency_us"]["write"][k]) for k in ("avg", "p50", "p99", "max"))),
            ("latency split us per command",
             ", ".join(f"{k} {v}" for k, v in vm["latency_split_us"].items())),
            ("flash hit ratio", vm["flash_hit_ratio"]),
            ("used / snapshot-only / shared bytes",
             f"{vm['used_bytes']} / {vm['snapshot_bytes']} / {vm['shared_bytes']}")]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in rows)
    img = base64.b64encode(png).decode()
    name = html.escape(vm["name"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>vmblock report {name}"
            f"</title><style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;"
            f"padding-right:1em}}</style></head><body><h1>VM {name}</h1>"
            f"<p>last {html.escape(since)}</p><table>{table}</table>"
            f"<img alt='history of VM {name}' src='data:image/png;base64,{img}'></body></html>")


@verb_command(None, "report", verb=("stats", "show"))
@click.option("--vm", required=True, help="The VM to report on.")
@click.option("--since", default="24h", show_default=True, metavar="DUR",
              help="How far back (30m, 24h, 7d).")
@click.option("--png", "png_path", metavar="FILE", help="Write the plots as a PNG.")
@click.option("--html", "html_path", metavar="FILE", help="Write one self-contained HTML page.")
def report(call, vm: str, since: str, png_path: str | None, html_path: str | None) -> None:
    """One VM's history as plots: IOPS, MB/s, latency p99 and its split, flash hit ratio,
    space."""
    if not png_path and not html_path:
        raise click.UsageError("give --png FILE, --html FILE or both")
    row = call(vm=vm, since=since)["vms"][0]
    png = render_png(row, since)
    if png_path:
        with open(png_path, "wb") as f:
            f.write(png)
    if html_path:
        with open(html_path, "w") as f:
            f.write(render_html(row, since, png))
    click.echo(f"VM {vm}: {len(row.get('history') or [])} intervals plotted")
