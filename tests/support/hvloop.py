"""One event loop on a thread of its own for the in-process hypervisor tests.

libvirt takes one event implementation per process, for good (``virEventRegisterImpl``), and
libvirtaio ties it to one asyncio loop; so every in-process test of ``vmblock.hypervisor`` runs
its coroutine on this loop (``run``), as a server runs everything on its one loop."""

from __future__ import annotations

import asyncio
import threading

_LOOP: list[asyncio.AbstractEventLoop] = []
_LOCK = threading.Lock()
TIMEOUT = 100.0


def loop() -> asyncio.AbstractEventLoop:
    """The shared loop, started on a daemon thread at first use."""
    with _LOCK:
        if not _LOOP:
            lp = asyncio.new_event_loop()
            threading.Thread(target=lp.run_forever, name="hvloop", daemon=True).start()
            _LOOP.append(lp)
        return _LOOP[0]


def run(coro, timeout: float = TIMEOUT):
    """Run ``coro`` on the shared loop and return its result (its exception raised here)."""
    return asyncio.run_coroutine_threadsafe(coro, loop()).result(timeout)
