"""libvirt's blocking calls, run off the event loop with a timeout.

Every libvirt call that may wait for a daemon (open, list, XML, lookups, define) goes through a
``Caller``: one daemon thread per connection, fed by a queue, each call awaited on the loop with
``asyncio.wait_for``. A call that does not answer in time raises ``CallTimeout``; the thread
may stay stuck inside libvirt, so the caller is then ``hung`` and the connector drops it (with
its connection: ``retire`` closes that on the stuck thread, never on the loop) and starts a new
one. Being a daemon, a stuck thread never holds up the server's exit.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable


class CallTimeout(Exception):
    """A libvirt call did not answer within its timeout."""


class Caller:
    """Runs functions on its own daemon thread, one at a time, awaited with a timeout."""

    def __init__(self, name: str):
        self.name = name
        self.hung = False
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=f"libvirt-{name}", daemon=True).start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, loop, fut = job
            try:
                result, error = fn(*args), None
            except BaseException as e:     # handed to the awaiting coroutine as it is
                result, error = None, e
            if loop is None:
                continue
            try:
                loop.call_soon_threadsafe(_settle, fut, result, error)
            except RuntimeError:           # the loop closed while this call hung
                pass

    async def call(self, timeout: float, fn: Callable, *args):
        """``fn(*args)`` on the thread; CallTimeout (and ``hung``) after ``timeout`` seconds."""
        if self.hung:
            raise CallTimeout(f"an earlier libvirt call of {self.name} still hangs")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._jobs.put((fn, args, loop, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.hung = True
            raise CallTimeout(f"libvirt did not answer within {timeout:g} s") from None

    def retire(self, *closers: Callable) -> None:
        """Run ``closers`` (e.g. a connection's close) on the thread after what it runs now,
        then end the thread."""
        for fn in closers:
            self._jobs.put((fn, (), None, None))
        self._jobs.put(None)


def _settle(fut: asyncio.Future, result, error) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
