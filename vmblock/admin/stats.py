"""The statistics verbs: ``stats show`` (``vmblock stats``) and ``stats sample``.

What they read is ``vmblock.meta.stats_live.PoolStats``: the running server's (this run's
counters on top of the stored ones), or without a server one built on the pool, which shows
what the last run stored (cumulative counters and history; rates and cache figures need a
running server).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Protocol

from vmblock.admin.schema import GroupName, Name, Text
from vmblock.admin.verbs import verb
from vmblock.errors import InvalidArgument, ServerError
from vmblock.units import parse_seconds

if TYPE_CHECKING:
    from vmblock.meta import Pool
    from vmblock.meta.stats_live import PoolStats

Duration = Annotated[str, Text(32)]
MAX_SINCE = 400 * 86400.0       # the history keeps a year


class StatsRuntime(Protocol):
    """What a running server shows the statistics verbs."""

    stats: PoolStats | None         # None when stats.enabled is No

    async def flush_stats(self) -> None:
        """Every worker process adds its staged counts (so what is read next is exact)."""


class StatsVerbs:
    """The statistics verbs of one pool, live on ``runtime`` when a server runs."""

    def __init__(self, pool: Pool, runtime: StatsRuntime | None = None):
        self.pool = pool
        self.runtime = runtime

    def pool_stats(self) -> PoolStats:
        """The running server's ``PoolStats``, else one on the pool alone."""
        if self.runtime is not None and self.runtime.stats is not None:
            return self.runtime.stats
        from vmblock.meta.stats_live import PoolStats
        return PoolStats(self.pool, interval=self.pool.settings().get("stats.interval"))

    @verb
    def stats_show(self, vm: Name | None = None, vdisk: Name | None = None,
                   group: GroupName | None = None, since: Duration | None = None) -> dict:
        """Per VM, vdisk, eviction group and pool: cumulative counts, rates over the last
        interval, latency and its split, flash and space figures; ``since`` (1h, 30m, 2d
        as seconds ...) adds each row's history."""
        seconds = parse_since(since) if since is not None else None
        stats = self.pool_stats()
        if self.runtime is None or self.runtime.stats is None:
            return stats.report(vm=vm, vdisk=vdisk, group=group, since=seconds)

        async def live() -> dict:
            await self.runtime.flush_stats()
            return stats.report(vm=vm, vdisk=vdisk, group=group, since=seconds)
        return live()

    @verb
    def stats_sample(self) -> dict:
        """Take a statistics sample now, as the server's timer does every stats.interval
        (for scripts and tests that need one at a known moment)."""
        if self.runtime is None or self.runtime.stats is None:
            raise ServerError("no running server with statistics on (stats.enabled) to sample")

        async def sample() -> dict:
            await self.runtime.flush_stats()
            return {"samples": len(self.runtime.stats.sample())}
        return sample()


def parse_since(text: str) -> float:
    """Seconds back from '90', '30s', '10m', '1h' or '2d' (at most ``MAX_SINCE``)."""
    t = text.strip().lower()
    if t.endswith("d") and t[:-1].strip():
        try:
            t = str(float(t[:-1]) * 86400)
        except ValueError:
            raise InvalidArgument(f"--since must be a duration like 30s, 10m, 1h or 2d, "
                                  f"not {text!r}") from None
    return parse_seconds(t, "--since", MAX_SINCE)
