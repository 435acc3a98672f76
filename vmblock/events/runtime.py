"""The events side of a running server: delivery, the space watch and the snapshot schedule.

Two background tasks besides delivery's: the watch runs ``SpaceWatch.check`` (and, with a
flash cache, ``FlashWatch.check``) in the executor every ``events.check_interval``; the
schedule runs ``SnapshotSchedule.tick`` on the loop and sleeps until the next slot is due (at
most ``events.check_interval``), or until ``policies_changed`` (``vm set``) wakes it. Errors of a round are logged and the next round
runs: a policy never stops the server.
"""

from __future__ import annotations

import asyncio
import logging

from vmblock.events.delivery import Delivery
from vmblock.events.schedule import SnapshotSchedule
from vmblock.events.watch import FlashWatch, SpaceWatch

log = logging.getLogger(__name__)


class EventsRuntime:
    """Delivery, watches and schedule of one server; ``take``/``delete`` as for
    ``SnapshotSchedule``; ``cache``: the server's flash cache, None when it has none."""

    def __init__(self, pool, take, delete, cache=None):
        self.pool = pool
        self.delivery = Delivery(pool)
        self.watch = SpaceWatch(pool)
        self.flash = FlashWatch(pool, cache) if cache is not None else None
        self.schedule = SnapshotSchedule(pool, take, delete)
        self._wake = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Start delivering, then the watch and the schedule."""
        await self.delivery.start()
        self.tasks = [asyncio.create_task(self._watch_loop()),
                      asyncio.create_task(self._schedule_loop())]

    async def stop(self) -> None:
        """Stop the rounds, then delivery."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.delivery.stop()

    def policies_changed(self) -> None:
        """A VM's policies changed: the schedule looks again now."""
        self._wake.set()

    def _interval(self) -> float:
        return self.pool.settings().get("events.check_interval")

    async def _watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await loop.run_in_executor(None, self.watch.check)
                if self.flash is not None:
                    await loop.run_in_executor(None, self.flash.check)
            except Exception:
                log.exception("events: space or flash check failed")
            await asyncio.sleep(self._interval())

    async def _schedule_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.schedule.tick()
            except Exception:
                log.exception("events: snapshot schedule round failed")
            due = self.schedule.due_in()
            interval = self._interval()
            try:
                await asyncio.wait_for(self._wake.wait(),
                                       interval if due is None else min(due, interval))
            except TimeoutError:
                pass
