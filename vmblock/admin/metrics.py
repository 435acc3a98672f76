"""Prometheus ``/metrics`` (``serve --metrics HOST:PORT``, config key ``metrics.listen``).

Its own aiohttp listener (the admin socket is a unix socket, only for the pool's owner);
each scrape builds the families from the same figures ``vmblock stats`` shows, with
prometheus-client's metric families and text exposition:

    vmblock_vm_ops_total{vm,op}, vmblock_vm_bytes_total{vm,op}
    vmblock_vm_latency_seconds{vm,op}            histogram (buckets at powers of two)
    vmblock_vdisk_ops_total{vm,vdisk,op}, vmblock_vdisk_bytes_total{vm,vdisk,op}
    vmblock_vm_used_bytes{vm}, vmblock_vm_snapshot_bytes{vm}
    vmblock_cache_hits_total{group}, vmblock_cache_misses_total{group}
    vmblock_pool_bytes{tier,state}               state: used, free, held
    vmblock_sessions{target}
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from vmblock.meta.stats_live import vm_series
from vmblock.settings import parse_portals
from vmblock.stats import layout as L

OPS = (("read", L.READ_OPS, L.READ_BYTES), ("write", L.WRITE_OPS, L.WRITE_BYTES),
       ("flush", L.FLUSH_OPS, None), ("unmap", L.UNMAP_OPS, None),
       ("compare_write", L.COMPARE_WRITE_OPS, None), ("xcopy", L.XCOPY_OPS, None),
       ("other", L.OTHER_OPS, None))
US = 1e-6


def _buckets(row, start: int) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs at every power-of-two microsecond boundary."""
    hist = row[start:start + L.BUCKETS]
    out = []
    acc = 0
    for b in range(L.BUCKETS):
        acc += int(hist[b])
        if (b + 1) % L.SUB == 0 and b + 1 < L.BUCKETS:
            out.append((repr(L.bucket_low(b + 1) * US), acc))
    out.append(("+Inf", acc))
    return out


class PoolCollector:
    """The families of one scrape, from the running server's ``LiveApi``."""

    def __init__(self, api):
        self.api = api

    def collect(self):
        """Yield every family (prometheus-client's collector protocol)."""
        stats = self.api.stats.pool_stats()
        report = stats.report()
        cum, _ = stats.cumulative()
        pool = self.api.pool
        vm_ops = CounterMetricFamily("vmblock_vm_ops", "SCSI commands per VM", labels=["vm", "op"])
        vm_bytes = CounterMetricFamily("vmblock_vm_bytes", "bytes moved per VM",
                                       labels=["vm", "op"])
        vm_lat = HistogramMetricFamily("vmblock_vm_latency_seconds",
                                       "command latency, PDU in to status out",
                                       labels=["vm", "op"])
        for vm in pool.vms():
            row = cum[vm_series(vm.uuid)]
            for op, ops_col, bytes_col in OPS:
                vm_ops.add_metric([vm.name, op], int(row[ops_col]))
                if bytes_col is not None:
                    vm_bytes.add_metric([vm.name, op], int(row[bytes_col]))
            for op, start, sum_col in (("read", L.READ_HIST, L.READ_US),
                                       ("write", L.WRITE_HIST, L.WRITE_US)):
                vm_lat.add_metric([vm.name, op], _buckets(row, start), int(row[sum_col]) * US)
        yield from (vm_ops, vm_bytes, vm_lat)
        vd_ops = CounterMetricFamily("vmblock_vdisk_ops", "SCSI commands per vdisk",
                                     labels=["vm", "vdisk", "op"])
        vd_bytes = CounterMetricFamily("vmblock_vdisk_bytes", "bytes moved per vdisk",
                                       labels=["vm", "vdisk", "op"])
        for r in report["vdisks"]:
            for op, _, _ in OPS:
                vd_ops.add_metric([r["vm"] or "", r["name"], op], r[f"{op}_ops"])
            for op in ("read", "write"):
                vd_bytes.add_metric([r["vm"] or "", r["name"], op], r[f"{op}_bytes"])
        yield from (vd_ops, vd_bytes)
        used = GaugeMetricFamily("vmblock_vm_used_bytes", "bytes the VM's vdisks map",
                                 labels=["vm"])
        snap = GaugeMetricFamily("vmblock_vm_snapshot_bytes", "bytes only the VM's snapshots "
                                 "hold", labels=["vm"])
        for r in report["vms"]:
            used.add_metric([r["name"]], r["used_bytes"])
            snap.add_metric([r["name"]], r["snapshot_bytes"])
        yield from (used, snap)
        hits = CounterMetricFamily("vmblock_cache_hits", "flash cache read hits",
                                   labels=["group"])
        misses = CounterMetricFamily("vmblock_cache_misses", "flash cache read misses",
                                     labels=["group"])
        for r in report["groups"]:
            hits.add_metric([r["name"]], r["flash_ops"])
            misses.add_metric([r["name"]], r["flash_miss_ops"])
        yield from (hits, misses)
        tiers = GaugeMetricFamily("vmblock_pool_bytes", "pool bytes per tier and state",
                                  labels=["tier", "state"])
        for tier, t in report["pool"]["tiers"].items():
            for state in ("used", "free", "held"):
                tiers.add_metric([tier, state], t[f"{state}_bytes"])
        yield tiers
        sessions = GaugeMetricFamily("vmblock_sessions", "iSCSI sessions logged in",
                                     labels=["target"])
        per: dict[str, int] = {t.iqn: 0 for t in pool.targets()}
        for s in self.api.server.service.sessions():     # the owner knows every session
            per[s["target"]] = per.get(s["target"], 0) + 1
        for target, n in per.items():
            sessions.add_metric([target], n)
        yield sessions


def metrics_text(api) -> bytes:
    """One scrape's text exposition."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolCollector(api))
    return generate_latest(registry)


async def start_metrics(api, listen: str) -> web.AppRunner:
    """Serve ``GET /metrics`` on ``listen`` (HOST:PORT); the runner, to clean up at stop."""
    host, port = parse_portals(listen)[0]

    async def metrics(request: web.Request) -> web.Response:
        await api.server.flush_stats()
        body = metrics_text(api)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
